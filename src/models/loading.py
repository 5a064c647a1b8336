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


def read_weights_metadata(path, metadata_key: str, hint: str) -> dict:
    """json-decoded metadata[metadata_key] of a safetensors file written by `write_weights_file`, without
    reading a tensor (the shape check builds models from it); errors as read_weights_file's."""
    import json
    from pathlib import Path

    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; {hint}")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata_key not in metadata:
        raise KeyError(f"{path}: no `{metadata_key}` metadata; {hint}")
    return json.loads(metadata[metadata_key])


def read_weights_file(path, metadata_key: str, hint: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, json-decoded metadata[metadata_key]) of a safetensors file written by
    `write_weights_file`; a missing file or key is an error naming the file and `hint` (how to make it)."""
    from safetensors.torch import load_file

    metadata = read_weights_metadata(path, metadata_key, hint)  # the same checks, header only
    return load_file(str(path)), metadata


def write_weights_file(state: dict[str, torch.Tensor], path, metadata: dict[str, str]) -> None:
    """Atomically (temporary file, then rename) write `state` with string `metadata` as safetensors."""
    import os
    from pathlib import Path

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({key: value.contiguous() for key, value in state.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
