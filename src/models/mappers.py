"""Mappers between an LLM's width and a vision or diffusion width (StoryGPT-V §3.2, after GILL).

Shapes: B batch, N images, W vision width, K soft tokens per image, D LLM width, R [IMG] tokens,
Q output queries (77 for Stable Diffusion), E output width (the text encoder's), d mapper width.
  ImageToTokens: pooled vision features [N,W] -> soft tokens [N,K,D]
  GILLMapper:    hidden states [B,R,D] + their input embeddings [B,R,D] -> conditioning [B,Q,E]
"""
from __future__ import annotations

import warnings

import torch
from torch import nn


class ImageToTokens(nn.Module):
    """An earlier frame enters the LLM as K soft tokens: one linear layer on the frozen vision tower's
    pooled features (GILL's `visual_embeddings`, K = 4)."""

    def __init__(self, vision_width: int, llm_width: int, num_tokens: int = 4):
        super().__init__()
        self.num_tokens, self.llm_width = num_tokens, llm_width
        self.proj = nn.Linear(vision_width, num_tokens * llm_width)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features).view(features.shape[0], self.num_tokens, self.llm_width)


class GILLMapper(nn.Module):
    """GILL's mapper (Koh et al. 2023, §3.2): hidden states of the [IMG] tokens plus their input
    embeddings -> Linear(D, d) -> an encoder-decoder transformer (pre-LN, no dropout) whose decoder reads
    Q learned queries -> Linear(d, E). Out: the text conditioning a Stable Diffusion UNet expects."""

    def __init__(self, llm_width: int, out_width: int, num_queries: int = 77, width: int = 512,
                 encoder_layers: int = 4, decoder_layers: int = 4, heads: int = 4, ffn: int = 2048,
                 dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(llm_width, width)
        with warnings.catch_warnings():  # "nested tensors need post-LN": a speed note, not a fault
            warnings.filterwarnings("ignore", message="enable_nested_tensor is True")
            self.tfm = nn.Transformer(d_model=width, nhead=heads, num_encoder_layers=encoder_layers,
                                      num_decoder_layers=decoder_layers, dim_feedforward=ffn, dropout=dropout,
                                      batch_first=True, norm_first=True)
        self.queries = nn.Parameter(torch.randn(num_queries, width))
        self.out = nn.Linear(width, out_width)

    def forward(self, hidden_states: torch.Tensor, input_embeds: torch.Tensor) -> torch.Tensor:
        x = self.fc((hidden_states + input_embeds).to(self.fc.weight.dtype))
        queries = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)
        return self.out(self.tfm(x, queries))
