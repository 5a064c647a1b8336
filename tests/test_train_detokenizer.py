"""SEED-Story stage 1 (de-tokenizer pre-training) through the real entry point on the small toy dataset
with the tiny stack's SDXL-layout UNet and tiny Qwen-ViT tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from src.engine.tracking import read_metrics

RECIPE = "configs/detokenizer/toy.yaml"


@pytest.fixture(scope="session")
def seed_root(tiny_root, toy_root) -> Path:
    from src.tools.tiny.seed import ensure_tiny_seed

    return ensure_tiny_seed(tiny_root, toy_root, vit_steps=30)


@pytest.fixture
def detok_overrides(seed_root, toy_root, tmp_path) -> list[str]:
    return [f"data.root={toy_root}", f"tiny_stack={seed_root}", f"model.pretrained={seed_root}/sdxl",
            f"model.tokenizer_path={seed_root}/qwen_vit.safetensors", f"output_root={tmp_path}/outputs",
            "logging.tensorboard=false", "train.batch_size=8", "train.log_every=1", "sample.num_stories=1",
            "sample.num_inference_steps=2", "data.num_workers=0", "train.max_minutes=0"]


def run_dir(overrides: list[str], name: str) -> Path:
    root = next(o.split("=", 1)[1] for o in overrides if o.startswith("output_root="))
    return Path(root) / "detokenizer" / "toy" / name


def test_tiny_seed_pieces(seed_root):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(seed_root / "sdxl", subfolder="unet")
    assert unet.config.addition_embed_type == "text_time"
    record = json.loads((seed_root / "qwen_vit.json").read_text())
    assert set(record["linear_probe_val"]) == {"char_set_acc", "bg_acc", "frames"}


def test_a_tokenizer_from_another_recipe_is_kept_with_a_note(seed_root, toy_root, capsys):
    from src.tools.tiny.seed import VIT_FILE, VIT_TRAIN, ensure_tiny_seed

    before = (seed_root / VIT_FILE).stat().st_mtime_ns
    ensure_tiny_seed(seed_root, toy_root)  # the recipe's call: the session's 30-step tokenizer is not its own
    out = capsys.readouterr().out
    assert f"this tokenizer trained 30 steps, the current recipe {VIT_TRAIN['steps']}" in out
    assert (seed_root / VIT_FILE).stat().st_mtime_ns == before


def test_loss_falls_and_reconstructions_are_written(detok_overrides):
    from src.train import main

    overrides = detok_overrides + ["run_name=learn", "train.max_steps=40", "optim.warmup_steps=5",
                                   "train.checkpoint_every=40", "train.sample_every=0"]
    assert main(["--config", RECIPE, *overrides]) == 0
    folder = run_dir(overrides, "learn")
    losses = [m["train/loss"] for m in read_metrics(folder)]
    assert len(losses) == 40
    start, end = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert end < 0.6 * start, f"loss went from {start:.3f} to {end:.3f}"
    weights = load_file(str(folder / "checkpoints" / "step_000040" / "trainable.safetensors"))
    assert any(k.startswith("detokenizer.resampler.") for k in weights)
    assert any(k.startswith("detokenizer.unet.") for k in weights)
    assert not any(k.startswith(("vae.", "visual_tokenizer.")) for k in weights)
    samples = folder / "samples" / "step_000040"
    line = json.loads((samples / "stories.jsonl").read_text().splitlines()[0])
    assert all((samples / image).is_file() for image in line["images"])
    assert json.loads((samples / "generation.json").read_text())["task"] == "detokenizer"


def test_to_kv_mode_and_reconstruction_through_generate(detok_overrides, tmp_path):
    from src.generate import main as generate
    from src.train import main

    overrides = detok_overrides + ["run_name=kv", "train.max_steps=1", "train.checkpoint_every=1",
                                   "model.train_unet=to_kv", "model.normalize=released"]
    assert main(["--config", RECIPE, *overrides]) == 0
    folder = run_dir(overrides, "kv")
    weights = load_file(str(folder / "checkpoints" / "step_000001" / "trainable.safetensors"))
    unet_keys = [k for k in weights if k.startswith("detokenizer.unet.")]
    assert unet_keys and all(k.split(".")[-2] in ("to_k", "to_v") for k in unet_keys)
    # The reconstruction entry: a split's frames encoded and drawn back into the generated-story layout.
    args = ["--checkpoint", str(folder), "--split", "test", "--num-stories", "1", "sample.num_inference_steps=2"]
    assert generate([*args, "--out", str(tmp_path / "a")]) == 0
    assert generate([*args, "--out", str(tmp_path / "b")]) == 0
    line = json.loads((tmp_path / "a" / "stories.jsonl").read_text())
    assert len(line["images"]) == 4 and line["characters"] and line["backgrounds"]
    for image in line["images"]:  # deterministic: the same seed draws the same frames
        assert (tmp_path / "a" / image).read_bytes() == (tmp_path / "b" / image).read_bytes()
    info = json.loads((tmp_path / "a" / "generation.json").read_text())
    assert info["split"] == "test" and info["checkpoint"].endswith("step_000001")


def test_resumed_run_matches_an_uninterrupted_one(detok_overrides):
    from src.train import main

    common = detok_overrides + ["optim.schedule=constant", "optim.warmup_steps=0", "train.checkpoint_every=3",
                                "train.sample_every=100", "model.uncond_prob=0.5"]
    assert main(["--config", RECIPE, *common, "run_name=straight", "train.max_steps=6"]) == 0
    assert main(["--config", RECIPE, *common, "run_name=split", "train.max_steps=3"]) == 0
    assert main(["--config", RECIPE, *common, "run_name=split", "train.max_steps=6", "train.resume=latest"]) == 0
    step6 = "checkpoints/step_000006/trainable.safetensors"
    straight = load_file(str(run_dir(common, "straight") / step6))
    resumed = load_file(str(run_dir(common, "split") / step6))
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), f"{name} differs after resume"


@pytest.mark.parametrize("key,value", [("train_unet", "partial"), ("normalize", "l2")])
def test_bad_choice_names_its_key(key, value):
    from src.config import load_config
    from src.tasks import build_task

    cfg = load_config(RECIPE, [f"model.{key}={value}"])
    with pytest.raises(ValueError, match=f"key 'model.{key}': '{value}'"):
        build_task(cfg)


def test_frozen_cache_gives_the_same_loss(detok_overrides):
    from src.config import load_config
    from src.tasks import build_task

    tasks = []
    for cache in ("false", "true"):
        torch.manual_seed(0)  # the same resampler initialisation for both
        tasks.append(build_task(load_config(RECIPE, detok_overrides + [f"model.cache_frozen={cache}",
                                                                          "model.uncond_prob=0.5"])))
    dataset = tasks[0].train_dataset()
    batch = tasks[0].collate([dataset[i] for i in (3, 0, 17, 5)])
    losses = []
    for task in tasks:
        torch.manual_seed(1)  # the same latent sample, noise, timesteps and condition drops
        losses.append(task.training_step(batch)["loss"])
    assert tasks[1].frozen_cache["features"].shape[0] == len(dataset)
    assert torch.allclose(losses[0], losses[1], rtol=1e-4), losses
