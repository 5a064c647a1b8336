"""What every drawing path shares: the sampler built by name from a model's scheduler config, the
diffusers pipelines around our components (SD 1.5 for StoryGPT-V, SDXL without text encoders for
SEED-Story's de-tokenizer), and the per-frame starting noise.

Each frame's starting noise comes from its own generator seeded by (seed, story position, frame), so a
frame's image depends neither on the batch it is drawn in nor on how many stories are drawn.
"""
from __future__ import annotations

import inspect

import diffusers
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline


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


def scheduler_config(pretrained: str) -> dict:
    """The training scheduler's config of a diffusers folder (`<pretrained>/scheduler`): a file only."""
    return dict(DDPMScheduler.load_config(pretrained, subfolder="scheduler"))


def sd_pipeline(unet, vae, text_encoder, tokenizer, scheduler) -> StableDiffusionPipeline:
    """SD 1.5's pipeline around our components (no safety checker: a research tool on the user's data)."""
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdxl_pipeline(vae, unet, scheduler) -> StableDiffusionXLPipeline:
    """SDXL's pipeline without its text encoders (the de-tokenizer gives prompt_embeds and the pooled
    embedding; the pipeline adds SDXL's time ids)."""
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                     tokenizer_2=None, unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def frame_generator(seed: int, story_index: int, frame: int, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + story_index * 1009 + frame)
