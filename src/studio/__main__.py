"""Start the studio: python -m src.studio [--port P] (bash scripts/studio.sh, docs/studio.md).

Serves the page on http://127.0.0.1:P/ only (no share link; Gradio's analytics off), until Ctrl-C.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.errors import run_entry


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=7860, help="the local port (default 7860; 0: any free port)")
    parser.add_argument("--runs", type=Path, nargs="+", default=[Path("outputs"), Path("pretrained")],
                        help="folders whose run folders are listed (default: outputs pretrained)")
    parser.add_argument("--out", type=Path, default=Path("outputs/studio"),
                        help="where each drawn story is saved, one folder per story (default: outputs/studio)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: not a port number (0-65535)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from src.studio.app import build_app, launch
    from src.studio.drawing import PipelineCache, Studio

    studio = Studio(roots=list(args.runs), out=args.out, cache=PipelineCache(args.device))
    runs = studio.runs()
    print(f"studio: {len(runs)} runs under {', '.join(str(r) for r in args.runs)}; stories go to {args.out}", flush=True)
    try:
        launch(build_app(studio), studio, args.port, block=True)
    except OSError as err:  # the port is taken, or not ours to open
        raise ValueError(f"--port {args.port}: {err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(run_entry(main))
