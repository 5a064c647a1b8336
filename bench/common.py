"""Shared benchmark helpers: timing, peak memory, FLOP counting and MFU, the table printer, and building
the stage-1 task (toy recipe, tiny stack or SD 1.5's architecture with random weights) with its
accelerator and optimizer the way the engine does."""
from __future__ import annotations

import gc
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
SD15_SPEC = REPO / "configs/bench/sd15.yaml"

# Dense (no sparsity) bf16 / fp16 tensor-core peaks in TFLOP/s, from the vendors' datasheets, matched in
# order on a lower-cased substring of torch.cuda.get_device_name(). fp16 with fp32 accumulation where
# the consumer cards differ (RTX 4090). Anything else: pass --peak-tflops.
GPU_PEAK_TFLOPS = [
    ("h100 pcie", 756.0),
    ("h100 nvl", 835.0),
    ("h100", 989.0),       # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("h200", 989.0),
    ("a100", 312.0),
    ("l40s", 362.0),
    ("4090", 165.0),
    ("a10g", 125.0),
]


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"CPU ({cpu}, {torch.get_num_threads()} threads), torch {torch.__version__}"


# ---- memory -------------------------------------------------------------------------------------------
def reset_peak(device: torch.device) -> None:
    """CUDA: reset torch's peak allocation. CPU (Linux): reset the process's peak resident set
    (/proc/self/clear_refs, "5"); where that is not possible the CPU peak stays the process's lifetime peak."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _vm_hwm_gib() -> Optional[float]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return None


def peak_memory_gib(device: torch.device) -> tuple[float, str]:
    """CUDA: peak allocated by torch since `reset_peak`. CPU: the process's peak resident set since
    `reset_peak` (Linux) or over its life (includes the Python runtime and everything loaded)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30, "GPU alloc"
    hwm = _vm_hwm_gib()
    if hwm is not None:
        return hwm, "peak RSS"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak RSS"


def peak_reserved_gib() -> float:
    """CUDA: the caching allocator's peak reservation (what the card must hold, less the CUDA context)."""
    return torch.cuda.max_memory_reserved() / 2**30


def limit_gpu_memory(gib: float) -> None:
    """Emulate a smaller card: the caching allocator refuses to hold more than `gib` GiB."""
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total))


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- timing, FLOPs ------------------------------------------------------------------------------------
def timed(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call (median of `steps` calls, after `warmup` calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def count_flops(fn) -> int:
    """FLOPs of one call of `fn` (forward and backward ops alike: matmuls, convolutions, attention),
    counted by torch.utils.flop_counter. Run it outside timed loops: the counter slows every op."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def peak_tflops(device: torch.device, precision: str, given: Optional[float]) -> tuple[Optional[float], str]:
    """(peak TFLOP/s, where it came from). None when unknown: CPU, an unlisted GPU, or fp32 on a GPU
    (the table holds bf16/fp16 tensor-core peaks) without --peak-tflops."""
    if given:
        return given, "--peak-tflops"
    if device.type != "cuda":
        return None, "CPU: pass --peak-tflops"
    name = torch.cuda.get_device_name(device)
    if precision not in ("bf16", "fp16"):
        return None, f"{name}: the table is bf16/fp16 peaks, this is {precision}"
    for key, peak in GPU_PEAK_TFLOPS:
        if key in name.lower():
            return peak, f"{name}: {peak:g} TFLOP/s dense {precision}"
    return None, f"{name}: not in bench/common.py GPU_PEAK_TFLOPS, pass --peak-tflops"


def throughput_columns(batch_size: int, seconds: float, flops: Optional[int], peak: Optional[float]) -> dict:
    row = {"s/step": f"{seconds:.3f}", "steps/s": f"{1 / seconds:.2f}", "samples/s": f"{batch_size / seconds:.1f}"}
    if flops is not None:
        achieved = flops / seconds / 1e12
        row.update({"TFLOP/step": f"{flops / 1e12:.3g}", "TFLOP/s": f"{achieved:.3g}",
                    "MFU": f"{100 * achieved / peak:.1f}%" if peak else "n/a"})
    return row


def profile_step(step, device: torch.device, top: int = 12) -> tuple[list[dict], list[dict]]:
    """One call of `step` under torch.profiler: (the engine's phases, as micro_step names them, with their
    seconds and share; the `top` operators by self time). CPU time on a CPU, device time on a GPU."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()

    def total(event):
        return (event.device_time_total if cuda else event.cpu_time_total) / 1e6

    def own(event):
        return (event.self_device_time_total if cuda else event.self_cpu_time_total) / 1e6

    phases = {e.key: total(e) for e in events if e.key.startswith("step/")}
    whole = sum(phases.values()) or 1.0
    phase_rows = [{"phase": name, "s": f"{value:.3f}", "share": f"{100 * value / whole:.0f}%"}
                  for name, value in phases.items()]
    ops = sorted((e for e in events if not e.key.startswith("step/")), key=own, reverse=True)[:top]
    op_rows = [{"operator": e.key, "self s": f"{own(e):.3f}", "share of step": f"{100 * own(e) / whole:.0f}%",
                "calls": e.count} for e in ops]
    return phase_rows, op_rows


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("| " + " | ".join(c.ljust(widths[c]) for c in columns) + " |")
    print("|" + "|".join("-" * (widths[c] + 2) for c in columns) + "|")
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) + " |")


