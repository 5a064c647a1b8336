"""How every command-line entry reports a bad input: one line on stderr, exit status 2.

Each entry (`src.train`, `src.generate`, `eval.run`, `src.data.prepare`, `src.data.check`,
`src.tools.convert_storygptv_ldm`) ends with `sys.exit(run_entry(main))`. `main(argv)` raises; this
wrapper decides what the user sees:

- the project's own errors (below) become `error: <message>` on one line, exit status 2. Their messages
  already name the file, line or key at fault (`train.jsonl:3: field 'captions': ...`);
- `--debug` anywhere on the command line (or STORYVIZ_DEBUG=1, e.g. under `accelerate launch`) lets the
  exception through with its full traceback;
- anything else (a genuine bug) is never caught here and ends in a traceback.

Which errors count as ours: `StoryVizError` and the error classes built on ValueError (ConfigError,
StoryFormatError, EvalInputError, ...), plus the file errors our code raises for missing or existing
paths (FileNotFoundError, FileExistsError, NotADirectoryError) and KeyError (an unknown name, e.g. a
task). `main` called from Python (tests, notebooks) raises as usual.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Optional, Sequence

DEBUG_FLAG = "--debug"


class StoryVizError(Exception):
    """Base for project errors that are not ValueErrors (e.g. a conversion that cannot go on)."""


USER_ERRORS = (StoryVizError, ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError)


def one_line(err: BaseException) -> str:
    """The error's message on one line (a KeyError's message without the quotes str() adds)."""
    message = err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 else str(err)
    message = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    return message or type(err).__name__


def run_entry(main: Callable[[list[str]], Optional[int]], argv: Optional[Sequence[str]] = None) -> int:
    """Run `main(argv)` (default: sys.argv[1:], without --debug) and turn a project error into one line
    on stderr and exit status 2. Returns main's status (None counts as 0)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get("STORYVIZ_DEBUG", "") not in ("", "0")
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    try:
        status = main(argv)
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"error: {one_line(err)}  (--debug shows the traceback)", file=sys.stderr, flush=True)
        return 2
    return 0 if status is None else int(status)
