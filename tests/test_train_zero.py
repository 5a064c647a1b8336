"""DeepSpeed ZeRO-2 and ZeRO-3 through the real entry (`accelerate launch ... -m src.train`) on this CPU:
two processes, DeepSpeed's CPU accelerator, gloo. Both cases train the toy recipe as it stands (Char-LDM:
fuse, image encoder with its kept reference states, both extra losses, bf16, EMA weights, periodic
samples), ZeRO-3 with partitioned weights, frozen models included.

Each case: an uninterrupted run, whose EMA (kept per process shard) must be the EMA of its own weights,
step by step; a run killed (SIGKILL) after its first checkpoint and resumed with train.resume=latest,
which must end on the same weights and EMA bit for bit; under ZeRO-2 the killed and resumed runs are two
machines simulated on this one (two launchers, `--num_machines 2`, machine ranks 0 and 1, rendezvous on
127.0.0.1: docs/distributed.md); the consolidated fp32 trainable.safetensors that src.generate loads.
ZeRO-2's EMA also equals a DDP run's (fp32, where the two runs' weights agree to rounding)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.ports import free_port
from tests.test_train_ldm import RECIPE, REPO, final_weights, run, run_dir

CASES = {  # task overrides, optimizer, stage, machines the kill and resume run on
    "zero2": ([], "DeepSpeedZeroOptimizer", 2, 2),
    "zero3": ([], "DeepSpeedZeroOptimizer_Stage3", 3, 1),
}
# One thread per process in every launch. accelerate sets OMP_NUM_THREADS=1 for two processes on one machine
# but leaves it unset for one process per machine, which then takes both cores: CPU reductions split over
# another number of threads round differently, and the two-machine resume ended a few bits off the
# one-machine straight run ("fuse.layer_norm.bias differs after the resume", issue 25).
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


def launch_cmd(launch: str, overrides: list[str], port: int | None = None, machine: int | None = None) -> list[str]:
    """`accelerate launch` of src.train; with `machine`, as machine rank `machine` of two (one process each)."""
    two_machines = [] if machine is None else [
        "--num_machines", "2", "--machine_rank", str(machine), "--num_processes", "2",
        "--main_process_ip", "127.0.0.1", "--deepspeed_multinode_launcher", "standard"]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"configs/accelerate/cpu_{launch}.yaml",
            *two_machines, "--main_process_port", str(port or free_port()), "-m", "src.train", "--config", RECIPE,
            *overrides]


def start(launch: str, overrides: list[str], machines: int, output=subprocess.PIPE) -> list[subprocess.Popen]:
    """One launcher, or one per simulated machine (sharing a port), each in its own process group."""
    if machines == 1:
        commands = [launch_cmd(launch, overrides)]
    else:
        port = free_port()
        commands = [launch_cmd(launch, overrides, port, machine) for machine in range(machines)]
    return [subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, text=True,
                             env=ENV, start_new_session=True) for command in commands]


def launch(launch: str, overrides: list[str], machines: int = 1) -> str:
    if machines == 1:
        return run(launch_cmd(launch, overrides)).stdout
    launchers = start(launch, overrides, machines)
    outputs = [launcher.communicate(timeout=600)[0] for launcher in launchers]
    for launcher, output in zip(launchers, outputs):
        assert launcher.returncode == 0, f"a machine's launcher failed:\n{output[-5000:]}"
    return "".join(outputs)


def launch_and_kill_after(launch: str, overrides: list[str], checkpoint: str, machines: int = 1) -> None:
    """Start a run and SIGKILL every process of it as soon as `checkpoint` is complete."""
    launchers = start(launch, overrides, machines, output=subprocess.DEVNULL)
    target = run_dir(overrides, next(o.split("=", 1)[1] for o in overrides if o.startswith("run_name=")))
    deadline = time.time() + 600
    try:
        while not (target / "checkpoints" / checkpoint).is_dir():
            assert all(p.poll() is None for p in launchers) and time.time() < deadline, \
                "the run ended before it could be killed"
            time.sleep(0.05)
    finally:
        for launcher in launchers:
            os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and its training processes
            launcher.wait()


def ema_weights(folder, step: int) -> dict:
    return load_file(str(folder / "checkpoints" / f"step_{step:06d}" / "ema.safetensors"))


def assert_ema_follows_the_weights(folder, steps: int, decay: float) -> None:
    """ema_k = ema_{k-1} - (1 - d_k) (ema_{k-1} - w_k), d_k = min(decay, k / (9 + k)) (diffusers' EMAModel, as a
    DDP run keeps it), over the fp32 weights each checkpoint consolidated: bit for bit from step 2 on (step 1,
    d_1 = 0, takes the weights, up to the rounding of ema_0 - (ema_0 - w_1); ema_0 is not saved)."""
    expected = ema_weights(folder, 1)
    for name, value in final_weights(folder, 1).items():
        torch.testing.assert_close(expected[name], value, rtol=0, atol=1e-6)
    for k in range(2, steps + 1):
        weights, kept = final_weights(folder, k), ema_weights(folder, k)
        one_minus = 1 - min(decay, k / (9 + k))
        for name, value in expected.items():
            value.sub_(value - weights[name], alpha=one_minus)
            assert torch.equal(kept[name], value), f"step {k}: the EMA of {name} is not the EMA of the weights"
    assert any(not torch.equal(expected[n], weights[n]) for n in expected), "the EMA equals the weights"


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_zero_run_trains_resumes_exactly_and_consolidates_weights(stage, char_ldm_overrides, tmp_path, monkeypatch):
    task_overrides, optimizer_name, zero_stage, machines = CASES[stage]
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the one-machine launches too (ENV above says why)
    common = char_ldm_overrides + task_overrides + [
        "train.batch_size=2", "train.max_steps=4", "train.checkpoint_every=1", "train.keep_last=0",
        "train.sample_every=2", "optim.warmup_steps=0", "optim.schedule=cosine", "model.caption_dropout=0.3"]

    # 1. An uninterrupted run really uses the DeepSpeed engine, changes the weights and keeps their EMA.
    out = launch(stage, common + ["run_name=straight"])
    assert f"DeepSpeed ZeRO-{zero_stage}: DeepSpeedEngine with {optimizer_name}, 2 processes on cpu" in out
    straight = run_dir(common, "straight")
    state = straight / "checkpoints" / "step_000004" / "deepspeed" / "state"
    shards = sorted(p.name for p in state.glob("*optim_states.pt"))
    assert shards == [f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
    saved = torch.load(state / shards[0], map_location="cpu", weights_only=False)
    assert saved["optimizer_state_dict"]["zero_stage"] == zero_stage
    first, last = final_weights(straight, 1), final_weights(straight, 4)
    assert any(not torch.equal(first[n], last[n]) for n in first), "three ZeRO steps left every weight unchanged"
    assert_ema_follows_the_weights(straight, 4, decay=0.995)  # the toy recipe's train.ema_decay
    for step in (2, 4):  # sampling (with the EMA weights) ran under ZeRO too
        assert (straight / "samples" / f"step_{step:06d}" / "grid.png").is_file()

    # 2. Killed after its first checkpoint, resumed: the same weights and EMA as the uninterrupted run.
    launch_and_kill_after(stage, common + ["run_name=killed"], "step_000002", machines)
    killed = run_dir(common, "killed")
    stopped_at = max(int(p.name.split("_")[1]) for p in (killed / "checkpoints").glob("step_*[0-9]"))
    assert stopped_at < 4
    launch(stage, common + ["run_name=killed", "train.resume=latest"], machines)
    resumed, resumed_ema, straight_ema = final_weights(killed, 4), ema_weights(killed, 4), ema_weights(straight, 4)
    assert resumed.keys() == last.keys() == resumed_ema.keys()
    for name in last:
        assert torch.equal(last[name], resumed[name]), f"{name} differs after the resume"
        assert torch.equal(straight_ema[name], resumed_ema[name]), f"the EMA of {name} differs after the resume"

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


def test_zero2_ema_equals_a_ddp_runs(ldm_overrides, monkeypatch):
    """fp32, where ZeRO-2's and DDP's weights agree to rounding (gradient averaging): their EMAs agree as well,
    never by more than the weights differ (an EMA is a convex combination of the weights it saw)."""
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    common = ldm_overrides + ["train.batch_size=2", "train.max_steps=3", "train.checkpoint_every=1",
                              "train.keep_last=0", "train.mixed_precision=no", "train.ema=true", "train.sample_every=0"]
    launch("zero2", common + ["run_name=zero2"])
    run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/cpu_ddp.yaml",
         "--main_process_port", str(free_port()), "-m", "src.train", "--config", RECIPE, *common, "run_name=ddp"])
    zero, ddp = run_dir(common, "zero2"), run_dir(common, "ddp")
    gap = None
    for step in (1, 2, 3):
        w_zero, w_ddp = final_weights(zero, step), final_weights(ddp, step)
        step_gap = {n: (w_zero[n] - w_ddp[n]).abs() for n in w_zero}
        gap = step_gap if gap is None else {n: torch.maximum(gap[n], step_gap[n]) for n in gap}
        assert max(float(g.max()) for g in gap.values()) < 1e-5
        e_zero, e_ddp = ema_weights(zero, step), ema_weights(ddp, step)
        assert e_zero.keys() == e_ddp.keys() == w_zero.keys()
        for name in e_zero:
            assert ((e_zero[name] - e_ddp[name]).abs() <= gap[name] + 1e-7).all(), f"step {step}: {name}"
    assert any(not torch.equal(e_zero[n], w_zero[n]) for n in e_zero), "the EMA equals the weights"


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
