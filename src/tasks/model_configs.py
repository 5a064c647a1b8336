"""The `model:` section of every task's config: one dataclass per task, the schema `src/config.py` checks a
recipe against before any model is built (an unknown key or a wrong type is an error naming it).

Values only: what each key does is the task's business (src/tasks/<task>.py); the comments say what a
value means and where the paper's or the release's choice comes from. This module imports nothing heavy,
so loading a config never imports torch or diffusers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


# ---- LLM settings shared by both second stages (StoryGPT-V align, SEED-Story story_sft) ----------------
@dataclass
class LoraSettings:           # peft LoraConfig for llm_mode: lora
    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    modules_to_save: Optional[List[str]] = None   # modules trained whole and saved beside the adapters


def lora_kwargs(lora) -> dict:
    """A config's `model.lora` section -> the keyword arguments of peft's LoraConfig."""
    return dict(r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                target_modules=list(lora.target_modules),
                modules_to_save=list(lora.modules_to_save) if lora.modules_to_save else None)


def released_lora() -> LoraSettings:
    """SEED-Story's LoRA (docs/seed_story.md): r 16, alpha 32, dropout 0.05 on every projection; norms saved."""
    return LoraSettings(r=16, lora_alpha=32, lora_dropout=0.05,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                        modules_to_save=["input_layernorm", "post_attention_layernorm", "norm"])


# ---- StoryGPT-V stage 1: the baseline LDM and Char-LDM (src/tasks/ldm.py, src/tasks/char_ldm.py) -------
@dataclass
class LDMModelConfig:
    pretrained: str = "pretrained/stable-diffusion-v1-5"   # a diffusers Stable Diffusion folder
    caption_dropout: float = 0.1          # empty caption with this probability (classifier-free guidance)
    noise_offset: float = 0.0             # offset noise (0 disables)
    snr_gamma: float = 0.0                # Min-SNR-gamma loss weighting (Hang et al. 2023); 0 disables
    gradient_checkpointing: bool = False
    channels_last: bool = False           # UNet weights and activations in channels-last (NHWC) memory format
    # Compute the VAE posterior and the caption's text-encoder states of every training frame once and keep
    # them on disk (src/tasks/frozen_cache.py); the latent is still drawn from the posterior at every step.
    cache_latents: bool = False
    cache_dir: Optional[str] = None       # None: <data.root>/.cache/latents; a subfolder per fingerprint


@dataclass
class ReferenceAugmentConfig:
    rotate: float = 30.0                  # degrees, ±
    scale: List[float] = field(default_factory=lambda: [0.8, 1.2])   # zoom range
    translate: float = 0.1                # fraction of the reference size, ±
    flip: float = 0.5                     # probability of a horizontal flip
    jitter: float = 0.2                   # brightness / contrast / saturation, ±
    gray: float = 0.1                     # probability
    blur: float = 0.1                     # probability


@dataclass
class CharLDMModelConfig(LDMModelConfig):
    character_conditioning: bool = True   # false: the baseline LDM (no image encoder, fuse or extra losses)
    image_encoder: str = "pretrained/clip-vit-large-patch14"   # a CLIPModel / CLIPVisionModelWithProjection folder
    image_encoder_trainable_layers: int = 2
    max_characters: int = 4               # name slots fused per caption (FastComposer's max_num_objects)
    text_only_prob: float = 0.1           # caption_dropout (empty) + text_only_prob + fused = 1 (paper 10/10/80)
    attention_loss_weight: float = 1.0e-3   # lambda of Eq. 3 (released code's --reg_weight)
    attention_layers: List[str] = field(default_factory=lambda: [
        "down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.1", "up_blocks.2"])
    mask_loss_prob: float = 0.3           # MSE restricted to the characters' union mask on this share of batches
    fixed_reference_prob: float = 0.0     # train with the dataset's fixed chars/ reference instead of the crop
    cache_references: bool = True         # the tower's frozen layers run once per fixed reference, not per use
    reference_augment: ReferenceAugmentConfig = field(default_factory=ReferenceAugmentConfig)
    start_merge_step: int = 16            # sampling: text-only conditioning for this many steps, fused after
    # (the release's --start_merge_step N samples N + 1 text-only steps: `i <= N`, models/pipeline.py)
    # Release modes (docs/fidelity.md, "StoryGPT-V"); the converter of the released weights selects them:
    name_tokens: str = "ours"             # ours: every piece of a name, one slot per name | release: the last
    #                                       piece of a name word, a slot per occurrence (src/models/name_tokens.py)
    fuse_names_at_sampling: bool = True   # false: sampling fuses no name (the release's PororoSV inference)
    reference_preprocess: str = "ours"    # ours: exact square, float resize | release: d//2 padding, 8-bit resize
    attention_loss: str = "ours"          # ours: mean over the batch's characters | release: per-frame mean
    mask_loss_antialias: bool = True      # false: the release's plain bilinear resize of the union mask
    text_only_max_characters: int = -1    # -1: any frame may be text-only | release: 1 (frames with <= 1 segment)


