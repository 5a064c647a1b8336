"""The tiny StoryGPT-V stack that both sides of the parity checks are built from (docs/fidelity.md).

The release's modules are built at these sizes with seeded random weights; ours are loaded from the
folders written here (the layouts of the real weights: a diffusers Stable Diffusion folder, a CLIP vision
folder, a Hugging Face causal-LM folder) plus our converters' output. Every random weight is rounded to a
value that bfloat16 and float16 hold exactly, because the release casts its stage-2 model to bf16 (and
loads Llama in fp16) on the way in: so fp32 comparisons stay exact comparisons of the same weights.

Nothing here imports the original code: the CI tests (tests/test_parity_storygptv.py) rebuild the same
folders from the golden files.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from src.tools.parity.common import randomize_

# SD 1.5 / CLIP ViT-L/14 layouts at toy widths. The text width (8) is also the fuse, image-projection and
# cross-attention width; the text tower keeps CLIP's 49408-token vocabulary (the real tokenizer).
TEXT = dict(vocab_size=49408, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=77, projection_dim=8)
# 224 px like ViT-L/14 (the release resizes references to 224 before its encoder; a smaller tower would add a
# second resize there that the real model does not have), with 32 px patches.
VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=224,
              patch_size=32, projection_dim=8)
# Cross-attention in down_blocks.1/2, mid_block and up_blocks.0/1: the release's five hooked blocks
# ("down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.1", "up_blocks.2") meet four of them here.
UNET = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=[8, 16, 16], layers_per_block=1,
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], cross_attention_dim=8,
            attention_head_dim=4, norm_num_groups=4)
ATTENTION_LAYERS = ["down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.1"]
VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
           up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], block_out_channels=[8, 16], latent_channels=4,
           norm_num_groups=4, sample_size=32)
FRAME_SIZE = 32
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
                 clip_sample=False)   # SD 1.5's scheduler_config.json (PNDM)
OPT = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, ffn_dim=32, max_position_embeddings=128,
           word_embed_proj_dim=16, do_layer_norm_before=True, dropout=0.0, attention_dropout=0.0)
LLAMA = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
             intermediate_size=32, max_position_embeddings=128, tie_word_embeddings=False)
# GILL's mapper hard-codes d=512 and FF 4d; the tiny build swaps in the same classes at d=16 (see
# storygptv_stage2.py, `tiny_gill_mapper`), with the release's 4 + 4 layers and 4 heads.
MAPPER = dict(width=16, encoder_layers=4, decoder_layers=4, heads=4, ffn=64)
NUM_IMAGE_TOKENS, VISUAL_TOKENS = 8, 4

# The release's FlintstonesSV name list (models/data.py), as our FlintstonesSV meta.json spells them.
FLINTSTONES = ["fred", "wilma", "barney", "betty", "pebbles", "mr slate", "dino"]
GENDERS = {"fred": "male", "wilma": "female", "barney": "male", "betty": "female", "pebbles": "female",
           "mr slate": "male", "dino": "male"}
PORORO = ["Pororo", "Loopy", "Crong", "Eddy", "Poby", "Petty", "Tongtong", "Rody", "Harry"]


def exact_in_half_(module: torch.nn.Module) -> torch.nn.Module:
    """Round every floating tensor to bfloat16 and flush magnitudes below 2^-14 to 0: the values are then
    exact in bf16 and fp16 alike, and a cast there and back changes nothing."""
    with torch.no_grad():
        for tensor in module.state_dict(keep_vars=True).values():
            if tensor.is_floating_point():
                rounded = tensor.bfloat16().float()
                tensor.copy_(torch.where(rounded.abs() < 2.0 ** -14, torch.zeros_like(rounded), rounded))
    return module


def randomized(module: torch.nn.Module, seed: int, scale: float = 0.02) -> torch.nn.Module:
    return exact_in_half_(randomize_(module, seed, scale))


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


# ---- our side's pretrained folders -------------------------------------------------------------------
def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET)


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE)


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**TEXT))


def build_vision():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION))


def _loaded(module, tensors: dict):
    module.load_state_dict(tensors, strict=True)
    return module


def write_sd_folder(folder: Path, unet: dict, vae: dict, text_encoder: dict) -> Path:
    """A diffusers Stable Diffusion folder: unet, vae, text_encoder (the given weights), CLIP's tokenizer
    (built offline from open_clip's BPE file) and SD 1.5's PNDM scheduler config."""
    from diffusers import PNDMScheduler

    from src.tools.tiny.tokenizer import build_clip_tokenizer

    folder = Path(folder)
    _loaded(build_unet(), unet).save_pretrained(folder / "unet")
    _loaded(build_vae(), vae).save_pretrained(folder / "vae")
    _loaded(build_text_encoder(), text_encoder).save_pretrained(folder / "text_encoder")
    build_clip_tokenizer(folder / "tokenizer")
    PNDMScheduler.from_config(SCHEDULER).save_pretrained(folder / "scheduler")
    return folder


def write_clip_folder(folder: Path, vision: dict) -> Path:
    """A CLIP vision folder (tower + projection) with CLIP's image-processor config at 224 px."""
    from transformers import CLIPImageProcessor

    folder = Path(folder)
    _loaded(build_vision(), vision).save_pretrained(folder)
    size = VISION["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(folder)
    return folder


def llm_tokenizer(tokenizer_json: str, family: str):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from src.tools.tiny.llm import SPECIALS

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json),
                                   model_max_length=OPT["max_position_embeddings"], **SPECIALS[family])


