"""LAVIS `blip2_opt` checkpoints (e.g. StoryGPT-V's captioner.pth) -> transformers Blip2ForConditionalGeneration.

    python -m src.tools.convert.blip2 --lavis captioner.pth --base pretrained/blip2-opt-2.7b \
        --out pretrained/blip2-opt-2.7b-flintstones

salesforce-lavis cannot be installed beside transformers 5, so the LAVIS names are mapped here.
LAVIS saves only the weights it trained (for a captioner fine-tune: Q-Former, query tokens, the OPT
projection, sometimes ln_vision), so the converted keys overwrite those of a base transformers
checkpoint (Salesforce/blip2-opt-2.7b, the model LAVIS's caption_coco_opt2.7b starts from) and the
result is saved as a complete folder. Every LAVIS key must map (else an error lists those that do
not), and every converted key must exist in the base model with the same shape.
"""
import argparse
import pickle
import re
import sys
from pathlib import Path

import torch

from eval.stories_io import EvalInputError
from src.errors import run_entry

# LAVIS buffers that carry no weights of the transformers model
IGNORED_LAVIS_KEYS = re.compile(r"^Qformer\.bert\.embeddings\.position_ids$")

# (LAVIS pattern, transformers replacement), applied to the first that matches
RENAMES = [
    (r"^query_tokens$", "query_tokens"),
    (r"^ln_vision\.(weight|bias)$", r"vision_model.post_layernorm.\1"),
    (r"^visual_encoder\.cls_token$", "vision_model.embeddings.class_embedding"),
    (r"^visual_encoder\.pos_embed$", "vision_model.embeddings.position_embedding"),
    (r"^visual_encoder\.patch_embed\.proj\.(weight|bias)$", r"vision_model.embeddings.patch_embedding.\1"),
    (r"^visual_encoder\.blocks\.(\d+)\.norm1\.(weight|bias)$", r"vision_model.encoder.layers.\1.layer_norm1.\2"),
    (r"^visual_encoder\.blocks\.(\d+)\.norm2\.(weight|bias)$", r"vision_model.encoder.layers.\1.layer_norm2.\2"),
    (r"^visual_encoder\.blocks\.(\d+)\.attn\.qkv\.weight$", r"vision_model.encoder.layers.\1.self_attn.qkv.weight"),
    (r"^visual_encoder\.blocks\.(\d+)\.attn\.proj\.(weight|bias)$",
     r"vision_model.encoder.layers.\1.self_attn.projection.\2"),
    (r"^visual_encoder\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)$", r"vision_model.encoder.layers.\1.mlp.\2.\3"),
    (r"^Qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)$", r"qformer.layernorm.\1"),
    (r"^Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)$",
     r"qformer.encoder.layer.\1.\2.attention.\3.\4"),
    (r"^Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)$",
     r"qformer.encoder.layer.\1.\2.output.\3.\4"),
    (r"^Qformer\.bert\.encoder\.layer\.(\d+)\.(intermediate_query|output_query)\.(dense|LayerNorm)\.(weight|bias)$",
     r"qformer.encoder.layer.\1.\2.\3.\4"),
    (r"^opt_proj\.(weight|bias)$", r"language_projection.\1"),
    (r"^opt_model\.(.+)$", r"language_model.\1"),
]
QKV_BIAS = re.compile(r"^visual_encoder\.blocks\.(\d+)\.attn\.(q_bias|v_bias)$")


def lavis_to_transformers(lavis_state):
    """Rename a LAVIS blip2_opt state dict to Blip2ForConditionalGeneration names.

    EVA-ViT keeps separate q and v biases and no k bias; transformers' fused qkv bias is
    [q_bias, zeros, v_bias]. Raises EvalInputError listing every key it cannot map.
    """
    converted, unmapped, qkv_biases = {}, [], {}
    for key, value in lavis_state.items():
        if IGNORED_LAVIS_KEYS.match(key):
            continue
        bias = QKV_BIAS.match(key)
        if bias:
            qkv_biases.setdefault(bias.group(1), {})[bias.group(2)] = value
            continue
        for pattern, replacement in RENAMES:
            if re.match(pattern, key):
                converted[re.sub(pattern, replacement, key)] = value
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise EvalInputError(f"{len(unmapped)} LAVIS keys have no transformers name (not a blip2_opt "
                             f"checkpoint?): {', '.join(unmapped[:20])}")
    for layer, biases in qkv_biases.items():
        if set(biases) != {"q_bias", "v_bias"}:
            raise EvalInputError(f"visual_encoder.blocks.{layer}.attn: has {sorted(biases)} but needs q_bias and v_bias")
        q_bias, v_bias = biases["q_bias"], biases["v_bias"]
        converted[f"vision_model.encoder.layers.{layer}.self_attn.qkv.bias"] = torch.cat(
            [q_bias, torch.zeros_like(q_bias), v_bias])
    return converted


