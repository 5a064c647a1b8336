"""Real-scale shape check: build a recipe's models from config files alone and run one training step on
the meta device (docs/shape_check.md).

    python -m src.tools.shape_check --config configs/char_ldm/flintstones.yaml \\
        model.pretrained=tests/assets/config_only/stable-diffusion-v1-5 \\
        model.image_encoder=tests/assets/config_only/clip-vit-large-patch14 [--json]
    python -m src.tools.shape_check --model causal_lm tests/assets/config_only/opt-6.7b [--model ...] [--json]

`--config`: the task is built by `build_task(cfg)`, the training code path itself, inside
`config_only()` (src/models/pretrained.py): every pretrained part comes from its folder's config.json on
the meta device, so no weight is read and nothing is allocated. The task's `example_batch()` gives a
batch of the recipe's shapes (train.batch_size, data.image_size, ...) without the dataset; the training
step runs forward, the loss and backward on meta tensors. Printed: per model (the task's direct
submodules) its class, total and trainable parameter counts; the conditioning shape (the output of the
task's `conditioning_module()`); the losses' shapes; whether every trainable parameter got a gradient.

Data-dependent steps on the meta device (a boolean-mask selection, `if mask.any():`) cannot know their
data, so they take the largest case: every selection selects everything (torch's own
`meta_nonzero_assume_all_nonzero`) and reading a scalar of a meta tensor gives True / 1.

`--model KIND PATH`: one pretrained folder on its own (LLMs, the SEED-Story towers) through the same
`load_pretrained`, with a forward on an example input; KINDS below lists what is known.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.fx.experimental._config as fx_config
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from src.config import ConfigError, load_config
from src.models.pretrained import config_only, load_pretrained

META = torch.device("meta")
SRC = Path(__file__).resolve().parent.parent  # the package: where a failing step is located


class ShapeCheckError(ValueError):
    """A model or step that cannot run at its real shapes, with where and why in one line."""


class _MetaScalarReads(TorchDispatchMode):
    """`bool(t)` / `t.item()` of a meta tensor reads True (bool) or 1: the branch a real batch with
    something selected takes. Every other op runs unchanged."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            return True if args[0].dtype == torch.bool else 1
        return func(*args, **(kwargs or {}))


def _shape(value):
    """A module output's shape: a tensor -> [ints]; a transformers/diffusers output object -> its first
    tensor's (a text encoder's last_hidden_state); a plain tuple of tensors (e.g. states and pooled
    embedding) -> one shape each."""
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if hasattr(value, "to_tuple"):
        return _shape(value.to_tuple()[0])
    if isinstance(value, (tuple, list)) and value:
        return [_shape(item) for item in value]
    raise TypeError(f"cannot report the shape of a {type(value).__name__}")


def _count(module: nn.Module) -> dict:
    return {"class": type(module).__name__, "params": sum(p.numel() for p in module.parameters()),
            "trainable": sum(p.numel() for p in module.parameters() if p.requires_grad)}


def _meta_step(run: Callable[[], torch.Tensor | dict], what: str):
    try:
        with fx_config.patch(meta_nonzero_assume_all_nonzero=True), _MetaScalarReads():
            return run()
    except (RuntimeError, NotImplementedError) as err:  # e.g. a value read (.tolist()) that meta cannot serve
        frames = [f for f in traceback.extract_tb(err.__traceback__)
                  if f.filename.startswith(str(SRC)) and f.filename != __file__]
        where = f" at {Path(frames[-1].filename).relative_to(SRC.parent)}:{frames[-1].lineno}" if frames else ""
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ShapeCheckError(f"{what} on the meta device failed{where}: {message}") from None


# ------------------------------------------------------------------------------------------ a recipe
def check_recipe(config: str, overrides: list[str]) -> dict:
    from src.tasks import build_task  # late: a bad config fails before the tasks import diffusers

    cfg = load_config(config, overrides)
    with config_only():
        task = build_task(cfg)
    task.train()
    batch = task.example_batch(cfg.train.batch_size, META)
    captured = {}
    module = task.conditioning_module()
    hook = module.register_forward_hook(lambda m, i, out: captured.setdefault("out", out)) if module else None
    try:
        def step():
            losses = task.training_step(batch)
            losses["loss"].backward()
            return losses
        losses = _meta_step(step, f"task '{cfg.task}': the training step")
    finally:
        if hook:
            hook.remove()
    trainable = [(n, p) for n, p in task.named_parameters() if p.requires_grad]
    return {
        "models": {name: _count(child) for name, child in task.named_children()},
        "conditioning": _shape(captured["out"]) if "out" in captured else None,
        "conditioning_module": type(module).__name__ if module is not None else None,
        "config": str(config), "task": cfg.task, "batch_size": cfg.train.batch_size,
        "total": {k: v for k, v in _count(task).items() if k != "class"},
        "losses": {name: list(value.shape) for name, value in losses.items()},
        "trainable_tensors": len(trainable),
        "trainable_without_grad": [n for n, p in trainable if p.grad is None],
    }


# ------------------------------------------------------------------------------------ one model alone
@dataclass
class ModelKind:
    """How to build one pretrained folder and what to feed it: `build(path)` runs inside config_only();
    `example(model)` gives forward kwargs on the meta device."""
    build: Callable[[str], nn.Module]
    example: Callable[[nn.Module], dict]


