"""The one conversion loop every source layout shares: resumable, idempotent, with a summary.

A source yields StorySpec / Skip items in a fixed order. For each story the runner writes its frames
and masks (each file atomically: temp file + rename; a frame shared by several stories is written once),
then appends the finished story line to `.convert/progress.jsonl` (flushed and fsynced). That log is the
per-story marker: after an interruption, stories already in it are not redone, and a torn last line is
dropped. At the end the split files, `meta.json` and `conversion.json` (the summary: counts, notes,
every skipped item with its file and reason) are written atomically. A re-run over a complete output
with nothing skipped does nothing; with skipped items it retries only those.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from src.data.coref import corefer_story
from src.data.stories import FORMAT_VERSION, SPLITS, read_split
from src.data.convert.common import (CONVERTER_VERSION, ConversionError, FrameSpec, Skip, SourceError,
                                     StorySpec, decode_image)
from src.data.convert.references import build_references

STATE_DIR = ".convert"


class Source:
    """What a layout module provides. Subclasses set `layout` and implement `stories`."""

    layout = "?"

    def __init__(self, source_dir: Path, facts: dict, options: dict):
        self.source_dir, self.facts, self.options = Path(source_dir), facts, options
        self.notes: list[str] = []  # facts for the summary (e.g. what was not read and why)

    def describe(self) -> str:
        return f"{self.layout} release at {self.source_dir}"

    def count(self) -> int | None:
        """Number of items `stories` will yield (for the progress bar), or None if unknown."""
        return None

    def setup(self, out_dir: Path) -> None:
        """Prepare the output folder before stories are written (e.g. link an image folder)."""

    def stories(self) -> Iterator[StorySpec | Skip]:
        raise NotImplementedError

    def backgrounds(self) -> list[str]:
        return []

    def release_references(self) -> dict[str, Path]:
        """Reference images shipped with the release, by canonical character name."""
        return {}

    def close(self) -> None:
        """Release open files (called once the conversion ends, also on error)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def _read_progress(path: Path) -> list[dict]:
    """Finished-story records; a torn last line (interrupted write) is cut off the file."""
    if not path.is_file():
        return []
    records, good_end = [], 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            good_end += len(raw) + 1
            continue
        try:
            records.append(json.loads(raw))
            good_end += len(raw) + 1
        except json.JSONDecodeError:
            if number < len(lines) - 1:
                raise ConversionError(f"{path}:{number}: corrupt progress record; delete {path.parent} to start over")
            break
    if good_end < len(data):
        with path.open("r+b") as handle:
            handle.truncate(good_end)
    return records


