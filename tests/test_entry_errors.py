"""Every command-line entry turns a bad input into one line on stderr naming the file and line, with
exit status 2; --debug shows the traceback instead (src/errors.py). Driven as a user would, through
`python -m ...` subprocesses, on copies of the session's toy dataset with one broken story line."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BROKEN_LINE = 2  # 1-based line number of the story line we break
BROKEN = '{"id": "broken", "images": ["images/x.png"], "captions": '  # not valid JSON


def broken_copy(toy_root: Path, folder: Path, split: str) -> Path:
    """A copy of the dataset (frames linked, not copied) whose `split`.jsonl has a broken line 2."""
    folder.mkdir(parents=True)
    for item in toy_root.iterdir():
        if item.is_dir():
            (folder / item.name).symlink_to(item)
        else:
            shutil.copy(item, folder / item.name)
    path = folder / f"{split}.jsonl"
    lines = path.read_text().splitlines()
    lines[BROKEN_LINE - 1] = BROKEN
    path.write_text("\n".join(lines) + "\n")
    return folder


def run(args: list[str], debug: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1"}
    env.pop("STORYVIZ_DEBUG", None)
    return subprocess.run([sys.executable, "-m", *args, *(["--debug"] if debug else [])], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)


def assert_one_line(proc: subprocess.CompletedProcess, where: str) -> None:
    """Exit 2, and the error is one line, the last on stderr (progress bars of model loading may come
    before it), naming the place."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:] and where in errors[0], proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr


def assert_traceback(proc: subprocess.CompletedProcess, where: str) -> None:
    assert proc.returncode not in (0, 2), proc.stderr[-4000:]
    assert "Traceback (most recent call last)" in proc.stderr and where in proc.stderr


def where(root: Path, split: str) -> str:
    return f"{root / f'{split}.jsonl'}:{BROKEN_LINE}"


def test_train_names_the_broken_story_line(toy_root, char_ldm_overrides, tmp_path):
    root = broken_copy(toy_root, tmp_path / "toy", "train")
    args = ["src.train", "--config", "configs/char_ldm/toy.yaml", *char_ldm_overrides, f"data.root={root}"]
    assert_one_line(run(args), where(root, "train"))
    assert_traceback(run(args, debug=True), where(root, "train"))


def test_generate_names_the_broken_story_line(toy_root, char_ldm_overrides, tmp_path):
    from src.train import main as train_main

    overrides = [*char_ldm_overrides, "run_name=one", "train.max_steps=1", "train.checkpoint_every=1",
                 "sample.num_stories=1"]
    assert train_main(["--config", "configs/char_ldm/toy.yaml", *overrides]) == 0
    run_dir = tmp_path / "outputs" / "char_ldm" / "toy" / "one"
    root = broken_copy(toy_root, tmp_path / "toy", "test")
    args = ["src.generate", "--checkpoint", str(run_dir), "--split", "test", "--out", str(tmp_path / "gen"),
            "--device", "cpu", f"data.root={root}"]
    assert_one_line(run(args), where(root, "test"))
    assert_traceback(run(args, debug=True), where(root, "test"))


def test_eval_run_names_the_broken_story_line(toy_root, tmp_path):
    root = broken_copy(toy_root, tmp_path / "toy", "test")
    story = json.loads((toy_root / "test.jsonl").read_text().splitlines()[0])
    samples = tmp_path / "samples"
    (samples / story["id"]).mkdir(parents=True)
    for k, image in enumerate(story["images"]):
        shutil.copy(toy_root / image, samples / story["id"] / f"{k}.png")
    story["images"] = [f"{story['id']}/{k}.png" for k in range(len(story["images"]))]
    (samples / "stories.jsonl").write_text(json.dumps(story) + "\n")
    args = ["eval.run", "--samples", str(samples), "--protocol", "configs/eval/toy.yaml", f"dataset={root}",
            "metrics=[classifier]", f"classifier.dir={tmp_path}/classifier", "classifier.train_if_missing=false"]
    assert_one_line(run(args), where(root, "test"))
    assert_traceback(run(args, debug=True), where(root, "test"))


def test_prepare_names_the_broken_source_line(toy_root, tmp_path):
    """A StoryStream release (one JSON story per line) with a broken line, through scripts/prepare_data.sh
    as a user runs it (it ends in `python -m src.data.prepare`)."""
    source = tmp_path / "George"
    (source / "json").mkdir(parents=True)
    lines = (toy_root / "train.jsonl").read_text().splitlines()[:3]
    lines[BROKEN_LINE - 1] = BROKEN
    (source / "json" / "train.jsonl").write_text("\n".join(lines) + "\n")
    source_file = source / "json" / "train.jsonl"
    args = ["src.data.prepare", "storystream_george", str(source), "--out", str(tmp_path / "out"), "--quiet",
            "--image-root", str(toy_root)]
    assert_one_line(run(args), f"{source_file}:{BROKEN_LINE}")
    assert_traceback(run(args, debug=True), f"{source_file}:{BROKEN_LINE}")
    script = subprocess.run(["bash", "scripts/prepare_data.sh", *args[1:]], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore",
                                                  "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert_one_line(script, f"{source_file}:{BROKEN_LINE}")


def test_check_reports_the_broken_line(toy_root, tmp_path):
    """src.data.check is the one entry whose job is to list bad lines: it reports every problem it finds
    on stdout (file:line each) and exits 1, never with a traceback."""
    root = broken_copy(toy_root, tmp_path / "toy", "val")
    report = run(["src.data.check", str(root), "--quiet"])
    assert report.returncode == 1 and where(root, "val") in report.stdout, report.stdout + report.stderr
    assert "Traceback" not in report.stderr


def test_converter_names_the_bad_source_file(tmp_path):
    src = tmp_path / "pytorch_model.bin"
    src.write_bytes(b"not a torch file")
    args = ["src.tools.convert.storygptv_ldm", "--src", str(src), "--out", str(tmp_path / "run"),
            "--image-encoder-trainable-layers", "2"]
    assert_one_line(run(args), str(src))
    assert_traceback(run(args, debug=True), str(src))


def test_a_genuine_bug_is_not_hidden(monkeypatch, capsys):
    from src.errors import run_entry

    def buggy(argv):
        raise TypeError("a bug")

    with pytest.raises(TypeError):
        run_entry(buggy, [])
    monkeypatch.setenv("STORYVIZ_DEBUG", "1")
    with pytest.raises(ValueError):
        run_entry(lambda argv: int("x"), [])
    monkeypatch.delenv("STORYVIZ_DEBUG")
    assert run_entry(lambda argv: int("x"), []) == 2
    assert capsys.readouterr().err.count("\n") == 1
