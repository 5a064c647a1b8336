"""Score a samples folder against its dataset split under a protocol; write metrics.json + report.html.

    python -m eval.run --samples DIR --protocol configs/eval/toy.yaml [--out DIR] [--compare DIR] [key=value ...]

Generated frame k of story s is compared with ground-truth frame k of story s (same id): the real
set is fixed by the data, never drawn at random. Multimodal stories (SEED-Story) are paired beat by
beat, their given opening left out (eval/multimodal.py). Torch is seeded from the protocol before every
metric, so two runs on the same machine write identical numbers.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from eval import scoring, training_run
from eval.classifier import frame_labels
from eval.images import LazyFrames
from eval.judge import JudgeClient, judge_pairwise, judge_scores
from eval.multimodal import is_story_samples, judge_against_truth, pair_beats, text_labels
from eval.protocol import load_protocol, resolve_device
from eval.report import write_report
from eval.stories_io import pair_with_ground_truth, read_meta, read_samples, read_split
from eval.train_classifier import ensure_classifier
from src.errors import run_entry


def _story_means(pairs, per_frame):
    """{story id: {metric: mean over the story's frames}} from per-frame lists in pair order."""
    per_story, index = {}, 0
    for story, _ in pairs:
        count = len(story["images"])
        scores = {}
        for name, values in per_frame.items():
            chunk = [value for value in values[index:index + count] if value is not None]
            scores[name] = sum(chunk) / len(chunk) if chunk else None
        per_story[story["id"]] = scores
        index += count
    return per_story


def pronoun_frames(pairs):
    """Indices (in pair order) of the frames whose co-reference caption differs from the original one
    (a name became a pronoun), or None when the ground truth has no co-reference captions."""
    if not all(truth.get("captions_coref") for _, truth in pairs):
        return None
    flags = [coref != original for _, truth in pairs
             for coref, original in zip(truth["captions_coref"], truth["captions"])]
    return torch.tensor([i for i, flag in enumerate(flags) if flag], dtype=torch.long)


def evaluate(samples_dir, protocol, compare_dir=None, log=print):
    """All of the protocol's metrics for a samples folder, as the dict written to metrics.json."""
    samples_dir, data_root, split = Path(samples_dir), Path(protocol["dataset"]), protocol["split"]
    meta = read_meta(data_root)
    generation_file = samples_dir / "generation.json"
    generation = json.loads(generation_file.read_text(encoding="utf-8")) if generation_file.is_file() else None
    multimodal = is_story_samples(generation)
    # a written story has as many beats as its writer chose, not the dataset's frames_per_story
    sample_meta = {**meta, "frames_per_story": None} if multimodal else meta
    samples = read_samples(samples_dir, sample_meta)
    truth_by_id, where = read_split(data_root, split), str(data_root / f"{split}.jsonl")
    if multimodal:
        pairs, beats = pair_beats(samples, truth_by_id, where, protocol["story"]["given_beats"])
    else:
        pairs = pair_with_ground_truth(samples, truth_by_id, where)
    generated = LazyFrames((samples_dir, path) for story, _ in pairs for path in story["images"])
    real = LazyFrames((data_root, path) for _, truth in pairs for path in truth["images"])
    captions = [caption for story, _ in pairs for caption in story["captions"]]
    dataset_captions = [caption for _, truth in pairs for caption in truth["captions"]]
    device, batch_size, names = resolve_device(protocol["device"]), protocol["batch_size"], protocol["metrics"]

    rows, per_frame, details = {}, {}, {}
    classifier_out = None
    needs_classifier = "classifier" in names or ("fid" in names and protocol["fid"]["features"] == "classifier")
    if needs_classifier:
        torch.manual_seed(protocol["seed"])
        model, config = ensure_classifier(protocol, device, log=log)
        classifier_out = [scoring.classifier_outputs(model, frames, config["input_size"], device, batch_size)
                          for frames in (generated, real)]
        details["classifier"] = {"dir": protocol["classifier"]["dir"], "arch": config["arch"],
                                 "best_epoch": config["best_epoch"], "fingerprint": config["fingerprint"],
                                 "trained_on": config["data_root"]}
    if "classifier" in names:
        where = str(data_root / f"{split}.jsonl")
        labels = [label for _, truth in pairs for label in frame_labels(truth, meta, where)]
        new_rows, frames, counts = scoring.score_classifier(*classifier_out, labels, len(config["backgrounds"]))
        rows.update(new_rows)
        per_frame.update(frames)
        details["classifier"].update(counts)
        if multimodal and protocol["story"]["text_labels"]:
            rows.update(_text_label_rows(classifier_out, pairs, meta, len(config["backgrounds"]), per_frame))
        pronoun = None if multimodal else pronoun_frames(pairs)
        if pronoun is not None and len(pronoun):  # co-reference: the frames whose caption names nobody, on their own
            subset = [tuple(None if t is None else t[pronoun] for t in out) for out in classifier_out]
            sub_rows, _, _ = scoring.score_classifier(*subset, [labels[i] for i in pronoun.tolist()],
                                                      len(config["backgrounds"]))
            for name, row in sub_rows.items():
                row["note"] = f"{len(pronoun)} of {len(labels)} frames (caption has a pronoun)"
                rows[name.replace(" (%)", ", pronoun frames (%)")] = row
            details["pronoun_frames"] = len(pronoun)
    if "fid" in names:
        torch.manual_seed(protocol["seed"])
        features = (classifier_out[0][0], classifier_out[1][0]) if classifier_out else None
        rows.update(scoring.score_fid(protocol["fid"], generated, real, device, batch_size, features))
    if "clip" in names:
        torch.manual_seed(protocol["seed"])
        new_rows, frames = scoring.score_clip(protocol["clip"], generated, real, captions, device, batch_size,
                                              dataset_captions if multimodal else None)
        rows.update(new_rows)
        per_frame.update(frames)
    if "caption" in names:
        torch.manual_seed(protocol["seed"])
        new_rows, frames, details["captions"] = scoring.score_captions(
            protocol["caption"], generated, real, dataset_captions, device, batch_size, data_root)
        rows.update(new_rows)
        per_frame.update(frames)

    per_story = _story_means(pairs, per_frame)
    if "judge" in names:
        client = JudgeClient.from_protocol(protocol["judge"])
        max_frames = protocol["judge"]["max_frames"]
        if multimodal:  # generated vs ground truth: both scored, and compared in both A/B orders
            new_rows, judged, details["judge"] = judge_against_truth(
                client, samples, samples_dir, [truth_by_id[story["id"]] for story in samples], data_root, max_frames)
            rows.update(new_rows)
            for story_id, scores in judged.items():
                per_story[story_id].update(scores)
        else:
            summary, judged = judge_scores(client, samples, samples_dir, max_frames)
            for aspect, result in summary.items():
                total = result["scored"] + result["missing"]
                note = f"{result['missing']} of {total} stories missing" if result["missing"] else ""
                rows[f"Judge {aspect} (1-10)"] = {"value": result["mean"], "note": note}
                for story_id, scores in judged.items():
                    per_story[story_id][f"judge_{aspect}"] = scores[f"judge_{aspect}"]
            details["judge"] = {"scores": summary}
        if compare_dir is not None:
            others = read_samples(compare_dir, sample_meta)
            votes = judge_pairwise(client, samples, samples_dir, others, Path(compare_dir), max_frames)
            for aspect, result in votes.items():
                rows[f"Judge {aspect}: win / tie / loss vs {Path(compare_dir).name}"] = {
                    "value": " / ".join("missing" if result[key] is None else f"{100 * result[key]:.1f}%"
                                        for key in ("win_rate", "tie_rate", "loss_rate")),
                    "note": f"{result['missing']} answers missing" if result["missing"] else ""}
            details["judge"]["pairwise"] = {"compared_with": str(compare_dir), "votes": votes}
        details["judge"]["failed_attempts"] = len(client.failures)

    if multimodal:
        details["beats"] = beats
        given = protocol["story"]["given_beats"]
        rows = {"Story generation": {"value": f"{generation.get('mode', '?')} mode", "ceiling": None,
                                     "note": f"{generation.get('beats', '?')} beats asked, context "
                                             f"{generation.get('context', '?')}; beats {given}.. scored against "
                                             f"the same beats of the ground truth ({given} given)"}, **rows}
    elif generation is not None and "caption_field" in generation:
        field = generation["caption_field"]
        note = ("co-reference captions: later mentions of a character are pronouns" if field == "captions_coref"
                else "the original captions: every character named")
        rows = {"Captions drawn from": {"value": field, "ceiling": None, "note": note}, **rows}
    return {
        "samples": str(samples_dir), "dataset": str(data_root), "split": split,
        "stories": len(pairs), "frames": len(generated), "protocol": protocol,
        "generation": generation,
        "metrics": rows, "details": details, "per_story": per_story,
    }


def _text_label_rows(classifier_out, pairs, meta, num_backgrounds, per_frame):
    """Char/BG rows of frames against what their own text names (eval/multimodal.py, text_labels);
    the ceiling: the real frames against the ground-truth text."""
    generated, real = classifier_out
    own = text_labels([text for story, _ in pairs for text in story["captions"]], meta)
    truth = text_labels([text for _, story in pairs for text in story["captions"]], meta)
    gen_rows, frames, _ = scoring.score_classifier(generated, generated, own, num_backgrounds)
    real_rows, _, _ = scoring.score_classifier(real, real, truth, num_backgrounds)
    per_frame["char_acc_vs_text"] = frames["char_acc"]
    rows = {}
    for name, row in gen_rows.items():
        row["ceiling"] = real_rows.get(name, {}).get("value")
        row["note"] = "against the characters / place named in the frame's own text" + (
            f"; {row['note']}" if row.get("note") else "")
        rows[name.replace(" (%)", " vs its text (%)")] = row
    return rows


HEADLINE = ("Char-Acc (%)", "Char-F1 (%)", "BG-Acc (%)", "BG-F1 (%)")


def summary_lines(results, runs=()):
    """The report's opening lines: what was trained (one line per run), what was scored, the headline
    against real frames."""
    lines = [training_run.describe(run) + "." for run in runs]
    generation = results["generation"] or {}
    sampler = f", sampler {generation['scheduler']} {generation.get('num_inference_steps', '?')} steps" \
        if "scheduler" in generation else ""
    lines.append(f"Scored: {results['split']} split, {results['stories']} stories / {results['frames']} frames{sampler}.")
    rows = results["metrics"]
    headline = [f"{name.replace(' (%)', '')} {rows[name]['value']:.1f}% (real frames {rows[name]['ceiling']:.1f}%)"
                for name in HEADLINE if name in rows and rows[name].get("ceiling") is not None]
    if headline:
        lines.append("Headline: " + ", ".join(headline) + ".")
    return lines


def training_plots(run, protocol, log):
    """Loss curves and the metric over training time (periodic samples), as PIL images."""
    plots = [training_run.loss_chart(run)]
    rows = training_run.periodic_scores(run, protocol, evaluate)
    for row in rows:
        log(f"periodic samples step {row['step']} ({row['split']}): Char-Acc {row.get('Char-Acc (%)', float('nan')):.1f}, "
            f"BG-Acc {row.get('BG-Acc (%)', float('nan')):.1f}")
    plots.append(training_run.metric_chart(rows))
    return [plot for plot in plots if plot is not None], rows


def main(argv=None):
    parser = argparse.ArgumentParser(description="Score generated stories under an evaluation protocol.")
    parser.add_argument("--samples", required=True, help="samples folder (stories.jsonl + <id>/<k>.png)")
    parser.add_argument("--protocol", required=True, help="configs/eval/<dataset>.yaml")
    parser.add_argument("--out", default=None, help="folder for metrics.json and report.html (default: --samples)")
    parser.add_argument("--compare", default=None, help="second samples folder for the pairwise judge")
    parser.add_argument("--run", action="append", default=[],
                        help="training run folder: the report opens with what was trained and plots its losses and "
                             "periodic samples' metrics; repeat it for a chain of runs (SEED-Story's stages)")
    parser.add_argument("overrides", nargs="*", help="key=value protocol overrides, e.g. fid.resize_to=64")
    args = parser.parse_args(argv)
    out_dir = Path(args.out or args.samples)
    protocol = load_protocol(args.protocol, args.overrides)
    log = lambda message: print(message, flush=True)  # noqa: E731
    runs = [training_run.read_run(run) for run in args.run]
    results = evaluate(args.samples, protocol, compare_dir=args.compare, log=log)
    plots = []
    if runs:
        results["training"] = []
        for run in runs:
            run_plots, rows = training_plots(run, protocol, log)
            plots += run_plots
            results["training"] += [{"run": str(run["dir"]), **row} for row in rows]
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.json"
    metrics_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    report_path = write_report(args.samples, out_dir / "report.html", data_root=protocol["dataset"],
                               split=protocol["split"], metrics=results["metrics"],
                               per_story=results["per_story"],
                               title=f"StoryViz evaluation: {Path(args.protocol).stem} protocol",
                               summary=summary_lines(results, runs), plots=plots,
                               given_beats=protocol["story"]["given_beats"])
    print(f"wrote {metrics_path}")
    print(f"wrote {report_path}")


if __name__ == "__main__":
    sys.exit(run_entry(main))
