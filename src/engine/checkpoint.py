"""Checkpoints: atomic, keep-last-K, exact resume.

Layout of `<run>/checkpoints/step_000500/`:
  trainable.safetensors   the parameters with requires_grad, by name (all that generation needs); under
                          DeepSpeed the full fp32 masters, gathered from every process's shard
  ema.safetensors         the EMA copy of the same, when EMA is on
  optimizer.pt scheduler.pt  optimizer and LR-schedule state (optimizer.pt is empty under DeepSpeed)
  deepspeed/              under DeepSpeed: its own sharded checkpoint (trainable weights and optimizer)
  rng_state_<rank>.pt     python/numpy/torch(/cuda) generators of every process
  trainer_state.json      step, EMA counters, world size, CPU threads per process; written last

A checkpoint is written into `step_000500.tmp` and renamed into place only when complete, so a run
killed while saving leaves the previous checkpoint as the latest. "latest" is the highest-numbered
complete `step_*` folder. Old checkpoints are renamed away before they are deleted for the same reason.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from src.engine import ema as ema_lib
from src.engine import zero
from src.runs import list_checkpoints, load_weights, step_dir_name


def _rng_state() -> dict:
    # numpy's key array goes in as a list, so that the file loads with torch.load(weights_only=True)
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _uses_deepspeed(accelerator) -> bool:
    return zero.in_use(accelerator)


def _trainable_weights(task, accelerator) -> dict:
    if _uses_deepspeed(accelerator):  # the fp32 masters, gathered from every process's shard
        return zero.full_trainable_weights(task)
    return task.trainable_state_dict()


def save_checkpoint(root: Path, step: int, task, optimizer, scheduler, ema, accelerator, keep_last: int,
                    model=None) -> Path:
    """Write checkpoint `step` from every process (each saves its RNG state) and prune old ones.

    `model` is the accelerate-prepared task; under DeepSpeed its engine saves the sharded optimizer
    state itself (every process writes its shard into `deepspeed/`)."""
    final = root / step_dir_name(step)
    tmp = root / (step_dir_name(step) + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng_state_{accelerator.process_index}.pt")
    weights = _trainable_weights(task, accelerator)
    ema_weights = None
    if ema is not None and (_uses_deepspeed(accelerator) or accelerator.is_main_process):
        ema_weights = ema_lib.full_weights(ema, task)  # gathered from every process's shard under ZeRO
    if _uses_deepspeed(accelerator):  # frozen weights come from model.pretrained, not the checkpoint
        model.save_checkpoint(str(tmp / "deepspeed"), tag="state", exclude_frozen_parameters=True)
    if accelerator.is_main_process:
        save_file({k: v.contiguous().cpu() for k, v in weights.items()}, tmp / "trainable.safetensors")
        ema_counters = None
        if ema is not None:
            ema_counters = ema_lib.counters(ema)
            save_file({n: t.contiguous().cpu() for n, t in ema_weights.items()}, tmp / "ema.safetensors")
        torch.save({} if _uses_deepspeed(accelerator) else optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        # threads per process: on a CPU, reductions split over another number of threads round differently
        state = {"step": step, "world_size": accelerator.num_processes, "ema": ema_counters,
                 "cpu_threads": torch.get_num_threads()}
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for path in tmp.rglob("*"):  # make the files durable before they become visible
            if not path.is_file():
                continue
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _prune(root, keep_last)
    accelerator.wait_for_everyone()
    return final


def _prune(root: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    for old in list_checkpoints(root)[:-keep_last]:
        trash = old.with_name(old.name + ".deleting")
        os.replace(old, trash)
        shutil.rmtree(trash)


def load_checkpoint(path: Path, task, optimizer, scheduler, ema, accelerator, model=None) -> int:
    """Restore everything `save_checkpoint` wrote; returns the step to continue from."""
    state = json.loads((path / "trainer_state.json").read_text())
    if state["world_size"] != accelerator.num_processes:
        raise ValueError(f"{path}: saved by {state['world_size']} processes, resumed with "
                         f"{accelerator.num_processes}; exact resume needs the same number")
    saved_threads = state.get("cpu_threads")  # absent in checkpoints written before it was recorded
    if accelerator.device.type == "cpu" and saved_threads not in (None, torch.get_num_threads()):
        accelerator.print(f"note: {path} was saved with {saved_threads} CPU threads per process and resumes with "
                          f"{torch.get_num_threads()} (OMP_NUM_THREADS): the run continues, but its weights will "
                          "differ in the last bits from an uninterrupted run's")
    if not _uses_deepspeed(accelerator):  # under DeepSpeed its own checkpoint restores weights and masters
        load_weights(task, path / "trainable.safetensors")
    if ema is not None:
        if state["ema"] is None:
            raise ValueError(f"{path}: train.ema is on but the checkpoint has no EMA state")
        ema_lib.load(ema, task, state["ema"], load_file(str(path / "ema.safetensors")))
    if _uses_deepspeed(accelerator):
        # DeepSpeed's own load cannot be strict (the checkpoint holds only the trainable weights:
        # exclude_frozen_parameters above), so the trainable names and shapes are checked here first; the
        # fp32 masters in the optimizer state are then restored whole and copied into the working weights.
        zero.check_trainable_names(task, path / "trainable.safetensors")
        model.load_checkpoint(str(path / "deepspeed"), tag="state", load_optimizer_states=True,
                              load_lr_scheduler_states=False, load_module_strict=False)
    else:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng_state_{accelerator.process_index}.pt"
    _set_rng_state(torch.load(rng_file, weights_only=True))
    return int(state["step"])


def save_best(folder: Path, step: int, task, metric: str, value: float) -> None:
    """The best weights so far (validation): trainable.safetensors + best.json, replaced atomically."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous().cpu() for k, v in task.trainable_state_dict().items()}, tmp / "trainable.safetensors")
    (tmp / "best.json").write_text(json.dumps({"step": step, "metric": metric, "value": value}, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def read_best(folder: Path) -> Optional[float]:
    """The value a previous (resumed) run's best checkpoint scored, or None."""
    path = folder / "best.json"
    return json.loads(path.read_text())["value"] if path.is_file() else None
