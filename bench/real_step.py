"""Benchmark: any recipe's training step at real size with random weights (no download).

    python -m bench.real_step --config configs/detokenizer/george.yaml --batch 8 \
        model.pretrained=tests/assets/config_only/stable-diffusion-xl-base-1.0 \
        model.tokenizer_path=tests/assets/config_only/Qwen-VL-Chat
    python -m bench.real_step --config configs/story_sft/george.yaml --batch 2 \
        model.llm=tests/assets/config_only/Llama-2-7b-hf model.tokenizer_path=tests/assets/config_only/Qwen-VL-Chat
    python -m bench.real_step --config configs/align/flintstones.yaml --batch 4 \
        model.llm=tests/assets/config_only/opt-6.7b model.vision_encoder=tests/assets/config_only/clip-vit-large-patch14

The task is built the way the real-scale shape check builds it (src/tools/shape_check.py, docs/shape_check.md):
`build_task(cfg)`, the training code path, inside `config_only(device)` (src/models/pretrained.py), so every
pretrained part comes from its folder's config files alone, here with its classes' random initial weights
on the GPU (a folder of config files is enough: tests/assets/config_only/). The batch is the task's
`example_batch()` (the recipe's shapes, from the config alone: zero pixels and token ids), the step the
engine's `micro_step` (accelerate's mixed precision, backward, clipping, AdamW) after the engine's
`hold_frozen_in`. It measures the model step, not data loading.

Columns: s/step (median of --steps after --warmup), samples/s, trainable parameters, FLOPs of one step
(forward + backward, torch.utils.flop_counter, counted once outside the timed loop), TFLOP/s, MFU against
the GPU's dense bf16 peak (bench/common.py), peak memory (GPU: torch's peak allocation and the allocator's
peak reservation). On a CPU (the dry run of bench/gpu.sh, with the tiny stack's folders) it runs the same
code at toy size.
"""
from __future__ import annotations

import argparse

import torch

from bench.common import (
    count_flops,
    limit_gpu_memory,
    machine,
    peak_memory_gib,
    peak_reserved_gib,
    peak_tflops,
    prepare_training,
    print_table,
    reset_peak,
    throughput_columns,
    timed,
)


def bench(config: str, overrides: list[str], batch_size: int, precision: str, steps: int, warmup: int, flops: bool,
          given_peak: float | None, label: str | None) -> tuple[dict, str]:
    from src.config import load_config
    from src.engine.loop import micro_step
    from src.models.pretrained import config_only
    from src.tasks import build_task

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_config(config, [*overrides, f"train.batch_size={batch_size}", f"train.mixed_precision={precision}",
                               "logging.tensorboard=false"])
    torch.manual_seed(0)
    with config_only(device):
        task = build_task(cfg)
    task.train()
    accelerator, model, optimizer, params = prepare_training(task, cfg, lr=cfg.optim.lr)
    batch = task.example_batch(batch_size, accelerator.device)

    def step():
        return micro_step(accelerator, model, optimizer, params, batch, cfg.train.grad_clip)

    step_flops = count_flops(step) if flops else None
    peak, peak_source = peak_tflops(device, precision, given_peak)
    reset_peak(device)
    seconds = timed(step, steps, warmup, device)
    memory, memory_kind = peak_memory_gib(device)
    row = {"step": label or f"{cfg.task} ({config})", "trainable": f"{sum(p.numel() for p in params) / 1e6:.1f}M",
           "batch": batch_size, "precision": precision, **throughput_columns(batch_size, seconds, step_flops, peak),
           "peak mem (GiB)": f"{memory:.2f} ({memory_kind})"}
    if device.type == "cuda":
        row["reserved (GiB)"] = f"{peak_reserved_gib():.2f}"
    return row, peak_source


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a recipe, e.g. configs/detokenizer/george.yaml")
    parser.add_argument("--batch", type=int, default=None, help="default: the recipe's train.batch_size")
    parser.add_argument("--precision", choices=("no", "bf16", "fp16"), default=None,
                        help="default: bf16 on a GPU, no on a CPU")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--label", default=None, help="the row's name in the table")
    parser.add_argument("--no-flops", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--memory-limit-gib", type=float, default=None, help="GPU: cap torch's allocator")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the recipe (model folders, ...)")
    args = parser.parse_args(argv)
    if args.memory_limit_gib and torch.cuda.is_available():
        limit_gpu_memory(args.memory_limit_gib)
    precision = args.precision or ("bf16" if torch.cuda.is_available() else "no")
    batch = args.batch
    if batch is None:
        from src.config import load_config

        batch = load_config(args.config, args.overrides).train.batch_size
    row, peak_source = bench(args.config, args.overrides, batch, precision, args.steps, args.warmup,
                             not args.no_flops, args.peak_tflops, args.label)
    print(f"\nReal-size training step, random weights, on {machine()} (median of {args.steps} steps after "
          f"{args.warmup} warm-up)\n")
    print_table([row], list(row))
    if not args.no_flops:
        print(f"\nMFU peak: {peak_source}")


if __name__ == "__main__":
    main()
