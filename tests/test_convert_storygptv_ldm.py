"""StoryGPT-V stage-1 converter (src/tools/convert/storygptv_ldm.py).

The fixture is a StoryModel state dict in the original key names (StoryGPT-V models/model.py, after
FastComposer): `unet.*` of a tiny diffusers UNet, `image_encoder.vision_model.*` /
`image_encoder.visual_projection.weight` of a tiny CLIP vision tower, `postfuse_module.*` named by hand,
frozen `vae.*` / `text_encoder.*` tensors and a `position_ids` buffer; frozen tensors are bf16 and trained
ones fp32, as train.py's mixed precision leaves them. The converted checkpoint is loaded strictly into a
stand-in Char-LDM task made of our real modules (CharacterImageEncoder, FuseModule, the UNet).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from src.errors import run_entry
from src.runs import resolve_checkpoint
from src.tools.convert.storygptv_ldm import ConversionError, convert_state_dict, main

REPO = Path(__file__).resolve().parent.parent
DIM = 16        # text width = projection width = fuse width = UNet cross-attention width
LAYERS = 4      # CLIP vision layers
K = 2           # trainable vision layers (StoryGPT-V's train_ldm.sh setting)

# the original FastComposer/StoryGPT-V fuse names -> ours, written out independently of the converter
FUSE_NAMES = {
    "postfuse_module.mlp1.layernorm.weight": "fuse.mlp1.layer_norm.weight",
    "postfuse_module.mlp1.layernorm.bias": "fuse.mlp1.layer_norm.bias",
    "postfuse_module.mlp1.fc1.weight": "fuse.mlp1.fc1.weight",
    "postfuse_module.mlp1.fc1.bias": "fuse.mlp1.fc1.bias",
    "postfuse_module.mlp1.fc2.weight": "fuse.mlp1.fc2.weight",
    "postfuse_module.mlp1.fc2.bias": "fuse.mlp1.fc2.bias",
    "postfuse_module.mlp2.layernorm.weight": "fuse.mlp2.layer_norm.weight",
    "postfuse_module.mlp2.layernorm.bias": "fuse.mlp2.layer_norm.bias",
    "postfuse_module.mlp2.fc1.weight": "fuse.mlp2.fc1.weight",
    "postfuse_module.mlp2.fc1.bias": "fuse.mlp2.fc1.bias",
    "postfuse_module.mlp2.fc2.weight": "fuse.mlp2.fc2.weight",
    "postfuse_module.mlp2.fc2.bias": "fuse.mlp2.fc2.bias",
    "postfuse_module.layer_norm.weight": "fuse.layer_norm.weight",
    "postfuse_module.layer_norm.bias": "fuse.layer_norm.bias",
}
FUSE_SHAPES = {"mlp1.layernorm": (2 * DIM,), "mlp1.fc1": (DIM, 2 * DIM), "mlp1.fc2": (DIM, DIM),
               "mlp2.layernorm": (DIM,), "mlp2.fc1": (DIM, DIM), "mlp2.fc2": (DIM, DIM), "layer_norm": (DIM,)}


def tiny_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(8, 16),
                                attention_head_dim=2, norm_num_groups=4, cross_attention_dim=DIM)


def tiny_tower():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=12, intermediate_size=24, num_hidden_layers=LAYERS, num_attention_heads=2, image_size=16,
        patch_size=8, projection_dim=DIM))


def is_trained_vision(key: str) -> bool:
    return any(key.startswith(f"image_encoder.vision_model.encoder.layers.{i}.") for i in range(LAYERS - K, LAYERS))


def original_state() -> dict:
    """A StoryModel.state_dict() in miniature."""
    torch.manual_seed(0)
    state = {f"unet.{k}": v.clone() for k, v in tiny_unet().state_dict().items()}
    for k, v in tiny_tower().state_dict().items():
        key = f"image_encoder.{k}"
        state[key] = v.clone() if is_trained_vision(key) else v.to(torch.bfloat16)
    state["image_encoder.vision_model.embeddings.position_ids"] = torch.arange(5).unsqueeze(0)
    for name, shape in FUSE_SHAPES.items():
        state[f"postfuse_module.{name}.weight"] = torch.randn(shape)
        state[f"postfuse_module.{name}.bias"] = torch.randn(shape[:1])
    for key, shape in {"vae.encoder.conv_in.weight": (8, 3, 3, 3), "vae.quant_conv.weight": (8, 8, 1, 1),
                       "vae.decoder.mid_block.attentions.0.to_q.weight": (8, 8),
                       "text_encoder.embeddings.token_embedding.weight": (50, DIM),
                       "text_encoder.encoder.layers.0.mlp.fc1.weight": (32, DIM),
                       "text_encoder.final_layer_norm.weight": (DIM,)}.items():
        state[key] = torch.randn(shape).to(torch.bfloat16)
    state["text_encoder.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    return state


def our_task():
    """The Char-LDM task's trainable surface, from our modules, with fresh weights."""
    from src.models.character_encoder import CharacterImageEncoder
    from src.models.fuse import FuseModule
    from src.tasks.base import Task

    class CharLDMStandIn(Task):
        def __init__(self):
            super().__init__(None)
            torch.manual_seed(1)
            self.unet = tiny_unet()
            tower = tiny_tower()
            self.image_encoder = CharacterImageEncoder(tower.vision_model, tower.visual_projection,
                                                       tower.config.image_size, trainable_layers=K)
            self.fuse = FuseModule(DIM)

    return CharLDMStandIn()


