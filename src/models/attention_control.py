"""Cross-attention control (StoryGPT-V §3.1, Eq. 2-3; FastComposer's localisation loss).

A `CharacterAttnProcessor` on each chosen cross-attention module (`attn2`) records how much every
pixel attends to each character's name tokens; `attention_control_loss` then pulls that attention
inside the character's segmentation mask:

    loss_k = mean_{outside M_k} A_k  -  mean_{inside M_k} A_k

averaged over valid characters, batch, heads and layers (a lower loss = attention inside the mask; the
released code's per-frame average is `per_frame=True`).
The processors are diffusers attention processors: the UNet itself is not modified.

Shapes: B batch, h heads, S = H_l*W_l pixels of a layer, L tokens, M characters per frame.
  attention probs [B*h, S, L];  name_weights [B, L, M] (1/n_k on the n_k tokens of character k)
  -> recorded maps [B, h, S, M];  char_masks [B, M, H, W];  char_valid [B, M] bool
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0


class AttentionStore:
    """Shared by the processors of one UNet.

    `start(name_weights)` arms the processors and opens recording; `stop()` closes recording and returns
    the maps, one per recorded layer call. The name weights stay armed after `stop()` because gradient
    checkpointing (torch.utils.checkpoint, non-reentrant, as diffusers uses it) re-runs each
    checkpointed block during backward, after the step's forward has ended: the re-run must compute
    exactly what the forward computed (explicit probabilities, the same saved tensors) but must not
    record a second copy of the maps. `clear()` disarms them (the next `start` replaces them anyway).
    Armed processors take the explicit path only while autograd is on, so no-grad sampling stays fast.
    """

    def __init__(self):
        self.name_weights: torch.Tensor | None = None
        self.recording = False
        self.maps: list[torch.Tensor] = []

    def start(self, name_weights: torch.Tensor) -> None:
        self.name_weights, self.recording, self.maps = name_weights, True, []

    def stop(self) -> list[torch.Tensor]:
        maps, self.recording, self.maps = self.maps, False, []
        return maps

    def clear(self) -> None:
        self.name_weights, self.recording, self.maps = None, False, []


class CharacterAttnProcessor:
    """Cross-attention with explicit probabilities while armed and autograd is on; PyTorch SDPA otherwise.
    The maps are appended to the store only while it records (the forward pass, not a checkpoint re-run)."""

    def __init__(self, store: AttentionStore):
        self.store = store
        self.fast = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        weights = self.store.name_weights
        if weights is None or not torch.is_grad_enabled() or encoder_hidden_states is None \
                or attn.spatial_norm is not None or attn.group_norm is not None or hidden_states.ndim != 3:
            return self.fast(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        batch_size = hidden_states.shape[0]
        if weights.shape[0] != batch_size:
            raise ValueError(f"AttentionStore: name weights for a batch of {weights.shape[0]}, the UNet got "
                             f"{batch_size} (call store.clear() before running the UNet outside a training step)")
        attention_mask = attn.prepare_attention_mask(attention_mask, encoder_hidden_states.shape[1], batch_size)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, attention_mask)           # [B*h, S, L]
        heads = probs.shape[0] // batch_size
        per_char = torch.bmm(probs, weights.to(probs.dtype).repeat_interleave(heads, dim=0))  # [B*h, S, M]
        if self.store.recording:
            self.store.maps.append(per_char.view(batch_size, heads, *per_char.shape[1:]))
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def install_processors(unet, layer_prefixes: list[str], store: AttentionStore) -> list[str]:
    """Put a CharacterAttnProcessor on every cross-attention (`attn2`) under the given module-name
    prefixes (e.g. "down_blocks.1", "mid_block"); the rest keep their processors. Returns the names."""
    processors = dict(unet.attn_processors)
    chosen = []
    for name in processors:
        module = name[: -len(".processor")]
        if module.endswith("attn2") and any(module == p or module.startswith(p + ".") for p in layer_prefixes):
            processors[name] = CharacterAttnProcessor(store)
            chosen.append(module)
    unmatched = [p for p in layer_prefixes if not any(c == p or c.startswith(p + ".") for c in chosen)]
    if unmatched:
        raise ValueError(f"model.attention_layers: no cross-attention layer under {unmatched}; "
                         f"the UNet's are {sorted({n.rsplit('.attentions', 1)[0] for n in processors if 'attn2' in n})}")
    unet.set_attn_processor(processors)
    return chosen


def name_token_weights(token_char: torch.Tensor, num_chars: int) -> torch.Tensor:
    """[B,L] token -> character index (-1 none) => [B,L,M] averaging weights over each name's tokens."""
    onehot = F.one_hot((token_char + 1).clamp(min=0), num_chars + 1)[..., 1:].float()  # [B,L,M]
    return onehot / onehot.sum(dim=1, keepdim=True).clamp(min=1)


def attention_control_loss(maps: list[torch.Tensor], char_masks: torch.Tensor, char_valid: torch.Tensor,
                           per_frame: bool = False) -> torch.Tensor:
    """Eq. 2-3: mean attention outside the mask minus mean inside, averaged over layers and heads and
    either over the batch's valid characters (default; zero, with a graph, when none is valid) or, with
    `per_frame` (the released code, models/model.py get_reg_loss_layer), over each frame's own valid
    characters and then over frames, a frame without one counting 0; its 1e-5 guards are kept there."""
    if not maps:
        raise ValueError("attention_control_loss: no attention maps were recorded")
    valid = char_valid.float()                                                # [B,M]
    eps = 1e-5 if per_frame else 0.0
    losses = []
    for attn in maps:                                                         # [B,h,S,M]
        side = math.isqrt(attn.shape[2])
        if side * side != attn.shape[2]:
            raise ValueError(f"attention map with {attn.shape[2]} pixels is not square")
        mask = F.interpolate(char_masks.float(), size=(side, side), mode="bilinear", antialias=True,
                             align_corners=False).flatten(2).transpose(1, 2)  # [B,S,M]
        mask = mask.unsqueeze(1).to(attn.dtype)                               # [B,1,S,M]
        inside = (attn * mask).sum(2) / (mask.sum(2) + eps).clamp(min=1e-6)   # [B,h,M]
        outside = (attn * (1 - mask)).sum(2) / ((1 - mask).sum(2) + eps).clamp(min=1e-6)
        per_char = (outside - inside).mean(1)                                 # [B,M]
        if per_frame:
            losses.append(((per_char * valid).sum(1) / (valid.sum(1) + eps)).mean())
        else:
            losses.append((per_char * valid).sum() / valid.sum().clamp(min=1))
    return torch.stack(losses).mean()


def union_mask(char_masks: torch.Tensor, size, antialias: bool = True) -> torch.Tensor:
    """[B,M,H,W] character masks -> [B,1,h,w]: their union resized to the latents (the mask-restricted
    loss). `antialias` false: the released code's plain bilinear resize of `(masks.sum(1) > 0)`."""
    if antialias:
        union = char_masks.amax(1, keepdim=True)
    else:
        union = (char_masks.sum(1, keepdim=True) > 0).to(char_masks.dtype)
    return F.interpolate(union, size=tuple(size), mode="bilinear", antialias=antialias, align_corners=False)
