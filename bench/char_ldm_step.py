"""Benchmark: the Char-LDM training step (StoryGPT-V stage 1) with its extra losses on, beside the
baseline LDM step on the same UNet and batch.

    python -m bench.char_ldm_step                                  # tiny stack on this machine (CPU)
    python -m bench.char_ldm_step --arch sd15 --batch 8 --precision bf16   # on a GPU: SD 1.5 at 512 px

The `char_ldm` variant is src/tasks/char_ldm.py's real `training_step`: VAE and text encoding, the
character references through the CLIP vision tower (augmented on the device), the fuse module, the UNet
with the attention-recording processors on the recipe's layers, the attention-control loss and (on
`mask_loss_prob` of the steps) the mask-restricted loss; `ldm` is the same task with
`model.character_conditioning=false`, i.e. the baseline step. Both run through the engine's
`micro_step` (accelerate mixed precision, backward, gradient clipping, AdamW) on one fixed batch built
by the task's own `collate`, so it measures the model step, not data loading.

Batches: `--batch-source dataset` (default) takes real items of the toy dataset's train split through
`task.train_dataset()` (frames, masks and references loaded at --resolution and the image encoder's
size); `synthetic` builds items of the same keys and shapes (random frames, 2 characters per frame
with rectangular masks and references cut from them, captions naming toy characters, 3 slots).

`--arch sd15` builds SD 1.5's architecture and a CLIP ViT-L/14 vision tower (2 trainable layers) with
random weights from configs/bench/sd15.yaml (no download), with the attention layers, loss weight and
reference settings of configs/char_ldm/base.yaml; meant for a GPU, it also runs on a CPU at small sizes
(batch 1, 256 px: about 17 GiB of memory) to measure peak memory.

FLOPs: one extra step, before the timed ones, under torch.utils.flop_counter.FlopCounterMode
(forward + backward). TFLOP/s = FLOPs / (s/step); MFU = TFLOP/s / the GPU's dense bf16/fp16 peak
(bench/common.py GPU_PEAK_TFLOPS, or --peak-tflops). With --gradient-checkpointing the count includes
the recomputed forward, so MFU is then a hardware-FLOP utilisation. The step is stochastic (dropout
draws, which frames are fused, the 30% mask loss): the counted step is one draw under a fixed seed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from bench.common import (
    REPO,
    add_step_arguments,
    count_flops,
    free_memory,
    limit_gpu_memory,
    machine,
    peak_memory_gib,
    peak_reserved_gib,
    peak_tflops,
    prepare_training,
    print_table,
    profile_step,
    reset_peak,
    sd15_components,
    throughput_columns,
    timed,
    to_device,
    toy_config,
)

ACTIONS = ["walked on the beach", "waited in the forest", "played at night", "talked in the kitchen"]
SYNTHETIC_SLOTS = 3


def recipe_overrides(arch: str) -> list[str]:
    """sd15: the real recipe's (configs/char_ldm/base.yaml) attention layers, loss weight, trainable tower
    layers and reference settings in place of the toy recipe's."""
    if arch != "sd15":
        return []
    model = yaml.safe_load((REPO / "configs/char_ldm/base.yaml").read_text())["model"]
    return [f"model.attention_layers={json.dumps(model['attention_layers'])}",
            f"model.attention_loss_weight={model['attention_loss_weight']}",
            f"model.image_encoder_trainable_layers={model['image_encoder_trainable_layers']}",
            f"model.mask_loss_prob={model['mask_loss_prob']}",
            "model.fixed_reference_prob=0.0", "model.reference_augment.gray=0.1"]


