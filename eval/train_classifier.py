"""Train the character/background classifier of a protocol on the train split only.

    python -m eval.train_classifier --protocol configs/eval/toy.yaml [key=value ...]

Validation picks the best epoch; the test split is never opened (StoryGPT-V's deleted trainer used
train+val+test ids, docs/storygpt_v.md). The folder written holds model.safetensors, config.json (the
settings and a fingerprint of the data it was trained on) and split_ids.json (every id it saw), and
is reused by eval.run while the fingerprint matches.
The data is the protocol's `dataset`, or `classifier.trained_on` when set: a classifier trained on one
dataset then judges another drawn with the same characters and backgrounds (bench/story_context.py
scores temporary long toy stories with data/toy's classifier).

Shapes: B frames, 3 x S x S pixels, C characters, G backgrounds.
"""
import argparse
import copy
import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from eval.classifier import (
    FrameClassifier,
    frame_labels,
    load_classifier,
    multilabel_scores,
    read_classifier_config,
    save_classifier,
)
from eval.images import to_tensor
from eval.protocol import load_protocol, resolve_device
from eval.stories_io import EvalInputError, load_frame, read_meta, read_split
from src.errors import run_entry

TRAINING_KEYS = ("arch", "input_size", "epochs", "lr", "batch_size", "seed")


class LabelledFrames(Dataset):
    """Every frame of a split with its labels: (pixels (3, S, S), characters (C,), background (G,), has_bg)."""

    def __init__(self, data_root, split, meta, input_size):
        where = str(Path(data_root) / f"{split}.jsonl")
        self.data_root, self.input_size = data_root, input_size
        self.num_backgrounds = len(meta.get("backgrounds") or [])
        self.items, self.story_ids = [], []
        for story in read_split(data_root, split).values():
            self.story_ids.append(story["id"])
            for image_path, (characters, background) in zip(story["images"], frame_labels(story, meta, where)):
                self.items.append((image_path, characters, background))
        if not self.items:
            raise EvalInputError(f"{where}: no stories to train the classifier on")

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        image_path, characters, background = self.items[index]
        pixels = to_tensor([load_frame(self.data_root, image_path)], size=self.input_size)[0]
        background_target = torch.zeros(max(self.num_backgrounds, 1))
        if background is not None:
            background_target[background] = 1.0
        return pixels, torch.tensor(characters), background_target, background is not None


