"""Baseline stage 1: text-conditioned Stable Diffusion fine-tuning of the UNet ("LDM" in StoryGPT-V's
tables, docs/storygpt_v.md). VAE and text encoder stay frozen; each frame is one training sample with its
caption. It runs the `char_ldm` recipes with `model.character_conditioning: false` (src/tasks/__init__.py),
and is the base class of Char-LDM.

Shapes: B batch, C=3 RGB, H×W frame, c latent channels, h×w latent size, L=77 tokens, D text width.
  pixel_values [B,3,H,W] in [-1,1] -> latents [B,c,h,w] -> noisy_latents [B,c,h,w]
  captions (B strings) -> encoder_hidden_states [B,L,D]
  model.cache_latents: moments [N,2c,h,w], text_states [N,L,D], null_states [1,L,D] of the N training frames
  model_pred, target [B,c,h,w]
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from src.data.datasets import FrameDataset, collate_frames
from src.data.stories import read_split
from src.models.char_conditioning import encode_captions
from src.models.pretrained import load_pretrained
from src.pipelines.diffusion import scheduler_config
from src.pipelines.story_sampler import generate_stories
from src.pipelines.storygptv import DrawSettings, StoryGPTVPipeline
from src.tasks.base import Task
from src.tasks.diffusion import DiffusionObjective, encode_latents
from src.tasks.frozen_cache import data_digest, encode_frames, fingerprint, load_or_build, module_digest, sample_latents


def load_sd_components(path: str) -> dict:
    """The Stable Diffusion parts a training task needs, from a diffusers pipeline folder."""
    return {
        "unet": load_pretrained(UNet2DConditionModel, path, subfolder="unet"),
        "vae": load_pretrained(AutoencoderKL, path, subfolder="vae"),
        "text_encoder": load_pretrained(CLIPTextModel, path, subfolder="text_encoder"),
        "tokenizer": load_pretrained(CLIPTokenizer, path, subfolder="tokenizer"),
        "noise_scheduler": DDPMScheduler.from_pretrained(path, subfolder="scheduler"),  # a config file only
    }


class LDMTask(Task):
    def __init__(self, cfg, components: Optional[dict] = None):
        """`components` (benchmarks) replaces loading from `model.pretrained`."""
        super().__init__(cfg)
        parts = components or load_sd_components(cfg.model.pretrained)
        self.unet, self.vae, self.text_encoder = parts["unet"], parts["vae"], parts["text_encoder"]
        self.tokenizer, self.noise_scheduler = parts["tokenizer"], parts["noise_scheduler"]
        self.objective = DiffusionObjective(self.noise_scheduler, cfg.model.noise_offset, cfg.model.snr_gamma,
                                            cfg.model.pretrained)
        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        if cfg.model.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        if cfg.model.channels_last:
            self.unet.to(memory_format=torch.channels_last)
        self.frozen_cache: Optional[dict] = None  # cache_latents: loaded or built at the first training step

    # ---- data -------------------------------------------------------------------------------------
    def train_dataset(self):
        return FrameDataset(self.cfg.data.root, "train", self.cfg.data.image_size,
                            caption_field=self.cfg.data.caption_field)

    def collate(self, items):
        return collate_frames(items)

    def example_batch(self, batch_size: int, device) -> dict:
        size = self.cfg.data.image_size
        return {"pixel_values": torch.zeros(batch_size, 3, size, size, device=device),
                "caption": [""] * batch_size}

    def conditioning_module(self):
        return self.text_encoder

    # ---- training ---------------------------------------------------------------------------------
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        return encode_captions(self.tokenizer, self.text_encoder, captions)

    def encode_latents(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return encode_latents(self.vae, pixel_values)

    # ---- frozen outputs, cached or not -------------------------------------------------------------
    def cache_folder(self) -> Path:
        """<cache_dir>/<fingerprint of the training split, frame size, caption field and frozen weights>."""
        d, m = self.cfg.data, self.cfg.model
        dataset = FrameDataset(d.root, "train", d.image_size, caption_field=d.caption_field)
        parts = {"data": data_digest(dataset), "image_size": d.image_size, "caption_field": d.caption_field,
                 "vae": module_digest(self.vae), "text_encoder": module_digest(self.text_encoder),
                 "tokenizer": [type(self.tokenizer).__name__, self.tokenizer.model_max_length,
                               sorted(self.tokenizer.get_vocab().items())]}
        return Path(m.cache_dir or Path(d.root) / ".cache" / "latents") / fingerprint(parts)

    @torch.no_grad()
    def build_frozen_cache(self, device) -> dict:
        """VAE posterior moments and caption states of every training frame (dataset order), and the empty
        caption's states."""
        d = self.cfg.data
        dataset = FrameDataset(d.root, "train", d.image_size, caption_field=d.caption_field)

        def encode(items):
            pixels = torch.stack([item["pixel_values"] for item in items]).to(device, self.vae.dtype)
            return {"moments": self.vae.encode(pixels).latent_dist.parameters,
                    "text_states": self.encode_text([item["caption"] for item in items])}
        return {**encode_frames(dataset, encode), "null_states": self.encode_text([""]).cpu()}

    def frozen_outputs(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(latents [B,c,h,w], text_states [B,L,D] of the captions, null_states [1,L,D] of the empty caption);
        from the on-disk cache when `model.cache_latents` is set."""
        pixels = batch["pixel_values"]
        if not self.cfg.model.cache_latents:
            latents = self.encode_latents(pixels)
            with torch.no_grad():
                return latents, self.encode_text(batch["caption"]), self.encode_text([""])
        if self.frozen_cache is None:
            self.frozen_cache = load_or_build(self.cache_folder(), lambda: self.build_frozen_cache(pixels.device))
        index, cache = batch["index"].cpu(), self.frozen_cache
        latents = sample_latents(cache["moments"][index].to(pixels.device), self.vae.config.scaling_factor)
        return (latents, cache["text_states"][index].to(pixels.device), cache["null_states"].to(pixels.device))

    def training_step(self, batch):
        latents, text_states, null_states = self.frozen_outputs(batch)
        drop = torch.rand(len(batch["caption"])) < self.cfg.model.caption_dropout
        encoder_hidden_states = torch.where(drop[:, None, None].to(text_states.device),
                                            null_states.expand_as(text_states), text_states)

        noise, timesteps, noisy_latents = self.objective.add_noise(latents)
        model_pred = self.denoise(noisy_latents, timesteps, encoder_hidden_states)
        target = self.objective.target(latents, noise, timesteps)
        return {"loss": self.objective.loss(model_pred, target, timesteps)}

    def denoise(self, noisy_latents, timesteps, encoder_hidden_states):
        """The UNet's prediction. Inputs go in the UNet's own dtype: under autocast that is fp32 (a no-op), under
        DeepSpeed bf16 the whole UNet is bf16 and takes no autocast, so fp32 latents must be cast."""
        dtype = self.unet.dtype
        return self.unet(noisy_latents.to(dtype), timesteps, encoder_hidden_states.to(dtype)).sample

    # ---- sampling (src/pipelines/storygptv.py) ------------------------------------------------------
    def pipeline(self, settings: Optional[DrawSettings] = None, **parts) -> StoryGPTVPipeline:
        """The drawing pipeline over this task's models (the plain LDM; Char-LDM adds its character parts;
        stage 2 adds `stage2=` and `first_frame=`). `settings`: default the run's sample section."""
        settings = settings or DrawSettings.from_config(self.cfg.sample, self.start_merge_step())
        return StoryGPTVPipeline(self.unet, self.vae, self.text_encoder, self.tokenizer,
                                 scheduler_config(self.cfg.model.pretrained), self.cfg.data.image_size, settings,
                                 **{**self.character_parts(), **parts})

    def start_merge_step(self) -> int:
        return 0  # the plain LDM has no fused conditioning to switch to

    def character_parts(self) -> dict:
        return {}

    def generation_meta(self) -> dict:
        """Task facts recorded in the samples' generation.json."""
        return {"task": "ldm"}

    @torch.no_grad()
    def sample(self, out_dir: Path, split: str, num_stories: Optional[int] = None, seed: Optional[int] = None,
               extra_meta: Optional[dict] = None) -> Path:
        stories = read_split(self.cfg.data.root, split)[1]
        if num_stories:
            stories = stories[:num_stories]
        held = self.frozen_dtype
        if held is None:  # nothing lowered (fp32 run, or DeepSpeed, which owns every parameter's dtype)
            return self._generate(stories, out_dir, split, seed, extra_meta)
        self.hold_frozen_in(None)  # sample in fp32 outside autocast, as generate does; back after
        try:
            return self._generate(stories, out_dir, split, seed, extra_meta)
        finally:
            self.hold_frozen_in(held)

    def _generate(self, stories, out_dir: Path, split: str, seed: Optional[int], extra_meta: Optional[dict]) -> Path:
        s = self.cfg.sample
        pipe = self.pipeline()
        return generate_stories(
            pipe.frame_drawer(pipe.reference_embeddings()), stories, out_dir, caption_field=self.cfg.data.caption_field,
            device=pipe.device, seed=s.seed if seed is None else seed, num_inference_steps=s.num_inference_steps,
            guidance_scale=s.guidance_scale, batch_size=s.batch_size, image_size=self.cfg.data.image_size,
            meta={"dataset_root": str(self.cfg.data.root), "split": split, "scheduler": s.scheduler,
                  "guidance_rescale": s.guidance_rescale,
                  **self.generation_meta(), **(extra_meta or {})})
