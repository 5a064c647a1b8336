"""Draw every frame of a list of stories with a text-to-image pipeline and write the generated-story
layout (docs/story_format.md, "Generated stories").

Each frame's starting noise comes from its own generator seeded by (seed, story position, frame), so a
frame's image does not depend on the batch it was drawn in or on how many stories are drawn.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Callable, Optional

import diffusers
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from tqdm.auto import tqdm


def make_scheduler(name: str, config_source):
    """Any diffusers scheduler class by name, configured from the pipeline's scheduler config."""
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"key 'sample.scheduler': '{name}' is not a diffusers scheduler class")
    config = dict(config_source)
    accepted = inspect.signature(cls.__init__).parameters
    if config.get("rescale_betas_zero_snr") and "rescale_betas_zero_snr" not in accepted:
        # it would sample with other betas than the model was trained on (docs/char_ldm.md, "Noise schedule")
        raise ValueError(f"key 'sample.scheduler': {name} has no zero-terminal-SNR option, but the model's scheduler "
                         "config rescales its betas to zero SNR; use DPMSolverMultistepScheduler, DDIMScheduler, "
                         "DDPMScheduler or EulerDiscreteScheduler")
    if "skip_prk_steps" in accepted:  # a config from another class (e.g. DDIM) lacks it; SD 1.5 skips them
        config.setdefault("skip_prk_steps", True)
    return cls.from_config(config)


def build_sd_pipeline(unet, vae, text_encoder, tokenizer, pretrained: str, scheduler: str):
    from diffusers import DDPMScheduler

    base = DDPMScheduler.load_config(pretrained, subfolder="scheduler")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=make_scheduler(scheduler, base), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def frame_generator(seed: int, story_index: int, frame: int, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + story_index * 1009 + frame)


def write_grid(rows: list[list[Image.Image]], path: Path) -> None:
    """Stories as rows, frames as columns (a quick look; reports are eval/report.py's job)."""
    width, height = rows[0][0].size
    grid = Image.new("RGB", (width * max(len(r) for r in rows), height * len(rows)), "white")
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            grid.paste(image, (j * width, i * height))
    grid.save(path)


def prompt_drawer(pipe, num_inference_steps: int, guidance_scale: float, image_size: int,
                  guidance_rescale: float = 0.0):
    """`draw` for generate_stories: the pipeline straight from the captions (the baseline LDM)."""
    def draw(captions: list[str], generators: list[torch.Generator]) -> list[Image.Image]:
        return pipe(captions, height=image_size, width=image_size, num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, generator=generators,
                    output_type="pil").images
    return draw


@torch.no_grad()
def generate_stories(draw: Callable, stories, out_dir, caption_field: str = "captions", seed: int = 0,
                     num_inference_steps: int = 30, guidance_scale: float = 5.0, batch_size: int = 16,
                     image_size: int = 512, meta: Optional[dict] = None, progress: bool = True,
                     device="cpu") -> Path:
    """`draw(captions, generators) -> PIL images` draws one batch of frames (see prompt_drawer);
    the sampling settings given here are recorded in generation.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = []  # (story index, frame, caption)
    for i, story in enumerate(stories):
        captions = getattr(story, caption_field)
        if captions is None:
            raise ValueError(f"story {story.id}: has no '{caption_field}' to generate from")
        jobs += [(i, k, caption) for k, caption in enumerate(captions)]
    images: dict[tuple[int, int], Image.Image] = {}
    bar = tqdm(total=len(jobs), desc="sampling frames", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        generators = [frame_generator(seed, i, k, device) for i, k, _ in chunk]
        for (i, k, _), image in zip(chunk, draw([c for _, _, c in chunk], generators)):
            images[(i, k)] = image
        bar.update(len(chunk))
    bar.close()
    info = {"num_stories": len(stories), "caption_field": caption_field, "seed": seed,
            "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
            "image_size": image_size, **(meta or {})}
    return write_stories(images, stories, out_dir, caption_field, info)


def write_stories(images: dict, stories, out_dir: Path, caption_field: str, info: dict) -> Path:
    """`images[(story index, frame)]` -> the generated-story layout: <id>/<k>.png, stories.jsonl,
    generation.json (`info`) and grid.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines, rows = [], []
    for i, story in enumerate(stories):
        (out_dir / story.id).mkdir(exist_ok=True)
        frames = [images[(i, k)] for k in range(story.num_frames)]
        paths = []
        for k, image in enumerate(frames):
            image.save(out_dir / story.id / f"{k}.png")
            paths.append(f"{story.id}/{k}.png")
        line = {"id": story.id, "images": paths, "captions": list(getattr(story, caption_field))}
        for extra in ("characters", "backgrounds"):
            if getattr(story, extra) is not None:
                line[extra] = getattr(story, extra)
        lines.append(json.dumps(line))
        rows.append(frames)
    (out_dir / "stories.jsonl").write_text("\n".join(lines) + "\n")
    (out_dir / "generation.json").write_text(json.dumps(info, indent=2))
    if rows:
        write_grid(rows, out_dir / "grid.png")
    return out_dir
