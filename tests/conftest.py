"""Shared fixtures: a small toy dataset and a tiny pretrained stack, built once per test session with the
same generators the framework uses (src.data.toy, src.tools.tiny_stack)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    from src.data.toy import generate_toy_dataset

    return generate_toy_dataset(tmp_path_factory.mktemp("data") / "toy", seed=0, num_train=48, num_val=8,
                                num_test=8)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory, toy_root) -> Path:
    from src.tools.tiny_stack import build_tiny_stack

    return build_tiny_stack(tmp_path_factory.mktemp("pretrained") / "tiny", toy_root, vae_steps=60)


@pytest.fixture(scope="session")
def seed_stack(tiny_root, toy_root) -> Path:
    """The tiny stack with SEED-Story's pieces: the SDXL-layout UNet, the tiny Qwen-ViT (briefly trained)
    and the tiny Llama (as tests/test_story_sft.py builds them)."""
    from src.tools.tiny_llm import ensure_tiny_llm
    from src.tools.tiny_seed import ensure_tiny_seed

    ensure_tiny_seed(tiny_root, toy_root, vit_steps=30)
    ensure_tiny_llm(tiny_root / "Llama-2-7b-hf", toy_root, "llama", steps=150)
    return tiny_root


@pytest.fixture
def char_ldm_overrides(toy_root, tiny_root, tmp_path) -> list[str]:
    """Overrides that point the toy recipe (Char-LDM) at the session's small dataset and tiny stack."""
    return [f"data.root={toy_root}", f"tiny_stack={tiny_root}",
            f"model.pretrained={tiny_root}/stable-diffusion-v1-5", f"model.image_encoder={tiny_root}/clip",
            f"output_root={tmp_path}/outputs", "logging.tensorboard=false", "train.batch_size=8",
            "train.log_every=1", "train.checkpoint_every=5", "sample.num_stories=1",
            "sample.num_inference_steps=2", "model.start_merge_step=1", "data.num_workers=0"]


@pytest.fixture
def ldm_overrides(char_ldm_overrides) -> list[str]:
    """The same for the baseline LDM: the toy recipe with character conditioning switched off."""
    return char_ldm_overrides + ["model.character_conditioning=false"]
