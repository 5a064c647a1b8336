"""BLIP-2 captions of frames, and the caption metrics of StoryGPT-V's evaluation (docs/storygpt_v.md).

One caption per generated frame and `gt_captions_per_frame` per ground-truth frame, all by beam
search (deterministic, unlike sampling). Scores, candidates first:
- bleu_vs_dataset: BLEU-1..4 of generated-frame captions against the dataset caption of that frame;
- bleu_vs_real_captions: BLEU-1..4 against the BLIP-2 captions of the ground-truth frame;
- cider: CIDEr-D against the BLIP-2 captions of the ground-truth frame.
"""
from pathlib import Path

import torch

from eval.caption_metrics import bleu, cider_per_caption
from eval.images import batches
from eval.stories_io import EvalInputError


def load_captioner(folder, device):
    """(Blip2ForConditionalGeneration, Blip2Processor) from a save_pretrained folder."""
    from transformers import Blip2ForConditionalGeneration, Blip2Processor
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise EvalInputError(
            f"caption metrics need a BLIP-2 captioner folder at {folder} (transformers layout), which is "
            "missing; for StoryGPT-V's captioner put Salesforce/blip2-opt-2.7b under pretrained/blip2-opt-2.7b "
            "and convert the published captioner.pth with `python -m src.tools.convert.blip2 --lavis captioner.pth "
            f"--base pretrained/blip2-opt-2.7b --out {folder}` (see pretrained/README.md); on toy build the "
            "tiny one with `python -m src.tools.tiny.blip2 --out pretrained/tiny/blip2`")
    model = Blip2ForConditionalGeneration.from_pretrained(folder).to(device).eval()
    return model, Blip2Processor.from_pretrained(folder)


@torch.no_grad()
def caption_frames(captioner, images, device, batch_size, num_captions, num_beams, max_new_tokens):
    """A list (one per image) of num_captions captions, from beam search with num_beams >= num_captions."""
    model, processor = captioner
    if num_beams < num_captions:
        raise EvalInputError(f"caption: num_beams ({num_beams}) must be >= captions per frame ({num_captions})")
    captions = []
    for chunk in batches(images, batch_size):
        inputs = processor(images=list(chunk), return_tensors="pt")
        tokens = model.generate(pixel_values=inputs["pixel_values"].to(device, model.dtype), do_sample=False,
                                num_beams=num_beams, num_return_sequences=num_captions,
                                max_new_tokens=max_new_tokens)
        texts = [text.strip() for text in processor.batch_decode(tokens, skip_special_tokens=True)]
        captions += [texts[i:i + num_captions] for i in range(0, len(texts), num_captions)]
    return captions


def caption_scores(generated_captions, dataset_captions, real_captions):
    """Corpus scores and per-frame CIDEr-D from captions already written.

    generated_captions[i]: the caption of generated frame i; dataset_captions[i]: its dataset
    caption; real_captions[i]: the BLIP-2 captions of its ground-truth frame.
    """
    per_frame_cider = cider_per_caption(generated_captions, real_captions)
    scores = {f"{name}_vs_dataset": value
              for name, value in bleu(generated_captions, [[text] for text in dataset_captions]).items()}
    scores.update({f"{name}_vs_real_captions": value
                   for name, value in bleu(generated_captions, real_captions).items()})
    scores["cider"] = sum(per_frame_cider) / len(per_frame_cider)
    return scores, per_frame_cider