def build_llm(family: str, vocab_size: int, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    ids = dict(vocab_size=vocab_size, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if family == "opt":
        return OPTForCausalLM(OPTConfig(**OPT, **ids))
    return LlamaForCausalLM(LlamaConfig(**LLAMA, **ids))


def write_llm_folder(folder: Path, family: str, weights: dict, tokenizer_json: str) -> Path:
    """A Hugging Face causal-LM folder (config, weights, tokenizer), as facebook/opt-6.7b or Llama-2 ship."""
    folder = Path(folder)
    tokenizer = llm_tokenizer(tokenizer_json, family)
    lm = build_llm(family, len(tokenizer), tokenizer)
    lm.load_state_dict(weights, strict=False)  # a tied head has no weights of its own
    missing = set(lm.state_dict()) - set(weights) - {"lm_head.weight"}
    if missing:
        raise KeyError(f"{family} weights lack {sorted(missing)[:4]}")
    lm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_dataset(root: Path, references: dict[str, np.ndarray], stories: list[dict], split: str = "test",
                  name: str = "flintstones", characters: list[str] = FLINTSTONES) -> Path:
    """A story-format folder (docs/story_format.md): meta.json, `split`.jsonl, blank frames and the
    characters' fixed references (uint8 [H,W,3] arrays, written as PNG)."""
    root = Path(root)
    (root / "chars").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    entries = []
    for character in characters:
        entry = {"name": character, "gender": GENDERS.get(character, "neutral")}
        if character in references:
            Image.fromarray(references[character]).save(root / "chars" / f"{character}.png")
            entry["reference"] = f"chars/{character}.png"
        entries.append(entry)
    meta = {"name": name, "format_version": 1, "source": "src.tools.parity (tiny)", "frame_size": [FRAME_SIZE] * 2,
            "frames_per_story": max(len(s["captions"]) for s in stories), "characters": entries, "backgrounds": []}
    (root / "meta.json").write_text(json.dumps(meta, indent=2))
    blank = Image.new("RGB", (FRAME_SIZE, FRAME_SIZE))
    lines = []
    for story in stories:
        images = []
        for k in range(len(story["captions"])):
            images.append(f"images/{story['id']}_{k}.png")
            blank.save(root / images[-1])
        lines.append(json.dumps({"id": story["id"], "images": images, **story}))
    for other in {"train", "val", "test"}:
        (root / f"{other}.jsonl").write_text("\n".join(lines) + "\n" if other == split else "")
    return root
