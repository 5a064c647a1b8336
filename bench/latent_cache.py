"""Seconds per training step of the toy stage-1 recipe (configs/char_ldm/toy.yaml) with and without
`model.cache_latents` (src/tasks/frozen_cache.py): the engine's micro_step on real toy batches, loaded
before timing, so the difference is the frozen VAE and text-encoder passes the cache saves.

    python -m bench.latent_cache                                  # Char-LDM toy recipe, batch 8
    python -m bench.latent_cache --set model.character_conditioning=false   # the baseline LDM
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.common import REPO, machine, prepare_training, print_table, timed, to_device, toy_config


def bench_one(cache: bool, batch_size: int, steps: int, warmup: int, tiny_root: Path, data_root: Path,
              cache_dir: Path, overrides: list[str]) -> dict:
    from src.engine.loop import micro_step
    from src.tasks import build_task

    cfg = toy_config([f"train.batch_size={batch_size}", f"model.cache_latents={str(cache).lower()}",
                      f"model.cache_dir={cache_dir}", *overrides], tiny_root, data_root)
    torch.manual_seed(0)
    task = build_task(cfg)
    accelerator, model, optimizer, params = prepare_training(task, cfg)
    dataset = task.train_dataset()
    batches = [to_device(task.collate([dataset[(n * batch_size + i) % len(dataset)] for i in range(batch_size)]),
                       accelerator.device) for n in range(steps + warmup)]
    queue = iter(batches)
    start = time.perf_counter()
    micro_step(accelerator, model, optimizer, params, next(queue), 1.0)  # with the cache on: builds or loads it
    first = time.perf_counter() - start
    seconds = timed(lambda: micro_step(accelerator, model, optimizer, params, next(queue), 1.0), steps, warmup - 1,
                    accelerator.device)
    return {"cache_latents": cache, "batch": batch_size, "first step (s)": f"{first:.2f}",
            "s/step (median)": f"{seconds:.3f}", "device": str(accelerator.device)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--order", choices=("off-on", "on-off"), default="off-on",
                        help="which row runs first in this process (the first pays one-time start-up costs)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--tiny-root", type=Path, default=REPO / "pretrained/tiny")
    parser.add_argument("--data", type=Path, default=REPO / "data/toy")
    args = parser.parse_args(argv)
    args.order = (False, True) if args.order == "off-on" else (True, False)
    with tempfile.TemporaryDirectory() as cache_dir:  # a fresh cache: the first cached step builds it
        rows = [bench_one(cache, args.batch, args.steps, max(args.warmup, 1), args.tiny_root, args.data,
                          Path(cache_dir), args.set) for cache in args.order]
    print(f"\nToy stage-1 step with and without model.cache_latents on {machine()} "
          f"(median of {args.steps} steps after {args.warmup} warm-up)\n")
    print_table(rows, list(rows[0]))


if __name__ == "__main__":
    main()
