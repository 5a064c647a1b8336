"""Randomly initialised tiny stand-ins for SD 1.5's UNet, text encoder and scheduler, and for
CLIP ViT-L/14: the real component classes and block layouts at toy widths (pretrained/README.md,
"The tiny stack"). Every builder seeds torch itself, so a component depends only on its seed.

Shape legend: B batch, L tokens (77), D text width, C latent channels, H/W latent size.
The UNet maps latents [B, C, H, W] + encoder_hidden_states [B, L, D] -> [B, C, H, W].
"""

import torch
from diffusers import DDIMScheduler, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPTextModel

from src.tools.tiny.config import TinyStackConfig
from src.tools.tiny.tokenizer import CLIP_VOCAB_SIZE

# CLIP's special token ids (tiny_tokenizer builds the same 49408-token vocabulary).
CLIP_PAD_ID, CLIP_BOS_ID, CLIP_EOS_ID = 1, 49406, 49407
# OpenAI CLIP's image normalisation, as in clip-vit-large-patch14's preprocessor_config.json.
CLIP_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


def count_parameters(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def text_config(config: TinyStackConfig) -> CLIPTextConfig:
    text = config.text_encoder
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        max_position_embeddings=text.max_position_embeddings,
        # StoryGPT-V fuses a CLIP image embedding (visual_projection output) into text-encoder tokens,
        # so CLIP's joint space must have the text encoder's width (StoryGPT-V Sec. 3.1, 768 for real).
        projection_dim=text.hidden_size,
        hidden_act="quick_gelu",
        pad_token_id=CLIP_PAD_ID,
        bos_token_id=CLIP_BOS_ID,
        eos_token_id=CLIP_EOS_ID,
    )


def build_text_encoder(config: TinyStackConfig, seed: int) -> CLIPTextModel:
    """SD 1.5's text encoder type (CLIPTextModel), random and frozen: its role is a fixed map from
    tokens to conditioning, which training never updates (StoryGPT-V keeps it frozen too)."""
    torch.manual_seed(seed)
    model = CLIPTextModel(text_config(config)).eval()
    model.requires_grad_(False)
    return model


def build_unet(config: TinyStackConfig, seed: int) -> UNet2DConditionModel:
    """SD 1.5's UNet block layout: 3 cross-attention down blocks + 1 plain one, a cross-attention mid
    block, and the mirror image going up; tiny widths from the config."""
    torch.manual_seed(seed)
    unet = config.unet
    return UNet2DConditionModel(
        sample_size=config.latent_size,
        in_channels=config.vae.latent_channels,
        out_channels=config.vae.latent_channels,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=tuple(unet.block_out_channels),
        layers_per_block=unet.layers_per_block,
        attention_head_dim=unet.attention_head_dim,
        norm_num_groups=unet.norm_num_groups,
        cross_attention_dim=config.text_encoder.hidden_size,
    )


def build_scheduler(config: TinyStackConfig):
    """The stack's scheduler config (what training and sampling read): SD 1.5's PNDM, or DDIM when the betas
    are rescaled to zero terminal SNR (PNDM has no such option). validate_tiny_config checked the values."""
    s = config.scheduler
    common = dict(num_train_timesteps=s.num_train_timesteps, beta_start=s.beta_start, beta_end=s.beta_end,
                  beta_schedule=s.beta_schedule, prediction_type=s.prediction_type,
                  timestep_spacing=s.timestep_spacing, steps_offset=s.steps_offset,
                  set_alpha_to_one=s.set_alpha_to_one)
    if s.class_name == "DDIMScheduler":  # latents are not clipped (SD's DDIM config)
        return DDIMScheduler(clip_sample=False, rescale_betas_zero_snr=s.rescale_betas_zero_snr, **common)
    return PNDMScheduler(skip_prk_steps=s.skip_prk_steps, **common)


def build_clip_model(config: TinyStackConfig, seed: int, text_encoder: CLIPTextModel) -> CLIPModel:
    """A full CLIPModel (text + vision towers with projections) standing in for clip-vit-large-patch14.
    Its text tower receives `text_encoder`'s weights: SD 1.5's text encoder *is* CLIP ViT-L/14's text
    tower, and the tiny stack keeps that identity."""
    torch.manual_seed(seed)
    vision = config.vision_encoder
    text = text_config(config)
    clip_config = CLIPConfig(
        text_config=text.to_dict(),
        vision_config=dict(
            image_size=vision.image_size,
            patch_size=vision.patch_size,
            hidden_size=vision.hidden_size,
            intermediate_size=vision.intermediate_size,
            num_hidden_layers=vision.num_hidden_layers,
            num_attention_heads=vision.num_attention_heads,
            projection_dim=text.projection_dim,
            hidden_act="quick_gelu",
        ),
        projection_dim=text.projection_dim,
    )
    model = CLIPModel(clip_config).eval()
    model.text_model.load_state_dict(text_encoder.state_dict(), strict=True)
    return model


def build_image_processor(config: TinyStackConfig) -> CLIPImageProcessor:
    """CLIP's preprocessing (resize shortest edge, centre crop, CLIP mean/std) at the tiny image size."""
    size = config.vision_encoder.image_size
    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": size},
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_normalize=True,
        image_mean=CLIP_IMAGE_MEAN,
        image_std=CLIP_IMAGE_STD,
        do_convert_rgb=True,
    )
