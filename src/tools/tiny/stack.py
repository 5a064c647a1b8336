"""Build the tiny pretrained stack: HF-format folders with the on-disk layouts of the real weights, so
the same `from_pretrained` code serves the toy and the real run (docs/architecture.md, pretrained/README.md).

    <out_dir>/stable-diffusion-v1-5/   diffusers StableDiffusionPipeline folder (unet, vae, text_encoder,
                                       tokenizer, scheduler; no safety checker)
    <out_dir>/clip/                    CLIPModel + CLIPImageProcessor + tokenizer (clip-vit-large-patch14)
    <out_dir>/stack.json               what was built: config, seed, parameter counts, VAE reconstruction, and
                                       what it was computed on (threads, instruction set: src.runs.computed_on)

A build goes into a temporary sibling folder and is renamed into place only when complete, under a file
lock, so a killed build never leaves a folder that looks complete and concurrent callers build once.

    python -m src.tools.tiny.stack --out pretrained/tiny --data data/toy [--config ...] [--vae-steps N] [--force]
"""

import argparse
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Optional, Union

from diffusers import StableDiffusionPipeline
from filelock import FileLock

from src.runs import computed_on
from src.tools.tiny.config import TinyStackConfig, load_tiny_config
from src.tools.tiny.models import (
    build_clip_model,
    build_image_processor,
    build_scheduler,
    build_text_encoder,
    build_unet,
    count_parameters,
)
from src.tools.tiny.tokenizer import build_clip_tokenizer
from src.tools.tiny.vae import build_trained_vae

STACK_FORMAT_VERSION = 2  # 2: the scheduler config may be DDIM with zero terminal SNR and v-prediction
SD_FOLDER, CLIP_FOLDER, STACK_FILE = "stable-diffusion-v1-5", "clip", "stack.json"
# Each component gets its own seed, so changing one component's size leaves the others' weights alone.
SEED_OFFSETS = {"text_encoder": 1, "unet": 2, "vae": 3, "clip": 4}
# Files a complete stack has; checked after every build and by ensure_tiny_stack.
REQUIRED_FILES = (
    f"{SD_FOLDER}/model_index.json",
    f"{SD_FOLDER}/unet/config.json",
    f"{SD_FOLDER}/unet/diffusion_pytorch_model.safetensors",
    f"{SD_FOLDER}/vae/config.json",
    f"{SD_FOLDER}/vae/diffusion_pytorch_model.safetensors",
    f"{SD_FOLDER}/vae/reconstruction.json",
    f"{SD_FOLDER}/text_encoder/config.json",
    f"{SD_FOLDER}/text_encoder/model.safetensors",
    f"{SD_FOLDER}/tokenizer/vocab.json",
    f"{SD_FOLDER}/tokenizer/merges.txt",
    f"{SD_FOLDER}/tokenizer/tokenizer_config.json",
    f"{SD_FOLDER}/scheduler/scheduler_config.json",
    f"{CLIP_FOLDER}/config.json",
    f"{CLIP_FOLDER}/model.safetensors",
    f"{CLIP_FOLDER}/preprocessor_config.json",
    f"{CLIP_FOLDER}/vocab.json",
    f"{CLIP_FOLDER}/merges.txt",
    f"{CLIP_FOLDER}/tokenizer_config.json",
    STACK_FILE,
)

# What this module writes into the stack folder; anything else there belongs to other tools.
OWN_ENTRIES = {SD_FOLDER, CLIP_FOLDER, STACK_FILE}

ConfigSource = Union[str, Path, dict, TinyStackConfig, None]


def build_tiny_stack(out_dir, data_root, config: ConfigSource = None, vae_steps: Optional[int] = None) -> Path:
    """Build the stack into `out_dir` (replacing what is there) from `config` (a YAML path, dict or
    TinyStackConfig; default configs/pretrained/tiny.yaml), training the VAE on `data_root`'s frames
    for `vae_steps` steps (default: the config's vae.train.steps). Returns `out_dir`."""
    out_dir = Path(out_dir)
    resolved = _resolve(config, vae_steps)
    with _build_lock(out_dir):
        return _build_and_publish(out_dir, Path(data_root), resolved)


