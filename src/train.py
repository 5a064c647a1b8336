"""Training entry: `python -m src.train --config configs/ldm/toy.yaml [key=value ...] [--debug]`.

Launch through accelerate for several processes (scripts/train_*.sh do):
`accelerate launch --config_file configs/accelerate/cpu_ddp.yaml -m src.train --config ...`.
A bad input (config key, story line, missing weights) is one line on stderr and exit status 2;
--debug shows the traceback (src/errors.py).
"""
from __future__ import annotations

import argparse
import sys

from src.config import load_config
from src.errors import run_entry


def prepare_assets(cfg) -> None:
    """Build what the run needs on disk (the toy dataset, the tiny pretrained stack) before the engine
    starts. The main process builds them first; the others wait, then find them ready."""
    import torch
    from accelerate import PartialState

    from src.tools.assets import ensure_assets

    # The same `cpu` the engine's Accelerator asks for: the process group is created once, here.
    with PartialState(cpu=not torch.cuda.is_available()).main_process_first():
        ensure_assets(cfg)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a YAML recipe, e.g. configs/ldm/toy.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=100")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)  # a bad config fails before torch is imported
    prepare_assets(cfg)
    from src.engine.loop import train

    run_dir = train(cfg)
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry(main))
