"""Memory tiers (src/memory.py, docs/own_story.md "Will it fit my GPU?") on the session's tiny runs, on the
CPU (execution device cpu): model and sequential offloading install hooks on every model a pipeline runs,
the hooks run, and the frames are the same pixels as without them; the hooks come off again; VAE slicing
and tiling are switched on the VAE; drawing several stories in a row leaves no tensors behind."""
from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from src.memory import LeafOnload, apply_memory_tier, parse_dtype

CAPTIONS = ["Ada and Bob walked on the beach.", "They played on the beach.", "Cleo waited in the city."]


def arrays(images) -> list:
    return [np.asarray(image.convert("RGB")) for image in images]


@pytest.fixture(scope="module")
def storygptv(stage1_run):
    from src.pipelines.storygptv import StoryGPTVPipeline

    return StoryGPTVPipeline.from_run(stage1_run, device="cpu")


def hooked(module) -> bool:
    return getattr(module, "_hf_hook", None) is not None


@pytest.mark.parametrize("tier", ["model", "sequential"])
def test_storygptv_offload_hooks_every_model_and_draws_the_same_pixels(storygptv, tier):
    plain = arrays(f.image for f in storygptv(CAPTIONS, seed=1))
    offload = apply_memory_tier(storygptv, tier, "cpu")
    try:
        assert storygptv.execution_device == torch.device("cpu")
        for name, group in storygptv.components():
            assert all(hooked(m) for m in group), name  # every model's root carries a hook
        assert any(hooked(m) for m in storygptv.unet.modules() if m is not storygptv.unet)
        drawn = arrays(f.image for f in storygptv(CAPTIONS, seed=1))
        if tier == "model":
            assert offload.residency.moves >= 4  # image encoder, text encoder, fuse, UNet, VAE took turns
        else:
            unet_leaves = [m._hf_hook for m in storygptv.unet.modules() if isinstance(getattr(m, "_hf_hook", None), LeafOnload)]
            assert unet_leaves and all(hook.calls > 0 for hook in unet_leaves)  # every UNet layer moved for its forward
            assert offload.pinned_bytes > 0  # e.g. the character encoder's normalisation constants
    finally:
        offload.remove()
    assert not any(hooked(m) for module in storygptv.modules() for m in module.modules())
    assert storygptv.execution_device is None
    assert all(np.array_equal(a, b) for a, b in zip(plain, drawn))


def test_seed_story_offload_draws_the_same_beats(seed_runs):
    from src.pipelines.seed_story import SeedStoryPipeline
    from src.pipelines.story_writer import DecodeSettings

    pipe = SeedStoryPipeline.from_runs(seed_runs["mllm"], device="cpu")
    opening = seed_runs["data"] / "images/test_00000_0.png"
    captions = ["Bob was in the city.", "Bob walked in the city.", "Cleo met Bob."]
    settings = {"decode": DecodeSettings(temperature=0), "captions": captions}

    def beats():
        return [(b.text, np.asarray(b.image)) for b in pipe.stream(captions[0], opening, 3, **settings)]
    plain = beats()
    for tier in ("model", "sequential"):
        offload = apply_memory_tier(pipe, tier, "cpu")
        assert all(hooked(m) for m in pipe.modules())
        try:
            drawn = beats()
        finally:
            offload.remove()
        assert [t for t, _ in drawn] == [t for t, _ in plain]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(plain, drawn)), tier


def test_vae_slicing_and_tiling_are_switched_on_the_vae(storygptv):
    offload = apply_memory_tier(storygptv, "none", "cpu", vae_slicing=True, vae_tiling=True)
    assert storygptv.vae.use_slicing and storygptv.vae.use_tiling and offload.hooked == []
    apply_memory_tier(storygptv, "none", "cpu")
    assert not storygptv.vae.use_slicing and not storygptv.vae.use_tiling


def test_an_unknown_tier_or_dtype_is_an_error():
    with pytest.raises(ValueError, match="--offload: 'disk' is not one of none, model, sequential"):
        apply_memory_tier(None, "disk")
    with pytest.raises(ValueError, match="--dtype: 'fp8'"):
        parse_dtype("fp8", "cpu")
    assert parse_dtype("auto", "cpu") == torch.float32 and parse_dtype("bf16", "cpu") == torch.bfloat16


def live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if torch.is_tensor(obj))


def test_drawing_stories_in_a_row_leaves_no_tensors_behind(storygptv):
    """StoryDiffusion #132 (VRAM growing across generations): after each story and `release()`, the live
    tensors are as many as after the story before."""
    counts = []
    for seed in range(4):
        storygptv(CAPTIONS, seed=seed)
        storygptv.release()
        counts.append(live_tensors())
    assert counts[1] == counts[2] == counts[3], counts


def test_half_precision_draws(stage1_run):
    from src.pipelines.storygptv import StoryGPTVPipeline

    pipe = StoryGPTVPipeline.from_run(stage1_run, device="cpu", dtype=torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.image_encoder.visual_projection.weight.dtype == torch.bfloat16
    frames = pipe(CAPTIONS[:1], seed=0)
    assert frames[0].image.size == (64, 64) and frames[0].fused == ["Ada", "Bob"]
