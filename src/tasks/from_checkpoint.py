"""Rebuild a trained task from its run folder or one of its checkpoints (generation, target caching,
stage 2 reading its stage-1 model)."""
from __future__ import annotations

import hashlib
from pathlib import Path


def run_folder_of(checkpoint: Path) -> Path:
    checkpoint = Path(checkpoint).resolve()
    if (checkpoint / "config.yaml").is_file():
        return checkpoint
    if (checkpoint.parent.parent / "config.yaml").is_file():  # <run>/checkpoints/step_N
        return checkpoint.parent.parent
    if (checkpoint / "best.json").is_file() and (checkpoint.parent / "config.yaml").is_file():  # <run>/best
        return checkpoint.parent
    raise FileNotFoundError(f"{checkpoint}: neither a run folder nor a checkpoint inside one (no config.yaml)")


def resolve_run_checkpoint(checkpoint) -> tuple[Path, Path]:
    """A run folder (its latest checkpoint), a checkpoint folder or a run's best/ folder -> (run folder,
    checkpoint folder)."""
    from src.engine.checkpoint import resolve_checkpoint

    run_dir = run_folder_of(Path(checkpoint))
    if (Path(checkpoint) / "best.json").is_file():  # the validation-best weights (no optimizer state)
        return run_dir, Path(checkpoint).resolve()
    return run_dir, resolve_checkpoint(str(checkpoint), run_dir / "checkpoints")


def weights_file(ckpt: Path, weights: str = "auto") -> Path:
    """auto: the EMA weights when the run trained with EMA."""
    use_ema = weights == "ema" or (weights == "auto" and (ckpt / "ema.safetensors").is_file())
    return ckpt / ("ema.safetensors" if use_ema else "trainable.safetensors")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def load_task_from_checkpoint(checkpoint, weights: str = "auto", overrides=None):
    """(task with the checkpoint's weights loaded strictly, its config, the weights file)."""
    from safetensors.torch import load_file

    from src.config import load_config
    from src.tasks import build_task
    from src.tools.assets import ensure_assets

    run_dir, ckpt = resolve_run_checkpoint(checkpoint)
    cfg = load_config(run_dir / "config.yaml", list(overrides or []))
    ensure_assets(cfg)
    task = build_task(cfg)
    file = weights_file(ckpt, weights)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: not found")
    task.load_trainable_state_dict(load_file(str(file)), source=str(file))
    return task, cfg, file
