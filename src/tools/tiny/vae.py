"""The tiny stack's AutoencoderKL: SD's VAE type at toy widths, briefly trained on toy frames so that
its latents carry the picture (docs/architecture.md, "Assets").

SD 1.5's VAE downsamples by 8; the tiny one by 4, so 64 px frames give 16x16x4 latents. Training is
the LDM autoencoder recipe without the adversarial and perceptual terms (Rombach et al. 2022, Sec. 3):
pixel reconstruction plus a small KL term. Afterwards `scaling_factor` is set to 1 / std of the
latents, which is how SD's 0.18215 was chosen (LDM Sec. 4.3.2, "rescale the latent space").

Shape legend: N frames, B batch, 3 RGB, S frame side, C latent channels, h latent side (S / 4).
Pixels go in as [B, 3, S, S] in [-1, 1]; latents come out as [B, C, h, h].
"""

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image
from tqdm.auto import tqdm

from src.data.stories import StoryFormatError, read_split
from src.tools.tiny.config import TinyStackConfig, VAETrainConfig


def build_vae(config: TinyStackConfig, seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = config.vae
    levels = len(vae.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(vae.block_out_channels),
        layers_per_block=vae.layers_per_block,
        latent_channels=vae.latent_channels,
        norm_num_groups=vae.norm_num_groups,
        sample_size=config.frame_size,
    )


def split_frames(data_root: Path, split: str) -> Tuple[List[Path], List[Optional[Path]]]:
    """Unique frames of `<data_root>/<split>.jsonl` in file order, with each frame's character mask (None
    where the story has none). The story reader validates the split (src/data/stories.py): a bad line
    is a StoryFormatError naming the file, the 1-based line and the field."""
    data_root = Path(data_root)
    _, stories = read_split(data_root, split, check_files=True)
    frames, masks, seen = [], [], set()
    for story in stories:
        for k, image in enumerate(story.images):
            path = data_root / image
            if path not in seen:
                seen.add(path)
                frames.append(path)
                mask = story.masks[k] if story.masks else None
                masks.append(None if mask is None else data_root / mask)
    if not frames:
        raise StoryFormatError(data_root / f"{split}.jsonl", None, None,
                               f"no stories; the tiny stack trains its VAE on the {split} frames")
    return frames, masks


def load_character_masks(mask_paths: List[Optional[Path]], frame_size: int) -> Optional[torch.Tensor]:
    """Character pixels (1) vs background (0) as uint8 [N, 1, S, S] from the split's `masks` label maps
    (docs/story_format.md), aligned with `split_frames`' frames; None when no frame has a mask."""
    if not any(mask_paths):
        return None
    masks = np.zeros((len(mask_paths), 1, frame_size, frame_size), dtype=np.uint8)
    for i, path in enumerate(mask_paths):
        if path is not None:
            with Image.open(path) as image:
                masks[i, 0] = np.asarray(image) > 0
    return torch.from_numpy(masks)


def load_frames(paths: List[Path], frame_size: int) -> torch.Tensor:
    """Frames as uint8 [N, 3, S, S]; a frame of another size is an error naming it (the tiny stack's
    frame_size must match the dataset's, see configs/pretrained/tiny.yaml)."""
    frames = []
    for path in paths:
        with Image.open(path) as image:
            if image.size != (frame_size, frame_size):
                raise StoryFormatError(path, None, None, f"frame is {image.size[0]}x{image.size[1]} px, the tiny "
                                                         f"stack's frame_size is {frame_size}")
            frames.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


def to_model_range(frames_uint8: torch.Tensor) -> torch.Tensor:
    return frames_uint8.float() / 127.5 - 1.0


@dataclass
class Reconstruction:
    mse: float  # mean squared error with pixels in [0, 1]
    psnr_db: float  # 10 log10(1 / mse)
    frames: int


@torch.no_grad()
def reconstruction_error(vae: AutoencoderKL, frames_uint8: torch.Tensor, batch_size: int = 32) -> Reconstruction:
    """Encode (posterior mode) and decode every frame; MSE and PSNR in the [0, 1] pixel range."""
    vae.eval()
    squared_error, count = 0.0, 0
    for start in range(0, len(frames_uint8), batch_size):
        pixels = to_model_range(frames_uint8[start : start + batch_size])
        decoded = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
        # (x - y) / 2 turns the [-1, 1] difference into the [0, 1] pixel difference.
        squared_error += ((decoded.clamp(-1, 1) - pixels) / 2).pow(2).sum().item()
        count += pixels.numel()
    mse = squared_error / count
    return Reconstruction(mse=mse, psnr_db=10 * math.log10(1.0 / max(mse, 1e-12)), frames=len(frames_uint8))


def train_vae(vae: AutoencoderKL, frames_uint8: torch.Tensor, train: VAETrainConfig, steps: int, seed: int,
              masks: torch.Tensor = None) -> float:
    """Train in place for `steps` AdamW steps on random batches; returns the last batch's loss.
    `masks` ([N, 1, S, S], 1 on characters) up-weights character pixels by `train.character_weight`."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    # Cosine decay: the last steps refine at a small rate, which matters in a budget of minutes.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    vae.train()
    loss_value = float("nan")
    progress = tqdm(range(steps), desc="tiny VAE", unit="step", disable=steps == 0)
    for _ in progress:
        batch = torch.randint(0, len(frames_uint8), (train.batch_size,), generator=generator)
        pixels = to_model_range(frames_uint8[batch])
        posterior = vae.encode(pixels).latent_dist
        latents = posterior.sample(generator=generator)
        decoded = vae.decode(latents).sample
        weight = 1.0 if masks is None else 1.0 + train.character_weight * masks[batch].float()
        error = decoded - pixels
        loss = (
            (weight * (train.l1_weight * error.abs() + train.mse_weight * error.pow(2))).mean()
            + train.kl_weight * posterior.kl().mean()
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_value = loss.item()
        progress.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
    vae.eval()
    return loss_value


@torch.no_grad()
def latent_std(vae: AutoencoderKL, frames_uint8: torch.Tensor, seed: int, batch_size: int = 32) -> float:
    """Std of posterior samples, the latents diffusion training sees (before scaling)."""
    generator = torch.Generator().manual_seed(seed)
    samples = [
        vae.encode(to_model_range(frames_uint8[start : start + batch_size])).latent_dist.sample(generator=generator)
        for start in range(0, len(frames_uint8), batch_size)
    ]
    return torch.cat(samples).std().item()


def build_trained_vae(config: TinyStackConfig, data_root: Path, seed: int):
    """Build the VAE, train it on the train split's frames, set scaling_factor, and measure the
    reconstruction on held-out val frames. Returns (vae, report dict for reconstruction.json)."""
    train, steps = config.vae.train, config.vae.train.steps
    train_paths, train_mask_paths = split_frames(data_root, "train")
    train_frames = load_frames(train_paths, config.frame_size)
    train_masks = load_character_masks(train_mask_paths, config.frame_size)
    val_paths, _ = split_frames(data_root, "val")
    val_frames = load_frames(val_paths[: train.max_eval_frames], config.frame_size)

    vae = build_vae(config, seed)
    untrained = reconstruction_error(vae, val_frames)
    started = time.perf_counter()
    final_loss = train_vae(vae, train_frames, train, steps, seed, masks=train_masks)
    train_seconds = time.perf_counter() - started
    trained = reconstruction_error(vae, val_frames)

    std = latent_std(vae, train_frames[: train.max_eval_frames], seed)
    vae.register_to_config(scaling_factor=1.0 / std)
    report = {
        "split": "val",
        "frames": trained.frames,
        "pixel_range": "[0, 1]",
        "mse": trained.mse,
        "psnr_db": trained.psnr_db,
        "untrained_mse": untrained.mse,
        "untrained_psnr_db": untrained.psnr_db,
        "train_frames": len(train_frames),
        "steps": steps,
        "batch_size": train.batch_size,
        "final_train_loss": final_loss,
        "character_weight": train.character_weight if train_masks is not None else 0.0,
        "train_seconds": round(train_seconds, 2),
        "latent_std": std,
        "scaling_factor": 1.0 / std,
    }
    return vae, report
