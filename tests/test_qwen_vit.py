"""Qwen-VL visual tokenizer: architecture size, key names, and extraction from a Qwen-VL-Chat folder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from src.models.qwen_vit import QwenViT, load_qwen_vit
from src.tools.convert import qwen_vit as reload_qwen_vit

# The `visual` section of Qwen-VL-Chat's own config.json (a config-only copy).
QWEN_VL_CHAT_VISUAL = json.loads(
    (Path(__file__).parent / "assets" / "config_only" / "Qwen-VL-Chat" / "config.json").read_text())["visual"]
TINY_VISUAL = {"heads": 2, "image_size": 56, "image_start_id": 151857, "layers": 2, "mlp_ratio": 2.0,
               "output_dim": 128, "patch_size": 14, "width": 32}
# Qwen-VL-Chat's checkpoint key names for the visual tower (written out, not derived from our module).
BLOCK_KEYS = ["ln_1.weight", "ln_1.bias", "attn.in_proj.weight", "attn.in_proj.bias", "attn.out_proj.weight",
              "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
              "mlp.c_proj.weight", "mlp.c_proj.bias"]
TOP_KEYS = ["conv1.weight", "positional_embedding", "ln_pre.weight", "ln_pre.bias", "ln_post.weight",
            "ln_post.bias", "proj", "attn_pool.query", "attn_pool.pos_embed", "attn_pool.kv_proj.weight",
            "attn_pool.attn.in_proj_weight", "attn_pool.attn.in_proj_bias", "attn_pool.attn.out_proj.weight",
            "attn_pool.attn.out_proj.bias", "attn_pool.ln_q.weight", "attn_pool.ln_q.bias",
            "attn_pool.ln_kv.weight", "attn_pool.ln_kv.bias"]


def qwen_visual_keys(layers: int) -> set[str]:
    return set(TOP_KEYS) | {f"transformer.resblocks.{i}.{key}" for i in range(layers) for key in BLOCK_KEYS}


def test_vit_g_parameter_count_on_meta():
    with torch.device("meta"):
        model = QwenViT.from_config(QWEN_VL_CHAT_VISUAL)
    assert sum(p.numel() for p in model.parameters()) == 1_935_610_624
    assert set(model.state_dict()) == qwen_visual_keys(48)


def test_output_shape_and_missing_config_key():
    model = QwenViT.from_config(TINY_VISUAL)
    assert model(torch.randn(2, 3, 56, 56)).shape == (2, 256, 128)
    with pytest.raises(KeyError, match="width"):
        QwenViT.from_config({k: v for k, v in TINY_VISUAL.items() if k != "width"})


def fake_qwen_checkpoint(folder, fmt: str) -> dict[str, torch.Tensor]:
    """A Qwen-VL-Chat-shaped folder: config.json with the tiny `visual` section, the visual weights under
    their real names next to some language-model weights, in two shards with an index."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen", "visual": TINY_VISUAL}))
    torch.manual_seed(0)
    visual = {f"transformer.visual.{k}": v.clone() for k, v in QwenViT.from_config(TINY_VISUAL).state_dict().items()}
    assert {k[len("transformer.visual."):] for k in visual} == qwen_visual_keys(2)
    lm = {"transformer.wte.weight": torch.randn(10, 8), "lm_head.weight": torch.randn(10, 8)}
    keys = sorted(visual)
    shards = [dict(lm, **{k: visual[k] for k in keys[:10]}), {k: visual[k] for k in keys[10:]}]
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-0000{i + 1}-of-00002." + ("safetensors" if fmt == "safetensors" else "bin")
        if fmt == "safetensors":
            save_file(shard, str(folder / name))
        else:
            torch.save(shard, folder / name)
        weight_map.update({key: name for key in shard})
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return visual


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_extract_from_sharded_checkpoint(tmp_path, fmt):
    visual = fake_qwen_checkpoint(tmp_path / "Qwen-VL-Chat", fmt)
    out = tmp_path / "qwen_vit.safetensors"
    reload_qwen_vit.main(["--src", str(tmp_path / "Qwen-VL-Chat"), "--out", str(out)])
    model = load_qwen_vit(out)
    for key, value in model.state_dict().items():
        assert torch.equal(value, visual[f"transformer.visual.{key}"]), key
    assert not any(p.requires_grad for p in model.parameters())
    reference = QwenViT.from_config(TINY_VISUAL)
    reference.load_state_dict({k[len("transformer.visual."):]: v for k, v in visual.items()}, strict=True)
    pixels = torch.randn(1, 3, 56, 56)
    assert torch.allclose(model(pixels), reference(pixels))


def test_folder_without_visual_weights_is_named(tmp_path):
    src = tmp_path / "llm-only"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"visual": TINY_VISUAL}))
    save_file({"transformer.wte.weight": torch.zeros(2, 2)}, str(src / "model.safetensors"))
    with pytest.raises(KeyError, match="llm-only.*no transformer.visual"):
        reload_qwen_vit.main(["--src", str(src), "--out", str(tmp_path / "x.safetensors")])


