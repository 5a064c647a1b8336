"""Character and background classifiers: networks, labels, metrics, saving and loading.

Shapes: B frames, 3 x S x S pixels in [0, 1], C characters, G backgrounds, D feature width.

One multi-label network with two heads (characters, backgrounds), as StoryGPT-V's evaluation
(docs/storygpt_v.md): predictions are round(sigmoid); Acc is exact match of the whole label vector per
frame, F1 is micro F1 over all labels. Backgrounds are scored only on frames that have a background
label; the number of such frames is reported beside the numbers.
"""
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.models import inception as tv_inception

from eval.stories_io import EvalInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_WEIGHTS_HELP = (
    "download torchvision's ImageNet Inception-v3 once with\n  wget -O {path} "
    "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth\n(see pretrained/README.md)")


class SmallCNN(nn.Module):
    """Four stride-2 conv blocks and global average pooling: enough for 64 px toy sprites."""

    feature_dim = 64

    def __init__(self):
        super().__init__()
        layers, channels = [], 3
        for width in (16, 32, 64, 64):
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        # max pooling: "is this character anywhere in the frame" is a max over positions
        self.body = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten())

    def forward(self, pixels):
        return self.body(pixels * 2 - 1)


class InceptionBackbone(nn.Module):
    """torchvision Inception-v3 up to its 2048-d pool (ImageNet normalisation inside)."""

    feature_dim = 2048

    def __init__(self, imagenet_weights=None):
        super().__init__()
        net = tv_inception.Inception3(num_classes=1000, aux_logits=True, init_weights=imagenet_weights is None)
        if imagenet_weights is not None:
            path = Path(imagenet_weights)
            if not path.is_file():
                raise EvalInputError(f"the Inception-v3 classifier starts from ImageNet weights {path}, which "
                                     "is missing; " + IMAGENET_WEIGHTS_HELP.format(path=path))
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        net.AuxLogits = None
        net.aux_logits = False
        net.fc = nn.Identity()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels):
        return self.net((pixels - self.mean) / self.std)


class FrameClassifier(nn.Module):
    """Pixels (B, 3, S, S) in [0, 1] -> features (B, D), character logits (B, C), background logits (B, G)."""

    def __init__(self, arch, num_characters, num_backgrounds, imagenet_weights=None):
        super().__init__()
        if arch == "small_cnn":
            self.backbone = SmallCNN()
        elif arch == "inception_v3":
            self.backbone = InceptionBackbone(imagenet_weights)
        else:
            raise ValueError(f"unknown classifier arch {arch!r} (small_cnn or inception_v3)")
        width = self.backbone.feature_dim
        self.character_head = nn.Linear(width, num_characters)
        self.background_head = nn.Linear(width, num_backgrounds) if num_backgrounds else None

    def forward(self, pixels):
        features = self.backbone(pixels)
        background_logits = self.background_head(features) if self.background_head is not None else None
        return features, self.character_head(features), background_logits


def frame_labels(story, meta, where):
    """Per frame: (character multi-hot list, background index or None), from a story line.

    where names the file the story came from, for errors.
    """
    names = [character["name"] for character in meta["characters"]]
    backgrounds = list(meta.get("backgrounds") or [])
    if "characters" not in story:
        raise EvalInputError(f"{where}: story id {story['id']!r} has no 'characters' field; the classifier "
                             "needs per-frame character labels")
    labels = []
    for k, frame_characters in enumerate(story["characters"]):
        vector = [0.0] * len(names)
        for name in frame_characters:
            if name not in names:
                raise EvalInputError(f"{where}: story id {story['id']!r} frame {k}: character {name!r} "
                                     "is not in meta.json")
            vector[names.index(name)] = 1.0
        background = None
        if backgrounds and story.get("backgrounds") is not None and story["backgrounds"][k] is not None:
            if story["backgrounds"][k] not in backgrounds:
                raise EvalInputError(f"{where}: story id {story['id']!r} frame {k}: background "
                                     f"{story['backgrounds'][k]!r} is not in meta.json")
            background = backgrounds.index(story["backgrounds"][k])
        labels.append((vector, background))
    return labels


def multilabel_scores(logits, targets):
    """{"acc": exact-match frame accuracy, "f1": micro F1} of round(sigmoid(logits)) vs 0/1 targets."""
    if len(targets) == 0:
        return {"acc": None, "f1": None, "frames": 0}
    predicted = (torch.sigmoid(logits) >= 0.5).float()
    targets = targets.float()
    exact = (predicted == targets).all(dim=1).float().mean().item()
    true_positive = (predicted * targets).sum().item()
    false_positive = (predicted * (1 - targets)).sum().item()
    false_negative = ((1 - predicted) * targets).sum().item()
    denominator = 2 * true_positive + false_positive + false_negative
    f1 = 2 * true_positive / denominator if denominator else 1.0  # no labels and none predicted: perfect
    return {"acc": exact, "f1": f1, "frames": len(targets)}


def save_classifier(model, out_dir, config, split_ids):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()},
              str(out_dir / "model.safetensors"))
    (out_dir / "split_ids.json").write_text(json.dumps(split_ids, indent=1) + "\n", encoding="utf-8")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def read_classifier_config(out_dir):
    path = Path(out_dir) / "config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def load_classifier(out_dir):
    """(model in eval mode, config) from a folder written by save_classifier (strict load)."""
    out_dir = Path(out_dir)
    config = read_classifier_config(out_dir)
    weights = out_dir / "model.safetensors"
    if config is None or not weights.is_file():
        raise EvalInputError(f"{out_dir}: no trained classifier (config.json + model.safetensors); train one "
                             "with `python -m eval.train_classifier --protocol configs/eval/<dataset>.yaml`")
    model = FrameClassifier(config["arch"], len(config["characters"]), len(config["backgrounds"]))
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise EvalInputError(f"{weights}: does not match config.json (missing keys {missing}, "
                             f"unexpected keys {unexpected})")
    return model.eval(), config
