"""The runs tab's handlers: a run's summary, loss curves, latest periodic samples and reports, read from
the files runs already write (config.yaml, checkpoints/, best/best.json, summary.json, metrics.jsonl,
samples/step_N/grid.png; eval.sh's and the demos' report.html, found by src/studio/discovery.py).

A finished run is described as the evaluation report describes it (eval/training_run.py); a run still
training (no summary.json yet) gets its curves from the metrics.jsonl lines written so far.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

from src.studio.discovery import RunInfo, choices, info_for, reports_of
from src.studio.drawing import Studio, page_error

REPORT_HEIGHT = 720


def run_choices(studio: Studio):
    return choices(studio.runs())


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl's rows; a run still training may be writing its last line: a line that does not parse
    is left out only when it is the last one."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else []
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number < len(lines):
                raise ValueError(f"{path}:{number}: invalid JSON: {err.msg}") from None
    return rows


def training_record(info: RunInfo) -> dict:
    """eval/training_run.py's run record: read_run's for a finished run; config and metrics so far else."""
    from eval.training_run import read_run

    folder = Path(info.path)
    if info.finished:
        return read_run(folder)
    return {"dir": folder, "config": info.config, "summary": None, "metrics": read_metrics(folder / "metrics.jsonl")}


def summary_markdown(info: RunInfo, record: dict) -> str:
    from eval.training_run import describe

    config = info.config
    train, optim = config.get("train") or {}, config.get("optim") or {}
    lines = [f"### {info.task} · {info.dataset}/{info.run_name}", f"- folder: `{info.path}`"]
    if info.converted_from:
        lines.append(f"- a converted release, from `{info.converted_from}`")
    elif info.finished:
        lines.append(f"- {describe(record)}.")
    else:
        lines.append(f"- no summary.json: still training, or stopped before the end; {len(record['metrics'])} "
                     f"logged steps, checkpoints up to step {info.steps} of train.max_steps {train.get('max_steps')}")
    checkpoints = sorted(p.name for p in (Path(info.path) / "checkpoints").glob("step_*"))
    if checkpoints:
        lines.append(f"- checkpoints: {', '.join(checkpoints)} (drawing uses the latest)")
    best = Path(info.path) / "best" / "best.json"
    if best.is_file():
        lines.append(f"- best/: `{best.read_text(encoding='utf-8').strip()}`")
    if record.get("summary"):
        lines.append(f"- summary.json: `{json.dumps(record['summary'])}`")
    if optim or train:
        lines.append(f"- recipe: lr {optim.get('lr')} {optim.get('schedule', '')}, batch {train.get('batch_size')}, "
                     f"mixed precision {train.get('mixed_precision')}")
    return "\n".join(lines)


def latest_samples(info: RunInfo):
    """The grid of the run's latest periodic samples (samples/step_N/grid.png), or None."""
    grids = sorted((Path(info.path) / "samples").glob("step_*/grid.png"))
    return str(grids[-1]) if grids else None


def show_run(studio: Studio, run: str):
    """(summary, loss chart, latest samples grid, the run's reports as choices, the first report)."""
    from eval.training_run import loss_chart

    info = info_for(studio.runs(), run)
    if info is None:
        message = "No run chosen." if not run else f"`{run}`: not a run folder (no config.yaml with a checkpoint)"
        return message, None, None, [], None
    try:
        record = training_record(info)
        chart = loss_chart(record) if record["metrics"] else None
        reports = [str(path) for path in reports_of(info, studio.roots)]
        return summary_markdown(info, record), chart, latest_samples(info), reports, reports[0] if reports else None
    except Exception as err:
        raise page_error(err) from err


def show_report(report: str):
    """(the report inline, the file to download). Reports embed their frames and plots (eval/report.py),
    so the page shows the file as it is, in a frame of its own."""
    if not report:
        return "<p>No report for this run: <code>bash eval.sh</code> writes one (the demos do).</p>", None
    path = Path(report)
    if not path.is_file():
        return f"<p>{html.escape(report)}: not found</p>", None
    page = html.escape(path.read_text(encoding="utf-8"), quote=True)
    return (f'<iframe title="report" srcdoc="{page}" style="width:100%;height:{REPORT_HEIGHT}px;border:1px solid #ccc">'
            f'</iframe>'), str(path)
