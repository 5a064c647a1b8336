"""Convert SEED-Story's released MLLM ("agent") into this framework's story_sft trainable weights.

    python -m src.tools.convert.seed_agent \
        --src pretrained/SEED-Story/seed_story/george_sft/pytorch_model.bin \
        --out pretrained/seed_story_george_agent/trainable.safetensors \
        [--config configs/story_sft/george.yaml] [key=value ...]

The release (SEED-Story-George, `seed_story/george_sft`, and the SEED-X-pretrained 7B agent it starts
from, `seedx/checkpoint-30000`: the same layout) is the state dict of SEED-Story's `ContinuousLVLM`
(docs/seed_story.md), written by DeepSpeed's zero_to_fp32 as one pytorch_model.bin:

  llm.base_model.model.*   Llama-2-7b inside a peft 0.4 LoRA model, vocabulary resized to V+66:
                           model.embed_tokens / lm_head [V+66,D] (trained whole), lora_A/lora_B.default,
                           the norms' modules_to_save.default copies
  input_resampler.*        Qwen-VL's Resampler (grid 8): query, attn.in_proj_*, attn.out_proj.*, ln_q, ln_kv
  output_resampler.*       the same at grid 16

Ours (the task's trainable_state_dict, src/tasks/story_sft.py): the peft LoRA model sits at
`mllm.llm.lm.` (the current peft names the same adapters and copies), the resamplers at `mllm.`, and the
66 added rows of the embeddings and the head are their own parameters `mllm.llm.image_embeddings` /
`mllm.llm.image_output` (src/models/llm_with_image_tokens.py), in the release's token order
(`<img>`, `</img>`, `<img_00000>` ..). So the two [V+66,D] tables are split at row V.

Weights the task does not train are recognised and left out, counted in the report: the frozen base
weights of the LoRA'd projections and peft's `original_module` copies (present when the file holds the
whole model; story_sft reads them from `model.llm`, which must be the base Llama-2-7b, as in the
release), rotary `inv_freq` buffers, and the resamplers' fixed 2D sin-cos `pos_embed` (checked equal to
the one this framework computes). Any other key, a missing one or a shape that differs is an error
naming the keys. The names and shapes to produce come from `--config` (default: the George recipe),
whose task is built from config files alone on the meta device (src/models/pretrained.py), so no 7B
weight is read: only `model.llm`'s config.json and the visual tokenizer's config are needed.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import torch

from src.errors import run_entry
from src.models.loading import write_weights_file
from src.models.resamplers import sincos_2d
from src.tools.convert.seed_detokenizer import read_checkpoint

DEFAULT_CONFIG = "configs/story_sft/george.yaml"
# Released name prefix -> ours.
PREFIXES = (("llm.", "mllm.llm.lm."), ("input_resampler.", "mllm.input_resampler."),
            ("output_resampler.", "mllm.output_resampler."))
# The two [V+R,D] tables (after the prefix) -> (our name of the first V rows, our name of the R added rows).
SPLIT_TABLES = {
    "base_model.model.model.embed_tokens.weight": ("base_model.model.model.embed_tokens.weight", "mllm.llm.image_embeddings"),
    "base_model.model.lm_head.weight": ("base_model.model.lm_head.weight", "mllm.llm.image_output"),
}
# Released keys that hold no trainable weight of the task, by why they are left out.
NOT_TRAINED = (
    (r"llm\..*_proj\.(base_layer\.)?weight", "frozen base weights of the LoRA'd projections (from model.llm)"),
    (r"llm\..*\.original_module\.weight", "peft's frozen originals of the modules saved whole (from model.llm)"),
    (r"llm\..*rotary_emb\.inv_freq", "rotary-embedding buffers (computed)"),
    (r"(input|output)_resampler\.pos_embed", "the resamplers' fixed 2D sin-cos positions (computed)"),
)


def expected_trainable(config: str, overrides: list[str]) -> dict[str, torch.Size]:
    """Names and shapes of the story_sft task's trainable weights, built from config files alone."""
    from src.config import load_config
    from src.models.pretrained import config_only
    from src.tasks import build_task

    cfg = load_config(config, [*overrides, "model.init_weights=null"])
    if cfg.task != "story_sft":
        raise ValueError(f"{config}: task '{cfg.task}'; the agent converts into a story_sft recipe")
    with config_only():
        task = build_task(cfg)
    return {name: param.shape for name, param in task.named_parameters() if param.requires_grad}


