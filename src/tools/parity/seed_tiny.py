"""The tiny SEED-Story world both sides of the parity checks run on (docs/fidelity.md): sizes, a Llama
tokenizer, a base Llama, a three-beat story with its frames, and the files our entry points read
(an LLM folder, a Qwen-VL-Chat folder, a dataset folder), written from tensors and plain values so that
the golden files (tests/assets/parity/) can rebuild them without the original code.

The shapes keep the release's structure at toy widths: the agent's LLM width equals the visual
tokenizer's feature width (4096 = 4096 released, 128 here), so both agent resamplers have no kv_proj,
as released; the visual tokenizer's attention pool has output_dim // 128 heads (Qwen-VL's rule).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from src.tools.parity.common import randomize_, seeded

# Qwen-VL's `visual` config keys at toy size: 56 px, patch 14 -> 4x4 patches; 16 feature tokens of 128.
VISUAL = {"image_size": 56, "patch_size": 14, "width": 64, "layers": 2, "heads": 4, "mlp_ratio": 4.9231,
          "output_dim": 128, "n_queries": 16}
LLAMA = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
         "intermediate_size": 256, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
         "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
# The agent: K image tokens (a square: the input resampler's grid), resampler heads, LoRA (released
# r 16 / alpha 32 / dropout 0.05 on every projection, norms saved whole; r 4 / alpha 8 at toy size).
AGENT = {"num_image_tokens": 4, "input_heads": 4, "output_heads": 4, "lora_r": 4, "lora_alpha": 8,
         "lora_dropout": 0.05}
# The de-tokenizer: ResamplerXLV2 at toy widths, an SDXL-layout UNet (text_time added conditioning),
# a two-level VAE (latents at half the frame size).
RESAMPLER = {"dim": 32, "depth": 2, "dim_head": 8, "heads": 4, "num_queries": 4, "embedding_dim": 128,
             "output1_dim": 8, "output2_dim": 8, "ff_mult": 4}
UNET = {"sample_size": 8, "in_channels": 4, "out_channels": 4,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "block_out_channels": [8, 16],
        "layers_per_block": 1, "transformer_layers_per_block": 1, "attention_head_dim": 2, "norm_num_groups": 4,
        "cross_attention_dim": 16, "use_linear_projection": True, "addition_embed_type": "text_time",
        "addition_time_embed_dim": 4, "projection_class_embeddings_input_dim": 8 + 6 * 4}
VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [8, 8],
       "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
       "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "layers_per_block": 1, "norm_num_groups": 4,
       "sample_size": 16}
SD_SIZE = 16          # the de-tokenizer's frame size (the release: 1024)
SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "steps_offset": 1, "timestep_spacing": "leading",
             "prediction_type": "epsilon"}   # SDXL base's EulerDiscreteScheduler
# A three-beat story; frames are not square (the release squashes them for the ViT and centre-crops them
# for SDXL), taller than wide for the middle one.
CAPTIONS = ["George finds a red ball in the park.", "He kicks the ball over the fence.",
            "The man in the yellow hat brings it back."]
FRAME_SIZES = [(30, 52), (44, 26), (30, 52)]   # (height, width)
SEPARATOR = "[INST]"
CORPUS = CAPTIONS + ["George and the man play in the park with a ball.", "[INST] The ball is red and yellow.",
                     "He finds the hat over there, and brings it to the man."]


def image_token_names(count: int) -> list[str]:
    """The release's added vocabulary, in its order."""
    return ["<img>", "</img>"] + [f"<img_{j:05d}>" for j in range(count)]


# ---- the tokenizer ------------------------------------------------------------------------------------

def tokenizer_vocab(vocab_size: int = 160) -> dict:
    """vocab + merges of a small BPE trained on CORPUS under Llama's Metaspace pre-tokenization."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                                           show_progress=False))
    model = json.loads(tok.to_str())["model"]
    return {"vocab": model["vocab"], "merges": [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]}


def llama_tokenizer(spec: dict):
    """Today's LlamaTokenizer (Metaspace, prepend "first", byte fallback) over the given vocab."""
    from transformers import LlamaTokenizer

    merges = [tuple(m.split(" ")) for m in spec["merges"]]
    return LlamaTokenizer(vocab=dict(spec["vocab"]), merges=merges, pad_token="<unk>")


def release_tokenizer(spec: dict, num_image_tokens: int):
    """The release's tokenizer (cvlm_llama2_tokenizer: Llama-2's plus the image tokens, ids V..V+R-1)."""
    tokenizer = llama_tokenizer(spec)
    tokenizer.add_special_tokens({"additional_special_tokens": image_token_names(num_image_tokens)})
    return tokenizer


# ---- the base LLM -------------------------------------------------------------------------------------

def llama_config(vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, **LLAMA)


def base_llama_state(vocab_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Llama-2-7b-hf's weights at toy size: seeded random (norm scales around 1)."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(vocab_size))
    model = model.to_empty(device="cpu")
    randomize_(model, seed)
    return {k: v.clone() for k, v in model.state_dict().items()}


def write_llm_folder(folder: Path, tokenizer_spec: dict, state: dict[str, torch.Tensor]) -> Path:
    """A Llama-2-7b-hf-layout folder: config.json, model.safetensors, tokenizer files."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = llama_tokenizer(tokenizer_spec)
    llama_config(len(tokenizer)).save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)
    return folder


# ---- frames and the story -----------------------------------------------------------------------------

def story_frames(seed: int) -> list[torch.Tensor]:
    """uint8 frames [H,W,3] of smooth random colour fields (a resize then has something to blend)."""
    gen = seeded(seed)
    frames = []
    for height, width in FRAME_SIZES:
        coarse = torch.rand(1, 3, 4, 4, generator=gen)
        field = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
        noise = torch.rand(1, 3, height, width, generator=gen) * 0.2
        frames.append(((field + noise).clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).contiguous())
    return frames


def write_dataset(root: Path, frames: list[torch.Tensor], captions: list[str]) -> tuple[Path, dict]:
    """Our story format (docs/story_format.md) with one story in train.jsonl; its line is also what the
    release's data code reads ({"images": [...], "captions": [...]}). Returns (root, the line)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = []
    for k, frame in enumerate(frames):
        name = f"images/f{k}.png"
        Image.fromarray(np.asarray(frame)).save(root / name)
        names.append(name)
    line = {"id": "parity_0", "images": names, "captions": list(captions)}
    height, width = FRAME_SIZES[0]
    meta = {"name": "parity", "format_version": 1, "frame_size": [height, width], "characters": [],
            "backgrounds": []}
    (root / "meta.json").write_text(json.dumps(meta))
    for split in ("train", "val"):
        (root / f"{split}.jsonl").write_text(json.dumps(line) + "\n")
    return root, line


# ---- the visual tokenizer -----------------------------------------------------------------------------

def write_qwen_vl_folder(folder: Path, visual_state: dict[str, torch.Tensor], visual: dict) -> Path:
    """A Qwen-VL-Chat-layout folder (config.json with its `visual` section, transformer.visual.* weights):
    what src.tools.convert.qwen_vit reads."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen", "visual": visual}))
    save_file({f"transformer.visual.{k}": v.contiguous() for k, v in visual_state.items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def tiny_unet(seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return randomize_(UNet2DConditionModel(**UNET), seed)


def tiny_vae(seed: int):
    from diffusers import AutoencoderKL

    return randomize_(AutoencoderKL(**VAE), seed, scale=0.1)


def euler_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(**SCHEDULER)
