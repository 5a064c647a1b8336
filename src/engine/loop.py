"""The one training loop, for every stage.

The task (src/tasks/) builds its models and data and computes named losses; this loop owns everything
else: accelerate (devices, DDP / DeepSpeed, mixed precision, gradient accumulation), AdamW, the LR
schedule, gradient clipping, EMA, logging, periodic samples and checkpoints with exact resume.
"""
from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from torch.profiler import record_function
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from src import runs
from src.config import save_config
from src.engine import checkpoint as ckpt
from src.engine import ema as ema_lib
from src.engine import zero
from src.engine.sampler import StepBatchSampler
from src.engine.tracking import start_trackers, tracker_backends
from src.tasks import build_task

COMPUTE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine"}


def _check_run_folder(run_dir: Path, cfg) -> None:
    existing = runs.latest_or_none(run_dir / "checkpoints")
    if existing is not None and cfg.train.resume is None:
        raise FileExistsError(f"{run_dir} already holds checkpoints (latest {existing.name}); pass "
                              f"train.resume=latest to continue it, or a new run_name=... to start afresh")


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class NonFiniteGuard:
    """Remembers, on the device, the first step whose loss was not finite; `check()` reads it (a host sync)
    and stops the run. The loop checks on log steps and before every checkpoint, validation and sample, so
    a GPU is not stalled every step and no checkpoint of non-finite weights is ever written."""

    def __init__(self, device):
        self.step = torch.full((), -1.0, dtype=torch.float64, device=device)  # -1: every loss finite so far
        self.loss = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, step: int, loss: torch.Tensor) -> None:
        # Python scalars enter torch.where as kernel arguments: no host-to-device copy, so no sync.
        newly = (self.step < 0) & ~torch.isfinite(loss)
        self.step = torch.where(newly, float(step), self.step)
        self.loss = torch.where(newly, loss.to(torch.float64), self.loss)

    def check(self) -> None:
        step = int(self.step.item())
        if step >= 0:
            loss = self.loss.item()
            raise FloatingPointError(f"step {step}: loss is {loss}; lower optim.lr or check the data")


def micro_step(accelerator, model, optimizer, params, batch: dict, grad_clip: float) -> dict:
    """Forward, backward and (on the last micro-batch of an accumulation) clip + optimizer step. The phases
    are named for torch.profiler (`record_function`; nothing is recorded without a profiler)."""
    with accelerator.accumulate(model):
        with record_function("step/forward"):
            losses = model(batch)
        with record_function("step/backward"):
            accelerator.backward(losses["loss"])
        with record_function("step/clip"):
            if accelerator.sync_gradients and grad_clip > 0:
                accelerator.clip_grad_norm_(params, grad_clip)
        with record_function("step/optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return losses


def make_optimizer(cfg, params: list) -> torch.optim.AdamW:
    """AdamW over the trainable (fp32 master) parameters; `optim.fused` picks PyTorch's fused kernel
    (one kernel for every tensor, CPU and GPU) over the per-tensor loop."""
    return torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                             weight_decay=cfg.optim.weight_decay, fused=cfg.optim.fused or None)


def make_lr_schedule(optim, optimizer, max_steps: int):
    if optim.schedule == "step":  # GILL / StoryGPT-V stage 2: linear warmup, then x decay_factor every decay_every
        warmup, every, factor = optim.warmup_steps, max(1, optim.decay_every), optim.decay_factor
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / warmup) if s < warmup else factor ** ((s - warmup) // every))
    if optim.schedule == "cosine" and optim.min_lr_ratio > 0:  # SEED-X / SEED-Story: cosine down to a floor
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: cosine_with_floor(s, optim.warmup_steps, max_steps, optim.min_lr_ratio))
    return get_scheduler(SCHEDULES[optim.schedule], optimizer, num_warmup_steps=optim.warmup_steps,
                         num_training_steps=max_steps)


