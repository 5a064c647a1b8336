"""The tiny pretrained stack (src/tools/tiny/stack.py): layouts that load with the real from_pretrained
code, exact save/load round trips, the real CLIP tokenizer, a VAE that learns, and safe (re)builds.

The stack is built once per module into tmp_path from a handful of coloured-shape frames written here in
the story format, with a short VAE schedule; everything else keeps the default sizes of
configs/pretrained/tiny.yaml.
"""

import json
import os
import shutil
import threading
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from src.config import ConfigError
from src.data.stories import StoryFormatError
from src.tools.tiny import stack as tiny_stack
from src.tools.tiny.config import load_tiny_config
from src.tools.tiny.models import build_unet
from src.tools.tiny.stack import (
    REQUIRED_FILES,
    SEED_OFFSETS,
    build_tiny_stack,
    ensure_tiny_stack,
    is_complete_stack,
    stack_record,
)
from src.tools.tiny.vae import (
    build_vae,
    latent_std,
    load_frames,
    reconstruction_error,
    split_frames,
)

FRAME = 64
# A short VAE schedule on tiny batches: enough to beat the untrained VAE clearly, seconds on 2 CPU cores.
TEST_OVERRIDES = {"vae": {"train": {"steps": 150, "batch_size": 2, "max_eval_frames": 8}}}


