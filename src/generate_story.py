"""SEED-Story generation entry: a story_sft run (the MLLM) and a detokenizer run write and draw stories.

  python -m src.generate_story --mllm outputs/story_sft/toy_story/default \\
      --detokenizer outputs/detokenizer/toy/default --split test --out outputs/samples/seed_story \\
      [--mode story|vis] [--beats 25] [--context dense|window|sink|multimodal_sink] \\
      [--temperature 0.7] [--top-p 0.5] [--decode-policy constrained|released] [--seed 0] [--num-stories N]
      [--data-root DIR]

--mllm / --detokenizer are run folders (their latest checkpoint), `checkpoints/step_N` folders or
`<run>/best`; each run's saved config.yaml rebuilds its task and its weights load strictly
(src/runs.py). --mllm is a story_sft run. --detokenizer is a detokenizer run (stage 1)
or a story_adapt run (stage 3: the de-tokenizer adapted to an MLLM's features); without it, the MLLM
run's `model.detokenizer_run` draws. Given a story_adapt run, --mllm may be left out: the MLLM is then
the SFT run it was adapted to (its model.sft_run). Stories come from the MLLM run's data.root (or --data-root): story mode
starts from each story's first frame and text and writes up to --beats beats; vis mode draws the frames
of each story's captions (up to --beats). --temperature 0 decodes greedily; --decode-policy released
decodes a beat as the release does (greedy over the whole vocabulary, its image-token logits processor;
docs/fidelity.md). Writes the generated-story
layout (docs/story_format.md, "Generated stories": stories.jsonl holds the generated text) and a
generation.json naming both checkpoints. A bad input is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.errors import run_entry
from src.models.story_cache import CONTEXT_MODES, SinkSettings
from src.pipelines.seed_story import GEN_MODES
from src.pipelines.story_writer import DECODE_POLICIES, DecodeSettings
from src.runs import resolve_seed_story_runs as resolve_runs  # noqa: F401 (the name tests and tools import)


def sink_images_arg(value: str):
    """--sink-images: 'all' (None) or an integer >= 0."""
    if value == "all":
        return None
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"not 'all' or an integer >= 0: {value!r}")
    return int(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mllm", type=Path, default=None,
                        help="a story_sft run or checkpoint (default: a story_adapt --detokenizer's model.sft_run)")
    parser.add_argument("--detokenizer", type=Path, default=None,
                        help="a detokenizer or story_adapt run or checkpoint (default: the MLLM run's model.detokenizer_run)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--data-root", type=Path, default=None, help="default: the MLLM run's data.root")
    parser.add_argument("--mode", choices=GEN_MODES, default="story")
    parser.add_argument("--beats", type=int, default=25, help="beats per story, the given first one included")
    parser.add_argument("--context", choices=CONTEXT_MODES, default="multimodal_sink")
    parser.add_argument("--window-images", type=int, default=SinkSettings.window_images)
    parser.add_argument("--first-tokens", type=int, default=SinkSettings.first_tokens)
    parser.add_argument("--sink-images", type=sink_images_arg, default=SinkSettings.sink_images,
                        help="multimodal_sink: evicted images whose head and tail stay, the most recent; "
                             f"all: every one, as released (default {SinkSettings.sink_images})")
    parser.add_argument("--temperature", type=float, default=DecodeSettings.temperature, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=DecodeSettings.top_p)
    parser.add_argument("--max-text-tokens", type=int, default=DecodeSettings.max_text_tokens)
    parser.add_argument("--decode-policy", choices=DECODE_POLICIES, default=DecodeSettings.policy,
                        help="constrained (ours) or released (the release's greedy decoding; ignores "
                             "--temperature and --top-p, as the release does)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-stories", type=int, default=None, help="only the first N stories")
    parser.add_argument("--weights", choices=("auto", "ema", "trained"), default="auto")
    parser.add_argument("--device", default=None, help="default: cuda when available")
    args = parser.parse_args(argv)
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")

    from src import runs
    from src.assets import ensure_assets
    from src.data.stories import read_split
    from src.pipelines.seed_story import SeedStoryPipeline, generate_seed_stories

    # Every input is checked before a model is built: the runs, the visual tokenizers, the stories.
    mllm_run, mcfg, detok_run, dcfg, tokenizer_cfg = runs.resolve_seed_story_runs(args.mllm, args.detokenizer)
    runs.check_same_tokenizer(mcfg, tokenizer_cfg, f"the MLLM run ({mllm_run})", f"the de-tokenizer run ({detok_run})")
    root = args.data_root or Path(mcfg.data.root)
    stories = read_split(root, args.split)[1][:args.num_stories or None]
    ensure_assets(mcfg)
    ensure_assets(dcfg)
    pipe = SeedStoryPipeline.from_runs(mllm_run, detok_run, args.weights, args.device)
    for note in pipe.notes:
        print(f"note: {note}", file=sys.stderr)
    sink = SinkSettings(window_images=args.window_images, first_tokens=args.first_tokens,
                        sink_images=args.sink_images)
    decode = DecodeSettings(temperature=args.temperature, top_p=args.top_p, max_text_tokens=args.max_text_tokens,
                            seed=args.seed, policy=args.decode_policy)
    meta = {**pipe.provenance, "dataset_root": str(root), "split": args.split}
    out = generate_seed_stories(pipe, stories, root, args.out, args.mode, args.beats, args.context, sink, decode, meta,
                                progress=True)
    print(f"samples: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry(main))
