"""Shared fixtures, built once per test session with the generators the framework uses: a small toy dataset
and a tiny pretrained stack (src.data.toy, src.tools.tiny.stack), SEED-Story's tiny pieces, and the tiny
SEED-Story runs several test modules draw with. Tests that train for more than a few seconds are marked
`slow`; `bash scripts/test.sh --fast` leaves them out."""
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
    from src.tools.tiny.stack import build_tiny_stack

    return build_tiny_stack(tmp_path_factory.mktemp("pretrained") / "tiny", toy_root, vae_steps=60)


@pytest.fixture(scope="session")
def seed_stack(tiny_root, toy_root) -> Path:
    """The tiny stack with SEED-Story's pieces: the SDXL-layout UNet, the tiny Qwen-ViT (briefly trained)
    and the tiny Llama (as tests/test_story_sft.py builds them)."""
    from src.tools.tiny.llm import ensure_tiny_llm
    from src.tools.tiny.seed import ensure_tiny_seed

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


@pytest.fixture(scope="session")
def seed_runs(tmp_path_factory, seed_stack, toy_root) -> dict:
    """A detokenizer run (2 steps on the toy frames) and a story_sft run (30 steps on long toy stories: enough
    that greedy decoding goes on past the opening) that names it as its de-tokenizer, as the demo chains
    them: {"mllm", "detok", "data" (the long stories), "out" (the outputs folder)}."""
    from src.data.toy import generate_toy_dataset
    from src.train import main

    tmp = tmp_path_factory.mktemp("seed_runs")
    story_root = generate_toy_dataset(tmp / "toy_story", seed=0, num_train=4, num_val=1, num_test=2,
                                      story_frames=30, chunk_frames=10, num_workers=1, progress=False)
    common = [f"tiny_stack={seed_stack}", f"model.tokenizer_path={seed_stack}/qwen_vit.safetensors",
              f"output_root={tmp}/outputs", "logging.tensorboard=false", "train.max_minutes=0", "data.num_workers=0",
              "run_name=gen", "train.log_every=5"]
    detok = tmp / "outputs/detokenizer/toy/gen"
    assert main(["--config", "configs/detokenizer/toy.yaml", *common, f"data.root={toy_root}",
                 f"model.pretrained={seed_stack}/sdxl", "train.max_steps=2", "train.batch_size=4",
                 "train.checkpoint_every=2", "train.sample_every=0", "model.cache_frozen=false",
                 "sample.num_inference_steps=2", "sample.num_stories=1", "sample.batch_size=16"]) == 0
    assert main(["--config", "configs/story_sft/toy.yaml", *common, f"data.root={story_root}",
                 f"model.llm={seed_stack}/Llama-2-7b-hf", "train.max_steps=30", "optim.warmup_steps=3",
                 "train.checkpoint_every=30", "train.validate_every=0", "train.batch_size=4",
                 f"model.detokenizer_run={detok}"]) == 0
    return {"mllm": tmp / "outputs/story_sft/toy_story/gen", "detok": detok, "data": story_root, "out": tmp / "outputs"}


@pytest.fixture(scope="session")
def stage1_run(tmp_path_factory, toy_root, tiny_root) -> Path:
    """A Char-LDM run of 2 steps on the small toy set: a checkpoint to align with, to draw with, to score."""
    from src.train import main

    out = tmp_path_factory.mktemp("stage1")
    assert main(["--config", "configs/char_ldm/toy.yaml", f"data.root={toy_root}", f"tiny_stack={tiny_root}",
                 f"model.pretrained={tiny_root}/stable-diffusion-v1-5", f"model.image_encoder={tiny_root}/clip",
                 f"output_root={out}", "logging.tensorboard=false", "train.batch_size=4", "train.max_steps=2",
                 "train.checkpoint_every=2", "sample.num_stories=1", "sample.num_inference_steps=1", "run_name=s1"]) == 0
    return out / "char_ldm" / "toy" / "s1"
