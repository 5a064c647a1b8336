"""SDXL de-tokenizer: feature normalisation, time ids, published sizes, and the released-weights converter."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from src.models.detokenizer import Detokenizer, load_detokenizer, resize_crop_time_ids, sdxl_time_ids
from src.models.resamplers import ResamplerXL, normalize_features
from src.tools.convert import seed_detokenizer as convert_seed_detokenizer

CONFIG_ONLY = Path(__file__).parent / "assets" / "config_only"
TINY = dict(input_dim=16, dim=32, depth=2, dim_head=8, heads=4, num_latents=8, output1_dim=24, output2_dim=40,
            ff_mult=4)


def tiny_sdxl_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(32, 64), layers_per_block=1,
        attention_head_dim=(4, 8), norm_num_groups=8, cross_attention_dim=64, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=40 + 6 * 8)


def test_per_token_normalisation_and_released_variant():
    x = torch.randn(2, 5, 16)
    token = normalize_features(x, "token")
    assert torch.allclose(token.norm(dim=-1), torch.ones(2, 5))
    released = normalize_features(x, "released")  # SEED-Story's F.normalize(x): dim=1, across tokens
    assert torch.allclose(released.norm(dim=1), torch.ones(2, 16))
    changed = x.clone()
    changed[:, 4] *= 10
    # Per token, a token's input does not depend on the other tokens of the image; as released, it does.
    assert torch.allclose(normalize_features(changed, "token")[:, 0], token[:, 0])
    assert not torch.allclose(normalize_features(changed, "released")[:, 0], released[:, 0])
    with pytest.raises(ValueError, match="normalize='l2'"):
        ResamplerXL(**TINY, normalize="l2")


def test_time_ids_are_h_w_ordered():
    assert sdxl_time_ids((480, 854), (0, 398), (1024, 1024)) == [480, 854, 0, 398, 1024, 1024]
    # A StoryStream frame (480x854, h x w): resized to 1024x1821, cropped 398 px from the left.
    assert resize_crop_time_ids((480, 854), 1024) == [480, 854, 0, 398, 1024, 1024]
    assert resize_crop_time_ids((854, 480), 1024) == [854, 480, 398, 0, 1024, 1024]
    assert resize_crop_time_ids((64, 64), 64) == [64, 64, 0, 0, 64, 64]


def test_published_sdxl_unet_size_and_released_resampler_fit():
    config = UNet2DConditionModel.load_config(str(CONFIG_ONLY / "stable-diffusion-xl-base-1.0" / "unet"))
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        model = Detokenizer(unet, ResamplerXL())  # the released sizes are ResamplerXL's defaults
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684
    with torch.device("meta"):
        with pytest.raises(ValueError, match="cross_attention_dim 2048"):
            Detokenizer(unet, ResamplerXL(output1_dim=1024))
    model.set_trainable("to_kv")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.startswith("resampler.") or n.split(".")[-2] in ("to_k", "to_v") for n in trainable)
    assert any(".attn1.to_k." in n for n in trainable) and any(".attn2.to_v." in n for n in trainable)


def test_forward_shapes():
    model = Detokenizer(tiny_sdxl_unet(), ResamplerXL(**TINY))
    hidden, pooled = model.encode(torch.randn(3, 20, 16))
    assert hidden.shape == (3, 8, 64) and pooled.shape == (3, 40)
    time_ids = torch.tensor([resize_crop_time_ids((64, 64), 64)] * 3, dtype=torch.float32)
    out = model(torch.randn(3, 4, 8, 8), torch.tensor([1, 500, 999]), torch.randn(3, 20, 16), time_ids)
    assert out.shape == (3, 4, 8, 8)


# ---- converter -------------------------------------------------------------------------------------------

def released_resampler_state(depth: int, dim: int, inner: int, mult: int) -> dict[str, torch.Tensor]:
    """ResamplerXLV2 weights under SEED-Story's own names (src/models_ipa/resampler.py), random values."""
    shapes = {"latents": (1, TINY["num_latents"], dim), "proj_in.weight": (dim, TINY["input_dim"]),
              "proj_in.bias": (dim,), "norm_out.weight": (dim,), "norm_out.bias": (dim,),
              "unet_proj_1.weight": (24, dim), "unet_proj_1.bias": (24,),
              "unet_proj_2.weight": (40, dim), "unet_proj_2.bias": (40,),
              "unet_attnpool.positional_embedding": (TINY["num_latents"] + 1, dim),
              "unet_attnpool.c_proj.weight": (40, dim), "unet_attnpool.c_proj.bias": (40,)}
    for name in ("q_proj", "k_proj", "v_proj"):
        shapes.update({f"unet_attnpool.{name}.weight": (dim, dim), f"unet_attnpool.{name}.bias": (dim,)})
    for i in range(depth):
        shapes.update({f"layers.{i}.0.norm1.weight": (dim,), f"layers.{i}.0.norm1.bias": (dim,),
                       f"layers.{i}.0.norm2.weight": (dim,), f"layers.{i}.0.norm2.bias": (dim,),
                       f"layers.{i}.0.to_q.weight": (inner, dim), f"layers.{i}.0.to_kv.weight": (2 * inner, dim),
                       f"layers.{i}.0.to_out.weight": (dim, inner), f"layers.{i}.1.0.weight": (dim,),
                       f"layers.{i}.1.0.bias": (dim,), f"layers.{i}.1.1.weight": (dim * mult, dim),
                       f"layers.{i}.1.3.weight": (dim, dim * mult)})
    torch.manual_seed(1)
    return {f"resampler.{k}": torch.randn(shape) * 0.2 for k, shape in shapes.items()}


