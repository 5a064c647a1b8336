"""A dataset split's stories drawn into the generated-story layout (docs/story_format.md, "Generated
stories"): every frame of every story, in batches, through a pipeline's `draw(captions, generators)`
(src/pipelines/storygptv.py), or frame by frame with StoryGPT-V's stage 2.

Each frame's starting noise comes from its own generator seeded by (seed, story position, frame)
(src/pipelines/diffusion.py), so a frame's image does not depend on how many stories are drawn.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import torch
from PIL import Image
from tqdm.auto import tqdm

from src.pipelines.diffusion import frame_generator
from src.pipelines.storygptv import to_pixels


def write_grid(rows: list[list[Image.Image]], path: Path) -> None:
    """Stories as rows, frames as columns (a quick look; reports are eval/report.py's job)."""
    width, height = rows[0][0].size
    grid = Image.new("RGB", (width * max(len(r) for r in rows), height * len(rows)), "white")
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            grid.paste(image, (j * width, i * height))
    grid.save(path)


@torch.no_grad()
def generate_stories(draw: Callable, stories, out_dir, caption_field: str = "captions", seed: int = 0,
                     num_inference_steps: int = 30, guidance_scale: float = 5.0, batch_size: int = 16,
                     image_size: int = 512, meta: Optional[dict] = None, progress: bool = True,
                     device="cpu") -> Path:
    """`draw(captions, generators) -> PIL images` draws one batch of frames (StoryGPTVPipeline.frame_drawer);
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


@torch.no_grad()
def generate_stage2_stories(pipeline, stories, out_dir, caption_field: str, seed: int = 0, meta: Optional[dict] = None,
                            progress: bool = True, latents_out: Optional[dict] = None) -> Path:
    """StoryGPT-V stage 2 over a split (the released eval_llm.py): frame k of every story in batches of
    the pipeline's `batch_size`, each story's LLM reading the frames drawn for it so far. Captions come
    from `caption_field` (the co-reference captions); a frame is a pronoun frame where they differ from
    the original captions. Writes the generated-story layout; generation.json records `meta`. `latents_out`
    (a dict) receives each frame's final latents [c,h,w] under (story index, frame) (the parity tool)."""
    settings = pipeline.settings
    for story in stories:
        if getattr(story, caption_field) is None:
            raise ValueError(f"story '{story.id}' has no '{caption_field}'")
    ref_embeds = pipeline.reference_embeddings()
    images, drawn = {}, {}
    bar = tqdm(total=sum(st.num_frames for st in stories), desc="stage-2 frames", disable=not progress,
               dynamic_ncols=True)
    for k in range(max((st.num_frames for st in stories), default=0)):
        jobs = [i for i, st in enumerate(stories) if st.num_frames > k]
        for start in range(0, len(jobs), settings.batch_size):
            chunk = jobs[start:start + settings.batch_size]
            captions = [getattr(stories[i], caption_field) for i in chunk]
            pronoun = [getattr(stories[i], caption_field)[k] != stories[i].captions[k] for i in chunk]
            generators = [frame_generator(seed, i, k, pipeline.device) for i in chunk]
            drawn_so_far = [drawn.get(i, []) for i in chunk]
            final = [] if latents_out is not None else None
            frames, _ = pipeline.stage2_step(captions, k, drawn_so_far, pronoun, ref_embeds, generators, settings,
                                             latents_out=final)
            for j, (i, image) in enumerate(zip(chunk, frames)):
                images[(i, k)] = image
                drawn.setdefault(i, []).append(to_pixels(image))
                if final is not None:
                    latents_out[(i, k)] = final[0][j]
            bar.update(len(chunk))
    bar.close()
    s = settings
    info = {"num_stories": len(stories), "caption_field": caption_field, "seed": seed, "stage": 2,
            "num_inference_steps": s.num_inference_steps, "guidance_scale": s.guidance_scale,
            "guidance_rescale": s.guidance_rescale, "image_size": pipeline.image_size, "scheduler": s.scheduler,
            "first_frame": pipeline.first_frame, "start_merge_step": s.start_merge_step,
            "pronoun_frames_fused_from_step": s.pronoun_start_merge_step, **(meta or {})}
    return write_stories(images, stories, Path(out_dir), caption_field, info)
