"""The loop's losses stay on the device between log steps (src/engine/loop.py, NonFiniteGuard): what is
logged is still each log step's loss (averaged over its micro-batches), and a non-finite loss still stops
the run, naming its step, before any checkpoint of the non-finite weights is written."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from src.engine.tracking import read_metrics
from tests.test_train_ldm import RECIPE, run_dir

SHORT = ["train.max_steps=4", "train.checkpoint_every=100", "train.sample_every=0", "train.ema=false",
         "optim.warmup_steps=0", "optim.schedule=constant", "train.batch_size=4"]


def record_losses(monkeypatch, nan_at: int | None = None) -> list[float]:
    """Wrap LDMTask.training_step: every micro-batch's loss is recorded (read here, in the test, not by the
    loop); call `nan_at` (1-based) returns a NaN loss instead."""
    from src.tasks.ldm import LDMTask

    seen: list[float] = []
    original = LDMTask.training_step

    def training_step(self, batch):
        losses = original(self, batch)
        if nan_at is not None and len(seen) + 1 == nan_at:
            losses = {"loss": losses["loss"] * float("nan")}
        seen.append(float(losses["loss"].detach()))
        return losses
    monkeypatch.setattr(LDMTask, "training_step", training_step)
    return seen


def train(overrides: list[str]) -> None:
    from src.train import main

    assert main(["--config", RECIPE, *overrides]) == 0


def test_log_steps_carry_their_own_step_loss_averaged_over_micro_batches(ldm_overrides, monkeypatch):
    seen = record_losses(monkeypatch)
    overrides = ldm_overrides + SHORT + ["train.grad_accum=2", "train.log_every=2", "run_name=accum"]
    train(overrides)
    logged = {row["step"]: row for row in read_metrics(run_dir(overrides, "accum"))}
    assert sorted(logged) == [2, 4]
    assert len(seen) == 8  # 4 steps of 2 micro-batches
    for step, row in logged.items():
        micro = seen[2 * (step - 1): 2 * step]
        assert row["train/loss"] == pytest.approx(sum(micro) / 2, rel=1e-6)


def test_logging_rarely_changes_neither_the_logged_values_nor_the_weights_nor_adds_host_reads(ldm_overrides,
                                                                                               monkeypatch):
    """Tensor.item() called by the loop (src/engine/loop.py) is its host sync: runs of 3 and 6 steps without a
    log step before the last read as often. (torch's own CPU AdamW reads its step counters, on the host.)"""
    from tests.test_train_ldm import final_weights

    every = ldm_overrides + SHORT + ["train.max_steps=6", "train.log_every=1", "run_name=every"]
    train(every)
    dense = {r["step"]: r for r in read_metrics(run_dir(every, "every"))}
    assert sorted(dense) == [1, 2, 3, 4, 5, 6]

    reads = []
    item = torch.Tensor.item

    def counting_item(self):
        if sys._getframe(1).f_code.co_filename.endswith(str(Path("src/engine/loop.py"))):
            reads.append(1)
        return item(self)
    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    counts = []
    for steps in (3, 6):
        reads.clear()
        sparse = ldm_overrides + SHORT + [f"train.max_steps={steps}", "train.log_every=100", f"run_name=sparse{steps}"]
        train(sparse)
        counts.append(len(reads))
        rows = read_metrics(run_dir(sparse, f"sparse{steps}"))
        assert [r["step"] for r in rows] == [steps] and rows[0] == dense[steps]  # only the last step is logged
    assert counts[0] == counts[1]
    a, b = final_weights(run_dir(every, "every"), 6), final_weights(run_dir(every, "sparse6"), 6)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_a_nan_loss_stops_the_run_before_any_checkpoint_of_its_weights(ldm_overrides, monkeypatch):
    record_losses(monkeypatch, nan_at=3)
    overrides = ldm_overrides + SHORT + ["train.max_steps=8", "train.log_every=6", "train.checkpoint_every=2",
                                         "run_name=nan"]
    with pytest.raises(FloatingPointError, match=r"^step 3: loss is nan; lower optim.lr"):
        train(overrides)
    folder = run_dir(overrides, "nan")
    # step 2 was saved; the check before step 4's save stopped the run (no log step came before it)
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step_000002"]
    assert read_metrics(folder) == []


def test_the_guard_keeps_the_first_non_finite_step():
    from src.engine.loop import NonFiniteGuard

    guard = NonFiniteGuard(torch.device("cpu"))
    guard.update(1, torch.tensor(0.5))
    guard.check()
    guard.update(2, torch.tensor(math.inf))
    guard.update(3, torch.tensor(math.nan))
    with pytest.raises(FloatingPointError, match=r"^step 2: loss is inf"):
        guard.check()