# ---- StoryGPT-V stage 2 (src/tasks/align.py) ----------------------------------------------------------
@dataclass
class MapperConfig:           # GILL's mapper: d 512, 4 + 4 layers, 4 heads, FF 2048, no dropout
    width: int = 512
    encoder_layers: int = 4
    decoder_layers: int = 4
    heads: int = 4
    ffn: int = 2048


@dataclass
class AlignModelConfig:
    llm: str = "pretrained/opt-6.7b"          # any Hugging Face causal-LM folder with its tokenizer
    llm_dtype: str = "bfloat16"               # float32 | bfloat16 | float16 (the frozen LM's weights)
    llm_mode: str = "frozen"                  # frozen (paper: only the [IMG] rows train) | lora | full
    lora: LoraSettings = field(default_factory=LoraSettings)
    num_image_tokens: int = 8                 # R
    visual_tokens: int = 4                    # K soft tokens per earlier frame
    vision_encoder: str = "pretrained/clip-vit-large-patch14"   # frozen CLIP vision tower (pooled output)
    interleave: bool = True                   # false: captions only (the Caption- ablation)
    first_frame_target: bool = False          # also train on frame 0 as a target (released: never)
    max_length: int = 160                     # prompt tokens; the earliest frames are dropped beyond it
    mapper: MapperConfig = field(default_factory=MapperConfig)
    conditioning: List[int] = field(default_factory=lambda: [77, 768])   # Char-LDM's [L, E]; the cache must match
    stage1: str = "outputs/char_ldm/toy/default"   # the Char-LDM run (or checkpoint) whose targets we learn
    target: str = "fuse"                      # fuse (Emb_fuse) | text (Emb_text): the default cache to read
    targets: Optional[str] = None             # a cache folder; default <stage1 run>/targets/<step>-<target>
    ce_weight: float = 0.5
    ce_tokens: str = "img"                    # img (paper Eq. 4) | all (released: text tokens + [IMG0])
    align_weight: float = 1.0
    align_loss: str = "mse"                   # mse (squared, Eq. 6) | l2 (released: per-token distance)
    diffusion_weight: float = 0.0             # released v2: denoising loss through the frozen Char-LDM UNet
    val_stories: int = 0                      # validation: the first N val stories (0: all)
    first_frame: str = "char_ldm"             # inference: frame 0 from char_ldm (released) | llm (paper)
    # Release modes (docs/fidelity.md, "StoryGPT-V"); the converter of the released weights selects them:
    inference_prompt: str = "ours"            # ours: "... Image:" then [IMG0] at inference as in training |
    #                                           release: "... Image: " (a lone space token before [IMG0], eval_llm.py)
    frame_preprocess: str = "ours"            # earlier frames for the vision tower: ours, a float bilinear resize |
    #                                           release: CLIP's image processor (PIL bicubic, centre crop)
    pronoun_start_merge_step: int = 0         # pronoun frames: text-only steps before the LLM output (release: 1)


# ---- SEED-Story stage 1 (src/tasks/detokenizer.py) -----------------------------------------------------
@dataclass
class DetokenizerModelConfig:
    pretrained: str = "pretrained/stable-diffusion-xl-base-1.0"  # diffusers SDXL folder: unet, vae, scheduler
    tokenizer: str = "qwen_vit"           # qwen_vit | hf | open_clip (src/models/visual_tokenizer.py)
    tokenizer_path: str = "pretrained/qwen_vit_G.safetensors"
    tokenizer_arch: Optional[str] = None  # open_clip only: the architecture name
    # A converted de-tokenizer (src.tools.convert.seed_detokenizer): UNet + resampler weights, and the
    # resampler's hyper-parameters from the file, which then override the resampler_* keys below.
    init_weights: Optional[str] = None
    train_unet: str = "full"              # full | to_kv | none
    normalize: str = "token"              # token | released (SEED-Story's across-token F.normalize) | none
    resampler_dim: int = 1024
    resampler_depth: int = 4
    resampler_heads: int = 16
    resampler_dim_head: int = 64
    resampler_latents: int = 64
    resampler_ff_mult: int = 4
    uncond_prob: float = 0.1              # features replaced by the empty image's (classifier-free guidance)
    # Encode every training frame once with the frozen tokenizer and VAE (features + latent posterior) and
    # keep them in memory: same losses, no frozen forward passes per step. For small datasets (toy).
    cache_frozen: bool = False
    noise_offset: float = 0.0
    snr_gamma: float = 0.0
    gradient_checkpointing: bool = False


