"""SEED-Story's pieces of the tiny pretrained stack (docs/architecture.md, "Assets"), built on first use
next to the SD 1.5 stack of src.tools.tiny.stack:

    <tiny>/sdxl/             an SDXL-layout diffusers folder: UNet with `text_time` added conditioning
                             (random), the SD stack's trained VAE (copied), SDXL's Euler scheduler config
    <tiny>/qwen_vit.safetensors   a Qwen-ViT-architecture tokenizer in reload_qwen_vit's file format,
                             briefly trained on toy frames to recognise characters and backgrounds, so its
                             features carry identity; then frozen
    <tiny>/qwen_vit.json     its training record and a linear probe's accuracy on val (trained vs untrained)

    python -m src.tools.tiny.seed --out pretrained/tiny --data data/toy

Shapes: B batch, S frame size (64), Q tokens (64), D feature width (128), C characters, G backgrounds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
from filelock import FileLock

from src.data.datasets import FrameDataset
from src.models.loading import write_weights_file
from src.models.qwen_vit import CONFIG_METADATA_KEY, QwenViT, load_qwen_vit
from src.models.visual_tokenizer import CLIP_MEAN, CLIP_STD, VisualTokenizer
from src.tools.tiny.stack import SD_FOLDER, ensure_tiny_stack

SDXL_FOLDER, VIT_FILE, VIT_RECORD = "sdxl", "qwen_vit.safetensors", "qwen_vit.json"
# Qwen-VL's `visual` config keys at toy size (n_queries is ours: Qwen-VL fixes 256).
TINY_VISUAL = {"image_size": 64, "patch_size": 8, "width": 64, "layers": 2, "heads": 4, "mlp_ratio": 4.0,
               "output_dim": 128, "n_queries": 64}
# SDXL's conditioning at toy widths: cross-attention 64 = 32 (first encoder) + 32 (second, also pooled).
TINY_POOLED_DIM, TINY_TIME_EMBED_DIM = 32, 8
# 2000 steps: a linear probe then names the character set of 96.7% of val frames (400 steps:
# 77.1%), and the toy de-tokenizer trained on its features reconstructs more of them (docs/results_seed_story.md).
VIT_TRAIN = {"steps": 2000, "batch_size": 32, "lr": 1e-3, "seed": 0}


def build_tiny_sdxl_unet(latent_size: int, latent_channels: int, seed: int) -> UNet2DConditionModel:
    """SDXL's block layout (a plain first level, cross-attention below, linear projections, `text_time`
    added conditioning) at toy widths."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64), layers_per_block=1, transformer_layers_per_block=(1, 1, 1),
        attention_head_dim=(2, 4, 4), norm_num_groups=8, cross_attention_dim=64, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=TINY_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=TINY_POOLED_DIM + 6 * TINY_TIME_EMBED_DIM)


def sdxl_scheduler() -> EulerDiscreteScheduler:
    """SDXL base's scheduler settings."""
    return EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading",
                                  prediction_type="epsilon")


