"""The StoryGAN PororoSV release (as StoryDALL-E and ARLDM read it).

    descriptions.npy           {frame key: [caption, ...]}   (np.save of a dict; key = image path without .png)
    img_cache4.npy             [N] image paths (bytes), the first frame of story i
    following_cache4.npy       [N, 4] image paths of the next 4 frames
    labels.npy                 {frame key: multi-hot over the 9 characters}
    train_seen_unseen_ids.npy  (train, val, test) arrays of story indices into img_cache4
    <path>.png                 a vertical strip of n square frames of one clip

Choices: the frame of a strip is `frame_choice` (default the middle one); the caption is the first of
the clip's descriptions; the story is the first `frames_per_story` frames of the 5; the label vector's
order is LABEL_ORDER (override with --label-order), and the summary reports how often the names a
caption mentions are labelled present, so a wrong order shows. No boxes, masks or backgrounds.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np

from src.data.stories import SPLITS
from src.data.convert.common import (ConversionError, FrameSpec, NameMatcher, Skip, SourceError, StorySpec,
                                     read_image_file, safe_name, strip_frame)
from src.data.convert.runner import Source

# Order of the 9 entries of a labels.npy vector: the order StoryDALL-E and ARLDM list the characters in.
LABEL_ORDER = ["Pororo", "Loopy", "Eddy", "Harry", "Poby", "Tongtong", "Crong", "Rody", "Petty"]
FILES = ("descriptions.npy", "img_cache4.npy", "following_cache4.npy", "labels.npy", "train_seen_unseen_ids.npy")


def _load(path: Path, as_dict: bool = False):
    if not path.is_file():
        raise ConversionError(f"{path}: missing (see data/README.md for what each layout needs)")
    try:
        value = np.load(path, allow_pickle=True, encoding="latin1")
        return value.item() if as_dict else value
    except Exception as err:
        raise ConversionError(f"{path}: truncated or corrupt .npy ({type(err).__name__}: {err})") from None


def _text(value) -> str:
    return value.decode("latin1") if isinstance(value, (bytes, np.bytes_)) else str(value)


class StoryGANSource(Source):
    layout = "storygan"

    @staticmethod
    def detect(source_dir: Path) -> bool:
        return (source_dir / "img_cache4.npy").is_file() or (source_dir / "train_seen_unseen_ids.npy").is_file()

    def __init__(self, source_dir, facts, options):
        super().__init__(source_dir, facts, options)
        d = self.source_dir
        self.frame_choice = options["frame_choice"]
        self.frames_per_story = int(facts["frames_per_story"])
        self.matcher = NameMatcher(facts["characters"], facts.get("aliases"))
        order = options.get("label_order") or LABEL_ORDER
        self.label_order = [self.matcher.canonical(n) for n in order]
        if None in self.label_order:
            raise ConversionError(f"label order {order} names a character not in {facts['characters']}")
        self.descriptions = _load(d / "descriptions.npy", as_dict=True)
        self.images = _load(d / "img_cache4.npy")
        self.followings = _load(d / "following_cache4.npy")
        self.labels = _load(d / "labels.npy", as_dict=True)
        ids = _load(d / "train_seen_unseen_ids.npy")
        if len(ids) != 3:
            raise ConversionError(f"{d / 'train_seen_unseen_ids.npy'}: expected (train, val, test) id arrays, got {len(ids)}")
        self.split_ids = {split: sorted(int(i) for i in part) for split, part in zip(SPLITS, ids)}
        self.agreement = Counter()

    def describe(self) -> str:
        return f"StoryGAN PororoSV release ({self.layout}) at {self.source_dir}, frame_choice={self.frame_choice}"

    def count(self) -> int:
        return sum(len(v) for v in self.split_ids.values())

    def _frame(self, path: str) -> FrameSpec:
        key = path[:-4] if path.endswith(".png") else path
        captions = self.descriptions.get(key)
        if not captions:
            raise SourceError(self.source_dir / "descriptions.npy", key, "no description for this frame")
        vector = self.labels.get(key)
        if vector is None:
            raise SourceError(self.source_dir / "labels.npy", key, "no character label for this frame")
        vector = np.asarray(vector).ravel()
        if len(vector) != len(self.label_order):
            raise SourceError(self.source_dir / "labels.npy", key,
                              f"label vector has {len(vector)} entries, the label order {len(self.label_order)}")
        characters = [self.label_order[j] for j in np.flatnonzero(vector > 0.5)]
        caption = _text(captions[0]).replace("\n", " ").replace("\t", " ").strip()
        mentioned = self.matcher.in_text(caption)
        self.agreement["mentioned"] += len(mentioned)
        self.agreement["labelled"] += sum(n in characters for n in mentioned)
        file = self.source_dir / path
        return FrameSpec(key=key, caption=caption, image_path=f"images/{safe_name(key)}.png",
                         read_image=lambda: strip_frame(np.asarray(read_image_file(file, key)), file, key,
                                                        self.frame_choice),
                         characters=characters)

    def stories(self) -> Iterator[StorySpec | Skip]:
        for split in SPLITS:
            for index in self.split_ids[split]:
                if not 0 <= index < len(self.images) or index >= len(self.followings):
                    yield Skip(split, str(index), str(self.source_dir / "img_cache4.npy"),
                               f"story index out of range (img_cache4 has {len(self.images)} entries)")
                    continue
                paths = [_text(self.images[index])] + [_text(p) for p in self.followings[index]]
                story_key = paths[0][:-4] if paths[0].endswith(".png") else paths[0]
                if len(paths) < self.frames_per_story:
                    yield Skip(split, story_key, str(self.source_dir / "following_cache4.npy"),
                               f"story has {len(paths)} frames, frames_per_story is {self.frames_per_story}")
                    continue
                try:
                    frames = [self._frame(p) for p in paths[:self.frames_per_story]]
                except SourceError as err:
                    yield Skip(split, story_key, err.file, f"{err.reason} (frame '{err.item_id}')")
                    continue
                yield StorySpec(split, safe_name(story_key), frames, {"source_id": story_key})
        mentioned, labelled = self.agreement["mentioned"], self.agreement["labelled"]
        if mentioned:
            rate = labelled / mentioned
            self.notes.append(f"{rate:.0%} of the character names captions mention are labelled present in labels.npy"
                              + (" -- LOW: check --label-order" if rate < 0.5 else ""))
