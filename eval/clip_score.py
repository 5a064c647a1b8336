"""CLIP text-image and image-image scores (StoryGPT-V Table 10) from a local transformers CLIP folder.

Shapes: B frames, D CLIP embedding width.

T-I: cosine between a generated frame's embedding and the embedding of the caption it was made from.
I-I: cosine between a generated frame and its ground-truth frame. Raw cosines in [-1, 1], averaged
over frames (no 100x scale, no clipping at 0).
"""
from pathlib import Path

import torch
import torch.nn.functional as F

from eval.images import batches
from eval.stories_io import EvalInputError


def load_clip(folder, device):
    """(CLIPModel, image processor, tokenizer) from a save_pretrained folder; missing -> named error."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise EvalInputError(
            f"CLIP scores need a transformers CLIP model folder at {folder} (config.json, weights, "
            "preprocessor_config.json, tokenizer files), which is missing; save one there with "
            "`CLIPModel.from_pretrained('openai/clip-vit-base-patch32').save_pretrained(...)` plus its "
            "processor (see pretrained/README.md), or build the tiny stack for toy")
    model = CLIPModel.from_pretrained(folder).to(device).eval()
    return model, CLIPImageProcessor.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


@torch.no_grad()
def image_embeddings(clip, images, device, batch_size):
    """(N, D) L2-normalised embeddings of PIL images."""
    model, image_processor, _ = clip
    outputs = []
    for chunk in batches(images, batch_size):
        pixels = image_processor(images=chunk, return_tensors="pt")["pixel_values"].to(device)
        outputs.append(F.normalize(model.get_image_features(pixel_values=pixels).pooler_output.float(), dim=-1))
    return torch.cat(outputs).cpu()


@torch.no_grad()
def text_embeddings(clip, texts, device, batch_size):
    """(N, D) L2-normalised embeddings of captions (truncated to the text model's context)."""
    model, _, tokenizer = clip
    max_length = model.config.text_config.max_position_embeddings
    outputs = []
    for chunk in batches(texts, batch_size):
        tokens = tokenizer(list(chunk), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        features = model.get_text_features(input_ids=tokens["input_ids"].to(device),
                                           attention_mask=tokens["attention_mask"].to(device)).pooler_output
        outputs.append(F.normalize(features.float(), dim=-1))
    return torch.cat(outputs).cpu()


def clip_frame_scores(clip, generated, captions, ground_truth, device, batch_size, real_captions=None):
    """Per frame: {"clip_t2i", "clip_i2i", "clip_t2i_real"} lists (the last is T-I of the ground truth,
    against real_captions when the generated frames had their own text, e.g. SEED-Story's stories)."""
    generated_embeddings = image_embeddings(clip, generated, device, batch_size)
    real_embeddings = image_embeddings(clip, ground_truth, device, batch_size)
    caption_embeddings = text_embeddings(clip, captions, device, batch_size)
    real_caption_embeddings = (caption_embeddings if real_captions is None
                               else text_embeddings(clip, real_captions, device, batch_size))
    return {
        "clip_t2i": (generated_embeddings * caption_embeddings).sum(-1).tolist(),
        "clip_i2i": (generated_embeddings * real_embeddings).sum(-1).tolist(),
        "clip_t2i_real": (real_embeddings * real_caption_embeddings).sum(-1).tolist(),
    }
