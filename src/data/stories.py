"""Reader and validator of the story format (docs/story_format.md).

One reader serves every dataset (toy, converted real data) and every samples folder written by the
generation entries. A bad line is a StoryFormatError naming the file, the 1-based line and the field;
nothing is silently skipped. Paths stay relative strings as stored; `resolve` makes them absolute.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
GENDERS = ("female", "male", "neutral")
STORY_KEYS = ("id", "images", "captions", "captions_coref", "characters", "boxes", "masks", "backgrounds")


class StoryFormatError(ValueError):
    """A dataset file breaks the story format; `path`, `line` (1-based or None) and `field` say where."""

    def __init__(self, path, line: int | None, field: str | None, message: str):
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = message
        where = self.path if line is None else f"{self.path}:{line}"
        what = message if field is None else f"field '{field}': {message}"
        super().__init__(f"{where}: {what}")


@dataclass
class Story:
    """One story line. Optional fields are None when the line does not have them."""

    id: str
    images: list[str]
    captions: list[str]
    captions_coref: list[str] | None = None
    characters: list[list[str]] | None = None
    boxes: list[list[list[float]]] | None = None
    masks: list[str | None] | None = None
    backgrounds: list[str | None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    line: int | None = None  # where the story was read from (1-based line of `source`), for later error messages
    source: str | None = None  # the .jsonl file it was read from; None for a story built in code

    @property
    def num_frames(self) -> int:
        return len(self.images)

    def to_json(self) -> dict[str, Any]:
        """The story line as written in a .jsonl file (absent optional fields left out)."""
        out: dict[str, Any] = {"id": self.id, "images": self.images, "captions": self.captions}
        for key in STORY_KEYS[3:]:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out.update(self.extra)
        return out


def resolve(root, rel: str) -> Path:
    """Absolute path of a dataset-relative path `rel` inside the dataset folder `root`."""
    if Path(rel).is_absolute():
        raise ValueError(f"path '{rel}' must be relative to the dataset folder {root}")
    return (Path(root) / rel).resolve()


# ----------------------------------------------------------------------------------------------
# meta.json


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_meta(root) -> dict:
    """Read and validate `<root>/meta.json`; returns the parsed dict (character `reference` defaults to None)."""
    path = Path(root) / "meta.json"
    if not path.is_file():
        raise StoryFormatError(path, None, None, "missing meta.json (every dataset folder needs one)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise StoryFormatError(path, err.lineno, None, f"invalid JSON: {err.msg}") from None
    if not isinstance(meta, dict):
        raise StoryFormatError(path, None, None, f"must hold a JSON object, got {type(meta).__name__}")

    def fail(key: str, message: str):
        raise StoryFormatError(path, None, key, message)

    required = {"name": str, "format_version": int, "frame_size": list, "characters": list, "backgrounds": list}
    for key, kind in required.items():
        if key not in meta:
            fail(key, "missing required key")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            fail(key, f"must be a {kind.__name__}, got {type(meta[key]).__name__}")
    if meta["format_version"] != FORMAT_VERSION:
        fail("format_version", f"unsupported version {meta['format_version']} (this reader knows {FORMAT_VERSION})")
    for key in ("source", "converter_version"):
        if key in meta and not isinstance(meta[key], str):
            fail(key, f"must be a str, got {type(meta[key]).__name__}")
    size = meta["frame_size"]
    if len(size) != 2 or not all(_is_int(v) and v > 0 for v in size):
        fail("frame_size", f"must be [height, width] with positive integers, got {size}")
    fps = meta.get("frames_per_story")
    if fps is not None and not (_is_int(fps) and fps >= 1):
        fail("frames_per_story", f"must be a positive integer or null, got {fps!r}")

    seen: set[str] = set()
    for i, char in enumerate(meta["characters"]):
        key = f"characters[{i}]"
        if not isinstance(char, dict):
            fail(key, f"must be an object with name and gender, got {type(char).__name__}")
        name = char.get("name")
        if not isinstance(name, str) or not name.strip():
            fail(f"{key}.name", f"must be a non-empty str, got {name!r}")
        if char.get("gender") not in GENDERS:
            fail(f"{key}.gender", f"must be one of {', '.join(GENDERS)}, got {char.get('gender')!r}")
        reference = char.setdefault("reference", None)
        if reference is not None and not isinstance(reference, str):
            fail(f"{key}.reference", f"must be a relative path string or null, got {reference!r}")
        folded = name.casefold()  # names are matched case-insensitively, so 'Ada' and 'ada' collide
        if folded in seen:
            fail(f"{key}.name", f"duplicate character name '{name}'")
        seen.add(folded)

    seen = set()
    for i, background in enumerate(meta["backgrounds"]):
        if not isinstance(background, str) or not background:
            fail(f"backgrounds[{i}]", f"must be a non-empty str, got {background!r}")
        if background in seen:
            fail(f"backgrounds[{i}]", f"duplicate background '{background}'")
        seen.add(background)
    return meta


# ----------------------------------------------------------------------------------------------
# story lines


class _LineChecker:
    """Validates one parsed story line; every failure names the file, line and field."""

    def __init__(self, path, line: int, meta: dict | None):
        self.path, self.line, self.meta = path, line, meta

    def fail(self, key: str | None, message: str):
        raise StoryFormatError(self.path, self.line, key, message)

    def frame_list(self, obj: dict, key: str, num_frames: int | None) -> list:
        value = obj[key]
        if not isinstance(value, list):
            self.fail(key, f"must be a list, got {type(value).__name__}")
        if num_frames is not None and len(value) != num_frames:
            self.fail(key, f"has {len(value)} entries but 'images' has {num_frames}")
        return value

    def strings(self, obj: dict, key: str, num_frames: int | None, nullable=False, allow_empty=False) -> list:
        value = self.frame_list(obj, key, num_frames)
        for k, item in enumerate(value):
            if item is None and nullable:
                continue
            if not isinstance(item, str) or (not item and not allow_empty):
                kind = ("str" if allow_empty else "non-empty str") + (" or null" if nullable else "")
                self.fail(key, f"frame {k} must be a {kind}, got {item!r}")
        return value

    def relative_paths(self, key: str, paths: list):
        for k, item in enumerate(paths):
            if item is not None and Path(item).is_absolute():
                self.fail(key, f"frame {k}: path '{item}' must be relative to the dataset folder")

    def story(self, obj) -> Story:
        if not isinstance(obj, dict):
            self.fail(None, f"a story line must be a JSON object, got {type(obj).__name__}")
        for key in ("id", "images", "captions"):
            if key not in obj:
                self.fail(key, "missing required field")
        if not isinstance(obj["id"], str) or not obj["id"]:
            self.fail("id", f"must be a non-empty str, got {obj['id']!r}")
        images = self.strings(obj, "images", None)
        num_frames = len(images)
        if num_frames == 0:
            self.fail("images", "a story needs at least one frame")
        fps = self.meta.get("frames_per_story") if self.meta else None
        if fps is not None and num_frames != fps:
            self.fail("images", f"story has {num_frames} frames but meta.json says frames_per_story={fps}")
        self.relative_paths("images", images)
        captions = self.strings(obj, "captions", num_frames, allow_empty=True)
        story = Story(id=obj["id"], images=images, captions=captions, line=self.line, source=str(self.path))
        if obj.get("captions_coref") is not None:
            story.captions_coref = self.strings(obj, "captions_coref", num_frames, allow_empty=True)
        if obj.get("characters") is not None:
            story.characters = self.characters(obj, num_frames)
        if obj.get("boxes") is not None:
            story.boxes = self.boxes(obj, num_frames, story.characters)
        if obj.get("masks") is not None:
            story.masks = self.strings(obj, "masks", num_frames, nullable=True)
            self.relative_paths("masks", story.masks)
        if obj.get("backgrounds") is not None:
            story.backgrounds = self.backgrounds(obj, num_frames)
        story.extra = {k: v for k, v in obj.items() if k not in STORY_KEYS}
        return story

    def characters(self, obj: dict, num_frames: int) -> list[list[str]]:
        frames = self.frame_list(obj, "characters", num_frames)
        known = None if self.meta is None else {c["name"] for c in self.meta["characters"]}
        for k, names in enumerate(frames):
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                self.fail("characters", f"frame {k} must be a list of names, got {names!r}")
            if len(set(names)) != len(names):
                self.fail("characters", f"frame {k} lists a character twice: {names}")
            for name in names:
                if known is not None and name not in known:
                    self.fail("characters", f"frame {k}: unknown character '{name}' (meta.json has {sorted(known)})")
        return frames

    def boxes(self, obj: dict, num_frames: int, characters) -> list:
        if characters is None:
            self.fail("boxes", "boxes follow the order of 'characters', which this line lacks")
        frames = self.frame_list(obj, "boxes", num_frames)
        height, width = self.meta["frame_size"] if self.meta else (None, None)
        for k, boxes in enumerate(frames):
            if not isinstance(boxes, list):
                self.fail("boxes", f"frame {k} must be a list of [x0, y0, x1, y1] boxes, got {boxes!r}")
            if len(boxes) != len(characters[k]):
                self.fail("boxes", f"frame {k} has {len(boxes)} boxes for {len(characters[k])} characters")
            for box in boxes:
                if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
                    self.fail("boxes", f"frame {k}: a box must be [x0, y0, x1, y1] numbers, got {box!r}")
                x0, y0, x1, y1 = box
                if not (0 <= x0 < x1 and 0 <= y0 < y1):
                    self.fail("boxes", f"frame {k}: box {box} needs 0 <= x0 < x1 and 0 <= y0 < y1")
                if width is not None and (x1 > width or y1 > height):
                    self.fail("boxes", f"frame {k}: box {box} leaves the {height}x{width} frame (meta.json frame_size)")
        return frames

    def backgrounds(self, obj: dict, num_frames: int) -> list:
        frames = self.strings(obj, "backgrounds", num_frames, nullable=True)
        if self.meta is not None:
            known = self.meta["backgrounds"]
            for k, name in enumerate(frames):
                if name is not None and name not in known:
                    self.fail("backgrounds", f"frame {k}: unknown background '{name}' (meta.json has {known})")
        return frames


def _check_files(path, story: Story, root: Path):
    fields = [("images", story.images), ("masks", story.masks or [])]
    for key, paths in fields:
        for k, rel in enumerate(paths):
            if rel is not None and not (root / rel).is_file():
                raise StoryFormatError(path, story.line, key,
                                       f"story '{story.id}' frame {k}: missing file {root / rel}")


def read_stories(jsonl_path, meta: dict | None = None, check_files: bool = False, root=None) -> list[Story]:
    """Read and validate every line of a story .jsonl file.

    `meta` (from read_meta) enables the checks against characters, backgrounds, frame size and story
    length. `check_files` verifies that every referenced image and mask exists under `root` (default:
    the folder holding the .jsonl file).
    """
    path = Path(jsonl_path)
    if not path.is_file():
        raise StoryFormatError(path, None, None, "missing story file")
    root = path.parent if root is None else Path(root)
    stories: list[Story] = []
    first_line: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                raise StoryFormatError(path, number, None, "empty line (one story per line, no blank lines)")
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                raise StoryFormatError(path, number, None, f"invalid JSON: {err.msg} (column {err.colno})") from None
            story = _LineChecker(path, number, meta).story(obj)
            if story.id in first_line:
                raise StoryFormatError(path, number, "id",
                                       f"duplicate id '{story.id}' (first on line {first_line[story.id]})")
            first_line[story.id] = number
            if check_files:
                _check_files(path, story, root)
            stories.append(story)
    return stories


def read_split(root, split: str, check_files: bool = False) -> tuple[dict, list[Story]]:
    """meta.json plus `<root>/<split>.jsonl`, validated against each other. Returns (meta, stories)."""
    root = Path(root)
    meta = read_meta(root)
    if check_files:
        for i, char in enumerate(meta["characters"]):
            ref = char["reference"]
            if ref is not None and not (root / ref).is_file():
                raise StoryFormatError(root / "meta.json", None, f"characters[{i}].reference",
                                       f"missing file {root / ref}")
    return meta, read_stories(root / f"{split}.jsonl", meta=meta, check_files=check_files, root=root)


def check_unique_ids(root, splits=SPLITS) -> None:
    """Ids must be unique across all splits (docs/story_format.md); raises naming both places."""
    root = Path(root)
    meta = read_meta(root)
    seen: dict[str, str] = {}
    for split in splits:
        path = root / f"{split}.jsonl"
        for story in read_stories(path, meta=meta):
            where = f"{path}:{story.line}"
            if story.id in seen:
                raise StoryFormatError(path, story.line, "id", f"id '{story.id}' also used at {seen[story.id]}")
            seen[story.id] = where
