"""Validate a converted dataset folder (docs/story_format.md).

    python -m src.data.check data/<dataset> [--max-errors N] [--quiet]

Checks: meta.json and every split file parse (the shared reader: fields, lengths, characters and
backgrounds consistent with meta.json, boxes inside the frame); every image, mask and reference
file exists and decodes; every frame has meta.json's frame_size; every mask is an 8-bit single-channel
map of its frame's size with no value above the frame's character count; no story id is in two splits.
Frames shared between splits are reported as warnings (the releases build stories from overlapping
clips). Exit status 0 when no error was found, 1 otherwise; every problem names its file and story.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from src.data.stories import SPLITS, StoryFormatError, read_meta, read_stories
from src.errors import run_entry


@dataclass
class CheckReport:
    root: Path
    stories: dict[str, int] = field(default_factory=dict)
    files_checked: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self, max_errors: int = 50) -> str:
        lines = [f"{self.root}: " + ", ".join(f"{k} {v} stories" for k, v in self.stories.items())
                 + f", {self.files_checked} files checked"]
        for title, items in (("error", self.errors), ("warning", self.warnings)):
            for item in items[:max_errors]:
                lines.append(f"  {title}: {item}")
            if len(items) > max_errors:
                lines.append(f"  ... and {len(items) - max_errors} more {title}s")
        lines.append("OK" if self.ok else f"FAILED: {len(self.errors)} errors")
        return "\n".join(lines)


def _open_image(path: Path) -> tuple[str, tuple[int, int], np.ndarray | None]:
    """(mode, (height, width), pixels for masks) of an image file; raises on a missing/corrupt file."""
    with Image.open(path) as image:
        mode, size = image.mode, (image.height, image.width)
        if image.format == "JPEG":  # decoding at 1/8 scale still catches a truncated file, 10x faster
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
        pixels = np.asarray(image) if mode in ("L", "P", "I", "I;16") else None
        return mode, size, pixels


def check_dataset(root, progress: bool = False) -> CheckReport:
    """Validate the dataset folder `root`; returns a report (never raises for a data problem)."""
    root = Path(root)
    report = CheckReport(root)
    try:
        meta = read_meta(root)
    except StoryFormatError as err:
        report.errors.append(str(err))
        return report
    frame_size = tuple(meta["frame_size"])
    for i, char in enumerate(meta["characters"]):
        if char["reference"] is not None:
            path = root / char["reference"]
            try:
                _open_image(path)
            except Exception as err:
                report.errors.append(f"{root / 'meta.json'}: characters[{i}].reference: {path}: unreadable ({err})")
    checked: dict[str, tuple] = {}  # a frame shared by several stories is opened once
    split_of_id: dict[str, str] = {}
    splits_of_image: dict[str, set[str]] = {}
    for split in SPLITS:
        path = root / f"{split}.jsonl"
        if not path.is_file():
            report.warnings.append(f"{path}: missing (no {split} split)")
            continue
        try:
            stories = read_stories(path, meta=meta)
        except StoryFormatError as err:
            report.errors.append(str(err))
            continue
        report.stories[split] = len(stories)
        for story in tqdm(stories, desc=f"check {split}", unit="story", disable=not progress):
            where = f"{path}:{story.line}: story '{story.id}'"
            if story.id in split_of_id:
                report.errors.append(f"{where}: id also in split {split_of_id[story.id]} (splits overlap)")
            split_of_id[story.id] = split
            for k, rel in enumerate(story.images):
                splits_of_image.setdefault(rel, set()).add(split)
                result = _check_file(root / rel, checked)
                if isinstance(result, str):
                    report.errors.append(f"{where}: frame {k}: {result}")
                elif result[1] != frame_size:
                    report.errors.append(f"{where}: frame {k}: {rel} is {result[1][0]}x{result[1][1]}, "
                                         f"meta.json frame_size is {frame_size[0]}x{frame_size[1]}")
            for k, rel in enumerate(story.masks or []):
                if rel is None:
                    continue
                result = _check_file(root / rel, checked)
                if isinstance(result, str):
                    report.errors.append(f"{where}: mask {k}: {result}")
                    continue
                mode, size, pixels = result
                count = len(story.characters[k]) if story.characters else 0
                if mode != "L":
                    report.errors.append(f"{where}: mask {k}: {rel} has mode {mode}, expected 8-bit single-channel (L)")
                elif size != frame_size:
                    report.errors.append(f"{where}: mask {k}: {rel} is {size[0]}x{size[1]}, its frame is "
                                         f"{frame_size[0]}x{frame_size[1]} (not aligned)")
                elif int(pixels.max()) > count:
                    report.errors.append(f"{where}: mask {k}: {rel} has label {int(pixels.max())} but the frame "
                                         f"has {count} characters")
    report.files_checked = len(checked)
    shared = [rel for rel, splits in splits_of_image.items() if len(splits) > 1]
    if shared:
        report.warnings.append(f"{len(shared)} frame files are used by stories of several splits (first: {shared[0]})")
    return report


def _check_file(path: Path, cache: dict) -> tuple | str:
    key = str(path)
    if key not in cache:
        if not path.is_file():
            cache[key] = f"missing file {path}"
        else:
            try:
                cache[key] = _open_image(path)
            except Exception as err:
                cache[key] = f"{path}: unreadable image ({type(err).__name__}: {err})"
    return cache[key]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.data.check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="a converted dataset folder, e.g. data/flintstones")
    parser.add_argument("--max-errors", type=int, default=50, help="problems listed per kind")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    report = check_dataset(args.root, progress=not args.quiet)
    print(report.format(args.max_errors))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(run_entry(main))