def dataset_items(task, batch_size: int) -> list[dict]:
    """`batch_size` real frames spread over the train split (loaded at cfg.data.image_size)."""
    dataset = task.train_dataset()
    stride = max(1, len(dataset) // batch_size)
    return [dataset[(i * stride) % len(dataset)] for i in range(batch_size)]


def synthetic_items(names: list[str], batch_size: int, resolution: int, ref_size: int) -> list[dict]:
    """Items with CharacterFrameDataset's keys: 2 characters per frame, side by side, rectangular masks,
    references cut from the frame, M = 3 slots."""
    from src.data.references import crop_reference

    generator = torch.Generator().manual_seed(0)
    h = w = resolution
    boxes = [(h // 4, 3 * h // 4, w // 8, w // 2), (h // 5, 4 * h // 5, w // 2, 7 * w // 8)]
    items = []
    for i in range(batch_size):
        chars = [names[(2 * i) % len(names)], names[(2 * i + 1) % len(names)]]
        pixels = torch.rand(3, h, w, generator=generator) * 2 - 1
        masks = torch.zeros(SYNTHETIC_SLOTS, h, w)
        ref_pixels = torch.zeros(SYNTHETIC_SLOTS, 3, ref_size, ref_size)
        ref_masks = torch.zeros(SYNTHETIC_SLOTS, 1, ref_size, ref_size)
        for j, (y0, y1, x0, x1) in enumerate(boxes):
            masks[j, y0:y1, x0:x1] = 1.0
            ref_pixels[j], ref_masks[j] = crop_reference(pixels, masks[j], ref_size)
        caption = f"{chars[0]} and {chars[1]} {ACTIONS[i % len(ACTIONS)]}."
        items.append({"pixel_values": pixels, "caption": caption, "caption_original": caption,
                      "story_id": f"synthetic_{i:05d}", "frame_index": 0, "characters": chars, "background": None,
                      "char_labels": torch.tensor([float(n in chars) for n in names]), "bg_label": -1,
                      "char_masks": masks, "num_chars": len(chars), "ref_pixels": ref_pixels, "ref_masks": ref_masks})
    return items


def bench_one(variant: str, arch: str, batch_size: int, resolution: int, precision: str, steps: int, warmup: int,
              tiny_root: Path, data_root: Path, gradient_checkpointing: bool, batch_source: str,
              flops: bool, given_peak: float | None, overrides: list[str] = (), profile: bool = False
              ) -> tuple[dict, str, float]:
    from src.data.stories import read_meta
    from src.engine.loop import micro_step
    from src.tasks.char_ldm import CharLDMTask
    from src.tasks.ldm import LDMTask

    char = variant == "char_ldm"
    cfg = toy_config([f"train.batch_size={batch_size}", f"train.mixed_precision={precision}",
                      f"data.image_size={resolution}", f"model.character_conditioning={str(char).lower()}",
                      f"model.gradient_checkpointing={str(gradient_checkpointing).lower()}",
                      *recipe_overrides(arch), *overrides], tiny_root, data_root)
    torch.manual_seed(0)
    components = None
    if arch == "sd15":
        components = sd15_components(Path(cfg.model.pretrained),
                                     cfg.model.image_encoder_trainable_layers if char else None)
    task = (CharLDMTask if char else LDMTask)(cfg, components)
    if batch_source == "dataset":
        items = dataset_items(task, batch_size)
    else:
        names = [c["name"] for c in read_meta(cfg.data.root)["characters"]]
        ref_size = task.image_encoder.image_size if char else 32  # the ldm step does not read references
        items = synthetic_items(names, batch_size, resolution, ref_size)
    cpu_batch = task.collate(items)
    accelerator, model, optimizer, params = prepare_training(task, cfg)
    device = accelerator.device
    batch = to_device(cpu_batch, device)

    def step():
        return micro_step(accelerator, model, optimizer, params, batch, cfg.train.grad_clip)

    torch.manual_seed(0)  # both variants draw the same dropout / timesteps / noise sequence
    step()  # a first step (with model.cache_latents it builds the cache: not part of a step's FLOPs)
    step_flops = count_flops(step) if flops else None
    peak, peak_source = peak_tflops(device, precision, given_peak)
    losses = []
    reset_peak(device)
    seconds = timed(lambda: losses.append(step()), steps, warmup, device)
    memory, memory_kind = peak_memory_gib(device)
    if profile:  # one more step under torch.profiler: where its time goes
        phases, ops = profile_step(step, device)
        print(f"\n{variant}: one step under torch.profiler, by phase (micro_step's record_function ranges)\n")
        print_table(phases, ["phase", "s", "share"])
        print(f"\n{variant}: the operators with the most self time\n")
        print_table(ops, list(ops[0]))
    trainable = sum(p.numel() for p in params)
    row = {"variant": variant, "arch": arch, "trainable": f"{trainable / 1e6:.1f}M", "res": resolution,
           "batch": batch_size, "precision": precision,
           **throughput_columns(batch_size, seconds, step_flops, peak),
           "peak mem (GiB)": f"{memory:.2f} ({memory_kind})"}
    if device.type == "cuda":
        row["reserved (GiB)"] = f"{peak_reserved_gib():.2f}"
    if char:  # evidence that the extra loss ran on the timed steps
        timed_losses = losses[warmup:]
        row["attn loss"] = f"{sum(float(step['attention']) != 0 for step in timed_losses)}/{len(timed_losses)} steps"
    else:
        row["attn loss"] = "off"
    row["device"] = str(device)
    accelerator.free_memory()
    return row, peak_source, seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--variant", choices=("char_ldm", "ldm", "both"), default="both")
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="default: 32 (tiny), 8 (sd15)")
    add_step_arguments(parser)
    parser.add_argument("--batch-source", choices=("dataset", "synthetic"), default="dataset")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense peak for MFU (default: bench/common.py's table on known GPUs)")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (and MFU)")
    parser.add_argument("--profile", action="store_true",
                        help="after the timed steps, one step under torch.profiler: seconds per phase, top operators")
    parser.add_argument("--memory-limit-gib", type=float, default=None,
                        help="GPU: let torch's allocator hold at most this much (emulates a smaller card; "
                             "a step that needs more is reported as OOM)")
    parser.add_argument("--tiny-root", type=Path, default=REPO / "pretrained/tiny")
    parser.add_argument("--data", type=Path, default=REPO / "data/toy")
    args = parser.parse_args(argv)
    if args.arch == "sd15" and not torch.cuda.is_available():
        print("note: --arch sd15 on a CPU: about 17 GiB of memory and tens of seconds per step at 256 px, batch 1")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    resolution = args.resolution or (512 if args.arch == "sd15" else 64)
    precision = args.precision or ("bf16" if torch.cuda.is_available() else "no")
    batches = args.batch or ([8] if args.arch == "sd15" else [32])
    variants = ["ldm", "char_ldm"] if args.variant == "both" else [args.variant]
    if args.memory_limit_gib and torch.cuda.is_available():
        limit_gpu_memory(args.memory_limit_gib)
    rows, seconds, peak_source = [], {}, ""
    for batch_size in batches:
        for variant in variants:
            try:
                row, peak_source, seconds[variant, batch_size] = bench_one(
                    variant, args.arch, batch_size, resolution, precision, args.steps, args.warmup, args.tiny_root,
                    args.data, args.gradient_checkpointing, args.batch_source, not args.no_flops, args.peak_tflops,
                    args.set, args.profile)
            except torch.cuda.OutOfMemoryError:
                limit = f" (limit {args.memory_limit_gib:g} GiB)" if args.memory_limit_gib else ""
                row = {"variant": variant, "arch": args.arch, "res": resolution, "batch": batch_size,
                       "precision": precision, "s/step": "OOM" + limit}
            rows.append(row)
            free_memory()
    print(f"\nChar-LDM training step on {machine()} (median of {args.steps} steps after {args.warmup} warm-up; "
          f"{args.batch_source} batch)\n")
    print_table(rows, list(dict.fromkeys(c for r in rows for c in r)))
    if not args.no_flops:
        print(f"\nMFU peak: {peak_source}")
    for batch_size in batches:
        if ("char_ldm", batch_size) in seconds and ("ldm", batch_size) in seconds:
            ratio = seconds["ldm", batch_size] / seconds["char_ldm", batch_size]
            print(f"batch {batch_size}: char_ldm samples/s = {ratio:.2f}x ldm's")


if __name__ == "__main__":
    main()
