"""What every parity check shares: a result row, the max-abs-diff of nested outputs, the printed table,
importing the original code from a user's clone (with run-time shims for imports that fail on today's
libraries), and the golden files the CI tests read (tests/assets/parity/)."""
from __future__ import annotations

import contextlib
import importlib
import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

TOLERANCE = 1e-5          # fp32 components
END_TO_END_TOLERANCE = 1e-4   # final images or latents of a whole sample


@dataclass
class Row:
    component: str            # what is compared, e.g. "Char-LDM fuse module"
    original: str             # the release's file:class (or file:function)
    ours: str                 # our file:class
    converter: str            # our converter that turned the release's weights into ours ("-": none)
    max_abs_diff: float
    tolerance: float = TOLERANCE
    deliberate: Optional[str] = None   # a documented deliberate difference: the config key that restores the release
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.max_abs_diff <= self.tolerance:
            return "match"
        return f"deliberate ({self.deliberate})" if self.deliberate else "DIFFERS"

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance or self.deliberate is not None


def max_abs_diff(ours, theirs) -> float:
    """Largest |ours - theirs| over tensors, numbers and nested lists / tuples / dicts of them; a
    structural mismatch (keys, lengths, shapes) is infinitely far."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        if set(ours) != set(theirs):
            return float("inf")
        return max((max_abs_diff(ours[k], theirs[k]) for k in ours), default=0.0)
    if isinstance(ours, (list, tuple)) and isinstance(theirs, (list, tuple)):
        if len(ours) != len(theirs):
            return float("inf")
        return max((max_abs_diff(a, b) for a, b in zip(ours, theirs)), default=0.0)
    a, b = torch.as_tensor(ours), torch.as_tensor(theirs)
    if a.shape != b.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    if not (a.is_floating_point() or b.is_floating_point()):
        return float((a != b).any())  # ids, masks: 0 when identical, 1 otherwise
    return float((a.double() - b.double()).abs().max())


def format_table(rows: list[Row]) -> str:
    """One markdown table: component | original | ours | converter | max abs diff | verdict."""
    lines = ["| component | original file:class | ours | converter | max abs diff | verdict |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        note = f" ({r.note})" if r.note else ""
        lines.append(f"| {r.component}{note} | {r.original} | {r.ours} | {r.converter} | "
                     f"{r.max_abs_diff:.2e} | {r.verdict} |")
    return "\n".join(lines)


def stub_module(name: str, **attrs) -> types.ModuleType:
    """A module object with the given attributes (a shim for an import the original code makes but the
    compared path never uses, or one whose location moved in today's libraries)."""
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


@contextlib.contextmanager
def clone_on_path(clone: Path, shims: Optional[dict[str, types.ModuleType]] = None,
                  subdir: str = "") -> Iterator[Path]:
    """Import the original code from the user's clone: `clone/subdir` goes first on sys.path and `shims`
    stand in for the modules named by their keys while inside; everything the block imported from the
    clone is forgotten afterwards, so two clones with the same package names (SEED-Story and SEED-X
    both have `src`) never see each other's modules."""
    root = (Path(clone) / subdir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder (a clone of the original repository is expected there)")
    before = set(sys.modules)
    saved = {name: sys.modules[name] for name in (shims or {}) if name in sys.modules}
    sys.modules.update(shims or {})
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for name in set(sys.modules) - before:
            module = sys.modules[name]
            origin = getattr(module, "__file__", None) or ""
            if name in (shims or {}) or origin.startswith(str(root)):
                del sys.modules[name]
        sys.modules.update(saved)
        importlib.invalidate_caches()


@contextlib.contextmanager
def hidden_modules(*top_level: str) -> Iterator[None]:
    """Inside the block, the already imported modules under the given top-level names (and the names
    themselves) are out of sys.modules, so an import of that name finds the clone's package, not ours
    (SEED-Story's and SEED-X's `src`, SEED-X's peft 0.4 beside today's peft); afterwards they are back
    and whatever the block imported under those names is forgotten."""
    def under(name: str) -> bool:
        return any(name == top or name.startswith(top + ".") for top in top_level)

    saved = {name: module for name, module in sys.modules.items() if under(name)}
    for name in saved:
        del sys.modules[name]
    try:
        yield
    finally:
        for name in [name for name in sys.modules if under(name)]:
            del sys.modules[name]
        sys.modules.update(saved)
        importlib.invalidate_caches()


def namespace_package(name: str, folder: Path) -> types.ModuleType:
    """A namespace package `name` whose only folder is `folder`: a clone's `src` (it has no __init__.py,
    so a plain import would find our regular `src` package first, whatever the order on sys.path)."""
    module = types.ModuleType(name)
    module.__path__ = [str(folder)]
    module.__file__ = None
    return module


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randomize_(module: torch.nn.Module, seed: int, scale: float = 0.02) -> torch.nn.Module:
    """Seeded random weights for every floating tensor (parameters and float buffers) in name order, so
    that no component is compared at its (often zero or identity) initialisation, where a wrong wiring can
    hide. Norm scales are drawn around 1."""
    gen = seeded(seed)
    norm_scales = {f"{name}.weight" for name, m in module.named_modules()
                   if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm)) or "Norm" in type(m).__name__}
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict(keep_vars=True).items()):
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=gen) * scale
                tensor.copy_(noise + 1.0 if name in norm_scales else noise)
    return module


def write_golden(folder: Path, name: str, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """tests/assets/parity/<name>.safetensors: flat tensors (release-layout weights under `release/`,
    inputs under `input/`, the original code's outputs under `expected/`) and a JSON `meta` entry."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path),
              metadata={"meta": json.dumps(meta, sort_keys=True)})
    return path


def read_golden(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as handle:
        meta = json.loads(handle.metadata()["meta"])
    return load_file(str(path)), meta


def group(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under `prefix/`, with the prefix stripped."""
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}


def module_with(name: str, **attrs) -> types.ModuleType:
    """A stand-in for the importable module `name` holding all of its attributes plus `attrs` (a shim for
    a name the original code imports from a library module that no longer defines it)."""
    real = importlib.import_module(name)
    module = types.ModuleType(name)
    module.__dict__.update(real.__dict__)
    module.__dict__.update(attrs)
    return module


@contextlib.contextmanager
def patched(owner, name: str, value) -> Iterator[None]:
    """`owner.name = value` inside the block, the old value (or none) restored after: a run-time shim on
    the original code's module or class, never on ours."""
    missing = object()
    old = getattr(owner, name, missing)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if old is missing:
            delattr(owner, name)
        else:
            setattr(owner, name, old)
