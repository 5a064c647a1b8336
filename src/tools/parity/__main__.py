"""`python -m src.tools.parity --storygpt-v CLONE --seed-story CLONE --seed-x CLONE [--only SYSTEM ...]
[--write-golden tests/assets/parity]`: compare our modules, fed the releases' weights through our
converters, with the original code (docs/fidelity.md). Prints one table; exit status 1 when a component
differs beyond its tolerance without a documented deliberate reason."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.errors import run_entry

SYSTEMS = ("storygpt_v", "seed_story")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storygpt-v", type=Path, help="a clone of github.com/xiaoqian-shen/StoryGPT-V")
    parser.add_argument("--seed-story", type=Path, help="a clone of github.com/TencentARC/SEED-Story")
    parser.add_argument("--seed-x", type=Path, help="a clone of github.com/AILab-CVC/SEED-X")
    parser.add_argument("--only", nargs="+", choices=SYSTEMS, default=None)
    parser.add_argument("--write-golden", type=Path, default=None,
                        help="also write the golden files the CI tests read (tests/assets/parity)")
    args = parser.parse_args(argv)
    systems = args.only or [s for s, given in (("storygpt_v", args.storygpt_v),
                                               ("seed_story", args.seed_story)) if given]
    if not systems:
        raise ValueError("give --storygpt-v and/or --seed-story (with --seed-x): the clones to compare against")

    from src.tools.parity.common import format_table

    rows = []
    if "storygpt_v" in systems:
        if args.storygpt_v is None:
            raise ValueError("--storygpt-v: required for the storygpt_v checks")
        from src.tools.parity import storygptv
        rows += storygptv.checks(args.storygpt_v, args.write_golden)
    if "seed_story" in systems:
        if args.seed_story is None or args.seed_x is None:
            raise ValueError("--seed-story and --seed-x: both required for the seed_story checks")
        from src.tools.parity import seed_story
        rows += seed_story.checks(args.seed_story, args.seed_x, args.write_golden)
    print(format_table(rows))
    failed = [r.component for r in rows if not r.passed]
    if failed:
        print(f"{len(failed)} of {len(rows)} components differ: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"all {len(rows)} components match (or differ only where documented)")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry(main))
