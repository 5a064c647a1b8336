"""DeepSpeed ZeRO through accelerate: everything the engine does differently when the launch asks for it.

`accelerate launch --config_file configs/accelerate/zero2.yaml` (or zero3, cpu_zero2, cpu_zero3) sets
ACCELERATE_USE_DEEPSPEED=true in every process; accelerate then wraps the prepared task in a
DeepSpeedEngine. The task code stays the same; this file holds the few places where ZeRO differs:

- the Accelerator must not be asked for `cpu=True` (accelerate then drops DeepSpeed without a word);
  without a GPU the processes join a gloo group and DeepSpeed's CPU accelerator does the work;
- DeepSpeed gets the batch geometry from the run's config (we do not hand it our data loader);
- under bf16 the engine keeps 16-bit working weights and fp32 masters sharded in its optimizer, so the
  trainable weights written to safetensors are the fp32 masters, gathered from every process;
- ZeRO-3 partitions every parameter, frozen ones included; a forward pass gathers them layer by layer on
  every process at once, so sampling runs on every process (only the main one keeps the images).
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from accelerate.utils import DistributedType, InitProcessGroupKwargs


def requested() -> bool:
    """True when the launcher asked for DeepSpeed (a DEEPSPEED accelerate config)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def accelerator_options() -> dict:
    """Keywords for `Accelerator(...)`: the CPU without a GPU, unless DeepSpeed is asked for."""
    gpu = torch.cuda.is_available()
    if not requested():
        return {"cpu": not gpu}  # several processes without a GPU form a MULTI_CPU gloo group
    if gpu:
        return {"cpu": False}
    from deepspeed.accelerator import get_accelerator

    name = get_accelerator().device_name()
    if name != "cpu":
        raise RuntimeError(f"DeepSpeed was asked for (ACCELERATE_USE_DEEPSPEED) without a visible CUDA GPU, but "
                           f"DeepSpeed's accelerator is '{name}' (DS_ACCELERATOR="
                           f"{os.environ.get('DS_ACCELERATOR', 'unset')}); set DS_ACCELERATOR=cpu")
    # accelerate finds no GPU backend, so name one: DeepSpeed's CPU accelerator talks over gloo.
    return {"cpu": False, "kwargs_handlers": [InitProcessGroupKwargs(backend="gloo")]}


def in_use(accelerator) -> bool:
    return getattr(accelerator, "distributed_type", None) == DistributedType.DEEPSPEED


def stage(accelerator) -> int:
    """The ZeRO stage of the run (0 without DeepSpeed)."""
    if not in_use(accelerator):
        return 0
    return int(accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))


def configure(accelerator, cfg) -> None:
    """Check that DeepSpeed really runs when asked for, and give it the run's batch geometry and clipping."""
    if requested() != in_use(accelerator):
        raise RuntimeError(f"the launcher asked for DeepSpeed={requested()} but accelerate runs "
                           f"{accelerator.distributed_type}; refusing to train with another setup than asked")
    if not in_use(accelerator):
        return
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = cfg.train.batch_size
    ds["gradient_accumulation_steps"] = cfg.train.grad_accum
    ds["train_batch_size"] = cfg.train.batch_size * cfg.train.grad_accum * accelerator.num_processes
    ds["gradient_clipping"] = cfg.train.grad_clip


def announce(accelerator, model) -> None:
    """One line saying which engine and optimizer really run (tests read it)."""
    if in_use(accelerator):
        accelerator.print(f"DeepSpeed ZeRO-{stage(accelerator)}: {type(model).__name__} with "
                          f"{type(model.optimizer).__name__}, {accelerator.num_processes} processes on "
                          f"{accelerator.device.type}")


@contextmanager
def whole_models(accelerator):
    """Build the task's models whole, on every process; DeepSpeed partitions them when they are prepared.

    accelerate registers its DeepSpeed config with transformers, whose `from_pretrained` then loads into
    ZeRO-3 partitions (zero.Init) while diffusers' does not; DeepSpeed casts a half-partitioned module to
    bf16 only in part. So, unless the launch config sets zero3_init_flag, transformers loads plainly too."""
    plugin = accelerator.state.deepspeed_plugin if in_use(accelerator) else None
    if plugin is None or plugin.is_zero3_init_enabled():
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def full_trainable_weights(task) -> dict[str, torch.Tensor]:
    """{name: full fp32 tensor on the CPU} of the trainable parameters, from the optimizer's fp32 masters.

    A collective call: every process must make it, in the same order (it gathers one tensor at a time)."""
    from deepspeed.utils import safe_get_full_fp32_param

    weights = {}
    for name, param in task.named_parameters():
        if param.requires_grad:
            full = safe_get_full_fp32_param(param)
            if full is None:
                raise RuntimeError(f"{name}: DeepSpeed holds no fp32 master for this trainable parameter")
            weights[name] = full.detach().float().cpu()
    return weights


def check_trainable_names(task, file) -> None:
    """The trainable parameters' names and full shapes (ZeRO-3 partitions them: `ds_shape`) equal those
    saved in `file` (a checkpoint's trainable.safetensors), or an error names the differences. DeepSpeed's
    own resume loads non-strictly, so this is what makes a resume into another model fail loudly."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        saved = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    own = {name: tuple(getattr(p, "ds_shape", p.shape)) for name, p in task.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    reshaped = sorted(n for n in set(own) & set(saved) if own[n] != saved[n])
    if missing or unexpected or reshaped:
        def some(names):
            return ", ".join(names[:5]) + ("..." if len(names) > 5 else "")
        raise ValueError(f"{file}: the checkpoint's trainable weights do not match this model: {len(missing)} "
                         f"missing ({some(missing)}), {len(unexpected)} unexpected ({some(unexpected)}), "
                         f"{len(reshaped)} of another shape ({some([f'{n} {saved[n]} vs {own[n]}' for n in reshaped])})")