def run_cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "src.tools.convert.storygptv_ldm", *map(str, args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    state = original_state()
    path = tmp_path_factory.mktemp("storygptv") / "checkpoint-2000" / "pytorch_model.bin"
    path.parent.mkdir()
    torch.save(state, path)
    return state, path


def test_cli_converts_to_our_trainable_layout(source, tmp_path):
    state, src = source
    out = tmp_path / "run"
    result = run_cli("--src", src, "--out", out, "--image-encoder-trainable-layers", K, "--num-image-layers", LAYERS)
    assert result.returncode == 0, result.stderr
    assert "dropped: vae 3, text_encoder 3, position_ids buffers 2" in result.stdout

    ckpt = out / "checkpoints" / "step_000000"
    assert resolve_checkpoint(str(ckpt), out / "checkpoints") == ckpt
    assert resolve_checkpoint(str(out), out / "checkpoints") == ckpt  # a run folder -> its latest
    assert not (out / "checkpoints" / "step_000000.tmp").exists()
    trainer_state = json.loads((ckpt / "trainer_state.json").read_text())
    assert (trainer_state["step"], trainer_state["world_size"], trainer_state["ema"]) == (0, 1, None)

    trainable = load_file(str(ckpt / "trainable.safetensors"))
    task = our_task()
    ours = task.trainable_state_dict()
    assert set(trainable) == set(ours)
    assert any(k.startswith("image_encoder.vision_model.encoder.layers.3.") for k in ours)
    assert not any(k.startswith("image_encoder.vision_model.encoder.layers.1.") for k in ours)
    inverse = {v: k for k, v in FUSE_NAMES.items()}
    for name, param in ours.items():
        original = state[inverse.get(name, name)]
        assert trainable[name].shape == param.shape, name
        assert trainable[name].dtype == torch.float32, name
        assert torch.equal(trainable[name], original.float()), name
    task.load_trainable_state_dict(trainable)  # strict: names and shapes
    for name, param in task.trainable_state_dict().items():
        assert torch.equal(param, state[inverse.get(name, name)].float()), name

    frozen = load_file(str(ckpt / "image_encoder_frozen.safetensors"))
    expected_frozen = {k for k in state if k.startswith("image_encoder.") and not is_trained_vision(k)
                       and not k.endswith("position_ids")}
    assert set(frozen) == expected_frozen and not set(frozen) & set(trainable)
    for name, tensor in frozen.items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, state[name]), name
    # trainable + frozen are exactly our image encoder's state
    image = {k[len("image_encoder."):]: v for k, v in {**frozen, **trainable}.items() if k.startswith("image_encoder.")}
    task.image_encoder.load_state_dict(image, strict=True)

    again = run_cli("--src", src, "--out", out, "--image-encoder-trainable-layers", K)
    assert again.returncode != 0 and "--overwrite" in again.stderr


def test_cli_unknown_key_is_an_error_naming_it(source, tmp_path):
    state, _ = source
    src = tmp_path / "pytorch_model.bin"
    torch.save({**state, "postfuse_module.mlp3.fc1.weight": torch.zeros(DIM, DIM)}, src)
    result = run_cli("--src", src, "--out", tmp_path / "run", "--image-encoder-trainable-layers", K)
    assert result.returncode != 0
    assert "postfuse_module.mlp3.fc1.weight" in result.stderr
    assert not (tmp_path / "run" / "checkpoints" / "step_000000").exists()


def test_cli_missing_fuse_group_is_an_error(source, tmp_path):
    state, _ = source
    src = tmp_path / "pytorch_model.bin"
    torch.save({k: v for k, v in state.items() if not k.startswith("postfuse_module.")}, src)
    result = run_cli("--src", src, "--out", tmp_path / "run", "--image-encoder-trainable-layers", K)
    assert result.returncode != 0
    assert "no fuse weights" in result.stderr and "postfuse_module" in result.stderr


