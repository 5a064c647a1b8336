"""Char-LDM's conditioning of a caption (StoryGPT-V §3.1): the frozen text encoder's states, and the same
states with every name token fused with its character's image embedding (src/models/fuse.py). Training
(src/tasks/char_ldm.py), drawing (src/pipelines/storygptv.py) and the stage-2 targets
(src/tools/align_targets.py) all condition through these functions.

Shapes: B captions, L=77 tokens, D text width (= image projection width), M character slots.
  captions -> text_states [B,L,D];  token_char [B,L] (slot of the character a token names, -1 none)
  text_states, char_embeds [B,M,D], token_char -> fused [B,L,D]
"""
from __future__ import annotations

import torch

from src.models.name_tokens import name_token_positions, release_input_ids, release_sampling_marks


def encode_captions(tokenizer, text_encoder, captions: list[str]) -> torch.Tensor:
    """Captions -> the text encoder's last hidden states [B,L,D], padded to the tokenizer's max length
    (as diffusers' StableDiffusionPipeline.encode_prompt does for SD 1.5)."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


def find_names(tokenizer, caption: str, patterns) -> list[tuple[str, list[int]]]:
    """[(character name, token positions)] in caption order (src/models/name_tokens.py)."""
    return name_token_positions(tokenizer, caption, patterns, tokenizer.model_max_length)


def token_slots(found: list, slot_of: dict, length: int, max_characters: int) -> torch.Tensor:
    """[L] long: the slot (slot_of[name]) each token of `find_names`' names gets, -1 elsewhere; names
    without a slot, or with a slot past `max_characters`, stay unfused."""
    token_char = torch.full((length,), -1, dtype=torch.long)
    for name, positions in found:
        slot = slot_of.get(name)
        if slot is not None and slot < max_characters:
            token_char[positions] = slot
    return token_char


def sampling_slots(tokenizer, caption: str, patterns, max_characters: int, name_tokens: str = "ours",
                   fuse_names: bool = True, names: tuple = ()) -> tuple[torch.Tensor, list[str]]:
    """([L] token -> slot, the character of each slot) for drawing `caption`. ours: one slot per named
    character in order of first mention (at most `max_characters`); release: one slot per marked
    occurrence of a `names` word, uncapped (the released models/data.py EvalStoryDataset,
    src/models/name_tokens.py release_sampling_marks); none when `fuse_names` is false (the release's
    PororoSV inference)."""
    length = tokenizer.model_max_length
    if not fuse_names:
        return torch.full((length,), -1, dtype=torch.long), []
    if name_tokens == "release":
        token_char = torch.full((length,), -1, dtype=torch.long)
        marks = release_sampling_marks(tokenizer, caption, names, length)
        for slot, (_, position) in enumerate(marks):
            token_char[position] = slot
        return token_char, [name for name, _ in marks]
    found = find_names(tokenizer, caption, patterns)
    order = list(dict.fromkeys(name for name, _ in found))[:max_characters]
    return token_slots(found, {n: j for j, n in enumerate(order)}, length, max_characters), order


def fuse_captions(tokenizer, text_encoder, fuse, text_states: torch.Tensor, captions: list[str], ref_embeds: dict,
                  slots_of, release_ids: bool = False, where: str = "",
                  hint: str = "") -> tuple[torch.Tensor, list[list[str]]]:
    """(fused states [B,L,D], the names fused in each caption). `slots_of(caption)` gives a caption's
    (token -> slot [L], the character of each slot) (`sampling_slots`); a character without a reference
    embedding is an error naming it (`where`: the source at fault, `hint`: how to fix it).
    `release_ids`: the name tokens are fused into the states of the release's own caption ids
    (release_input_ids: no end token past 76 tokens), not `text_states`."""
    token_char, embeds, fused_names = [], [], []
    for caption in captions:
        slots, names = slots_of(caption)
        missing = sorted({n for n in names if n not in ref_embeds})
        if missing:
            raise ValueError(f"{where}no reference image for {missing}, named in the caption {caption!r}{hint}")
        token_char.append(slots)
        embeds.append([ref_embeds[n] for n in names])
        fused_names.append(list(dict.fromkeys(names)))
    named_states = text_states
    if release_ids:
        length = tokenizer.model_max_length
        ids = torch.tensor([release_input_ids(tokenizer, c, length) for c in captions])
        named_states = text_encoder(ids.to(text_encoder.device))[0]
    slots = max(1, max(len(e) for e in embeds))
    char_embeds = text_states.new_zeros(len(captions), slots, text_states.shape[-1])
    for b, row in enumerate(embeds):
        for j, embed in enumerate(row):
            char_embeds[b, j] = embed
    return fuse(named_states, char_embeds, torch.stack(token_char).to(text_states.device)), fused_names
