"""SEED-Story's context modes on long stories: the paper's Table 2 in miniature (docs/seed_story.md).

`python -m bench.story_context --mllm outputs/story_sft/toy_story/default --detokenizer outputs/detokenizer/toy/default
   [--lengths 25 50] [--modes dense_refill dense window sink multimodal_sink] [--sink-images all 3] [--stories 2]
   [--steps 25] [--split val|test] [--protocol configs/eval/toy.yaml] [--plot beats.svg]`

For each length L a toy split (--split: val for choices, test once) of L-beat stories
(src/data/toy_long.py, kept whole) is made in a temporary folder; each context mode then draws it in vis
mode (the ground-truth captions, src.generate_story's pipeline): beat 0 given, beats 1..L-1 written by
the MLLM and drawn by the de-tokenizer. The multimodal sink gives one row per --sink-images value (how
many evicted images keep their head and tail; all: every one, as released). `dense_refill` is the
release's dense context, a reference for timings: the same attention as `dense`, but the whole story so
far is fed again before every beat (src/pipelines/seed_story.py). Per mode: the MLLM's seconds per beat
(LLM only; the de-tokenizer's time is reported apart: it does not depend on the mode), over the story
and over its last 10 beats (each beat's median over the stories; --plot draws that median against the
beat for the longest length), the peak KV cache (tokens and MiB), the peak memory of the whole process
(bench/common.py: CUDA allocation, or the CPU's resident set), and with --protocol the toy classifier's
Char-Acc, BG-Acc and Frechet distance against the ground truth (eval.run's evaluate with metrics fid and
classifier).

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
from src.generate_story import sink_images_arg
from src.models.story_cache import SinkSettings


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
                        help="an SVG of the LLM's seconds per beat against the beat, for the longest length")
    parser.add_argument("--stories", type=int, default=2, help="stories per length")
    parser.add_argument("--window-images", type=int, default=8)
    parser.add_argument("--sink-images", nargs="+", type=sink_images_arg, default=[SinkSettings.sink_images, None],
                        help="multimodal_sink rows: evicted images keeping their head and tail (all: as released); "
                             f"default: {SinkSettings.sink_images} and all")
    parser.add_argument("--split", choices=("val", "test"), default="test",
                        help="the temporary stories' split (toy generator seed 1): val for choices, test once")
    parser.add_argument("--steps", type=int, default=None, help="de-tokenizer sample.num_inference_steps")
    parser.add_argument("--protocol", default=None, help="an eval protocol with a trained classifier (toy.yaml)")
    parser.add_argument("--device", default=None)
    parser.add_argument("overrides", nargs="*", help="key=value protocol overrides (with --protocol)")
    args = parser.parse_args(argv)
    if args.overrides and not args.protocol:
        parser.error(f"protocol overrides {args.overrides} given without --protocol")
    protocol = scoring_protocol(args.protocol, args.overrides) if args.protocol else None

    from src.data.stories import read_split
    from src.data.toy import generate_toy_dataset
    from src.pipelines.seed_story import generate_seed_stories
    from src.pipelines.story_writer import DecodeSettings
    from src.runs import load_task

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    mllm = load_task(args.mllm)[0].to(device).eval()
    steps = [f"sample.num_inference_steps={args.steps}"] if args.steps else []
    detok = load_task(args.detokenizer, overrides=steps)[0].to(device).eval()
    pipe = detok.pipeline(**mllm.writer_parts())
    rows, curves = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for length in args.lengths:
            counts = {"num_val": args.stories if args.split == "val" else 0,
                      "num_test": args.stories if args.split == "test" else 0}
            root = generate_toy_dataset(Path(tmp) / f"toy{length}", seed=1, num_train=0, **counts,
                                        story_frames=length, chunk_frames=0, num_workers=1, progress=False)
            stories = read_split(root, args.split)[1]
            variants = [(mode, kept) for mode in args.modes
                        for kept in (args.sink_images if mode == "multimodal_sink" else [SinkSettings.sink_images])]
            for i, (mode, kept) in enumerate(variants):
                label = mode if mode != "multimodal_sink" else (
                    f"{mode}, all sink images (released)" if kept is None else f"{mode}, {kept} sink images")
                out = Path(tmp) / f"out{length}_{i}"
                reset_peak(device)
                start = time.perf_counter()
                generate_seed_stories(pipe, stories, root, out, "vis", length, mode,
                                      SinkSettings(window_images=args.window_images, sink_images=kept),
                                      DecodeSettings(temperature=0.0), {"bench": "story_context"})
                total = time.perf_counter() - start
                peak, kind = peak_memory_gib(device)
                info = json.loads((out / "generation.json").read_text())
                per = info["stories"]
                curve = beat_medians([story["beat_seconds"] for story in per])
                if length == max(args.lengths):
                    curves[label] = list(enumerate(curve))
                row = {"beats": length, "mode": label, "stories": len(per),
                       "LLM s/beat": f"{sum(s['seconds_per_beat'] for s in per) / len(per):.4f}",
                       "LLM s/beat, last 10": f"{sum(curve[-10:]) / len(curve[-10:]):.4f}",
                       "draw s/frame": f"{info['draw_seconds'] / sum(s['beats'] for s in per):.4f}",
                       "total s/beat": f"{total / sum(s['beats'] for s in per):.4f}",
                       "peak KV tokens": max(s["peak_cache_tokens"] for s in per),
                       "peak KV MiB": f"{max(s['peak_cache_bytes'] for s in per) / 2**20:.2f}",
                       f"peak mem GiB ({kind})": f"{peak:.2f}"}
                if protocol is not None:
                    row.update({k: f"{v:.3f}" for k, v in scores(out, root, protocol, args.split).items()})
                rows.append(row)
    judge = "" if protocol is None else (f"; scored by the classifier in {protocol['classifier']['dir']} (trained "
                                         f"on {protocol['classifier']['trained_on']})")
    print(f"{machine()}; mllm {args.mllm}; detokenizer {args.detokenizer}; window {args.window_images} images; "
          f"{args.stories} {args.split} stories per length (toy generator seed 1){judge}")
    print_table(rows, list(dict.fromkeys(k for r in rows for k in r)))
    if args.plot:
        from bench.svg_plot import line_plot

        line_plot(args.plot, curves, f"LLM seconds per beat, {max(args.lengths)}-beat stories (median of "
                  f"{args.stories}, vis mode)", "beat", "seconds (LLM only)")
        print(f"plot: {args.plot}")


def beat_medians(per_story: list[list[float]]) -> list[float]:
    """Each beat's median over the stories of its LLM seconds (beats 1.., as far as every story went)."""
    n = min(len(seconds) for seconds in per_story)
    return [statistics.median(seconds[b] for seconds in per_story) for b in range(1, n)]


if __name__ == "__main__":
    from src.errors import run_entry

    sys.exit(run_entry(main))
