"""Stage-2 story generation against story length: seconds and peak memory per frame (StoryGPT-V Table 5
and Figure 6 in miniature).

`python -m bench.stage2_long --align outputs/align/toy/default [--lengths 4 10 20 40 50] [--stories 1]`

For each length a toy test split of that many frames per story is generated (src.data.toy) into a
temporary folder and drawn with the align run's LLM and its Char-LDM (src/pipelines/storygptv.py).
The LLM context is a window, not a KV cache: each frame's prompt is rebuilt from the earlier
(generated) frames and captions, and the earliest frames are dropped while it is longer than
`model.max_length` tokens, so time and memory per frame level off once the window is full.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.common import machine, peak_memory_gib, print_table, reset_peak


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--align", required=True, help="an align run folder or checkpoint")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4, 10, 20, 40, 50])
    parser.add_argument("--stories", type=int, default=1, help="stories per length")
    parser.add_argument("--steps", type=int, default=None, help="sample.num_inference_steps (default: the run's)")
    parser.add_argument("--device", default=None)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the align run's config")
    args = parser.parse_args(argv)

    from src.data.toy import generate_toy_dataset
    from src.runs import load_task

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for frames in args.lengths:
            root = generate_toy_dataset(Path(tmp) / f"toy{frames}", num_train=0, num_val=0, num_test=args.stories,
                                        frames_per_story=frames, num_workers=1, progress=False)
            overrides = [*args.overrides, f"data.root={root}", f"data.frames_per_story={frames}"]
            if args.steps:
                overrides.append(f"sample.num_inference_steps={args.steps}")
            align = load_task(args.align, overrides=overrides)[0].to(device).eval()
            align.stage1()
            reset_peak(device)
            start = time.perf_counter()
            align.sample(Path(tmp) / f"out{frames}", "test")
            seconds = time.perf_counter() - start
            peak, kind = peak_memory_gib(device)
            rows.append({"frames": frames, "stories": args.stories,
                         "s/frame": f"{seconds / (frames * args.stories):.3f}",
                         f"peak mem GiB ({kind})": f"{peak:.2f}",
                         "prompt window (tokens)": align.cfg.model.max_length})
    print(f"{machine()}; align run {args.align}")
    print_table(rows, list(rows[0]))


if __name__ == "__main__":
    main()
