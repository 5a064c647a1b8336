"""Shared pieces of the converters: what a source yields, errors that name their file and id, name
matching, deterministic frame choice, and safe readers for .npy / PNG inputs.

Shape legend: H height, W width, n frames sampled from one clip; frames are uint8 [H, W, 3] RGB.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from src.errors import StoryVizError

CONVERTER_VERSION = "1"


class ConversionError(StoryVizError):
    """A problem that stops the whole conversion (a missing top-level file, bad options)."""


class SourceError(Exception):
    """One missing, truncated or corrupt input; `file` and `item_id` say which (the story is skipped)."""

    def __init__(self, file, item_id: str, reason: str):
        self.file, self.item_id, self.reason = str(file), str(item_id), reason
        super().__init__(f"{self.file}: id '{self.item_id}': {reason}")


@dataclass
class Skip:
    """Something the conversion left out, with why: reported in the summary and in conversion.json."""

    split: str | None
    item_id: str
    file: str
    reason: str

    def to_json(self) -> dict:
        return {"split": self.split, "id": self.item_id, "file": self.file, "reason": self.reason}


@dataclass
class FrameSpec:
    """One frame of a story as a source describes it; the runner writes the files lazily.

    `key` names the output files (frames shared by several stories are written once).
    `read_image` returns the chosen frame [H, W, 3] uint8, or `copy_from` names a file copied as is,
    or neither when `image_path` is already in place (StoryStream's linked image folder).
    `read_mask` returns the label map [H, W] uint8 (value i+1 = i-th character of `characters`).
    """

    key: str
    caption: str
    image_path: str
    read_image: Callable[[], np.ndarray] | None = None
    copy_from: Path | None = None
    characters: list[str] | None = None
    boxes: list[list[int]] | None = None
    read_mask: Callable[[], np.ndarray] | None = None
    background: str | None = None


@dataclass
class StorySpec:
    split: str
    story_id: str
    frames: list[FrameSpec]
    extra: dict[str, Any] = field(default_factory=dict)  # extra story-line keys (orders, source_id)


# ----------------------------------------------------------------------------------------------
# names


def normalize(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces: 'Mr. Slate,' -> 'mr slate'."""
    return " ".join(re.sub(r"[\W_]+", " ", text.lower()).split())


class NameMatcher:
    """Maps source labels and caption words onto the canonical character names of meta.json.

    Matching is case- and punctuation-insensitive; `aliases` (alias -> canonical name, from the data
    config) add other spellings, e.g. 'slate' -> 'mr slate'.
    """

    def __init__(self, names: list[str], aliases: dict[str, str] | None = None):
        self.names = list(names)
        self.lookup = {normalize(n): n for n in names}
        for alias, target in (aliases or {}).items():
            if target not in self.names:
                raise ConversionError(f"alias '{alias}' points to '{target}', not one of the characters {self.names}")
            self.lookup[normalize(alias)] = target

    def canonical(self, label: str) -> str | None:
        """The character a label names, or None when it names none."""
        return self.lookup.get(normalize(label))

    def in_text(self, text: str) -> list[str]:
        """Characters mentioned in `text`, in order of first mention (longest spelling wins)."""
        padded = f" {normalize(text)} "
        hits: list[tuple[int, str]] = []
        for spelling in sorted(self.lookup, key=len, reverse=True):
            start = padded.find(f" {spelling} ")
            while start >= 0:
                hits.append((start, self.lookup[spelling]))
                padded = padded[:start + 1] + "#" * len(spelling) + padded[start + 1 + len(spelling):]
                start = padded.find(f" {spelling} ")
        return list(dict.fromkeys(name for _, name in sorted(hits)))


def safe_name(text: str) -> str:
    """A file-name-safe form of an id: characters outside [A-Za-z0-9._-] become '_'."""
    out = re.sub(r"[^A-Za-z0-9._-]", "_", str(text)).strip(".")
    if not out:
        raise ConversionError(f"id {text!r} gives an empty file name")
    return out


# ----------------------------------------------------------------------------------------------
# frame choice


def choose_frame(num_frames: int, policy: str) -> int:
    """Index of the frame kept from a clip of `num_frames` sampled frames (deterministic).

    'middle' (default) is n // 2: the sampled frames span the shot, and its middle is least likely to
    be a transition. 'first', 'last' or an integer index are the alternatives.
    """
    if num_frames < 1:
        raise ValueError("clip has no frames")
    if policy == "middle":
        return num_frames // 2
    if policy == "first":
        return 0
    if policy == "last":
        return num_frames - 1
    if str(policy).isdigit():
        index = int(policy)
        if index >= num_frames:
            raise ValueError(f"frame_choice {index} but the clip has only {num_frames} frames")
        return index
    raise ConversionError(f"frame_choice must be middle, first, last or a frame index, got {policy!r}")


def check_frame_choice(policy: str) -> str:
    choose_frame(1 if not str(policy).isdigit() else int(policy) + 1, policy)
    return str(policy)


# ----------------------------------------------------------------------------------------------
# readers that name their file and id


def open_npy(path: Path, item_id: str) -> np.ndarray:
    """Memory-map a .npy (only the slices used are read); a missing/truncated file is a SourceError."""
    if not path.is_file():
        raise SourceError(path, item_id, "missing file")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise SourceError(path, item_id, f"truncated or corrupt .npy ({err})") from None


def npy_frame(path: Path, item_id: str, policy: str) -> np.ndarray:
    """The chosen frame of a clip stored as uint8 (n, H, W, 3)."""
    clip = open_npy(path, item_id)
    if clip.ndim != 4 or clip.shape[-1] != 3:
        raise SourceError(path, item_id, f"expected frames of shape (n, H, W, 3), got {clip.shape}")
    try:
        index = choose_frame(clip.shape[0], policy)
        return np.ascontiguousarray(clip[index], dtype=np.uint8)
    except (ValueError, OSError) as err:
        raise SourceError(path, item_id, str(err)) from None


def decode_image(data: bytes, file, item_id: str) -> Image.Image:
    """Decode image bytes fully (so a truncated PNG fails here, not later)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGB")
    except Exception as err:  # PIL raises many types for broken files
        raise SourceError(file, item_id, f"corrupt or truncated image ({type(err).__name__}: {err})") from None


def read_image_file(path: Path, item_id: str) -> Image.Image:
    if not path.is_file():
        raise SourceError(path, item_id, "missing file")
    return decode_image(path.read_bytes(), path, item_id)


def strip_frame(strip: np.ndarray, file, item_id: str, policy: str) -> np.ndarray:
    """The chosen square frame of a vertical strip of n frames [n*W, W, 3] (StoryGAN / ARLDM layout)."""
    height, width = strip.shape[:2]
    if width == 0 or height % width != 0:
        raise SourceError(file, item_id, f"image of {height}x{width} is not a vertical strip of square frames")
    try:
        index = choose_frame(height // width, policy)
    except ValueError as err:
        raise SourceError(file, item_id, str(err)) from None
    return np.ascontiguousarray(strip[index * width:(index + 1) * width])


def bbox_128_to_box(bbox, frame_width: int, frame_height: int) -> list[int] | None:
    """StoryGPT-V's [h1, w1, h2, w2] at 128 px -> our [x0, y0, x1, y1] at the stored size (None if empty)."""
    h1, w1, h2, w2 = (float(v) for v in bbox)
    sx, sy = frame_width / 128.0, frame_height / 128.0
    x0, y0 = max(0, int(round(w1 * sx))), max(0, int(round(h1 * sy)))
    x1, y1 = min(frame_width, int(round(w2 * sx))), min(frame_height, int(round(h2 * sy)))
    return [x0, y0, x1, y1] if x0 < x1 and y0 < y1 else None


def union_box(a: list[int], b: list[int]) -> list[int]:
    return [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]
