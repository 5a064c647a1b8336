"""Memory tiers for drawing on one consumer GPU (docs/own_story.md, "Will it fit my GPU?").

`apply_memory_tier(pipeline, offload, device, vae_slicing, vae_tiling)` takes a built pipeline
(src/pipelines/storygptv.py or seed_story.py: both list the models they run, grouped, with
`components()`) and sets where its weights live while it draws:

- `none`: every model on `device` (fastest; needs room for all of them at once);
- `model`: every model group on the CPU until one of its modules runs; then that group moves to `device`
  whole and whichever group was there goes back to the CPU. At most one group is on the GPU at a time:
  peak memory is the largest group (the LLM, or the UNet) plus activations. This is diffusers'
  `enable_model_cpu_offload` (accelerate's `cpu_offload_with_hook` chained over the pipeline's models),
  with one difference that our models need: the hook sits on every submodule of a group, not only on the
  group's `forward`, because our pipelines call into models through other methods too (the LLM's
  `embed_ids` and `logits_at`, the de-tokenizer's `encode`, the tokenizer's `empty_features`), which a
  forward-only hook never sees;
- `sequential`: weights stay on the CPU; each leaf module (a Linear, a Conv, a norm; a whole
  `nn.MultiheadAttention` or transformer layer, whose fused kernels read their children's weights
  directly) moves to `device` for its own forward and back after it. The few tensors that belong to a
  module with children (learned queries, class and [IMG] embeddings, normalisation constants: kilobytes
  to a few MB) stay on `device`. Peak memory is about the activations plus the largest layer;
  every weight crosses the bus at every use, so it is slow (accelerate's `cpu_offload` / diffusers'
  `enable_sequential_cpu_offload`, keeping real CPU tensors instead of accelerate's meta ones, so that
  our code can keep reading a module's `.device` and `.dtype`).

Hooks are accelerate's (`ModelHook`, `add_hook_to_module`): each carries `execution_device`, which is
how diffusers' pipelines find where to make their latents (`DiffusionPipeline._execution_device`), and
the pipeline's own `execution_device` is set so our code makes its tensors and generators there too.
`vae_slicing` decodes a batch one frame at a time and `vae_tiling` large frames tile by tile
(AutoencoderKL.enable_slicing / enable_tiling). dtype is the pipelines' `from_run(..., dtype, llm_dtype)`.

This module sits beside the pipelines, not in src/pipelines/: the pipelines reach no accelerate
(tests/test_layering.py); entries apply the tier to the pipeline they built.
"""
from __future__ import annotations

from typing import Optional

import torch
from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module
from torch import nn

OFFLOAD = ("none", "model", "sequential")
# Modules moved whole in `sequential`: their forward reads their children's weights without calling them.
WHOLE = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
CPU = torch.device("cpu")


def to_device(value, device: torch.device):
    """Tensors (also inside lists, tuples and dicts) moved to `device`; anything else (a KV cache object,
    a config) passed as it is."""
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


class InputsToDevice(ModelHook):
    """Moves a module's inputs to the execution device (on a pipeline model's root in `sequential`)."""

    def __init__(self, execution_device: torch.device):
        self.execution_device = execution_device

    def pre_forward(self, module, *args, **kwargs):
        return to_device(args, self.execution_device), to_device(kwargs, self.execution_device)


class Residency:
    """Which model group of a pipeline is on the execution device (`model` offload): at most one."""

    def __init__(self, device: torch.device):
        self.device, self.current, self.moves = device, None, 0

    def use(self, group: list) -> None:
        if self.current is group:
            return
        if self.current is not None:
            for module in self.current:
                module.to(CPU)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        for module in group:
            module.to(self.device)
        self.current, self.moves = group, self.moves + 1


class GroupOnload(InputsToDevice):
    """`model` offload: entering any module of the group brings the whole group to the device."""

    def __init__(self, group: list, residency: Residency):
        super().__init__(residency.device)
        self.group, self.residency = group, residency

    def pre_forward(self, module, *args, **kwargs):
        self.residency.use(self.group)
        return super().pre_forward(module, *args, **kwargs)


