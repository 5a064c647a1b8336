"""A self-contained HTML report of generated stories: frames, captions, ground truth, metrics.

    python -m eval.report --samples DIR [--data data/toy --split test] [--metrics metrics.json] --out FILE

Frames are embedded as base64 PNG so the page can be mailed or attached as one file. Small frames
(the toy's 64 px) are upscaled by the browser with `image-rendering: pixelated`, large ones are
shrunk to MAX_EMBED_SIDE before embedding to keep the page light.

Multimodal stories (SEED-Story samples, eval/multimodal.py) are shown beat by beat, one row per beat:
the generated frame with its generated text beside it, then the ground truth's frame and text; the
given opening and the beats without a ground-truth counterpart are marked as not scored.
"""
import argparse
import base64
import html
import io
import json
from pathlib import Path

from eval.multimodal import is_story_samples
from eval.stories_io import EvalInputError, load_frame, pair_with_ground_truth, read_samples, read_split

MAX_EMBED_SIDE = 256
DISPLAY_SIDE = 160

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; background: #fafafa; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
.sub { color: #666; margin-top: 0; }
table.metrics { border-collapse: collapse; margin: 1em 0 2em; background: #fff; }
table.metrics th, table.metrics td { border: 1px solid #ddd; padding: 0.35em 0.8em; text-align: left; }
table.metrics th { background: #f0f0f0; }
table.metrics td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.note { color: #a33; font-size: 0.9em; }
.story { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 0.8em 1em;
         margin-bottom: 1.2em; }
.story h2 { font-size: 1.1em; margin: 0 0 0.5em; }
.scores { font-size: 0.85em; color: #555; margin-bottom: 0.5em; }
.row-label { font-size: 0.8em; color: #888; text-transform: uppercase; letter-spacing: 0.05em;
             margin: 0.4em 0 0.2em; }
.frames { display: flex; gap: 0.6em; flex-wrap: wrap; }
figure { margin: 0; width: %(side)dpx; }
figure img { width: %(side)dpx; height: %(side)dpx; object-fit: contain; image-rendering: pixelated;
             border: 1px solid #ccc; background: #eee; }
figcaption { font-size: 0.8em; line-height: 1.3; margin-top: 0.2em; }
.summary { background: #fff; border-left: 4px solid #3a7; padding: 0.6em 1em; margin: 1em 0; }
.plots { display: flex; gap: 1em; flex-wrap: wrap; margin-bottom: 1.5em; }
.plots img { border: 1px solid #ddd; }
table.beats { border-collapse: collapse; width: 100%%; }
table.beats td, table.beats th { border-top: 1px solid #eee; padding: 0.3em 0.5em; vertical-align: top;
                                 text-align: left; }
table.beats th { font-size: 0.8em; color: #888; text-transform: uppercase; letter-spacing: 0.05em; }
table.beats td.frame { width: %(side)dpx; }
table.beats td.frame img { width: %(side)dpx; height: %(side)dpx; object-fit: contain;
                           image-rendering: pixelated; border: 1px solid #ccc; background: #eee; }
table.beats td.text { width: 30%%; font-size: 0.9em; line-height: 1.35; }
table.beats td.beat { color: #666; font-size: 0.85em; white-space: nowrap; }
tr.unscored td { background: #f6f6f6; }
""" % {"side": DISPLAY_SIDE}


def _png_data_uri(image, max_side=MAX_EMBED_SIDE):
    if max_side and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _format_value(value):
    if value is None:
        return "missing"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _metric_rows(metrics):
    """Flatten metrics into (name, value, ceiling, note) rows.

    A value is a number/string, or a dict {"value", "ceiling" (real test frames), "note"}; any other
    nested dict is a group whose keys are shown as "group / key".
    """
    rows = []
    for name, entry in metrics.items():
        if isinstance(entry, dict) and "value" in entry:
            rows.append((name, entry["value"], entry.get("ceiling"), entry.get("note", "")))
        elif isinstance(entry, dict):
            rows.extend((f"{name} / {sub}", value, ceiling, note)
                        for sub, value, ceiling, note in _metric_rows(entry))
        else:
            rows.append((name, entry, None, ""))
    return rows


def _metrics_table(metrics, split="test"):
    rows = _metric_rows(metrics)
    has_ceiling = any(ceiling is not None for _, _, ceiling, _ in rows)
    has_notes = any(note for _, _, _, note in rows)
    head = "<tr><th>Metric</th><th>Generated</th>"
    head += f"<th>Real {html.escape(split)} frames (ceiling)</th>" if has_ceiling else ""
    head += "<th>Note</th>" if has_notes else ""
    body = []
    for name, value, ceiling, note in rows:
        cells = f"<td>{html.escape(name)}</td><td class='num'>{_format_value(value)}</td>"
        if has_ceiling:
            cells += f"<td class='num'>{'' if ceiling is None else _format_value(ceiling)}</td>"
        if has_notes:
            cells += f"<td class='note'>{html.escape(note or '')}</td>"
        body.append(f"<tr>{cells}</tr>")
    return f"<table class='metrics'>{head}</tr>{''.join(body)}</table>"


def _frames_row(label, root, story):
    figures = []
    for k, (image_path, caption) in enumerate(zip(story["images"], story["captions"])):
        uri = _png_data_uri(load_frame(root, image_path))
        figures.append(f"<figure><img src='{uri}' alt='{html.escape(story['id'])} frame {k}'>"
                       f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return f"<div class='row-label'>{label}</div><div class='frames'>{''.join(figures)}</div>"


def _beats_table(story, samples_dir, truth, data_root, given_beats):
    """One row per beat: generated frame | generated text | ground-truth frame | ground-truth text."""
    count = max(len(story["images"]), len(truth["images"]) if truth else 0)
    rows = []
    for k in range(count):
        cells = []
        for source, root, side in ((story, samples_dir, "generated"), (truth, data_root, "ground truth")):
            if source is None:
                continue
            if k < len(source["images"]):
                uri = _png_data_uri(load_frame(root, source["images"][k]))
                cells.append(f"<td class='frame'><img src='{uri}' alt='{html.escape(source['id'])} beat {k}, {side}'></td>"
                             f"<td class='text'>{html.escape(source['captions'][k])}</td>")
            else:
                cells.append("<td class='frame'></td><td class='text'>&mdash;</td>")
        scored = truth is not None and given_beats <= k < min(len(story["images"]), len(truth["images"]))
        label = "given" if k < given_beats else ("" if scored else "not scored")
        rows.append(f"<tr class='{'' if scored else 'unscored'}'><td class='beat'>beat {k}"
                    f"{'<br>' + label if label else ''}</td>{''.join(cells)}</tr>")
    head = "<tr><th></th><th colspan='2'>generated: frame and text</th>"
    head += "<th colspan='2'>ground truth</th></tr>" if truth is not None else "</tr>"
    return f"<table class='beats'>{head}{''.join(rows)}</table>"


def _story_scores(scores):
    parts = [f"{html.escape(name)}: {_format_value(value)}" for name, value in scores.items()]
    return f"<div class='scores'>{' &middot; '.join(parts)}</div>"


def write_report(samples_dir, out_html, data_root=None, split=None, metrics=None, per_story=None,
                 title="StoryViz evaluation report", summary=None, plots=None, given_beats=1):
    """Write one HTML page for a samples folder and return its path.

    samples_dir: a samples folder (stories.jsonl + <id>/<k>.png). data_root + split: when given, the
    ground-truth frames of each story are shown beneath the generated ones (multimodal stories: beside
    them, beat by beat; given_beats: the leading beats the generator was given). metrics: {name: value
    or {"value", "ceiling", "note"}}. per_story: {story id: {metric: value}} shown above each story.
    """
    samples_dir = Path(samples_dir)
    samples = read_samples(samples_dir)
    generation_file = samples_dir / "generation.json"
    multimodal = generation_file.is_file() and is_story_samples(json.loads(generation_file.read_text(encoding="utf-8")))
    if (data_root is None) != (split is None):
        raise EvalInputError("write_report: give both data_root and split, or neither")
    if data_root is not None:
        where = f"{Path(data_root) / (split + '.jsonl')}"
        truth_by_id = read_split(data_root, split)
        if multimodal:  # a written story may be shorter or longer than its ground truth
            missing = [story["id"] for story in samples if story["id"] not in truth_by_id]
            if missing:
                raise EvalInputError(f"story id {missing[0]!r} of the samples is not in {where}")
            pairs = [(story, truth_by_id[story["id"]]) for story in samples]
        else:
            pairs = pair_with_ground_truth(samples, truth_by_id, where)
    else:
        pairs = [(story, None) for story in samples]
    per_story = per_story or {}

    sections = []
    for story, truth in pairs:
        parts = [f"<h2>{html.escape(story['id'])}</h2>"]
        if story["id"] in per_story:
            parts.append(_story_scores(per_story[story["id"]]))
        if multimodal:
            parts.append(_beats_table(story, samples_dir, truth, data_root, given_beats))
        else:
            parts.append(_frames_row("generated", samples_dir, story))
            if truth is not None:
                parts.append(_frames_row("ground truth", data_root, truth))
        sections.append(f"<div class='story'>{''.join(parts)}</div>")

    subtitle = f"{len(samples)} stories from {html.escape(str(samples_dir))}"
    if data_root is not None:
        subtitle += f", ground truth: {html.escape(str(data_root))} ({html.escape(split)} split)"
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class='sub'>{subtitle}</p>"
            + ("<div class='summary'>" + "<br>".join(html.escape(line) for line in summary) + "</div>"
               if summary else "")
            + (_metrics_table(metrics, split or "test") if metrics else "")
            + ("<div class='plots'>" + "".join(f"<img src='{_png_data_uri(plot, max_side=None)}' alt='plot'>"
                                               for plot in plots) + "</div>" if plots else "")
            + "".join(sections) + "</body></html>\n")
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(page, encoding="utf-8")
    return out_html


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write an HTML page of generated stories.")
    parser.add_argument("--samples", required=True, help="samples folder (stories.jsonl + <id>/<k>.png)")
    parser.add_argument("--data", default=None, help="dataset folder for ground-truth frames")
    parser.add_argument("--split", default=None, help="split of --data the samples came from (default test)")
    parser.add_argument("--metrics", default=None, help="metrics.json written by eval.run")
    parser.add_argument("--title", default="StoryViz evaluation report")
    parser.add_argument("--out", required=True, help="HTML file to write")
    args = parser.parse_args(argv)
    split = args.split or ("test" if args.data else None)
    metrics = per_story = None
    if args.metrics:
        path = Path(args.metrics)
        if not path.is_file():
            parser.error(f"--metrics {path}: file not found")
        saved = json.loads(path.read_text(encoding="utf-8"))
        metrics, per_story = saved.get("metrics"), saved.get("per_story")
    try:
        out = write_report(args.samples, args.out, data_root=args.data, split=split, metrics=metrics,
                           per_story=per_story, title=args.title)
    except EvalInputError as err:
        raise SystemExit(f"eval.report: {err}") from None
    print(out)


if __name__ == "__main__":
    main()
