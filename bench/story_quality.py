"""Quality of long generated stories beyond one number per mode (bench/story_context.py's extra columns):
frames scored per story and per bin of beats, and written text checked for a consistent cast and places.

- `frame_scores`: per scored frame of a samples folder its beat, story, whether the protocol's classifier
  names exactly the ground truth's characters (Char-Acc's per-frame value, eval/scoring.py) and the
  classifier features of the frame and of its ground truth (the Frechet distance's features).
- `story_spread`: the mean over stories of a per-story value and its standard error (the spread that
  says whether two modes differ on this many stories); `paired_difference`: the same for the per-story
  differences of two modes on the same stories.
- `binned`: per bin of `size` beats (beats 1-5, 6-10, ... with the default 5), Char-Acc (mean over the
  stories of their share of right frames in the bin, with its standard error) and the Frechet distance of
  the bin's frames to their ground truth, with a bootstrap standard error over stories. With 16 stories a
  bin holds 80 frames against 64 feature dimensions: the Frechet distance is biased upwards at so few
  frames (two samples of one distribution do not score 0), so bins compare with each other at equal
  counts, not with a whole story's value.
- `text_consistency`: per written story, the share of beats (after the given first) whose named characters
  were all named in an earlier beat, whose place is the previous one or the next of the toy's cycle
  (beach, forest, city, night: src/data/toy_long.py), and whose sentence repeats an earlier beat's.

Shapes: N scored frames, D classifier feature width.
"""
from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

import numpy as np


