"""Real-scale shape check (src/tools/shape_check.py): the published models built from their config files
alone on the meta device, through the training code path, with their published parameter counts."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from src.tools.shape_check import main

ASSETS = Path(__file__).resolve().parent / "assets" / "config_only"
SD15, CLIP_L = ASSETS / "stable-diffusion-v1-5", ASSETS / "clip-vit-large-patch14"
STAGE1 = ["--config", "configs/ldm/flintstones.yaml", f"model.pretrained={SD15}", f"model.image_encoder={CLIP_L}"]

# Published parameter counts.
SD15_UNET, SD_VAE, CLIP_L_TEXT = 859_520_964, 83_653_863, 123_060_480
CLIP_L_VISION_WITH_PROJECTION = 303_179_776 + 1024 * 768
CLIP_L_LAYER = 12_596_224  # one ViT-L/14 encoder layer: attention 4*(1024*1024+1024), MLP 1024<->4096, 2 LNs


def _json(capsys, argv) -> dict:
    assert main(argv + ["--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_stage1_recipe_on_config_only_folders(capsys):
    report = _json(capsys, STAGE1 + ["train.batch_size=3"])
    models = report["models"]
    assert models["unet"] == {"class": "UNet2DConditionModel", "params": SD15_UNET, "trainable": SD15_UNET}
    assert models["vae"] == {"class": "AutoencoderKL", "params": SD_VAE, "trainable": 0}
    assert models["text_encoder"] == {"class": "CLIPTextModel", "params": CLIP_L_TEXT, "trainable": 0}
    # The recipe trains the last 2 of the 24 CLIP vision layers (image_encoder_trainable_layers: 2).
    assert models["image_encoder"] == {"class": "CharacterImageEncoder", "params": CLIP_L_VISION_WITH_PROJECTION,
                                       "trainable": 2 * CLIP_L_LAYER}
    assert models["fuse"]["params"] == models["fuse"]["trainable"] > 0
    assert report["conditioning"] == [3, 77, 768]
    assert set(report["losses"]) == {"loss", "mse", "attention"} and report["losses"]["loss"] == []
    assert report["trainable_tensors"] > 0 and report["trainable_without_grad"] == []
    assert report["total"]["params"] == sum(m["params"] for m in models.values())


def test_baseline_ldm_and_table_output(capsys):
    assert main(STAGE1 + ["model.character_conditioning=false", "train.batch_size=2"]) == 0
    out = capsys.readouterr().out
    assert "unet" in out and f"{SD15_UNET:,}" in out and "image_encoder" not in out
    assert "conditioning: [2, 77, 768] (output of CLIPTextModel)" in out


def test_llms_and_sdxl_unet_match_published_counts(capsys):
    report = _json(capsys, ["--model", "causal_lm", str(ASSETS / "opt-6.7b"),
                            "--model", "causal_lm", str(ASSETS / "Llama-2-7b-hf"),
                            "--model", "unet", str(ASSETS / "stable-diffusion-xl-base-1.0")])
    models = report["models"]
    assert (models["opt-6.7b"]["class"], models["opt-6.7b"]["params"]) == ("OPTForCausalLM", 6_658_473_984)
    assert (models["Llama-2-7b-hf"]["class"], models["Llama-2-7b-hf"]["params"]) == ("LlamaForCausalLM",
                                                                                     6_738_415_616)
    sdxl = models["stable-diffusion-xl-base-1.0"]
    assert sdxl["params"] == 2_567_463_684 and sdxl["output"] == [1, 4, 128, 128]
    assert models["opt-6.7b"]["output"] == [1, 32, 50272] and models["Llama-2-7b-hf"]["output"] == [1, 32, 32000]


def test_folder_without_config_json_is_a_one_line_error(capsys, tmp_path):
    broken = tmp_path / "sd15"
    shutil.copytree(SD15, broken)
    (broken / "unet" / "config.json").unlink()
    assert main(["--config", "configs/ldm/flintstones.yaml", f"model.pretrained={broken}",
                 f"model.image_encoder={CLIP_L}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{broken}/unet/config.json" in err


def test_a_real_shape_mismatch_is_caught(capsys, tmp_path):
    """An image encoder whose projection width differs from the text width cannot be fused."""
    wide = tmp_path / "clip-wide"
    wide.mkdir()
    config = json.loads((CLIP_L / "config.json").read_text())
    config["projection_dim"] = config["vision_config"]["projection_dim"] = 1024
    (wide / "config.json").write_text(json.dumps(config))
    assert main(STAGE1 + [f"model.image_encoder={wide}"]) == 2
    err = capsys.readouterr().err
    assert "model.image_encoder" in err and "1024" in err and "768" in err


def test_a_step_that_reads_tensor_values_names_where(capsys):
    """Meta tensors have no values: a step that needs them fails in one line naming file and line."""
    assert main(STAGE1 + ["model.fixed_reference_prob=0.5", "train.batch_size=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "training step on the meta device failed at src/tasks/char_ldm.py:" in err


def test_shape_only_tokenizer_never_replaces_a_real_one(tmp_path):
    """Without vocabulary files the real path fails naming the folder (transformers alone would build an
    empty vocabulary); only config-only mode gets a stand-in that gives token ids of the right shape."""
    from transformers import CLIPTokenizer

    from src.models.pretrained import ShapeOnlyTokenizer, config_only, load_pretrained

    shutil.copytree(SD15 / "tokenizer", tmp_path / "tokenizer")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'tokenizer'}: no tokenizer vocabulary"):
        load_pretrained(CLIPTokenizer, str(tmp_path), subfolder="tokenizer")
    with config_only():
        tokenizer = load_pretrained(CLIPTokenizer, str(tmp_path), subfolder="tokenizer")
    assert isinstance(tokenizer, ShapeOnlyTokenizer)
    assert tuple(tokenizer(["a", "b"], padding="max_length").input_ids.shape) == (2, 77)
    with pytest.raises(AttributeError, match="shape-only tokenizer"):
        tokenizer.tokenize("fred")


@pytest.mark.parametrize("character_conditioning", [True, False])
def test_example_batch_is_a_real_batch_of_the_task(char_ldm_overrides, character_conditioning):
    """The fake batch the shape check feeds has the keys, dtypes and ranks of the real collated batch, and
    the real (tiny, CPU) training step accepts it."""
    import torch

    from src.config import load_config
    from src.tasks import build_task

    cfg = load_config("configs/ldm/toy.yaml", char_ldm_overrides + [
        f"model.character_conditioning={str(character_conditioning).lower()}"])
    task = build_task(cfg)
    dataset = task.train_dataset()
    real = task.collate([dataset[i] for i in range(2)])
    fake = task.example_batch(2, "cpu")
    assert set(fake) <= set(real)
    for key, value in fake.items():
        if isinstance(value, torch.Tensor):
            assert (value.dtype, value.ndim, value.shape[0]) == (real[key].dtype, real[key].ndim, 2), key
        else:
            assert type(value) is type(real[key]) and len(value) == 2, key
    assert fake["pixel_values"].shape == real["pixel_values"].shape
    torch.manual_seed(0)
    assert torch.isfinite(task.training_step(fake)["loss"])
