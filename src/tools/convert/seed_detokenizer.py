"""Convert SEED-Story's released de-tokenizer weights into this framework's Detokenizer layout.

    python -m src.tools.convert.seed_detokenizer \
        --src pretrained/detokenizer_pretrained/checkpoint-55000/pytorch_model.bin \
        --sdxl pretrained/stable-diffusion-xl-base-1.0 --out pretrained/seed_detokenizer.safetensors

The release (`detokenizer_pretrained`, stage 1, and `Detokenizer-George`, adapted) is the state dict of
SEED-Story's `SDXLAdapter`: `unet.*` (diffusers' SDXL UNet names, kept as they are) and `resampler.*`
(its ResamplerXLV2), renamed by RESAMPLER_TABLE. The result is loaded strictly into a Detokenizer built
on the meta device from the SDXL folder's unet/config.json: any key missing, left over or mis-shaped is
an error naming it. The output holds the whole Detokenizer state dict, with the resampler's
hyper-parameters in the file's metadata; it records normalize="released", the normalisation those
weights were trained with (src/models/resamplers.py: normalize_features), unless `--normalize none`
says otherwise (SEED-X's own de-tokenizer configs set `normalize: False`).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from src.errors import run_entry
from src.models.detokenizer import RESAMPLER_METADATA_KEY, Detokenizer
from src.models.loading import load_strict, write_weights_file
from src.models.resamplers import NORMALIZE_MODES, ResamplerXL

# Released ResamplerXLV2 name (after `resampler.`) -> ours (after `resampler.`). {i} is a layer index.
RESAMPLER_TABLE = [
    (r"latents", "perceiver.latents"),
    (r"proj_in\.(weight|bias)", r"perceiver.proj_in.\1"),
    (r"layers\.(\d+)\.0\.norm1\.(weight|bias)", r"perceiver.layers.\1.attn.norm_x.\2"),
    (r"layers\.(\d+)\.0\.norm2\.(weight|bias)", r"perceiver.layers.\1.attn.norm_latents.\2"),
    (r"layers\.(\d+)\.0\.(to_q|to_kv|to_out)\.weight", r"perceiver.layers.\1.attn.\2.weight"),
    (r"layers\.(\d+)\.1\.0\.(weight|bias)", r"perceiver.layers.\1.ff.norm.\2"),
    (r"layers\.(\d+)\.1\.1\.weight", r"perceiver.layers.\1.ff.fc1.weight"),
    (r"layers\.(\d+)\.1\.3\.weight", r"perceiver.layers.\1.ff.fc2.weight"),
    (r"norm_out\.(weight|bias)", r"norm_out.\1"),
    (r"unet_proj_1\.(weight|bias)", r"proj_out_1.\1"),
    (r"unet_proj_2\.(weight|bias)", r"proj_out_2.\1"),
    (r"unet_attnpool\.(positional_embedding)", r"attn_pool.\1"),
    (r"unet_attnpool\.(q_proj|k_proj|v_proj|c_proj)\.(weight|bias)", r"attn_pool.\1.\2"),
]
# configs/detokenizer/detokenizer_sdxl_qwen_vit_*.yaml of the release: the one value shapes cannot tell.
RELEASED_HEADS = 16


def rename_resampler_key(key: str, source: str) -> str:
    for pattern, replacement in RESAMPLER_TABLE:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, replacement, key)
    raise KeyError(f"{source}: unknown resampler key 'resampler.{key}' (not in RESAMPLER_TABLE)")


def convert_state(released: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    converted = {}
    for key, value in released.items():
        if key.startswith("unet."):
            converted[key] = value
        elif key.startswith("resampler."):
            converted["resampler." + rename_resampler_key(key[len("resampler."):], source)] = value
        else:
            raise KeyError(f"{source}: unexpected key '{key}' (expected unet.* or resampler.*)")
    return converted


def resampler_config(state: dict[str, torch.Tensor], heads: int, source: str, normalize: str = "released") -> dict:
    """Hyper-parameters read off the converted weights' shapes (all but the head count and the input
    normalisation, which shapes cannot tell)."""
    try:
        proj_in = state["resampler.perceiver.proj_in.weight"]
        inner = state["resampler.perceiver.layers.0.attn.to_q.weight"].shape[0]
        config = dict(
            input_dim=proj_in.shape[1], dim=proj_in.shape[0],
            depth=len({k.split(".")[3] for k in state if k.startswith("resampler.perceiver.layers.")}),
            dim_head=inner // heads, heads=heads, num_latents=state["resampler.perceiver.latents"].shape[1],
            output1_dim=state["resampler.proj_out_1.weight"].shape[0],
            output2_dim=state["resampler.proj_out_2.weight"].shape[0],
            ff_mult=state["resampler.perceiver.layers.0.ff.fc1.weight"].shape[0] // proj_in.shape[0],
            normalize=normalize)
    except KeyError as error:
        raise KeyError(f"{source}: resampler weight {error} is missing") from None
    return config


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def convert(src: Path, sdxl: Path, out: Path, heads: int = RELEASED_HEADS, normalize: str = "released") -> Detokenizer:
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"--normalize {normalize!r}: expected one of {NORMALIZE_MODES}")
    state = convert_state(read_checkpoint(src), str(src))
    config = resampler_config(state, heads, str(src), normalize)
    unet_config = sdxl / "unet" / "config.json"
    if not unet_config.is_file():
        raise FileNotFoundError(f"{unet_config}: not found (--sdxl must be an SDXL diffusers folder)")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(unet_config.parent)))
        model = Detokenizer(unet, ResamplerXL(**config))
    load_strict(model, state, str(src), assign=True)
    write_weights_file(state, out, {RESAMPLER_METADATA_KEY: json.dumps(config), "source": str(src)})
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="released pytorch_model.bin (or .safetensors)")
    parser.add_argument("--sdxl", type=Path, required=True, help="SDXL base diffusers folder (for unet/config.json)")
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    parser.add_argument("--heads", type=int, default=RELEASED_HEADS, help="resampler attention heads")
    parser.add_argument("--normalize", choices=NORMALIZE_MODES, default="released",
                        help="the input normalisation the weights were trained with: released (SEED-Story's "
                             "de-tokenizers, ResamplerXLV2's F.normalize across tokens) or none (SEED-X's "
                             "configs with normalize: False)")
    args = parser.parse_args(argv)
    model = convert(args.src, args.sdxl, args.out, args.heads, args.normalize)
    print(f"wrote {args.out}: {sum(p.numel() for p in model.parameters()):,} parameters from {args.src}")


if __name__ == "__main__":
    sys.exit(run_entry(main))