def data_fingerprint(data_root, settings):
    """sha256 over meta.json, train.jsonl, val.jsonl and the training settings (never test.jsonl)."""
    digest = hashlib.sha256()
    for name in ("meta.json", "train.jsonl", "val.jsonl"):
        path = Path(data_root) / name
        if not path.is_file():
            raise EvalInputError(f"{path}: not found; the classifier trains on train.jsonl and selects on val.jsonl")
        digest.update(path.read_bytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def _losses(model, pixels, characters, backgrounds, has_background):
    _, character_logits, background_logits = model(pixels)
    loss = F.binary_cross_entropy_with_logits(character_logits, characters)
    if background_logits is not None and has_background.any():
        loss = loss + F.binary_cross_entropy_with_logits(background_logits[has_background],
                                                         backgrounds[has_background])
    return loss


@torch.no_grad()
def predict(model, loader, device):
    """(character logits, character targets, background logits, background targets) over a loader."""
    model.eval()
    char_logits, char_targets, bg_logits, bg_targets = [], [], [], []
    for pixels, characters, backgrounds, has_background in loader:
        _, character_logit, background_logit = model(pixels.to(device))
        char_logits.append(character_logit.cpu())
        char_targets.append(characters)
        if background_logit is not None:
            bg_logits.append(background_logit.cpu()[has_background])
            bg_targets.append(backgrounds[has_background])
    cat = lambda parts: torch.cat(parts) if parts else torch.zeros(0, 0)  # noqa: E731
    return cat(char_logits), cat(char_targets), cat(bg_logits), cat(bg_targets)


def _selection_score(model, loader, device):
    char_logits, char_targets, bg_logits, bg_targets = predict(model, loader, device)
    scores = [multilabel_scores(char_logits, char_targets)["acc"]]
    if len(bg_targets):
        scores.append(multilabel_scores(bg_logits, bg_targets)["acc"])
    return sum(scores) / len(scores)


def train_classifier(data_root, out_dir, arch, input_size, epochs, lr, batch_size, seed,
                     imagenet_weights=None, device="cpu", log=print):
    """Train on data_root's train split, select the epoch by val exact-match accuracy, save to out_dir."""
    settings = {"arch": arch, "input_size": input_size, "epochs": epochs, "lr": lr,
                "batch_size": batch_size, "seed": seed}
    fingerprint = data_fingerprint(data_root, settings)
    meta = read_meta(data_root)
    train_set = LabelledFrames(data_root, "train", meta, input_size)
    val_set = LabelledFrames(data_root, "val", meta, input_size)

    torch.manual_seed(seed)
    device = torch.device(device)
    model = FrameClassifier(arch, len(meta["characters"]), train_set.num_backgrounds,
                            imagenet_weights if arch == "inception_v3" else None).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=order)
    val_loader = DataLoader(val_set, batch_size=batch_size)

    best_score, best_state, best_epoch = -1.0, None, -1
    for epoch in range(epochs):
        model.train()
        for pixels, characters, backgrounds, has_background in train_loader:
            # horizontal flips: who is in the frame and where it happens do not depend on left/right
            flip = torch.rand(len(pixels), generator=order) < 0.5
            pixels = torch.where(flip.view(-1, 1, 1, 1), pixels.flip(-1), pixels)
            loss = _losses(model, pixels.to(device), characters.to(device), backgrounds.to(device),
                           has_background.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        score = _selection_score(model, val_loader, device)
        log(f"epoch {epoch + 1}/{epochs}: train loss {loss.item():.4f}, val exact-match {score:.4f}")
        if score > best_score:
            best_score, best_epoch = score, epoch + 1
            best_state = copy.deepcopy({key: value.cpu() for key, value in model.state_dict().items()})
    model.load_state_dict(best_state)
    config = dict(settings, characters=[c["name"] for c in meta["characters"]],
                  backgrounds=list(meta.get("backgrounds") or []), feature_dim=model.backbone.feature_dim,
                  data_root=str(data_root), fingerprint=fingerprint, best_epoch=best_epoch,
                  val_exact_match=best_score)
    split_ids = {"train": train_set.story_ids, "val": val_set.story_ids}
    save_classifier(model.cpu(), out_dir, config, split_ids)
    return config


def classifier_data(protocol):
    """The dataset folder whose train split the protocol's classifier learns: classifier.trained_on, else
    the dataset scored."""
    return protocol["classifier"]["trained_on"] or protocol["dataset"]


def ensure_classifier(protocol, device, log=print):
    """The protocol's classifier (model, config): reused when its fingerprint matches the data it is
    trained on (classifier_data), else trained when classifier.train_if_missing is true, else an error
    naming the folder and the command that trains it. The classifier must know the characters and
    backgrounds of the dataset scored, in its order (its labels are read from that meta.json)."""
    section = protocol["classifier"]
    if not section["dir"]:
        raise EvalInputError(f"protocol {protocol['protocol_file']}: key 'classifier.dir' is not set")
    settings = {key: section[key] for key in TRAINING_KEYS}
    trained_on = classifier_data(protocol)
    fingerprint = data_fingerprint(trained_on, settings)
    saved = read_classifier_config(section["dir"])
    if saved is None or saved.get("fingerprint") != fingerprint:
        if not section["train_if_missing"]:
            state = "no classifier" if saved is None else "a classifier trained on other data or settings"
            data = f"classifier.trained_on={trained_on}" if section["trained_on"] else f"dataset={trained_on}"
            raise EvalInputError(f"{section['dir']} holds {state}; train it with `python -m eval.train_classifier "
                                 f"--protocol {protocol['protocol_file']} classifier.dir={section['dir']} {data}` "
                                 f"(train split of {trained_on} only; repeat any other classifier.* overrides)")
        log(f"training the {section['arch']} classifier on {trained_on} into {section['dir']} (cached for later runs)")
        train_classifier(trained_on, section["dir"], device=device, log=log,
                         imagenet_weights=section["imagenet_weights"], **settings)
    model, config = load_classifier(section["dir"])
    meta = read_meta(protocol["dataset"])
    labels = ([c["name"] for c in meta["characters"]], list(meta.get("backgrounds") or []))
    if (config["characters"], config["backgrounds"]) != labels:
        raise EvalInputError(f"{section['dir']}: the classifier trained on {config['data_root']} knows characters "
                             f"{config['characters']} and backgrounds {config['backgrounds']}, but "
                             f"{Path(protocol['dataset']) / 'meta.json'} lists {labels[0]} and {labels[1]}")
    return model, config


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train a protocol's character/background classifier.")
    parser.add_argument("--protocol", required=True, help="configs/eval/<dataset>.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value protocol overrides")
    args = parser.parse_args(argv)
    protocol = load_protocol(args.protocol, args.overrides)
    section = protocol["classifier"]
    config = train_classifier(classifier_data(protocol), section["dir"], device=resolve_device(protocol["device"]),
                              imagenet_weights=section["imagenet_weights"],
                              **{key: section[key] for key in TRAINING_KEYS})
    print(f"{section['dir']} (best epoch {config['best_epoch']}, val exact-match {config['val_exact_match']:.4f})")


if __name__ == "__main__":
    sys.exit(run_entry(main))
