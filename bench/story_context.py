"""SEED-Story's context modes on long stories: the paper's Table 2 in miniature (docs/seed_story.md).

`python -m bench.story_context --mllm outputs/story_sft/toy_story/default --detokenizer outputs/detokenizer/toy/default
   [--lengths 25 50] [--modes dense_refill dense window sink multimodal_sink] [--sink-images all 3] [--stories 2]
   [--first-tokens 4] [--fragment 4 8 8 4] [--steps 25] [--split val|test] [--protocol configs/eval/toy.yaml]
   [--bin 5] [--text] [--plot beats.svg] [--json bench.json]`

For each length L a toy split (--split: val for choices, test once) of L-beat stories
(src/data/toy_long.py, kept whole) is made in a temporary folder; each context mode then draws it in vis
mode (the ground-truth captions, src.generate_story's pipeline): beat 0 given, beats 1..L-1 written by
the MLLM and drawn by the de-tokenizer. The multimodal sink gives one row per --sink-images value (how
many evicted images keep their head and tail; all: every one, as released); --first-tokens and
--fragment set the rest of its cache (src/models/story_cache.py). `dense_refill` is the release's dense
context, a reference for timings: the same attention as `dense`, but the whole story so far is fed again
before every beat (src/pipelines/seed_story.py). Per mode: the MLLM's seconds per beat (LLM only; the
de-tokenizer's time is reported apart: it does not depend on the mode), over the story and over its last
10 beats (each beat's median over the stories), the peak KV cache (tokens and MiB), the peak memory of the
whole process (bench/common.py: CUDA allocation, or the CPU's resident set), and with --protocol the toy
classifier's Char-Acc, BG-Acc and Frechet distance against the ground truth (eval.run's evaluate with
metrics fid and classifier), with their spread over stories (bench/story_quality.py): Char-Acc's mean and
standard error over the stories, the Frechet distance's bootstrap standard error, and against the window
(when it is among the modes) the per-story difference in Char-Acc and the bootstrapped difference in
Frechet distance, on the same stories. A second table gives both per --bin beats. --text also writes
every story in story mode (the MLLM's own text, nothing drawn) and checks its cast and places against
the ground truth's own rates. --plot draws, for the longest length, each beat's LLM seconds (median over
the stories) and, with --protocol, Char-Acc and the Frechet distance per bin beside it; --json keeps
every row, bin and per-story value.

The judge is the classifier trained on the protocol's own dataset (data/toy for configs/eval/toy.yaml:
the long stories are drawn by the same renderer with the same characters and backgrounds), named
explicitly (`classifier.trained_on`) and never trained here: without it the bench stops, in one line,
before drawing anything. The Frechet distance's reference set is the temporary stories' ground-truth
frames; its features are that classifier's. `key=value` arguments override protocol keys (eval.run's).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import machine, peak_memory_gib, print_table, reset_peak
from bench.story_quality import (
    binned,
    frame_scores,
    frechet_spread,
    mean_consistency,
    paired_difference,
    story_char_acc,
    story_spread,
    text_consistency,
)
from src.generate_story import sink_images_arg
from src.models.story_cache import SinkSettings
from src.pipelines.story_writer import DecodeSettings


def scoring_protocol(path: str, overrides: list[str]) -> dict:
    """The protocol that scores every mode: metrics fid and classifier, and the classifier trained on the
    protocol's dataset (its `dataset`, or its `classifier.trained_on` when set), required to exist. Checked
    now, so a missing classifier stops the bench before any story is drawn."""
    from eval.protocol import load_protocol, resolve_device
    from eval.train_classifier import classifier_data, ensure_classifier

    reference = classifier_data(load_protocol(path, overrides))
    protocol = load_protocol(path, [*overrides, f"classifier.trained_on={reference}",
                                    "classifier.train_if_missing=false", "metrics=[fid,classifier]"])
    ensure_classifier(protocol, resolve_device(protocol["device"]))
    return protocol


def scores(samples: Path, root: Path, protocol: dict, split: str) -> dict:
    """Char-Acc, BG-Acc, Frechet distance of a samples folder against the ground truth of `root`'s split."""
    from eval.run import evaluate

    metrics = evaluate(samples, {**protocol, "dataset": str(root), "split": split})["metrics"]  # {name: {"value": ..., ...}}
    wanted = ("Char-Acc (%)", "BG-Acc (%)", "Frechet distance (classifier features)")
    return {name: metrics[name]["value"] for name in wanted}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mllm", required=True, help="a story_sft run folder or checkpoint")
    parser.add_argument("--detokenizer", required=True, help="a detokenizer run folder or checkpoint")
    parser.add_argument("--lengths", type=int, nargs="+", default=[25, 50])
    parser.add_argument("--modes", nargs="+", default=["dense_refill", "dense", "window", "sink", "multimodal_sink"],
                        help="context modes; dense_refill: the release's dense, the whole story re-fed every beat")
    parser.add_argument("--plot", type=Path, default=None,
                        help="an SVG, for the longest length: the LLM's seconds per beat against the beat, and "
                             "with --protocol Char-Acc and the Frechet distance per --bin beats beside it")
    parser.add_argument("--stories", type=int, default=2, help="stories per length")
    parser.add_argument("--window-images", type=int, default=8)
    parser.add_argument("--sink-images", nargs="+", type=sink_images_arg, default=[SinkSettings.sink_images, None],
                        help="multimodal_sink rows: evicted images keeping their head and tail (all: as released); "
                             f"default: {SinkSettings.sink_images} and all")
    parser.add_argument("--first-tokens", type=int, default=SinkSettings.first_tokens,
                        help="sink and multimodal_sink: the story's first tokens the cache always keeps")
    parser.add_argument("--fragment", type=int, nargs=4, metavar=("BEFORE_BOI", "AFTER_BOI", "BEFORE_EOI", "AFTER_EOI"),
                        default=[SinkSettings.before_boi, SinkSettings.after_boi, SinkSettings.before_eoi,
                                 SinkSettings.after_eoi],
                        help="multimodal_sink: an evicted image keeps [<img>-B, <img>+A) and [</img>-B2, </img>+A2)")
    parser.add_argument("--split", choices=("val", "test"), default="test",
                        help="the temporary stories' split (toy generator seed 1): val for choices, test once")
    parser.add_argument("--steps", type=int, default=None, help="de-tokenizer sample.num_inference_steps")
    parser.add_argument("--protocol", default=None, help="an eval protocol with a trained classifier (toy.yaml)")
    parser.add_argument("--bin", type=int, default=5, help="beats per bin of the per-bin quality (with --protocol)")
    parser.add_argument("--text", action="store_true",
                        help="also write each story in story mode (text only, nothing drawn) and check that its "
                             "cast and places stay consistent, against the ground truth's own rates")
    parser.add_argument("--text-temperature", type=float, default=DecodeSettings.temperature)
    parser.add_argument("--text-top-p", type=float, default=DecodeSettings.top_p)
    parser.add_argument("--json", type=Path, default=None, help="write every row, per-story value and bin here")
    parser.add_argument("--device", default=None)
    parser.add_argument("overrides", nargs="*", help="key=value protocol overrides (with --protocol)")
    args = parser.parse_args(argv)
    if args.overrides and not args.protocol:
        parser.error(f"protocol overrides {args.overrides} given without --protocol")
    if args.bin < 1:
        parser.error(f"--bin must be at least 1, got {args.bin}")
    protocol = scoring_protocol(args.protocol, args.overrides) if args.protocol else None

    from src.data.stories import read_split
    from src.data.toy import generate_toy_dataset
    from src.runs import load_task

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    mllm = load_task(args.mllm)[0].to(device).eval()
    steps = [f"sample.num_inference_steps={args.steps}"] if args.steps else []
    detok = load_task(args.detokenizer, overrides=steps)[0].to(device).eval()
    pipe = detok.pipeline(**mllm.writer_parts())
    before_boi, after_boi, before_eoi, after_eoi = args.fragment
    rows, text_rows, curves = [], [], {}
    report = {"rows": rows, "text": text_rows, "bins": {}, "per_story": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for length in args.lengths:
            counts = {"num_val": args.stories if args.split == "val" else 0,
                      "num_test": args.stories if args.split == "test" else 0}
            root = generate_toy_dataset(Path(tmp) / f"toy{length}", seed=1, num_train=0, **counts,
                                        story_frames=length, chunk_frames=0, num_workers=1, progress=False)
            stories = read_split(root, args.split)[1]
            variants = [(mode, kept) for mode in args.modes
                        for kept in (args.sink_images if mode == "multimodal_sink" else [SinkSettings.sink_images])]
            scored = {}  # label -> frame_scores, for the differences against the window
            for i, (mode, kept) in enumerate(variants):
                label = mode if mode != "multimodal_sink" else (
                    f"{mode}, all sink images (released)" if kept is None else f"{mode}, {kept} sink images")
                sink = SinkSettings(window_images=args.window_images, first_tokens=args.first_tokens, sink_images=kept,
                                    before_boi=before_boi, after_boi=after_boi, before_eoi=before_eoi, after_eoi=after_eoi)
                out = Path(tmp) / f"out{length}_{i}"
                row, curve = timed_vis(pipe, stories, root, out, length, mode, sink, device)
                row = {"beats": length, "mode": label, **row}
                if length == max(args.lengths):
                    curves.setdefault("LLM s/beat", {})[label] = list(enumerate(curve, start=1))
                if protocol is not None:
                    row.update({k: f"{v:.3f}" for k, v in scores(out, root, protocol, args.split).items()})
                    scored[label] = frames = frame_scores(out, root, protocol, args.split, device)
                    per_story = story_char_acc(frames)
                    mean, se = story_spread(list(per_story.values()))
                    row["Char-Acc ± SE (stories)"] = f"{mean:.1f} ± {se:.1f}"
                    row["Frechet SE (bootstrap)"] = f"{frechet_spread(frames):.1f}"
                    if "window" in scored and label != "window":
                        diff, diff_se = paired_difference(per_story, story_char_acc(scored["window"]))
                        row["Δ Char-Acc vs window"] = f"{diff:+.1f} ± {diff_se:.1f}"
                        fd = float(row["Frechet distance (classifier features)"]) - float(
                            next(r for r in rows if r["beats"] == length and r["mode"] == "window")[
                                "Frechet distance (classifier features)"])
                        row["Δ Frechet vs window"] = f"{fd:+.1f} ± {frechet_spread(frames, scored['window']):.1f}"
                    bins = binned(frames, args.bin)
                    report["bins"].setdefault(str(length), {})[label] = bins
                    report["per_story"].setdefault(str(length), {})[label] = per_story
                    if length == max(args.lengths):
                        curves.setdefault("Char-Acc", {})[label] = [(b["mid"], b["char_acc"]) for b in bins]
                        curves.setdefault("Frechet", {})[label] = [(b["mid"], b["frechet"]) for b in bins]
                rows.append(row)
                if args.text:
                    decode = DecodeSettings(temperature=args.text_temperature, top_p=args.text_top_p)
                    text_rows.append({"beats": length, "mode": label,
                                      **consistency_cells(written_texts(pipe, stories, root, length, mode, sink, decode))})
            if args.text:
                text_rows.append({"beats": length, "mode": "ground truth",
                                  **consistency_cells([story.captions[:length] for story in stories])})
    judge = "" if protocol is None else (f"; scored by the classifier in {protocol['classifier']['dir']} (trained "
                                         f"on {protocol['classifier']['trained_on']})")
    print(f"{machine()}; mllm {args.mllm}; detokenizer {args.detokenizer}; window {args.window_images} images, "
          f"first tokens {args.first_tokens}, fragments {args.fragment}; "
          f"{args.stories} {args.split} stories per length (toy generator seed 1){judge}")
    print_table(rows, list(dict.fromkeys(k for r in rows for k in r)))
    if protocol is not None:
        for length, per_mode in report["bins"].items():
            print(f"\nper {args.bin}-beat bin, {length}-beat stories: Char-Acc ± SE (stories) / Frechet ± SE (bootstrap)")
            labels = list(per_mode)
            print_table([{"beats": b["beats"], "frames": b["frames"],
                          **{label: f"{per_mode[label][j]['char_acc']:.1f} ± {per_mode[label][j]['char_acc_se']:.1f} / "
                                    f"{per_mode[label][j]['frechet']:.1f} ± {per_mode[label][j]['frechet_se']:.1f}"
                             for label in labels}} for j, b in enumerate(per_mode[labels[0]])],
                        ["beats", "frames", *labels])
    if args.text:
        print(f"\nstory mode (the MLLM writes every beat after the first; temperature {args.text_temperature}, top-p "
              f"{args.text_top_p}), % of beats after the first, mean ± SE over stories")
        print_table(text_rows, list(dict.fromkeys(k for r in text_rows for k in r)))
    if args.plot:
        from bench.svg_plot import Panel, panels

        longest = max(args.lengths)
        plots = [Panel(curves["LLM s/beat"], f"LLM seconds per beat, {longest}-beat stories (median of {args.stories})",
                       "beat", "seconds (LLM only)")]
        if "Char-Acc" in curves:
            plots += [Panel(curves["Char-Acc"], f"Char-Acc per {args.bin}-beat bin ({args.stories} stories)",
                            "beat (bin centre)", "Char-Acc (%)"),
                      Panel(curves["Frechet"], f"Frechet distance per {args.bin}-beat bin", "beat (bin centre)",
                            "Frechet distance (classifier features)")]
        panels(args.plot, plots)
        print(f"plot: {args.plot}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": sys.argv, **report}, indent=1) + "\n")
        print(f"json: {args.json}")


