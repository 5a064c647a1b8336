"""StoryGPT-V stage-2 story inference (paper §3.2; released eval_llm.py, docs/storygpt_v_stage2.md).

Stories are drawn frame by frame from `data.caption_field` (the co-reference captions): for frame k the
LLM reads the frames it has already *generated* (not the ground truth) and the captions so far, emits the
[IMG] tokens (forced: R fixed tokens appended to the prompt, the same as greedy decoding with every
other token masked) and the mapper's output conditions Char-LDM. Frame 0 comes from Char-LDM on its
caption (`model.first_frame: char_ldm`, the released code) or from the LLM with no context (`llm`, the
paper). A frame whose caption holds a pronoun (its co-reference caption differs from the original) is
conditioned on the LLM output from step `model.pronoun_start_merge_step` (0: the first step; the
release: 1); the others start from the caption's text-only embedding and switch at Char-LDM's
`start_merge_step` (released rule).

Shapes: B frames drawn together, L=77, E conditioning width, H frame size.
  conditioning, text_states, null [B,L,E] -> images (PIL, H x H)
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from src.data.stories import read_split
from src.pipelines.story_sampler import build_sd_pipeline, frame_generator, write_stories


def _to_tensor(image) -> torch.Tensor:
    """PIL -> [3,H,W] in [-1,1] (how the dataset gives frames)."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1


def draw_frames(pipe, text_states, final, null, merge_steps, sample_cfg, image_size: int, generators,
                output_type: str = "pil", latents_out: Optional[list] = None):
    """Delayed conditioning: frame b is denoised with `text_states[b]` for its first `merge_steps[b]` steps
    (an int: the same for every frame) and with `final[b]` after; 0 = `final` from the first step.
    Returns the pipeline's images (PIL, or the final latents [B,c,h,w] with output_type "latent");
    `latents_out` (a list) also receives the final latents."""
    cfg_on = sample_cfg.guidance_scale > 1
    merge = torch.as_tensor(merge_steps, device=final.device).expand(final.shape[0])

    def conditioning(steps_done: int) -> torch.Tensor:
        return torch.where((merge <= steps_done)[:, None, None], final, text_states)

    def switch(pipeline, i, t, tensors):
        if latents_out is not None and i == pipeline.num_timesteps - 1:
            latents_out.append(tensors["latents"])
        if bool((merge == i + 1).any()):
            states = conditioning(i + 1)
            return {"prompt_embeds": torch.cat([null, states]) if cfg_on else states}
        return {}
    return pipe(prompt_embeds=conditioning(0), negative_prompt_embeds=null,
                height=image_size, width=image_size, num_inference_steps=sample_cfg.num_inference_steps,
                guidance_scale=sample_cfg.guidance_scale,
                guidance_rescale=sample_cfg.guidance_rescale, generator=generators, output_type=output_type,
                callback_on_step_end=switch,
                callback_on_step_end_tensor_inputs=["prompt_embeds", "latents"]).images


@torch.no_grad()
def generate_stage2_stories(align, ldm, out_dir, split: str, num_stories: Optional[int] = None, seed: int = 0,
                            extra_meta: Optional[dict] = None, progress: bool = True,
                            latents_out: Optional[dict] = None) -> Path:
    """`align`: the AlignTask (LLM, mapper); `ldm`: the frozen Char-LDM task. Writes the generated-story
    layout; generation.json names both checkpoints. `latents_out` (a dict) receives each frame's final
    latents [c,h,w] under (story index, frame) (the parity tool compares them with the release's)."""
    cfg, s = align.cfg, align.cfg.sample
    field = cfg.data.caption_field
    stories = read_split(cfg.data.root, split)[1]
    if num_stories:
        stories = stories[:num_stories]
    for story in stories:
        if getattr(story, field) is None:
            raise ValueError(f"{cfg.data.root}/{split}.jsonl: story '{story.id}' has no '{field}'")
    pipe = build_sd_pipeline(ldm.unet, ldm.vae, ldm.text_encoder, ldm.tokenizer, ldm.cfg.model.pretrained,
                             s.scheduler)
    device = pipe.device
    ref_embeds = ldm.reference_embeddings()
    merge, pronoun_merge = ldm.cfg.model.start_merge_step, cfg.model.pronoun_start_merge_step
    size = ldm.cfg.data.image_size
    images, frames_done = {}, {}
    bar = tqdm(total=sum(st.num_frames for st in stories), desc="stage-2 frames", disable=not progress,
               dynamic_ncols=True)
    for k in range(max((st.num_frames for st in stories), default=0)):
        jobs = [i for i, st in enumerate(stories) if st.num_frames > k]
        for start in range(0, len(jobs), s.batch_size):
            chunk = jobs[start:start + s.batch_size]
            captions = [getattr(stories[i], field)[k] for i in chunk]
            if k == 0 and cfg.model.first_frame == "char_ldm":
                text_states, conditioning = ldm.condition(captions, ref_embeds)
            else:
                context = [align.frame_tokens(torch.stack(frames_done[i]).to(device)) if k else [] for i in chunk]
                conditioning = align.condition([getattr(stories[i], field) for i in chunk], [k] * len(chunk),
                                               [list(c) for c in context], inference=True)["conditioning"]
                text_states = ldm.encode_text(captions)
            conditioning = conditioning.to(text_states.dtype)
            # Pronoun frames: the text-only start knows no name, so the LLM output conditions from step
            # model.pronoun_start_merge_step (0: the first; the release's "0" runs one text-only step: 1).
            merges = [pronoun_merge if getattr(stories[i], field)[k] != stories[i].captions[k] else merge
                      for i in chunk]
            null = ldm.encode_text([""] * len(chunk))
            generators = [frame_generator(seed, i, k, device) for i in chunk]
            drawn = [] if latents_out is not None else None
            frames = draw_frames(pipe, text_states, conditioning, null, merges, s, size, generators, latents_out=drawn)
            for j, (i, image) in enumerate(zip(chunk, frames)):
                images[(i, k)] = image
                frames_done.setdefault(i, []).append(_to_tensor(image))
                if drawn is not None:
                    latents_out[(i, k)] = drawn[0][j]
            bar.update(len(chunk))
    bar.close()
    info = {"num_stories": len(stories), "caption_field": field, "seed": seed, "stage": 2,
            "num_inference_steps": s.num_inference_steps, "guidance_scale": s.guidance_scale,
            "guidance_rescale": s.guidance_rescale, "image_size": size,
            "dataset_root": str(cfg.data.root), "split": split, "scheduler": s.scheduler, "task": "align",
            "stage1_checkpoint": align._stage1.get("weights"), "first_frame": cfg.model.first_frame,
            "start_merge_step": merge, "pronoun_frames_fused_from_step": pronoun_merge, **(extra_meta or {})}
    if "checkpoint" in info:
        info["stage2_checkpoint"] = info["checkpoint"]
    return write_stories(images, stories, Path(out_dir), field, info)
