"""Scoring multimodal stories (SEED-Story): generated text and frames, beat by beat, against the ground truth.

A samples folder of SEED-Story (src.generate_story; generation.json says `task: seed_story`) holds, per
story, the beats the generator wrote: beat 0 is the given opening (its text copied, its frame the
de-tokenizer's redrawing of the given frame), beats 1.. are new. In story mode the generator may stop
early (`</s>`) or write past the ground truth's length. So beat k is paired with ground-truth beat k of
the same story id for the beats both have, and the first `story.given_beats` beats are never scored:
  scored beats of a story = [given_beats, min(generated beats, ground-truth beats)).
Every per-frame metric then runs on those pairs unchanged (eval.run).

On top of the frame metrics, for stories:
- text labels (`story.text_labels`, toy): the characters and background a beat's own text names, so
  a frame is also scored against what its text says (text-frame agreement, no judge needed);
- the judge against the ground truth: single scores of the generated and of the ground-truth stories
  (the ceiling), and a pairwise verdict generated vs ground truth per story and aspect, asked in both
  A/B orders (eval/judge.py).
"""
import re

from eval.judge import judge_pairwise, judge_scores
from eval.stories_io import EvalInputError

SEED_STORY_TASK = "seed_story"


def is_story_samples(generation):
    """True for a samples folder written by SEED-Story's generator (generation.json's `task`)."""
    return bool(generation) and generation.get("task") == SEED_STORY_TASK


def _slice_frames(story, start, stop):
    """A copy of a story line with every per-frame list cut to frames [start, stop)."""
    count = len(story["images"])
    return {key: value[start:stop] if isinstance(value, list) and len(value) == count else value
            for key, value in story.items()}


def pair_beats(samples, gt_by_id, where, given_beats):
    """([(generated beats, ground-truth beats)] cut to the scored beats, [per-story beat counts]).

    where names the ground-truth file for errors; a generated id missing from it is an error.
    """
    pairs, counts = [], []
    for story in samples:
        if story["id"] not in gt_by_id:
            raise EvalInputError(f"story id {story['id']!r} of the samples is not in {where}")
        truth = gt_by_id[story["id"]]
        stop = min(len(story["images"]), len(truth["images"]))
        start = min(given_beats, stop)
        pairs.append((_slice_frames(story, start, stop), _slice_frames(truth, start, stop)))
        counts.append({"id": story["id"], "generated_beats": len(story["images"]),
                       "truth_beats": len(truth["images"]), "scored_beats": [start, stop]})
    if not any(stop > start for start, stop in (c["scored_beats"] for c in counts)):
        raise EvalInputError(f"no beat to score: every story has at most story.given_beats={given_beats} beats "
                             f"that both the samples and {where} hold (generated beats per story: "
                             f"{[c['generated_beats'] for c in counts]})")
    return pairs, counts


def _word_pattern(word):
    return re.compile(r"(?<!\w)" + re.escape(word) + r"(?!\w)", re.IGNORECASE)


def text_labels(texts, meta):
    """Per text: (character multi-hot of the meta characters it names, background index or None).

    A character counts when its name appears as a whole word (case-insensitive, as the story reader
    matches names); the background when exactly one of meta's backgrounds appears as a word (the toy
    captions say "on the beach", "in the forest", "in the city", "at night").
    """
    names = [_word_pattern(character["name"]) for character in meta["characters"]]
    places = [_word_pattern(background) for background in meta.get("backgrounds") or []]
    labels = []
    for text in texts:
        vector = [1.0 if pattern.search(text) else 0.0 for pattern in names]
        found = [i for i, pattern in enumerate(places) if pattern.search(text)]
        labels.append((vector, found[0] if len(found) == 1 else None))
    return labels


def judge_against_truth(client, samples, samples_dir, truths, data_root, max_frames):
    """Report rows, per-story scores and details of the judge on stories against their ground truth.

    samples: the generated stories (whole, beat 0 included: the judge reads a story from its opening,
    as SEED-Story's judge did); truths: the ground-truth story of each, in the same order.
    """
    generated, per_story = judge_scores(client, samples, samples_dir, max_frames)
    real, real_per_story = judge_scores(client, truths, data_root, max_frames)
    rows = {}
    for aspect, result in generated.items():
        missing = result["missing"] + real[aspect]["missing"]
        note = f"{missing} of {2 * (result['scored'] + result['missing'])} stories missing" if missing else ""
        rows[f"Judge {aspect} (1-10)"] = {"value": result["mean"], "ceiling": real[aspect]["mean"], "note": note}
    votes = judge_pairwise(client, samples, samples_dir, truths, data_root, max_frames)
    for aspect, result in votes.items():
        rows[f"Judge {aspect}: win / tie / loss vs ground truth"] = {
            "value": " / ".join("missing" if result[key] is None else f"{100 * result[key]:.1f}%"
                                for key in ("win_rate", "tie_rate", "loss_rate")),
            "note": "both A/B orders per story" + (f"; {result['missing']} answers missing" if result["missing"] else "")}
    for story_id, scores in real_per_story.items():
        per_story.setdefault(story_id, {}).update({f"{name} (ground truth)": value for name, value in scores.items()})
    details = {"scores": generated, "ground_truth_scores": real, "pairwise_vs_ground_truth": votes}
    return rows, per_story, details
