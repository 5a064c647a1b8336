"""Qwen-VL's visual encoder (ViT-G/14 + attention pool), SEED-Story's frozen visual tokenizer.

Bai et al. 2023 (Qwen-VL) §2.1: an OpenCLIP ViT-bigG-style transformer at 448 px, then a one-layer
cross-attention pool with 256 queries that also projects to the LLM width (4096). SEED-Story uses its
output [B,256,4096] as the image features its MLLM regresses and its de-tokenizer draws from.

Qwen-VL is remote code, not part of transformers, so the module is ours; attribute names mirror
Qwen-VL-Chat's `transformer.visual.*` checkpoint keys, so extraction is a prefix strip
(src/tools/convert/qwen_vit.py). The hyper-parameters come from the `visual` section of its config.json:
  {"image_size": 448, "patch_size": 14, "width": 1664, "layers": 48, "heads": 16, "mlp_ratio": 4.9231,
   "output_dim": 4096}  (n_queries is fixed at 256 in Qwen-VL)

Shapes: B batch, P patches (grid**2), W width, Q queries (256), D output width.
  pixel_values [B,3,S,S] (CLIP mean/std) -> patches [B,P,W] -> transformer -> attn_pool [B,Q,D]
  -> ln_post -> @ proj -> [B,Q,D]
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from src.models.loading import load_strict, read_weights_file, read_weights_metadata
from src.models.pretrained import is_config_only
from src.models.resamplers import QwenAttnPool, resize_positions

# Keys of Qwen-VL's `visual` config section that describe the architecture; others (image_start_id,
# a token id of the LLM) are ignored.
ARCH_KEYS = ("image_size", "patch_size", "width", "layers", "heads", "mlp_ratio", "output_dim")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NORM_EPS = 1e-6
# Qwen-VL's learned patch positions: a fixed 16x16 table, bicubically resized to the patch grid.
POS_TABLE_SIZE = 256
# Metadata key under which src.tools.convert.qwen_vit stores the `visual` config in its safetensors file.
CONFIG_METADATA_KEY = "qwen_visual_config"


class VisualAttention(nn.Module):
    """Multi-head self-attention with one fused in_proj (Qwen-VL's `attn.in_proj` / `attn.out_proj`)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        # Qwen-VL splits the fused projection per head: [.., heads, 3 * head_dim] -> q, k, v.
        q, k, v = self.in_proj(x).view(batch, length, self.heads, -1).transpose(1, 2).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class VisualBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        mlp_width = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width, eps=NORM_EPS)
        self.attn = VisualAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=NORM_EPS)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, mlp_width)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(mlp_width, width))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class VisualTransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.resblocks = nn.ModuleList(VisualBlock(width, heads, mlp_ratio) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class QwenViT(nn.Module):
    """Qwen-VL's `transformer.visual`: pixel_values [B,3,S,S] -> features [B,256,output_dim]."""

    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int,
                 mlp_ratio: float, output_dim: int, n_queries: int = 256):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if output_dim % 128:
            raise ValueError(f"output_dim {output_dim}: the attention pool uses output_dim // 128 heads, "
                             f"so it must be a multiple of 128")
        self.image_size, self.patch_size, self.output_dim = image_size, patch_size, output_dim
        self.num_tokens = n_queries
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.positional_embedding = nn.Parameter(width ** -0.5 * torch.randn(POS_TABLE_SIZE, width))
        self.ln_pre = nn.LayerNorm(width, eps=NORM_EPS)
        self.transformer = VisualTransformer(width, layers, heads, mlp_ratio)
        self.attn_pool = QwenAttnPool(math.isqrt(n_queries), output_dim, output_dim // 128, kv_dim=width,
                                      norm_eps=NORM_EPS)
        self.ln_post = nn.LayerNorm(output_dim, eps=NORM_EPS)
        self.proj = nn.Parameter(output_dim ** -0.5 * torch.randn(output_dim, output_dim))

    @classmethod
    def from_config(cls, visual: dict) -> "QwenViT":
        """Build from the `visual` section of Qwen-VL's config.json (a missing key is an error naming it).
        `n_queries` is optional (Qwen-VL fixes 256; smaller tokenizers for toy runs set it)."""
        missing = [key for key in ARCH_KEYS if key not in visual]
        if missing:
            raise KeyError(f"Qwen-VL visual config lacks {missing} (has {sorted(visual)})")
        return cls(**{key: visual[key] for key in ARCH_KEYS}, n_queries=visual.get("n_queries", 256))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixel_values.to(self.proj.dtype)).flatten(2).transpose(1, 2)  # [B,P,W]
        x = self.ln_pre(x + resize_positions(self.positional_embedding, x.shape[1]))
        x = self.attn_pool(self.transformer(x))
        return self.ln_post(x) @ self.proj


def load_qwen_vit(path: str | Path) -> QwenViT:
    """The frozen tokenizer from a file written by src.tools.convert.qwen_vit (config in its metadata).
    In config-only mode (the shape check) it is built on the meta device from that file's metadata alone,
    or from a Qwen-VL-Chat folder's config.json `visual` section."""
    if is_config_only():
        return QwenViT.from_config(_visual_config_only(Path(path))).eval().requires_grad_(False)
    state, visual = read_weights_file(path, CONFIG_METADATA_KEY,
                                      "extract it with python -m src.tools.convert.qwen_vit")
    with torch.device("meta"):
        model = QwenViT.from_config(visual)
    load_strict(model, state, str(path), assign=True)
    return model.eval().requires_grad_(False)


def _visual_config_only(path: Path) -> dict:
    """The `visual` config of a reload_qwen_vit file (its metadata; no tensor is read) or of a Qwen-VL
    folder (config.json)."""
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file}: not found (a Qwen-VL-Chat folder, or a file written by "
                                    f"python -m src.tools.convert.qwen_vit)")
        config = json.loads(config_file.read_text())
        if "visual" not in config:
            raise KeyError(f"{config_file}: no `visual` section; is this a Qwen-VL checkpoint?")
        return config["visual"]
    return read_weights_metadata(path, CONFIG_METADATA_KEY, "extract it with python -m src.tools.convert.qwen_vit, "
                                 "or point the shape check at a Qwen-VL-Chat folder (its config.json)")
