"""One function per metric family: frames in, report rows and per-frame values out.

Shapes: N frames (generated and ground truth paired by index), C characters, G backgrounds.

A row is {"value", "ceiling" (the same metric on real test frames, when it means something), "note"};
per-frame values are lists of length N that eval.run averages per story.
"""
import torch

from eval.captioning import caption_frames, caption_scores, load_captioner
from eval.classifier import multilabel_scores
from eval.clip_score import clip_frame_scores, load_clip
from eval.fid import extract_features, frechet_distance
from eval.images import batches, to_tensor
from eval.inception_fid import load_fid_inception

NOT_MEANINGFUL = "not meaningful (tiny random weights)"


def _row(value, ceiling=None, note=""):
    return {"value": value, "ceiling": ceiling, "note": note}


def _percent(value):
    return None if value is None else 100.0 * value


@torch.no_grad()
def classifier_outputs(model, frames, input_size, device, batch_size):
    """(features (N, D), character logits (N, C), background logits (N, G) or None)."""
    model = model.to(device).eval()
    features, characters, backgrounds = [], [], []
    for chunk in batches(frames, batch_size):
        feature, character_logits, background_logits = model(to_tensor(chunk, size=input_size).to(device))
        features.append(feature.cpu())
        characters.append(character_logits.cpu())
        if background_logits is not None:
            backgrounds.append(background_logits.cpu())
    return torch.cat(features), torch.cat(characters), torch.cat(backgrounds) if backgrounds else None


def _per_frame_exact(logits, targets):
    return ((torch.sigmoid(logits) >= 0.5).float() == targets).all(dim=1).float().tolist()


def score_classifier(generated_out, real_out, labels, num_backgrounds):
    """Char-Acc/F1 and BG-Acc/F1 rows (percent) for generated frames with real frames as the ceiling.

    labels: per frame (character multi-hot, background index or None) from the ground truth.
    """
    character_targets = torch.tensor([characters for characters, _ in labels])
    with_background = [i for i, (_, background) in enumerate(labels) if background is not None]
    rows, details = {}, {}
    generated_chars = multilabel_scores(generated_out[1], character_targets)
    real_chars = multilabel_scores(real_out[1], character_targets)
    rows["Char-Acc (%)"] = _row(_percent(generated_chars["acc"]), _percent(real_chars["acc"]))
    rows["Char-F1 (%)"] = _row(_percent(generated_chars["f1"]), _percent(real_chars["f1"]))
    details["character_frames"] = len(labels)
    per_frame = {"char_acc": _per_frame_exact(generated_out[1], character_targets)}
    if num_backgrounds and with_background:
        targets = torch.zeros(len(with_background), num_backgrounds)
        for row, index in enumerate(with_background):
            targets[row, labels[index][1]] = 1.0
        generated_bg = multilabel_scores(generated_out[2][with_background], targets)
        real_bg = multilabel_scores(real_out[2][with_background], targets)
        rows["BG-Acc (%)"] = _row(_percent(generated_bg["acc"]), _percent(real_bg["acc"]))
        rows["BG-F1 (%)"] = _row(_percent(generated_bg["f1"]), _percent(real_bg["f1"]))
        unlabelled = len(labels) - len(with_background)
        if unlabelled:
            rows["BG-Acc (%)"]["note"] = f"{unlabelled} of {len(labels)} frames have no background label"
    else:
        rows["BG-Acc (%)"] = _row(None, note="the dataset has no background labels")
    details["background_frames"] = len(with_background)
    return rows, per_frame, details


def score_fid(section, generated, real, device, batch_size, classifier_features=None):
    """One row: FID on Inception pool3, or the Frechet distance on classifier features (toy)."""
    if section["features"] == "classifier":
        generated_features, real_features = classifier_features
        value = frechet_distance(generated_features.numpy(), real_features.numpy())
        return {"Frechet distance (classifier features)": _row(
            value, note="on the protocol's classifier features, not Inception: not comparable with FID")}
    network = load_fid_inception(section["inception_weights"]).to(device)
    features = [extract_features(network, frames, batch_size, device, resize_to=section["resize_to"])
                for frames in (generated, real)]
    name = "FID" if section["resize_to"] is None else f"FID ({section['resize_to']} px)"
    return {name: _row(frechet_distance(*features))}


def score_clip(section, generated, real, captions, device, batch_size, real_captions=None):
    """CLIP T-I (frame vs the text it was made from or written with; ceiling: the real frame vs
    real_captions, default the same text) and CLIP I-I (frame vs its ground-truth frame)."""
    clip = load_clip(section["model"], device)
    per_frame = clip_frame_scores(clip, generated, captions, real, device, batch_size, real_captions)
    note = NOT_MEANINGFUL if section["not_meaningful"] else ""
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    rows = {"CLIP T-I": _row(mean(per_frame["clip_t2i"]), mean(per_frame["clip_t2i_real"]), note),
            "CLIP I-I": _row(mean(per_frame["clip_i2i"]), note=note)}
    return rows, {"clip_t2i": per_frame["clip_t2i"], "clip_i2i": per_frame["clip_i2i"]}


def score_captions(section, generated, real, dataset_captions, device, batch_size, data_root=None):
    if section["build_tiny"]:
        from src.tools.tiny.blip2 import ensure_tiny_blip2
        ensure_tiny_blip2(section["model"], data_root)
    captioner = load_captioner(section["model"], device)
    options = dict(device=device, batch_size=batch_size, num_beams=section["num_beams"],
                   max_new_tokens=section["max_new_tokens"])
    generated_captions = [captions[0] for captions in caption_frames(captioner, generated, num_captions=1, **options)]
    real_captions = caption_frames(captioner, real, num_captions=section["gt_captions_per_frame"], **options)
    scores, per_frame_cider = caption_scores(generated_captions, dataset_captions, real_captions)
    note = NOT_MEANINGFUL if section["not_meaningful"] else ""
    names = {"cider": "CIDEr"}
    for n in range(1, 5):
        names[f"bleu{n}_vs_dataset"] = f"BLEU-{n} (vs dataset captions)"
        names[f"bleu{n}_vs_real_captions"] = f"BLEU-{n} (vs captions of real frames)"
    rows = {names[key]: _row(value, note=note) for key, value in scores.items()}
    captions = {"generated": generated_captions, "real": real_captions}
    return rows, {"cider": per_frame_cider}, captions