def write_shapes_dataset(root: Path, stories: dict, frames_per_story: int = 2, seed: int = 0) -> Path:
    """Stories of coloured ellipses and boxes on plain backgrounds, in docs/story_format.md's layout."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for split, count in stories.items():
        lines = []
        for story in range(count):
            story_id = f"{split}_{story:03d}"
            images = []
            for k in range(frames_per_story):
                image = Image.new("RGB", (FRAME, FRAME), tuple(int(v) for v in rng.integers(0, 256, 3)))
                draw = ImageDraw.Draw(image)
                for _ in range(2):
                    x0, y0 = (int(v) for v in rng.integers(0, FRAME - 24, 2))
                    box = [x0, y0, x0 + int(rng.integers(8, 24)), y0 + int(rng.integers(8, 24))]
                    fill = tuple(int(v) for v in rng.integers(0, 256, 3))
                    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
                name = f"images/{story_id}_{k}.png"
                image.save(root / name)
                images.append(name)
            captions = [f"Shapes in frame {k}." for k in range(frames_per_story)]
            lines.append(json.dumps({"id": story_id, "images": images, "captions": captions}))
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    meta = {"name": "shapes", "format_version": 1, "frame_size": [FRAME, FRAME], "characters": [], "backgrounds": []}
    (root / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), {"train": 6, "val": 3})


@pytest.fixture(scope="module")
def test_config():
    return load_tiny_config(None, TEST_OVERRIDES)


@pytest.fixture(scope="module")
def built_stack(tmp_path_factory, shapes_root, test_config):
    """The stack folder and the in-memory components the build saved into it."""
    built = {}

    def recording(name, builder):
        def build(*args, **kwargs):
            result = builder(*args, **kwargs)
            built[name] = result[0] if isinstance(result, tuple) else result
            return result

        return build

    with pytest.MonkeyPatch.context() as patch:
        for name in ("build_trained_vae", "build_unet", "build_text_encoder", "build_clip_model"):
            patch.setattr(tiny_stack, name, recording(name, getattr(tiny_stack, name)))
        folder = build_tiny_stack(tmp_path_factory.mktemp("pretrained") / "tiny", shapes_root, config=test_config)
    return folder, built


@pytest.fixture(scope="module")
def stack(built_stack) -> Path:
    return built_stack[0]


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    state_a, state_b = a.state_dict(), b.state_dict()
    return state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


# ---------------------------------------------------------------- layout and record


def test_stack_has_every_file_and_records_what_was_built(stack, test_config):
    assert all((stack / name).is_file() for name in REQUIRED_FILES)
    record = stack_record(stack)
    assert record["seed"] == test_config.seed
    assert record["config"] == test_config.to_dict()
    assert record["vae_reconstruction"] == json.loads((stack / "stable-diffusion-v1-5/vae/reconstruction.json").read_text())
    # the VAE's training rounds differently with another thread count: the record says what built it
    assert record["computed_on"]["cpu_threads"] == torch.get_num_threads()
    assert record["computed_on"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    index = json.loads((stack / "stable-diffusion-v1-5/model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    classes = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "text_encoder": "CLIPTextModel",
               "tokenizer": "CLIPTokenizer", "scheduler": "DDIMScheduler"}
    assert {name: index[name][1] for name in classes} == classes


# ---------------------------------------------------------------- round trips


def test_every_component_loads_back_with_identical_weights_and_outputs(built_stack):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPModel, CLIPTextModel

    stack, built = built_stack
    sd = stack / "stable-diffusion-v1-5"
    text_encoder, unet = built["build_text_encoder"].eval(), built["build_unet"].eval()
    vae, clip = built["build_trained_vae"].eval(), built["build_clip_model"].eval()
    loaded_text = CLIPTextModel.from_pretrained(sd, subfolder="text_encoder").eval()
    loaded_unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet").eval()
    loaded_vae = AutoencoderKL.from_pretrained(sd, subfolder="vae").eval()
    loaded_clip = CLIPModel.from_pretrained(stack / "clip").eval()
    components = stack_record(stack)["components"]
    for name, original, loaded in (
        ("stable-diffusion-v1-5/text_encoder", text_encoder, loaded_text),
        ("stable-diffusion-v1-5/unet", unet, loaded_unet),
        ("stable-diffusion-v1-5/vae", vae, loaded_vae),
        ("clip", clip, loaded_clip),
    ):
        assert same_weights(original, loaded), name
        assert components[name]["parameters"] == sum(p.numel() for p in loaded.parameters()), name
    assert loaded_vae.config.scaling_factor == vae.config.scaling_factor != 0.18215

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49406, (2, 77), generator=generator)
    pixels = torch.rand(2, 3, 64, 64, generator=generator) * 2 - 1
    with torch.no_grad():
        hidden = text_encoder(ids).last_hidden_state
        assert torch.equal(hidden, loaded_text(ids).last_hidden_state)
        latents = vae.encode(pixels).latent_dist.mode()
        assert latents.shape == (2, 4, 16, 16)
        assert torch.equal(latents, loaded_vae.encode(pixels).latent_dist.mode())
        assert torch.equal(vae.decode(latents).sample, loaded_vae.decode(latents).sample)
        assert torch.equal(unet(latents, 10, hidden).sample, loaded_unet(latents, 10, hidden).sample)
        assert torch.equal(
            clip(input_ids=ids, pixel_values=pixels).logits_per_image,
            loaded_clip(input_ids=ids, pixel_values=pixels).logits_per_image,
        )


def test_random_components_depend_only_on_their_seed(stack, test_config):
    from diffusers import UNet2DConditionModel

    unet = build_unet(test_config, test_config.seed + SEED_OFFSETS["unet"])
    assert same_weights(unet, UNet2DConditionModel.from_pretrained(stack / "stable-diffusion-v1-5", subfolder="unet"))
    assert not same_weights(unet, build_unet(test_config, test_config.seed + 100))


def test_tokenizers_round_trip_through_save_pretrained(stack, tmp_path):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(stack / "stable-diffusion-v1-5/tokenizer")
    tokenizer.save_pretrained(tmp_path / "again")
    again = CLIPTokenizer.from_pretrained(tmp_path / "again")
    text = "Ada and Bob walked on the beach, then she waved."
    assert again(text).input_ids == tokenizer(text).input_ids
    assert again.get_vocab() == tokenizer.get_vocab()


# ---------------------------------------------------------------- loading as the real weights load


def test_sd_folder_loads_as_a_pipeline_offline_and_draws_a_frame(stack, test_config):
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(stack / "stable-diffusion-v1-5")
    assert pipeline.safety_checker is None
    assert pipeline.vae_scale_factor == 4
    assert pipeline.unet.config.sample_size == 16
    assert pipeline.unet.config.cross_attention_dim == pipeline.text_encoder.config.hidden_size == 64
    assert tuple(pipeline.unet.config.down_block_types) == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert tuple(pipeline.unet.config.up_block_types) == ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    assert pipeline.unet.config.mid_block_type == "UNetMidBlock2DCrossAttn"
    scheduler = pipeline.scheduler.config
    assert type(pipeline.scheduler).__name__ == "DDIMScheduler"
    assert (scheduler.beta_schedule, scheduler.beta_start, scheduler.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert (scheduler.num_train_timesteps, scheduler.steps_offset) == (1000, 1)
    # zero terminal SNR with v-prediction (docs/char_ldm.md, "Noise schedule"): the last timestep is pure noise
    assert (scheduler.prediction_type, scheduler.timestep_spacing, scheduler.rescale_betas_zero_snr) == (
        "v_prediction", "trailing", True)
    assert pipeline.scheduler.alphas_cumprod[-1].item() == 0.0
    images = pipeline(
        "Ada walked on the beach.", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert images.shape == (1, 64, 64, 3)
    assert np.isfinite(images).all() and 0 <= images.min() and images.max() <= 1


def test_clip_folder_loads_as_vision_model_with_projection_and_full_clip(stack):
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTextModel, CLIPVisionModelWithProjection

    vision = CLIPVisionModelWithProjection.from_pretrained(stack / "clip").eval()
    clip = CLIPModel.from_pretrained(stack / "clip").eval()
    sd_text = CLIPTextModel.from_pretrained(stack / "stable-diffusion-v1-5", subfolder="text_encoder")
    processor = CLIPImageProcessor.from_pretrained(stack / "clip")
    frame = Image.new("RGB", (80, 64), (200, 30, 30))
    pixels = processor(images=frame, return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, 64, 64)
    with torch.no_grad():
        embeds = vision(pixel_values=pixels).image_embeds
        # StoryGPT-V fuses this embedding into text-encoder tokens: same width as the SD text encoder.
        assert embeds.shape == (1, sd_text.config.hidden_size)
        reference = clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)
        assert torch.allclose(embeds, reference, atol=1e-6)
    # SD 1.5's text encoder is CLIP ViT-L/14's text tower; the tiny stack keeps that identity.
    assert same_weights(clip.text_model, sd_text)


# ---------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("folder", ["stable-diffusion-v1-5/tokenizer", "clip"])
def test_tokenizer_matches_open_clip_simple_tokenizer(stack, folder):
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(stack / folder)
    reference = SimpleTokenizer()
    sentences = [
        "Fred and Wilma walked on the beach.",
        "Ada's dog can't   SWIM!! It barked 42 times at Mr Slate.",
        "naïve café, über-cool: (they) said \"hello\" -- 3.14",
    ]
    for sentence in sentences:
        ids = tokenizer(sentence, add_special_tokens=False).input_ids
        assert ids == reference.encode(sentence), sentence
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    padded = tokenizer(sentences[0], padding="max_length", max_length=77).input_ids
    assert len(padded) == 77
    assert padded[0] == reference.sot_token_id == 49406
    assert padded[len(reference.encode(sentences[0])) + 1] == reference.eot_token_id == 49407


# ---------------------------------------------------------------- VAE training


def test_trained_vae_reconstructs_val_frames_better_than_untrained(stack, shapes_root, test_config):
    from diffusers import AutoencoderKL

    val = load_frames(split_frames(shapes_root, "val")[0], FRAME)
    trained = AutoencoderKL.from_pretrained(stack / "stable-diffusion-v1-5", subfolder="vae")
    untrained = build_vae(test_config, test_config.seed + SEED_OFFSETS["vae"])
    trained_error, untrained_error = reconstruction_error(trained, val), reconstruction_error(untrained, val)
    assert trained_error.mse < 0.8 * untrained_error.mse  # 0.72 with the test schedule
    assert trained_error.psnr_db > untrained_error.psnr_db
    report = json.loads((stack / "stable-diffusion-v1-5/vae/reconstruction.json").read_text())
    assert report["mse"] == pytest.approx(trained_error.mse, rel=1e-5)
    assert report["untrained_mse"] == pytest.approx(untrained_error.mse, rel=1e-5)
    assert report["frames"] == len(val) == 6
    # scaling_factor = 1 / std of the training latents (the first max_eval_frames), as SD sets it.
    train = load_frames(split_frames(shapes_root, "train")[0], FRAME)[: test_config.vae.train.max_eval_frames]
    std = latent_std(trained, train, test_config.seed + SEED_OFFSETS["vae"])
    assert trained.config.scaling_factor == pytest.approx(1 / std, rel=1e-4)


# ---------------------------------------------------------------- config and data errors


@pytest.mark.parametrize(
    "yaml_text, key",
    [
        ("unet:\n  block_out_chanels: [32, 64, 64, 64]\n", "unet.block_out_chanels"),
        ("vae:\n  train:\n    steps: many\n", "vae.train.steps"),
        ("sead: 3\n", "sead"),
        ("frame_size: 60\n", "frame_size"),
        ("unet:\n  block_out_channels: [32, 64, 64]\n", "unet.block_out_channels"),
        ("text_encoder:\n  num_attention_heads: 5\n", "text_encoder.num_attention_heads"),
        ("scheduler:\n  prediction_type: epsilon\n", "scheduler.rescale_betas_zero_snr"),
        ("scheduler:\n  class_name: PNDMScheduler\n", "scheduler.rescale_betas_zero_snr"),
        ("scheduler:\n  timestep_spacing: last\n", "scheduler.timestep_spacing"),
    ],
)
def test_bad_config_is_an_error_naming_file_and_key(tmp_path, yaml_text, key):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as error:
        load_tiny_config(path)
    assert f"'{key}'" in str(error.value) and str(path) in str(error.value)


def test_default_config_file_matches_the_schema_defaults():
    from src.tools.tiny.config import TinyStackConfig

    assert load_tiny_config().to_dict() == TinyStackConfig().to_dict()


def test_bad_dataset_errors_name_file_line_and_field(tmp_path):
    root = write_shapes_dataset(tmp_path / "data", {"train": 2, "val": 1})
    (root / "val.jsonl").unlink()
    with pytest.raises(StoryFormatError, match=r"val\.jsonl: missing story file"):
        split_frames(root, "val")
    train = root / "train.jsonl"
    lines = train.read_text().splitlines()
    train.write_text(lines[0] + "\n" + '{"id": "x", "images": "images/a.png", "captions": ["a"]}\n')
    with pytest.raises(StoryFormatError, match=r"train\.jsonl:2: field 'images'"):
        split_frames(root, "train")
    train.write_text(lines[0] + "\n" + '{"id": "x", "images": ["images/missing.png"], "captions": ["a"]}\n')
    with pytest.raises(StoryFormatError, match=r"train\.jsonl:2: field 'images': story 'x' frame 0: missing file"):
        split_frames(root, "train")
    train.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(StoryFormatError, match=r"train\.jsonl:2: invalid JSON"):
        split_frames(root, "train")
    train.write_text("")
    with pytest.raises(StoryFormatError, match=r"train\.jsonl: no stories"):
        split_frames(root, "train")
    big = root / "images" / "big.png"
    Image.new("RGB", (128, 128)).save(big)
    with pytest.raises(StoryFormatError, match=r"big\.png: frame is 128x128 px, the tiny stack's frame_size is 64"):
        load_frames([big], FRAME)


# ---------------------------------------------------------------- ensure / rebuild


def count_builds(monkeypatch) -> list:
    calls = []
    real_build = tiny_stack._build_into

    def counting_build(*args, **kwargs):
        calls.append(args[0])
        return real_build(*args, **kwargs)

    monkeypatch.setattr(tiny_stack, "_build_into", counting_build)
    return calls


def test_ensure_reuses_a_complete_stack(stack, shapes_root, monkeypatch):
    builds = count_builds(monkeypatch)
    stamp = (stack / "stack.json").stat().st_mtime_ns
    assert ensure_tiny_stack(stack, shapes_root) == stack
    assert builds == [] and (stack / "stack.json").stat().st_mtime_ns == stamp


def test_ensure_rebuilds_an_incomplete_stack_identically_and_keeps_other_tools_files(
    stack, shapes_root, test_config, tmp_path, monkeypatch
):
    copy = tmp_path / "tiny"
    shutil.copytree(stack, copy)
    (copy / "stable-diffusion-v1-5/unet/diffusion_pytorch_model.safetensors").unlink()
    (copy / "blip2").mkdir()  # another tool's component (src.tools.tiny.blip2) in the same folder
    (copy / "blip2/config.json").write_text("{}")
    # What a killed build leaves behind: a half-written staging folder that must not survive.
    killed = tmp_path / ".tiny.building-1-dead"
    (killed / "stable-diffusion-v1-5").mkdir(parents=True)
    assert not is_complete_stack(copy)

    builds = count_builds(monkeypatch)
    assert ensure_tiny_stack(copy, shapes_root, config=test_config) == copy
    assert len(builds) == 1 and is_complete_stack(copy)
    assert (copy / "blip2/config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tiny.lock", "tiny"]
    # Deterministic from the seed: the rebuilt weights are byte-identical to the first build's.
    for name in REQUIRED_FILES:
        if name.endswith(".safetensors"):
            assert (copy / name).read_bytes() == (stack / name).read_bytes(), name


def test_concurrent_ensure_builds_once(shapes_root, test_config, tmp_path, monkeypatch):
    builds = count_builds(monkeypatch)
    config = load_tiny_config(test_config, {"vae": {"train": {"steps": 2}}})
    results, errors = [], []

    def call():
        try:
            results.append(ensure_tiny_stack(tmp_path / "tiny", shapes_root, config=config))
        except Exception as error:  # surfaced by the assert below
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [tmp_path / "tiny"] * 2
    assert len(builds) == 1 and is_complete_stack(tmp_path / "tiny")
    assert stack_record(tmp_path / "tiny")["config"]["vae"]["train"]["steps"] == 2


def test_cli_builds_and_then_reuses(shapes_root, tmp_path, capsys, monkeypatch):
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text("vae:\n  train:\n    batch_size: 2\n    max_eval_frames: 2\n")
    out = tmp_path / "tiny"
    tiny_stack.main(["--out", str(out), "--data", str(shapes_root), "--config", str(config_path), "--vae-steps", "1"])
    printed = capsys.readouterr().out
    assert "tiny VAE reconstruction on 2 held-out val frames" in printed and f"tiny stack ready in {out}" in printed
    assert stack_record(out)["config"]["vae"]["train"]["steps"] == 1
    builds = count_builds(monkeypatch)
    tiny_stack.main(["--out", str(out), "--data", str(shapes_root), "--config", str(config_path), "--vae-steps", "1"])
    assert builds == [] and "another config" not in capsys.readouterr().out
    tiny_stack.main(["--out", str(out), "--data", str(shapes_root)])
    assert builds == [] and "pass --force to rebuild" in capsys.readouterr().out
