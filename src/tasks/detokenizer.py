"""SEED-Story stage 1: pre-train the de-tokenizer to draw a frame back from its own visual-tokenizer
features (SEED-Story §3.1 stage 1; SEED-X §3.1). Ground-truth features of the frame condition an SDXL
UNet through ResamplerXL; the target is the frame's VAE latent, ε-prediction MSE under DDPM noise.
SEED-X never released this stage's training code; the recipe follows its paper and the released
adaptation stage (same loss, same trainable-module choices).

What trains (`model.train_unet`): the resampler always; the UNet fully ("full"), only every attention's
to_k/to_v ("to_kv", the released adaptation stage's choice), or not at all ("none"). The VAE and the
tokenizer are frozen.

Shapes: B batch, S frame size, L feature tokens, E feature width, c/h/w latent channels and size.
  pixel_values [B,3,S,S] in [-1,1] -> features [B,L,E] (frozen tokenizer), latents [B,c,h,w] (frozen VAE)
  time_ids [B,6] = original (h, w) + crop (top, left) + target (S, S)
  model_pred, target [B,c,h,w]
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from src.data.datasets import FrameDataset, collate_frames
from src.data.stories import Story, read_split
from src.data.transforms import image_size, story_file, story_frame
from src.models.detokenizer import NUM_TIME_IDS, TRAINABLE_UNET, Detokenizer, load_detokenizer, sdxl_time_ids
from src.models.pretrained import load_pretrained
from src.models.resamplers import NORMALIZE_MODES, ResamplerXL
from src.models.visual_tokenizer import build_visual_tokenizer
from src.pipelines.diffusion import frame_generator, scheduler_config
from src.pipelines.seed_story import DetokenizerSettings, SeedStoryPipeline
from src.pipelines.story_sampler import write_stories
from src.tasks.base import Task
from src.tasks.diffusion import DiffusionObjective, encode_latents
from src.tasks.frozen_cache import encode_frames, sample_latents


def stored_frame_time_ids(root, story: Story, k: int, size: int) -> torch.Tensor:
    """SDXL time ids [6] of `story`'s stored frame k drawn at `size`: its (h, w) as original size, no crop
    (frames are resized whole to the square training size), target (size, size)."""
    height, width = story_file(root, story, "images", k, image_size)  # the header only
    return torch.tensor(sdxl_time_ids((height, width), (0, 0), (size, size)), dtype=torch.float32)


class DetokenizerFrames(FrameDataset):
    """Frames with SDXL time ids (stored_frame_time_ids)."""

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        s, k = self.index[i]
        item["time_ids"] = stored_frame_time_ids(self.data.root, self.stories[s], k, self.data.image_size)
        return item


class DetokenizerTask(Task):
    """The denoising objective (src/tasks/diffusion.py) is the one Char-LDM trains with."""
    model_choices = {"train_unet": TRAINABLE_UNET, "normalize": NORMALIZE_MODES}

    def __init__(self, cfg):
        super().__init__(cfg)
        m = cfg.model
        self.vae = load_pretrained(AutoencoderKL, m.pretrained, subfolder="vae").requires_grad_(False)
        self.noise_scheduler = DDPMScheduler.from_pretrained(m.pretrained, subfolder="scheduler")
        self.objective = DiffusionObjective(self.noise_scheduler, m.noise_offset, m.snr_gamma, m.pretrained)
        self.visual_tokenizer = build_visual_tokenizer(m.tokenizer, m.tokenizer_path, m.tokenizer_arch)
        unet = load_pretrained(UNet2DConditionModel, m.pretrained, subfolder="unet")
        if m.init_weights:
            self.detokenizer = load_detokenizer(unet, m.init_weights)
        else:
            pooled = unet.config.projection_class_embeddings_input_dim - NUM_TIME_IDS * unet.config.addition_time_embed_dim
            feature_dim = self.visual_tokenizer.empty_features(1).shape[-1]
            self.detokenizer = Detokenizer(unet, ResamplerXL(
                input_dim=feature_dim, dim=m.resampler_dim, depth=m.resampler_depth, dim_head=m.resampler_dim_head,
                heads=m.resampler_heads, num_latents=m.resampler_latents,
                output1_dim=unet.config.cross_attention_dim - pooled, output2_dim=pooled,
                ff_mult=m.resampler_ff_mult, normalize=m.normalize))
        self.detokenizer.set_trainable(m.train_unet)
        if m.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.frozen_cache: Optional[dict] = None  # cache_frozen: built at the first training step

    # ---- data -------------------------------------------------------------------------------------
    def train_dataset(self):
        return DetokenizerFrames(self.cfg.data.root, "train", self.cfg.data.image_size)

    def collate(self, items):
        return collate_frames(items)

    # ---- shape check (src/tools/shape_check.py) -----------------------------------------------------
    def example_batch(self, batch_size: int, device) -> dict:
        """Frames at data.image_size and their SDXL time ids (stored at that size, no crop), as
        DetokenizerFrames + collate_frames give them."""
        if self.cfg.model.cache_frozen:
            raise ValueError("key 'model.cache_frozen': the frozen cache encodes the dataset; the shape check "
                             "runs with model.cache_frozen=false")
        size = self.cfg.data.image_size
        time_ids = torch.tensor(sdxl_time_ids((size, size), (0, 0), (size, size)), dtype=torch.float32)
        return {"pixel_values": torch.zeros(batch_size, 3, size, size, device=device),
                "time_ids": time_ids.to(device).expand(batch_size, -1).clone()}

    def conditioning_module(self):
        """ResamplerXL: encoder_hidden_states [B,Q,D1+D2] and the pooled embedding [B,D2]."""
        return self.detokenizer.resampler

    # ---- training ---------------------------------------------------------------------------------
    def encode_latents(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return encode_latents(self.vae, pixel_values)

    def drop_condition(self, features: torch.Tensor, drop_prob: float) -> torch.Tensor:
        """With probability `drop_prob` a frame's features become the empty image's."""
        if drop_prob > 0:
            drop = torch.rand(features.shape[0], device=features.device) < drop_prob
            if drop.any():
                empty = self.visual_tokenizer.empty_features(1).to(features.dtype)
                features = torch.where(drop[:, None, None], empty, features)
        return features

    @torch.no_grad()
    def build_frozen_cache(self, device) -> dict:
        """Tokenizer features and VAE posterior moments of every training frame, in dataset order."""
        def encode(items):
            frames = torch.stack([item["pixel_values"] for item in items]).to(device)
            return {"features": self.visual_tokenizer(frames),
                    "moments": self.vae.encode(frames.to(self.vae.dtype)).latent_dist.parameters}
        return encode_frames(self.train_dataset(), encode)

    def frozen_outputs(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents, features) of the batch's frames; from the cache when `model.cache_frozen` is set,
        where the latent is drawn from the cached posterior exactly as encode_latents draws it."""
        pixels = batch["pixel_values"]
        if not self.cfg.model.cache_frozen:
            return self.encode_latents(pixels), self.visual_tokenizer(pixels)
        if self.frozen_cache is None:
            self.frozen_cache = self.build_frozen_cache(pixels.device)
        index = batch["index"].cpu()
        latents = sample_latents(self.frozen_cache["moments"][index].to(pixels.device), self.vae.config.scaling_factor)
        return latents, self.frozen_cache["features"][index].to(pixels.device)

    def training_step(self, batch):
        latents, features = self.frozen_outputs(batch)
        features = self.drop_condition(features, self.cfg.model.uncond_prob)
        noise, timesteps, noisy_latents = self.objective.add_noise(latents)
        model_pred = self.detokenizer(noisy_latents, timesteps, features, batch["time_ids"])
        target = self.objective.target(latents, noise, timesteps)
        return {"loss": self.objective.loss(model_pred, target, timesteps)}

    # ---- sampling: reconstructions (src/pipelines/seed_story.py) --------------------------------------
    def pipeline(self, **parts) -> SeedStoryPipeline:
        """The drawing pipeline over this de-tokenizer (a story_sft task's `writer_parts()` to write with it)."""
        return SeedStoryPipeline(self.detokenizer, self.vae, self.visual_tokenizer, scheduler_config(self.cfg.model.pretrained),
                                 self.cfg.data.image_size, DetokenizerSettings.from_config(self.cfg.sample), **parts)

    @torch.no_grad()
    def sample(self, out_dir: Path, split: str, num_stories: Optional[int] = None, seed: Optional[int] = None,
               extra_meta: Optional[dict] = None) -> Path:
        """Encode every frame of `split`'s stories and draw it back (CFG against the empty image's
        features) into the generated-story layout."""
        root, size, s = self.cfg.data.root, self.cfg.data.image_size, self.cfg.sample
        seed = s.seed if seed is None else seed
        stories = read_split(root, split)[1][:num_stories or None]
        pipe = self.pipeline()
        jobs = [(i, k) for i, story in enumerate(stories) for k in range(story.num_frames)]
        images = {}
        for start in range(0, len(jobs), s.batch_size):
            chunk = jobs[start:start + s.batch_size]
            frames = torch.stack([story_frame(root, stories[i], k, size) for i, k in chunk])
            drawn = pipe.draw_features(list(pipe.features_of(frames)),
                                       [frame_generator(seed, i, k, pipe.device) for i, k in chunk])
            images.update(zip(chunk, drawn))
        info = {"num_stories": len(stories), "caption_field": "captions", "seed": seed, "task": "detokenizer",
                "num_inference_steps": s.num_inference_steps, "guidance_scale": s.guidance_scale,
                "scheduler": s.scheduler, "image_size": size, "dataset_root": str(root), "split": split,
                "condition": "ground-truth tokenizer features of each frame (reconstruction)", **(extra_meta or {})}
        return write_stories(images, stories, Path(out_dir), "captions", info)
