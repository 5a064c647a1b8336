"""SEED-Story generation entry: a story_sft run (the MLLM) and a detokenizer run write and draw stories.

  python -m src.generate_story --mllm outputs/story_sft/toy_story/default \\
      --detokenizer outputs/detokenizer/toy/default --split test --out outputs/samples/seed_story \\
      [--mode story|vis] [--beats 25] [--context dense|window|sink|multimodal_sink] \\
      [--temperature 0.7] [--top-p 0.5] [--seed 0] [--num-stories N] [--data-root DIR]

--mllm / --detokenizer are run folders (their latest checkpoint), `checkpoints/step_N` folders or
`<run>/best`; each run's saved config.yaml rebuilds its task and its weights load strictly
(src/tasks/from_checkpoint.py). Stories come from the MLLM run's data.root (or --data-root): story mode
starts from each story's first frame and text and writes up to --beats beats; vis mode draws the frames
of each story's captions (up to --beats). --temperature 0 decodes greedily. Writes the generated-story
layout (docs/story_format.md, "Generated stories": stories.jsonl holds the generated text) and a
generation.json naming both checkpoints. A bad input is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.errors import run_entry
from src.models.story_cache import CONTEXT_MODES, SinkSettings
from src.pipelines.seed_story import GEN_MODES, DecodeSettings


def run_config(path: Path, task_name: str, flag: str):
    """(config file, config) of a run of `task_name`; another task's run is an error naming the file."""
    from src.config import load_config
    from src.tasks.from_checkpoint import run_folder_of

    config = run_folder_of(path) / "config.yaml"
    cfg = load_config(config)
    if cfg.task != task_name:
        raise ValueError(f"{config}: key 'task' is '{cfg.task}', {flag} needs a '{task_name}' run")
    return config, cfg


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mllm", required=True, type=Path, help="a story_sft run or checkpoint")
    parser.add_argument("--detokenizer", required=True, type=Path, help="a detokenizer run or checkpoint")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--data-root", type=Path, default=None, help="default: the MLLM run's data.root")
    parser.add_argument("--mode", choices=GEN_MODES, default="story")
    parser.add_argument("--beats", type=int, default=25, help="beats per story, the given first one included")
    parser.add_argument("--context", choices=CONTEXT_MODES, default="multimodal_sink")
    parser.add_argument("--window-images", type=int, default=SinkSettings.window_images)
    parser.add_argument("--first-tokens", type=int, default=SinkSettings.first_tokens)
    parser.add_argument("--temperature", type=float, default=DecodeSettings.temperature, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=DecodeSettings.top_p)
    parser.add_argument("--max-text-tokens", type=int, default=DecodeSettings.max_text_tokens)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-stories", type=int, default=None, help="only the first N stories")
    parser.add_argument("--weights", choices=("auto", "ema", "trained"), default="auto")
    parser.add_argument("--device", default=None, help="default: cuda when available")
    args = parser.parse_args(argv)
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")

    import torch

    from src.data.stories import read_split
    from src.pipelines.seed_story import generate_seed_stories
    from src.tasks.from_checkpoint import load_task_from_checkpoint

    # Every input is checked before a model is built: the two runs, the visual tokenizers, the stories.
    mconfig, mcfg = run_config(args.mllm, "story_sft", "--mllm")
    dconfig, dcfg = run_config(args.detokenizer, "detokenizer", "--detokenizer")
    for key in ("tokenizer", "tokenizer_path"):  # the regressed features must be the de-tokenizer's kind
        same = (Path(getattr(mcfg.model, key)).resolve() == Path(getattr(dcfg.model, key)).resolve()
                if key == "tokenizer_path" else getattr(mcfg.model, key) == getattr(dcfg.model, key))
        if not same:
            raise ValueError(f"key 'model.{key}': the MLLM run has '{getattr(mcfg.model, key)}', the de-tokenizer "
                             f"run '{getattr(dcfg.model, key)}'; both must use the same visual tokenizer")
    root = args.data_root or Path(mcfg.data.root)
    stories = read_split(root, args.split)[1][:args.num_stories or None]
    mllm, _, mfile = load_task_from_checkpoint(args.mllm, args.weights)
    detok, _, dfile = load_task_from_checkpoint(args.detokenizer, args.weights)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    mllm.to(device).eval()
    detok.to(device).eval()
    sink = SinkSettings(window_images=args.window_images, first_tokens=args.first_tokens)
    decode = DecodeSettings(temperature=args.temperature, top_p=args.top_p, max_text_tokens=args.max_text_tokens,
                            seed=args.seed)
    meta = {"mllm_checkpoint": str(mfile), "mllm_config": str(mconfig), "detokenizer_checkpoint": str(dfile),
            "detokenizer_config": str(dconfig), "dataset_root": str(root), "split": args.split}
    out = generate_seed_stories(mllm, detok, stories, root, args.out, args.mode, args.beats, args.context, sink,
                                decode, meta)
    print(f"samples: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry(main))
