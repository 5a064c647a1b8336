"""StoryStream (SEED-Story's dataset; docs/seed_story.md, "Data").

    <source>/**/{train,val,test}.jsonl   one story per line: {"id", "images": [30 paths], "captions": [30],
                                         "orders": [...]}; 'valid'/'validation' are read as val
    <image root>/<path>                  the frames (JPEG, 480x854), found under the source folder,
                                         its images/ or image/ subfolder, one series folder below
                                         those (SEED-Story's json/ + image/<series>/ layout), or
                                         --image-root

Such lines are valid story-format lines already (docs/story_format.md). The conversion:
- chunks each story into consecutive stories of `chunk_frames` frames (default 10, as SEED-Story
  trains), keeping the remainder as a shorter story (SEED's chunk_data.py drops it); 0 keeps the whole
  story. 30 -> 10 + 10 + 10; 32 -> 10 + 10 + 10 + 2;
- ids become `{split}_{id}` (chunked: `{split}_{id}_{chunk}`), unique across splits by construction;
  the source id is kept as `source_id` and `orders` is sliced with the frames;
- images are linked (one symlink `images` -> the image root, no copying of 250k files) or, with
  images='copy', copied file by file; every frame is opened (missing/corrupt/other-size frames skip
  their chunk, named in the summary).
A malformed source line is an error naming the file, line and field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from src.data.stories import SPLITS
from src.data.convert.common import ConversionError, FrameSpec, Skip, StorySpec
from src.data.convert.runner import Source

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def find_split_files(source_dir: Path) -> dict[str, Path]:
    found: dict[str, list[Path]] = {}
    for path in sorted(source_dir.rglob("*.jsonl")):
        split = SPLIT_NAMES.get(path.stem.lower())
        if split is not None:
            found.setdefault(split, []).append(path)
    for split, paths in found.items():
        if len(paths) > 1:
            raise ConversionError(f"several {split} files under {source_dir}: {[str(p) for p in paths]}")
    if not found:
        raise ConversionError(f"{source_dir}: no train/val/test .jsonl file found")
    return {split: paths[0] for split, paths in found.items()}


def chunk_ranges(num_frames: int, chunk_frames: int) -> list[tuple[int, int]]:
    """[start, end) of each chunk; the remainder is kept; chunk_frames 0 keeps the whole story."""
    if chunk_frames < 0:
        raise ConversionError(f"chunk_frames must be >= 0, got {chunk_frames}")
    if chunk_frames == 0:
        return [(0, num_frames)]
    return [(s, min(s + chunk_frames, num_frames)) for s in range(0, num_frames, chunk_frames)]


def _parse_line(path: Path, number: int, text: str) -> dict:
    def fail(field, message):
        raise ConversionError(f"{path}:{number}: field '{field}': {message}")

    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path}:{number}: invalid JSON ({err.msg}, column {err.colno})") from None
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}:{number}: a story line must be a JSON object")
    if "id" not in obj or not isinstance(obj["id"], (int, str)) or isinstance(obj["id"], bool):
        fail("id", f"missing or not an int/str: {obj.get('id')!r}")
    for key in ("images", "captions"):
        value = obj.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            fail(key, "must be a non-empty list of strings")
    if len(obj["captions"]) != len(obj["images"]):
        fail("captions", f"{len(obj['captions'])} captions for {len(obj['images'])} images")
    if "orders" in obj and (not isinstance(obj["orders"], list) or len(obj["orders"]) != len(obj["images"])):
        fail("orders", f"must be a list as long as 'images' ({len(obj['images'])})")
    for image in obj["images"]:
        if Path(image).is_absolute() or ".." in Path(image).parts:
            fail("images", f"path '{image}' must be relative to the image root")
    return obj


class StoryStreamSource(Source):
    layout = "storystream"

    @staticmethod
    def detect(source_dir: Path) -> bool:
        try:
            find_split_files(source_dir)
            return True
        except ConversionError:
            return False

    def __init__(self, source_dir, facts, options):
        super().__init__(source_dir, facts, options)
        self.split_files = find_split_files(self.source_dir)
        self.chunk_frames = int(options.get("chunk_frames", 10))
        chunk_ranges(1, self.chunk_frames)
        self.mode = options.get("images", "link")
        if self.mode not in ("link", "copy"):
            raise ConversionError(f"images must be 'link' or 'copy', got {self.mode!r}")
        self.image_root = self._find_image_root(options.get("image_root"))
        for split in SPLITS:
            if split not in self.split_files:
                self.notes.append(f"no {split}.jsonl under {self.source_dir}: no {split} stories")

    def describe(self) -> str:
        return (f"StoryStream JSONL ({self.layout}) at {self.source_dir}, images {self.mode} {self.image_root}, "
                f"chunk_frames={self.chunk_frames}")

    def _first_image(self) -> tuple[Path, str]:
        for path in self.split_files.values():
            with path.open(encoding="utf-8") as handle:
                for number, text in enumerate(handle, start=1):
                    if text.strip():
                        return path, _parse_line(path, number, text)["images"][0]
        raise ConversionError(f"the split files under {self.source_dir} hold no story")

    def _find_image_root(self, given) -> Path:
        """The folder the story lines' image paths are relative to: --image-root, else the source folder,
        the split file's folder or its parent, each itself or its images/ or image/ subfolder, or one
        series folder below those (SEED-Story's own layout: json/{train,val}.jsonl next to
        image/<series>/..., e.g. image/george_full/000258/...)."""
        path, first = self._first_image()
        if given:
            candidates = [Path(given)]
        else:
            bases = list(dict.fromkeys([self.source_dir, path.parent, path.parent.parent]))
            candidates = [root for base in bases for root in (base, base / "images", base / "image")]
        for root in candidates:
            if (root / first).is_file():
                return root.resolve()
        series = sorted({child.resolve() for root in candidates if not given and root.name in ("image", "images")
                         and root.is_dir() for child in root.iterdir() if (child / first).is_file()})
        if len(series) == 1:
            return series[0]
        if len(series) > 1:
            raise ConversionError(f"image '{first}' (first story of {path}) is in several series folders "
                                  f"{[str(s) for s in series]}; pass --image-root")
        raise ConversionError(f"image '{first}' (first story of {path}) is not under any of "
                              f"{[str(c) for c in candidates]} or a series folder of their image/ or images/; "
                              f"pass --image-root")

    def setup(self, out_dir: Path) -> None:
        if self.mode != "link":
            return
        link = out_dir / "images"
        if link.is_symlink():
            if Path(os.readlink(link)).resolve() != self.image_root:
                raise ConversionError(f"{link} links to {os.readlink(link)}, not {self.image_root}")
            return
        if link.exists():
            raise ConversionError(f"{link} exists and is not a link to {self.image_root}")
        os.symlink(self.image_root, link, target_is_directory=True)

    def stories(self) -> Iterator[StorySpec | Skip]:
        for split in SPLITS:
            path = self.split_files.get(split)
            if path is None:
                continue
            with path.open(encoding="utf-8") as handle:  # line by line: the files can be large
                for number, text in enumerate(handle, start=1):
                    if not text.strip():
                        raise ConversionError(f"{path}:{number}: empty line (one story per line)")
                    obj = _parse_line(path, number, text)
                    ranges = chunk_ranges(len(obj["images"]), self.chunk_frames)
                    for j, (start, end) in enumerate(ranges):
                        story_id = f"{split}_{obj['id']}" + (f"_{j}" if self.chunk_frames else "")
                        frames = [FrameSpec(key=f"{path.name}:{number}:{rel}", caption=obj["captions"][k],
                                            image_path=f"images/{rel}",
                                            copy_from=(self.image_root / rel) if self.mode == "copy" else None)
                                  for k, rel in enumerate(obj["images"][start:end], start=start)]
                        extra = {"source_id": obj["id"]}
                        if "orders" in obj:
                            extra["orders"] = obj["orders"][start:end]
                        yield StorySpec(split, story_id, frames, extra)
