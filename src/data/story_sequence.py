"""SEED-Story stage 2's interleaved story sequence, its masks and labels (docs/seed_story_implementation.md, "Stage 2: the MLLM").

A sample is beats first..last of a story; each beat is its text then its image block:

  <s> cap_first <img> [image] </img> [INST] cap_{first+1} <img> [image] </img> ... [INST] cap_last <img> [image] </img> </s>

An image is an *input* (its K positions are overwritten by the input resampler's output: `cmp`, the
release's ids_cmp_mask) or a *target* (its K positions hold the raw image-token embeddings and their
last-layer hidden states go to the output resampler: `gen`, the release's ids_gen_mask).

supervision "last" (the release): only the last beat is a target; its text, `<img>` and `</s>` are
supervised, everything else (context, image tokens, `</img>`) is masked. Plain causal attention.

supervision "every" (default): every beat after the first is a target, in one causal pass. A target
image that later beats read as context appears twice, at the same positions: first a query block of K
image tokens (gen), then the K input features (cmp). The query block is hidden from every other token
(the attention mask), so the later tokens see exactly the release's context layout, and each query block
sees exactly what the release's sample ending at that beat shows its target: the whole pass is the union
of the release's samples first..b for every b, sharing their computation. The last beat's image is a
plain target (nothing follows it but `</s>`).

An over-long sample is cut by whole beats from the front (`fit_sequence`); the caller counts the cuts.

A beat's text comes as token ids in each place the release's strings put it (BeatText): the release
tokenizes whole strings (`caption_0 <img>..</img>[INST]caption_1 <img>..</img>...` as one, the supervised
`[INST]caption <img>..</img>` as another), and a tokenizer splits a text differently at a string's start
than after a special token (Llama's Metaspace prefix "▁"), so the separator and the caption are one piece
of text, tokenized where they sit.

Shapes: L sequence length, K image tokens per image, N images.
  input_ids, targets, position_ids, hidden_group [L]; cmp_mask, gen_mask [L] bool;
  targets[i] = the token position i must predict (-100: none); hidden_group[i] >= 0: a hidden query block.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

IGNORE = -100
SUPERVISION = ("every", "last")


@dataclass(frozen=True)
class SpecialIds:
    bos: int | None
    eos: int
    boi: int                      # <img>
    eoi: int                      # </img>
    img: tuple[int, ...]          # <img_00000> .. <img_{K-1}>
    separator: tuple[int, ...]    # the beat separator ("[INST]") tokenized after `</img>` (generation feeds it)


@dataclass(frozen=True)
class BeatText:
    """A beat's text as token ids, in the three places a release sample puts it
    (story_telling.py:decode_long_story_data):
      opening    the caption alone at the start of the sample (its first beat, after `<s>`)
      continued  separator + caption right after the previous beat's `</img>` (a context beat; every
                 beat after the first in the every-beat pass and at generation)
      response   separator + caption at the start of the separately tokenized response (the supervised
                 last beat of `last` supervision)"""
    opening: tuple[int, ...]
    continued: tuple[int, ...]
    response: tuple[int, ...]


@dataclass
class StorySequence:
    input_ids: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    hidden_group: list[int] = field(default_factory=list)
    cmp_mask: list[bool] = field(default_factory=list)
    gen_mask: list[bool] = field(default_factory=list)
    input_beats: list[int] = field(default_factory=list)    # beat of each input image, in sequence order
    target_beats: list[int] = field(default_factory=list)   # beat of each target image, in sequence order
    input_tokens: list[tuple[int, ...]] = field(default_factory=list)  # per input image: which of its K tokens
                                                            # the sequence holds (all; fewer in a sink-shaped one)
    first: int = 0                                          # beats before it were cut

    def __len__(self) -> int:
        return len(self.input_ids)


class _Writer:
    def __init__(self):
        self.seq = StorySequence()
        self.prev = None   # the last position of the visible stream: it predicts the next visible token
        self.next_pos = 0

    def put(self, token: int, supervised: bool, cmp: bool = False, gen: bool = False) -> None:
        s = self.seq
        if supervised and self.prev is not None:
            s.targets[self.prev] = token
        self.prev = len(s.input_ids)
        s.input_ids.append(token)
        s.targets.append(IGNORE)
        s.position_ids.append(self.next_pos)
        s.hidden_group.append(-1)
        s.cmp_mask.append(cmp)
        s.gen_mask.append(gen)
        self.next_pos += 1

    def whole_beat(self, text: tuple[int, ...], beat: int, target: bool, last: bool, ids: SpecialIds) -> None:
        """A beat's text, `<img>`, its image and `</img>`: the last beat's image a plain target; a target
        before it (every-beat) a hidden query block, then the features later beats read; else an input."""
        for token in text:
            self.put(token, target)
        self.put(ids.boi, target)
        if target and not last:
            self.hidden_queries(ids.img, len(self.seq.target_beats))
            self.seq.target_beats.append(beat)
        if target and last:
            for token in ids.img:
                self.put(token, False, gen=True)
            self.seq.target_beats.append(beat)
        else:
            for token in ids.img:
                self.put(token, False, cmp=True)
            self.seq.input_beats.append(beat)
            self.seq.input_tokens.append(tuple(range(len(ids.img))))
        self.put(ids.eoi, False)

    def hidden_queries(self, ids: tuple[int, ...], group: int) -> None:
        """A query block at the positions the next K visible tokens will take, seen by no other token."""
        s = self.seq
        for j, token in enumerate(ids):
            s.input_ids.append(token)
            s.targets.append(IGNORE)
            s.position_ids.append(self.next_pos + j)
            s.hidden_group.append(group)
            s.cmp_mask.append(False)
            s.gen_mask.append(True)


def beat_tokens(text: BeatText, beat: int, first: int, last: int, supervision: str) -> tuple[int, ...]:
    """The ids of a beat's text where this sample puts it (BeatText)."""
    if beat == first:
        return text.opening
    return text.response if supervision == "last" and beat == last else text.continued


