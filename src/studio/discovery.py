"""Which runs the studio offers: every run folder under the roots it watches (outputs/ and pretrained/ by
default), read from what the runs already write (src/runs.py's layout: config.yaml, checkpoints/step_N,
best/, summary.json; a converter's trainer_state.json names `converted_from`).

A run is a folder holding a config.yaml with a `task` and at least one complete checkpoint or a best/.
The listing reads YAML and JSON only (no torch): the page refreshes it on every load. Each run gets a
label for the drop-downs, "char_ldm · toy/demo · 900 steps", and the tabs filter runs by task:
StoryGPT-V draws with char_ldm and align runs, SEED-Story with story_sft and story_adapt runs (a
detokenizer or story_adapt run may replace the de-tokenizer).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from src.runs import list_checkpoints

STORYGPTV = ("char_ldm", "align")
SEED_STORY = ("story_sft", "story_adapt")
DETOKENIZERS = ("detokenizer", "story_adapt")
# Folders inside a run that hold no run of their own: not walked into.
INSIDE_RUN = {"checkpoints", "best", "samples", "logs", "eval"}


@dataclass
class RunInfo:
    """One run folder as the studio lists it."""
    path: Path                    # as found (relative to the working folder when under it)
    task: str
    dataset: str
    run_name: str
    steps: Optional[int]          # the latest complete checkpoint's step (None: only best/)
    finished: bool                # summary.json written (the engine writes it when training ends)
    converted_from: Optional[str] = None   # a converted release: the file it came from
    config: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        steps = "best/ only" if self.steps is None else f"{self.steps} steps"
        if self.converted_from:
            state = "converted release"
        else:
            state = steps if self.finished else f"{steps}, training or stopped"
        return f"{self.task} · {self.dataset}/{self.run_name} · {state} ({self.path})"

    @property
    def value(self) -> str:
        return str(self.path)

    def sample(self, key: str, default=None):
        """A value of the run's `sample:` section (its drawing settings)."""
        return (self.config.get("sample") or {}).get(key, default)


def _display_path(path: Path) -> Path:
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path.resolve()


def read_run_info(folder: Path) -> Optional[RunInfo]:
    """The run in `folder`, or None when it is no run (no config.yaml with a task, or nothing to load)."""
    config_path = folder / "config.yaml"
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    if not isinstance(config, dict) or not isinstance(config.get("task"), str):
        return None
    checkpoints = list_checkpoints(folder / "checkpoints")
    has_best = (folder / "best" / "best.json").is_file()
    if not checkpoints and not has_best:
        return None
    steps = int(checkpoints[-1].name.split("_")[1]) if checkpoints else None
    converted = None
    if checkpoints:
        try:
            state = json.loads((checkpoints[-1] / "trainer_state.json").read_text(encoding="utf-8"))
            converted = state.get("converted_from")
        except (OSError, json.JSONDecodeError):
            pass
    data = config.get("data") or {}
    return RunInfo(path=_display_path(folder), task=config["task"], dataset=str(data.get("name", "?")),
                   run_name=str(config.get("run_name", folder.name)), steps=steps,
                   finished=(folder / "summary.json").is_file(), converted_from=converted, config=config)


def find_runs(roots) -> list[RunInfo]:
    """Every run under `roots` (folders; a missing one is skipped: a fresh clone has no outputs/), the
    most recently written first."""
    found = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for current, folders, files in os.walk(root, followlinks=False):
            here = Path(current)
            if "config.yaml" in files:
                info = read_run_info(here)
                if info is not None:
                    found.append((here.stat().st_mtime, info))
                    folders[:] = [f for f in folders if f not in INSIDE_RUN]
            folders[:] = [f for f in folders if not f.startswith(".")]
    found.sort(key=lambda item: (-item[0], str(item[1].path)))
    return [info for _, info in found]


def runs_of(runs: list[RunInfo], tasks: tuple[str, ...]) -> list[RunInfo]:
    return [run for run in runs if run.task in tasks]


def choices(runs: list[RunInfo]) -> list[tuple[str, str]]:
    """(label, value) pairs for a drop-down."""
    return [(run.label, run.value) for run in runs]


def info_for(runs: list[RunInfo], value: Optional[str]) -> Optional[RunInfo]:
    """The listed run a drop-down value (a path) names; a path typed by hand is read from disk."""
    if not value:
        return None
    for run in runs:
        if run.value == value:
            return run
    path = Path(value)
    if (path / "config.yaml").is_file():
        return read_run_info(path)
    return None


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def reports_of(run: RunInfo, roots) -> list[Path]:
    """The evaluation reports that belong to `run`: report.html files under the run folder (eval.sh writes
    RUN/eval/report.html, or into a checkpoint's eval/ folder), and any report.html under `roots` whose
    metrics.json names a path inside the run among its training runs (eval.run --run) or in the generation
    record of the frames it scored (their checkpoints): the demos' outputs/demo/report.html and
    outputs/demo_seed_story/report.html."""
    folder = Path(run.path).resolve()
    found = sorted(folder.rglob("report.html"))
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for metrics in sorted(root.rglob("metrics.json")):
            report = (metrics.parent / "report.html").resolve()
            if not report.is_file() or report in found:
                continue
            try:
                record = json.loads(metrics.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                continue
            if not isinstance(record, dict):
                continue
            named = _strings([record.get("training"), record.get("generation")])
            if any(_inside(text, folder) for text in named):
                found.append(report)
    return found


def _inside(text: str, folder: Path) -> bool:
    if "/" not in text or len(text) > 4096:
        return False
    path = Path(text).resolve()
    return path == folder or folder in path.parents
