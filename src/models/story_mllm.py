"""SEED-Story's MLLM (SEED-Story §3.2; docs/seed_story.md): an LLM with image tokens, an input resampler that
splices visual-tokenizer features into the image positions, and an output resampler that regresses the
next frame's features from the hidden states at the image positions.

- Special tokens: `<img>`, `</img>` and K `<img_xxxxx>` tokens (K = 64 released), added to the LLM through
  LLMWithImageTokens (src/models/llm_with_image_tokens.py), which StoryGPT-V's stage 2 shares. The K
  image-token embeddings are the output queries: a target image feeds them raw and reads the hidden
  states back (there are no separate query parameters, as released).
- Input resampler: Qwen-VL's attention pool (src/models/resamplers.py) with K queries (8x8), one
  cross-attention layer, LayerNorm on queries and keys, 2D sin-cos positions: [N,Q,E] -> [N,K,D].
- Output resampler: the same pool with Q queries (16x16 released) over the K hidden states:
  [N,K,D] -> [N,Q,E], in the visual tokenizer's feature space.

Shapes: B batch, L sequence, D LLM width, K image tokens per image, Q feature tokens, E feature width,
N images.
  input_ids [B,L], features [N_in,Q,E], cmp_mask [B,L] (N_in*K True, images in order)
  -> inputs_embeds [B,L,D] -> hidden [B,L,D]; hidden[gen_mask] [N_gen*K,D] -> regressed [N_gen,Q,E]
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from src.models.llm_with_image_tokens import LLMWithImageTokens
from src.models.resamplers import QwenAttnPool

BOI, EOI = "<img>", "</img>"
REGRESSION_LOSSES = ("cosine", "mse")


def seed_token_names(num_image_tokens: int) -> list[str]:
    """The added vocabulary in the release's order: <img>, </img>, <img_00000> .. <img_{K-1}>."""
    return [BOI, EOI] + [f"<img_{j:05d}>" for j in range(num_image_tokens)]


def square_grid(tokens: int, what: str) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"{what}: {tokens} tokens do not form a square grid (the resamplers' 2D positions)")
    return side


class StoryMLLM(nn.Module):
    def __init__(self, llm: LLMWithImageTokens, num_image_tokens: int, feature_tokens: int, feature_dim: int,
                 input_heads: int, output_heads: int):
        super().__init__()
        if llm.image_token_names() != seed_token_names(num_image_tokens):
            raise ValueError("the LLM's added tokens must be seed_token_names(num_image_tokens)")
        self.llm = llm
        self.num_image_tokens = num_image_tokens
        self.input_resampler = QwenAttnPool(square_grid(num_image_tokens, "image tokens"), llm.width, input_heads,
                                            kv_dim=feature_dim)
        self.output_resampler = QwenAttnPool(square_grid(feature_tokens, "visual-tokenizer tokens"), feature_dim,
                                             output_heads, kv_dim=llm.width)

    @property
    def boi_id(self) -> int:
        return self.llm.token_id(BOI)

    @property
    def eoi_id(self) -> int:
        return self.llm.token_id(EOI)

    @property
    def image_ids(self) -> tuple[int, ...]:
        return tuple(self.llm.token_id(f"<img_{j:05d}>") for j in range(self.num_image_tokens))

    def embed(self, input_ids: torch.Tensor, features: torch.Tensor, cmp_mask: torch.Tensor,
              image_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with the input images' resampled features spliced into their positions;
        `image_tokens` [N_in,K] bool: which of each image's K tokens the sequence holds (None: all; fewer
        in a sink-shaped sample, whose evicted images keep only their head and tail)."""
        embeds = self.llm.embed_ids(input_ids)
        if features.shape[0] == 0:  # keep the input resampler in the graph (DDP / ZeRO need every grad)
            dummy = sum(p.sum() for p in self.input_resampler.parameters() if p.requires_grad)
            return embeds + 0.0 * dummy
        tokens = self.input_resampler(features.to(self.input_resampler.query.dtype))
        tokens = tokens.flatten(0, 1) if image_tokens is None else tokens[image_tokens.to(tokens.device)]
        expected = int(cmp_mask.sum())
        if tokens.shape[0] != expected:
            raise RuntimeError(f"{features.shape[0]} input images give {tokens.shape[0]} tokens for {expected} image positions")
        # Row-major positions, the order the images come in. Indexing by positions (not masked_scatter)
        # lets the mask live on the CPU while the model is on the meta device (the shape check).
        positions = tuple(p.to(embeds.device) for p in cmp_mask.nonzero(as_tuple=True))
        return embeds.index_put(positions, tokens.to(embeds.dtype))

    def forward(self, input_ids: torch.Tensor, features: torch.Tensor, cmp_mask: torch.Tensor,
                attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None,
                image_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Last-layer hidden states [B,L,D]."""
        return self.llm(self.embed(input_ids, features, cmp_mask, image_tokens), attention_mask, position_ids)

    def regress(self, hidden: torch.Tensor, gen_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states at the target images' K positions -> their regressed features [N_gen,Q,E]."""
        rows = hidden[gen_mask].view(-1, self.num_image_tokens, hidden.shape[-1])
        return self.output_resampler(rows.to(self.output_resampler.query.dtype))


def regression_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """[N,Q,E] x2 -> scalar. cosine: mean over every token of every image of 1 - cos (the release);
    mse: mean squared error (SEED-X's 13B release)."""
    if kind == "cosine":
        return (1 - F.cosine_similarity(pred.float(), target.float(), dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(pred.float(), target.float())
    raise ValueError(f"regression loss '{kind}' is not one of {', '.join(REGRESSION_LOSSES)}")
