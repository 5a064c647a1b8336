"""Char-LDM's fixed references through the character tower (model.cache_references): the frozen layers run
once per fixed reference image and are kept, only the trained layers run per step; losses and gradients
are those of running the whole tower on every reference."""
from __future__ import annotations

import torch

from tests.test_char_ldm_memory import build, loss_and_grads, one_batch

EXACT = ["train.mixed_precision=no", "model.mask_loss_prob=0.0", "model.caption_dropout=0.0",
         "model.text_only_prob=0.0", "model.image_encoder_trainable_layers=1"]  # the tiny tower: 1 frozen layer


def rows_through_the_first_layer(task) -> list[int]:
    """Record how many images each call of the tower's first (frozen) layer processes."""
    rows: list[int] = []
    task.image_encoder.vision_model.encoder.layers[0].register_forward_hook(
        lambda module, args, output: rows.append(args[0].shape[0]))
    return rows


def test_the_split_tower_is_clip_vision_model_with_projection(tiny_root):
    from transformers import CLIPVisionModelWithProjection

    from src.models.character_encoder import CharacterImageEncoder

    encoder = CharacterImageEncoder.from_pretrained(str(tiny_root / "clip"), 1)
    tower = CLIPVisionModelWithProjection.from_pretrained(tiny_root / "clip")
    size = encoder.image_size
    pixels = torch.rand(3, 3, size, size)
    normalised = (pixels - encoder.mean) / encoder.std
    with torch.no_grad():
        torch.testing.assert_close(encoder(pixels), tower(pixel_values=normalised).image_embeds, rtol=0, atol=0)


def test_cached_fixed_references_give_the_same_losses_and_grads(char_ldm_overrides):
    for prob in ("1.0", "0.5"):
        overrides = char_ldm_overrides + EXACT + [f"model.fixed_reference_prob={prob}"]
        cached, plain = build(overrides), build(overrides + ["model.cache_references=false"])
        plain.load_state_dict(cached.state_dict())
        batch = one_batch(cached, size=6)
        rows_cached, rows_plain = rows_through_the_first_layer(cached), rows_through_the_first_layer(plain)
        for seed in (3, 4):  # the second step reuses the states kept by the first
            cached.zero_grad(set_to_none=True)
            plain.zero_grad(set_to_none=True)
            losses_a, grads_a, _ = loss_and_grads(plain, batch, seed)
            losses_b, grads_b, _ = loss_and_grads(cached, batch, seed)
            for key in ("loss", "mse", "attention"):
                torch.testing.assert_close(losses_b[key], losses_a[key], rtol=1e-5, atol=1e-7)
            assert grads_a.keys() == grads_b.keys() and any(n.startswith("image_encoder") for n in grads_a)
            for name in grads_a:
                torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)
        fixed = len(cached.fixed_references())
        references = sum(rows_plain) // 2  # every chosen reference, every step, without the cache
        assert rows_plain[0] == rows_plain[1] == references > 0
        if prob == "1.0":  # the fixed references once (all names), then never again
            assert rows_cached == [fixed]
        else:  # the fresh crops only
            assert rows_cached[0] == fixed and all(r < references for r in rows_cached[1:])


def test_the_kept_states_follow_the_frozen_weights_dtype(char_ldm_overrides):
    task = build(char_ldm_overrides + EXACT + ["model.fixed_reference_prob=1.0"])
    batch = one_batch(task)
    torch.manual_seed(0)
    task(batch)
    assert {s.dtype for s in task.fixed_reference_states().values()} == {torch.float32}
    task.hold_frozen_in(torch.bfloat16)  # what the engine does under bf16 mixed precision
    with torch.autocast("cpu", dtype=torch.bfloat16):
        task(batch)
        states = task.fixed_reference_states()
        name = sorted(states)[0]
        expected = task.image_encoder.frozen_states(task.fixed_references()[name][None])[0]
    assert states[name].dtype == torch.bfloat16
    torch.testing.assert_close(states[name], expected)
