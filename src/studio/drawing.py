"""What both drawing tabs share: the one pipeline kept between requests, a story drawn in a worker thread
whose frames come back as they are done, the folder each drawn story is saved in, and the page's
message for an error.

The pipeline is built the way `bash scripts/story.sh` builds it (src/story.py: the runs' task picks the
system, their assets are made sure of, the memory tier of src/memory.py is applied) and kept until a
request needs another (other runs, device, precision or offload), so a second story with the same run
starts drawing at once. One story draws at a time (a lock; the page also queues the two tabs' draw
events in one line).

Streaming: src/story.py's `draw_request` calls `on_frame(k, image, record)` as each frame is done
(StoryGPT-V stage 2 draws frames in order; SEED-Story yields beat by beat). It runs in a worker thread and
hands each frame over a queue to the tab's generator, which yields it to the page. When the page stops
listening (Stop, a closed tab) the generator closes and the worker ends at its next frame.
"""
from __future__ import annotations

import html
import queue
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import yaml

OFFLOAD_TIERS = ("none", "model", "sequential")
# src/story.py's flags, as the page names its fields in messages
FIELDS = {"--run": "Run", "--stage2": "Stage 2", "--detokenizer": "De-tokenizer", "--mllm": "the MLLM run"}
PRECISIONS = ("fp32", "bf16", "fp16", "auto")


class Cancelled(Exception):
    """The page stopped listening: the worker stops at its next frame."""


@dataclass
class FrameEvent:
    index: int
    image: object        # PIL image
    record: dict         # the frame's record (caption or text, fused names, ...)


class PipelineCache:
    """One built pipeline, rebuilt only when a request needs another. `lock` is held while it is built or
    draws."""

    def __init__(self, device: Optional[str] = None):
        self.device = device
        self.key, self.pipe, self.memory = None, None, {}
        self.lock = threading.Lock()

    def get(self, system: dict, args, offload: str, precision: str):
        """The pipeline for `system` (src/story.resolve_system) under this memory tier. Call with `lock` held."""
        import torch

        from src import runs
        from src.assets import ensure_assets
        from src.memory import apply_memory_tier, parse_dtype
        from src.story import build_pipeline

        if offload not in OFFLOAD_TIERS:
            raise ValueError(f"offload '{offload}': not one of {', '.join(OFFLOAD_TIERS)}")
        device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        named = [system.get(k) for k in ("run", "stage2", "mllm", "detokenizer")]
        checkpoints = tuple(str(runs.resolve_run_checkpoint(path)[1]) if path else None for path in named)
        key = (system["system"], checkpoints, str(device), offload, precision, args.weights)
        if key == self.key:
            return self.pipe
        self.drop()
        for cfg in system["configs"]:
            ensure_assets(cfg)
        dtype = parse_dtype(precision, device)
        pipe = build_pipeline(system, args, "cpu" if offload != "none" else device, dtype, dtype)
        tier = apply_memory_tier(pipe, offload, device)
        self.memory = {"device": str(device), "offload": offload, "dtype": str(dtype).replace("torch.", ""),
                       "hooked_modules": len(tier.hooked)}
        self.key, self.pipe = key, pipe
        return pipe

    def drop(self) -> None:
        """Forget the pipeline and free its memory (a new one is built, or an out-of-memory happened)."""
        import gc

        import torch

        self.pipe, self.key, self.memory = None, None, {}
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class FrameStream:
    """Runs `work(on_frame)` in a worker thread holding `lock`. Iterating yields a FrameEvent for each frame
    the work reports; afterwards `result` holds what it returned. Its exception is raised in the iterating
    thread. Closing the iteration early (the page stopped listening) stops the worker at its next frame."""

    def __init__(self, work: Callable[[Callable], object], lock: threading.Lock):
        self.work, self.lock, self.result = work, lock, None

    def __iter__(self) -> Iterator[FrameEvent]:
        events: queue.Queue = queue.Queue()
        stop = threading.Event()

        def on_frame(index, image, record):
            if stop.is_set():
                raise Cancelled()
            events.put(("frame", FrameEvent(index, image, dict(record))))

        def run():
            try:
                with self.lock:
                    events.put(("done", self.work(on_frame)))
            except BaseException as err:  # handed to the iterating thread, which raises it there
                events.put(("error", err))

        threading.Thread(target=run, daemon=True, name="studio-draw").start()
        try:
            while True:
                kind, payload = events.get()
                if kind == "frame":
                    yield payload
                elif kind == "error":
                    raise payload
                else:
                    self.result = payload
                    return
        finally:
            stop.set()


