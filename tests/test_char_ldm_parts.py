"""Char-LDM's parts on their own: name-token matching and the fuse, the attention control loss and the
processors that record it, reference crops and augmentation."""
from __future__ import annotations

import pytest
import torch
from transformers import CLIPTokenizer

from src.data.references import augment_references, crop_reference
from src.models.attention_control import (
    AttentionStore,
    attention_control_loss,
    install_processors,
    name_token_weights,
)
from src.models.fuse import FuseModule
from src.models.name_tokens import find_names, name_patterns, name_token_positions

NAMES = ["fred", "wilma", "mr slate", "dino"]


@pytest.fixture(scope="module")
def tokenizer(tiny_root):
    return CLIPTokenizer.from_pretrained(tiny_root / "stable-diffusion-v1-5" / "tokenizer")


def spelled(tokenizer, caption, positions):
    ids = tokenizer(caption, padding="max_length", max_length=77).input_ids
    return tokenizer.decode([ids[p] for p in positions]).strip()


def test_names_match_case_and_punctuation_tolerantly_longest_first():
    patterns = name_patterns(NAMES, {"slate": "mr slate"})
    caption = "Mr. Slate yelled at FRED, then slate and Fred's dino ran; fredrick did not."
    assert [(caption[a:b], name) for a, b, name in find_names(caption, patterns)] == [
        ("Mr. Slate", "mr slate"), ("FRED", "fred"), ("slate", "mr slate"), ("Fred", "fred"), ("dino", "dino")]


def test_an_alias_of_an_unknown_character_is_an_error():
    with pytest.raises(ValueError, match="'slat'.*'mr slat'"):
        name_patterns(NAMES, {"slat": "mr slat"})


def test_token_positions_cover_every_piece_of_each_name(tokenizer):
    patterns = name_patterns(NAMES, {})
    caption = "Wilma and mr slate are talking in the kitchen with Dino."
    found = name_token_positions(tokenizer, caption, patterns, 77)
    assert [name for name, _ in found] == ["wilma", "mr slate", "dino"]
    positions = dict(found)
    assert len(positions["mr slate"]) >= 2  # a multi-word name is several tokens, all of them marked
    for name, pos in found:
        assert pos == list(range(pos[0], pos[-1] + 1))
        assert spelled(tokenizer, caption, pos).lower().replace(" ", "") == name.replace(" ", "")


def test_fuse_writes_exactly_the_name_token_positions(tokenizer):
    torch.manual_seed(0)
    patterns = name_patterns(NAMES, {})
    captions = ["Fred talks to mr slate.", "The room is empty.", "Dino runs after Mr Slate and fred."]
    token_char = torch.full((3, 77), -1, dtype=torch.long)
    expected = torch.zeros(3, 77, dtype=torch.bool)
    for b, caption in enumerate(captions):
        order = {}
        for name, pos in name_token_positions(tokenizer, caption, patterns, 77):
            token_char[b, pos] = order.setdefault(name, len(order))
            expected[b, pos] = True
    assert expected[0].sum() >= 3 and not expected[1].any()   # "fred" + the pieces of "mr slate"
    fuse = FuseModule(16)
    text, image = torch.randn(3, 77, 16), torch.randn(3, 3, 16)
    fused = fuse(text, image, token_char)
    changed = (fused != text).any(-1)
    assert torch.equal(changed, expected)
    # the value at a name token is LN(MLP2(MLP1([e; v]) + e)) with that character's v
    b, p = 2, int(torch.nonzero(expected[2])[0])
    assert torch.allclose(fused[b, p], fuse.fuse(text[b, p][None], image[b, token_char[b, p]][None])[0], atol=1e-5)


def test_fuse_rejects_an_image_embedding_of_another_width():
    with pytest.raises(ValueError, match="projection_dim"):
        FuseModule(16)(torch.randn(1, 77, 16), torch.randn(1, 1, 8), torch.zeros(1, 77, dtype=torch.long))


def hand_maps(inside: bool) -> tuple[list, torch.Tensor, torch.Tensor]:
    """One 4x4 layer, 2 heads, 1 character whose mask is the top-left 2x2 block."""
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, :2, :2] = 1
    where = mask if inside else 1 - mask
    attn = (where.flatten(2).transpose(1, 2) / where.sum()).unsqueeze(1).expand(1, 2, 16, 1).clone()
    return [attn], mask, torch.ones(1, 1, dtype=torch.bool)


def test_attention_loss_is_lower_inside_the_mask_than_outside():
    inside = attention_control_loss(*hand_maps(inside=True))
    outside = attention_control_loss(*hand_maps(inside=False))
    assert inside < 0 < outside
    assert torch.isclose(inside, torch.tensor(-0.25)) and torch.isclose(outside, torch.tensor(1 / 12))


def test_attention_loss_ignores_invalid_characters():
    maps, mask, _ = hand_maps(inside=False)
    assert attention_control_loss(maps, mask, torch.zeros(1, 1, dtype=torch.bool)) == 0


def tiny_unet():
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4)


def test_processors_record_the_name_token_attention_and_leave_the_output_unchanged():
    unet = tiny_unet()
    x, t, states = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 77, 16)
    before = unet(x, t, states).sample
    store = AttentionStore()
    chosen = install_processors(unet, ["down_blocks.0", "up_blocks.1"], store)
    assert chosen and all(name.endswith("attn2") for name in chosen)
    token_char = torch.full((2, 77), -1, dtype=torch.long)
    token_char[0, 3:5], token_char[1, 7] = 0, 1
    store.start(name_token_weights(token_char, 2))
    after = unet(x, t, states).sample
    maps = store.stop()
    assert torch.allclose(before, after, atol=1e-5)
    assert len(maps) == len(chosen) and (maps[0].shape[0], maps[0].shape[2:]) == (2, (64, 2))
    # sample 0 character 0 = the mean attention of tokens 3 and 4; every row of the softmax sums to 1
    assert torch.all(maps[0][0, :, :, 0] <= 1) and torch.all(maps[0][0, :, :, 1] == 0)
    assert store.stop() == [] and unet(x, t, states).sample is not None  # recording is off again


def test_processors_on_an_unknown_block_name_the_key():
    with pytest.raises(ValueError, match="model.attention_layers.*down_blocks.7"):
        install_processors(tiny_unet(), ["down_blocks.7"], AttentionStore())


def test_reference_crop_is_the_characters_box_and_augmentation_fills_noise_outside():
    frame = -torch.ones(3, 32, 32)
    frame[0, 8:16, 4:20] = 1.0                      # a red 8x16 box
    mask = torch.zeros(32, 32, dtype=torch.long)
    mask[8:16, 4:20] = 1
    crop, crop_mask = crop_reference(frame, mask, 16)
    assert crop.shape == (3, 16, 16) and crop_mask.shape == (1, 16, 16)
    assert crop_mask[0, 4:12].all() and not crop_mask[0, :3].any()     # padded to a square, centred
    assert torch.allclose(crop[0, 6:10, 6:10], torch.ones(4, 4))
    torch.manual_seed(0)
    out = augment_references(crop[None], crop_mask[None], rotate=0, scale=(1, 1), translate=0, flip=0,
                             jitter=0, gray=0, blur=0)
    assert torch.allclose(out[0, :, 6:10, 6:10], crop[:, 6:10, 6:10])   # the character is kept
    assert out[0, :, :3].std() > 0.2                                     # the background is noise
    empty = crop_reference(frame, torch.zeros(32, 32, dtype=torch.long), 16)
    assert not empty[0].any() and not empty[1].any()
