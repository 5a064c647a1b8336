"""Strict weight loading with errors that name the offending keys (load_state_dict's own message is a
wall of text, and `strict=False` hides partial loads)."""
from __future__ import annotations

import torch
from torch import nn


def check_state_keys(expected: set[str], state: dict, source: str) -> None:
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise KeyError(f"{source}: {len(missing)} missing keys {missing[:5]}, "
                       f"{len(unexpected)} unexpected keys {unexpected[:5]}")


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str, assign: bool = False) -> None:
    """Every key of `model.state_dict()` must be in `state` and vice versa; shapes are checked too.
    `assign=True` takes the tensors as they are (for a model built on the meta device)."""
    check_state_keys(set(model.state_dict()), state, source)
    try:
        model.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as error:  # only shape mismatches remain; keep the first line, name the source
        raise ValueError(f"{source}: {str(error).splitlines()[1].strip()}") from None
