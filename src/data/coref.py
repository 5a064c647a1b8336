"""Co-reference captions: the one implementation for every dataset (docs/story_format.md).

The rule is StoryGPT-V's (Sec. 3.2, data) taken from Story-LDM Alg. 1: when every character of frame k
also appears in frame k-1 (and frame k has at least one), the character names in frame k's caption
become pronouns, so the model must resolve "she" to "Ada" from the story context. Frame 0 is never
rewritten. Deterministic: pure string rules, no randomness.

How a caption is rewritten:
- a *mention* is one name of the frame, matched case-insensitively on word boundaries; multi-word names
  match with any spacing and an optional period ("mr slate" matches "Mr. Slate"); a trailing 's (or a
  bare ' after a name ending in s) marks a possessive;
- mentions joined only by commas / "and" / "&" form one *phrase* ("Ada, Bob and Cleo" -> one "they");
- a phrase becomes one pronoun: he / she / they for one character by gender (neutral -> they), they for
  several; possessive phrases become his / her / their;
- case: the first phrase of a sentence, or one right after a clause joiner ("and", "while", "," ...),
  is a subject (he/she/they); a phrase after a preposition, or later in the sentence after a verb, is
  an object (him/her/them). "Fred hugged Wilma." -> "He hugged her.";
- a pronoun at the start of a sentence is capitalised ("They"), elsewhere lower case.
"""

from __future__ import annotations

import re

SUBJECT = {"female": "she", "male": "he", "neutral": "they"}
OBJECT = {"female": "her", "male": "him", "neutral": "them"}
POSSESSIVE = {"female": "her", "male": "his", "neutral": "their"}
PLURAL = {"subject": "they", "object": "them", "possessive": "their"}

# Words after which a name is the object of a preposition ("talked to Fred" -> "talked to him").
PREPOSITIONS = frozenset(
    "to at with for from by behind near beside besides toward towards about of on onto into in inside "
    "past around like than after before under over between among against without beyond above below "
    "through across along upon within alongside".split()
)
# Words after which a new clause starts, so the next name is again a subject ("... and Bob ran").
CLAUSE_JOINERS = frozenset("and but while as when then so because until or where whereas since".split())

_JOIN = re.compile(r"\s*(?:,\s*and|,|and|&)\s*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?;:]")


def _name_pattern(name: str) -> str:
    words = name.split()
    if not words:
        raise ValueError(f"character name {name!r} is empty")
    # "mr slate" also matches "Mr. Slate" / "mr  slate"; an optional period after every word but the last
    body = r"\.?\s+".join(re.escape(w) for w in words)
    possessive = r"['’]s\b" + (r"|['’](?!\w)" if words[-1].lower().endswith("s") else "")
    return rf"(?<![\w'’])(?P<name>{body})(?P<poss>{possessive})?(?![\w])"


def _find_mentions(caption: str, names: list[str]) -> list[tuple[int, int, str, bool]]:
    """(start, end, name, is_possessive) of every name mention, left to right, longest name first."""
    found: list[tuple[int, int, str, bool]] = []
    taken = [False] * len(caption)
    for name in sorted(names, key=len, reverse=True):  # "mr slate" before a name "slate"
        for match in re.finditer(_name_pattern(name), caption, flags=re.IGNORECASE):
            start, end = match.span()
            if any(taken[start:end]):
                continue
            taken[start:end] = [True] * (end - start)
            found.append((start, end, name, match.group("poss") is not None))
    return sorted(found)


def _group_phrases(caption: str, mentions):
    """Merge mentions separated only by ',' / 'and' / '&' into phrases: [start, end, names, possessive]."""
    phrases: list[list] = []
    for start, end, name, possessive in mentions:
        previous = phrases[-1] if phrases else None
        if previous is not None and not previous[3] and _JOIN.fullmatch(caption[previous[1]:start]):
            previous[1] = end
            previous[2].append(name)
            previous[3] = possessive  # "Ada and Bob's" is their
        else:
            phrases.append([start, end, [name], possessive])
    return phrases


def _sentence_start(masked: str, index: int) -> int:
    ends = [m.end() for m in _SENTENCE_END.finditer(masked, 0, index)]
    return ends[-1] if ends else 0


def _grammatical_role(masked: str, start: int, first_in_sentence: bool) -> str:
    before = masked[_sentence_start(masked, start):start]
    words = re.findall(r"[\w'’]+", before.lower())
    previous = words[-1] if words else None
    if previous in PREPOSITIONS:
        return "object"
    if first_in_sentence or previous is None or previous in CLAUSE_JOINERS or before.rstrip().endswith(","):
        return "subject"
    return "object"  # after a verb: "Fred hugged Wilma"


def _is_sentence_initial(masked: str, start: int) -> bool:
    before = masked[_sentence_start(masked, start):start]
    return re.fullmatch(r"[\s\"'“‘(\[-]*", before) is not None


def _pronoun(names: list[str], role: str, genders: dict[str, str]) -> str:
    if len(set(names)) > 1:
        return PLURAL[role]
    gender = genders.get(names[0])
    if gender is None:
        raise KeyError(f"no gender for character '{names[0]}' (genders has {sorted(genders)})")
    table = {"subject": SUBJECT, "object": OBJECT, "possessive": POSSESSIVE}[role]
    if gender not in table:
        raise ValueError(f"character '{names[0]}' has gender {gender!r}; expected female, male or neutral")
    return table[gender]


def corefer_caption(caption: str, names: list[str], previous_names: list[str] | None,
                    genders: dict[str, str]) -> str:
    """Caption of a frame with characters `names`, whose previous frame had `previous_names`.

    Returns the caption unchanged when the frame has no character, when `previous_names` is None (the
    first frame) or when some character of the frame is new; else with the names replaced by pronouns.
    """
    if not names or previous_names is None or not set(names) <= set(previous_names):
        return caption
    mentions = _find_mentions(caption, list(dict.fromkeys(names)))
    # Sentence and word analysis runs on a copy with the mentions blanked out, so that the period of
    # "Mr. Slate" is not read as the end of a sentence.
    masked = caption
    for start, end, _, _ in mentions:
        masked = masked[:start] + "N" * (end - start) + masked[end:]
    pieces: list[str] = []
    cursor = 0
    sentences_seen: set[int] = set()
    for start, end, phrase_names, possessive in _group_phrases(caption, mentions):
        sentence = _sentence_start(masked, start)
        first_in_sentence = sentence not in sentences_seen
        sentences_seen.add(sentence)
        role = "possessive" if possessive else _grammatical_role(masked, start, first_in_sentence)
        pronoun = _pronoun(phrase_names, role, genders)
        if _is_sentence_initial(masked, start):
            pronoun = pronoun[0].upper() + pronoun[1:]
        pieces += [caption[cursor:start], pronoun]
        cursor = end
    pieces.append(caption[cursor:])
    return "".join(pieces)


def corefer_story(captions: list[str], characters: list[list[str]], genders: dict[str, str]) -> list[str]:
    """Co-reference captions of a whole story (frame 0 unchanged, frame k judged against frame k-1)."""
    if len(captions) != len(characters):
        raise ValueError(f"corefer_story: {len(captions)} captions but {len(characters)} character lists")
    return [
        corefer_caption(caption, characters[k], characters[k - 1] if k > 0 else None, genders)
        for k, caption in enumerate(captions)
    ]