def write_tiny_sdxl(folder: Path, sd_folder: Path, seed: int) -> None:
    vae_config = json.loads((sd_folder / "vae" / "config.json").read_text())
    latent_size = vae_config["sample_size"] // 2 ** (len(vae_config["block_out_channels"]) - 1)
    build_tiny_sdxl_unet(latent_size, vae_config["latent_channels"], seed).save_pretrained(folder / "unet")
    shutil.copytree(sd_folder / "vae", folder / "vae")
    sdxl_scheduler().save_pretrained(folder / "scheduler")
    index = {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.42.1",
             "force_zeros_for_empty_prompt": True, "feature_extractor": [None, None], "image_encoder": [None, None],
             "text_encoder": [None, None], "text_encoder_2": [None, None], "tokenizer": [None, None],
             "tokenizer_2": [None, None], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "EulerDiscreteScheduler"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


# ---- the tiny visual tokenizer ----------------------------------------------------------------------------

def as_tokenizer(vit: QwenViT) -> VisualTokenizer:
    return VisualTokenizer(vit, "qwen_vit", vit.image_size, CLIP_MEAN, CLIP_STD)


@torch.no_grad()
def pooled_features(tokenizer: VisualTokenizer, dataset: FrameDataset, limit: int) -> tuple:
    """Mean-pooled features [N,D], character labels [N,C], background labels [N] of the first frames."""
    items = [dataset[i] for i in range(min(limit, len(dataset)))]
    frames = torch.stack([item["pixel_values"] for item in items])
    feats = torch.cat([tokenizer(frames[i:i + 64]).mean(1) for i in range(0, len(frames), 64)])
    return (feats, torch.stack([item["char_labels"] for item in items]),
            torch.tensor([item["bg_label"] for item in items]))


def linear_probe(train: tuple, val: tuple, steps: int = 300) -> dict:
    """Fit linear heads on frozen features (train split), report val accuracy: backgrounds (argmax) and
    characters (the predicted set, threshold 0.5, must equal the true set)."""
    x, chars, bgs = train
    mean, std = x.mean(0), x.std(0) + 1e-6
    char_head = torch.nn.Linear(x.shape[1], chars.shape[1])
    bg_head = torch.nn.Linear(x.shape[1], int(bgs.max()) + 1)
    optimizer = torch.optim.Adam([*char_head.parameters(), *bg_head.parameters()], lr=1e-2)
    z = (x - mean) / std
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(char_head(z), chars) + F.cross_entropy(bg_head(z), bgs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vx, vchars, vbgs = val
    with torch.no_grad():
        vz = (vx - mean) / std
        char_acc = ((char_head(vz) > 0).float() == vchars).all(1).float().mean().item()
        bg_acc = (bg_head(vz).argmax(1) == vbgs).float().mean().item()
    return {"char_set_acc": round(100 * char_acc, 1), "bg_acc": round(100 * bg_acc, 1), "frames": len(vx)}


def train_tiny_vit(data_root: Path, frame_size: int, steps: int | None = None) -> tuple[QwenViT, dict]:
    """Qwen-ViT architecture, trained briefly to name the characters (multi-label) and the background of
    toy frames from its mean-pooled features, then frozen."""
    cfg = dict(VIT_TRAIN, steps=VIT_TRAIN["steps"] if steps is None else steps)
    torch.manual_seed(cfg["seed"])
    train_set = FrameDataset(data_root, "train", frame_size)
    val_set = FrameDataset(data_root, "val", frame_size)
    vit = QwenViT.from_config(TINY_VISUAL)
    untrained_probe = linear_probe(pooled_features(as_tokenizer(vit), train_set, 2000),
                                   pooled_features(as_tokenizer(vit), val_set, 800))
    num_chars, num_bgs = len(train_set.meta["characters"]), len(train_set.meta["backgrounds"])
    heads = torch.nn.Linear(vit.output_dim, num_chars + num_bgs)
    tokenizer = VisualTokenizer(vit, "qwen_vit", vit.image_size, CLIP_MEAN, CLIP_STD)
    vit.train().requires_grad_(True)
    optimizer = torch.optim.AdamW([*vit.parameters(), *heads.parameters()], lr=cfg["lr"], weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg["steps"])
    generator = torch.Generator().manual_seed(cfg["seed"])
    started = time.perf_counter()
    for _ in range(cfg["steps"]):
        idx = torch.randint(0, len(train_set), (cfg["batch_size"],), generator=generator).tolist()
        items = [train_set[i] for i in idx]
        logits = heads(vit(tokenizer.preprocess(torch.stack([it["pixel_values"] for it in items]))).mean(1))
        chars = torch.stack([it["char_labels"] for it in items])
        bgs = torch.tensor([it["bg_label"] for it in items])
        loss = (F.binary_cross_entropy_with_logits(logits[:, :num_chars], chars)
                + F.cross_entropy(logits[:, num_chars:], bgs))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    vit.eval().requires_grad_(False)
    probe = linear_probe(pooled_features(as_tokenizer(vit), train_set, 2000),
                         pooled_features(as_tokenizer(vit), val_set, 800))
    record = {"visual": TINY_VISUAL, "train": cfg, "final_loss": round(loss.item(), 4),
              "train_seconds": round(time.perf_counter() - started, 1),
              "linear_probe_val": probe, "linear_probe_val_untrained": untrained_probe}
    return vit, record


def save_vit(vit: QwenViT, visual: dict, path: Path) -> None:
    """In src.tools.convert.qwen_vit's format, so `qwen_vit` tokenizer configs load it like the real one."""
    write_weights_file(vit.state_dict(), path, {CONFIG_METADATA_KEY: json.dumps(visual)})


# ---- build on first use -----------------------------------------------------------------------------------

def is_complete(out_dir: Path) -> bool:
    return all((out_dir / name).exists() for name in (f"{SDXL_FOLDER}/unet/config.json", VIT_FILE, VIT_RECORD))


def ensure_tiny_seed(out_dir, data_root, seed: int = 0, vit_steps: int | None = None) -> Path:
    """Build the SEED-Story pieces into `out_dir` (after the SD stack they reuse) unless present;
    `vit_steps` overrides the tokenizer's training steps (tests)."""
    out_dir, data_root = Path(out_dir), Path(data_root)
    ensure_tiny_stack(out_dir, data_root)
    if is_complete(out_dir):
        built = json.loads((out_dir / VIT_RECORD).read_text()).get("train", {})
        if vit_steps is None and built.get("steps") != VIT_TRAIN["steps"]:
            # Kept, not rebuilt: runs already trained on this tokenizer's features stay valid.
            print(f"note: {out_dir / VIT_RECORD}: this tokenizer trained {built.get('steps')} steps, the "
                  f"current recipe {VIT_TRAIN['steps']}; delete {out_dir / VIT_RECORD} to rebuild it "
                  "(docs/results_seed_story.md's figures are for the current one)", flush=True)
        return out_dir
    with FileLock(str(out_dir.parent / f".{out_dir.name}.seed.lock")):
        if is_complete(out_dir):
            return out_dir
        staging = out_dir / f".seed-building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            write_tiny_sdxl(staging / SDXL_FOLDER, out_dir / SD_FOLDER, seed)
            frame_size = json.loads((out_dir / SD_FOLDER / "vae" / "config.json").read_text())["sample_size"]
            print("training the tiny Qwen-ViT tokenizer on toy frames ...", flush=True)
            vit, record = train_tiny_vit(data_root, frame_size, vit_steps)
            save_vit(vit, TINY_VISUAL, staging / VIT_FILE)
            load_qwen_vit(staging / VIT_FILE)  # the file must round-trip strictly before it is published
            (staging / VIT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
            shutil.rmtree(out_dir / SDXL_FOLDER, ignore_errors=True)
            for name in (SDXL_FOLDER, VIT_FILE, VIT_RECORD):  # the record last: it marks completion
                os.replace(staging / name, out_dir / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="tiny stack folder, e.g. pretrained/tiny")
    parser.add_argument("--data", required=True, help="toy dataset folder, e.g. data/toy")
    args = parser.parse_args(argv)
    out = ensure_tiny_seed(args.out, args.data)
    record = json.loads((out / VIT_RECORD).read_text())
    print(f"tiny SEED-Story pieces ready in {out}; tokenizer linear probe on val: "
          f"{record['linear_probe_val']} (untrained: {record['linear_probe_val_untrained']})")


if __name__ == "__main__":
    main()
