"""Which character a stage-2 pronoun frame was drawn as: a diagnostic, not a resolver (docs/own_story.md,
"What stage 2 resolved").

StoryGPT-V's stage 2 (paper §3.2) was trained so that, reading "He looked around" after "Bob waited in
the city", its mapper's output lands near Char-LDM's fused conditioning of "Bob looked around": the
alignment target is the caption with the name restored (src/tasks/align.py). So the only honest
question to ask of a drawn pronoun frame is: of the captions the pronoun could stand for, whose Char-LDM
conditioning is the LLM's output nearest to? This module makes those candidate captions; the pipeline
measures the distances (src/pipelines/storygptv.py, `resolve_pronouns`).

Candidates: every character named in an earlier caption, and every group of two or more characters
named together in one earlier caption ("Ada and Bob" for "They"), in order of first mention. A candidate
caption replaces every pronoun of the caption with the candidate's name (possessives with "<name>'s").
It says which candidate the conditioning is closest to and by how much; it does not say the frame shows
that character (that is the classifier's job, eval/), nor that the LLM "understood" the pronoun.
"""
from __future__ import annotations

import re

PRONOUN = re.compile(r"\b(he|she|they|him|her|them|his|hers|their|theirs)\b", re.IGNORECASE)
POSSESSIVE = {"his", "hers", "their", "theirs"}


def pronouns_in(caption: str) -> list[str]:
    """The pronouns of a caption, lower-cased, in order."""
    return [m.group(0).lower() for m in PRONOUN.finditer(caption)]


def group_label(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def candidates(earlier_mentions: list[list[str]]) -> list[list[str]]:
    """The characters (and groups named together) a pronoun could stand for, from the names each earlier
    caption mentions: singles first in order of first mention, then the groups, each once."""
    singles = list(dict.fromkeys(name for names in earlier_mentions for name in names))
    groups = list(dict.fromkeys(tuple(names) for names in earlier_mentions if len(names) > 1))
    return [[name] for name in singles] + [list(group) for group in groups]


def replace_pronouns(caption: str, names: list[str]) -> str:
    """The caption with every pronoun replaced by the candidate ("They played" -> "Ada and Bob played")."""
    label = group_label(names)

    def swap(match: re.Match) -> str:
        return f"{label}'s" if match.group(0).lower() in POSSESSIVE else label
    return PRONOUN.sub(swap, caption)