def build_sequence(captions: list[BeatText], first: int, last: int, ids: SpecialIds,
                   supervision: str = "every") -> StorySequence:
    """The sequence of beats first..last (inclusive) of a story whose captions are BeatTexts."""
    if supervision not in SUPERVISION:
        raise ValueError(f"supervision '{supervision}' is not one of {', '.join(SUPERVISION)}")
    if not 0 <= first < last < len(captions):
        raise ValueError(f"a sample needs a context beat and a target beat: beats {first}..{last} of {len(captions)}")
    w = _Writer()
    w.seq.first = first
    for b in range(first, last + 1):
        if b == first and ids.bos is not None:
            w.put(ids.bos, False)
        w.whole_beat(beat_tokens(captions[b], b, first, last, supervision), b,
                     b == last or (supervision == "every" and b > first), b == last, ids)
    w.put(ids.eos, True)
    return w.seq


def fit_sequence(captions: list[BeatText], last: int, ids: SpecialIds, supervision: str,
                 max_length: int, where: str = "story") -> StorySequence:
    """Beats 0..last, cut by whole beats from the front while longer than `max_length` (the first kept
    beat becomes the context). Two beats still too long is an error naming `where`."""
    first = 0
    while True:
        seq = build_sequence(captions, first, last, ids, supervision)
        if len(seq) <= max_length:
            return seq
        if last - first < 2:
            raise ValueError(f"{where}: beats {first}..{last} take {len(seq)} tokens, more than "
                             f"model.max_length={max_length} even with one context beat")
        first += 1


def context_stream(captions: list[BeatText], upto: int, ids: SpecialIds) -> list[tuple[int, str, int]]:
    """Beats 0..upto-1 as generation's cache receives them, one (beat, kind, token id) per token, kinds as
    src/models/story_cache.py names them: beat 0 `<s>` + its opening text, later beats the separator and
    caption after `</img>` (BeatText.continued), then `<img>`, the K image tokens, `</img>`."""
    stream = []
    for b in range(upto):
        text = ((ids.bos,) if ids.bos is not None else ()) + captions[b].opening if b == 0 else captions[b].continued
        stream += [(b, "text", t) for t in text] + [(b, "boi", ids.boi)]
        stream += [(b, "img", t) for t in ids.img] + [(b, "eoi", ids.eoi)]
    return stream


