"""model.cache_latents (src/tasks/frozen_cache.py): the stage-1 tasks read VAE posteriors and caption states
from an on-disk cache keyed by a fingerprint of the data and the frozen models."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.test_train_ldm import RECIPE, final_weights, kill_after_checkpoint, run, run_dir, train_cmd

BATCH = (3, 0, 17, 5)


def build(overrides: list[str], cache: bool, tmp_path):
    from src.config import load_config
    from src.tasks import build_task

    torch.manual_seed(0)  # the same trainable initialisation for both
    return build_task(load_config(RECIPE, overrides + [f"model.cache_latents={str(cache).lower()}",
                                                        f"model.cache_dir={tmp_path}/cache"]))


def losses_with_and_without(overrides, tmp_path):
    tasks = [build(overrides, cache, tmp_path) for cache in (False, True)]
    dataset = tasks[0].train_dataset()
    batch = tasks[0].collate([dataset[i] for i in BATCH])
    losses = []
    for task in tasks:
        torch.manual_seed(1)  # the same latent sample, noise, timesteps and caption drops
        losses.append(task.training_step(batch)["loss"].detach())
    return tasks, losses


@pytest.mark.parametrize("task_kind", ["ldm", "char_ldm"])
def test_cached_step_gives_the_uncached_loss(task_kind, char_ldm_overrides, tmp_path):
    overrides = char_ldm_overrides + ["model.caption_dropout=0.5"]
    if task_kind == "ldm":
        overrides.append("model.character_conditioning=false")
    tasks, losses = losses_with_and_without(overrides, tmp_path)
    cache = tasks[1].frozen_cache
    assert cache["moments"].shape[0] == len(tasks[0].train_dataset()) == cache["text_states"].shape[0]
    assert torch.allclose(losses[0], losses[1], rtol=1e-4), losses


def test_cache_is_written_once_and_reused_without_the_vae_encoder(ldm_overrides, tmp_path):
    first = build(ldm_overrides, True, tmp_path)
    dataset = first.train_dataset()
    batch = first.collate([dataset[i] for i in BATCH])
    first.training_step(batch)
    folder = first.cache_folder()
    written = (folder / "frozen.safetensors").stat().st_mtime_ns
    assert [p.name for p in folder.iterdir()] == ["frozen.safetensors"]  # no temporary file left

    second = build(ldm_overrides, True, tmp_path)
    calls = []
    second.vae.encoder.register_forward_hook(lambda *args: calls.append(1))
    second.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    second.training_step(batch)
    assert calls == [] and (folder / "frozen.safetensors").stat().st_mtime_ns == written
    assert torch.equal(second.frozen_cache["moments"], first.frozen_cache["moments"])


def test_changed_model_or_data_gives_another_cache_folder(ldm_overrides, toy_root, tmp_path):
    root = Path(shutil.copytree(toy_root, tmp_path / "toy"))
    overrides = ldm_overrides + [f"data.root={root}"]
    task = build(overrides, True, tmp_path)
    base = task.cache_folder()
    assert base.parent == tmp_path / "cache"
    assert task.cache_folder() == base  # the fingerprint is stable
    assert build(overrides + ["data.image_size=32"], True, tmp_path).cache_folder() != base
    for weight in (task.vae.encoder.conv_in.bias, task.text_encoder.get_input_embeddings().weight):
        kept = weight.detach().clone()
        with torch.no_grad():
            weight.view(-1)[0] += 1e-3
        assert task.cache_folder() != base
        with torch.no_grad():
            weight.copy_(kept)
    assert task.cache_folder() == base
    lines = (root / "train.jsonl").read_text().splitlines()
    (root / "train.jsonl").write_text("\n".join(lines[::-1]) + "\n")  # the same stories in another order
    assert task.cache_folder() != base
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    frame = root / task.train_dataset().stories[0].images[0]
    os.utime(frame, ns=(frame.stat().st_atime_ns, frame.stat().st_mtime_ns + 10**9))  # a re-written image
    assert task.cache_folder() != base


def test_killed_run_with_the_cache_resumes_exactly(ldm_overrides, tmp_path):
    common = ldm_overrides + ["train.max_steps=12", "train.checkpoint_every=4", "train.keep_last=2",
                              "model.caption_dropout=0.3", "model.cache_latents=true",
                              f"model.cache_dir={tmp_path}/cache"]
    run(train_cmd(common + ["run_name=straight"]))
    killed = kill_after_checkpoint(common, "killed", "step_000008")
    run(train_cmd(common + ["run_name=killed", "train.resume=latest"]))
    straight, resumed = final_weights(run_dir(common, "straight"), 12), final_weights(killed, 12)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[n], resumed[n]) for n in straight)
