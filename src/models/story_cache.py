"""KV-cache policies for long stories (SEED-Story §3.3 "multimodal attention sink"; docs/seed_story.md).

One transformers `DynamicCache` (transformers 5.x has no SinkCache: the cache is a list of layers
holding `keys` / `values` [B,H,L,Dh], keys stored *after* RoPE) plus, for every cached token, where it
came from (`Slot`: its beat, its kind, its index in the whole story stream). When the window holds more
than `window_images` images, the oldest beat in it is evicted from every layer; what stays of it
depends on the mode:

  dense            nothing is ever evicted
  window           the evicted beat goes whole
  sink             the story's first `first_tokens` tokens stay (StreamingLLM's attention sink)
  multimodal_sink  the first tokens, and of each evicted beat its tokens at stream indices
                   [BOI-4, BOI+8) (4 text tokens, <img>, the first 7 image tokens) and [EOI-8, EOI+4)
                   (the last 8 image tokens, </img>; the 3 tokens after </img> belong to the next beat,
                   which is still in the window): the release's `img_head_tail` ranges, docs/seed_story.md.
                   `sink_images` bounds how many evicted images keep theirs (the most recently evicted;
                   older fragments go, the first tokens stay): the release keeps every one, so its cache
                   grows by about 24 tokens per evicted beat and, in a long enough story, outgrows the
                   sequence length stage 2 trained on (docs/seed_story_implementation.md, "Context modes")

Positions: the cache always holds positions 0..n-1 in order (StreamingLLM's "positions within the
cache"). Evicting re-rotates every kept key from its old position p to its new one p': RoPE rotations
compose, R(p') = R(p'-p) R(p), so rotating a cached (post-RoPE) key by p'-p gives exactly the key it
would have had at p'. The next token then takes position n. So positions never exceed what the cache
holds, however long the story (the release cached post-RoPE keys and never remapped them; docs/seed_story.md).
The rotation assumes Llama's RoPE layout (`rotate_half`, one inv_freq per pair, no position-dependent
frequencies); attention scaling (llama3 / yarn `attention_scaling`) commutes with it.

Shapes: B batch (1), H kv heads, L cached tokens, Dh head width.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from transformers import DynamicCache

CONTEXT_MODES = ("dense", "window", "sink", "multimodal_sink")
KINDS = ("text", "boi", "img", "eoi")
STATIC_ROPE = ("default", "linear", "llama3")


@dataclass
class SinkSettings:
    window_images: int = 8        # released: 8 (the paper says the window equals the training length, 10)
    first_tokens: int = 4         # released and StreamingLLM: 4
    before_boi: int = 4           # the release's [BOI-4, BOI+8) and [EOI-8, EOI+4)
    after_boi: int = 8
    before_eoi: int = 8
    after_eoi: int = 4
    sink_images: Optional[int] = 1      # multimodal_sink: evicted images that keep their head and tail, the
                                        # most recent (None: every one, as released; 1: chosen on toy val,
                                        # docs/seed_story_implementation.md "Context modes")


@dataclass(frozen=True)
class Slot:
    beat: int
    kind: str     # text (bos and separator included) | boi | img | eoi
    index: int    # position in the whole story stream, never changes


def rotate_keys(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Keys [B,H,L,Dh] already rotated to their positions p -> rotated to p + delta [L] (Llama's
    rotate_half layout). Computed in float32, returned in the keys' dtype."""
    from transformers.models.llama.modeling_llama import rotate_half

    freqs = delta.to(torch.float32)[:, None] * inv_freq.to(torch.float32)[None, :]     # [L, Dh/2]
    angles = torch.cat([freqs, freqs], dim=-1)                                          # [L, Dh]
    k = keys.to(torch.float32)
    return (k * angles.cos() + rotate_half(k) * angles.sin()).to(keys.dtype)


def rope_inv_freq(lm) -> torch.Tensor:
    """The LM's RoPE inverse frequencies; an LM without a static Llama-style RoPE is an error."""
    for name, module in lm.named_modules():
        if hasattr(module, "inv_freq") and name.endswith("rotary_emb"):
            kind = getattr(module, "rope_type", "default")
            if kind not in STATIC_ROPE:
                raise ValueError(f"rope type '{kind}': the sink's key re-rotation supports {', '.join(STATIC_ROPE)}")
            return module.inv_freq
    raise ValueError("the LLM has no rotary embedding (rotary_emb.inv_freq): the sink modes need RoPE")


