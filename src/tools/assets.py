"""Make sure a run's dataset and weights are on disk before any model is built.

The toy dataset (`data.toy` set) and the tiny pretrained stack (`tiny_stack` set) are generated on first
use; real datasets and weights are never downloaded: a missing one is an error that says where it goes
and which README explains how to get it.
"""
from __future__ import annotations

from pathlib import Path


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
                                    frames_per_story=cfg.data.frames_per_story)
    raise FileNotFoundError(f"data.root={root}: no meta.json there. Convert the dataset first "
                            f"(bash scripts/prepare_data.sh {cfg.data.name} SOURCE_DIR; see data/README.md)")


def ensure_weights(cfg) -> None:
    if cfg.tiny_stack is not None:
        from src.tools.tiny_stack import ensure_tiny_stack

        ensure_tiny_stack(Path(cfg.tiny_stack), Path(cfg.data.root))
        llm = getattr(cfg.model, "llm", None)  # stage 2: the tiny LLMs are built only when asked for
        if llm is not None:
            from src.tools.tiny_llm import ensure_tiny_llm_in_stack

            ensure_tiny_llm_in_stack(Path(llm), Path(cfg.tiny_stack), Path(cfg.data.root))
    pretrained = getattr(cfg.model, "pretrained", None)
    if pretrained is not None and not Path(pretrained).exists():
        raise FileNotFoundError(f"model.pretrained={pretrained}: folder not found. Weights are never downloaded "
                                f"at run time; see pretrained/README.md for what to put there")


def ensure_assets(cfg) -> None:
    ensure_dataset(cfg)
    ensure_weights(cfg)
