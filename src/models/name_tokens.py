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