@dataclass
class StoryKVCache:
    mode: str
    settings: SinkSettings
    inv_freq: torch.Tensor
    cache: DynamicCache = field(default_factory=DynamicCache)
    slots: list[Slot] = field(default_factory=list)
    next_index: int = 0
    evicted: list[int] = field(default_factory=list)   # evicted beats, oldest first
    fragments: list[int] = field(default_factory=list)  # evicted beats whose head and tail are cached, oldest first
    peak_tokens: int = 0
    track_only: bool = False   # slots only, no tensors: what a cache would hold (kept_stream)

    def __post_init__(self):
        if self.mode not in CONTEXT_MODES:
            raise ValueError(f"context mode '{self.mode}' is not one of {', '.join(CONTEXT_MODES)}")
        if self.settings.window_images < 1:
            raise ValueError("sink.window_images must be at least 1")
        if self.settings.sink_images is not None and self.settings.sink_images < 0:
            raise ValueError(f"sink.sink_images must be at least 0 (or null: every evicted image), "
                             f"got {self.settings.sink_images}")

    def __len__(self) -> int:
        return len(self.slots)

    def position_ids(self, count: int, device) -> torch.Tensor:
        """[1,count]: the positions the next `count` tokens take (right after the cache)."""
        return torch.arange(len(self), len(self) + count, device=device)[None]

    def appended(self, beat, kinds: list[str]) -> None:
        """Record the tokens a forward just appended to `cache`, in order; `beat` one beat for all of them
        or a list, one per token."""
        if not self.track_only and self.cache.get_seq_length() != len(self.slots) + len(kinds):
            raise RuntimeError(f"cache holds {self.cache.get_seq_length()} tokens, slots say {len(self.slots) + len(kinds)}")
        beats = [beat] * len(kinds) if isinstance(beat, int) else beat
        for beat_of, kind in zip(beats, kinds, strict=True):
            self.slots.append(Slot(beat_of, kind, self.next_index))
            self.next_index += 1
        self.peak_tokens = max(self.peak_tokens, len(self.slots))

    def crop(self, count: int) -> None:
        """Forget the last `count` tokens (a target image's query block, replaced by its features)."""
        self.cache.crop(-count)
        del self.slots[len(self.slots) - count:]
        self.next_index -= count

    def window_beats(self) -> list[int]:
        """Beats with a complete image (their </img> cached) that are not evicted, oldest first."""
        return sorted({s.beat for s in self.slots if s.kind == "eoi" and s.beat not in self.evicted})

    def kept_of(self, beat: int) -> list[int]:
        """Rows (cache indices) of `beat`'s tokens that stay when it is evicted, under this mode."""
        s, rows = self.settings, [i for i, slot in enumerate(self.slots) if slot.beat == beat]
        if self.mode in ("dense", "window"):
            return []
        ranges = [(0, s.first_tokens)]
        if self.mode == "multimodal_sink":
            boi = next(self.slots[i].index for i in rows if self.slots[i].kind == "boi")
            eoi = next(self.slots[i].index for i in rows if self.slots[i].kind == "eoi")
            ranges += [(boi - s.before_boi, boi + s.after_boi), (eoi - s.before_eoi, eoi + s.after_eoi)]
        return [i for i in rows if any(lo <= self.slots[i].index < hi for lo, hi in ranges)]

    def evict_if_full(self) -> list[int]:
        """While the window holds more than `window_images` images, evict its oldest beat (keeping what
        its mode keeps of it); then, in the multimodal sink, drop the head and tail of the oldest evicted
        images beyond `sink_images`. Returns the evicted beats. Dense never evicts."""
        done = []
        while self.mode != "dense" and len(self.window_beats()) > self.settings.window_images:
            beat = self.window_beats()[0]
            kept = set(self.kept_of(beat))
            self.evicted.append(beat)
            done.append(beat)
            dropped = set()  # evicted beats whose head and tail go now (sink_images reached)
            if self.mode == "multimodal_sink":
                self.fragments.append(beat)
                while self.settings.sink_images is not None and len(self.fragments) > self.settings.sink_images:
                    dropped.add(self.fragments.pop(0))
            self.keep([i for i, slot in enumerate(self.slots)
                       if (slot.beat != beat or i in kept)
                       and (slot.beat not in dropped or slot.index < self.settings.first_tokens)])
        return done

    def keep(self, rows: list[int]) -> None:
        """Keep cache rows `rows` (ascending) in every layer, re-rotated to positions 0..len(rows)-1."""
        index = torch.tensor(rows, dtype=torch.long)
        delta = torch.arange(len(rows)) - index  # new position - old position (old = its row)
        for layer in self.cache.layers:
            if not getattr(layer, "is_initialized", False):
                continue
            where = index.to(layer.keys.device)
            if self.inv_freq.numel() * 2 != layer.keys.shape[-1]:
                raise ValueError(f"RoPE covers {self.inv_freq.numel() * 2} of {layer.keys.shape[-1]} key dims: "
                                 f"partial rotary embeddings are not supported by the sink")
            layer.keys = rotate_keys(layer.keys.index_select(-2, where), delta.to(where.device),
                                     self.inv_freq.to(where.device))
            layer.values = layer.values.index_select(-2, where)
        self.slots = [self.slots[i] for i in rows]

    def kv_bytes(self) -> int:
        """Bytes the cached keys and values take now."""
        return sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in self.cache.layers
                   if getattr(layer, "is_initialized", False))


def kept_stream(beat_kinds: list[list[str]], mode: str, settings: SinkSettings) -> tuple[list[Slot], list[int]]:
    """What a `mode` cache holds when generation starts the beat after these: beats 0..n-1 (their token
    kinds, `beat_kinds`) fed whole in order, evicted as generation evicts them (before each beat).
    Returns the kept slots (their positions are 0..len-1) and the evicted beats. Stage 2's sink-shaped
    samples are built from it (src/data/story_sequence.py, sink_sequence), so a sample holds the tokens
    and positions generation's cache holds."""
    cache = StoryKVCache(mode, settings, torch.ones(1), track_only=True)
    for beat, kinds in enumerate(beat_kinds):
        cache.evict_if_full()
        cache.appended(beat, kinds)
    cache.evict_if_full()
    return cache.slots, cache.evicted