def timed_vis(pipe, stories, root, out: Path, length: int, mode: str, sink: SinkSettings, device) -> tuple[dict, list]:
    """Draw the stories in vis mode under one context mode: the row's timing and cache columns, and each
    beat's median LLM seconds."""
    from src.pipelines.seed_story import generate_seed_stories

    reset_peak(device)
    start = time.perf_counter()
    generate_seed_stories(pipe, stories, root, out, "vis", length, mode, sink, DecodeSettings(temperature=0.0),
                          {"bench": "story_context"})
    total = time.perf_counter() - start
    peak, kind = peak_memory_gib(device)
    info = json.loads((out / "generation.json").read_text())
    per = info["stories"]
    curve = beat_medians([story["beat_seconds"] for story in per])
    beats = sum(s["beats"] for s in per)
    return {"stories": len(per), "LLM s/beat": f"{sum(s['seconds_per_beat'] for s in per) / len(per):.4f}",
            "LLM s/beat, last 10": f"{sum(curve[-10:]) / len(curve[-10:]):.4f}",
            "draw s/frame": f"{info['draw_seconds'] / beats:.4f}", "total s/beat": f"{total / beats:.4f}",
            "peak KV tokens": max(s["peak_cache_tokens"] for s in per),
            "peak KV MiB": f"{max(s['peak_cache_bytes'] for s in per) / 2**20:.2f}",
            f"peak mem GiB ({kind})": f"{peak:.2f}"}, curve