def released_forward(sd: dict, x: torch.Tensor, heads: int, depth: int):
    """The released ResamplerXLV2 forward, written out step by step from its source (docs/seed_story.md)."""
    w = {k[len("resampler."):]: v for k, v in sd.items()}
    ln = lambda t, p: F.layer_norm(t, t.shape[-1:], w[p + ".weight"], w[p + ".bias"])  # noqa: E731
    x = F.linear(F.normalize(x), w["proj_in.weight"], w["proj_in.bias"])
    latents = w["latents"].repeat(x.shape[0], 1, 1)
    for i in range(depth):
        xs, ls = ln(x, f"layers.{i}.0.norm1"), ln(latents, f"layers.{i}.0.norm2")
        q = F.linear(ls, w[f"layers.{i}.0.to_q.weight"])
        k, v = F.linear(torch.cat([xs, ls], 1), w[f"layers.{i}.0.to_kv.weight"]).chunk(2, dim=-1)
        split = lambda t: t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        attn = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1) @ v
        latents = F.linear(attn.permute(0, 2, 1, 3).flatten(2), w[f"layers.{i}.0.to_out.weight"]) + latents
        hidden = F.gelu(F.linear(ln(latents, f"layers.{i}.1.0"), w[f"layers.{i}.1.1.weight"]))
        latents = F.linear(hidden, w[f"layers.{i}.1.3.weight"]) + latents
    h = ln(latents, "norm_out")
    states = torch.cat([F.linear(h, w["unet_proj_1.weight"], w["unet_proj_1.bias"]),
                        F.linear(h, w["unet_proj_2.weight"], w["unet_proj_2.bias"])], dim=-1)
    seq = torch.cat([h.mean(1, keepdim=True), h], 1).permute(1, 0, 2) + w["unet_attnpool.positional_embedding"][:, None]
    pooled, _ = F.multi_head_attention_forward(
        seq, seq, seq, seq.shape[-1], heads, None,
        torch.cat([w[f"unet_attnpool.{n}_proj.bias"] for n in "qkv"]), None, None, False, 0.0,
        w["unet_attnpool.c_proj.weight"], w["unet_attnpool.c_proj.bias"], training=False, need_weights=False,
        use_separate_proj_weight=True, q_proj_weight=w["unet_attnpool.q_proj.weight"],
        k_proj_weight=w["unet_attnpool.k_proj.weight"], v_proj_weight=w["unet_attnpool.v_proj.weight"])
    return states, pooled[0]


def write_release(tmp_path: Path, drop: str | None = None, extra: str | None = None) -> tuple[Path, dict]:
    """A fake `pytorch_model.bin` of SDXLAdapter (unet.* + resampler.*) and an SDXL folder for its config."""
    unet = tiny_sdxl_unet()
    sd = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    sd.update(released_resampler_state(depth=2, dim=32, inner=32, mult=4))
    if drop:
        del sd[drop]
    if extra:
        sd[extra] = torch.zeros(1)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    unet.save_config(tmp_path / "sdxl" / "unet")
    return tmp_path / "pytorch_model.bin", sd


def test_converter_matches_released_resampler(tmp_path):
    src, sd = write_release(tmp_path)
    out = tmp_path / "detok.safetensors"
    convert_seed_detokenizer.main(["--src", str(src), "--sdxl", str(tmp_path / "sdxl"), "--out", str(out),
                                   "--heads", "4"])
    model = load_detokenizer(tiny_sdxl_unet(), out)
    assert model.resampler.normalize == "released"
    assert torch.equal(model.unet.conv_in.weight, sd["unet.conv_in.weight"])
    x = torch.randn(2, 20, 16)
    states, pooled = model.encode(x)
    ref_states, ref_pooled = released_forward(sd, x, heads=4, depth=2)
    assert torch.allclose(states, ref_states, atol=1e-5) and torch.allclose(pooled, ref_pooled, atol=1e-5)


@pytest.mark.parametrize("drop,extra,message", [
    ("resampler.layers.1.1.3.weight", None, r"missing keys \['resampler.perceiver.layers.1.ff.fc2.weight'\]"),
    ("unet.conv_out.bias", None, r"missing keys \['unet.conv_out.bias'\]"),
    (None, "resampler.layers.0.0.gate", r"unknown resampler key 'resampler.layers.0.0.gate'"),
    (None, "unet.extra.weight", r"unexpected keys \['unet.extra.weight'\]"),
    (None, "image_proj.weight", r"unexpected key 'image_proj.weight'"),
])
def test_converter_names_bad_keys(tmp_path, drop, extra, message):
    src, _ = write_release(tmp_path, drop, extra)
    with pytest.raises(KeyError, match=message):
        convert_seed_detokenizer.convert(src, tmp_path / "sdxl", tmp_path / "out.safetensors", heads=4)
    assert not (tmp_path / "out.safetensors").exists()


def test_weights_file_without_resampler_config_is_an_error(tmp_path):
    save_file({"unet.conv_in.weight": torch.zeros(1)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(KeyError, match="bare.safetensors: no `resampler_config` metadata"):
        load_detokenizer(tiny_sdxl_unet(), tmp_path / "bare.safetensors")