def story_spread(values: list[float]) -> tuple[float, float]:
    """(mean, standard error of the mean) over stories; the error is 0 for one story."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0)


def paired_difference(a: dict[str, float], b: dict[str, float]) -> tuple[float, float]:
    """Mean and standard error of a[story] - b[story] over the stories both scored."""
    common = [story for story in a if story in b]
    if not common:
        raise ValueError("paired_difference: the two modes scored no story in common")
    return story_spread([a[story] - b[story] for story in common])


def frame_scores(samples_dir, root, protocol: dict, split: str, device) -> dict:
    """Per scored frame (pair order): "beat", "story" (its id), "right" (1.0 when the classifier names exactly
    the ground truth's characters), and "features" / "real_features" [N,D] (classifier features)."""
    from eval.classifier import frame_labels
    from eval.images import LazyFrames
    from eval.multimodal import pair_beats
    from eval.scoring import classifier_outputs, score_classifier
    from eval.stories_io import read_meta, read_samples, read_split
    from eval.train_classifier import ensure_classifier

    samples_dir, root = Path(samples_dir), Path(root)
    meta, where = read_meta(root), str(root / f"{split}.jsonl")
    samples = read_samples(samples_dir, {**meta, "frames_per_story": None})
    pairs, counts = pair_beats(samples, read_split(root, split), where, protocol["story"]["given_beats"])
    model, config = ensure_classifier(protocol, device, log=lambda *_: None)
    outputs = [classifier_outputs(model, LazyFrames(frames), config["input_size"], device, protocol["batch_size"])
               for frames in ([(samples_dir, p) for story, _ in pairs for p in story["images"]],
                              [(root, p) for _, truth in pairs for p in truth["images"]])]
    labels = [label for _, truth in pairs for label in frame_labels(truth, meta, where)]
    per_frame = score_classifier(*outputs, labels, len(config["backgrounds"]))[1]
    spans = [(count["id"], range(*count["scored_beats"])) for count in counts]
    return {"beat": [beat for _, beats in spans for beat in beats],
            "story": [story for story, beats in spans for _ in beats],
            "right": per_frame["char_acc"], "features": outputs[0][0].numpy(), "real_features": outputs[1][0].numpy()}


def story_char_acc(frames: dict) -> dict[str, float]:
    """{story id: Char-Acc (%) over its scored frames}."""
    per: dict[str, list[float]] = {}
    for story, right in zip(frames["story"], frames["right"]):
        per.setdefault(story, []).append(right)
    return {story: 100 * statistics.fmean(values) for story, values in per.items()}


def _rows_by_story(frames: dict, rows: np.ndarray) -> dict[str, np.ndarray]:
    stories = np.array(frames["story"])[rows]
    return {story: rows[stories == story] for story in sorted(set(stories))}


def _frechet(frames: dict, by_story: dict[str, np.ndarray], chosen) -> float:
    from eval.fid import frechet_distance

    picked = np.concatenate([by_story[story] for story in chosen])
    return frechet_distance(frames["features"][picked], frames["real_features"][picked])


def frechet_spread(frames: dict, other: dict | None = None, bootstrap: int = 200, seed: int = 0) -> float:
    """Bootstrap standard error, over stories drawn with replacement, of the Frechet distance of all of
    `frames`' scored frames; with `other` (another mode's frames of the same stories), of the difference
    FD(frames) - FD(other), both computed on the same drawn stories."""
    rng = np.random.default_rng(seed)
    mine = _rows_by_story(frames, np.arange(len(frames["beat"])))
    theirs = _rows_by_story(other, np.arange(len(other["beat"]))) if other is not None else None
    ids = sorted(mine) if theirs is None else sorted(set(mine) & set(theirs))
    if len(ids) < 2:
        return 0.0
    draws = []
    for _ in range(bootstrap):
        chosen = rng.choice(ids, size=len(ids))
        value = _frechet(frames, mine, chosen)
        draws.append(value if theirs is None else value - _frechet(other, theirs, chosen))
    return float(np.std(draws, ddof=1))


def binned(frames: dict, size: int = 5, bootstrap: int = 200, seed: int = 0) -> list[dict]:
    """Per bin of `size` beats (beats 1..size, size+1..2 size, ...): its beats, frames, Char-Acc (%) and its
    standard error over stories, the Frechet distance to the bin's ground truth and its bootstrap standard
    error (stories drawn with replacement, `bootstrap` times)."""
    rng = np.random.default_rng(seed)
    beats = np.array(frames["beat"])
    out = []
    for start in range(1, int(beats.max()) + 1, size):
        rows = np.flatnonzero((beats >= start) & (beats < start + size))
        per_story = _rows_by_story(frames, rows)
        ids = sorted(per_story)
        acc, acc_se = story_spread([100 * statistics.fmean(frames["right"][i] for i in per_story[s]) for s in ids])
        draws = [_frechet(frames, per_story, rng.choice(ids, size=len(ids))) for _ in range(bootstrap)]
        out.append({"beats": f"{start}-{min(start + size - 1, int(beats.max()))}", "mid": start + (size - 1) / 2,
                    "frames": len(rows), "char_acc": acc, "char_acc_se": acc_se, "frechet": _frechet(frames, per_story, ids),
                    "frechet_se": float(np.std(draws, ddof=1)) if len(ids) > 1 else 0.0})
    return out


# ---- the written text -----------------------------------------------------------------------------------

def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def _sentence(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def text_consistency(texts: list[str], names: list[str], places: list[str]) -> dict[str, float]:
    """A story's beats (texts[0] the given opening) -> the shares (%) of beats 1.. that name a character,
    whose named characters were all named before ("cast introduced", of the beats naming one), whose place
    is the last place named or the next of the cycle `places` ("place follows", of the beats naming
    exactly one place; "names a place": their share), and whose sentence repeats an earlier beat's."""
    from src.data.story_file import mentioned_characters

    seen, sentences = set(mentioned_characters(texts[0], names)), {_sentence(texts[0])}
    named = [p for p in places if p in _words(texts[0])]
    place = named[0] if len(named) == 1 else None
    counts = {"naming": 0, "introduced": 0, "placed": 0, "follows": 0, "repeated": 0}
    for text in texts[1:]:
        cast = mentioned_characters(text, names)
        if cast:
            counts["naming"] += 1
            counts["introduced"] += set(cast) <= seen
        seen |= set(cast)
        named = [p for p in places if p in _words(text)]
        if len(named) == 1:
            counts["placed"] += 1
            counts["follows"] += place is None or named[0] in (place, places[(places.index(place) + 1) % len(places)])
            place = named[0]
        sentence = _sentence(text)
        counts["repeated"] += sentence in sentences
        sentences.add(sentence)
    beats = max(len(texts) - 1, 1)

    def share(part, whole):
        return 100 * part / whole if whole else float("nan")
    return {"beats": len(texts), "names a character": share(counts["naming"], beats),
            "cast introduced": share(counts["introduced"], counts["naming"]),
            "names a place": share(counts["placed"], beats), "place follows": share(counts["follows"], counts["placed"]),
            "repeated sentences": share(counts["repeated"], beats)}


def mean_consistency(per_story: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """{metric: (mean, standard error)} over the stories where the metric is defined."""
    out = {}
    for key in per_story[0]:
        values = [story[key] for story in per_story if not math.isnan(story[key])]
        out[key] = story_spread(values) if values else (float("nan"), 0.0)
    return out
