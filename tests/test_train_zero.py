"""DeepSpeed ZeRO-2 and ZeRO-3 through the real entry (`accelerate launch ... -m src.train`) on this CPU:
two processes, DeepSpeed's CPU accelerator, gloo. ZeRO-2 trains the baseline LDM, ZeRO-3 the Char-LDM
(fuse, image encoder and both extra losses under partitioned weights, frozen models included).

Each case: an uninterrupted run; a run killed (SIGKILL) after its first checkpoint and resumed with
train.resume=latest, which must end on the same weights bit for bit; the consolidated fp32
trainable.safetensors that src.generate loads."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.test_train_ldm import RECIPE, REPO, final_weights, free_port, run, run_dir

CASES = {
    "zero2": (["model.character_conditioning=false"], "DeepSpeedZeroOptimizer", 2),
    "zero3": ([], "DeepSpeedZeroOptimizer_Stage3", 3),
}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}


def launch_cmd(launch: str, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"configs/accelerate/cpu_{launch}.yaml",
            "--main_process_port", str(free_port()), "-m", "src.train", "--config", RECIPE, *overrides]


def launch(launch: str, overrides: list[str]) -> str:
    return run(launch_cmd(launch, overrides)).stdout


def launch_and_kill_after(launch: str, overrides: list[str], checkpoint: str) -> None:
    """Start a run and SIGKILL every process of it as soon as `checkpoint` is complete."""
    victim = subprocess.Popen(launch_cmd(launch, overrides), cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    target = run_dir(overrides, next(o.split("=", 1)[1] for o in overrides if o.startswith("run_name=")))
    deadline = time.time() + 600
    try:
        while not (target / "checkpoints" / checkpoint).is_dir():
            assert victim.poll() is None and time.time() < deadline, "the run ended before it could be killed"
            time.sleep(0.05)
    finally:
        os.killpg(victim.pid, signal.SIGKILL)  # the launcher and both training processes
        victim.wait()


@pytest.mark.parametrize("stage", sorted(CASES))
def test_zero_run_trains_resumes_exactly_and_consolidates_weights(stage, char_ldm_overrides, tmp_path, monkeypatch):
    task_overrides, optimizer_name, zero_stage = CASES[stage]
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    common = char_ldm_overrides + task_overrides + [
        "train.batch_size=2", "train.max_steps=6", "train.checkpoint_every=2", "train.keep_last=0",
        "optim.warmup_steps=0", "optim.schedule=cosine", "model.caption_dropout=0.3",
        "train.ema=false"]  # the toy recipe keeps EMA weights, which ZeRO refuses

    # 1. An uninterrupted run really uses the DeepSpeed engine and changes the weights.
    out = launch(stage, common + ["run_name=straight"])
    assert f"DeepSpeed ZeRO-{zero_stage}: DeepSpeedEngine with {optimizer_name}, 2 processes on cpu" in out
    straight = run_dir(common, "straight")
    state = straight / "checkpoints" / "step_000006" / "deepspeed" / "state"
    shards = sorted(p.name for p in state.glob("*optim_states.pt"))
    assert shards == [f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
    saved = torch.load(state / shards[0], map_location="cpu", weights_only=False)
    assert saved["optimizer_state_dict"]["zero_stage"] == zero_stage
    first, last = final_weights(straight, 2), final_weights(straight, 6)
    assert any(not torch.equal(first[n], last[n]) for n in first), "six ZeRO steps left every weight unchanged"
    assert (straight / "samples" / "step_000006" / "grid.png").is_file()  # sampling ran under ZeRO too

    # 2. Killed after its first checkpoint, resumed: the same weights as the uninterrupted run.
    launch_and_kill_after(stage, common + ["run_name=killed"], "step_000002")
    killed = run_dir(common, "killed")
    stopped_at = max(int(p.name.split("_")[1]) for p in (killed / "checkpoints").glob("step_*[0-9]"))
    assert stopped_at < 6
    launch(stage, common + ["run_name=killed", "train.resume=latest"])
    resumed = final_weights(killed, 6)
    assert resumed.keys() == last.keys()
    for name in last:
        assert torch.equal(last[name], resumed[name]), f"{name} differs after the resume"

    # 3. trainable.safetensors holds the full fp32 weights (no zero_to_fp32 step); src.generate loads it.
    from src.config import load_config
    from src.generate import main as generate
    from src.tasks import build_task

    own = {n: p for n, p in build_task(load_config(RECIPE, common)).named_parameters() if p.requires_grad}
    assert last.keys() == own.keys()
    assert all(last[n].shape == own[n].shape and last[n].dtype == torch.float32 for n in own)
    samples = tmp_path / "samples"
    assert generate(["--checkpoint", str(straight), "--split", "test", "--num-stories", "1", "--out", str(samples),
                     "sample.num_inference_steps=2"]) == 0
    assert (samples / "stories.jsonl").is_file()


class Launched:
    """The slice of an Accelerator that zero.configure reads."""
    def __init__(self, distributed_type):
        from accelerate.utils import DistributedType

        self.distributed_type = getattr(DistributedType, distributed_type)


def test_a_deepspeed_launch_that_accelerate_does_not_honour_is_an_error(monkeypatch):
    """The silent fallback this replaced: a DeepSpeed launch config, yet a plain MULTI_CPU (DDP) run."""
    from src.config import load_config
    from src.engine import zero

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(RuntimeError, match="asked for DeepSpeed=True but accelerate runs .*MULTI_CPU"):
        zero.configure(Launched("MULTI_CPU"), load_config(RECIPE, []))


def test_ema_under_deepspeed_is_refused_by_name(monkeypatch):
    from src.config import load_config
    from src.engine import zero

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match="train.ema=true: EMA is not supported under DeepSpeed"):
        zero.configure(Launched("DEEPSPEED"), load_config(RECIPE, ["train.ema=true"]))
