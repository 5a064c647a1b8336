"""Score one drawn story folder (what `bash scripts/story.sh` writes: frame_NN.png + story.json) with a
protocol's trained frame classifier, against the characters each caption names.

    python -m eval.story_folder --story outputs/story/storygptv_toy --protocol configs/eval/toy.yaml

A story file has no ground-truth frames, so the labels are the text's: per frame, the characters its
caption (or its written text) names, as story.json records them (`named`), and the background when the
caption names exactly one of the dataset's backgrounds. A frame that names nobody (a pronoun frame: "They
played on the beach.") has no label and is not scored; the count is printed. Char-Acc is the exact match
of the whole character vector per frame, Char-F1 the micro F1, as eval/README.md defines them for a split;
BG-Acc likewise over the frames with a background label. Per frame it prints what the classifier sees.
The classifier is the protocol's (`classifier.dir`), trained on the dataset's train split; it is never
trained here: a missing one is an error naming its folder.
"""
import argparse
import json
import re
import sys
from pathlib import Path

import torch

from eval.classifier import load_classifier, multilabel_scores
from eval.images import to_tensor
from eval.protocol import load_protocol
from eval.stories_io import EvalInputError


def words(text):
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def story_labels(record, characters, backgrounds, where):
    """Per frame: (character vector or None, background index or None)."""
    labels = []
    for frame in record["frames"]:
        if "named" not in frame:
            raise EvalInputError(f"{where}: frame {frame.get('index')}: no 'named' field (written by an older "
                                 "story.sh?); draw the story again")
        unknown = [name for name in frame["named"] if name not in characters]
        if unknown:
            raise EvalInputError(f"{where}: frame {frame['index']} names {unknown}, whom the classifier does not "
                                 f"know (it knows {', '.join(characters)}): score stories of the dataset's characters")
        vector = [1.0 if name in frame["named"] else 0.0 for name in characters] if frame["named"] else None
        text = frame.get("caption") or frame.get("text") or ""
        found = [i for i, name in enumerate(backgrounds) if set(name.lower().split()) <= words(text)]
        labels.append((vector, found[0] if len(found) == 1 else None))
    return labels


@torch.no_grad()
def score_story(folder, protocol):
    folder = Path(folder)
    path = folder / "story.json"
    if not path.is_file():
        raise EvalInputError(f"{path}: missing (a folder written by bash scripts/story.sh)")
    record = json.loads(path.read_text(encoding="utf-8"))
    model, config = load_classifier(protocol["classifier"]["dir"])
    characters, backgrounds = config["characters"], config["backgrounds"]
    labels = story_labels(record, characters, backgrounds, path)
    from PIL import Image
    images = [Image.open(folder / frame["file"]).convert("RGB") for frame in record["frames"]]
    _, char_logits, bg_logits = model(to_tensor(images, size=config["input_size"]))
    rows = []
    for frame, (vector, background), logits, bg in zip(record["frames"], labels, char_logits,
                                                        bg_logits if bg_logits is not None else [None] * len(images)):
        seen = [name for name, p in zip(characters, torch.sigmoid(logits).tolist()) if p >= 0.5]
        rows.append({"index": frame["index"], "named": frame["named"], "classifier_sees": seen,
                     "background": backgrounds[background] if background is not None else None,
                     "classifier_background": backgrounds[int(bg.argmax())] if bg is not None else None})
    scored = [i for i, (vector, _) in enumerate(labels) if vector is not None]
    result = {"story": str(folder), "classifier": str(protocol["classifier"]["dir"]), "frames": rows,
              "scored_frames": len(scored), "unlabelled_frames": len(labels) - len(scored)}
    if scored:
        chars = multilabel_scores(char_logits[scored], torch.tensor([labels[i][0] for i in scored]))
        result.update({"char_acc": 100 * chars["acc"], "char_f1": 100 * chars["f1"]})
    with_bg = [i for i, (_, background) in enumerate(labels) if background is not None]
    if with_bg and bg_logits is not None:
        targets = torch.zeros(len(with_bg), len(backgrounds))
        for row, i in enumerate(with_bg):
            targets[row, labels[i][1]] = 1.0
        result["bg_acc"] = 100 * multilabel_scores(bg_logits[with_bg], targets)["acc"]
        result["bg_frames"] = len(with_bg)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--story", required=True, help="a folder written by bash scripts/story.sh")
    parser.add_argument("--protocol", required=True, help="configs/eval/<dataset>.yaml (its classifier.dir)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("overrides", nargs="*", help="protocol key=value overrides")
    args = parser.parse_args(argv)
    try:
        result = score_story(args.story, load_protocol(args.protocol, args.overrides))
    except EvalInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for row in result["frames"]:
        print(f"frame {row['index']}: named {row['named'] or '-'}; classifier sees {row['classifier_sees'] or '-'}"
              + (f"; background {row['background']} (classifier: {row['classifier_background']})"
                 if row["background"] else ""))
    if result["scored_frames"]:
        print(f"Char-Acc {result['char_acc']:.1f}%  Char-F1 {result['char_f1']:.1f}%  over {result['scored_frames']} "
              f"frames naming a character ({result['unlabelled_frames']} naming nobody, not scored)")
    if "bg_acc" in result:
        print(f"BG-Acc {result['bg_acc']:.1f}% over {result['bg_frames']} frames naming a background")
    return 0


if __name__ == "__main__":
    sys.exit(main())
