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

# `slow` beyond the tests marked in their files: every test that needs a session training fixture, and the
# tests that took over 5 s in a full run on 2 cores (pytest --durations, 2026-12-07). CI runs them all;
# `bash scripts/test.sh --fast` leaves them out.
SLOW_FIXTURES = {"stage1_run", "seed_runs", "align_run", "demo", "demo_root"}
SLOW_TESTS = (
    "tests/test_align.py::test_tiny_llms_load_through_the_auto_classes_and_pretraining_lowered_perplexity",
    "tests/test_assets.py::test_processes_started_together_build_the_toy_dataset_once",
    "tests/test_bad_images.py::test_ldm_entry_names_the_bad_image",
    "tests/test_bad_images.py::test_story_sft_entry_names_the_bad_image",
    "tests/test_bench_story_context.py::test_each_mode_is_scored_by_the_reference_datasets_classifier",
    "tests/test_bench_story_context.py::test_sink_images_rows_the_released_refill_the_spread_the_bins_the_text_and_the_plot",
    "tests/test_bench_story_context.py::test_without_the_trained_classifier_the_bench_stops_in_one_line",
    "tests/test_demos.py::test_an_interrupted_stage_continues_from_its_checkpoint",
    "tests/test_demos.py::test_the_chain_trains_three_stages_and_scores_val_stories",
    "tests/test_demos.py::test_the_default_demo_trains_char_ldm_and_scores_its_test_stories",
    "tests/test_entry_errors.py::test_eval_run_names_the_broken_story_line",
    "tests/test_entry_errors.py::test_generate_names_the_broken_story_line",
    "tests/test_entry_errors.py::test_train_names_the_broken_story_line",
    "tests/test_latent_cache.py::test_killed_run_with_the_cache_resumes_exactly",
    "tests/test_loop_logging.py::test_logging_rarely_changes_neither_the_logged_values_nor_the_weights_nor_adds_host_reads",
    "tests/test_shape_check.py::test_detokenizer_recipe_sdxl_unet_and_qwen_vit_at_real_size",
    "tests/test_story.py::test_story_sh_reports_a_bad_story_in_one_line",
    "tests/test_story_adapt.py::test_a_resumed_run_matches_and_generation_draws_with_the_adapted_detokenizer",
    "tests/test_story_adapt.py::test_loss_falls_on_a_tiny_batch",
    "tests/test_story_eval.py::test_eval_sh_generates_and_scores_stories_beat_by_beat",
    "tests/test_story_sft.py::test_loss_falls_through_the_real_entry",
    "tests/test_story_sft_zero.py::test_zero2_run_consolidates_exactly_the_trainable_weights",
    "tests/test_tiny_stack.py::test_ensure_rebuilds_an_incomplete_stack_identically_and_keeps_other_tools_files",
    "tests/test_tiny_stack.py::test_stack_has_every_file_and_records_what_was_built",
    "tests/test_train_char_ldm.py::test_char_ldm_loss_falls_and_both_extra_losses_run",
    "tests/test_train_char_ldm.py::test_resumed_char_ldm_run_matches_an_uninterrupted_one",
    "tests/test_train_detokenizer.py::test_loss_falls_and_reconstructions_are_written",
    "tests/test_train_detokenizer.py::test_resumed_run_matches_an_uninterrupted_one",
    "tests/test_train_ldm.py::test_baseline_loss_falls_well_below_its_start",
    "tests/test_train_ldm.py::test_generate_rejects_weights_of_another_model",
    "tests/test_train_ldm.py::test_generate_writes_the_story_layout_deterministically",
    "tests/test_train_ldm.py::test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_run",
    "tests/test_train_ldm.py::test_starting_over_an_existing_run_is_refused",
    "tests/test_train_ldm.py::test_two_process_cpu_training",
    "tests/test_train_zero.py::test_zero2_ema_equals_a_ddp_runs",
    "tests/test_train_zero.py::test_zero_run_trains_resumes_exactly_and_consolidates_weights",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or item.nodeid.split("[")[0] in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