class Runner:
    def __init__(self, source: Source, out_dir, facts: dict, options: dict, progress: bool = True,
                 on_story: Callable[[str], None] | None = None):
        self.source, self.out, self.facts = source, Path(out_dir), facts
        self.options = {**options, "converter_version": CONVERTER_VERSION}
        self.progress, self.on_story = progress, on_story
        self.state = self.out / STATE_DIR
        self.frame_size: tuple[int, int] | None = None
        self.genders = facts["genders"]

    # -- options and state ---------------------------------------------------------------------

    def _check_options(self) -> None:
        path = self.state / "options.json"
        if path.is_file():
            previous = json.loads(path.read_text())
            if previous != self.options:
                changed = sorted(k for k in set(previous) | set(self.options) if previous.get(k) != self.options.get(k))
                raise ConversionError(
                    f"{self.out} holds a conversion made with other options ({', '.join(changed)} differ: "
                    f"{ {k: previous.get(k) for k in changed} } -> { {k: self.options.get(k) for k in changed} }); "
                    f"use another --out or delete {self.out}")
        elif self.out.exists() and any(p.name != STATE_DIR for p in self.out.iterdir()):
            raise ConversionError(f"{self.out} exists and was not made by this converter; use another --out or empty it")
        else:
            atomic_write_text(path, json.dumps(self.options, indent=1, sort_keys=True))

    def _up_to_date(self) -> dict | None:
        path = self.out / "conversion.json"
        if not path.is_file():
            return None
        summary = json.loads(path.read_text())
        if summary.get("complete") and not summary.get("skipped") and summary.get("options") == self.options:
            return summary
        return None

    # -- one story -----------------------------------------------------------------------------

    def _ensure_image(self, frame: FrameSpec) -> None:
        path = self.out / frame.image_path
        if not path.is_file():
            if frame.read_image is not None:
                save_png(path, frame.read_image())
            elif frame.copy_from is not None:
                if not frame.copy_from.is_file():
                    raise SourceError(frame.copy_from, frame.key, "missing file")
                data = frame.copy_from.read_bytes()
                decode_image(data, frame.copy_from, frame.key)
                atomic_write_bytes(path, data)
            else:
                raise SourceError(path, frame.key, "missing file")
        size = self._image_size(path, frame.key, verify=frame.read_image is None)
        if self.frame_size is None:
            self.frame_size = size
        elif size != self.frame_size:
            raise SourceError(frame.copy_from or path, frame.key,
                              f"frame is {size[0]}x{size[1]} but the dataset's frames are {self.frame_size[0]}x{self.frame_size[1]}")

    @staticmethod
    def _image_size(path: Path, key: str, verify: bool) -> tuple[int, int]:
        try:
            with Image.open(path) as image:
                if verify:  # a linked/copied file: decode (JPEG at 1/8 scale, cheap) to catch truncation
                    image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                    image.load()
                    with Image.open(path) as header:
                        return header.height, header.width
                return image.height, image.width
        except Exception as err:
            raise SourceError(path, key, f"corrupt or truncated image ({type(err).__name__}: {err})") from None

    def _ensure_mask(self, frame: FrameSpec, mask_path: str) -> None:
        path = self.out / mask_path
        if path.is_file():
            return
        mask = frame.read_mask()
        if mask.shape != tuple(self.frame_size):
            raise SourceError(path, frame.key, f"mask is {mask.shape} but its frame is {self.frame_size}")
        save_png(path, mask.astype(np.uint8))

    def _write_story(self, spec: StorySpec) -> dict:
        masks: list[str | None] = []
        for frame in spec.frames:
            self._ensure_image(frame)
            mask_path = None
            if frame.read_mask is not None and frame.characters:
                mask_path = f"masks/{Path(frame.image_path).stem}.png"
                self._ensure_mask(frame, mask_path)
            masks.append(mask_path)
        line: dict = {"id": spec.story_id, "images": [f.image_path for f in spec.frames],
                      "captions": [f.caption for f in spec.frames]}
        if all(f.characters is not None for f in spec.frames):
            characters = [f.characters for f in spec.frames]
            line["captions_coref"] = corefer_story(line["captions"], characters, self.genders)
            line["characters"] = characters
            if all(f.boxes is not None for f in spec.frames):
                line["boxes"] = [f.boxes for f in spec.frames]
            if any(f.read_mask is not None for f in spec.frames):
                line["masks"] = masks
        if any(f.background is not None for f in spec.frames):
            line["backgrounds"] = [f.background for f in spec.frames]
        line.update(spec.extra)
        return line

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(exist_ok=True)
        self._check_options()
        summary = self._up_to_date()
        if summary is not None:
            summary["up_to_date"] = True
            return summary
        progress_path = self.state / "progress.jsonl"
        records = _read_progress(progress_path)
        done = {r["line"]["id"]: r for r in records}
        self.source.setup(self.out)
        if records:
            first = records[0]["line"]["images"][0]
            self.frame_size = self._image_size(self.out / first, records[0]["line"]["id"], verify=False)
        skips: list[Skip] = []
        seen: dict[str, str] = {}
        converted = resumed = 0
        bar = tqdm(total=self.source.count(), desc=f"convert {self.facts['name']}", unit="story",
                   disable=not self.progress)
        with progress_path.open("a", encoding="utf-8") as log:
            for index, item in enumerate(self.source.stories()):
                bar.update(1)
                if isinstance(item, Skip):
                    skips.append(item)
                    continue
                if item.split not in SPLITS:
                    raise ConversionError(f"source yielded split '{item.split}' (expected one of {SPLITS})")
                if item.story_id in seen:
                    raise ConversionError(f"story id '{item.story_id}' occurs in split {seen[item.story_id]} and "
                                          f"again in {item.split} (ids must be unique across splits)")
                seen[item.story_id] = item.split
                if item.story_id in done:
                    done[item.story_id]["index"] = index
                    resumed += 1
                    continue
                try:
                    line = self._write_story(item)
                except SourceError as err:
                    skips.append(Skip(item.split, item.story_id, err.file, f"{err.reason} (frame id '{err.item_id}')"))
                    continue
                record = {"split": item.split, "index": index, "line": line}
                log.write(json.dumps(record) + "\n")
                log.flush()
                os.fsync(log.fileno())
                done[item.story_id] = record
                converted += 1
                if self.on_story is not None:
                    self.on_story(item.story_id)
        bar.close()
        # records of stories the source no longer yields (none unless the source changed) are dropped
        finished = [r for r in done.values() if r["line"]["id"] in seen]
        return self._finalize(finished, skips, converted, resumed)

    def _finalize(self, records: list[dict], skips: list[Skip], converted: int, resumed: int) -> dict:
        if not records:
            raise ConversionError(f"no story could be converted from {self.source.source_dir}; skipped: "
                                  + "; ".join(f"{s.file}: {s.item_id}: {s.reason}" for s in skips[:5]))
        records.sort(key=lambda r: r["index"])
        train_lines = [r["line"] for r in records if r["split"] == "train"]
        references, ref_notes = build_references(self.out, train_lines, self.facts["characters"],
                                                 self.source.release_references(), skips)
        frames_per_story = self.facts.get("frames_per_story")
        meta = {
            "name": self.facts["name"],
            "format_version": FORMAT_VERSION,
            "source": self.source.describe(),
            "converter_version": CONVERTER_VERSION,
            "frame_size": list(self.frame_size),
            "frames_per_story": frames_per_story,
            "characters": [{"name": n, "gender": self.genders[n], "reference": references.get(n)}
                           for n in self.facts["characters"]],
            "backgrounds": self.source.backgrounds(),
        }
        atomic_write_text(self.out / "meta.json", json.dumps(meta, indent=1))
        counts = {}
        for split in SPLITS:
            lines = [r["line"] for r in records if r["split"] == split]
            counts[split] = len(lines)
            atomic_write_text(self.out / f"{split}.jsonl", "".join(json.dumps(l) + "\n" for l in lines))
        for split in SPLITS:  # our own output must load with the shared reader
            read_split(self.out, split)
        images = {p for r in records for p in r["line"]["images"]}
        masks = {p for r in records for p in r["line"].get("masks") or [] if p}
        char_frames = {n: 0 for n in self.facts["characters"]}
        for r in records:
            for names in r["line"].get("characters") or []:
                for n in names:
                    char_frames[n] += 1
        summary = {
            "complete": True, "dataset": self.facts["name"], "layout": self.source.layout,
            "source": self.source.describe(), "options": self.options, "stories": counts,
            "converted_now": converted, "resumed": resumed, "image_files": len(images), "mask_files": len(masks),
            "frame_size": list(self.frame_size), "character_frames": char_frames, "references": references,
            "notes": self.source.notes + ref_notes, "skipped": [s.to_json() for s in skips],
        }
        atomic_write_text(self.out / "conversion.json", json.dumps(summary, indent=1))
        return summary


