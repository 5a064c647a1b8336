"""StoryGPT-V's drawing, one code path for every caller (docs/storygpt_v.md): a story file
(`bash scripts/story.sh`), the studio, a dataset split (src/generate.py, eval.sh) and a training run's
periodic samples all draw through `StoryGPTVPipeline`.

Char-LDM alone (paper §3.1): each caption's name tokens are fused with their characters' reference
embeddings; the first `start_merge_step` denoising steps use the text-only conditioning and the rest the
fused one (delayed conditioning, FastComposer). Without an image encoder the pipeline is the plain LDM.
With stage 2 (paper §3.2; the released eval_llm.py) frames are drawn in order: for frame k the LLM reads
the frames it has already drawn and the captions so far, and its mapper's output conditions Char-LDM.
Frame 0 comes from Char-LDM on its caption (`first_frame: char_ldm`, the release) or from the LLM with no
context (`llm`, the paper). A frame whose caption holds a pronoun is conditioned on the LLM output from
step 0 (the text-only start knows no name); the others start text-only and switch at the merge step.

Shapes: B frames drawn together, L=77 tokens, E conditioning width, R reference size, H frame size.
  references {name: [3,R,R] in [0,1]} -> ref_embeds {name: [E]}
  captions -> text_states, fused [B,L,E];  stage 2: conditioning [B,L,E];  -> images (PIL, H x H)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np
import torch

from src.models.char_conditioning import encode_captions, fuse_captions, sampling_slots
from src.pipelines.diffusion import frame_generator, make_scheduler, sd_pipeline

# Pronouns that make a caption a "pronoun frame" when no co-reference flag is given (a user's story).
PRONOUN = re.compile(r"\b(he|she|they|him|her|them|his|hers|their|theirs)\b", re.IGNORECASE)


@dataclass
class DrawSettings:
    scheduler: str = "PNDMScheduler"      # any diffusers scheduler class (sample.scheduler)
    num_inference_steps: int = 30
    guidance_scale: float = 5.0
    guidance_rescale: float = 0.0
    start_merge_step: int = 16            # text-only conditioning for this many steps, fused after
    batch_size: int = 16                  # frames drawn together (a dataset split's stories)
    pronoun_start_merge_step: int = 0     # stage 2's pronoun frames: text-only steps before the LLM output
    #                                       (the release: 1; its "start_merge_step=0" still runs step 0 text-only)

    @classmethod
    def from_config(cls, sample_cfg, start_merge_step: int = 0, pronoun_start_merge_step: int = 0) -> "DrawSettings":
        return cls(scheduler=sample_cfg.scheduler, num_inference_steps=sample_cfg.num_inference_steps,
                   guidance_scale=sample_cfg.guidance_scale, guidance_rescale=sample_cfg.guidance_rescale,
                   start_merge_step=start_merge_step, batch_size=sample_cfg.batch_size,
                   pronoun_start_merge_step=pronoun_start_merge_step)


@dataclass
class Frame:
    """One drawn frame and what conditioned it."""
    image: object                          # PIL image
    caption: str
    conditioning: str                      # "text" (plain LDM), "char_ldm" (fused names) or "stage2" (the LLM)
    fused: list[str] = field(default_factory=list)   # names fused into the caption's tokens
    pronoun_frame: bool = False            # stage 2: conditioned on the LLM from step 0

    def record(self) -> dict:
        return {"caption": self.caption, "conditioning": self.conditioning, "fused": self.fused,
                "pronoun_frame": self.pronoun_frame}


def to_pixels(image) -> torch.Tensor:
    """PIL -> [3,H,W] in [-1,1] (how the dataset gives frames; stage 2 reads the frames it drew)."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1


