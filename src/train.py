"""Training entry: `python -m src.train --config configs/char_ldm/toy.yaml [key=value ...] [--debug]`.

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a YAML recipe, e.g. configs/char_ldm/toy.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=100")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)  # a bad config fails before any model is built
    # The toy dataset and the tiny stack are built here, before the engine starts (every process calls
    # this; a lock lets one build while the others wait: src/assets.py).
    from src.assets import ensure_assets

    ensure_assets(cfg)
    from src.engine.loop import train

    run_dir = train(cfg)
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry(main))
