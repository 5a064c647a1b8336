"""Inputs for running diffusers' own examples/text_to_image/train_text_to_image.py beside
`bench.char_ldm_step --arch sd15` (bench/diffusers_reference.md):

  --out          a StableDiffusionPipeline folder (save_pretrained) with SD 1.5's architecture and random
                 weights from configs/bench/sd15.yaml, the same model `--arch sd15` builds, and the
                 tokenizer copied from the tiny stack (CLIP's vocabulary); usable as
                 --pretrained_model_name_or_path (no download).
  --imagefolder  a datasets "imagefolder" (PNG files + metadata.jsonl with file_name / text) of toy
                 train-split frames resized to --resolution with their captions, for --train_data_dir:
                 the frames and captions `bench.char_ldm_step` batches.

    python -m bench.make_random_sd15 --out outputs/bench/sd15-random --imagefolder outputs/bench/toy-imagefolder

The pipeline folder is about 4.3 GB (fp32 safetensors); building it takes a few minutes of CPU.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from bench.common import REPO, sd15_components, sd15_spec, toy_config


def save_random_sd15(out: Path, tiny_root: Path, seed: int = 0) -> Path:
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(seed)
    tokenizer_source = tiny_root / "stable-diffusion-v1-5"
    parts = sd15_components(tokenizer_source)
    pipeline = StableDiffusionPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"],
                                       tokenizer=parts["tokenizer"], unet=parts["unet"],
                                       scheduler=parts["noise_scheduler"], safety_checker=None,
                                       feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    pipeline.save_pretrained(out, safe_serialization=True)
    shutil.rmtree(out / "tokenizer")
    shutil.copytree(tokenizer_source / "tokenizer", out / "tokenizer")
    return out


def save_random_clip_vision(out: Path, seed: int = 0) -> Path:
    """A CLIPVisionModelWithProjection folder with CLIP ViT-L/14's vision tower (configs/bench/sd15.yaml
    `vision_encoder:`) and random weights: Char-LDM's `model.image_encoder` at real size (about 1.2 GB)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**sd15_spec()["vision_encoder"])).save_pretrained(out)
    return out


def write_imagefolder(out: Path, data_root: Path, num_images: int, resolution: int) -> Path:
    from PIL import Image

    from src.data.stories import read_split, resolve

    _, stories = read_split(data_root, "train")
    frames = [(story.images[k], story.captions[k]) for story in stories for k in range(story.num_frames)]
    if num_images > len(frames):
        raise ValueError(f"--num-images {num_images}: the train split of {data_root} has {len(frames)} frames")
    stride = len(frames) // num_images
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metadata.jsonl", "w") as meta:
        for i in range(num_images):
            rel, caption = frames[i * stride]
            name = f"{i:05d}.png"
            with Image.open(resolve(data_root, rel)) as image:
                image.convert("RGB").resize((resolution, resolution), Image.BICUBIC).save(out / name)
            meta.write(json.dumps({"file_name": name, "text": caption}) + "\n")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="pipeline folder to write (skipped if not given)")
    parser.add_argument("--imagefolder", type=Path, default=None, help="imagefolder to write (skipped if not given)")
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny-root", type=Path, default=REPO / "pretrained/tiny")
    parser.add_argument("--data", type=Path, default=REPO / "data/toy")
    args = parser.parse_args(argv)
    if args.out is None and args.imagefolder is None:
        parser.error("nothing to do: give --out and/or --imagefolder")
    for path in (args.out, args.imagefolder):
        if path is not None and path.exists():
            parser.error(f"{path} exists; remove it or choose another folder")
    toy_config([], args.tiny_root, args.data)  # builds the tiny stack (tokenizer) and the toy data if missing
    if args.imagefolder is not None:
        write_imagefolder(args.imagefolder, args.data, args.num_images, args.resolution)
        print(f"wrote {args.num_images} frames at {args.resolution} px + metadata.jsonl to {args.imagefolder}")
    if args.out is not None:
        save_random_sd15(args.out, args.tiny_root, args.seed)
        print(f"wrote SD 1.5 (random weights, configs/bench/sd15.yaml) to {args.out}")


if __name__ == "__main__":
    main()
