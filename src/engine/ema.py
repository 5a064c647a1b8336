"""The exponential moving average of the trained weights (`train.ema`), with or without DeepSpeed ZeRO.

Without DeepSpeed (one process, DDP) it is diffusers' EMAModel over the trainable parameters, a whole fp32
copy on every process, as diffusers' training scripts keep it (`--use_ema`).

Under ZeRO-2 and ZeRO-3 the fp32 master weights live in DeepSpeed's optimizer, each process holding one flat
partition of them per parameter group. `ShardedEMA` keeps the EMA of exactly those partitions: EMAModel's
own update run over the flat partitions, so the decay schedule and the arithmetic are a DDP run's, on 1/N
of the memory per process. What needs the whole EMA weights gathers them: a checkpoint
(`ema.safetensors` holds the full fp32 EMA by name, as without DeepSpeed) and the periodic samples (drawn
with the EMA weights in the working weights). A resume hands each process its part back from the file.
These calls are collective: every process makes them, in the same order.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from diffusers.training_utils import EMAModel

from src.engine import zero


def make_ema(cfg, accelerator, model, params: list):
    """None without `train.ema`; a ShardedEMA of the prepared DeepSpeed engine's fp32 masters under ZeRO;
    else an EMAModel of `params` on the accelerator's device."""
    if not cfg.train.ema:
        return None
    if zero.in_use(accelerator):
        return ShardedEMA(model.optimizer, cfg.train.ema_decay)
    ema = EMAModel(params, decay=cfg.train.ema_decay, foreach=True)
    ema.to(accelerator.device)
    return ema


def counters(ema) -> dict:
    """The EMA's state without its weights (trainer_state.json)."""
    state = ema.state_dict()
    state.pop("shadow_params")
    return state


def full_weights(ema, task) -> dict[str, torch.Tensor]:
    """{name: full fp32 EMA tensor on the CPU} of the trainable parameters. Collective under ZeRO."""
    if isinstance(ema, ShardedEMA):
        return ema.full_weights(task)
    names = [name for name, p in task.named_parameters() if p.requires_grad]
    return {name: shadow.detach().float().cpu() for name, shadow in zip(names, ema.shadow_params)}


def load(ema, task, state: dict, weights: dict[str, torch.Tensor]) -> None:
    """Restore `counters(...)` and `full_weights(...)` as written by a checkpoint."""
    if isinstance(ema, ShardedEMA):
        ema.load(task, state, weights)
        return
    trained = [(name, p) for name, p in task.named_parameters() if p.requires_grad]
    ema.load_state_dict({**state, "shadow_params": [weights[name] for name, _ in trained]})
    ema.to(trained[0][1].device)  # the file's tensors are on the CPU; the EMA steps beside the weights


def in_use(ema, params: list, task, everyone: bool):
    """A context in which the working weights are the EMA weights (restored after). Under ZeRO every process
    enters it (it gathers); otherwise only the processes that sample (`everyone`: all of them)."""
    if ema is None:
        return nullcontext()
    if isinstance(ema, ShardedEMA):
        return ema.working_weights(task)
    return _ema_model_in_use(ema, params) if everyone else nullcontext()


@contextmanager
def _ema_model_in_use(ema: EMAModel, params: list):
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


class ShardedEMA:
    """EMA of this process's partitions of the fp32 master weights under DeepSpeed ZeRO-2 / ZeRO-3."""

    def __init__(self, optimizer, decay: float):
        self.optimizer = optimizer  # DeepSpeed's ZeRO optimizer (the prepared engine's .optimizer)
        self.ema = EMAModel(self.partitions(), decay=decay, foreach=True)

    def partitions(self) -> list[torch.Tensor]:
        """This process's flat fp32 master partitions, one per parameter group (updated in place by DeepSpeed)."""
        for attribute in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):  # ZeRO-1/2, ZeRO-3
            flat = getattr(self.optimizer, attribute, None)
            if flat is not None:
                return list(flat)
        raise RuntimeError(f"train.ema under DeepSpeed: {type(self.optimizer).__name__} holds no fp32 master "
                           f"partitions this engine knows (ZeRO-2 and ZeRO-3 are supported)")

    @torch.no_grad()
    def step(self, params=None) -> None:
        """EMAModel.step's foreach update, over the partitions. (EMAModel.step itself would wrap them in
        deepspeed.zero.GatheredParameters under ZeRO-3: they are plain tensors, this process's own.)"""
        ema = self.ema
        ema.optimization_step += 1
        ema.cur_decay_value = ema.get_decay(ema.optimization_step)
        shadows = ema.shadow_params
        torch._foreach_sub_(shadows, torch._foreach_sub(shadows, self.partitions()), alpha=1 - ema.cur_decay_value)

    def state_dict(self) -> dict:
        return self.ema.state_dict()

    @contextmanager
    def _masters_kept(self):
        """Whatever is written into the master partitions inside, they hold the masters again after."""
        parts = self.partitions()
        masters = [part.detach().clone() for part in parts]
        try:
            yield parts
        finally:
            for part, master in zip(parts, masters):
                part.data.copy_(master)

    @contextmanager
    def _ema_in_masters(self):
        with self._masters_kept() as parts:
            for part, shadow in zip(parts, self.ema.shadow_params):
                part.data.copy_(shadow)
            yield

    def full_weights(self, task) -> dict[str, torch.Tensor]:
        with self._ema_in_masters():
            return zero.full_trainable_weights(task)

    def load(self, task, state: dict, weights: dict[str, torch.Tensor]) -> None:
        from deepspeed.utils import safe_set_full_fp32_param

        with self._masters_kept() as parts:
            for name, param in task.named_parameters():
                if param.requires_grad:
                    safe_set_full_fp32_param(param, weights[name].to(parts[0].device))
            shadows = [part.detach().clone() for part in parts]
        self.ema.load_state_dict({**state, "shadow_params": shadows})

    @contextmanager
    def working_weights(self, task):
        """The EMA weights in the module's working (bf16 or fp32) weights: under ZeRO-3 each process writes
        its own partition (param.ds_tensor), under ZeRO-2 every process writes the whole gathered weights."""
        from deepspeed.utils import safe_get_local_fp32_param

        trained = [p for p in task.parameters() if p.requires_grad]
        partitioned = any(hasattr(p, "ds_id") for p in trained)
        targets = [p.ds_tensor.data if partitioned else p.data for p in trained]
        stash = [target.clone() for target in targets]
        with self._ema_in_masters():
            if partitioned:
                for param, target in zip(trained, targets):
                    target.copy_(safe_get_local_fp32_param(param).view_as(target))
            else:
                weights = zero.full_trainable_weights(task)
                names = [name for name, p in task.named_parameters() if p.requires_grad]
                for name, target in zip(names, targets):
                    target.copy_(weights[name].view_as(target))
        try:
            yield
        finally:
            for target, saved in zip(targets, stash):
                target.copy_(saved)