def sink_sequence(captions: list[BeatText], last: int, ids: SpecialIds, sink, supervision: str = "every") -> StorySequence:
    """A sink-shaped sample (ours; docs/seed_story_implementation.md, "Sink-shaped samples"): the context
    beat `last` is written in under the multimodal-sink cache `sink` (a SinkSettings), token for token and
    position for position. Beats 0..last-1 go through the cache's own eviction (story_cache.kept_stream);
    the kept tokens of the evicted beats (the first tokens, the head and tail of the last `sink_images`
    images: their image tokens a subset of the K, `input_tokens`) come first, at positions 0.., then the
    window's beats and `last` whole, as the every-beat pass writes context beats after the first (each a
    target under `every`; only `last` under `last`, its text placed as the release's response). With
    nothing evicted it is build_sequence(0..last)."""
    from src.models.story_cache import kept_stream

    if supervision not in SUPERVISION:
        raise ValueError(f"supervision '{supervision}' is not one of {', '.join(SUPERVISION)}")
    if not 0 < last < len(captions):
        raise ValueError(f"a sample needs a context beat and a target beat: beat {last} of {len(captions)}")
    stream = context_stream(captions, last, ids)
    kinds = [[kind for beat, kind, _ in stream if beat == b] for b in range(last)]
    slots, evicted = kept_stream(kinds, "multimodal_sink", sink)
    if not evicted:
        return build_sequence(captions, 0, last, ids, supervision)
    w = _Writer()
    w.seq.first = evicted[-1] + 1
    for beat in evicted:  # slots are in stream order, so beat by beat
        fragment = []     # the image tokens (0..K-1) kept of its image
        for slot in (slot for slot in slots if slot.beat == beat):
            _, kind, token = stream[slot.index]
            w.put(token, False, cmp=kind == "img")
            if kind == "img":
                fragment.append(ids.img.index(token))
        if fragment:
            w.seq.input_beats.append(beat)
            w.seq.input_tokens.append(tuple(fragment))
    for b in range(evicted[-1] + 1, last + 1):
        text = captions[b].response if supervision == "last" and b == last else captions[b].continued
        w.whole_beat(text, b, b == last or supervision == "every", b == last, ids)
    w.put(ids.eos, True)
    return w.seq


def attention_mask(hidden_group: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B,L] groups and validity -> [B,1,L,L] bool (True: query i may attend key j): causal, no padding
    keys, and a hidden query block is seen only by itself. Each position sees at least itself."""
    length = hidden_group.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
    key_group, query_group = hidden_group[:, None, :], hidden_group[:, :, None]
    allowed = causal[None] & valid[:, None, :] & ((key_group < 0) | (key_group == query_group))
    allowed |= torch.eye(length, dtype=torch.bool, device=valid.device)[None]
    return allowed[:, None]


def pad_batch(sequences: list[StorySequence], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors [B,L] of a list of sequences, plus the 4D attention mask."""
    length = max(len(s) for s in sequences)

    def stack(key: str, fill, dtype):
        return torch.tensor([getattr(s, key) + [fill] * (length - len(s)) for s in sequences], dtype=dtype)

    out = {"input_ids": stack("input_ids", pad_id, torch.long), "targets": stack("targets", IGNORE, torch.long),
           "position_ids": stack("position_ids", 0, torch.long), "hidden_group": stack("hidden_group", -1, torch.long),
           "cmp_mask": stack("cmp_mask", False, torch.bool), "gen_mask": stack("gen_mask", False, torch.bool)}
    out["valid"] = torch.tensor([[True] * len(s) + [False] * (length - len(s)) for s in sequences])
    out["attention_mask"] = attention_mask(out["hidden_group"], out["valid"])
    return out