# ---- building the stage-1 task ----------------------------------------------------------------------
def toy_config(overrides: list[str], tiny_root: Path, data_root: Path):
    """configs/char_ldm/toy.yaml with the tiny stack under `tiny_root` and the toy data under `data_root`
    (both built on first use, at the toy recipe's own image size), plus `overrides`."""
    from src.assets import ensure_assets
    from src.config import load_config

    base = [f"data.root={data_root}", f"tiny_stack={tiny_root}", f"model.pretrained={tiny_root}/stable-diffusion-v1-5",
            f"model.image_encoder={tiny_root}/clip", "logging.tensorboard=false"]
    # Assets first, without the overrides: a data.image_size override must not change the toy data built.
    ensure_assets(load_config(REPO / "configs/char_ldm/toy.yaml", base))
    return load_config(REPO / "configs/char_ldm/toy.yaml", base + overrides)


def sd15_spec() -> dict:
    """configs/bench/sd15.yaml: the model configs of SD 1.5 (and the CLIP ViT-L/14 vision tower)."""
    return yaml.safe_load(SD15_SPEC.read_text())


def sd15_components(tokenizer_source: Path, image_encoder_layers: Optional[int] = None) -> dict:
    """SD 1.5's architecture with random weights; the tokenizer is CLIP's vocabulary (from the tiny stack).
    With `image_encoder_layers`, also a CLIP ViT-L/14 vision tower with random weights, wrapped in
    CharacterImageEncoder with that many trainable layers (Char-LDM)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    spec = sd15_spec()
    parts = {"unet": UNet2DConditionModel(**spec["unet"]), "vae": AutoencoderKL(**spec["vae"]),
             "text_encoder": CLIPTextModel(CLIPTextConfig(**spec["text_encoder"])),
             "tokenizer": CLIPTokenizer.from_pretrained(tokenizer_source, subfolder="tokenizer"),
             "noise_scheduler": DDPMScheduler(**spec["scheduler"])}
    if image_encoder_layers is not None:
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        from src.models.character_encoder import CharacterImageEncoder

        tower = CLIPVisionModelWithProjection(CLIPVisionConfig(**spec["vision_encoder"]))
        parts["image_encoder"] = CharacterImageEncoder(tower.vision_model, tower.visual_projection,
                                                       tower.config.image_size, image_encoder_layers)
    return parts


def prepare_training(task, cfg, lr: float = 1e-5):
    """The engine's accelerator (mixed precision, devices) around `task` and an AdamW over its
    trainable parameters: (accelerator, model, optimizer, params)."""
    from src.engine.loop import COMPUTE_DTYPES, make_accelerator, make_optimizer

    accelerator = make_accelerator(cfg, Path(tempfile.mkdtemp()))
    task.hold_frozen_in(COMPUTE_DTYPES.get(cfg.train.mixed_precision))  # as the engine does
    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, params)
    for group in optimizer.param_groups:
        group["lr"] = lr
    model, optimizer = accelerator.prepare(task, optimizer)
    return accelerator, model, optimizer, params


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def add_step_arguments(parser) -> None:
    """The flags every training-step benchmark shares."""
    parser.add_argument("--resolution", type=int, default=None, help="default: 64 (tiny), 512 (sd15)")
    parser.add_argument("--precision", choices=("no", "bf16", "fp16"), default=None,
                        help="default: no on CPU, bf16 on GPU")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for the task and optimizer (repeatable), e.g. optim.fused=true")
