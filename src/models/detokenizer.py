"""SEED-Story's de-tokenizer (SEED-X §3.1, SEED-Story §3.1 stage 1): an SDXL UNet that draws a frame from
visual-tokenizer features instead of text. SDXL's two text encoders are gone; a perceiver resampler
(ResamplerXL) produces both of SDXL's text conditionings from the features:
  encoder_hidden_states (the two encoders' concatenated token states) and the pooled `text_embeds`.
The UNet is diffusers' own, untouched: conditioning enters through its cross-attention and its
`added_cond_kwargs`, as SDXL's text would.

Shapes: B batch, L feature tokens (256), E feature width (4096), Q latents (64), D cross-attention width
(2048 = 768 + 1280), P pooled width (1280), c/h/w latent channels and size.
  image_embeds [B,L,E] -> encoder_hidden_states [B,Q,D], pooled [B,P]
  noisy_latents [B,c,h,w], timesteps [B], time_ids [B,6] -> model_pred [B,c,h,w]
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from src.models.loading import load_strict, read_weights_file, read_weights_metadata
from src.models.pretrained import is_config_only
from src.models.resamplers import ResamplerXL

TRAINABLE_UNET = ("full", "to_kv", "none")
# Metadata key of a de-tokenizer weights file (src.tools.convert.seed_detokenizer) holding ResamplerXL's kwargs.
RESAMPLER_METADATA_KEY = "resampler_config"
NUM_TIME_IDS = 6  # SDXL micro-conditioning: original (h, w), crop (top, left), target (h, w)


def sdxl_time_ids(original_size: tuple[int, int], crop_top_left: tuple[int, int],
                  target_size: tuple[int, int]) -> list[int]:
    """SDXL's micro-conditioning (Podell et al. 2023, §2.2): original_size + crop_coords + target_size,
    each as (h, w) / (top, left), the order diffusers' SDXL pipeline uses."""
    return [*original_size, *crop_top_left, *target_size]


def resize_crop_time_ids(original_size: tuple[int, int], resolution: int) -> list[int]:
    """Time ids of a frame resized so its shorter side is `resolution` and centre-cropped to a square
    (torchvision's Resize + CenterCrop). The released SEED-Story data code swaps h and w of the crop
    offset (the release: its size helper returns (h, w), the caller unpacks (w, h)); this does not."""
    height, width = original_size
    if height <= width:
        new_h, new_w = resolution, int(resolution * width / height)
    else:
        new_h, new_w = int(resolution * height / width), resolution
    top, left = int(round((new_h - resolution) / 2.0)), int(round((new_w - resolution) / 2.0))
    return sdxl_time_ids((height, width), (top, left), (resolution, resolution))


def released_time_ids(original_size: tuple[int, int], resolution: int) -> list[int]:
    """The time ids SEED-Story's data code gives a frame it resizes to `resolution` on the shorter side
    and centre-crops (story_telling.py:decode_long_story_data, stage 3): its size helper
    (calculate_new_dimensions) returns (h, w) and the caller unpacks (w, h), so the crop offsets come
    out swapped, (left, top) where (top, left) belongs; its arithmetic is kept as it is."""
    height, width = original_size
    if height < width:
        new_h, new_w = resolution, int(width * (resolution / height))
    else:
        new_w, new_h = resolution, int(height * (resolution / width))
    top, left = max(0, int(round((new_w - resolution) / 2.0))), max(0, int(round((new_h - resolution) / 2.0)))
    return sdxl_time_ids((height, width), (top, left), (resolution, resolution))


def check_sdxl_unet(unet: UNet2DConditionModel, resampler: ResamplerXL) -> None:
    """The UNet must take SDXL's conditioning at the widths the resampler produces."""
    config = unet.config
    if config.addition_embed_type != "text_time":
        raise ValueError(f"the de-tokenizer needs an SDXL-layout UNet (addition_embed_type 'text_time'), "
                         f"got {config.addition_embed_type!r}")
    width = resampler.proj_out_1.out_features + resampler.proj_out_2.out_features
    if config.cross_attention_dim != width:
        raise ValueError(f"UNet cross_attention_dim {config.cross_attention_dim} != resampler output "
                         f"{resampler.proj_out_1.out_features} + {resampler.proj_out_2.out_features}")
    pooled = config.projection_class_embeddings_input_dim - NUM_TIME_IDS * config.addition_time_embed_dim
    if pooled != resampler.attn_pool.c_proj.out_features:
        raise ValueError(f"UNet expects a pooled embedding of width {pooled}, the resampler's attention pool "
                         f"gives {resampler.attn_pool.c_proj.out_features}")


class Detokenizer(nn.Module):
    def __init__(self, unet: UNet2DConditionModel, resampler: ResamplerXL):
        super().__init__()
        check_sdxl_unet(unet, resampler)
        self.unet, self.resampler = unet, resampler

    def encode(self, image_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features -> (encoder_hidden_states, pooled text_embeds), what SDXL's pipeline calls
        prompt_embeds and pooled_prompt_embeds."""
        return self.resampler(image_embeds.to(self.resampler.perceiver.proj_in.weight.dtype))

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, image_embeds: torch.Tensor,
                time_ids: torch.Tensor) -> torch.Tensor:
        encoder_hidden_states, pooled = self.encode(image_embeds)
        # Inputs in the UNet's own dtype: a no-op under autocast (fp32 UNet); under DeepSpeed bf16 the whole
        # UNet is bf16 and runs without autocast, so fp32 latents and time ids must be cast (as LDMTask.denoise).
        dtype = self.unet.dtype
        added = {"text_embeds": pooled.to(dtype), "time_ids": time_ids.to(dtype)}
        return self.unet(noisy_latents.to(dtype), timesteps, encoder_hidden_states.to(dtype), added_cond_kwargs=added).sample

    def set_trainable(self, unet_mode: str) -> None:
        """The resampler always trains. The UNet: "full", "to_kv" (every attention's to_k/to_v, self- and
        cross-attention alike, as SEED-Story's adaptation stage does), or "none"."""
        if unet_mode not in TRAINABLE_UNET:
            raise ValueError(f"unet training mode {unet_mode!r}: expected one of {TRAINABLE_UNET}")
        self.resampler.requires_grad_(True)
        self.unet.requires_grad_(unet_mode == "full")
        if unet_mode == "to_kv":
            for name, module in self.unet.named_modules():
                if name.endswith(("to_k", "to_v")):
                    module.requires_grad_(True)


def load_detokenizer(unet: UNet2DConditionModel, path: str | Path) -> Detokenizer:
    """A Detokenizer around `unet` with the weights (UNet and resampler) of a converted file, strictly.
    In config-only mode (the shape check) only the file's resampler config is read; no weight is loaded."""
    hint = "convert one with python -m src.tools.convert.seed_detokenizer"
    if is_config_only():
        return Detokenizer(unet, ResamplerXL(**read_weights_metadata(path, RESAMPLER_METADATA_KEY, hint)))
    state, resampler_config = read_weights_file(path, RESAMPLER_METADATA_KEY, hint)
    model = Detokenizer(unet, ResamplerXL(**resampler_config))
    load_strict(model, state, str(path))
    return model