def format_summary(summary: dict, out_dir, max_skips: int = 20) -> str:
    """Human-readable summary (printed by src.data.prepare)."""
    if summary.get("up_to_date"):
        head = [f"{out_dir} is already complete ({summary['layout']} layout); nothing to do."]
    else:
        head = [f"Converted {summary['dataset']} ({summary['layout']} layout) into {out_dir}",
                f"  this run: {summary['converted_now']} stories converted, {summary['resumed']} already done"]
    stories = ", ".join(f"{k} {v}" for k, v in summary["stories"].items())
    lines = head + [f"  stories: {stories}",
                    f"  frames: {summary['image_files']} image files ({summary['frame_size'][0]}x{summary['frame_size'][1]}),"
                    f" {summary['mask_files']} masks"]
    chars = ", ".join(f"{n} {c}" for n, c in summary["character_frames"].items())
    lines.append(f"  characters (frames): {chars or 'none'}")
    for name, ref in summary["references"].items():
        lines.append(f"  reference {name}: {ref}")
    for note in summary["notes"]:
        lines.append(f"  note: {note}")
    skipped = summary["skipped"]
    lines.append(f"  skipped: {len(skipped)}" + (" (all listed in conversion.json)" if skipped else ""))
    for s in skipped[:max_skips]:
        where = f"[{s['split']}] " if s["split"] else ""
        lines.append(f"    - {where}{s['id']}: {s['file']}: {s['reason']}")
    if len(skipped) > max_skips:
        lines.append(f"    ... and {len(skipped) - max_skips} more")
    return "\n".join(lines)