@torch.no_grad()
def written_texts(pipe, stories, root, length: int, mode: str, sink: SinkSettings, decode) -> list[list[str]]:
    """Each story written in story mode from its first frame and text (the MLLM's text only: nothing is
    drawn), up to `length` beats (fewer when the MLLM ends it)."""
    from src.data.transforms import story_frame
    from src.models.visual_tokenizer import INPUT_RESAMPLE

    writer = pipe.writer(mode, sink, decode)
    out = []
    for story in stories:
        frame = story_frame(root, story, 0, pipe.visual_tokenizer.image_size, INPUT_RESAMPLE)
        beats, _ = writer.write(story.captions[0], pipe.opening_features(frame), length)
        out.append([beat.text for beat in beats])
    return out


def consistency_cells(texts: list[list[str]]) -> dict:
    """The text-consistency columns (bench/story_quality.py) of some stories, mean ± SE over them."""
    from src.data.toy_sprites import BACKGROUNDS, CHARACTERS  # the toy places, in their cycle order

    per = [text_consistency(story, [c.name for c in CHARACTERS], list(BACKGROUNDS)) for story in texts]
    return {k: (f"{m:.1f} ± {se:.1f}" if k != "beats" else f"{m:.1f}") for k, (m, se) in mean_consistency(per).items()}


def beat_medians(per_story: list[list[float]]) -> list[float]:
    """Each beat's median over the stories of its LLM seconds (beats 1.., as far as every story went)."""
    n = min(len(seconds) for seconds in per_story)
    return [statistics.median(seconds[b] for seconds in per_story) for b in range(1, n)]


if __name__ == "__main__":
    from src.errors import run_entry

    sys.exit(run_entry(main))
