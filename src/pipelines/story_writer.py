"""The writing half of SEED-Story's generation (SEED-Story §3.3; docs/seed_story.md): `StoryWriter` feeds
the stage-2 MLLM a story beat by beat through a KV cache and decodes each next beat's text and regressed
image features; src/pipelines/seed_story.py's `SeedStoryPipeline` draws them.

The context is a KV cache (src/models/story_cache.py): every token is computed once, and the
`window` / `sink` / `multimodal_sink` modes evict old beats from the cache instead of re-filling the
prompt each beat (the release re-fills it, and computes its sink only to discard it; docs/seed_story.md).

A beat in the cache is laid out as stage 2 trained it (src/data/story_sequence.py):
  [INST] text <img> [K input features] </img>
A target image is made in two forwards at the same positions, as the every-beat training pass does:
`<img>` and the K raw image tokens (the queries; forced, never sampled) -> their hidden states -> the
output resampler -> regressed features [Q,E]; then the query block is cropped from the cache and the
input resampler's tokens of those regressed features plus `</img>` take its place, so later beats read
the image as context exactly as in training (the release also feeds back the regressed features, not
a re-encoding of the drawn frame).

Decoding (story mode): sampled (temperature and top-p, or greedy at temperature 0) until the MLLM emits
`<img>`, then its image. After `</img>` the model chooses between the separator `[INST]` (then fed whole)
and `</s>` (the story ends); image tokens, `</img>` and `</s>` are banned inside a beat's text, and
`<img>` is forced after `max_text_tokens`. Decode policy "released" decodes as the release instead
(greedy over the whole vocabulary, image tokens and `</img>` at logit 0.0). Text pieces are tokenized
where they sit, as the release tokenizes its whole prompt string: the first caption at the start, later
ones right after `</img>` (LLMWithImageTokens.text_ids_in_context).

Shapes: K image tokens, Q feature tokens, E feature width, D LLM width.
  features [1,Q,E] -> input tokens [1,K,D]; hidden at the query block [1,K,D] -> regressed [1,Q,E]
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch

from src.models.story_cache import SinkSettings, StoryKVCache, rope_inv_freq
from src.models.story_mllm import BOI, EOI

# How a beat's text is decoded in story mode: "constrained" (ours: after </img> only the separator or </s>,
# image tokens and </s> banned inside a beat's text, temperature / top-p sampling) or "released" (the
# release's ContinuousLVLM.generate: greedy over the whole vocabulary, the image tokens and </img> given
# logit 0.0 outside an image by generation.py:AutoImageTokenGenerationProcessor; docs/fidelity.md).
DECODE_POLICIES = ("constrained", "released")
# The release's dense context, for reference timings (bench/story_context.py): before every beat the
# whole story so far is fed again, in one forward, into an empty cache (the release calls generate with
# past_key_values=None each beat, docs/seed_story.md). Same attention as `dense`, O(story) work per beat.
REFILL = "dense_refill"


@dataclass
class DecodeSettings:
    temperature: float = 0.7      # the values the release passes (and ignores: it decodes greedily)
    top_p: float = 0.5
    max_text_tokens: int = 64     # per beat; reached without <img>, <img> is forced (counted in the stats)
    seed: int = 0
    policy: str = "constrained"   # constrained | released (DECODE_POLICIES)


@dataclass
class Beat:
    text: str
    features: torch.Tensor                  # [Q,E] regressed (beat 0: the given frame's features)
    token_ids: list[int] = field(default_factory=list)
    index: int = 0                          # the beat's place in the story (0: the given opening)


def pick_token(logits: torch.Tensor, decode: DecodeSettings, generator: Optional[torch.Generator]) -> int:
    """logits [V] (banned ids already -inf) -> a token id: greedy at temperature 0, else temperature
    then top-p (transformers' own warpers) then a draw from `generator`."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    if decode.temperature <= 0:
        return int(logits.argmax())
    scores = TemperatureLogitsWarper(decode.temperature)(None, logits[None].float())
    if decode.top_p < 1.0:
        scores = TopPLogitsWarper(decode.top_p)(None, scores)
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs[0].cpu(), 1, generator=generator))


