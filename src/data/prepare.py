"""Convert a public dataset release into the story format.

    python -m src.data.prepare DATASET SOURCE_DIR [--out data/DATASET] [--layout LAYOUT] [options]

DATASET is flintstones, pororo or storystream_george (facts come from configs/data/DATASET.yaml);
the layout of SOURCE_DIR is detected unless --layout is given. Resumable and idempotent; prints a
summary and writes it to OUT/conversion.json. Exit status: 0 done, 1 done but items were skipped and
--strict was given, 2 the conversion could not run (one line on stderr naming the file at fault;
--debug shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.data.convert import LAYOUTS, ConversionError, convert
from src.data.convert.runner import format_summary
from src.errors import run_entry

FACT_KEYS = ("name", "characters", "genders", "aliases", "frames_per_story")


def load_facts(config_path: Path, dataset: str) -> tuple[dict, dict]:
    """(dataset facts, config defaults for options) from a configs/data/*.yaml file, validated against
    the run-config schema's `data:` section (src/config.py DataConfig)."""
    from omegaconf import OmegaConf

    from src.config import DataConfig, merge_onto_schema, read_yaml

    if not config_path.is_file():
        raise ConversionError(f"{config_path}: missing data config for '{dataset}' (pass --config)")
    config = read_yaml(config_path)
    config = config.get("data", config)  # a run config nests the data block under `data:`
    data = OmegaConf.to_container(merge_onto_schema(OmegaConf.structured(DataConfig), str(config_path), config))
    facts = {key: data[key] for key in FACT_KEYS}
    defaults = {k: config[k] for k in ("frame_choice", "chunk_frames") if k in config}
    return facts, defaults


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.data.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("source_dir", type=Path)
    parser.add_argument("--out", type=Path, help="output folder (default data/DATASET)")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), help="source layout (default: detected)")
    parser.add_argument("--config", type=Path, help="data config (default configs/data/DATASET.yaml)")
    parser.add_argument("--frame-choice", help="frame kept from each clip: middle (default), first, last or an index")
    parser.add_argument("--frames-per-story", type=int, help="frames per story (default from the config)")
    parser.add_argument("--chunk-frames", type=int, help="StoryStream: frames per chunk, 0 = no chunking (default 10)")
    parser.add_argument("--images", choices=("link", "copy"), default="link", help="StoryStream: link or copy the frames")
    parser.add_argument("--image-root", type=Path, help="StoryStream: folder the image paths are relative to")
    parser.add_argument("--chars-dir", type=Path, help="StoryGPT-V: folder of character portraits (default SOURCE/../chars)")
    parser.add_argument("--no-masks", action="store_true", help="StoryGPT-V: do not convert the segmentation masks")
    parser.add_argument("--label-order", help="StoryGAN Pororo: comma-separated order of the labels.npy entries")
    parser.add_argument("--h5-channels", choices=("bgr", "rgb"), default="bgr", help="ARLDM HDF5: channel order of the PNGs")
    parser.add_argument("--strict", action="store_true", help="exit 1 when anything was skipped")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    facts, defaults = load_facts(args.config or Path("configs/data") / f"{args.dataset}.yaml", args.dataset)
    if args.frames_per_story is not None:
        facts["frames_per_story"] = args.frames_per_story
    options = {"frame_choice": args.frame_choice or defaults.get("frame_choice", "middle")}
    layout = args.layout
    if args.dataset.startswith("storystream") or layout == "storystream":
        facts["frames_per_story"] = None  # chunks keep their remainder, so story lengths vary
        options.update(chunk_frames=args.chunk_frames if args.chunk_frames is not None else defaults.get("chunk_frames", 10),
                       images=args.images, image_root=str(args.image_root) if args.image_root else None)
    else:
        if facts["frames_per_story"] is None:
            raise ConversionError(f"frames_per_story is not set in the data config of {args.dataset}")
        options.update(masks=not args.no_masks, h5_channels=args.h5_channels,
                       chars_dir=str(args.chars_dir) if args.chars_dir else None,
                       label_order=args.label_order.split(",") if args.label_order else None)
    out = args.out or Path("data") / args.dataset
    summary = convert(args.dataset, args.source_dir, out, facts, layout=layout, options=options,
                      progress=not args.quiet)
    print(format_summary(summary, out))
    return 1 if args.strict and summary["skipped"] else 0


if __name__ == "__main__":
    sys.exit(run_entry(main))
