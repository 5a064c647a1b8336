"""Importing the original SEED-Story code from a user's clone on today's libraries (the release side of
the SEED-Story parity checks, docs/fidelity.md).

SEED-Story pins transformers 4.34, peft 0.4, xformers 0.0.23, torchdata 0.7 and an older diffusers. Its
modules are imported unchanged from the clone; what no longer imports, or no longer behaves as the
pinned version did, is stood in for at run time, only while the release's code runs:

  src                        the clone's `src` (a namespace package: ours is hidden meanwhile)
  peft                       peft 0.4.0 from the SEED-X clone (proj/peft/src, the version SEED-Story pins;
                             SEED-X's copy adds a DeepSpeed ZeRO-3 branch that is off here); today's peft
                             is hidden meanwhile, so the release's LoRA model and its state-dict names are
                             peft 0.4's (a clone without proj/peft: no peft 0.4, an error naming it)
  xformers.ops               memory_efficient_attention with LowerTriangularMask /
                             LowerTriangularFromBottomRightMask, on torch's scaled_dot_product_attention
                             (xformers' documented semantics: top-left / bottom-right aligned causal masks)
  transformers.modeling_utils  PreTrainedModel as in 4.34: every model can generate, with 4.34's greedy
                             search (legacy tuple KV caches, the model's own prepare_inputs_for_generation,
                             per-step hidden states); today's GenerationMixin builds Cache objects and drops
                             output_hidden_states on that path
  transformers.deepspeed, deepspeed   imported by SEED-X's peft; ZeRO-3 off
  diffusers.models.unet_2d_blocks     moved to diffusers.models.unets.unet_2d_blocks
  torchdata, braceexpand, cv2, hydra, pyrootutils   imported by the data code and the trainers' helpers;
                             only their datapipe builders use them, never the decode functions compared here

Everything the release side computes runs inside `release_env`; the agent (peft 0.4) inside its nested
`peft04()`, the diffusers models outside that (today's diffusers imports today's peft at call time).
"""
from __future__ import annotations

import contextlib
import importlib.machinery
import sys
import types
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from src.tools.parity.common import clone_on_path, hidden_modules, namespace_package, stub_module

# ---- xformers.ops --------------------------------------------------------------------------------------

class LowerTriangularMask:
    """xformers' causal bias: query i sees keys j <= i (aligned at the top left)."""


class LowerTriangularFromBottomRightMask:
    """xformers' causal bias aligned at the bottom right: query i sees keys j <= i + (keys - queries)."""


def memory_efficient_attention(query, key, value, attn_bias=None, p: float = 0.0, scale=None):
    """xformers.ops.memory_efficient_attention on [B, M, H, K] tensors (softmax(q k^T / sqrt(K)) v)."""
    if p:
        raise NotImplementedError("attention dropout is not used by the compared code")
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    mask = None
    if attn_bias is not None:
        queries, keys = q.shape[-2], k.shape[-2]
        offset = keys - queries if isinstance(attn_bias, LowerTriangularFromBottomRightMask) else 0
        mask = (torch.arange(keys, device=q.device)[None] <= torch.arange(queries, device=q.device)[:, None] + offset)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale).transpose(1, 2)


def xformers_shims() -> dict[str, types.ModuleType]:
    fmha = stub_module("xformers.ops.fmha", attn_bias=stub_module(
        "xformers.ops.fmha.attn_bias", LowerTriangularMask=LowerTriangularMask,
        LowerTriangularFromBottomRightMask=LowerTriangularFromBottomRightMask))
    ops = stub_module("xformers.ops", memory_efficient_attention=memory_efficient_attention,
                      LowerTriangularMask=LowerTriangularMask, fmha=fmha)
    root = stub_module("xformers", ops=ops)
    for module in (root, ops):  # diffusers probes importlib.util.find_spec("xformers"), which needs a spec
        module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)
    return {"xformers": root, "xformers.ops": ops}


# ---- transformers 4.34's generate (greedy search) --------------------------------------------------------

@torch.no_grad()
def greedy_search_434(self, input_ids=None, inputs_embeds=None, logits_processor=None, max_new_tokens=20,
                      output_hidden_states=False, return_dict_in_generate=False, past_key_values=None,
                      attention_mask=None, do_sample=False, num_beams=1, **_ignored):
    """transformers 4.34 `generate` on the path SEED-Story takes (do_sample=False, num_beams=1: greedy
    search; temperature and top_p are ignored there too): the prompt's attention mask is all ones, each
    step asks the model's own prepare_inputs_for_generation for its inputs (KV cache as legacy tuples),
    runs the logits processors on the last position's logits, appends the argmax; stops at
    max_new_tokens or once eos is appended. Returns sequences and, per step, every layer's hidden states."""
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    if do_sample or num_beams != 1:
        raise NotImplementedError("only greedy search (the release's setting) is stood in for")
    eos = self.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos])
    batch = input_ids.shape[0]
    if attention_mask is None:  # 4.34: ones over the prompt (from inputs_embeds when given)
        source = inputs_embeds if inputs_embeds is not None else input_ids
        attention_mask = torch.ones(source.shape[:2], dtype=torch.long, device=source.device)
    kwargs = {"attention_mask": attention_mask, "past_key_values": past_key_values, "use_cache": True}
    if inputs_embeds is not None:
        kwargs["inputs_embeds"] = inputs_embeds
    hidden_steps = []
    for _ in range(max_new_tokens):
        model_inputs = self.prepare_inputs_for_generation(input_ids, **kwargs)
        outputs = self(**model_inputs, return_dict=True, output_hidden_states=output_hidden_states)
        scores = outputs.logits[:, -1, :]
        if logits_processor is not None:
            scores = logits_processor(input_ids, scores)
        if output_hidden_states:
            hidden_steps.append(outputs.hidden_states)
        next_tokens = scores.argmax(dim=-1)
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        kwargs["past_key_values"] = outputs.past_key_values
        kwargs["attention_mask"] = torch.cat([kwargs["attention_mask"],
                                              kwargs["attention_mask"].new_ones((batch, 1))], dim=-1)
        if batch == 1 and int(next_tokens[0]) in eos:
            break
    if not return_dict_in_generate:
        return input_ids
    return GenerateDecoderOnlyOutput(sequences=input_ids, hidden_states=tuple(hidden_steps) or None)


