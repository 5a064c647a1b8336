"""What both drawing pipelines (src/pipelines/storygptv.py, seed_story.py) share about the models they
hold: listing, moving and casting them, eval mode, and freeing memory between stories."""
from __future__ import annotations

import gc

import torch


class PipelineModels:
    """What both pipelines share about the models they hold: each lists them with `components()` (grouped
    as they move under model offloading, in the order they run, src/memory.py) and names its LLM
    (`llm_module()`, cast to its own precision)."""

    def components(self) -> list[tuple[str, list]]:
        raise NotImplementedError

    def llm_module(self):
        return None

    def modules(self) -> list:
        return [module for _, group in self.components() for module in group]

    def to(self, device=None, dtype=None, llm_dtype=None):
        """Move every model to `device`; cast them to `dtype`, the LLM to `llm_dtype` (default `dtype`)."""
        llm = self.llm_module()
        for module in self.modules():
            cast = (llm_dtype or dtype) if module is llm else dtype
            if cast is not None and all(p.dtype == cast for p in module.parameters() if p.is_floating_point()):
                cast = None  # already there (diffusers warns about any dtype given to its models' `to`)
            if cast is not None:
                module.to(device=device, dtype=cast)
            elif device is not None:
                module.to(device)
        return self

    def eval(self):
        for module in self.modules():
            module.eval()
        return self

    def release(self) -> None:
        """Free what a story left behind (call between stories): Python garbage, then the CUDA allocator's
        cache. The pipelines keep no per-story tensors (StoryDiffusion #132: VRAM growing across
        generations came from per-call state kept on a pipeline); SEED-Story's KV cache lives in the
        story's writer, dropped when the story ends."""
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
