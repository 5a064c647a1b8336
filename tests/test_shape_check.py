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
STAGE1 = ["--config", "configs/char_ldm/flintstones.yaml", f"model.pretrained={SD15}", f"model.image_encoder={CLIP_L}"]

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
    assert main(["--config", "configs/char_ldm/flintstones.yaml", f"model.pretrained={broken}",
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

    cfg = load_config("configs/char_ldm/toy.yaml", char_ldm_overrides + [
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


# ---- SEED-Story: the de-tokenizer (stage 1) and the MLLM (stage 2) at real size ------------------------------
SDXL, QWEN, LLAMA = ASSETS / "stable-diffusion-xl-base-1.0", ASSETS / "Qwen-VL-Chat", ASSETS / "Llama-2-7b-hf"
SDXL_UNET, LLAMA_2_7B, QWEN_VIT_G = 2_567_463_684, 6_738_415_616, 1_935_610_624  # published counts
D, LAYERS, MLP, VOCAB = 4096, 32, 11008, 32000  # Llama-2-7b


def test_detokenizer_recipe_sdxl_unet_and_qwen_vit_at_real_size(capsys):
    report = _json(capsys, ["--config", "configs/detokenizer/george.yaml", f"model.pretrained={SDXL}",
                            f"model.tokenizer_path={QWEN}", "train.batch_size=2"])
    models = report["models"]
    assert models["visual_tokenizer"] == {"class": "VisualTokenizer", "params": QWEN_VIT_G, "trainable": 0}
    assert models["vae"] == {"class": "AutoencoderKL", "params": SD_VAE, "trainable": 0}  # SDXL's VAE: SD's layout
    # ResamplerXLV2 at the released sizes: proj_in 4096->1024, 64 latents, 4 perceiver layers (attention with
    # two LayerNorms, q / kv / out; FF x4 with its LayerNorm), norm_out, the 768 and 1280 projections and the
    # attention pool over 64+1 positions.
    layer = 2 * 2048 + 1024 * 1024 + 1024 * 2048 + 1024 * 1024 + 2048 + 2 * 1024 * 4096
    pool = 65 * 1024 + 3 * (1024 * 1024 + 1024) + 1024 * 1280 + 1280
    resampler = (4096 * 1024 + 1024) + 64 * 1024 + 4 * layer + 2048 + (1024 * 768 + 768) + (1024 * 1280 + 1280) + pool
    assert resampler == 61_245_696
    assert models["detokenizer"] == {"class": "Detokenizer", "params": SDXL_UNET + resampler,
                                     "trainable": SDXL_UNET + resampler}  # train_unet: full
    assert report["conditioning"] == [[2, 64, 2048], [2, 1280]]  # encoder_hidden_states, pooled text_embeds
    assert report["trainable_without_grad"] == []


def test_story_sft_recipe_llama_2_7b_lora_and_resamplers_at_real_size(capsys):
    report = _json(capsys, ["--config", "configs/story_sft/george.yaml", f"model.llm={LLAMA}",
                            f"model.tokenizer_path={QWEN}", "train.batch_size=2", "model.context_beats=all"])
    models = report["models"]
    assert models["visual_tokenizer"] == {"class": "VisualTokenizer", "params": QWEN_VIT_G, "trainable": 0}
    lora = LAYERS * 16 * (4 * (D + D) + 2 * (D + MLP) + (MLP + D))  # r 16 on q,k,v,o,gate,up,down
    norms = (2 * LAYERS + 1) * D  # modules_to_save: trained copies of every RMSNorm
    rows = 2 * 66 * D  # <img>, </img>, 64 <img_xxxxx>: input and output rows
    attn = 4 * D * D + 4 * D  # nn.MultiheadAttention at width 4096
    resamplers = (64 * D + attn + 4 * D) + (256 * D + attn + 4 * D)  # queries, attention, ln_q / ln_kv
    embeddings = 2 * VOCAB * D  # embed_tokens and lm_head, trained whole (as released)
    trainable = lora + norms + rows + resamplers + embeddings
    frozen_positions = (64 + 256) * D  # the resamplers' fixed sin-cos tables
    assert models["mllm"] == {"class": "StoryMLLM", "trainable": trainable,
                              "params": LLAMA_2_7B + lora + norms + rows + resamplers + frozen_positions}
    assert report["conditioning"] == [2 * 9, 256, D]  # 9 target images per 10-beat story, ViT feature space
    assert set(report["losses"]) >= {"loss", "ce", "cosine"}
    assert report["trainable_without_grad"] == []


def _same_kinds(fake: dict, real: dict, batch: int) -> None:
    import torch

    assert set(fake) <= set(real)
    for key, value in fake.items():
        if isinstance(value, torch.Tensor):
            assert (value.dtype, value.ndim) == (real[key].dtype, real[key].ndim), key
        else:
            assert type(value) is type(real[key]) and len(value) == batch, key


def test_seed_story_example_batches_are_real_batches_of_their_tasks(seed_stack, toy_root, tmp_path):
    """Keys, dtypes and ranks of the real collated batches; the real tiny steps accept them; the story_sft
    example fills model.max_length with every beat."""
    import torch

    from src.config import load_config
    from src.data.toy import generate_toy_dataset
    from src.tasks import build_task

    story_root = generate_toy_dataset(tmp_path / "toy_story", seed=0, num_train=2, num_val=1, num_test=1,
                                      story_frames=10, chunk_frames=10, num_workers=1, progress=False)
    common = [f"tiny_stack={seed_stack}", f"model.tokenizer_path={seed_stack}/qwen_vit.safetensors",
              "data.num_workers=0"]
    sft = build_task(load_config("configs/story_sft/toy.yaml", common + [
        f"data.root={story_root}", f"model.llm={seed_stack}/Llama-2-7b-hf", "model.context_beats=all"]))
    data = sft.train_dataset()
    fake = sft.example_batch(2, "cpu")
    _same_kinds(fake, sft.collate([data[0], data[1]]), 2)
    assert fake["pixel_values"].shape == (2 * 10, 3, sft.visual_tokenizer.image_size, sft.visual_tokenizer.image_size)
    seqs, cut = sft.sequences(fake, [9, 9], "every")
    assert cut == 0 and sft.cfg.model.max_length - 10 < len(seqs[0]) <= sft.cfg.model.max_length
    torch.manual_seed(0)
    assert torch.isfinite(sft.training_step(fake)["loss"])

    detok = build_task(load_config("configs/detokenizer/toy.yaml", common + [
        f"data.root={toy_root}", f"model.pretrained={seed_stack}/sdxl",
        "model.cache_frozen=false"]))
    data = detok.train_dataset()
    real, fake = detok.collate([data[0], data[1]]), detok.example_batch(2, "cpu")
    _same_kinds(fake, real, 2)
    assert fake["pixel_values"].shape == real["pixel_values"].shape and fake["time_ids"].shape == real["time_ids"].shape
    assert torch.isfinite(detok.training_step(fake)["loss"])
