"""Char-LDM's memory options on the toy recipe and tiny stack: gradient checkpointing with the
attention-control loss (same loss and gradients as without it, maps recorded once), and frozen parts
held in the compute dtype under mixed precision (trained weights stay fp32)."""
from __future__ import annotations

from pathlib import Path

import torch

RECIPE = "configs/char_ldm/toy.yaml"


def build(overrides: list[str]):
    from src.config import load_config
    from src.tasks import build_task

    torch.manual_seed(0)
    return build_task(load_config(RECIPE, overrides))


def one_batch(task, size: int = 4) -> dict:
    dataset = task.train_dataset()
    return task.collate([dataset[i] for i in range(size)])


def loss_and_grads(task, batch: dict, seed: int = 3):
    """One seeded training step (fp32, no autocast): its losses, the trainable grads and the number of
    attention maps the step recorded."""
    recorded = []
    stop = task.attention_store.stop
    task.attention_store.stop = lambda: recorded.append(len(task.attention_store.maps)) or stop()
    torch.manual_seed(seed)
    losses = task(batch)
    losses["loss"].backward()
    task.attention_store.stop = stop
    grads = {n: p.grad.clone() for n, p in task.named_parameters() if p.requires_grad and p.grad is not None}
    return losses, grads, recorded


def test_gradient_checkpointing_gives_the_same_loss_and_grads_and_records_the_maps_once(char_ldm_overrides):
    overrides = char_ldm_overrides + ["train.mixed_precision=no", "model.mask_loss_prob=0.0",
                                      "model.caption_dropout=0.0", "model.text_only_prob=0.0"]
    plain = build(overrides)
    checkpointed = build(overrides + ["model.gradient_checkpointing=true"])
    checkpointed.load_state_dict(plain.state_dict())
    assert any(getattr(m, "gradient_checkpointing", False) for m in checkpointed.unet.modules())
    batch = one_batch(plain)
    store = checkpointed.attention_store
    losses_a, grads_a, recorded_a = loss_and_grads(plain, batch)
    losses_b, grads_b, recorded_b = loss_and_grads(checkpointed, batch)

    # One map per recorded layer in the forward; the backward's re-run of the checkpointed blocks would
    # append to the store's (emptied) list if it recorded again.
    layers = len(plain.attention_modules)
    assert recorded_a == recorded_b == [layers]
    assert store.maps == [] and not store.recording
    assert float(losses_a["attention"]) != 0.0
    for key in ("loss", "mse", "attention"):
        torch.testing.assert_close(losses_b[key], losses_a[key], rtol=1e-5, atol=1e-7)
    assert grads_a.keys() == grads_b.keys()
    assert {n.split(".")[0] for n in grads_a} == {"unet", "fuse", "image_encoder"}
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)


def test_frozen_parts_are_held_in_the_compute_dtype_and_the_step_matches_fp32(char_ldm_overrides):
    task = build(char_ldm_overrides + ["model.mask_loss_prob=0.0"])
    batch = one_batch(task)

    def step(seed=5):
        torch.manual_seed(seed)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return {k: float(v.detach()) for k, v in task(batch).items()}

    reference = step()
    task.hold_frozen_in(torch.bfloat16)
    for name, param in task.named_parameters():
        expected = torch.float32 if param.requires_grad else torch.bfloat16
        assert param.dtype == expected, f"{name}: {param.dtype}"
    groups = {name.split(".")[0]: [] for name, _ in task.named_parameters()}
    for name, param in task.named_parameters():
        groups[name.split(".")[0]].append(param.dtype)
    assert set(groups["vae"]) == set(groups["text_encoder"]) == {torch.bfloat16}
    assert set(groups["unet"]) == set(groups["fuse"]) == {torch.float32}
    assert set(groups["image_encoder"]) == {torch.bfloat16, torch.float32}   # frozen tower layers, trained ones
    lowered = step()
    assert lowered["attention"] != 0
    for key in reference:   # autocast already ran these layers in bf16: only rounding differs
        assert abs(lowered[key] - reference[key]) <= 0.05 * abs(reference[key]) + 1e-4, (key, lowered, reference)

    held = {name: param.detach().clone() for name, param in task.named_parameters()}
    task.hold_frozen_in(None)   # fp32 for sampling and back: the bf16 values survive the round trip exactly
    assert all(param.dtype == torch.float32 for param in task.parameters())
    task.hold_frozen_in(torch.bfloat16)
    assert all(torch.equal(param, held[name]) for name, param in task.named_parameters())


def test_char_ldm_trains_with_gradient_checkpointing_through_the_entry_point(char_ldm_overrides):
    from src.engine.tracking import read_metrics
    from src.train import main

    overrides = char_ldm_overrides + ["run_name=ckpt", "train.max_steps=3", "train.checkpoint_every=3",
                                      "model.gradient_checkpointing=true", "sample.num_stories=1"]
    assert main(["--config", RECIPE, *overrides]) == 0
    root = next(o.split("=", 1)[1] for o in overrides if o.startswith("output_root="))
    metrics = read_metrics(Path(root) / "char_ldm" / "toy" / "ckpt")
    assert len(metrics) == 3 and all(m["train/attention"] != 0 for m in metrics)