def modeling_utils_434() -> types.ModuleType:
    """transformers.modeling_utils whose PreTrainedModel generates as 4.34's did (greedy_search_434)."""
    import transformers.modeling_utils as today

    class PreTrainedModel(today.PreTrainedModel):
        generate = greedy_search_434

        @classmethod
        def can_generate(cls) -> bool:  # 4.34: every PreTrainedModel had a generation_config
            return True

    return stub_module("transformers.modeling_utils", **{**vars(today), "PreTrainedModel": PreTrainedModel})


# ---- the environment ----------------------------------------------------------------------------------

def _pass(*args, **kwargs):
    return None


class _DataPipe:
    """Stands in for torchdata's IterDataPipe / TarArchiveLoader as base classes (subscriptable)."""

    def __class_getitem__(cls, item):
        return cls


def release_shims(seed_story: Path) -> dict[str, types.ModuleType]:
    from diffusers.models.unets import unet_2d_blocks

    torchdata_dp = stub_module("torchdata.datapipes", iter=stub_module("torchdata.datapipes.iter"),
                               functional_datapipe=lambda name: (lambda cls: cls))
    shims = {
        "src": namespace_package("src", Path(seed_story) / "src"),
        **xformers_shims(),
        "transformers.modeling_utils": modeling_utils_434(),
        "transformers.deepspeed": stub_module("transformers.deepspeed", is_deepspeed_zero3_enabled=lambda: False),
        "deepspeed": stub_module("deepspeed"),
        "diffusers.models.unet_2d_blocks": stub_module("diffusers.models.unet_2d_blocks",
                                                       DownBlock2D=unet_2d_blocks.DownBlock2D),
        "torchdata": stub_module("torchdata", datapipes=torchdata_dp),
        "torchdata.datapipes": torchdata_dp,
        "torchdata.datapipes.iter": stub_module("torchdata.datapipes.iter", TarArchiveLoader=_DataPipe,
                                                IterDataPipe=_DataPipe),
        "torchdata.datapipes.utils": stub_module("torchdata.datapipes.utils", StreamWrapper=object),
        "torchdata.datapipes.utils.common": stub_module("torchdata.datapipes.utils.common",
                                                        validate_pathname_binary_tuple=_pass),
        "braceexpand": stub_module("braceexpand", braceexpand=lambda pattern: [pattern]),
        "cv2": stub_module("cv2"),
        "hydra": stub_module("hydra", utils=stub_module("hydra.utils", instantiate=_pass)),
        "pyrootutils": stub_module("pyrootutils", setup_root=_pass),
    }
    return shims


@contextlib.contextmanager
def release_env(seed_story: Path, seed_x: Path) -> Iterator[types.SimpleNamespace]:
    """The release's modules, imported from the clones (see the module docstring). Our own `src` is out
    of sys.modules inside: import everything of ours before entering. `rel.peft04()` is a nested context
    in which `peft` is SEED-X's peft 0.4 (and `rel.peft`, `rel.peft_models` are set): build and run the
    agent inside it, and diffusers' models outside it (today's diffusers imports today's peft)."""
    seed_story, seed_x = Path(seed_story), Path(seed_x)
    for path, repo in ((seed_story / "src" / "models_clm" / "models.py", "TencentARC/SEED-Story"),
                       (seed_x / "proj" / "peft" / "src" / "peft" / "__init__.py", "AILab-CVC/SEED-X")):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (expected a clone of github.com/{repo})")
    import importlib

    with hidden_modules("src"), clone_on_path(seed_story, release_shims(seed_story)):
        rel = types.SimpleNamespace(**{name: importlib.import_module(f"src.{path}") for name, path in (
            ("qwen_visual", "models.qwen_visual"), ("discrete", "models.discrete_models"),
            ("llama", "models_clm.modeling_llama_xformer"), ("models", "models_clm.models"),
            ("generation", "models_clm.generation"), ("resampler", "models_ipa.resampler"),
            ("adapter", "models_ipa.adapter_modules"), ("transforms", "processer.transforms"),
            ("story_telling", "data.story_telling"))})
        rel.seed_x_resampler = _seed_x_resampler(seed_x)

        @contextlib.contextmanager
        def peft04():
            with hidden_modules("peft"), clone_on_path(seed_x, subdir="proj/peft/src"):
                rel.peft = importlib.import_module("peft")
                rel.peft_models = importlib.import_module("src.models_clm.peft_models")
                try:
                    yield rel
                finally:
                    del rel.peft, rel.peft_models
                    sys.modules.pop("src.models_clm.peft_models", None)

        rel.peft04 = peft04
        yield rel


def _seed_x_resampler(seed_x: Path) -> types.ModuleType:
    """SEED-X's own de-tokenizer resampler (src/models/detokenizer/resampler.py: ResamplerXLV2 with its
    `normalize` switch), loaded by file path: its package name is `src` too."""
    import importlib.util

    path = seed_x / "src" / "models" / "detokenizer" / "resampler.py"
    spec = importlib.util.spec_from_file_location("seed_x_detokenizer_resampler", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