def transformers_to_lavis(state):
    """The inverse renaming (for checks and round trips); drops the all-zero k part of the qkv bias."""
    inverse = [
        (r"^vision_model\.post_layernorm\.", "ln_vision."),
        (r"^vision_model\.embeddings\.class_embedding$", "visual_encoder.cls_token"),
        (r"^vision_model\.embeddings\.position_embedding$", "visual_encoder.pos_embed"),
        (r"^vision_model\.embeddings\.patch_embedding\.", "visual_encoder.patch_embed.proj."),
        (r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm1\.", r"visual_encoder.blocks.\1.norm1."),
        (r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm2\.", r"visual_encoder.blocks.\1.norm2."),
        (r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.weight$", r"visual_encoder.blocks.\1.attn.qkv.weight"),
        (r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.projection\.", r"visual_encoder.blocks.\1.attn.proj."),
        (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"visual_encoder.blocks.\1.mlp."),
        (r"^qformer\.layernorm\.", "Qformer.bert.embeddings.LayerNorm."),
        (r"^qformer\.encoder\.layer\.(\d+)\.(attention|crossattention)\.attention\.",
         r"Qformer.bert.encoder.layer.\1.\2.self."),
        (r"^qformer\.encoder\.layer\.", "Qformer.bert.encoder.layer."),
        (r"^language_projection\.", "opt_proj."),
        (r"^language_model\.", "opt_model."),
    ]
    lavis = {}
    for key, value in state.items():
        bias = re.match(r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.bias$", key)
        if bias:
            q_bias, _, v_bias = value.chunk(3)
            lavis[f"visual_encoder.blocks.{bias.group(1)}.attn.q_bias"] = q_bias
            lavis[f"visual_encoder.blocks.{bias.group(1)}.attn.v_bias"] = v_bias
            continue
        for pattern, replacement in inverse:
            if re.match(pattern, key):
                key = re.sub(pattern, replacement, key)
                break
        lavis[key] = value
    return lavis


def overlay(model, converted, source):
    """Copy converted weights into model; every key must exist with the same shape. Returns the count."""
    own = model.state_dict()
    problems = [f"{key} (not in the base model)" for key in converted if key not in own]
    problems += [f"{key} (shape {tuple(value.shape)} vs base {tuple(own[key].shape)})"
                 for key, value in converted.items() if key in own and own[key].shape != value.shape]
    if problems:
        raise EvalInputError(f"{source}: does not fit the base model: {'; '.join(problems[:20])}")
    own.update({key: value.to(own[key].dtype) for key, value in converted.items()})
    model.load_state_dict(own, strict=True)
    return len(converted)


def read_lavis_checkpoint(path):
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{path}: LAVIS checkpoint not found (StoryGPT-V's captioner.pth: see pretrained/README.md)")
    # LAVIS saves {"model", "optimizer", "config" (a plain dict), "scaler", "epoch"}: tensors, numbers and
    # dicts, which the safe loader reads; anything else in a user's file is refused, never executed.
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise EvalInputError(f"{path}: holds objects other than tensors and plain containers, which are not loaded "
                             f"(torch.load weights_only=True): {str(err).splitlines()[0]}") from None
    return checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else checkpoint


def convert(lavis_path, base_dir, out_dir):
    """Write base_dir's model with lavis_path's weights to out_dir (model + processor); returns the count."""
    from transformers import Blip2ForConditionalGeneration, Blip2Processor
    base_dir = Path(base_dir)
    if not (base_dir / "config.json").is_file():
        raise EvalInputError(f"{base_dir}: no transformers BLIP-2 folder; save Salesforce/blip2-opt-2.7b there "
                             "(model + processor, see pretrained/README.md)")
    converted = lavis_to_transformers(read_lavis_checkpoint(lavis_path))
    model = Blip2ForConditionalGeneration.from_pretrained(base_dir)
    count = overlay(model, converted, lavis_path)
    model.save_pretrained(out_dir)
    Blip2Processor.from_pretrained(base_dir).save_pretrained(out_dir)
    return count


def main(argv=None):
    parser = argparse.ArgumentParser(description="Convert a LAVIS blip2_opt checkpoint to transformers.")
    parser.add_argument("--lavis", required=True, help="LAVIS checkpoint, e.g. StoryGPT-V's captioner.pth")
    parser.add_argument("--base", required=True, help="transformers Blip2 folder it was fine-tuned from")
    parser.add_argument("--out", required=True, help="folder to write")
    args = parser.parse_args(argv)
    count = convert(args.lavis, args.base, args.out)
    print(f"{args.out} ({count} tensors from {args.lavis})")


if __name__ == "__main__":
    sys.exit(run_entry(main))
