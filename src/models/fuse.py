"""Character-augmented text conditioning (StoryGPT-V §3.1 "Char-LDM", after FastComposer's post-fuse).

At every caption position that names a character, the frozen text encoder's output e is fused with the
character's image embedding v:  e' = LN(MLP2(MLP1([e; v]) + e)).  All other positions keep e.

Shapes: B batch, L tokens (77), D text width, M characters per frame (padded).
  text_states [B,L,D], char_embeds [B,M,D], token_char [B,L] long (index into M, -1 = not a name token)
  -> fused [B,L,D]
"""
from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """LN -> Linear -> GELU -> Linear, with an optional residual around the whole block."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, residual: bool):
        super().__init__()
        if residual and in_dim != out_dim:
            raise ValueError(f"MLP residual needs in_dim == out_dim, got {in_dim} and {out_dim}")
        self.residual = residual
        self.layer_norm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc2(self.act(self.fc1(self.layer_norm(x))))
        return out + x if self.residual else out


class FuseModule(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.mlp1 = MLP(2 * dim, dim, dim, residual=False)
        self.mlp2 = MLP(dim, dim, dim, residual=True)
        self.layer_norm = nn.LayerNorm(dim)

    def fuse(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """[N,D] text embeddings of name tokens, [N,D] their characters' image embeddings -> [N,D]."""
        return self.layer_norm(self.mlp2(self.mlp1(torch.cat([text, image], dim=-1)) + text))

    def forward(self, text_states: torch.Tensor, char_embeds: torch.Tensor, token_char: torch.Tensor) -> torch.Tensor:
        if char_embeds.shape[-1] != text_states.shape[-1]:
            raise ValueError(f"image embedding width {char_embeds.shape[-1]} != text width {text_states.shape[-1]}: "
                             f"the image encoder's projection_dim must equal the text encoder's hidden size")
        # No early return when nothing is named: the layers then run on 0 rows, so that every call runs the
        # same layers (ZeRO-3 gathers weights layer by layer on all processes in step; DDP sees every weight).
        batch_idx, pos_idx = torch.nonzero(token_char >= 0, as_tuple=True)
        char_idx = token_char[batch_idx, pos_idx]
        fused = self.fuse(text_states[batch_idx, pos_idx], char_embeds[batch_idx, char_idx].to(text_states.dtype))
        out = text_states.clone()
        out[batch_idx, pos_idx] = fused.to(out.dtype)
        return out
