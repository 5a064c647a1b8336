"""Generation entry: draw a dataset split's stories with a trained checkpoint.

`python -m src.generate --checkpoint outputs/char_ldm/toy/default --split test --out outputs/samples/toy`

--checkpoint is a run folder (its latest checkpoint), one `checkpoints/step_NNNNNN` folder or `<run>/best`. The run's
saved config.yaml rebuilds the models; key=value overrides change sampling (e.g. sample.guidance_scale=3).
Writes the generated-story layout (docs/story_format.md). A bad input is one line on stderr and exit
status 2; --debug shows the traceback (src/errors.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src import runs
from src.config import load_config
from src.errors import run_entry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--num-stories", type=int, default=None, help="only the first N stories")
    parser.add_argument("--seed", type=int, default=None, help="default: the config's sample.seed")
    parser.add_argument("--weights", choices=runs.WEIGHTS, default="auto",
                        help="auto: the EMA weights when the run trained with EMA")
    parser.add_argument("--device", default=None, help="default: cuda when available")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    run_dir = runs.run_folder_of(args.checkpoint)
    cfg = load_config(run_dir / "config.yaml", args.overrides)  # a bad override fails before anything is read
    ckpt = runs.resolve_run_checkpoint(args.checkpoint)[1]  # a run folder -> its latest; <run>/best as it is
    file = runs.weights_file(ckpt, args.weights)

    import torch

    from src.assets import ensure_assets
    from src.tasks import build_task

    ensure_assets(cfg)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    task = build_task(cfg)
    runs.load_weights(task, file)
    task.to(device).eval()
    weights = "ema" if file.name == "ema.safetensors" else "trained"
    out = task.sample(args.out, args.split, args.num_stories, seed=args.seed,
                      extra_meta={"checkpoint": str(ckpt), "weights": weights, "config": str(run_dir / "config.yaml")})
    print(f"samples: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry(main))
