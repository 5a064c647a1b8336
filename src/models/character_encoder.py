"""The character encoder: a CLIP vision tower whose pooled, projected CLS token is one embedding per
character reference image (StoryGPT-V §3.1; docs/storygpt_v.md: CLIP ViT-L/14 at 224 px, last 2 layers train).

The tower runs in two parts: `frozen_states` (patch and position embeddings, pre-norm and the frozen
layers: nothing there trains, so its output depends on the image alone and a fixed reference's can be
computed once and kept) and `embed_states` (the trained layers, the post-norm of the CLS token and the
projection).

Shapes: N reference images, R the tower's input size, T = (R/patch)^2 + 1 tokens, W the tower's width,
P its projection width.
  pixel_values [N,3,R,R] in [0,1] (already padded to square and resized) -> states [N,T,W] -> embeds [N,P]
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import CLIPVisionModelWithProjection
from transformers.utils import logging as hf_logging

from src.models.pretrained import load_pretrained

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CharacterImageEncoder(nn.Module):
    def __init__(self, vision_model: nn.Module, visual_projection: nn.Module, image_size: int,
                 trainable_layers: int, mean=CLIP_MEAN, std=CLIP_STD):
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = visual_projection
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        layers = self.vision_model.encoder.layers
        if not 0 <= trainable_layers <= len(layers):
            raise ValueError(f"image_encoder_trainable_layers={trainable_layers}, but the tower has {len(layers)} layers")
        self.num_frozen_layers = len(layers) - trainable_layers  # frozen_states runs these
        self.requires_grad_(False)
        for layer in layers[self.num_frozen_layers:]:
            layer.requires_grad_(True)

    @classmethod
    def from_pretrained(cls, path: str, trainable_layers: int) -> "CharacterImageEncoder":
        """From a CLIPModel or CLIPVisionModelWithProjection folder (the text tower, if any, is unused)."""
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a CLIPModel folder's text weights are expected to be left out
        try:
            tower = load_pretrained(CLIPVisionModelWithProjection, path)
        finally:
            hf_logging.set_verbosity(verbosity)
        return cls(tower.vision_model, tower.visual_projection, tower.config.image_size, trainable_layers)

    @property
    def embed_dim(self) -> int:
        return self.visual_projection.out_features

    @torch.no_grad()
    def frozen_states(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N,3,R,R] in [0,1] -> [N,T,W]: the tower up to its first trained layer (CLIPVisionModel's forward,
        step by step)."""
        vision = self.vision_model
        pixel_values = (pixel_values - self.mean) / self.std
        states = vision.pre_layrnorm(vision.embeddings(pixel_values.to(self.visual_projection.weight.dtype)))
        for layer in vision.encoder.layers[:self.num_frozen_layers]:
            states = layer(states, None)
        return states

    def pooled_states(self, states: torch.Tensor) -> torch.Tensor:
        """`frozen_states`' output [N,T,W] -> the tower's pooled CLS state [N,W] (before the projection)."""
        vision = self.vision_model
        for layer in vision.encoder.layers[self.num_frozen_layers:]:
            states = layer(states, None)
        return vision.post_layernorm(states[:, 0, :])

    def embed_states(self, states: torch.Tensor) -> torch.Tensor:
        """`frozen_states`' output [N,T,W] -> embeds [N,P]."""
        return self.visual_projection(self.pooled_states(states))

    def pooled(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N,3,R,R] in [0,1] -> the tower's pooled CLS state [N,W] (before the projection)."""
        return self.pooled_states(self.frozen_states(pixel_values))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.embed_states(self.frozen_states(pixel_values))


def clip_processor_pixels(frames: torch.Tensor, size: int) -> torch.Tensor:
    """[N,3,H,W] frames in [-1,1] (8-bit images) -> [N,3,size,size] in [0,1] the way CLIP's image processor
    prepares a PIL image (transformers' CLIPImageProcessor with PIL, as StoryGPT-V's stage 2 ran it):
    the shorter side resized to `size` with PIL's bicubic filter (the longer side int(size * long / short)),
    then the centre `size` x `size` crop, / 255."""
    out = []
    for frame in frames:
        levels = ((frame.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        image = Image.fromarray(levels.permute(1, 2, 0).numpy())
        width, height = image.size
        short, long = min(width, height), max(width, height)
        resized = (size, int(size * long / short)) if width <= height else (int(size * long / short), size)
        image = image.resize(resized, Image.Resampling.BICUBIC)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        image = image.crop((left, top, left + size, top + size))
        out.append(torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255)
    return torch.stack(out).to(frames.device)
