"""The contract between a stage and the engine.

A task is an `nn.Module` that owns every model of its stage (frozen ones included, with
`requires_grad=False`), so that the engine can hand the whole thing to accelerate (DDP wraps it and
syncs only the trainable parameters). `forward(batch)` is the training step and returns named losses;
the key "loss" is the one optimised.

Checkpoints hold exactly the parameters with `requires_grad=True`, under their names in this module.

The constructor builds models only: it loads pretrained parts through `src.models.pretrained.load_pretrained`
and reads no dataset (read data in `train_dataset`, `collate` and `sample`, or lazily on first use). A task
that also gives `example_batch` and `conditioning_module` is covered by the real-scale shape check
(`python -m src.tools.shape_check`, docs/shape_check.md), which builds it from config files alone on the
meta device and runs one training step on a batch of the right shapes.

Under mixed precision the engine calls `hold_frozen_in(dtype)`: the frozen parameters (VAE, text encoder,
the frozen layers of an image tower) are then stored in the compute dtype, as diffusers' training
scripts hold them (`weight_dtype`), while the trained ones stay fp32 masters for the optimizer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn


class Task(nn.Module):
    model_choices: dict = {}  # `model:` key -> its allowed values, checked before any model is built
    upstream_keys: tuple = ()  # `model:` keys naming run folders this task rebuilds (src/assets.py prepares them)

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        for key, allowed in self.model_choices.items():
            value = getattr(cfg.model, key)
            if value not in allowed:
                raise ValueError(f"key 'model.{key}': '{value}' is not one of {', '.join(allowed)}")

    # ---- training ---------------------------------------------------------------------------------
    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.training_step(batch)

    def train_dataset(self) -> torch.utils.data.Dataset:
        raise NotImplementedError

    def collate(self, items: list) -> dict:
        raise NotImplementedError

    best_metric: Optional[str] = None  # a key of validate()'s result; lower is better

    def validate(self) -> dict[str, float]:
        """Metrics on held-out data, run by the engine every `train.validate_every` steps."""
        return {}

    draws_samples: bool = True  # False: the stage draws no images; the engine then skips periodic samples

    def sample(self, out_dir: Path, split: str, num_stories: Optional[int]) -> Path:
        """Draw stories of `split` with the current weights into the generated-story layout."""
        raise NotImplementedError

    # ---- shape check (src/tools/shape_check.py) ---------------------------------------------------
    def example_batch(self, batch_size: int, device: torch.device | str) -> dict:
        """A batch of the keys the training step reads, with the dtypes and ranks `collate` gives them
        and the recipe's sizes, made from the config alone (no dataset, no real tokenizer: see
        src/models/pretrained.py), on `device`."""
        raise NotImplementedError(f"task '{self.cfg.task}' ({type(self).__name__}) has no example_batch(); "
                                  f"the shape check needs one to cover it")

    def conditioning_module(self) -> Optional[nn.Module]:
        """The submodule whose output is this stage's diffusion conditioning (e.g. [B,77,D] text states),
        reported by the shape check; None when the stage has none."""
        return None

    # ---- precision --------------------------------------------------------------------------------
    frozen_dtype: Optional[torch.dtype] = None   # set by hold_frozen_in; None: everything in fp32

    def hold_frozen_in(self, dtype: Optional[torch.dtype]) -> None:
        """Store every frozen floating-point parameter in `dtype` (None: back to fp32). Only for code that
        runs under autocast (the engine's training step); a bf16 -> fp32 -> bf16 round trip is exact."""
        target = dtype or torch.float32
        for param in self.parameters():
            if not param.requires_grad and param.is_floating_point() and param.dtype != target:
                param.data = param.data.to(target)
        self.frozen_dtype = dtype

    # ---- weights ----------------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Strict load of the trainable weights: any missing, unexpected or mis-shaped key is an error."""
        own = dict((n, p) for n, p in self.named_parameters() if p.requires_grad)
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"{source}: trainable weights do not match this model: "
                f"{len(missing)} missing ({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}), "
                f"{len(unexpected)} unexpected ({', '.join(unexpected[:5])}{'...' if len(unexpected) > 5 else ''})")
        for name, param in own.items():
            if param.shape != state[name].shape:
                raise ValueError(f"{source}: '{name}' has shape {tuple(state[name].shape)}, "
                                 f"the model expects {tuple(param.shape)}")
        with torch.no_grad():
            for name, param in own.items():
                param.copy_(state[name].to(param.dtype))
