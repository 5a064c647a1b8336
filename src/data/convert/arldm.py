"""ARLDM's HDF5 files for FlintstonesSV / PororoSV (data/README.md; ARLDM ships the scripts that build them, not the files).

    <name>.h5
      train/ val/ test/            one group per split, story i at row i
        image0 .. image4           variable-length uint8: PNG bytes of a vertical strip of the clip's frames
        text                       the story's captions joined by '|'

ARLDM encoded the strips with OpenCV from RGB arrays, so the PNG holds the channels in B, G, R order
(it decodes them with OpenCV again, which swaps them back). A PIL decode therefore needs the swap:
`h5_channels='bgr'` (default) undoes it; use 'rgb' for a file written with correct colours.

Choices: the frame of a strip is `frame_choice` (default the middle one); a story is its first
`frames_per_story` frames; story ids are `{split}_{row:06d}` (the file has no clip ids). The file has no
character labels, so a frame's characters are the names its caption mentions (case/punctuation
insensitive, aliases from the data config) -- documented as caption-derived in the summary.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from src.data.stories import SPLITS
from src.data.convert.common import (ConversionError, FrameSpec, NameMatcher, Skip, SourceError, StorySpec,
                                     decode_image, strip_frame)
from src.data.convert.runner import Source


def find_h5(source: Path) -> Path:
    if source.is_file():
        return source
    found = sorted(p for p in source.glob("*") if p.suffix.lower() in (".h5", ".hdf5"))
    if len(found) != 1:
        raise ConversionError(f"{source}: expected exactly one .h5/.hdf5 file, found {[p.name for p in found]}")
    return found[0]


class ARLDMSource(Source):
    layout = "arldm"

    @staticmethod
    def detect(source_dir: Path) -> bool:
        try:
            find_h5(source_dir)
            return True
        except ConversionError:
            return False

    def __init__(self, source_dir, facts, options):
        super().__init__(source_dir, facts, options)
        self.h5_path = find_h5(self.source_dir)
        self.frame_choice = options["frame_choice"]
        self.swap_rb = options.get("h5_channels", "bgr") == "bgr"
        self.frames_per_story = int(facts["frames_per_story"])
        self.matcher = NameMatcher(facts["characters"], facts.get("aliases"))
        try:
            self.h5 = h5py.File(self.h5_path, "r")
        except OSError as err:
            raise ConversionError(f"{self.h5_path}: not a readable HDF5 file ({err})") from None
        self.image_keys: dict[str, list[str]] = {}
        for split in SPLITS:
            if split not in self.h5:
                self.notes.append(f"{self.h5_path}: no '{split}' group, so no {split} stories")
                continue
            group = self.h5[split]
            keys = sorted((k for k in group if re.fullmatch(r"image\d+", k)), key=lambda k: int(k[5:]))
            if "text" not in group or not keys:
                raise ConversionError(f"{self.h5_path}:/{split}: needs datasets 'text' and image0..imageN, has {list(group)}")
            if len(keys) < self.frames_per_story:
                raise ConversionError(f"{self.h5_path}:/{split}: {len(keys)} image datasets, frames_per_story is {self.frames_per_story}")
            self.image_keys[split] = keys[:self.frames_per_story]
        self.notes.append("characters per frame are the names each caption mentions (the HDF5 file has no labels)")

    def describe(self) -> str:
        return f"ARLDM HDF5 ({self.layout}) {self.h5_path}, frame_choice={self.frame_choice}"

    def count(self) -> int:
        return sum(len(self.h5[s]["text"]) for s in self.image_keys)

    def _read(self, split: str, key: str, row: int) -> np.ndarray:
        where, item = f"{self.h5_path}:/{split}/{key}", f"{split}_{row:06d}"
        try:
            data = np.asarray(self.h5[split][key][row], dtype=np.uint8).tobytes()
        except (OSError, ValueError, IndexError) as err:
            raise SourceError(where, item, f"unreadable row {row} ({err})") from None
        strip = np.asarray(decode_image(data, where, item))
        if self.swap_rb:
            strip = strip[..., ::-1]
        return strip_frame(strip, where, item, self.frame_choice)

    def stories(self) -> Iterator[StorySpec | Skip]:
        for split, keys in self.image_keys.items():
            texts = self.h5[split]["text"]
            for row in range(len(texts)):
                story_id = f"{split}_{row:06d}"
                raw = texts[row]
                captions = (raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)).split("|")
                if len(captions) < len(keys):
                    yield Skip(split, story_id, f"{self.h5_path}:/{split}/text",
                               f"{len(captions)} captions for {len(keys)} frames")
                    continue
                frames = []
                for k, key in enumerate(keys):
                    caption = captions[k].strip()
                    frames.append(FrameSpec(
                        key=f"{story_id}_{k}", caption=caption, image_path=f"images/{story_id}_{k}.png",
                        read_image=lambda split=split, key=key, row=row: self._read(split, key, row),
                        characters=self.matcher.in_text(caption)))
                yield StorySpec(split, story_id, frames)

    def close(self) -> None:
        self.h5.close()
