"""A run's denoising loss on fixed frames, timesteps and noise, for the tests that check that training
lowers it (tests/test_train_char_ldm.py, tests/test_train_ldm.py).

Why not the training loss: at 50-100 steps its windows are dominated by the timesteps each batch drew.
Over seeds 0-4 on 2026-12-07 (one thread), the mean of the Char-LDM test's last 10 steps ranged from 0.50
to 1.60 of its first 5 (two seeds ended above their start, and only seed 0 passed the old < 0.5); this
fixed evaluation ranged 0.816-0.827 on the same runs (docs/architecture.md, "Loss thresholds")."""
from __future__ import annotations

from pathlib import Path

from accelerate.utils import set_seed
from safetensors.torch import load_file


def fixed_denoising_losses(run: Path, weights: Path, frames: int = 32, batch: int = 8) -> tuple[float, float]:
    """The mean denoising MSE of `run`'s task over its first `frames` training items, every draw seeded
    (the items' own choices, timesteps, noise): with the run's initial weights (seeded as the engine seeds
    them), then with its trainable `weights`; no caption or mask dropout, fp32. One task serves both."""
    from src.config import load_config
    from src.tasks import build_task

    cfg = load_config(str(run / "config.yaml"), ["model.caption_dropout=0", "model.mask_loss_prob=0"])
    set_seed(cfg.train.seed)  # as src/engine/loop.py before build_task: the same initial weights
    task = build_task(cfg)
    items = task.train_dataset()

    def mean_loss() -> float:
        total = 0.0
        for start in range(0, frames, batch):
            set_seed(start)
            losses = task.training_step(task.collate([items[i] for i in range(start, start + batch)]))
            total += float(losses.get("mse", losses["loss"]))  # Char-LDM: "mse" beside its attention loss
        return total / (frames // batch)

    initial = mean_loss()
    task.load_trainable_state_dict(load_file(str(weights)), source=str(weights))
    return initial, mean_loss()
