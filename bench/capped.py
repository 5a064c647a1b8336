"""Run a Python module or script with PyTorch's CUDA allocator capped at N GiB (emulates a smaller card,
e.g. 22 GiB for a 24 GB one), and print its peak GPU memory when it exits.

    python -m bench.capped --gib 22 -m src.train --config configs/char_ldm/toy.yaml ...
    python -m bench.capped --gib 22 /path/to/train_text_to_image.py --flag ...

The cap is set before the program runs (torch.cuda.set_per_process_memory_fraction), so diffusers' own
script runs unmodified under it. Without a GPU it only runs the program (and prints no peak).
"""
from __future__ import annotations

import atexit
import runpy
import sys

PEAK_LINE = "capped: peak GPU memory"


def _report() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        print(f"{PEAK_LINE} allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, "
              f"reserved {torch.cuda.max_memory_reserved() / 2**30:.2f} GiB", flush=True)


def main() -> None:
    argv = sys.argv[1:]
    if len(argv) < 3 or argv[0] != "--gib":
        sys.exit("usage: python -m bench.capped --gib N (-m MODULE | SCRIPT) [args ...]")
    gib = float(argv[1])
    import torch

    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total))
    atexit.register(_report)
    if argv[2] == "-m":
        if len(argv) < 4:
            sys.exit("bench.capped: -m needs a module name")
        sys.argv = [argv[3], *argv[4:]]
        runpy.run_module(argv[3], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv[2:]
        runpy.run_path(argv[2], run_name="__main__")


if __name__ == "__main__":
    main()