@dataclass
class Studio:
    """What the handlers share: the folders runs are listed from, where drawn stories go, the pipeline."""
    roots: list
    out: Path
    cache: PipelineCache

    def runs(self):
        from src.studio.discovery import find_runs

        return find_runs(self.roots)

    def refuse(self, err: BaseException, folder: Optional[Path] = None):
        """The page's error for a failed request; its story folder (if made) removed. After an
        out-of-memory the pipeline is released, so the next request starts clean."""
        import torch

        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        if isinstance(err, torch.OutOfMemoryError):
            err.__traceback__ = None  # its frames hold the pipeline's tensors
            self.cache.drop()
        return page_error(err)

    def draw(self, folder: Path, request, work: Callable, render: Callable, status: Callable) -> Iterator:
        """The page's side of a draw: runs `work(on_frame)` (src/story.py's draw_request) in the worker and
        yields `render(frames so far, status line, download files)` before it starts, as each frame arrives
        and at the end, when the story folder is written. `status(frames, record)` words the status line
        (`record`: the story's record, at the end; None while drawing)."""
        yield render([], status([], None), None)
        frames: list[FrameEvent] = []
        stream = FrameStream(work, self.cache.lock)
        try:
            for event in stream:
                frames.append(event)
                yield render(frames, status(frames, None), None)
            images, record = stream.result
            files = finish_record(folder, images, record, request, self.cache.memory)
        except Exception as err:
            raise self.refuse(err, folder) from err
        yield render(frames, status(frames, record), files)


# ---- the story folder ---------------------------------------------------------------------------------
def new_story_folder(out_root) -> Path:
    """OUT/<YYYYMMDD_HHMMSS>_<n>: a fresh folder for one drawn story."""
    out_root = Path(out_root)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    for n in range(1000):
        folder = out_root / f"{stamp}_{n:02d}"
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"{out_root}: no free story folder for {stamp}")


def copy_upload(upload, folder: Path, stem: str) -> str:
    """An uploaded file copied into the story folder's refs/ (the story folder keeps what it was drawn
    from); its path relative to the folder, as the story file names it."""
    source = Path(upload)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: the uploaded file is gone (upload it again)")
    refs = folder / "refs"
    refs.mkdir(exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "image"
    target = refs / f"{safe}{source.suffix.lower()}"
    shutil.copyfile(source, target)
    return f"refs/{target.name}"


def write_story_yaml(folder: Path, story: dict) -> Path:
    """The request as a story file (docs/story_format.md), read back by src/data/story_file.py: the same
    checks as `bash scripts/story.sh`, and a file that command can draw again."""
    path = folder / "story.yaml"
    path.write_text(yaml.safe_dump(story, sort_keys=False, allow_unicode=True, width=100), encoding="utf-8")
    return path


def finish_record(folder: Path, images: list, record: dict, request, memory: dict) -> list[str]:
    """Write the frames, strip.png, index.html and story.json (src/data/story_output.py, as story.sh does);
    the files the page offers for download."""
    from src.data.story_file import story_to_dict
    from src.data.story_output import write_story_folder

    record.update({"story_file": str((folder / "story.yaml").resolve()), "story": story_to_dict(request, folder),
                   "memory": memory})
    write_story_folder(folder, images, record)
    return [str(folder / "strip.png"), str(folder / "story.json")]


# ---- errors -------------------------------------------------------------------------------------------
def _where(key: Optional[str]) -> str:
    """A story file key in the page's words."""
    if key is None:
        return "the story"
    if match := re.fullmatch(r"characters\.(.+)\.image", key):
        return f"character '{match.group(1)}', its reference image"
    if match := re.fullmatch(r"characters\.(.+)", key):
        return f"character '{match.group(1)}'"
    if match := re.fullmatch(r"frames\[(\d+)\]", key):
        return f"caption {int(match.group(1)) + 1}"
    return {"frames": "the story's captions", "opening.image": "the opening image",
            "opening.text": "the opening text", "opening": "the opening", "beats": "beats"}.get(key, f"'{key}'")


def message_of(err: BaseException) -> str:
    """The one line the page shows for an error (plain text)."""
    import torch

    from src.data.story_file import StoryFileError
    from src.errors import USER_ERRORS, one_line

    if isinstance(err, StoryFileError):
        return f"{_where(err.key)}: {err.reason}"
    if isinstance(err, torch.OutOfMemoryError):
        return ("out of memory while drawing: choose the memory tier 'model' or 'sequential' offload, bf16 or "
                "fp16, or fewer steps, and draw again (the pipeline was released)")
    if isinstance(err, USER_ERRORS):
        return re.sub(r"--(run|stage2|detokenizer|mllm)\b", lambda m: FIELDS[m.group(0)], one_line(err))
    return f"unexpected error ({type(err).__name__}: {one_line(err)}); the traceback is in the studio's log"


def page_error(err: BaseException):
    """A gradio Error for the page (its message is HTML: escaped). User errors print no traceback."""
    import gradio as gr
    import torch

    from src.errors import USER_ERRORS

    expected = isinstance(err, (*USER_ERRORS, torch.OutOfMemoryError))
    message = message_of(err)
    print(f"studio: {message}", flush=True)
    return gr.Error(html.escape(message, quote=False), duration=None, print_exception=not expected)
