"""The floor of a Stable Diffusion fine-tuning step: what no trainer can avoid, each piece timed alone.

    python -m bench.unet_floor --pretrained outputs/bench/vs_diffusers/sd15-random --resolution 256 --batch 1

From a diffusers pipeline folder (bench/make_random_sd15.py's random SD 1.5, or any other), under the
precision both trainers use (bf16 autocast around fp32 UNet weights, frozen VAE and text encoder held in
bf16), on random inputs of the step's shapes; median seconds of `--steps` calls after `--warmup`:

  unet_fb       the UNet's forward and backward with the MSE loss (the floor: every trainer runs it)
  clip          gradient clipping over the UNet's gradients (clip_grad_norm_, max norm 1)
  adamw         torch.optim.AdamW's step with PyTorch's default implementation for the device
                (per-tensor for-loop on a CPU, foreach on a GPU): diffusers' script and optim.fused=false
  adamw_fused   the same step with fused=True (optim.fused=true)
  vae           the VAE's encode of the batch (what model.cache_latents saves)
  text          the text encoder on the batch's captions (saved by model.cache_latents too)

The last line is machine-readable: `floor: unet_fb=S clip=S adamw=S adamw_fused=S vae=S text=S` (seconds),
which bench/vs_diffusers.py reads for its floor row.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import machine, timed

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": None}


def measure(pretrained: Path, resolution: int, batch: int, precision: str, steps: int, warmup: int) -> dict:
    from contextlib import nullcontext

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[precision]
    unet = UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet").to(device).train()
    vae = AutoencoderKL.from_pretrained(pretrained, subfolder="vae").to(device, dtype or torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder").to(device, dtype or torch.float32)
    tokenizer = CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer")
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()

    generator = torch.Generator().manual_seed(0)
    latent = resolution // 8
    noisy = torch.randn(batch, unet.config.in_channels, latent, latent, generator=generator).to(device)
    target = torch.randn(noisy.shape, generator=generator).to(device)
    states = torch.randn(batch, tokenizer.model_max_length, unet.config.cross_attention_dim, generator=generator).to(device)
    timesteps = torch.randint(0, 1000, (batch,), generator=generator).to(device)
    pixels = (torch.rand(batch, 3, resolution, resolution, generator=generator) * 2 - 1).to(device)
    ids = tokenizer(["a character walked on the beach"] * batch, padding="max_length", truncation=True,
                    max_length=tokenizer.model_max_length, return_tensors="pt").input_ids.to(device)
    params = [p for p in unet.parameters() if p.requires_grad]

    def forward_backward():
        unet.zero_grad(set_to_none=True)
        with autocast:
            pred = unet(noisy, timesteps, states).sample
        F.mse_loss(pred.float(), target).backward()

    seconds = {"unet_fb": timed(forward_backward, steps, warmup, device)}
    seconds["clip"] = timed(lambda: torch.nn.utils.clip_grad_norm_(params, 1.0), steps, warmup, device)
    for name, fused in (("adamw", None), ("adamw_fused", True)):
        optimizer = torch.optim.AdamW(params, lr=1e-12, weight_decay=1e-2, fused=fused)
        seconds[name] = timed(optimizer.step, steps, warmup, device)
        del optimizer  # its moments: 2 x the UNet in fp32
    unet.zero_grad(set_to_none=True)
    with torch.no_grad():
        seconds["vae"] = timed(lambda: vae.encode(pixels.to(vae.dtype)).latent_dist.sample(), steps, warmup, device)
        seconds["text"] = timed(lambda: text_encoder(ids)[0], steps, warmup, device)
    return seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", type=Path, required=True, help="a diffusers Stable Diffusion folder")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)
    if not (args.pretrained / "model_index.json").is_file():
        parser.error(f"--pretrained {args.pretrained}: not a diffusers pipeline folder (no model_index.json)")
    seconds = measure(args.pretrained, args.resolution, args.batch, args.precision, args.steps, args.warmup)
    print(f"UNet floor on {machine()}: {args.resolution} px, batch {args.batch}, {args.precision}, median of "
          f"{args.steps} after {args.warmup} warm-up")
    print("floor: " + " ".join(f"{name}={value:.4f}" for name, value in seconds.items()), flush=True)


if __name__ == "__main__":
    main()
