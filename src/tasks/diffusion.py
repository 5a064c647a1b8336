"""The denoising objective both diffusion stages train with (StoryGPT-V's Char-LDM and its baseline,
SEED-Story's de-tokenizer and its adaptation): latents from the frozen VAE, DDPM training noise (offset
noise optional), the ε- or v-prediction target and the MSE, optionally Min-SNR-γ weighted.

Shapes: B batch, c/h/w latent channels and size.
  pixel_values [B,3,H,W] in [-1,1] -> latents [B,c,h,w] -> noise, noisy_latents [B,c,h,w], timesteps [B]
  model_pred, target [B,c,h,w] -> loss []
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def encode_latents(vae, pixel_values: torch.Tensor) -> torch.Tensor:
    """Frames -> latents drawn from the VAE posterior, scaled; fp32 even from a bf16 VAE (noise, target)."""
    latents = vae.encode(pixel_values.to(vae.dtype)).latent_dist.sample()
    return latents.float() * vae.config.scaling_factor


class DiffusionObjective:
    """`noise_scheduler`: the model's DDPM training scheduler; `source` names its folder in errors."""

    def __init__(self, noise_scheduler, noise_offset: float = 0.0, snr_gamma: float = 0.0, source: str = ""):
        self.noise_scheduler, self.noise_offset, self.snr_gamma = noise_scheduler, noise_offset, snr_gamma
        kind = noise_scheduler.config.prediction_type
        if kind not in ("epsilon", "v_prediction"):
            raise ValueError(f"{source}/scheduler: prediction_type '{kind}' is not supported")

    def add_noise(self, latents: torch.Tensor):
        """(noise, timesteps, noisy_latents) for one training step (offset noise when configured)."""
        # randn of the shape, not randn_like: a CPU VAE can return channels-last latents, and randn_like then
        # draws another stream than for the contiguous latents of the cache (model.cache_latents)
        noise = torch.randn(latents.shape, device=latents.device, dtype=latents.dtype)
        if self.noise_offset:
            noise += self.noise_offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1, device=latents.device)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  device=latents.device)
        return noise, timesteps, self.noise_scheduler.add_noise(latents, noise, timesteps)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.noise_scheduler.config.prediction_type == "epsilon":
            return noise
        return self.noise_scheduler.get_velocity(latents, noise, timesteps)

    def loss(self, model_pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if not self.snr_gamma:
            return F.mse_loss(model_pred.float(), target.float())
        # Min-SNR weighting: w = min(SNR, gamma) / SNR (for v-prediction / (SNR + 1)).
        alphas = self.noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
        snr = alphas / (1 - alphas)
        weight = torch.clamp(snr, max=self.snr_gamma) / snr
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            weight = weight * snr / (snr + 1)
        per_sample = F.mse_loss(model_pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return (per_sample * weight).mean()
