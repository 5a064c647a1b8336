"""Schema of configs/pretrained/tiny.yaml, the sizes and training steps of the tiny pretrained stack.

The YAML holds values only; this dataclass schema gives every key its type and default. Loading goes
through src/config.py (`read_yaml`, `merge_onto_schema`), as for every other config, so a typo or a
wrongly typed value is a ConfigError naming the file and the key (docs/architecture.md, "Configs").
Defaults mirror the real Stable Diffusion 1.5 / CLIP ViT-L/14 *layout* at toy widths.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Union

from omegaconf import OmegaConf

from src.config import ConfigError, merge_onto_schema, read_yaml

# The default recipe lives next to the other configs: <repo>/configs/pretrained/tiny.yaml.
DEFAULT_TINY_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "pretrained" / "tiny.yaml"


@dataclass
class UNetConfig:
    # SD 1.5 keeps 4 resolution levels (3 cross-attention down blocks + 1 plain one); only widths shrink.
    block_out_channels: List[int] = field(default_factory=lambda: [32, 64, 64, 64])
    layers_per_block: int = 1
    # diffusers' legacy name: for SD 1.x this is the number of attention heads (SD 1.5 uses 8).
    # 2 heads instead of 8 halve a CPU training step (CPU attention is slow with 4-wide heads).
    attention_head_dim: int = 2
    norm_num_groups: int = 8


@dataclass
class VAETrainConfig:
    steps: int = 1200
    # Whole frames in small batches: at equal compute this reconstructed val frames better than
    # 32 px random crops in batches of 8 (16.2 vs 15.4 dB PSNR after 300 steps on toy frames).
    batch_size: int = 4
    lr: float = 1.0e-3
    weight_decay: float = 0.01
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    # Small, as in the LDM autoencoders (Rombach et al. 2022, Sec. 3): latents stay close to a
    # Gaussian without blurring the reconstruction.
    kl_weight: float = 1.0e-6
    # Extra weight on the pixels of characters (from the dataset's masks, when it has them): in a plain
    # pixel loss the small sprites lose to the background and come back blurred or not at all, yet they
    # are what the diffusion model must draw. 5 keeps every toy character's shape and colour.
    character_weight: float = 5.0
    # Frames used to measure the latent std (scaling_factor) and the reconstruction error.
    max_eval_frames: int = 256


@dataclass
class VAEConfig:
    # len(block_out_channels) - 1 downsamplings: 3 blocks give factor 4 (64 px -> 16x16 latents).
    block_out_channels: List[int] = field(default_factory=lambda: [16, 32, 64])
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 8
    train: VAETrainConfig = field(default_factory=VAETrainConfig)


@dataclass
class TextEncoderConfig:
    # Stands in for CLIP ViT-L/14's text tower (width 768, 12 layers), which SD 1.5 uses as is.
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 77


@dataclass
class VisionEncoderConfig:
    # Stands in for CLIP ViT-L/14's vision tower (width 1024, patch 14, 224 px). Its width differs from
    # the text width on purpose, as in the real model, so shape mix-ups fail loudly.
    image_size: int = 64
    patch_size: int = 8
    hidden_size: int = 96
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 384


@dataclass
class SchedulerConfig:
    # SD 1.5's betas (scaled-linear 0.00085-0.012) rescaled to zero terminal SNR, with v-prediction, stored as
    # a DDIM config (why: docs/char_ldm.md, "Noise schedule"). SD 1.5's own scheduler_config.json is
    # class_name PNDMScheduler, prediction_type epsilon, timestep_spacing leading, rescale_betas_zero_snr false.
    class_name: str = "DDIMScheduler"     # PNDMScheduler | DDIMScheduler (PNDM has no zero-SNR option)
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "v_prediction"  # epsilon | v_prediction (zero terminal SNR needs v_prediction)
    timestep_spacing: str = "trailing"    # leading | trailing (sampling starts at the last timestep) | linspace
    rescale_betas_zero_snr: bool = True   # Lin et al. 2024, "Common Diffusion Noise Schedules ... Are Flawed"
    skip_prk_steps: bool = True           # PNDM only
    steps_offset: int = 1
    set_alpha_to_one: bool = False


@dataclass
class TinyStackConfig:
    seed: int = 0
    # Side of the square frames the VAE is trained on; must equal the dataset's frame size.
    frame_size: int = 64
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    vision_encoder: VisionEncoderConfig = field(default_factory=VisionEncoderConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.frame_size // self.vae_scale_factor

    def to_dict(self) -> dict:
        return asdict(self)


def load_tiny_config(
    source: Union[str, Path, dict, TinyStackConfig, None] = None, overrides: Optional[dict] = None
) -> TinyStackConfig:
    """Load a tiny-stack config: a YAML path (default configs/pretrained/tiny.yaml), a plain dict or a
    TinyStackConfig; `overrides` is a nested dict merged on top. Unknown keys and wrong types raise
    ConfigError naming the source and the dotted key."""
    if isinstance(source, TinyStackConfig):
        name, values = "<TinyStackConfig>", OmegaConf.structured(source)
    elif isinstance(source, dict):
        name, values = "<dict>", source
    else:
        path = Path(source) if source is not None else DEFAULT_TINY_CONFIG
        name, values = str(path), read_yaml(path)
    merged = merge_onto_schema(OmegaConf.structured(TinyStackConfig), name, values)
    if overrides:
        merged = merge_onto_schema(merged, "<overrides>", overrides)
    config = OmegaConf.to_object(merged)
    validate_tiny_config(config, name)
    return config


def validate_tiny_config(config: TinyStackConfig, name: str = "<config>") -> None:
    """Check the relations between values that the types alone cannot express."""

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{name}: key '{key}': {message}")

    unet, vae, text, vision = config.unet, config.vae, config.text_encoder, config.vision_encoder
    if len(unet.block_out_channels) != 4:
        fail("unet.block_out_channels", f"SD 1.5's layout has 4 levels, got {unet.block_out_channels}")
    for key, channels, groups in (
        ("unet.block_out_channels", unet.block_out_channels, unet.norm_num_groups),
        ("vae.block_out_channels", vae.block_out_channels, vae.norm_num_groups),
    ):
        if not channels or any(c <= 0 or c % groups for c in channels):
            fail(key, f"every width must be a positive multiple of norm_num_groups={groups}, got {channels}")
    heads, attention_widths = unet.attention_head_dim, unet.block_out_channels
    if heads <= 0 or any(c % heads for c in attention_widths):
        fail("unet.attention_head_dim", f"{heads} heads must divide the attention widths {attention_widths}")
    for key, section in (("text_encoder", text), ("vision_encoder", vision)):
        if section.hidden_size % section.num_attention_heads:
            fail(f"{key}.num_attention_heads", f"{section.num_attention_heads} does not divide hidden_size {section.hidden_size}")
    if config.frame_size % config.vae_scale_factor:
        fail("frame_size", f"{config.frame_size} is not divisible by the VAE factor {config.vae_scale_factor}")
    if config.latent_size % 2 ** (len(unet.block_out_channels) - 1):
        fail("frame_size", f"latent size {config.latent_size} must be divisible by 8 for the UNet's 3 downsamplings")
    if vision.image_size % vision.patch_size:
        fail("vision_encoder.patch_size", f"{vision.patch_size} does not divide image_size {vision.image_size}")
    if text.max_position_embeddings < 2:
        fail("text_encoder.max_position_embeddings", "needs room for the start and end tokens")
    scheduler = config.scheduler
    if scheduler.class_name not in ("PNDMScheduler", "DDIMScheduler"):
        fail("scheduler.class_name", f"PNDMScheduler or DDIMScheduler, got '{scheduler.class_name}'")
    if scheduler.prediction_type not in ("epsilon", "v_prediction"):
        fail("scheduler.prediction_type", f"epsilon or v_prediction, got '{scheduler.prediction_type}'")
    if scheduler.timestep_spacing not in ("leading", "trailing", "linspace"):
        fail("scheduler.timestep_spacing", f"leading, trailing or linspace, got '{scheduler.timestep_spacing}'")
    if scheduler.rescale_betas_zero_snr and scheduler.prediction_type != "v_prediction":
        fail("scheduler.rescale_betas_zero_snr", "at zero SNR the noisy latent is pure noise, so epsilon cannot "
             "be predicted there: needs prediction_type v_prediction")
    if scheduler.rescale_betas_zero_snr and scheduler.class_name != "DDIMScheduler":
        fail("scheduler.rescale_betas_zero_snr", "PNDMScheduler has no such option: needs class_name DDIMScheduler")
    train = vae.train
    if train.steps < 0:
        fail("vae.train.steps", f"must be >= 0, got {train.steps}")
    for key in ("batch_size", "max_eval_frames"):
        if getattr(train, key) <= 0:
            fail(f"vae.train.{key}", f"must be > 0, got {getattr(train, key)}")
    if train.lr <= 0:
        fail("vae.train.lr", f"must be > 0, got {train.lr}")
