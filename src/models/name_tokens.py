"""Where a caption names a character, in tokenizer positions (StoryGPT-V §3.1, FastComposer's
"image token" positions).

Names are matched case- and punctuation-insensitively on word boundaries, longest name first, so a
multi-word name ("mr slate") is found before a shorter one inside it ("slate" as an alias). Every BPE
piece of a matched name is marked, and every occurrence of it.

Token positions come from tokenizing the caption's prefix before the name and the prefix through the
name: CLIP's pre-tokenizer splits on words and punctuation, so a prefix that ends on a word boundary
tokenizes to exactly the first tokens of the whole caption. This works for the slow and the fast
tokenizer alike (no offset mapping needed).
"""
from __future__ import annotations

import re
from typing import Iterable, Optional


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def name_patterns(names: Iterable[str], aliases: Optional[dict] = None) -> list[tuple[re.Pattern, str]]:
    """(pattern, canonical name) pairs, longest spelling first. Whitespace and punctuation between the
    words of a name may vary ("Mr. Slate", "mr  slate")."""
    spellings = {_normalise(n): n for n in names}
    for alias, target in (aliases or {}).items():
        if target not in spellings.values():
            raise ValueError(f"alias '{alias}' points to '{target}', which is not a character name")
        spellings.setdefault(_normalise(alias), target)
    patterns = []
    for spelling in sorted(spellings, key=len, reverse=True):
        if not spelling:
            continue
        words = [re.escape(w) for w in spelling.split(" ")]
        patterns.append((re.compile(r"(?<![a-z0-9])" + r"[^a-z0-9]+".join(words) + r"(?![a-z0-9])",
                                    re.IGNORECASE), spellings[spelling]))
    return patterns


def find_names(caption: str, patterns: list[tuple[re.Pattern, str]]) -> list[tuple[int, int, str]]:
    """Character spans (start, end, canonical name) in caption order; overlapping matches go to the
    longest name."""
    taken = [False] * len(caption)
    spans = []
    for pattern, name in patterns:
        for m in pattern.finditer(caption):
            if not any(taken[m.start():m.end()]):
                spans.append((m.start(), m.end(), name))
                for i in range(m.start(), m.end()):
                    taken[i] = True
    return sorted(spans)


def _num_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def name_token_positions(tokenizer, caption: str, patterns, max_length: int) -> list[tuple[str, list[int]]]:
    """[(canonical name, token positions)] in caption order. Positions index the padded input ids of
    `tokenizer(caption, padding="max_length")` (position 0 is the start token); pieces cut by truncation
    are dropped, and a name with no piece left is dropped."""
    found = []
    for start, end, name in find_names(caption, patterns):
        first = 1 + _num_tokens(tokenizer, caption[:start])
        last = 1 + _num_tokens(tokenizer, caption[:end])
        positions = [p for p in range(first, last) if p < max_length - 1]
        if positions:
            found.append((name, positions))
    return found


# ---- the released code's marking (model.name_tokens: release) -------------------------------------
# StoryGPT-V's data code (models/data.py) inserts an `<|image|>` token after a name word, tokenizes, removes
# it again and marks the token before it: only the *last* BPE piece of the word, one mark (and one
# character slot) per occurrence. Words are the caption's space-separated pieces, punctuation included.

def _word_end_position(tokenizer, words: list[str], index: int) -> int:
    """Position (in the ids with the start token at 0) of the last BPE piece of `words[index]`."""
    return _num_tokens(tokenizer, " ".join(words[:index + 1]))


def release_sampling_marks(tokenizer, caption: str, names: Iterable[str], max_length: int) -> list[tuple[str, int]]:
    """[(canonical name, position)] one per occurrence, in caption order, as the release samples
    (models/data.py EvalStoryDataset.prepare_data_batch): a space-separated word is a name only when it is,
    lower-cased, one of the names ("Fred" yes; "Fred." and "Fred's" no; a two-word name never). Marks
    at or beyond `max_length` are cut, as the release truncates its mask."""
    by_lower = {name.lower(): name for name in names}
    words = caption.split(" ")
    marks = []
    for index, word in enumerate(words):
        if word.lower() in by_lower:
            position = _word_end_position(tokenizer, words, index)
            if position < max_length:
                marks.append((by_lower[word.lower()], position))
    return marks


def _bare(word: str) -> str:
    return re.sub(r"^[^a-z0-9]+|[^a-z0-9]+$", "", word.lower())


def name_word_span(caption: str, name: str) -> Optional[tuple[int, int]]:
    """(start, end) word indices of the first run of space-separated words that spell `name`, each word
    compared lower-cased without leading / trailing punctuation ("Fred." is "fred"; "Fred's" is not)."""
    words = [_bare(w) for w in caption.split(" ")]
    target = name.lower().split()
    for start in range(len(words) - len(target) + 1):
        if words[start:start + len(target)] == target:
            return start, start + len(target)
    return None


def release_training_marks(tokenizer, caption: str, characters: list[str], max_length: int,
                           max_characters: int) -> list[tuple[int, int]]:
    """[(slot, position)]: how the release's training data marks a frame's annotated characters
    (models/data.py ImageDataset._tokenize_and_mask_noun_phrases_ends): each character's segment ends at
    its name's last word, and the token marked is the last BPE piece of that space-separated word,
    punctuation attached to it included ("Fred." marks "."). The slot is the character's index in the
    frame's list. With more than `max_characters` the release keeps a random subset; here the first ones
    in caption order."""
    words = caption.split(" ")
    found = sorted((span[1], slot) for slot, name in enumerate(characters)
                   if (span := name_word_span(caption, name)) is not None)
    marks = []
    for end, slot in found[:max_characters]:
        position = _word_end_position(tokenizer, words, end - 1)
        if position < max_length:
            marks.append((slot, position))
    return marks


def release_input_ids(tokenizer, caption: str, max_length: int) -> list[int]:
    """The ids the release encodes for its fused embedding: the caption with start and end tokens, cut
    at `max_length` (a caption that long loses its end token, unlike the tokenizer's own truncation) and
    padded with the pad token."""
    ids = tokenizer(caption).input_ids[:max_length]
    return ids + [tokenizer.pad_token_id] * (max_length - len(ids))
