"""Resamplers: turn a set of feature tokens into a fixed number of query tokens.

Building blocks shared by SEED-Story's visual tokenizer (Qwen-VL's attention pool), its MLLM's input and
output resamplers (the same attention pool at grid 8 / 16) and the SDXL de-tokenizer's perceiver
(ResamplerXL, after Flamingo's Perceiver Resampler, Alayrac et al. 2022 §2.1).

Shapes: B batch, L input tokens, Q queries/latents, D width, E input width.
  QwenAttnPool      x [B,L,E]                  -> [B,Q,D]   (Q = grid_size**2)
  PerceiverResampler x [B,L,E]                 -> latents [B,Q,D]
  AttentionPool1d   x [B,Q,D]                  -> [B,D_out] (the pooled token)
  ResamplerXL       image_embeds [B,L,E]       -> encoder_hidden_states [B,Q,D1+D2], pooled [B,D2]
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NORMALIZE_MODES = ("token", "released", "none")


def sincos_2d(embed_dim: int, grid_size: int) -> torch.Tensor:
    """MAE's fixed 2D sin-cos positions [grid_size**2, embed_dim], row-major over the grid: the first
    half of the channels encodes the column, the second half the row (as Qwen-VL's attention pool)."""
    if embed_dim % 4:
        raise ValueError(f"2D sin-cos positions need a width divisible by 4, got {embed_dim}")
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4))
    rows, cols = torch.meshgrid(torch.arange(grid_size, dtype=torch.float64),
                                torch.arange(grid_size, dtype=torch.float64), indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()


def resize_positions(pos: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Bicubically resize square-grid positions [G*G, C] to [num_tokens, C] (num_tokens a square)."""
    src, tgt = math.isqrt(pos.shape[0]), math.isqrt(num_tokens)
    if tgt * tgt != num_tokens:
        raise ValueError(f"{num_tokens} tokens do not form a square grid")
    if src == tgt:
        return pos
    grid = pos.float().reshape(1, src, src, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(tgt, tgt), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).flatten(0, 2).to(pos.dtype)


class QwenAttnPool(nn.Module):
    """Qwen-VL's attention pool (Bai et al. 2023, §2.1 "Position-aware Vision-Language Adapter"): Q
    learned queries with fixed 2D sin-cos positions cross-attend once to the keys (with the same
    positions resized to the key grid); LayerNorm on both sides, no FFN. Parameter names follow
    Qwen-VL's `attn_pool.*` so released weights load by name.

    `norm_eps`: the release's Resampler (SEED-Story src/models/qwen_visual.py) defaults to
    nn.LayerNorm, eps 1e-5, which SEED-Story's agent resamplers use; Qwen-VL's ViT builds its own pool
    with eps 1e-6 (QwenViT passes it)."""

    def __init__(self, grid_size: int, embed_dim: int, num_heads: int, kv_dim: int | None = None,
                 norm_eps: float = 1e-5):
        super().__init__()
        self.num_queries = grid_size ** 2
        # A frozen parameter, not a buffer: Qwen-VL stores it as one, so it is part of the released weights.
        self.pos_embed = nn.Parameter(sincos_2d(embed_dim, grid_size), requires_grad=False)
        self.query = nn.Parameter(torch.empty(self.num_queries, embed_dim))
        self.kv_proj = (nn.Linear(kv_dim, embed_dim, bias=False) if kv_dim is not None and kv_dim != embed_dim
                        else nn.Identity())
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.ln_q = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=norm_eps)
        nn.init.trunc_normal_(self.query, std=0.02)
        if isinstance(self.kv_proj, nn.Linear):
            nn.init.trunc_normal_(self.kv_proj.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key_pos = resize_positions(self.pos_embed, x.shape[1]).to(x.dtype)
        kv = self.ln_kv(self.kv_proj(x))
        query = (self.ln_q(self.query) + self.pos_embed.to(x.dtype)).expand(x.shape[0], -1, -1)
        return self.attn(query, kv + key_pos, kv, need_weights=False)[0]


class PerceiverAttention(nn.Module):
    """Latents attend to [inputs; latents] (Flamingo's Perceiver Resampler); pre-norm on both."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm_x = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm_x(x), self.norm_latents(latents)
        batch, num_latents, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(batch, num_latents, -1))


class FeedForward(nn.Module):
    """Pre-norm MLP without biases (Flamingo's Perceiver Resampler)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mult, bias=False)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim * mult, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class PerceiverBlock(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int, ff_mult: int):
        super().__init__()
        self.attn = PerceiverAttention(dim, dim_head, heads)
        self.ff = FeedForward(dim, ff_mult)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = latents + self.attn(x, latents)
        return latents + self.ff(latents)


class PerceiverResampler(nn.Module):
    """proj_in, then `depth` perceiver blocks over `num_latents` learned latents. No output norm: the
    caller decides what follows."""

    def __init__(self, input_dim: int, dim: int, depth: int, dim_head: int, heads: int, num_latents: int,
                 ff_mult: int = 4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_latents, dim) / dim ** 0.5)
        self.proj_in = nn.Linear(input_dim, dim)
        self.layers = nn.ModuleList(PerceiverBlock(dim, dim_head, heads, ff_mult) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)
        latents = self.latents.expand(x.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(x, latents)
        return latents


class AttentionPool1d(nn.Module):
    """CLIP-ResNet-style attention pooling over a token sequence: the mean token, prepended, attends to
    all tokens (with learned positions) and its output is the pooled vector."""

    def __init__(self, seq_len: int, embed_dim: int, num_heads: int, output_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.positional_embedding = nn.Parameter(torch.randn(seq_len + 1, embed_dim) / embed_dim ** 0.5)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        q = self.q_proj(x[:, :1])  # only the mean token's output is kept, so only its query is needed
        k, v = self.k_proj(x), self.v_proj(x)
        q, k, v = (t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return self.c_proj(out[:, 0])


def normalize_features(x: torch.Tensor, mode: str) -> torch.Tensor:
    """"token": L2-normalise each feature token (over D). "released": SEED-Story's `F.normalize(x)` with
    the default dim=1, which for [B,L,D] normalises each channel across the L tokens, so a token's scale
    depends on the other tokens of the image (kept to run the released weights as trained). "none"."""
    if mode == "token":
        return F.normalize(x, dim=-1)
    if mode == "released":
        return F.normalize(x, dim=1)
    if mode == "none":
        return x
    raise ValueError(f"normalize={mode!r}: expected one of {NORMALIZE_MODES}")


class ResamplerXL(nn.Module):
    """SEED-X/SEED-Story's de-tokenizer resampler (ResamplerXLV2): ViT features -> SDXL's two text
    conditionings. normalize -> proj_in -> perceiver -> LayerNorm -> [proj_out_1 ; proj_out_2] as
    encoder_hidden_states, and an attention pool as the pooled embedding that replaces `text_embeds`."""

    def __init__(self, input_dim: int = 4096, dim: int = 1024, depth: int = 4, dim_head: int = 64,
                 heads: int = 16, num_latents: int = 64, output1_dim: int = 768, output2_dim: int = 1280,
                 ff_mult: int = 4, normalize: str = "token"):
        super().__init__()
        normalize_features(torch.zeros(1, 1, 1), normalize)  # reject a bad mode at build time
        self.normalize = normalize
        self.perceiver = PerceiverResampler(input_dim, dim, depth, dim_head, heads, num_latents, ff_mult)
        self.norm_out = nn.LayerNorm(dim)
        self.proj_out_1 = nn.Linear(dim, output1_dim)
        self.proj_out_2 = nn.Linear(dim, output2_dim)
        self.attn_pool = AttentionPool1d(num_latents, dim, heads, output2_dim)

    def forward(self, image_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.norm_out(self.perceiver(normalize_features(image_embeds, self.normalize)))
        encoder_hidden_states = torch.cat([self.proj_out_1(hidden), self.proj_out_2(hidden)], dim=-1)
        return encoder_hidden_states, self.attn_pool(hidden)