# ---- SEED-Story stage 2 (src/tasks/story_sft.py) -------------------------------------------------------
@dataclass
class SinkShapedSettings:     # samples shaped as the multimodal-sink cache holds a story (ours; src/models/story_cache.py)
    probability: float = 0.0  # share of training samples that are sink-shaped (the rest: context_beats)
    window: str = "random"    # random: the window drawn in 1..window_images per sample | fixed: window_images
    window_images: int = 8    # generation's window (sink.window_images)
    first_tokens: int = 4     # the cache's other settings, as generation's SinkSettings
    sink_images: Optional[int] = 1
    before_boi: int = 4
    after_boi: int = 8
    before_eoi: int = 8
    after_eoi: int = 4


@dataclass
class StorySFTModelConfig:
    llm: str = "pretrained/Llama-2-7b-hf"     # a Hugging Face causal-LM folder with its tokenizer
    llm_dtype: str = "bfloat16"               # the LLM's stored weights (trained ones stay fp32 masters)
    llm_mode: str = "lora"                    # lora (released) | full | frozen
    lora: LoraSettings = field(default_factory=released_lora)
    embeddings: str = "full"                  # full (released: embed_tokens + lm_head train) | new_rows
    # A checkpoint of this task's trainable weights (a trainable.safetensors, by name) to start from, e.g.
    # the SEED-X-pretrained agent once converted; loaded strictly.
    init_weights: Optional[str] = None
    num_image_tokens: int = 64                # K: <img_00000>.. per image (a square: 8x8 input queries)
    tokenizer: str = "qwen_vit"               # the frozen visual tokenizer (src/models/visual_tokenizer.py)
    tokenizer_path: str = "pretrained/qwen_vit_G.safetensors"
    tokenizer_arch: Optional[str] = None
    input_resampler_heads: int = 32
    output_resampler_heads: int = 32
    separator: str = "[INST]"                 # the literal text between beats (released)
    supervision: str = "every"                # every (one causal pass, every beat) | last (released)
    context_beats: str = "random"             # random (n ~ U{0..F-2}, released) | all
    sink_shaped: SinkShapedSettings = field(default_factory=SinkShapedSettings)
    max_length: int = 1280                    # tokens; longer samples are cut by whole beats from the front
    ce_weight: float = 1.0
    regression_weight: float = 1.0
    regression_loss: str = "cosine"           # cosine (released) | mse (SEED-X 13B)
    gradient_checkpointing: bool = False
    val_stories: int = 0                      # validation: the first N val stories (0: all)
    # The detokenizer run (stage 1) that draws this MLLM's regressed features. Stage 2 does not read it;
    # stage 3 (story_adapt) starts from it and generation draws with it unless told otherwise.
    detokenizer_run: Optional[str] = None


# ---- SEED-Story stage 3 (src/tasks/story_adapt.py) -----------------------------------------------------
@dataclass
class StoryAdaptModelConfig:
    # The story_sft run (stage 2) whose regressed features condition the de-tokenizer: a run folder (its
    # latest checkpoint), one of its checkpoints/step_N folders or its best/ folder.
    sft_run: str = "outputs/story_sft/storystream_george/default"
    # The detokenizer run (stage 1) to adapt, in the same forms; null: the SFT run's model.detokenizer_run.
    detokenizer_run: Optional[str] = None
    upstream_weights: str = "auto"        # auto (a run's EMA weights when it kept them) | ema | trained
    trainable: str = "resampler_kv"       # resampler_kv (released) | full_unet (paper)
    frames: str = "squash"                # squash (ours) | released (centre crops, the release's time ids)
    uncond_prob: float = 0.1              # features replaced by the empty image's (CFG); the release: 0 (none)
    # The frozen MLLM in training mode, LoRA dropout on, as the release leaves it (its agent is never put
    # in eval mode in train_sdxl_img2img_llm.py): the features then differ from generation's. Ours: off.
    sft_dropout: bool = False
    gradient_checkpointing: bool = False  # the UNet's (the release: on)
    val_items: int = 64                   # validation: the first N (story, beat) items of val, fixed noise


# task name (a config's `task:`) -> the schema of its `model:` section
MODEL_CONFIGS = {
    "char_ldm": CharLDMModelConfig,
    "align": AlignModelConfig,
    "detokenizer": DetokenizerModelConfig,
    "story_sft": StorySFTModelConfig,
    "story_adapt": StoryAdaptModelConfig,
}