class StoryGPTVPipeline:
    """Components in, frames out. `image_encoder`, `fuse` and `name_patterns` make it Char-LDM (None: the
    plain LDM); `stage2` (src/models/storygptv_stage2.StoryConditioner) adds the LLM. `references`: the
    run's dataset references {name: [3,R,R]}, used for a character the caller gives no image of."""

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler_config: dict, image_size: int,
                 settings: DrawSettings, image_encoder=None, fuse=None, name_patterns=(), max_characters: int = 4,
                 references: Optional[dict] = None, stage2=None, first_frame: str = "char_ldm",
                 references_from: str = "the dataset", name_tokens: str = "ours", fuse_names: bool = True,
                 character_names: tuple = ()):
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.scheduler_config, self.image_size, self.settings = scheduler_config, image_size, settings
        self.image_encoder, self.fuse, self.name_patterns = image_encoder, fuse, name_patterns
        self.max_characters, self.references = max_characters, dict(references or {})
        self.references_from = references_from
        self.stage2, self.first_frame = stage2, first_frame
        # How name tokens are marked when drawing (src/models/char_conditioning.py sampling_slots).
        self.name_tokens, self.fuse_names, self.character_names = name_tokens, fuse_names, tuple(character_names)
        if stage2 is not None and image_encoder is None:
            raise ValueError("stage 2 conditions Char-LDM: the pipeline needs its image encoder and fuse module")

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def character_conditioning(self) -> bool:
        return self.image_encoder is not None

    # ---- conditioning ---------------------------------------------------------------------------------
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        return encode_captions(self.tokenizer, self.text_encoder, captions)

    @torch.no_grad()
    def reference_embeddings(self, characters: Optional[dict] = None) -> dict:
        """{name: [E]}: the given references ({name: image or [3,R,R] tensor}, see
        src/data/references.reference_from_image) over the run's dataset references."""
        from src.data.references import reference_from_image

        if not self.character_conditioning:
            return {}
        size = self.image_encoder.image_size
        refs = dict(self.references)
        for name, image in (characters or {}).items():
            refs[name] = reference_from_image(image, size)
        if not refs:
            return {}
        names = sorted(refs)
        device = self.image_encoder.visual_projection.weight.device
        return dict(zip(names, self.image_encoder(torch.stack([refs[n] for n in names]).to(device))))

    @torch.no_grad()
    def condition(self, captions: list[str], ref_embeds: dict) -> tuple[torch.Tensor, torch.Tensor, list]:
        """(text-only states, fused states [B,L,E], the names fused in each caption)."""
        text_states = self.encode_text(captions)
        if not self.character_conditioning:
            return text_states, text_states, [[] for _ in captions]
        def slots_of(caption):
            return sampling_slots(self.tokenizer, caption, self.name_patterns, self.max_characters,
                                  self.name_tokens, self.fuse_names, self.character_names)
        fused, names = fuse_captions(self.tokenizer, self.text_encoder, self.fuse, text_states, captions, ref_embeds,
                                     slots_of, release_ids=self.name_tokens == "release",
                                     where=f"{self.references_from}: ", hint=" (give that character a reference image)")
        return text_states, fused, names

    # ---- denoising ------------------------------------------------------------------------------------
    @torch.no_grad()
    def draw(self, text_states: torch.Tensor, final: torch.Tensor, generators: list, settings: DrawSettings,
             merge_steps, output_type: str = "pil", latents_out: Optional[list] = None) -> list:
        """Delayed conditioning (FastComposer; the released models/pipeline.py): frame b is denoised with
        `text_states[b]` for its first `merge_steps[b]` steps (an int: the same for every frame) and with
        `final[b]` after (0: `final` throughout), classifier-free guidance against the empty caption.
        Returns PIL images (output_type "latent" / "np": the final latents / float images); `latents_out`
        (a list) also receives the final latents [B,c,h,w]."""
        null = self.encode_text([""] * text_states.shape[0])
        cfg_on = settings.guidance_scale > 1
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
        pipe = sd_pipeline(self.unet, self.vae, self.text_encoder, self.tokenizer,
                           make_scheduler(settings.scheduler, self.scheduler_config))
        return pipe(prompt_embeds=conditioning(0), negative_prompt_embeds=null,
                    height=self.image_size, width=self.image_size, num_inference_steps=settings.num_inference_steps,
                    guidance_scale=settings.guidance_scale, guidance_rescale=settings.guidance_rescale,
                    generator=generators, output_type=output_type, callback_on_step_end=switch,
                    callback_on_step_end_tensor_inputs=["prompt_embeds", "latents"]).images

    def frame_drawer(self, ref_embeds: dict, settings: Optional[DrawSettings] = None,
                     output_type: str = "pil") -> Callable:
        """`draw(captions, generators) -> images` for Char-LDM alone (src/pipelines/story_sampler.py), also
        recording the names fused in each caption in `draw.fused`."""
        settings = settings or self.settings

        def draw(captions: list[str], generators: list) -> list:
            text_states, fused, names = self.condition(captions, ref_embeds)
            draw.fused.extend(names)
            return self.draw(text_states, fused, generators, settings, settings.start_merge_step, output_type)
        draw.fused = []
        return draw

    # ---- stage 2 ------------------------------------------------------------------------------------
    @torch.no_grad()
    def stage2_step(self, captions: list[list[str]], k: int, drawn: list[list[torch.Tensor]], pronoun: list[bool],
                    ref_embeds: dict, generators: list, settings: DrawSettings,
                    latents_out: Optional[list] = None) -> tuple[list, list]:
        """Frame k of several stories with stage 2: (images, the names fused where Char-LDM drew). A pronoun
        frame switches to the LLM's conditioning after `pronoun_start_merge_step` text-only steps, the
        others after `start_merge_step` (the released eval_llm.py)."""
        current = [story[k] for story in captions]
        if k == 0 and self.first_frame == "char_ldm":
            text_states, conditioning, names = self.condition(current, ref_embeds)
        else:
            tokens = [self.stage2.frame_tokens(torch.stack(frames).to(self.device)) if k else [] for frames in drawn]
            conditioning = self.stage2.condition(captions, [k] * len(captions), [list(t) for t in tokens],
                                                 inference=True)["conditioning"]
            text_states, names = self.encode_text(current), [[] for _ in current]
        conditioning = conditioning.to(text_states.dtype)
        merges = [settings.pronoun_start_merge_step if flag else settings.start_merge_step for flag in pronoun]
        return self.draw(text_states, conditioning, generators, settings, merges, latents_out=latents_out), names

    # ---- a story ------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, captions: list[str], characters: Optional[dict] = None, seed: int = 0,
                 settings: Optional[DrawSettings] = None, pronoun_frames: Optional[list[bool]] = None,
                 story_index: int = 0, on_frame: Optional[Callable] = None, **overrides) -> list[Frame]:
        """Draw one story. `characters`: {name: reference image} (a path, a PIL image of any size and
        mode, or a [3,H,W] tensor in [0,1]); a named character without one takes the run's dataset
        reference. `overrides` change `settings` (num_inference_steps=..., guidance_scale=...,
        start_merge_step=..., scheduler=...). Frame k starts from the noise of (seed, story_index, k), as
        the dataset path draws story `story_index` of a split. `pronoun_frames` (stage 2): which captions
        hold a pronoun; default: a he/she/they/him/her/them/his/their in the caption. `on_frame(k, frame)`
        is called as each frame is done (stage 2 draws them one by one)."""
        if not captions:
            raise ValueError("a story needs at least one caption")
        settings = replace(settings or self.settings, **overrides)
        ref_embeds = self.reference_embeddings(characters)
        generators = [frame_generator(seed, story_index, k, self.device) for k in range(len(captions))]
        frames: list[Frame] = []
        if self.stage2 is None:
            kind = "char_ldm" if self.character_conditioning else "text"
            for start in range(0, len(captions), settings.batch_size):
                chunk = captions[start:start + settings.batch_size]
                text_states, fused, names = self.condition(chunk, ref_embeds)
                images = self.draw(text_states, fused, generators[start:start + len(chunk)], settings,
                                   settings.start_merge_step)
                for caption, image, fused_names in zip(chunk, images, names):
                    frames.append(Frame(image, caption, kind, fused_names))
                    if on_frame is not None:
                        on_frame(len(frames) - 1, frames[-1])
            return frames
        flags = pronoun_frames if pronoun_frames is not None else [bool(PRONOUN.search(c)) for c in captions]
        if len(flags) != len(captions):
            raise ValueError(f"pronoun_frames has {len(flags)} entries for {len(captions)} captions")
        drawn: list[torch.Tensor] = []
        for k in range(len(captions)):
            images, names = self.stage2_step([captions], k, [drawn], [flags[k]], ref_embeds, [generators[k]], settings)
            by_llm = not (k == 0 and self.first_frame == "char_ldm")
            frames.append(Frame(images[0], captions[k], "stage2" if by_llm else "char_ldm", names[0], flags[k]))
            drawn.append(to_pixels(images[0]))
            if on_frame is not None:
                on_frame(k, frames[-1])
        return frames
