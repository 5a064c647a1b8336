"""Benchmark: the stage-1 LDM training step (VAE encode, text encode, UNet forward + backward, AdamW).

    python -m bench.ldm_step                                   # tiny stack on this machine (CPU)
    python -m bench.ldm_step --arch sd15 --resolution 512 --batch 8 --precision bf16   # on a GPU

It runs the task's real `training_step` through the engine's `micro_step` (accelerate, clipping, AdamW)
on synthetic batches, so it measures the model step, not data loading. `--arch sd15` builds Stable
Diffusion 1.5's architecture with random weights from configs/bench/sd15.yaml (no download). Prints a
markdown table: seconds per step, steps/s, samples/s, peak memory.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.common import (
    REPO,
    add_step_arguments,
    machine,
    peak_memory_gib,
    prepare_training,
    print_table,
    reset_peak,
    sd15_components,
    timed,
    toy_config,
)

CAPTIONS = ["Ada and Bob walked on the beach.", "She waited in the forest.", "Cleo, Dan and Eve played at night."]


def bench_one(arch: str, batch_size: int, resolution: int, precision: str, steps: int, warmup: int,
              tiny_root: Path, data_root: Path, gradient_checkpointing: bool, overrides: list[str] = ()) -> dict:
    from src.engine.loop import micro_step
    from src.tasks.ldm import LDMTask

    cfg = toy_config([f"train.batch_size={batch_size}", f"train.mixed_precision={precision}",
                      f"data.image_size={resolution}",
                      f"model.gradient_checkpointing={str(gradient_checkpointing).lower()}", *overrides],
                     tiny_root, data_root)
    components = sd15_components(Path(cfg.model.pretrained)) if arch == "sd15" else None
    task = LDMTask(cfg, components)
    accelerator, model, optimizer, params = prepare_training(task, cfg)
    device = accelerator.device
    generator = torch.Generator().manual_seed(0)
    batch = {"pixel_values": (torch.rand(batch_size, 3, resolution, resolution, generator=generator) * 2 - 1).to(device),
             "caption": [CAPTIONS[i % len(CAPTIONS)] for i in range(batch_size)]}
    reset_peak(device)
    seconds = timed(lambda: micro_step(accelerator, model, optimizer, params, batch, 1.0), steps, warmup, device)
    memory, memory_kind = peak_memory_gib(device)
    unet_params = sum(p.numel() for p in task.unet.parameters())
    return {"arch": arch, "UNet params": f"{unet_params / 1e6:.1f}M", "res": resolution, "batch": batch_size,
            "precision": precision, "s/step": f"{seconds:.3f}", "steps/s": f"{1 / seconds:.2f}",
            "samples/s": f"{batch_size / seconds:.1f}", "peak mem (GiB)": f"{memory:.2f} ({memory_kind})",
            "device": str(device)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 32])
    add_step_arguments(parser)
    parser.add_argument("--tiny-root", type=Path, default=REPO / "pretrained/tiny")
    parser.add_argument("--data", type=Path, default=REPO / "data/toy")
    args = parser.parse_args(argv)
    if args.arch == "sd15" and not torch.cuda.is_available():
        parser.error("--arch sd15 needs a GPU (860M-parameter UNet at 512 px)")
    resolution = args.resolution or (512 if args.arch == "sd15" else 64)
    precision = args.precision or ("bf16" if torch.cuda.is_available() else "no")
    rows = [bench_one(args.arch, b, resolution, precision, args.steps, args.warmup, args.tiny_root, args.data,
                      args.gradient_checkpointing, args.set) for b in args.batch]
    print(f"\nLDM training step on {machine()} (median of {args.steps} steps after {args.warmup} warm-up)\n")
    print_table(rows, list(rows[0]))


if __name__ == "__main__":
    main()
