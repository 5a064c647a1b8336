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


def open_run(path, task_names: tuple[str, ...], where: str):
    """(run folder, checkpoint folder, config) of a run of one of `task_names`, given as a run folder (its
    latest checkpoint), a checkpoint folder or <run>/best. Each problem is one error that names `where`
    (a config key or a flag) and the path: no run there, no checkpoint yet, a run of another task."""
    from src.config import load_config
    from src.engine.checkpoint import list_checkpoints

    try:
        run_dir = run_folder_of(Path(path))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{where}: {err}") from None
    config = run_dir / "config.yaml"
    cfg = load_config(config)
    if cfg.task not in task_names:
        raise ValueError(f"{where}: {config}: key 'task' is '{cfg.task}', {where} needs a "
                         f"{' or '.join(repr(t) for t in task_names)} run")
    if Path(path).resolve() == run_dir and not list_checkpoints(run_dir / "checkpoints"):
        raise FileNotFoundError(f"{where}: {run_dir} holds no complete checkpoint yet (no {run_dir}/checkpoints/step_*)")
    try:
        return run_dir, resolve_run_checkpoint(path)[1], cfg
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{where}: {err}") from None


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


def check_same_tokenizer(mllm_cfg, detok_cfg, mllm_name: str, detok_name: str) -> None:
    """The MLLM's regressed features must be the kind the de-tokenizer draws from: both runs' configs name
    the same visual tokenizer (kind and weights file), or an error names the key and both runs."""
    for key in ("tokenizer", "tokenizer_path"):
        mine, theirs = getattr(mllm_cfg.model, key), getattr(detok_cfg.model, key)
        same = Path(mine).resolve() == Path(theirs).resolve() if key == "tokenizer_path" else mine == theirs
        if not same:
            raise ValueError(f"key 'model.{key}': {mllm_name} has '{mine}', {detok_name} '{theirs}'; both must "
                             f"use the same visual tokenizer")