def _lm_example(model) -> dict:
    return {"input_ids": torch.zeros(1, 32, dtype=torch.long, device=META)}


def _unet_example(model) -> dict:
    c = model.config
    size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
    kwargs = {"sample": torch.zeros(1, c.in_channels, size, size, device=META),
              "timestep": torch.zeros(1, dtype=torch.long, device=META),
              "encoder_hidden_states": torch.zeros(1, 77, c.cross_attention_dim, device=META)}
    if c.addition_embed_type == "text_time":  # SDXL: pooled text embedding + 6 time ids (size, crop, target)
        time_ids = 6
        pooled = c.projection_class_embeddings_input_dim - time_ids * c.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.zeros(1, pooled, device=META),
                                       "time_ids": torch.zeros(1, time_ids, device=META)}
    return kwargs


def _image_example(model) -> dict:
    size = model.config.image_size
    return {"pixel_values": torch.zeros(1, model.config.num_channels, size, size, device=META)}


def _lazy(module: str, name: str):
    def get():
        from importlib import import_module
        return getattr(import_module(module), name)
    return get


def _from(get_cls, subfolder=None):
    return lambda path: load_pretrained(get_cls(), path, subfolder=subfolder)


# To cover a new kind of pretrained folder, add an entry: a builder run inside config_only() (so modules
# it creates land on the meta device) and an example input. A module of our own that is built from a
# config section rather than `from_pretrained` (e.g. SEED-Story's Qwen ViT-G from Qwen-VL-Chat's
# `visual` section) builds it here from `json.load(PATH/config.json)` and feeds [1,3,448,448] pixels.
KINDS: dict[str, ModelKind] = {
    "causal_lm": ModelKind(_from(_lazy("transformers", "AutoModelForCausalLM")), _lm_example),
    "unet": ModelKind(_from(_lazy("diffusers", "UNet2DConditionModel"), "unet"), _unet_example),
    "clip_vision": ModelKind(_from(_lazy("transformers", "CLIPVisionModelWithProjection")), _image_example),
}


def check_model(kind: str, path: str) -> dict:
    if kind not in KINDS:
        raise ValueError(f"--model: unknown kind '{kind}'; known kinds: {', '.join(sorted(KINDS))}")
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: pretrained folder not found")
    with config_only():
        model = KINDS[kind].build(path)
    model.eval()
    with torch.no_grad():
        out = _meta_step(lambda: model(**KINDS[kind].example(model)), f"--model {kind} {path}: the forward")
    return {**_count(model), "kind": kind, "path": str(path), "output": _shape(out)}


# ------------------------------------------------------------------------------------------- printing
def _table(models: dict) -> list[str]:
    width = max([len(n) for n in models] + [5])
    lines = [f"{'model':<{width}}  {'class':<34} {'params':>15} {'trainable':>15}"]
    for name, m in models.items():
        lines.append(f"{name:<{width}}  {m['class']:<34} {m['params']:>15,} {m['trainable']:>15,}")
    return lines


def format_report(report: dict) -> str:
    lines = []
    single = {n: m for n, m in report["models"].items() if "kind" in m}
    if "task" in report:
        recipe = {n: m for n, m in report["models"].items() if "kind" not in m}
        lines.append(f"{report['config']}: task {report['task']}, batch {report['batch_size']}, "
                     f"meta device, config files only")
        lines += _table({**recipe, "total": {"class": "", **report["total"]}})
        lines.append(f"conditioning: {report['conditioning']} (output of {report['conditioning_module']})")
        lines.append("losses: " + ", ".join(f"{k} {v}" for k, v in report["losses"].items()))
        missing = report["trainable_without_grad"]
        lines.append(f"backward: {report['trainable_tensors'] - len(missing)} of {report['trainable_tensors']} "
                     f"trainable tensors got a gradient" + (f"; none for {', '.join(missing[:5])}" if missing else ""))
    if single:
        lines += [""] if lines else []
        lines.append("pretrained folders alone, meta device, config files only (nothing frozen: trainable = params)")
        lines += _table(single)
        lines += [f"{name} output: {m['output']}" for name, m in single.items()]
    return "\n".join(lines)


def run(config: str | None, overrides: list[str], models: list[tuple[str, str]]) -> dict:
    """The report as one JSON-able object: {"models": {NAME: {"class", "params", "trainable", ...}}, and for
    a recipe "conditioning": [...], "config", "task", "batch_size", "total", "losses", ...}."""
    report = check_recipe(config, overrides) if config else {"models": {}}
    for kind, path in models:
        name = Path(path).name
        if name in report["models"]:
            raise ValueError(f"--model {kind} {path}: the name '{name}' is already in the report")
        report["models"][name] = check_model(kind, path)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a recipe, e.g. configs/char_ldm/flintstones.yaml")
    parser.add_argument("--model", nargs=2, action="append", default=[], metavar=("KIND", "PATH"),
                        help=f"one pretrained folder alone; KIND is one of {', '.join(sorted(KINDS))}")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for --config")
    args = parser.parse_args(argv)
    if not args.config and not args.model:
        parser.error("give --config RECIPE and/or --model KIND PATH")
    if args.overrides and not args.config:
        parser.error("key=value overrides need --config")
    try:
        report = run(args.config, args.overrides, [tuple(m) for m in args.model])
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, NotImplementedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
