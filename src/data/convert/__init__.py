"""Converters from the public releases into the story format (docs/story_format.md, data/README.md).

One module per source layout; `CONVERTERS` says which layouts each dataset can come from, and
`convert` runs one through the shared resumable loop (runner.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from src.data.convert.arldm import ARLDMSource
from src.data.convert.common import ConversionError, check_frame_choice
from src.data.convert.runner import Runner, Source
from src.data.convert.storydalle import StoryDalleSource
from src.data.convert.storygan import StoryGANSource
from src.data.convert.storygptv import StoryGPTVSource
from src.data.convert.storystream import StoryStreamSource

LAYOUTS: dict[str, type[Source]] = {
    "storygptv": StoryGPTVSource,
    "storydalle": StoryDalleSource,
    "storygan": StoryGANSource,
    "arldm": ARLDMSource,
    "storystream": StoryStreamSource,
}

# dataset name -> layouts it may come in, in detection order
CONVERTERS: dict[str, tuple[str, ...]] = {
    "flintstones": ("storygptv", "storydalle", "arldm"),
    "pororo": ("storygptv", "storygan", "arldm"),
    "storystream_george": ("storystream",),
}


def layouts_for(dataset: str) -> tuple[str, ...]:
    if dataset in CONVERTERS:
        return CONVERTERS[dataset]
    if dataset.startswith("storystream_"):  # the other StoryStream series share the layout
        return ("storystream",)
    raise ConversionError(f"no converter for dataset '{dataset}' (known: {', '.join(CONVERTERS)}, storystream_*)")


def detect_layout(dataset: str, source_dir) -> str:
    """The one layout of `dataset` whose marker files are in `source_dir`."""
    source_dir = Path(source_dir)
    if not source_dir.exists():
        raise ConversionError(f"source {source_dir} does not exist")
    matches = [name for name in layouts_for(dataset) if LAYOUTS[name].detect(source_dir)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConversionError(f"{source_dir}: no known {dataset} layout found (looked for {', '.join(layouts_for(dataset))}; "
                              "see data/README.md); pass --layout")
    raise ConversionError(f"{source_dir}: several layouts match ({', '.join(matches)}); pass --layout")


def convert(dataset: str, source_dir, out_dir, facts: dict, layout: str | None = None, options: dict | None = None,
            progress: bool = True, on_story: Callable[[str], None] | None = None) -> dict:
    """Convert `source_dir` (a release of `dataset`) into `out_dir`; returns the summary dict.

    `facts` holds the dataset's name, characters, genders, aliases and frames_per_story (from its data
    config); `options` the conversion choices (frame_choice, masks, chunk_frames, images, image_root,
    chars_dir, label_order, h5_channels). Resumable: re-running continues where it stopped.
    """
    layout = layout or detect_layout(dataset, source_dir)
    if layout not in layouts_for(dataset):
        raise ConversionError(f"layout '{layout}' is not one of {dataset}'s: {', '.join(layouts_for(dataset))}")
    options = {"frame_choice": "middle", **(options or {})}
    check_frame_choice(options["frame_choice"])
    missing = [n for n in facts["characters"] if n not in facts.get("genders", {})]
    if missing:
        raise ConversionError(f"characters without a gender in the data config: {missing}")
    source = LAYOUTS[layout](Path(source_dir), facts, options)
    recorded = {"dataset": dataset, "layout": layout, "source": str(Path(source_dir).resolve()),
                "frames_per_story": facts.get("frames_per_story"), **options}
    try:
        return Runner(source, out_dir, facts, recorded, progress=progress, on_story=on_story).run()
    finally:
        source.close()
