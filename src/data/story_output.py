"""What `bash scripts/story.sh` writes for one story (docs/own_story.md, "What you get"):

    DIR/frame_00.png ...   the frames, in order (SEED-Story: frame_00 is the opening drawn back)
    DIR/strip.png          the frames side by side
    DIR/index.html         a small page: each frame with its caption (or written text) and what
                           conditioned it (fused names, stage 2's pronoun diagnostic); no outside file
                           but the frames beside it
    DIR/story.json         the record: the story file's content, the checkpoints, the seed, the
                           settings, the memory tier and per-frame metadata

`write_story_folder` takes PIL images and plain records, so any pipeline's output fits.
"""
from __future__ import annotations

import html
import json
import os
from pathlib import Path

from PIL import Image

GAP = 4  # pixels between frames in the strip


def write_strip(images: list, path: Path) -> Path:
    """Frames in one row (different sizes: each at its own size, top-aligned), on white."""
    width = sum(image.width for image in images) + GAP * (len(images) - 1)
    strip = Image.new("RGB", (width, max(image.height for image in images)), "white")
    x = 0
    for image in images:
        strip.paste(image.convert("RGB"), (x, 0))
        x += image.width + GAP
    strip.save(path)
    return path


def _describe(frame: dict) -> str:
    """The lines under a frame on the page: what conditioned it."""
    lines = []
    if frame.get("fused"):
        lines.append("fused: " + ", ".join(frame["fused"]))
    if frame.get("conditioning"):
        lines.append(f"conditioning: {frame['conditioning']}")
    resolved = frame.get("stage2_resolved")
    if resolved and resolved.get("nearest"):
        margin = resolved.get("margin")
        lines.append(f"stage 2 nearest to: {resolved['nearest']}" + ("" if margin is None else f" (margin {margin:.4g})"))
    elif resolved:
        lines.append(f"stage 2: {resolved.get('note', 'no candidate')}")
    return "<br>".join(html.escape(line) for line in lines)


def write_page(record: dict, path: Path) -> Path:
    """index.html: the title, the system and checkpoints in one line each, then the frames with their text."""
    cells = []
    for frame in record["frames"]:
        text = frame.get("caption") or frame.get("text") or ""
        cells.append(f'<figure><img src="{html.escape(frame["file"])}" alt="frame {frame["index"]}">'
                     f'<figcaption><b>{frame["index"]}.</b> {html.escape(text)}'
                     f'<div class="meta">{_describe(frame)}</div></figcaption></figure>')
    runs = "; ".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in record["checkpoints"].items())
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(record["title"])}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
.frames {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure {{ margin: 0; width: 256px; }}
img {{ width: 256px; image-rendering: pixelated; border: 1px solid #ccc; }}
figcaption {{ font-size: 14px; margin-top: 4px; }}
.meta {{ color: #666; font-size: 12px; margin-top: 2px; }}
.small {{ color: #666; font-size: 12px; }}
</style></head><body>
<h1>{html.escape(record["title"])}</h1>
<p class="small">{html.escape(record["system"])}, seed {record["seed"]}; {runs}</p>
<div class="frames">
{chr(10).join(cells)}
</div>
<p class="small">Full record: story.json</p>
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path


def write_story_folder(out_dir, images: list, record: dict) -> Path:
    """Write the frames (`images`, PIL), strip.png, index.html and story.json into `out_dir`. `record`:
    title, system, seed, checkpoints and `frames` (one dict per image, in order; each gets its `index`
    and `file`), plus anything else to keep. story.json is written last and atomically: a folder with
    one holds a whole story."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(images) != len(record["frames"]):
        raise ValueError(f"{len(images)} frames but {len(record['frames'])} frame records")
    for k, (image, frame) in enumerate(zip(images, record["frames"])):
        frame["index"], frame["file"] = k, f"frame_{k:02d}.png"
        image.save(out_dir / frame["file"])
    write_strip(images, out_dir / "strip.png")
    write_page(record, out_dir / "index.html")
    partial = out_dir / f".story.json.partial-{os.getpid()}"
    partial.write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
    partial.replace(out_dir / "story.json")
    return out_dir