def test_missing_groups_and_tensors_are_named(source):
    state, _ = source
    with pytest.raises(ConversionError, match=r"postfuse_module\.mlp2\.fc1\.bias"):
        convert_state_dict({k: v for k, v in state.items() if k != "postfuse_module.mlp2.fc1.bias"}, K)
    with pytest.raises(ConversionError, match=r"no UNet weights.*unet\.\*"):
        convert_state_dict({k: v for k, v in state.items() if not k.startswith("unet.")}, K)
    with pytest.raises(ConversionError, match="has 4 layers"):
        convert_state_dict(state, LAYERS + 1)
    with pytest.raises(ConversionError, match="--num-image-layers 24"):
        convert_state_dict(state, K, num_image_layers=24)
    with pytest.raises(ConversionError, match=r"layer 3 is incomplete.*layers\.3\.mlp\.fc2\.bias"):
        convert_state_dict({k: v for k, v in state.items()
                            if k != "image_encoder.vision_model.encoder.layers.3.mlp.fc2.bias"}, K)
    lora = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight"
    with pytest.raises(ConversionError, match=lora.replace(".", r"\.")):
        convert_state_dict({**state, lora: torch.zeros(4, 8)}, K)
    with pytest.raises(ConversionError, match="not a flat state dict.*state_dict"):
        convert_state_dict({"state_dict": state}, K)


def test_ddp_prefix_legacy_names_and_layer_count(source):
    state, _ = source
    wrapped = {f"module.{k}": v for k, v in state.items()}
    legacy = "module.unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    wrapped[legacy.replace(".to_q.", ".query.")] = wrapped.pop(legacy)
    trainable, frozen, report = convert_state_dict(wrapped, 0)
    assert report["module_prefix_stripped"] and len(report["renamed"]) == 1
    assert torch.equal(trainable[legacy[len("module."):]], state[legacy[len("module."):]])
    assert report["image_encoder_trainable"] == 0 and not any(k.startswith("image_encoder.") for k in trainable)
    assert len(frozen) == sum(1 for k in state if k.startswith("image_encoder.") and not k.endswith("position_ids"))
    with pytest.raises(ConversionError, match="do not"):
        convert_state_dict({**wrapped, "unet.conv_in.weight": torch.zeros(1)}, K)


def test_config_is_checked_and_saved_for_generate(source, tmp_path, capsys):
    from src.runs import run_folder_of

    _, src = source
    recipe = str(REPO / "configs/char_ldm/toy.yaml")
    out = tmp_path / "run"
    code = run_entry(main, ["--src", str(src), "--out", str(out), "--image-encoder-trainable-layers", "1",
                            "--config", recipe, "model.image_encoder_trainable_layers=2"])
    assert code == 2 and "model.image_encoder_trainable_layers=2" in capsys.readouterr().err
    code = run_entry(main, ["--src", str(src), "--out", str(out), "--config", recipe,
                            "model.character_conditioning=false"])
    assert code == 2 and "char_ldm" in capsys.readouterr().err
    assert not out.exists()  # the config is checked before anything is written

    code = main(["--src", str(src), "--out", str(out), "--config", recipe, f"model.image_encoder_trainable_layers={K}"])
    assert code == 0, capsys.readouterr().err
    assert run_folder_of(out / "checkpoints" / "step_000000") == out.resolve()
    assert f"image_encoder_trainable_layers: {K}" in (out / "config.yaml").read_text()


def test_saved_config_selects_the_release_modes_unless_told_not_to(source, tmp_path):
    """Released weights run as the release ran them (docs/fidelity.md): the saved config carries the
    release's name tokens, references and losses, and for PororoSV no fused names at sampling; the
    recipe's own choices with --no-release-modes; an override wins over both."""
    from src.config import load_config

    _, src = source
    layers = f"model.image_encoder_trainable_layers={K}"
    out = tmp_path / "release"
    assert main(["--src", str(src), "--out", str(out), "--config", str(REPO / "configs/char_ldm/toy.yaml"), layers,
                 "model.attention_loss=ours"]) == 0
    m = load_config(out / "config.yaml").model
    assert (m.name_tokens, m.reference_preprocess, m.mask_loss_antialias, m.text_only_max_characters,
            m.fuse_names_at_sampling, m.attention_loss) == ("release", "release", False, 1, True, "ours")
    out = tmp_path / "pororo"
    assert main(["--src", str(src), "--out", str(out), "--config", str(REPO / "configs/char_ldm/toy.yaml"), layers,
                 "data.name=pororo"]) == 0
    assert load_config(out / "config.yaml").model.fuse_names_at_sampling is False
    out = tmp_path / "ours"
    assert main(["--src", str(src), "--out", str(out), "--config", str(REPO / "configs/char_ldm/toy.yaml"), layers,
                 "--no-release-modes"]) == 0
    m = load_config(out / "config.yaml").model
    assert (m.name_tokens, m.reference_preprocess, m.attention_loss) == ("ours", "ours", "ours")
