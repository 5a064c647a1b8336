"""One reference image per character (meta.json `characters[].reference`, files under chars/).

StoryGPT-V's inference fuses a fixed portrait per character (docs/storygpt_v.md; its release's `data/chars/{name}.jpeg`);
its release has them for Flintstones only, so Pororo never fused references. Here:
1. a release portrait is copied as is when the source ships one (checked to decode);
2. otherwise one is built deterministically from the converted *train* stories (never val/test, so
   evaluation frames do not leak into conditioning): among frames where the character is alone, the one
   with the largest box (first in story order on ties), cropped to that box; without boxes the whole
   frame of the first such frame. If the character is never alone, the frame where its box is largest
   (or its first frame) is used. A character absent from train gets no reference (listed in the notes).
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from src.data.convert.common import Skip, SourceError, decode_image, safe_name


def _pick_frame(name: str, train_lines: list[dict]):
    """(line, frame index, box or None) of the frame chosen for `name`, or None."""
    best, best_key = None, None
    for order, line in enumerate(train_lines):
        for k, names in enumerate(line.get("characters") or []):
            if name not in names:
                continue
            box = line["boxes"][k][names.index(name)] if line.get("boxes") else None
            area = (box[2] - box[0]) * (box[3] - box[1]) if box else 0
            key = (len(names) != 1, -area, order, k)  # alone first, then largest box, then story order
            if best_key is None or key < best_key:
                best, best_key = (line, k, box), key
    return best


def build_references(out_dir: Path, train_lines: list[dict], characters: list[str],
                     release: dict[str, Path], skips: list[Skip]) -> tuple[dict[str, str], list[str]]:
    """Write chars/ and return ({name: relative path}, notes for the summary)."""
    chars_dir = Path(out_dir) / "chars"
    references: dict[str, str] = {}
    notes: list[str] = []
    for name in characters:
        stem = safe_name(name.replace(" ", "_"))
        if name in release:
            src = release[name]
            try:
                data = src.read_bytes()
                decode_image(data, src, name)
            except (OSError, SourceError) as err:
                skips.append(Skip(None, name, str(src), f"release reference unreadable ({err}); built from data instead"))
            else:
                target = chars_dir / f"{stem}{src.suffix.lower()}"
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, target)
                references[name] = f"chars/{target.name}"
                continue
        picked = _pick_frame(name, train_lines)
        if picked is None:
            notes.append(f"no reference for '{name}': it appears in no converted train frame")
            continue
        line, k, box = picked
        with Image.open(Path(out_dir) / line["images"][k]) as frame:
            crop = frame.convert("RGB").crop(tuple(box)) if box else frame.convert("RGB")
        target = chars_dir / f"{stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        crop.save(tmp, format="PNG")
        os.replace(tmp, target)
        references[name] = f"chars/{target.name}"
        alone = len(line["characters"][k]) == 1
        notes.append(f"reference '{name}' built from train story {line['id']} frame {k}"
                     f" ({'alone' if alone else 'not alone anywhere in train'}, {'box crop' if box else 'whole frame'})")
    return references, notes