class StoryWriter:
    """The MLLM side of generation: `mllm` a StoryMLLM, `special` its SpecialIds (story_sft's)."""

    def __init__(self, mllm, special, context: str, sink: SinkSettings, decode: DecodeSettings,
                 separator: str = "[INST]", device=None):
        if decode.policy not in DECODE_POLICIES:
            raise ValueError(f"decode policy '{decode.policy}' is not one of {', '.join(DECODE_POLICIES)}")
        self.mllm, self.special, self.decode, self.separator = mllm, special, decode, separator
        self.refill = context == REFILL
        self.context, self.sink = ("dense" if self.refill else context), sink
        self.llm = mllm.llm
        self.inv_freq = rope_inv_freq(self.llm.lm)
        self.device = device or mllm.input_resampler.query.device  # the execution device when offloaded
        self.banned = torch.tensor([special.eoi, *special.img], device=self.device)
        self.cache: Optional[StoryKVCache] = None
        self.last_hidden: Optional[torch.Tensor] = None
        self.last_stats: dict = {}
        self.fed: list[tuple[torch.Tensor, int, list[str]]] = []  # refill: every block fed, in order

    # ---- feeding the cache ------------------------------------------------------------------------
    def _embed(self, ids: list[int]) -> torch.Tensor:
        return self.llm.embed_ids(torch.tensor(ids, device=self.device, dtype=torch.long))

    def _feed(self, embeds: torch.Tensor, beat: int, kinds: list[str]) -> torch.Tensor:
        """Append [L,D] embeddings to the cache; their hidden states [L,D]."""
        positions = self.cache.position_ids(len(kinds), self.device)
        hidden = self.llm.forward_cached(embeds[None], self.cache.cache, positions)[0]
        self.cache.appended(beat, kinds)
        self.last_hidden = hidden[-1]
        if self.refill:
            self.fed.append((embeds, beat, kinds))
        return hidden

    def _crop(self, count: int) -> None:
        """Forget the last `count` tokens fed (they all belong to the last block)."""
        self.cache.crop(count)
        if self.refill:
            embeds, beat, kinds = self.fed[-1]
            self.fed[-1] = (embeds[:-count], beat, kinds[:-count])

    def _refill(self) -> None:
        """The release's dense context (REFILL): an empty cache, the whole story so far fed again in one forward."""
        blocks, peak = self.fed, self.cache.peak_tokens
        self.cache = StoryKVCache("dense", self.sink, self.inv_freq)
        embeds = torch.cat([block for block, _, _ in blocks])
        beats = [beat for _, beat, kinds in blocks for _ in kinds]
        hidden = self.llm.forward_cached(embeds[None], self.cache.cache, self.cache.position_ids(len(beats), self.device))
        self.cache.appended(beats, [kind for _, _, kinds in blocks for kind in kinds])
        self.cache.peak_tokens = max(peak, self.cache.peak_tokens)
        self.last_hidden = hidden[0, -1]

    def _input_block(self, features: torch.Tensor) -> torch.Tensor:
        """Features [Q,E] -> the K input tokens [K,D] (the input resampler)."""
        tokens = self.mllm.input_resampler(features[None].to(self.mllm.input_resampler.query.dtype))[0]
        return tokens.to(self.llm.lm.get_input_embeddings().weight.dtype)

    def _image(self, prefix_ids: list[int], beat: int) -> torch.Tensor:
        """prefix ids (the beat's text not yet cached) + <img> + the K forced image tokens -> regressed
        features [Q,E]; then the query block is replaced by the features' input tokens + </img>."""
        s, k = self.special, len(self.special.img)
        ids = list(prefix_ids) + [s.boi, *s.img]
        kinds = ["text"] * len(prefix_ids) + ["boi"] + ["img"] * k
        hidden = self._feed(self._embed(ids), beat, kinds)
        regressed = self.mllm.regress(hidden[None, -k:], torch.ones(1, k, dtype=torch.bool, device=self.device))[0]
        self._crop(k)
        block = torch.cat([self._input_block(regressed), self._embed([s.eoi])])
        self._feed(block, beat, ["img"] * k + ["eoi"])
        return regressed

    # ---- a story ----------------------------------------------------------------------------------
    def start(self, caption: str, features: torch.Tensor) -> Beat:
        """Beat 0: <s> caption <img> [the given frame's features] </img>."""
        s = self.special
        self.cache = StoryKVCache(self.context, self.sink, self.inv_freq)
        self.fed = []
        text = ([s.bos] if s.bos is not None else []) + self.llm.text_ids_in_context(caption, after=BOI)
        block = torch.cat([self._embed(text + [s.boi]), self._input_block(features), self._embed([s.eoi])])
        self._feed(block, 0, ["text"] * len(text) + ["boi"] + ["img"] * len(s.img) + ["eoi"])
        return Beat(caption, features, text)

    def next_text(self, beat: int, generator) -> tuple[Optional[list[int]], str]:
        """The beat's tokens until <img>: (ids, all cached, "" or "max_text_tokens" when <img> was forced
        there), or (None, "</s>") when the story ends. After </img> the layout stage 2 trained on allows
        only the separator or </s>: one choice between the two, then the whole separator is fed; the text
        is then sampled with image tokens and </img> banned."""
        s = self.special
        logits = self.llm.logits_at(self.last_hidden[None])[0]
        allowed = torch.full_like(logits, float("-inf"))
        allowed[[s.separator[0], s.eos]] = logits[[s.separator[0], s.eos]]
        if pick_token(allowed, self.decode, generator) == s.eos:
            return None, "</s>"
        ids = list(s.separator)
        self._feed(self._embed(ids), beat, ["text"] * len(ids))
        while len(ids) - len(s.separator) < self.decode.max_text_tokens:
            logits = self.llm.logits_at(self.last_hidden[None])[0]
            logits[self.banned] = float("-inf")  # the release sets them to 0.0 (docs/seed_story.md); never sampled here
            logits[s.eos] = float("-inf")        # a beat's text ends with <img>; </s> only follows </img>
            token = pick_token(logits, self.decode, generator)
            if token == s.boi:
                return ids, ""
            ids.append(token)
            self._feed(self._embed([token]), beat, ["text"])
        return ids, "max_text_tokens"

    def next_text_released(self, beat: int) -> tuple[Optional[list[int]], str]:
        """The release's decoding of a beat (models_clm/models.py:ContinuousLVLM.generate, do_sample=False):
        greedy over the whole vocabulary, where outside an image the image tokens and `</img>` get logit
        0.0, not -inf (generation.py:AutoImageTokenGenerationProcessor); `<img>` starts the image (its
        forced chain is _image's). `</s>` ends the story, as an image-less output ends the release's
        loop; so does an image token or `</img>` winning at 0.0 outside an image (the release would then
        force an image without `<img>`). At max_text_tokens `<img>` is forced (the release goes on to
        500 new tokens)."""
        s = self.special
        ids: list[int] = []
        while len(ids) < self.decode.max_text_tokens:
            logits = self.llm.logits_at(self.last_hidden[None])[0].clone()
            logits[self.banned] = 0.0
            token = int(logits.argmax())
            if token == s.boi:
                return ids, ""
            if token == s.eos:
                return None, "</s>"
            if token in self.banned.tolist():
                return None, "image token outside an image"
            ids.append(token)
            self._feed(self._embed([token]), beat, ["text"])
        return ids, "max_text_tokens"

    @torch.no_grad()
    def beats(self, caption: str, features: torch.Tensor, beats: int,
              captions: Optional[list[str]] = None) -> Iterator[Beat]:
        """Up to `beats` beats (beat 0 given), each yielded as soon as it is written. `captions` given: vis
        mode (captions[1:] teacher-forced). At the end `last_stats` holds the stop reason, the LLM's
        seconds (time spent by the caller between beats is not counted), peak cached tokens and bytes."""
        generator = torch.Generator().manual_seed(self.decode.seed)
        start = time.perf_counter()
        away = 0.0  # seconds the caller held a yielded beat (drawing it, showing it)
        out = [self.start(caption, features)]
        peak_bytes, stop, evicted, forced = self.cache.kv_bytes(), "beats", [], 0
        beat_seconds = [round(time.perf_counter() - start, 5)]  # the LLM's seconds for each beat
        left = time.perf_counter()
        yield out[0]
        away += time.perf_counter() - left
        for beat in range(1, beats):
            began = time.perf_counter()
            if self.refill:
                self._refill()
            evicted += self.cache.evict_if_full()
            if captions is not None:
                prefix = self.llm.text_ids_in_context(self.separator + captions[beat], before=EOI, after=BOI)
                regressed = self._image(prefix, beat)
                out.append(Beat(captions[beat], regressed, prefix, beat))
            else:
                if self.decode.policy == "released":
                    ids, why = self.next_text_released(beat)
                else:
                    ids, why = self.next_text(beat, generator)
                if ids is None:
                    stop = why
                    break
                forced += why == "max_text_tokens"
                regressed = self._image([], beat)
                out.append(Beat(self.text_of(ids), regressed, ids, beat))
            peak_bytes = max(peak_bytes, self.cache.kv_bytes())
            beat_seconds.append(round(time.perf_counter() - began, 5))
            left = time.perf_counter()
            yield out[-1]
            away += time.perf_counter() - left
        seconds = time.perf_counter() - start - away
        self.last_stats = {"beats": len(out), "stop": stop, "llm_seconds": round(seconds, 4),
                           "seconds_per_beat": round(seconds / max(len(out) - 1, 1), 5),
                           "peak_cache_tokens": self.cache.peak_tokens, "peak_cache_bytes": peak_bytes,
                           "final_cache_tokens": len(self.cache), "evicted_beats": evicted,
                           "img_forced_at_max_text_tokens": forced, "beat_seconds": beat_seconds}

    def write(self, caption: str, features: torch.Tensor, beats: int,
              captions: Optional[list[str]] = None) -> tuple[list[Beat], dict]:
        """Every beat of `beats(...)` and the stats."""
        out = list(self.beats(caption, features, beats, captions))
        return out, self.last_stats

    def text_of(self, ids: list[int]) -> str:
        """A generated beat's text without its leading separator."""
        sep = list(self.special.separator)
        if ids[:len(sep)] == sep:
            ids = ids[len(sep):]
        return self.llm.tokenizer.decode(ids, skip_special_tokens=True).strip()
