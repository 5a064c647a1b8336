"""bench/story_context.py's quality columns (--protocol): each context mode's samples are scored by the
classifier trained on the protocol's own dataset (named explicitly, `classifier.trained_on`), against the
ground truth of the bench's temporary long stories; a missing classifier stops the bench in one line,
and is never trained there. Driven as a user runs it, on the session's tiny story_sft and
detokenizer runs (conftest.py) and a classifier trained briefly on the session's small toy dataset."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from src.errors import run_entry

REPO = Path(__file__).resolve().parent.parent
QUALITY = ("Char-Acc (%)", "BG-Acc (%)", "Frechet distance (classifier features)")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, toy_root):
    """The toy protocol's classifier trained (1 epoch) on the session's toy dataset: (its folder, the
    protocol overrides that name it and its reference dataset)."""
    from eval.train_classifier import main as train

    folder = tmp_path_factory.mktemp("bench_story_context") / "classifier"
    overrides = [f"dataset={toy_root}", f"classifier.dir={folder}", "classifier.epochs=1"]
    train(["--protocol", "configs/eval/toy.yaml", *overrides])
    return folder, overrides


def bench(runs, overrides, modes=("window",), extra=()):
    return subprocess.run([sys.executable, "-m", "bench.story_context", "--mllm", str(runs["mllm"]),
                           "--detokenizer", str(runs["detok"]), "--lengths", "3", "--stories", "1",
                           "--modes", *modes, *extra, "--steps", "2", "--protocol", "configs/eval/toy.yaml",
                           *overrides],
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)


def table(stdout: str) -> list[dict]:
    """The bench's first printed table (the modes; per-bin and text tables follow it) as rows {column: cell}."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| beats"))
    columns = [cell.strip() for cell in lines[header].strip("|").split("|")]
    rows = []
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(columns, (cell.strip() for cell in line.strip("|").split("|")))))
    return rows


def test_each_mode_is_scored_by_the_reference_datasets_classifier(seed_runs, classifier, toy_root):
    folder, overrides = classifier
    trained = (folder / "model.safetensors").stat().st_mtime_ns
    proc = bench(seed_runs, overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"scored by the classifier in {folder} (trained on {toy_root})" in proc.stdout
    rows = table(proc.stdout)
    columns = list(rows[0])
    assert [(row["beats"], row["mode"]) for row in rows] == [("3", "window")]
    for name in QUALITY:
        assert name in columns and float(rows[0][name]) >= 0, (name, rows[0])
    assert 0 <= float(rows[0]["Char-Acc (%)"]) <= 100 and 0 <= float(rows[0]["BG-Acc (%)"]) <= 100
    # the classifier was read, never retrained
    assert (folder / "model.safetensors").stat().st_mtime_ns == trained
    assert json.loads((folder / "config.json").read_text())["data_root"] == str(toy_root)


def test_without_the_trained_classifier_the_bench_stops_in_one_line(seed_runs, classifier, tmp_path):
    _, overrides = classifier
    missing = tmp_path / "no_classifier"
    proc = bench(seed_runs, [*overrides, f"classifier.dir={missing}"])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert f"{missing} holds no classifier; train it with `python -m eval.train_classifier" in errors[0]
    assert not missing.exists() and "| beats" not in proc.stdout  # nothing trained, nothing drawn


def test_a_classifier_of_other_settings_or_labels_is_refused(seed_runs, classifier, tmp_path, capsys):
    from bench.story_context import main

    folder, overrides = classifier
    # other settings than the classifier was trained with: its fingerprint differs
    assert run_entry(main, ["--mllm", str(seed_runs["mllm"]), "--detokenizer", str(seed_runs["detok"]),
                            "--protocol", "configs/eval/toy.yaml", *overrides, "classifier.epochs=2"]) == 2
    error = capsys.readouterr().err
    assert f"{folder} holds a classifier trained on other data or settings" in error
    # a classifier that does not know the scored dataset's characters: its labels would not line up
    from eval.protocol import load_protocol
    from eval.train_classifier import ensure_classifier

    other = tmp_path / "other"
    other.mkdir()
    for name in ("model.safetensors", "split_ids.json"):
        (other / name).write_bytes((folder / name).read_bytes())
    config = json.loads((folder / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "characters": config["characters"][::-1]}))
    protocol = load_protocol("configs/eval/toy.yaml", [*overrides, f"classifier.dir={other}"])
    with pytest.raises(ValueError, match=re.escape(f"{other}: the classifier trained on {config['data_root']} "
                                                   "knows characters") + r".* but .*meta\.json lists"):
        ensure_classifier(protocol, "cpu")


def test_sink_images_rows_the_released_refill_the_spread_the_bins_the_text_and_the_plot(seed_runs, classifier, tmp_path):
    _, overrides = classifier
    plot, report = tmp_path / "beats.svg", tmp_path / "bench.json"
    proc = bench(seed_runs, overrides, modes=("dense_refill", "window", "multimodal_sink"),
                 extra=("--sink-images", "all", "0", "--window-images", "1", "--split", "val", "--plot", str(plot),
                        "--stories", "2", "--bin", "1", "--text", "--json", str(report), "--first-tokens", "2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 val stories per length" in proc.stdout and "first tokens 2" in proc.stdout
    rows = table(proc.stdout)
    labels = ["dense_refill", "window", "multimodal_sink, all sink images (released)", "multimodal_sink, 0 sink images"]
    assert [row["mode"] for row in rows[:4]] == labels
    assert all(0 <= float(row["Char-Acc (%)"]) <= 100 and float(row["LLM s/beat, last 10"]) > 0 for row in rows[:4])
    # per-story spread: the mean over stories is the overall Char-Acc (every story has as many scored beats)
    for row in rows[:4]:
        mean = float(row["Char-Acc ± SE (stories)"].split(" ± ")[0])
        assert mean == pytest.approx(float(row["Char-Acc (%)"]), abs=0.06), row
    assert "Δ Char-Acc vs window" not in rows[0] or rows[0]["Δ Char-Acc vs window"] == ""
    assert rows[2]["Δ Char-Acc vs window"].startswith(("+", "-"))
    data = json.loads(report.read_text())
    bins = data["bins"]["3"]
    assert list(bins) == labels and [b["beats"] for b in bins["window"]] == ["1-1", "2-2"]
    assert all(b["frames"] == 2 and 0 <= b["char_acc"] <= 100 and b["frechet"] >= 0 for b in bins["window"])
    per_story = data["per_story"]["3"]["window"]
    assert len(per_story) == 2 and all(v in (0.0, 50.0, 100.0) for v in per_story.values())
    # story mode's text: every mode, then the ground truth, whose cast is whole in its opening beat
    text = data["text"]
    assert [row["mode"] for row in text] == [*labels, "ground truth"]
    assert text[-1]["cast introduced"].startswith("100.0") and text[-1]["place follows"].startswith("100.0")
    svg = plot.read_text()  # seconds per beat, Char-Acc per bin, Frechet distance per bin: one line per row each
    assert svg.count("<polyline") == 3 * 4 and "multimodal_sink, 0 sink images" in svg
    assert "Char-Acc per 1-beat bin" in svg and "Frechet distance per 1-beat bin" in svg
    bad = bench(seed_runs, overrides, extra=("--sink-images", "three"))
    assert bad.returncode == 2 and "--sink-images: not 'all' or an integer >= 0: 'three'" in bad.stderr