def cosine_with_floor(step: int, warmup: int, total: int, floor: float) -> float:
    """LR multiplier: linear warmup, then a half cosine from 1 down to `floor` at step `total` (diffusers'
    cosine, rescaled to end at the floor instead of 0)."""
    if step < warmup:
        return step / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def make_accelerator(cfg, run_dir: Path) -> Accelerator:
    """Without a visible GPU, accelerate is asked for the CPU: several processes then form a gloo group.
    A DeepSpeed launch gets a DeepSpeed engine on any device, or an error (src/engine/zero.py)."""
    # accelerate keeps the first run's mixed precision for the whole process; a second run in the same
    # process (tests, notebooks) may ask for another. The process group (PartialState) is kept.
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=cfg.train.grad_accum,
        log_with=tracker_backends(cfg) or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
        **zero.accelerator_options(),
    )
    zero.configure(accelerator, cfg)
    return accelerator


def train(cfg) -> Path:
    """Train the run described by `cfg`; returns the run folder."""
    run_dir = runs.run_dir_of(cfg)
    accelerator = make_accelerator(cfg, run_dir)
    if accelerator.is_main_process:
        _check_run_folder(run_dir, cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")

    set_seed(cfg.train.seed)  # identical initial weights on every process
    with zero.whole_models(accelerator):
        task = build_task(cfg)
    if not zero.in_use(accelerator):  # DeepSpeed casts the whole module to its own dtype at prepare
        task.hold_frozen_in(COMPUTE_DTYPES.get(cfg.train.mixed_precision))  # frozen parts at the compute dtype
    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, params)
    scheduler = make_lr_schedule(cfg.optim, optimizer, cfg.train.max_steps)
    model, optimizer = accelerator.prepare(task, optimizer)
    zero.announce(accelerator, model)
    ema = ema_lib.make_ema(cfg, accelerator, model, params)  # under ZeRO: the EMA of each process's shard

    ckpt_root = run_dir / "checkpoints"
    start_step = 0
    if cfg.train.resume is not None:
        path = runs.resolve_checkpoint(cfg.train.resume, ckpt_root)
        start_step = ckpt.load_checkpoint(path, task, optimizer, scheduler, ema, accelerator, model)
        accelerator.print(f"resumed from {path} at step {start_step}")
    else:
        set_seed(cfg.train.seed * 1000 + accelerator.process_index + 1)  # per-process noise

    dataset = task.train_dataset()
    sampler = StepBatchSampler(len(dataset), cfg.train.batch_size, cfg.train.seed, accelerator.process_index,
                               accelerator.num_processes, start_batch=start_step * cfg.train.grad_accum)
    # The loader gets its own generator: creating its iterator must not draw from the global RNG, or a
    # resumed run (which creates it after restoring the RNG) would be one draw off the original run.
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=task.collate,
                        num_workers=cfg.data.num_workers, persistent_workers=cfg.data.num_workers > 0,
                        generator=torch.Generator().manual_seed(cfg.train.seed))
    batches = iter(loader)
    trackers = start_trackers(accelerator, cfg, run_dir)
    trackers.truncate_after(start_step)

    progress = tqdm(total=cfg.train.max_steps, initial=start_step, desc=f"{cfg.stage}/{cfg.data.name}",
                    disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    started, step, last_saved = time.time(), start_step, None
    best = ckpt.read_best(run_dir / "best")
    guard = NonFiniteGuard(accelerator.device)
    while step < cfg.train.max_steps:
        running = {}  # this step's losses, averaged over its micro-batches, kept on the device
        for _ in range(cfg.train.grad_accum):
            batch = _to_device(next(batches), accelerator.device)
            losses = micro_step(accelerator, model, optimizer, params, batch, cfg.train.grad_clip)
            for name, value in losses.items():
                value = value.detach().float() / cfg.train.grad_accum
                running[name] = running[name] + value if name in running else value
        scheduler.step()
        if ema is not None:
            ema.step(params)
        step += 1
        guard.update(step, running["loss"])
        progress.update(1)
        logging_now = step % cfg.train.log_every == 0 or step == cfg.train.max_steps
        if logging_now:
            guard.check()  # the one host sync of a step, on log steps only
            logs = {f"train/{k}": v.item() for k, v in running.items()}
            logs["train/lr"] = scheduler.get_last_lr()[0]
            accelerator.log(logs, step=step)
            progress.set_postfix(loss=f"{logs['train/loss']:.4f}", lr=f"{logs['train/lr']:.2e}")
            trackers.write_jsonl(logs, step)

        out_of_time = cfg.train.max_minutes > 0 and (time.time() - started) / 60 >= cfg.train.max_minutes
        done = step == cfg.train.max_steps or out_of_time
        if step % cfg.train.checkpoint_every == 0 or done:
            guard.check()  # never write non-finite weights
            ckpt.save_checkpoint(ckpt_root, step, task, optimizer, scheduler, ema, accelerator,
                                 cfg.train.keep_last, model)
            last_saved = step
        if cfg.train.validate_every and (step % cfg.train.validate_every == 0 or done):
            guard.check()
            best = _validate(task, accelerator, step, run_dir, trackers, best)
        if (cfg.train.sample_every and step % cfg.train.sample_every == 0) or done:
            guard.check()
            _sample(task, ema, params, accelerator, run_dir / "samples" / runs.step_dir_name(step), cfg)
        if out_of_time:
            accelerator.print(f"stopping at step {step}: train.max_minutes={cfg.train.max_minutes} reached")
            break
    progress.close()
    accelerator.end_training()
    # A resume that had nothing left to train keeps the summary of the session that trained (its minutes).
    if accelerator.is_main_process and not (step == start_step and (run_dir / "summary.json").is_file()):
        summary = {"final_step": step, "resumed_from_step": start_step, "last_checkpoint": last_saved,
                   "minutes": (time.time() - started) / 60,  # this session's minutes: steps after resumed_from_step
                   "computed_on": runs.computed_on()}
        trackers.write_summary(summary)
    return run_dir


def _validate(task, accelerator, step: int, run_dir: Path, trackers, best):
    """`task.validate()` -> {metric: value}, logged; a new best on `task.best_metric` (lower is better)
    saves the trainable weights to <run>/best/. Draws nothing from the training RNG (exact resume)."""
    with torch.random.fork_rng(devices=[]):
        task.eval()
        try:
            metrics = task.validate()
        finally:
            task.train()
    accelerator.log(metrics, step=step)
    trackers.write_jsonl(metrics, step)
    key = getattr(task, "best_metric", None)
    if key in metrics and (best is None or metrics[key] < best):
        best = metrics[key]
        if accelerator.is_main_process:
            ckpt.save_best(run_dir / "best", step, task, key, best)
    accelerator.wait_for_everyone()
    return best


def _sample(task, ema, params, accelerator, out_dir: Path, cfg) -> None:
    """Sample stories with the EMA weights when EMA is on; leaves every RNG untouched (exact resume).

    Under ZeRO-3 every process runs the same forward passes (each layer gathers its partitioned weights
    from all processes); only the main process keeps the images. Under ZeRO-2 and ZeRO-3 every process
    takes part in putting the EMA weights in place (they are gathered from every process's shard)."""
    if not getattr(task, "draws_samples", True):  # a stage with nothing to draw (e.g. story_sft)
        return
    everyone = zero.stage(accelerator) == 3
    draws = accelerator.is_main_process or everyone
    with torch.random.fork_rng(devices=[]), ema_lib.in_use(ema, params, task, draws):
        if draws:
            with tempfile.TemporaryDirectory() as scratch:
                task.eval()
                try:
                    task.sample(out_dir if accelerator.is_main_process else Path(scratch) / out_dir.name,
                                cfg.sample.split, cfg.sample.num_stories)
                finally:
                    task.train()
    accelerator.wait_for_everyone()
