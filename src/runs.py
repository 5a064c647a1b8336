"""Run folders: the one place that knows their layout (docs/architecture.md, "Run folders").

    outputs/<stage>/<dataset>/<run_name>/
      config.yaml                    the resolved config: enough to rebuild the run's task
      checkpoints/step_NNNNNN/       trainable.safetensors (+ ema.safetensors), optimizer, scheduler, RNG
                                     state, trainer_state.json (written by src/engine/checkpoint.py)
      best/                          the validation-best trainable weights and best.json
      samples/ logs/ metrics.jsonl summary.json

A run is named to every entry, task and pipeline as a run folder (its latest checkpoint), one of its
`checkpoints/step_NNNNNN` folders or its `best/` folder. This module lists and resolves those, picks the
weights file (EMA or trained), and opens a run: its config checked against the task it must be, its task
built and its weights loaded strictly. It sits below the engine and the tasks: it imports the config
schema and the task registry (names -> classes, imported by name on use), never a task module.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Optional

STEP_DIR = re.compile(r"^step_(\d+)$")
# A checkpoint is complete when these exist (trainer_state.json is written last, src/engine/checkpoint.py).
REQUIRED = ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json")
WEIGHTS = ("auto", "ema", "trained")


def run_dir_of(cfg) -> Path:
    """The run folder a config trains into: <output_root>/<stage>/<data.name>/<run_name>."""
    return Path(cfg.output_root) / cfg.stage / cfg.data.name / cfg.run_name


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def computed_on() -> dict:
    """What a run or a build was computed on, beyond its seeds (summary.json, the tiny stack's stack.json).
    On a CPU the last bits of a result depend on the threads per process (reductions are split over them)
    and, in bf16, on the instruction set (native AVX-512 BF16 kernels or not): a figure reproduces to the
    digit only where these match (docs/results_storygpt_v.md, "The demo's checkpoint")."""
    import torch

    return {"torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


# ---- checkpoints ------------------------------------------------------------------------------------
def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root` (a run's checkpoints/ folder), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_or_none(root: Path) -> Optional[Path]:
    found = list_checkpoints(root)
    return found[-1] if found else None


def resolve_checkpoint(spec: str, root: Path) -> Path:
    """`latest` (under `root`), a run folder, or a checkpoint folder -> a complete checkpoint folder."""
    if spec == "latest":
        found = list_checkpoints(root)
        if not found:
            raise FileNotFoundError(f"resume=latest: no complete checkpoint under {root}")
        return found[-1]
    path = Path(spec)
    if (path / "checkpoints").is_dir():
        return resolve_checkpoint("latest", path / "checkpoints")
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: not a complete checkpoint (missing {', '.join(missing)})")
    return path


# ---- a run given as a folder, a checkpoint or best/ -------------------------------------------------
def run_folder_of(path) -> Path:
    """The run folder of a run folder, one of its checkpoints/step_N folders or its best/ folder."""
    path = Path(path).resolve()
    if (path / "config.yaml").is_file():
        return path
    if (path.parent.parent / "config.yaml").is_file():  # <run>/checkpoints/step_N
        return path.parent.parent
    if (path / "best.json").is_file() and (path.parent / "config.yaml").is_file():  # <run>/best
        return path.parent
    raise FileNotFoundError(f"{path}: neither a run folder nor a checkpoint inside one (no config.yaml)")


def resolve_run_checkpoint(path) -> tuple[Path, Path]:
    """(run folder, checkpoint folder): a run folder -> its latest checkpoint; a checkpoint or best/ as it is."""
    run_dir = run_folder_of(path)
    if (Path(path) / "best.json").is_file():  # the validation-best weights (no optimizer state)
        return run_dir, Path(path).resolve()
    return run_dir, resolve_checkpoint(str(path), run_dir / "checkpoints")


def open_run(path, task_names: tuple[str, ...], where: str):
    """(run folder, checkpoint folder, config) of a run of one of `task_names`. Each problem is one error
    that names `where` (a config key or a flag) and the path: no run there, no checkpoint yet, a run of
    another task."""
    from src.config import load_config

    try:
        run_dir = run_folder_of(path)
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


# ---- weights --------------------------------------------------------------------------------------
def weights_file(ckpt: Path, weights: str = "auto") -> Path:
    """The weights a checkpoint folder serves: `auto` the EMA weights when the run kept them (what it
    samples with during training), else the trained ones; `ema` / `trained` explicitly. Missing: an error."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights '{weights}': not one of {', '.join(WEIGHTS)}")
    ckpt = Path(ckpt)
    use_ema = weights == "ema" or (weights == "auto" and (ckpt / "ema.safetensors").is_file())
    file = ckpt / ("ema.safetensors" if use_ema else "trainable.safetensors")
    if not file.is_file():
        raise FileNotFoundError(f"{file}: not found" + (" (the run trained without EMA)" if use_ema else ""))
    return file


