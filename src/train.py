"""Training entry: `python -m src.train --config configs/ldm/toy.yaml [key=value ...]`.

Launch through accelerate for several processes (scripts/train_*.sh do):
`accelerate launch --config_file configs/accelerate/cpu_ddp.yaml -m src.train --config ...`.
"""
from __future__ import annotations

import argparse
import sys

from src.config import ConfigError, load_config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a YAML recipe, e.g. configs/ldm/toy.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=100")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    from src.engine.loop import train  # after validation: a bad config fails before torch is imported

    try:
        run_dir = train(cfg)
    except (FileExistsError, FileNotFoundError) as err:  # a run folder in use, missing data or weights
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
