"""Stories built from clip ids, as FlintstonesSV and StoryGPT-V's PororoSV ship them.

A split file lists clip ids; a following cache maps a clip id to the ids of the next clips; a story is
`[id] + following[id]`, cut to the dataset's `frames_per_story` (StoryGPT-V's 4-frame stories are the
first 4 of the 5-frame ones). A split id with no following entry, or a story with a clip that has no
annotation, is a listed skip naming the file and the id.
"""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path
from typing import Iterator

from src.data.stories import SPLITS
from src.data.convert.common import ConversionError, FrameSpec, NameMatcher, Skip, SourceError, StorySpec, safe_name
from src.data.convert.runner import Source


def load_json(path: Path):
    if not path.is_file():
        raise ConversionError(f"{path}: missing (see data/README.md for what each layout needs)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path}: not valid JSON ({err})") from None


def load_pickle(path: Path):
    if not path.is_file():
        raise ConversionError(f"{path}: missing (see data/README.md for what each layout needs)")
    try:
        with path.open("rb") as handle:
            return pickle.load(handle)
    except Exception as err:  # unpickling raises many types for a truncated file
        raise ConversionError(f"{path}: truncated or corrupt pickle ({type(err).__name__}: {err})") from None


def load_splits(path: Path) -> dict[str, list[str]]:
    splits = load_json(path)
    if not isinstance(splits, dict):
        raise ConversionError(f"{path}: expected an object with keys {list(SPLITS)}")
    for split in SPLITS:
        if not isinstance(splits.get(split), list):
            raise ConversionError(f"{path}: key '{split}' missing or not a list of clip ids")
    return {split: [str(i) for i in splits[split]] for split in SPLITS}


class ClipStorySource(Source):
    """Subclasses set `split_ids`, `followings`, `following_file` and implement `frame(clip_id)`."""

    split_file = "?"
    following_file = "?"

    def __init__(self, source_dir, facts, options):
        super().__init__(source_dir, facts, options)
        self.matcher = NameMatcher(facts["characters"], facts.get("aliases"))
        self.frames_per_story = int(facts["frames_per_story"])
        self.ignored = Counter()  # annotation labels that name no character of the dataset
        self.split_ids: dict[str, list[str]] = {}
        self.followings: dict = {}

    def count(self) -> int:
        return sum(len(ids) for ids in self.split_ids.values())

    def frame(self, clip_id: str) -> FrameSpec:
        """FrameSpec of one clip; raises SourceError naming the file when its annotation is unusable."""
        raise NotImplementedError

    def stories(self) -> Iterator[StorySpec | Skip]:
        for split in SPLITS:
            for story_id in self.split_ids[split]:
                following = self.followings.get(story_id)
                if following is None:
                    yield Skip(split, story_id, str(self.source_dir / self.following_file),
                               "no following entry: this id starts no story")
                    continue
                clip_ids = [story_id] + [str(c) for c in following]
                if len(clip_ids) < self.frames_per_story:
                    yield Skip(split, story_id, str(self.source_dir / self.following_file),
                               f"story has {len(clip_ids)} clips, frames_per_story is {self.frames_per_story}")
                    continue
                try:
                    frames = [self.frame(c) for c in clip_ids[:self.frames_per_story]]
                except SourceError as err:
                    yield Skip(split, story_id, err.file, f"{err.reason} (clip '{err.item_id}')")
                    continue
                extra = {} if safe_name(story_id) == story_id else {"source_id": story_id}
                yield StorySpec(split, safe_name(story_id), frames, extra)
        if self.ignored:
            listed = ", ".join(f"'{w}' x{n}" for w, n in self.ignored.most_common(10))
            self.notes.append(f"annotation labels naming no character of the dataset (not used): {listed}")
