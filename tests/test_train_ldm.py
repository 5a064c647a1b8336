"""The stage-1 LDM baseline through its real entry points (src.train, src.generate, accelerate launch)
on the small toy dataset with the tiny stack."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from src.engine.tracking import read_metrics
from tests.denoising import fixed_denoising_losses
from tests.ports import free_port

REPO = Path(__file__).resolve().parent.parent
RECIPE = "configs/char_ldm/toy.yaml"


def train_cmd(overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "src.train", "--config", RECIPE, *overrides]


def run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def run_dir(overrides: list[str], name: str) -> Path:
    root = next(o.split("=", 1)[1] for o in overrides if o.startswith("output_root="))
    return Path(root) / "char_ldm" / "toy" / name


def final_weights(folder: Path, step: int) -> dict:
    return load_file(str(folder / "checkpoints" / f"step_{step:06d}" / "trainable.safetensors"))


def kill_after_checkpoint(overrides: list[str], name: str, checkpoint: str) -> Path:
    """Start `src.train` as run `name` and SIGKILL it once `checkpoints/<checkpoint>` is complete;
    returns the run folder."""
    victim = subprocess.Popen(train_cmd(overrides + [f"run_name={name}"]), cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    folder = run_dir(overrides, name)
    deadline = time.time() + 300
    while not (folder / "checkpoints" / checkpoint).is_dir():
        assert victim.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    return folder


def test_baseline_loss_falls_well_below_its_start(ldm_overrides):
    from src.train import main

    overrides = ldm_overrides + ["run_name=learn", "train.max_steps=100", "optim.warmup_steps=5",
                                 "train.checkpoint_every=100"]
    assert main(["--config", RECIPE, *overrides]) == 0
    folder = run_dir(overrides, "learn")
    assert len(read_metrics(folder)) == 100
    # The tiny stack predicts v (unit variance: an untrained UNet's loss starts near 1, and predicting the
    # mean, 0, never goes below ~1). On fixed frames, timesteps and noise (tests/denoising.py says why):
    # 0.797-0.807 over seeds 0-4.
    start, end = fixed_denoising_losses(folder, folder / "checkpoints" / "step_000100" / "trainable.safetensors")
    assert end < 0.9 * start, f"loss went from {start:.3f} to {end:.3f}"
    # the periodic sample at the end was written in the generated-story layout
    samples = folder / "samples" / "step_000100"
    assert (samples / "stories.jsonl").is_file() and (samples / "grid.png").is_file()


def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_run(ldm_overrides):
    common = ldm_overrides + ["train.max_steps=16", "train.checkpoint_every=4", "train.keep_last=2",
                              "train.ema=true", "optim.schedule=cosine", "optim.warmup_steps=3",
                              "model.caption_dropout=0.3"]
    run(train_cmd(common + ["run_name=straight"]))

    killed = kill_after_checkpoint(common, "killed", "step_000008")
    stopped_at = max(int(p.name.split("_")[1]) for p in (killed / "checkpoints").glob("step_*[0-9]"))
    assert stopped_at < 16

    run(train_cmd(common + ["run_name=killed", "train.resume=latest"]))
    straight, resumed = final_weights(run_dir(common, "straight"), 16), final_weights(killed, 16)
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), f"{name} differs after resume"
    ema_a = load_file(str(run_dir(common, "straight") / "checkpoints/step_000016/ema.safetensors"))
    ema_b = load_file(str(killed / "checkpoints/step_000016/ema.safetensors"))
    assert all(torch.equal(ema_a[n], ema_b[n]) for n in ema_a)
    # summary.json times the steps after the resume; a resume with nothing left to train keeps it as it is
    summary = json.loads((killed / "summary.json").read_text())
    assert (summary["final_step"], summary["resumed_from_step"]) == (16, stopped_at)
    assert summary["computed_on"]["cpu_threads"] >= 1 and summary["computed_on"]["cpu_capability"]
    run(train_cmd(common + ["run_name=killed", "train.resume=latest"]))
    assert json.loads((killed / "summary.json").read_text()) == summary


def test_starting_over_an_existing_run_is_refused(ldm_overrides):
    overrides = ldm_overrides + ["run_name=twice", "train.max_steps=2", "train.checkpoint_every=2"]
    run(train_cmd(overrides))
    proc = subprocess.run(train_cmd(overrides), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "train.resume=latest" in proc.stderr


def test_two_process_cpu_training(ldm_overrides):
    overrides = ldm_overrides + ["run_name=ddp", "train.max_steps=6", "train.batch_size=4",
                                 "train.checkpoint_every=3"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/cpu_ddp.yaml",
           "--main_process_port", str(free_port()), "-m", "src.train", "--config", RECIPE, *overrides]
    run(cmd)
    folder = run_dir(overrides, "ddp")
    last = folder / "checkpoints" / "step_000006"
    assert json.loads((last / "trainer_state.json").read_text())["world_size"] == 2
    assert (last / "rng_state_0.pt").is_file() and (last / "rng_state_1.pt").is_file()
    # the two processes drew different noise (their RNG streams differ), yet share one set of weights
    r0, r1 = (torch.load(last / f"rng_state_{i}.pt", weights_only=True)["torch"] for i in (0, 1))
    assert not torch.equal(r0, r1)
    assert len(read_metrics(folder)) == 6


def test_generate_writes_the_story_layout_deterministically(ldm_overrides, tmp_path):
    from src.generate import main

    overrides = ldm_overrides + ["run_name=gen", "train.max_steps=3", "train.checkpoint_every=3"]
    run(train_cmd(overrides))
    folder = run_dir(overrides, "gen")
    args = ["--checkpoint", str(folder), "--split", "test", "--num-stories", "2", "sample.num_inference_steps=3"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "a" / "stories.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(len(line["images"]) == 4 == len(line["captions"]) for line in lines)
    for line in lines:
        for image in line["images"]:
            assert (tmp_path / "a" / image).read_bytes() == (tmp_path / "b" / image).read_bytes()
    info = json.loads((tmp_path / "a" / "generation.json").read_text())
    assert info["checkpoint"].endswith("step_000003") and info["split"] == "test"


def test_generate_rejects_weights_of_another_model(ldm_overrides, tmp_path):
    from safetensors.torch import save_file

    from src.generate import main

    overrides = ldm_overrides + ["run_name=wrong", "train.max_steps=1", "train.checkpoint_every=1"]
    run(train_cmd(overrides))
    step = run_dir(overrides, "wrong") / "checkpoints" / "step_000001"
    weights = load_file(str(step / "trainable.safetensors"))
    weights.pop(sorted(weights)[0])
    save_file(weights, str(step / "trainable.safetensors"))
    with pytest.raises(ValueError, match="1 missing"):
        # --weights trained: the toy recipe keeps EMA weights too, which `auto` would load instead
        main(["--checkpoint", str(step), "--split", "test", "--out", str(tmp_path / "x"), "--weights", "trained"])