def test_missing_visual_key_is_named(tmp_path):
    src = tmp_path / "broken"
    visual = fake_qwen_checkpoint(src, "safetensors")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    del index["weight_map"]["transformer.visual.ln_post.bias"]
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "transformer.visual.ln_post.bias" in visual
    with pytest.raises(KeyError, match=r"1 missing keys \['ln_post.bias'\]"):
        reload_qwen_vit.extract(src, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_tokenizer_factory_qwen_and_hf(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from src.models.visual_tokenizer import build_visual_tokenizer

    fake_qwen_checkpoint(tmp_path / "Qwen-VL-Chat", "safetensors")
    reload_qwen_vit.extract(tmp_path / "Qwen-VL-Chat", tmp_path / "qwen.safetensors")
    qwen = build_visual_tokenizer("qwen_vit", str(tmp_path / "qwen.safetensors"))
    frames = torch.rand(2, 3, 64, 64) * 2 - 1  # frames at the VAE's size and range; the tokenizer resizes
    assert qwen(frames).shape == (2, 256, 128)

    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(tmp_path / "clip")
    clip = build_visual_tokenizer("hf", str(tmp_path / "clip"))
    clip.train()
    assert not clip.training and not any(p.requires_grad for p in clip.parameters())
    assert clip(frames).shape == (2, 17, 32)  # 16 patches + CLS
    with pytest.raises(ValueError, match="kind 'vq'"):
        build_visual_tokenizer("vq", "x")


def qwen_reference_forward(sd: dict, pixels: torch.Tensor, heads: int) -> torch.Tensor:
    """Qwen-VL's visual forward written out from its visual.py, sequence-first as there, reading the
    weights by their checkpoint names (an independent path to compare the module against)."""
    import math

    import torch.nn.functional as F

    def abs_pos(pos, length):  # get_abs_pos: bicubic resize of a square table
        src, tgt = int(math.sqrt(pos.shape[0])), int(math.sqrt(length))
        grid = pos.float().reshape(1, src, src, -1).permute(0, 3, 1, 2)
        return F.interpolate(grid, size=(tgt, tgt), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(0, 2)

    ln = lambda t, p: F.layer_norm(t, t.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)  # noqa: E731
    x = F.conv2d(pixels, sd["conv1.weight"], stride=sd["conv1.weight"].shape[-1])
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = ln(x + abs_pos(sd["positional_embedding"], x.shape[1]), "ln_pre").permute(1, 0, 2)  # [L,B,W]
    length, batch, width = x.shape
    head_dim = width // heads
    i = 0
    while f"transformer.resblocks.{i}.ln_1.weight" in sd:
        p = f"transformer.resblocks.{i}."
        mixed = F.linear(ln(x, p + "ln_1"), sd[p + "attn.in_proj.weight"], sd[p + "attn.in_proj.bias"])
        q, k, v = mixed.view(length, batch, heads, 3 * head_dim).split(head_dim, dim=-1)
        q, k, v = (t.reshape(length, batch * heads, head_dim).transpose(0, 1) for t in (q, k, v))
        probs = torch.bmm(q / math.sqrt(head_dim), k.transpose(-2, -1)).softmax(-1)
        ctx = torch.bmm(probs, v).view(batch, heads, length, head_dim).permute(2, 0, 1, 3).reshape(length, batch, width)
        x = x + F.linear(ctx, sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"])
        hidden = F.gelu(F.linear(ln(x, p + "ln_2"), sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"]))
        x = x + F.linear(hidden, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
        i += 1
    kv = ln(F.linear(x.permute(1, 0, 2), sd["attn_pool.kv_proj.weight"]), "attn_pool.ln_kv").permute(1, 0, 2)
    query = ln(sd["attn_pool.query"], "attn_pool.ln_q").unsqueeze(1).repeat(1, batch, 1)
    dim = query.shape[-1]
    out = F.multi_head_attention_forward(
        query + sd["attn_pool.pos_embed"].unsqueeze(1), kv + abs_pos(sd["attn_pool.pos_embed"], length).unsqueeze(1),
        kv, dim, dim // 128, sd["attn_pool.attn.in_proj_weight"], sd["attn_pool.attn.in_proj_bias"], None, None,
        False, 0.0, sd["attn_pool.attn.out_proj.weight"], sd["attn_pool.attn.out_proj.bias"], training=False,
        need_weights=False)[0].permute(1, 0, 2)
    return ln(out, "ln_post") @ sd["proj"]


def test_forward_matches_qwen_vl_reference():
    torch.manual_seed(0)
    model = QwenViT.from_config(dict(TINY_VISUAL, output_dim=256))  # 2 pool heads: exercises the head split
    pixels = torch.randn(2, 3, 56, 56)
    reference = qwen_reference_forward(model.state_dict(), pixels, heads=TINY_VISUAL["heads"])
    assert torch.allclose(model(pixels), reference, atol=1e-4)
    # the fixed query positions are MAE's 2D sin-cos table (first half: column, second half: row)
    pos = model.attn_pool.pos_embed  # [256 queries, 256]: 64 frequencies per axis
    omega = 1 / 10000 ** (torch.arange(64) / 64.0)
    assert torch.allclose(pos[1, :128], torch.cat([torch.sin(omega), torch.cos(omega)]), atol=1e-6)
    assert torch.allclose(pos[16, 128:], pos[1, :128], atol=1e-6) and torch.equal(pos[16, :128], pos[0, :128])
