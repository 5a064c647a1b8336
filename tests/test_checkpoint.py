"""Checkpoints are atomic, pruned to the last K, and load strictly."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from src import runs
from src.engine import checkpoint as ckpt
from src.tasks.base import Task


class TinyTask(Task):
    def __init__(self):
        super().__init__(cfg=None)
        self.trained = torch.nn.Linear(3, 2)
        self.frozen = torch.nn.Linear(2, 2).requires_grad_(False)


class OneProcess:
    """The slice of accelerate's Accelerator that checkpointing uses, for a single process."""
    is_main_process, process_index, num_processes = True, 0, 1
    device = torch.device("cpu")

    def wait_for_everyone(self):
        pass

    def print(self, *args):
        print(*args)


def parts():
    task = TinyTask()
    optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return task, optimizer, scheduler


def take_step(task, optimizer, scheduler):
    task.trained(torch.randn(4, 3)).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()
    scheduler.step()


def test_only_trainable_weights_are_saved_and_resume_restores_everything(tmp_path):
    task, optimizer, scheduler = parts()
    take_step(task, optimizer, scheduler)
    path = ckpt.save_checkpoint(tmp_path, 1, task, optimizer, scheduler, None, OneProcess(), keep_last=2)
    assert set(load_file(str(path / "trainable.safetensors"))) == {"trained.weight", "trained.bias"}
    expected_next = torch.randn(3)  # the RNG stream right after the save
    torch.manual_seed(1234)

    other, other_opt, other_sched = parts()
    step = ckpt.load_checkpoint(path, other, other_opt, other_sched, None, OneProcess())
    assert step == 1
    assert torch.equal(other.trained.weight, task.trained.weight)
    assert other_opt.state_dict()["state"][0]["exp_avg"].equal(optimizer.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(torch.randn(3), expected_next)  # generators restored


def test_a_crash_while_saving_leaves_the_previous_checkpoint_as_latest(tmp_path, monkeypatch):
    task, optimizer, scheduler = parts()
    ckpt.save_checkpoint(tmp_path, 5, task, optimizer, scheduler, None, OneProcess(), keep_last=3)
    take_step(task, optimizer, scheduler)

    def crash_after_partial_write(tensors, filename, *args, **kwargs):
        with open(filename, "wb") as handle:
            handle.write(b"\x00" * 10)  # a truncated file, as a killed process would leave
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(ckpt, "save_file", crash_after_partial_write)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 10, task, optimizer, scheduler, None, OneProcess(), keep_last=3)
    assert (tmp_path / "step_000010.tmp").is_dir()
    assert runs.resolve_checkpoint("latest", tmp_path).name == "step_000005"
    fresh, fresh_opt, fresh_sched = parts()
    assert ckpt.load_checkpoint(runs.resolve_checkpoint("latest", tmp_path), fresh, fresh_opt, fresh_sched,
                                None, OneProcess()) == 5

    monkeypatch.setattr(ckpt, "save_file", save_file)  # the next save of that step replaces the leftover
    ckpt.save_checkpoint(tmp_path, 10, task, optimizer, scheduler, None, OneProcess(), keep_last=3)
    assert runs.resolve_checkpoint("latest", tmp_path).name == "step_000010"
    assert not (tmp_path / "step_000010.tmp").exists()


def test_keep_last_prunes_oldest(tmp_path):
    task, optimizer, scheduler = parts()
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, task, optimizer, scheduler, None, OneProcess(), keep_last=2)
    assert [p.name for p in runs.list_checkpoints(tmp_path)] == ["step_000003", "step_000004"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000003", "step_000004"]


def test_strict_load_names_missing_unexpected_and_misshaped_keys(tmp_path):
    task = TinyTask()
    good = {k: v.clone() for k, v in task.trainable_state_dict().items()}
    with pytest.raises(ValueError, match=r"1 missing \(trained.bias\)"):
        task.load_trainable_state_dict({"trained.weight": good["trained.weight"]}, source="x.safetensors")
    with pytest.raises(ValueError, match=r"1 unexpected \(frozen.weight\)"):
        task.load_trainable_state_dict({**good, "frozen.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=r"'trained.weight' has shape \(2, 4\)"):
        task.load_trainable_state_dict({**good, "trained.weight": torch.zeros(2, 4)})


def test_resume_refuses_a_different_process_count(tmp_path):
    task, optimizer, scheduler = parts()
    path = ckpt.save_checkpoint(tmp_path, 1, task, optimizer, scheduler, None, OneProcess(), keep_last=1)
    state = json.loads((path / "trainer_state.json").read_text())
    (path / "trainer_state.json").write_text(json.dumps({**state, "world_size": 2}))
    with pytest.raises(ValueError, match="saved by 2 processes"):
        ckpt.load_checkpoint(path, *parts(), None, OneProcess())


def test_a_deepspeed_resume_checks_the_trainable_names_and_shapes(tmp_path):
    """DeepSpeed's own resume loads non-strictly (the checkpoint holds only the trainable weights), so the
    engine checks the saved names and full shapes first: another model's checkpoint is one error naming
    what is missing, unexpected or reshaped; ZeRO-3's partitioned parameters are compared at `ds_shape`."""
    from src.engine.zero import check_trainable_names

    task = TinyTask()
    file = tmp_path / "trainable.safetensors"
    save_file({k: v.contiguous() for k, v in task.trainable_state_dict().items()}, str(file))
    check_trainable_names(task, file)  # its own checkpoint passes

    save_file({"trained.weight": torch.zeros(2, 3), "other.bias": torch.zeros(2)}, str(file))
    with pytest.raises(ValueError, match=r"1 missing \(trained\.bias\), 1 unexpected \(other\.bias\), 0 of another"):
        check_trainable_names(task, file)
    save_file({"trained.weight": torch.zeros(2, 4), "trained.bias": torch.zeros(2)}, str(file))
    with pytest.raises(ValueError, match=r"1 of another shape \(trained\.weight \(2, 4\) vs \(2, 3\)\)"):
        check_trainable_names(task, file)
    task.trained.weight.data = torch.zeros(0)   # a ZeRO-3 partition: empty locally, its full shape recorded
    task.trained.weight.ds_shape = torch.Size([2, 4])
    check_trainable_names(task, file)


def test_a_resume_with_another_cpu_thread_count_says_it_will_not_be_bit_exact(tmp_path, capsys):
    """On a CPU, reductions split over another number of threads round differently (issue 25: a two-machine
    resume on 2 threads per process ended a few bits off a straight run on 1)."""
    task, optimizer, scheduler = parts()
    path = ckpt.save_checkpoint(tmp_path, 1, task, optimizer, scheduler, None, OneProcess(), keep_last=1)
    threads = torch.get_num_threads()
    assert json.loads((path / "trainer_state.json").read_text())["cpu_threads"] == threads
    ckpt.load_checkpoint(path, *parts(), None, OneProcess())
    assert "CPU threads" not in capsys.readouterr().out
    try:
        torch.set_num_threads(threads + 1)
        ckpt.load_checkpoint(path, *parts(), None, OneProcess())
    finally:
        torch.set_num_threads(threads)
    assert f"saved with {threads} CPU threads per process and resumes with {threads + 1}" in capsys.readouterr().out
