"""How every command-line entry reports a bad input: one line on stderr, exit status 2.

Every entry (`src.train`, `src.generate`, `src.generate_story`, `eval.run`, `src.data.prepare`, the tools
under `src.tools`, ...; docs/architecture.md, "Errors") ends with `sys.exit(run_entry(main))`. `main(argv)` raises; this
wrapper decides what the user sees:

- the project's own errors (below) become `error: <message>` on one line, exit status 2. Their messages
  already name the file, line or key at fault (`train.jsonl:3: field 'captions': ...`);
- `--debug` anywhere on the command line (or STORYVIZ_DEBUG=1, e.g. under `accelerate launch`) lets the
  exception through with its full traceback;
- anything else (a genuine bug) is never caught here and ends in a traceback.

Which errors count as ours: `StoryVizError` and the error classes built on ValueError (ConfigError,
StoryFormatError, EvalInputError, ...), plus the file errors our code raises for missing or existing
paths (FileNotFoundError, FileExistsError, NotADirectoryError) and KeyError (an unknown name, e.g. a
task). One of them raised inside a DataLoader worker (`data.num_workers` > 0: a frame that cannot be
read) reaches the main process as torch re-raises it: its whole traceback as the message, and a
RuntimeError when its type cannot be rebuilt from one string (StoryFormatError); it is reported as the
same one line. Progress bars still on screen (the engine's, a cache's) are cleared first, so the error
is the one line left. `main` called from Python (tests, notebooks) raises as usual.
"""
from __future__ import annotations

import os
import re
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


WORKER_ERROR = re.compile(r"Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


def worker_error(err: BaseException) -> Optional[str]:
    """The message of a project error raised in a DataLoader worker (torch.utils.data re-raises it as
    `type(err)(traceback text)` or, failing that, a RuntimeError of that text: ExceptionWrapper.reraise):
    the traceback's last line without the class name. None when `err` is not such an error."""
    text = str(err.args[0]) if err.args else ""
    caught = WORKER_ERROR.match(text)
    if caught is None:
        return None
    qualname, found, message = text.rstrip().splitlines()[-1].partition(": ")
    module, _, name = qualname.rpartition(".")
    kind = getattr(sys.modules.get(module or "builtins"), name, None)
    if not found or name != caught.group(1) or not (isinstance(kind, type) and issubclass(kind, USER_ERRORS)):
        return None  # not ours, or a message over several lines: the traceback stays
    return message


def clear_progress_bars() -> None:
    """Close every open tqdm bar without leaving it on screen. Left open, a bar shares its line with the
    error message and is drawn once more below it when the traceback holding it is freed."""
    tqdm = sys.modules.get("tqdm")
    if tqdm is None:
        return
    for bar in list(getattr(tqdm.tqdm, "_instances", ())):  # tqdm's own registry of live bars (tqdm.write)
        bar.leave = False
        bar.close()


def run_entry(main: Callable[[list[str]], Optional[int]], argv: Optional[Sequence[str]] = None) -> int:
    """Run `main(argv)` (default: sys.argv[1:], without --debug) and turn a project error into one line
    on stderr and exit status 2. Returns main's status (None counts as 0)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get("STORYVIZ_DEBUG", "") not in ("", "0")
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    try:
        status = main(argv)
    except (*USER_ERRORS, RuntimeError) as err:
        message = worker_error(err)
        if debug or (message is None and not isinstance(err, USER_ERRORS)):
            raise
        clear_progress_bars()
        print(f"error: {message or one_line(err)}  (--debug shows the traceback)", file=sys.stderr, flush=True)
        return 2
    return 0 if status is None else int(status)