def load_weights(task, file: Path) -> None:
    """A task's trainable weights from a safetensors file, strictly (missing, unexpected or mis-shaped
    keys are an error naming them and the file)."""
    from safetensors.torch import load_file

    task.load_trainable_state_dict(load_file(str(file)), source=str(file))


def load_task(checkpoint, weights: str = "auto", overrides=None):
    """(task rebuilt from the run's config.yaml with `overrides`, its weights loaded strictly; the config;
    the weights file). The caller has made sure the run's assets exist (src/assets.py: entries do)."""
    from src.config import load_config
    from src.tasks import build_task

    run_dir, ckpt = resolve_run_checkpoint(checkpoint)
    cfg = load_config(run_dir / "config.yaml", list(overrides or []))
    file = weights_file(ckpt, weights)
    task = build_task(cfg)
    load_weights(task, file)
    return task, cfg, file


# ---- identity of files, and of two runs that must fit together ----------------------------------------
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def file_stamp(path: Path) -> dict:
    """Where a weights file is and which version of it (size and modification time, cheap to compare)."""
    stat = Path(path).stat()
    return {"file": str(Path(path).resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def check_same_tokenizer(mllm_cfg, detok_cfg, mllm_name: str, detok_name: str) -> None:
    """SEED-Story: the MLLM's regressed features must be the kind the de-tokenizer draws from: both runs'
    configs name the same visual tokenizer (kind and weights file), or an error names the key and both runs."""
    for key in ("tokenizer", "tokenizer_path"):
        mine, theirs = getattr(mllm_cfg.model, key), getattr(detok_cfg.model, key)
        same = Path(mine).resolve() == Path(theirs).resolve() if key == "tokenizer_path" else mine == theirs
        if not same:
            raise ValueError(f"key 'model.{key}': {mllm_name} has '{mine}', {detok_name} '{theirs}'; both must "
                             f"use the same visual tokenizer")


def resolve_seed_story_runs(mllm, detokenizer) -> tuple:
    """SEED-Story's two runs from what the user named: (MLLM run, its config, de-tokenizer run, its config,
    the SFT config the de-tokenizer's tokenizer is read from). `detokenizer` is a detokenizer run (stage 1)
    or a story_adapt run (stage 3); without it, the MLLM run's `model.detokenizer_run` draws. Given a
    story_adapt run, `mllm` may be None: the SFT run it was adapted to (its model.sft_run). Every problem
    is one error naming the flag or key."""
    dcfg = None
    if detokenizer is not None:
        dcfg = open_run(detokenizer, ("detokenizer", "story_adapt"), "--detokenizer")[2]
    if mllm is None:
        if dcfg is None or dcfg.task != "story_adapt":
            raise ValueError("--mllm: required unless --detokenizer is a story_adapt run (which names its MLLM)")
        mllm = Path(dcfg.model.sft_run)
    mcfg = open_run(mllm, ("story_sft",), "--mllm")[2]
    if detokenizer is None:
        if mcfg.model.detokenizer_run is None:
            raise ValueError(f"--detokenizer: not given, and the MLLM run ({mllm}) names no de-tokenizer "
                             f"(its model.detokenizer_run)")
        detokenizer = Path(mcfg.model.detokenizer_run)
        dcfg = open_run(detokenizer, ("detokenizer",), f"{mllm}: key 'model.detokenizer_run'")[2]
    tokenizer_cfg = dcfg
    if dcfg.task == "story_adapt":  # its features are its SFT run's tokenizer's
        tokenizer_cfg = open_run(dcfg.model.sft_run, ("story_sft",), f"{detokenizer}: key 'model.sft_run'")[2]
    return Path(mllm), mcfg, Path(detokenizer), dcfg, tokenizer_cfg
