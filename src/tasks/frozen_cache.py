"""Outputs of frozen models computed once per training frame, for tasks whose frames are deterministic
(src/data/datasets.py: no random crops or flips), so a frame's VAE posterior and caption states never change.

The VAE posterior is cached as its moments (mean and log-variance), not as a latent: every step still draws
its latent from the posterior with the same random call encode_latents makes, so a cached run consumes the
random stream exactly as an uncached one and resumes the same way.

Shapes: N frames, n frames in one encoding pass, c latent channels, h×w latent size, L tokens, D text width.
  moments [N,2c,h,w] (mean and log-variance, the VAE's dtype) -> latents [B,c,h,w] fp32
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from src.data.transforms import story_file

CACHE_FILE = "frozen.safetensors"
CACHE_VERSION = 1  # bump when what is stored changes


def sample_latents(moments: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """A latent drawn from cached posterior moments [B,2c,h,w], scaled as LDMTask.encode_latents scales it
    (the same randn call as AutoencoderKL's latent_dist.sample())."""
    return DiagonalGaussianDistribution(moments).sample().float() * scaling_factor


@torch.no_grad()
def encode_frames(dataset, encode: Callable[[list], dict], chunk: int = 64, desc: str = "caching frozen outputs"
                  ) -> dict[str, torch.Tensor]:
    """encode(items) -> {name: [n,...]} over the dataset in order, chunk items at a time; {name: [N,...]} on CPU."""
    parts: dict[str, list] = {}
    with tqdm(total=len(dataset), desc=desc, unit="frame") as bar:
        for start in range(0, len(dataset), chunk):
            items = [dataset[i] for i in range(start, min(start + chunk, len(dataset)))]
            for name, value in encode(items).items():
                parts.setdefault(name, []).append(value.cpu())
            bar.update(len(items))
    return {name: torch.cat(values) for name, values in parts.items()}


# ---- fingerprint --------------------------------------------------------------------------------------
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def module_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names, dtypes, shapes, bytes): the weights actually in use,
    whatever folder or dtype they came from."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def data_digest(dataset) -> dict:
    """The split's identity: meta.json and the split's jsonl by content, each frame image by size and mtime."""
    data = dataset.data
    frames = []
    for story in data.stories:
        for k, rel in enumerate(story.images):
            stat = story_file(data.root, story, "images", k, Path.stat)  # a missing frame names its story line
            frames.append(f"{rel}:{stat.st_size}:{stat.st_mtime_ns}")
    return {"meta": _sha((data.root / "meta.json").read_bytes()), "split": _sha(data.jsonl.read_bytes()),
            "frames": _sha("\n".join(frames).encode())}


def fingerprint(parts: dict) -> str:
    return _sha(json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str).encode())[:20]


# ---- on disk ------------------------------------------------------------------------------------------
def load_or_build(folder: Path, build: Callable[[], dict]) -> dict[str, torch.Tensor]:
    """The tensors in `folder`/frozen.safetensors; built and written atomically first if absent."""
    path = Path(folder) / CACHE_FILE
    if path.is_file():
        return load_file(str(path))
    tensors = {name: t.contiguous() for name, t in build().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{CACHE_FILE}.tmp{os.getpid()}")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)  # concurrent builders (one per process) each write a whole file; the last one wins
    return tensors