def ensure_tiny_stack(out_dir, data_root, config: ConfigSource = None, vae_steps: Optional[int] = None) -> Path:
    """Return `out_dir` if it holds a complete stack; otherwise build it (with `config` and `vae_steps`
    as in build_tiny_stack). A complete stack is reused whatever config built it: rebuild with
    build_tiny_stack (CLI: --force) after changing the config. Safe to call from several processes at
    once: one builds, the others wait for it and reuse its stack."""
    out_dir = Path(out_dir)
    if is_complete_stack(out_dir):
        return out_dir
    resolved = _resolve(config, vae_steps)
    with _build_lock(out_dir):
        if is_complete_stack(out_dir):  # built by another process while we waited
            return out_dir
        return _build_and_publish(out_dir, Path(data_root), resolved)


def is_complete_stack(out_dir) -> bool:
    """True if every file of a finished build is present and stack.json is a stack record."""
    out_dir = Path(out_dir)
    if not all((out_dir / name).is_file() for name in REQUIRED_FILES):
        return False
    try:
        record = json.loads((out_dir / STACK_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(record, dict) and record.get("format_version") == STACK_FORMAT_VERSION


def stack_record(out_dir) -> dict:
    """The stack.json of a built stack (what was built, config, seed, parameter counts, VAE error)."""
    return json.loads((Path(out_dir) / STACK_FILE).read_text(encoding="utf-8"))


def _resolve(config: ConfigSource, vae_steps: Optional[int]) -> TinyStackConfig:
    overrides = {"vae": {"train": {"steps": vae_steps}}} if vae_steps is not None else None
    return load_tiny_config(config, overrides)


def _build_lock(out_dir: Path) -> FileLock:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(out_dir.parent / f".{out_dir.name}.lock"))


def _build_and_publish(out_dir: Path, data_root: Path, config: TinyStackConfig) -> Path:
    """Build into a temporary sibling, then swap it into place. Called with the build lock held."""
    _remove_leftovers(out_dir)
    staging = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _build_into(staging, data_root, config)
        missing = [name for name in REQUIRED_FILES if not (staging / name).is_file()]
        if missing:
            raise RuntimeError(f"tiny stack build in {staging} did not write {missing}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap_into_place(staging, out_dir)
    return out_dir


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    # Renaming onto a non-empty folder fails, so the old folder moves aside first. Other tools keep
    # their components in the same folder (e.g. blip2/ from src.tools.tiny.blip2): carry them over.
    stale = out_dir.parent / f".{out_dir.name}.stale-{uuid.uuid4().hex[:8]}"
    os.rename(out_dir, stale)
    for entry in stale.iterdir():
        if entry.name not in OWN_ENTRIES:
            os.rename(entry, staging / entry.name)
    os.rename(staging, out_dir)
    shutil.rmtree(stale)


def _remove_leftovers(out_dir: Path) -> None:
    """Delete half-built and stale folders of killed builds (safe: we hold the build lock)."""
    for pattern in (f".{out_dir.name}.building-*", f".{out_dir.name}.stale-*"):
        for leftover in out_dir.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def _build_into(folder: Path, data_root: Path, config: TinyStackConfig) -> None:
    started = time.perf_counter()
    seed = config.seed
    sd_folder, clip_folder = folder / SD_FOLDER, folder / CLIP_FOLDER

    vae, reconstruction = build_trained_vae(config, data_root, seed + SEED_OFFSETS["vae"])
    text_encoder = build_text_encoder(config, seed + SEED_OFFSETS["text_encoder"])
    unet = build_unet(config, seed + SEED_OFFSETS["unet"])
    # The tokenizer is written first into the SD folder, then loaded from there for the pipeline.
    tokenizer = build_clip_tokenizer(sd_folder / "tokenizer")
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(config),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(sd_folder, safe_serialization=True)
    _write_json(sd_folder / "vae" / "reconstruction.json", reconstruction)
    print(describe_reconstruction(reconstruction), flush=True)

    clip = build_clip_model(config, seed + SEED_OFFSETS["clip"], text_encoder)
    clip.save_pretrained(clip_folder, safe_serialization=True)
    build_image_processor(config).save_pretrained(clip_folder)
    tokenizer.save_pretrained(clip_folder)
    for name in ("vocab.json", "merges.txt"):  # the layout of openai/clip-vit-large-patch14
        shutil.copyfile(sd_folder / "tokenizer" / name, clip_folder / name)

    record = {
        "format_version": STACK_FORMAT_VERSION,
        "built_by": "src.tools.tiny.stack",
        "seed": seed,
        "config": config.to_dict(),
        "data_root": str(data_root),
        "components": {
            f"{SD_FOLDER}/unet": {"class": type(unet).__name__, "parameters": count_parameters(unet)},
            f"{SD_FOLDER}/vae": {"class": type(vae).__name__, "parameters": count_parameters(vae)},
            f"{SD_FOLDER}/text_encoder": {"class": type(text_encoder).__name__, "parameters": count_parameters(text_encoder)},
            f"{SD_FOLDER}/tokenizer": {"class": type(tokenizer).__name__, "vocab_size": len(tokenizer)},
            f"{SD_FOLDER}/scheduler": {"class": type(pipeline.scheduler).__name__},
            CLIP_FOLDER: {"class": type(clip).__name__, "parameters": count_parameters(clip)},
        },
        "vae_reconstruction": reconstruction,
        "build_seconds": round(time.perf_counter() - started, 2),
        "computed_on": computed_on(),  # the VAE's training rounds differently with another thread count
    }
    _write_json(folder / STACK_FILE, record)  # written last: its presence marks a finished build


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def describe_reconstruction(reconstruction: dict) -> str:
    r = reconstruction
    return (
        f"tiny VAE reconstruction on {r['frames']} held-out {r['split']} frames: MSE {r['mse']:.5f}, "
        f"PSNR {r['psnr_db']:.2f} dB (untrained: MSE {r['untrained_mse']:.5f}, PSNR {r['untrained_psnr_db']:.2f} dB; "
        f"{r['steps']} steps in {r['train_seconds']} s)"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Build the tiny pretrained stack (pretrained/README.md).")
    parser.add_argument("--out", required=True, help="stack folder to create, e.g. pretrained/tiny")
    parser.add_argument("--data", required=True, help="dataset folder whose train/val frames train the VAE, e.g. data/toy")
    parser.add_argument("--config", default=None, help="tiny-stack YAML (default configs/pretrained/tiny.yaml)")
    parser.add_argument("--vae-steps", type=int, default=None, help="override vae.train.steps")
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete stack with this config exists")
    args = parser.parse_args(argv)
    if args.force:
        out_dir = build_tiny_stack(args.out, args.data, config=args.config, vae_steps=args.vae_steps)
    else:
        out_dir = ensure_tiny_stack(args.out, args.data, config=args.config, vae_steps=args.vae_steps)
    record = stack_record(out_dir)
    if record["config"] != _resolve(args.config, args.vae_steps).to_dict():
        print(f"note: the stack in {out_dir} was built from another config than the one asked for; "
              "pass --force to rebuild it")
    for name, component in record["components"].items():
        size = component.get("parameters", component.get("vocab_size", ""))
        print(f"{name:36s} {component['class']:24s} {size:>10}")
    print(describe_reconstruction(record["vae_reconstruction"]))
    print(f"tiny stack ready in {out_dir}")


if __name__ == "__main__":
    main()