class LeafOnload(InputsToDevice):
    """`sequential` offload: the module's own weights on the device for its forward only."""

    calls = 0  # forwards seen (tests check the hooks really run)

    def pre_forward(self, module, *args, **kwargs):
        self.calls += 1
        module.to(self.execution_device)
        return super().pre_forward(module, *args, **kwargs)

    def post_forward(self, module, output):
        module.to(CPU)
        return output


def _own_tensors(module: nn.Module) -> list:
    return [*module.parameters(recurse=False), *module.buffers(recurse=False)]


class Offload:
    """The hooks a tier installed on a pipeline's models; `remove()` takes them off and moves every model to
    the execution device (the `none` tier)."""

    def __init__(self, pipeline, tier: str, device: torch.device):
        self.pipeline, self.tier, self.device = pipeline, tier, device
        self.hooked: list[nn.Module] = []
        self.pinned_bytes = 0  # sequential: tensors of modules with children kept on the device
        self.residency: Optional[Residency] = None

    def hook(self, module: nn.Module, hook: ModelHook) -> None:
        add_hook_to_module(module, hook, append=True)
        self.hooked.append(module)

    def install(self) -> "Offload":
        groups = [group for _, group in self.pipeline.components()]
        if self.tier == "model":
            self.residency = Residency(self.device)
            for group in groups:
                for module in group:
                    module.to(CPU)
                    for sub in module.modules():
                        self.hook(sub, GroupOnload(group, self.residency))
        elif self.tier == "sequential":
            for module in {id(m): m for group in groups for m in group}.values():
                module.to(CPU)
                if self._whole(module):
                    self.hook(module, LeafOnload(self.device))
                else:
                    self.hook(module, InputsToDevice(self.device))
                    self._sequential(module)
        if self.tier != "none":  # the weights' device is not where the pipeline computes
            self.pipeline.execution_device = self.device
        return self

    @staticmethod
    def _whole(module: nn.Module) -> bool:
        """Moved as one piece in `sequential`: a leaf, or one of WHOLE."""
        return isinstance(module, WHOLE) or next(module.children(), None) is None

    def _sequential(self, module: nn.Module) -> None:
        for sub in module.children():
            if not self._whole(sub):
                self._sequential(sub)
            elif next(sub.parameters(), None) is not None or next(sub.buffers(), None) is not None:
                self.hook(sub, LeafOnload(self.device))
        own = _own_tensors(module)
        if own:
            module._apply(lambda t: t.to(self.device), recurse=False)
            self.pinned_bytes += sum(t.numel() * t.element_size() for t in own)

    def remove(self) -> None:
        for module in self.hooked:
            remove_hook_from_module(module)
        self.hooked = []
        for module in self.pipeline.modules():
            module.to(self.device)
        self.pipeline.execution_device = None


def apply_memory_tier(pipeline, offload: str = "none", device=None, vae_slicing: bool = False,
                      vae_tiling: bool = False) -> Offload:
    """Set a built pipeline's memory tier (see the module docstring). `device`: where it computes (default
    cuda when available). Returns the installed `Offload` (its `hooked` modules, `remove()`)."""
    if offload not in OFFLOAD:
        raise ValueError(f"--offload: '{offload}' is not one of {', '.join(OFFLOAD)}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    vae = pipeline.vae
    vae.enable_slicing() if vae_slicing else vae.disable_slicing()
    vae.enable_tiling() if vae_tiling else vae.disable_tiling()
    if offload == "none":
        pipeline.to(device)
        pipeline.execution_device = None
    return Offload(pipeline, offload, device).install()


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(name: Optional[str], device) -> Optional[torch.dtype]:
    """`--dtype` / `--llm-dtype`: fp32, fp16, bf16, or auto (fp32 on a CPU; on a GPU bf16 where it is
    supported, else fp16). None: None (as the run trained)."""
    if name is None:
        return None
    if name == "auto":
        if torch.device(device).type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise ValueError(f"--dtype: '{name}' is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]
