"""The visual tokenizer: a frozen image encoder whose feature tokens SEED-Story's MLLM regresses and its
de-tokenizer draws from (SEED-Story §3.1). One wrapper over three kinds of tower, so that a run picks one
by config:

  qwen_vit    a file written by src.tools.convert.qwen_vit (Qwen-VL ViT-G/14: [B,256,4096], the release)
  hf          a transformers vision tower folder (CLIPVisionModel, SiglipVisionModel, a CLIPModel's
              vision half, ...): last_hidden_state [B,L,D]; for smaller runs
  open_clip   an open_clip architecture name + checkpoint file: the visual tower's tokens [B,L,D]

Shapes: B batch, S input frame size, L tokens, D feature width.
  frames [B,3,S,S] in [-1,1] (the VAE's convention) -> resize to the tower's size (a squash, as SEED-Story
  does for its ViT) -> the tower's mean/std -> features [B,L,D]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("qwen_vit", "hf", "open_clip")
# The filter a stored frame is resized with to the tower's input size (src/data/transforms.py: load_frame):
# SEED-Story's tokenizer input is torchvision's Resize((448, 448)) of the PIL frame, i.e. PIL's bilinear
# (configs/processer/qwen_448_transform.yaml, used in stage 2 and at generation).
INPUT_RESAMPLE = "bilinear"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class VisualTokenizer(nn.Module):
    def __init__(self, tower: nn.Module, kind: str, image_size: int, mean, std):
        super().__init__()
        self.tower, self.kind, self.image_size = tower, kind, image_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.tower.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: never in training mode (no dropout, fixed features)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        pixels = (frames.float() + 1) / 2
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        return (pixels - self.mean) / self.std

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.encode_pixels(self.preprocess(frames))

    @torch.no_grad()
    def empty_features(self, batch: int) -> torch.Tensor:
        """Features of an "empty" image, all zeros after normalisation: SEED-Story's negative condition
        for classifier-free guidance (docs/seed_story.md) and this framework's dropped condition in training."""
        return self.encode_pixels(torch.zeros(batch, 3, self.image_size, self.image_size, device=self.mean.device))

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(next(self.tower.parameters()).dtype)
        if self.kind == "hf":
            return self.tower(pixel_values=pixels).last_hidden_state
        if self.kind == "open_clip":
            return self.tower(pixels)[1]
        return self.tower(pixels)


def build_visual_tokenizer(kind: str, path: str, arch: str | None = None) -> VisualTokenizer:
    """`path`: the qwen_vit file, the HF folder, or the open_clip checkpoint (`arch` names its model)."""
    if kind == "qwen_vit":
        from src.models.qwen_vit import load_qwen_vit

        tower = load_qwen_vit(path)
        return VisualTokenizer(tower, kind, tower.image_size, CLIP_MEAN, CLIP_STD)
    if kind == "hf":
        from transformers import AutoImageProcessor, AutoModel

        model = AutoModel.from_pretrained(path)
        tower = getattr(model, "vision_model", model)  # a CLIPModel/SiglipModel folder: keep the vision half
        try:
            processor = AutoImageProcessor.from_pretrained(path)
            mean, std = processor.image_mean, processor.image_std
        except OSError:  # no preprocessor_config.json: the CLIP statistics
            mean, std = CLIP_MEAN, CLIP_STD
        return VisualTokenizer(tower, kind, tower.config.image_size, mean, std)
    if kind == "open_clip":
        import open_clip

        if arch is None:
            raise ValueError("visual tokenizer kind open_clip needs `arch` (an open_clip model name)")
        visual = open_clip.create_model(arch, pretrained=path).visual
        visual.output_tokens = True
        size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
        return VisualTokenizer(visual, kind, size, visual.image_mean or CLIP_MEAN, visual.image_std or CLIP_STD)
    raise ValueError(f"visual tokenizer kind {kind!r}: expected one of {KINDS}")