def check_positions(key: str, value: torch.Tensor, source: str) -> None:
    """The release stores its fixed sin-cos table; ours is computed, so it must be the same table."""
    side = math.isqrt(value.shape[0])
    ours = sincos_2d(value.shape[1], side)
    if side * side != value.shape[0] or not torch.allclose(value.float(), ours, atol=1e-4):
        raise ValueError(f"{source}: '{key}' {tuple(value.shape)} is not the fixed 2D sin-cos table this "
                         f"framework computes for a {side}x{side} grid")


def convert_state(released: dict[str, torch.Tensor], expected: dict[str, torch.Size], source: str
                  ) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """(our trainable weights, {reason: count} of the released keys left out). Strict: every released key
    is mapped or left out for a listed reason, and the result has exactly the expected names and shapes."""
    converted, left_out, unmapped = {}, {}, []
    for key, value in released.items():
        reason = next((why for pattern, why in NOT_TRAINED if re.fullmatch(pattern, key)), None)
        if reason is not None:
            if key.endswith("pos_embed"):
                check_positions(key, value, source)
            left_out[reason] = left_out.get(reason, 0) + 1
            continue
        prefix = next(((old, new) for old, new in PREFIXES if key.startswith(old)), None)
        if prefix is None:
            unmapped.append(key)
            continue
        rest = key[len(prefix[0]):]
        if prefix[0] == "llm." and rest in SPLIT_TABLES:
            text_name, rows_name = SPLIT_TABLES[rest]
            text_name = prefix[1] + text_name
            if text_name not in expected or rows_name not in expected:
                unmapped.append(key)
                continue
            vocab, added = expected[text_name][0], expected[rows_name][0]
            if value.shape[0] != vocab + added:
                raise ValueError(f"{source}: '{key}' has {value.shape[0]} rows; the recipe's LLM has {vocab} "
                                 f"tokens + {added} added image tokens = {vocab + added}")
            converted[text_name], converted[rows_name] = value[:vocab], value[vocab:]
        else:
            converted[prefix[1] + rest] = value
    if unmapped:
        raise KeyError(f"{source}: {len(unmapped)} unmapped keys {sorted(unmapped)[:5]} (not an SEED-Story agent "
                       f"state dict, or a layout this converter does not know)")
    missing, unexpected = sorted(set(expected) - set(converted)), sorted(set(converted) - set(expected))
    if missing or unexpected:
        raise KeyError(f"{source}: the converted weights do not match the recipe's trainable weights: "
                       f"{len(missing)} missing {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}")
    for name, shape in expected.items():
        if converted[name].shape != shape:
            raise ValueError(f"{source}: '{name}' has shape {tuple(converted[name].shape)}, the recipe expects "
                             f"{tuple(shape)}")
    return converted, left_out


def convert(src: Path, out: Path, config: str = DEFAULT_CONFIG, overrides: list[str] | None = None) -> dict:
    expected = expected_trainable(config, list(overrides or []))
    state, left_out = convert_state(read_checkpoint(src), expected, str(src))
    write_weights_file(state, out, {"source": str(src), "config": str(config), "left_out": json.dumps(left_out)})
    return {"tensors": len(state), "params": sum(v.numel() for v in state.values()), "left_out": left_out}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="released pytorch_model.bin (or .safetensors)")
    parser.add_argument("--out", type=Path, required=True, help="output trainable.safetensors")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="the story_sft recipe the weights are for")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of --config (e.g. model.llm=...)")
    args = parser.parse_args(argv)
    report = convert(args.src, args.out, args.config, args.overrides)
    print(f"wrote {args.out}: {report['tensors']} tensors, {report['params']:,} parameters from {args.src}")
    for reason, count in report["left_out"].items():
        print(f"  left out {count} tensors: {reason}")


if __name__ == "__main__":
    sys.exit(run_entry(main))
