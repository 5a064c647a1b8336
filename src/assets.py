"""Make sure a run's dataset and weights are on disk before any model is built.

The toy dataset (`data.toy` set) and the tiny pretrained stack (`tiny_stack` set) are generated on first
use; real datasets and weights are never downloaded: a missing one is an error that says where it goes
and which README explains how to get it.

Only the entries call `ensure_assets` (src/train.py, src/generate.py, src/generate_story.py, the story
command, the studio, the tools that rebuild runs), never the engine, a task or a pipeline. It also
prepares the assets of the upstream runs a config names (a task's `upstream_keys`: stage 2's Char-LDM
run, stage 3's SFT and de-tokenizer runs), which those tasks rebuild. Every process of a multi-process
launch calls it: a file lock keyed by the dataset folder lets the first one build while the others wait,
then find everything ready (one machine; a real dataset is only checked, never built).
"""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from filelock import FileLock

from src.config import load_config


def ensure_dataset(cfg) -> Path:
    root = Path(cfg.data.root)
    if (root / "meta.json").is_file():
        return root
    if cfg.data.toy is not None:
        from src.data.toy import generate_toy_dataset

        toy = cfg.data.toy
        print(f"building the toy dataset in {root} (seed {toy.seed}) ...", flush=True)
        return generate_toy_dataset(root, seed=toy.seed, num_train=toy.num_train, num_val=toy.num_val,
                                    num_test=toy.num_test, image_size=cfg.data.image_size,
                                    frames_per_story=cfg.data.frames_per_story, story_frames=toy.story_frames,
                                    chunk_frames=cfg.data.chunk_frames)
    raise FileNotFoundError(f"data.root={root}: no meta.json there. Convert the dataset first "
                            f"(bash scripts/prepare_data.sh {cfg.data.name} SOURCE_DIR; see data/README.md)")


def ensure_weights(cfg) -> None:
    if cfg.tiny_stack is not None:
        from src.tools.tiny.stack import ensure_tiny_stack

        ensure_tiny_stack(Path(cfg.tiny_stack), Path(cfg.data.root))
        llm = getattr(cfg.model, "llm", None)  # stage 2: the tiny LLMs are built only when asked for
        if llm is not None:
            from src.tools.tiny.llm import ensure_tiny_llm_in_stack

            ensure_tiny_llm_in_stack(Path(llm), Path(cfg.tiny_stack), Path(cfg.data.root))
        if cfg.task in ("detokenizer", "story_sft"):  # SEED-Story's tiny SDXL folder and visual tokenizer
            from src.tools.tiny.seed import ensure_tiny_seed

            ensure_tiny_seed(Path(cfg.tiny_stack), Path(cfg.data.root))
    pretrained = getattr(cfg.model, "pretrained", None)
    if pretrained is not None and not Path(pretrained).exists():
        raise FileNotFoundError(f"model.pretrained={pretrained}: folder not found. Weights are never downloaded "
                                f"at run time; see pretrained/README.md for what to put there")


def assets_lock(cfg) -> FileLock:
    """One lock per dataset folder, in the temp folder (always writable, whatever data.root is)."""
    key = hashlib.sha1(str(Path(cfg.data.root).resolve()).encode()).hexdigest()[:16]
    return FileLock(str(Path(tempfile.gettempdir()) / f"storyviz-assets-{key}.lock"))


def ensure_assets(cfg, _seen: tuple = ()) -> None:
    with assets_lock(cfg):
        ensure_dataset(cfg)
        ensure_weights(cfg)
    for config in upstream_configs(cfg):
        if str(config) not in _seen:
            ensure_assets(load_config(config), _seen + (str(config),))


def upstream_configs(cfg) -> list[Path]:
    """The config.yaml of every run the config's task rebuilds (its `upstream_keys`) that exists; a
    missing one is left to the task, whose error names the key."""
    from src.runs import run_folder_of
    from src.tasks import task_class_for

    found = []
    for key in getattr(task_class_for(cfg), "upstream_keys", ()):
        path = getattr(cfg.model, key)
        if path is None:
            continue
        try:
            found.append(run_folder_of(path) / "config.yaml")
        except FileNotFoundError:
            continue  # the task names the key when it opens the run
    return found
