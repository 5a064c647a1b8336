"""StoryGPT-V stage-2 story inference (paper §3.2; released eval_llm.py, docs/storygpt_v_stage2.md).

Stories are drawn frame by frame from `data.caption_field` (the co-reference captions): for frame k the
LLM reads the frames it has already *generated* (not the ground truth) and the captions so far, emits the
[IMG] tokens (forced: R fixed tokens appended to the prompt, the same as greedy decoding with every
other token masked) and the mapper's output conditions Char-LDM. Frame 0 comes from Char-LDM on its
caption (`model.first_frame: char_ldm`, the released code) or from the LLM with no context (`llm`, the
paper). A frame whose caption holds a pronoun (its co-reference caption differs from the original) is
conditioned on the LLM output from step 0; the others start from the caption's text-only embedding and
switch at Char-LDM's `start_merge_step` (released rule).

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


def draw_frames(pipe, initial, final, null, merge_step: int, sample_cfg, image_size: int, generators):
    """Denoise with `initial` conditioning until step `merge_step`, `final` after (delayed conditioning)."""
    cfg_on = sample_cfg.guidance_scale > 1

    def switch(pipeline, i, t, tensors):
        if i + 1 == merge_step:
            return {"prompt_embeds": torch.cat([null, final]) if cfg_on else final}
        return {}
    return pipe(prompt_embeds=initial if merge_step > 0 else final, negative_prompt_embeds=null,
                height=image_size, width=image_size, num_inference_steps=sample_cfg.num_inference_steps,
                guidance_scale=sample_cfg.guidance_scale,
                guidance_rescale=sample_cfg.guidance_rescale, generator=generators, output_type="pil",
                callback_on_step_end=switch, callback_on_step_end_tensor_inputs=["prompt_embeds"]).images


@torch.no_grad()
def generate_stage2_stories(align, ldm, out_dir, split: str, num_stories: Optional[int] = None, seed: int = 0,
                            extra_meta: Optional[dict] = None, progress: bool = True) -> Path:
    """`align`: the AlignTask (LLM, mapper); `ldm`: the frozen Char-LDM task. Writes the generated-story
    layout; generation.json names both checkpoints."""
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
    merge = ldm.cfg.model.start_merge_step
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
                                               [list(c) for c in context])["conditioning"]
                text_states = ldm.encode_text(captions)
            conditioning = conditioning.to(text_states.dtype)
            # Pronoun frames: the text-only start knows no name, so the LLM output conditions from step 0.
            pronoun = torch.tensor([getattr(stories[i], field)[k] != stories[i].captions[k] for i in chunk],
                                   device=device)
            initial = torch.where(pronoun[:, None, None], conditioning, text_states)
            null = ldm.encode_text([""] * len(chunk))
            generators = [frame_generator(seed, i, k, device) for i in chunk]
            for i, image in zip(chunk, draw_frames(pipe, initial, conditioning, null, merge, s, size, generators)):
                images[(i, k)] = image
                frames_done.setdefault(i, []).append(_to_tensor(image))
            bar.update(len(chunk))
    bar.close()
    info = {"num_stories": len(stories), "caption_field": field, "seed": seed, "stage": 2,
            "num_inference_steps": s.num_inference_steps, "guidance_scale": s.guidance_scale,
            "guidance_rescale": s.guidance_rescale, "image_size": size,
            "dataset_root": str(cfg.data.root), "split": split, "scheduler": s.scheduler, "task": "align",
            "stage1_checkpoint": align._stage1.get("weights"), "first_frame": cfg.model.first_frame,
            "start_merge_step": merge, "pronoun_frames_fused_from_step": 0, **(extra_meta or {})}
    if "checkpoint" in info:
        info["stage2_checkpoint"] = info["checkpoint"]
    return write_stories(images, stories, Path(out_dir), field, info)
