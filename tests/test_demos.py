"""`bash scripts/demo.sh` and `bash scripts/demo.sh seed-story` (scripts/demo_seed_story.sh): the argument
dispatch of scripts/demo.sh, the StoryGPT-V demo, and the SEED-Story demo's whole chain (stage 1, stage 2,
stage 3, val stories scored into a report) with 2-step trainings, run by the real scripts in a copy of the
repository's layout whose data/ and pretrained/ hold the test session's small toy data and tiny stack."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
USAGE = "usage: bash scripts/demo.sh [seed-story] [key=value ...]"
# Two steps of each training, no periodic validation, one sample story of 2 denoising steps.
TINY = ["train.max_steps=2", "train.checkpoint_every=2", "train.validate_every=0", "train.log_every=1",
        "train.batch_size=4", "optim.warmup_steps=1", "sample.num_inference_steps=2", "sample.num_stories=1",
        "logging.tensorboard=false", "data.num_workers=0"]
# Two stories of up to 3 beats; the classifier metrics only (a 2-step MLLM may end a story after its
# opening, leaving too few frames for a Frechet distance).
TINY_EVAL = ("story.num_stories=2 story.beats=3 story.temperature=0 story.max_text_tokens=10 "
             "story.window_images=2 classifier.epochs=1 classifier.batch_size=16 metrics=[classifier]")


def run_demo(root: Path, *args: str, **env) -> subprocess.CompletedProcess:
    # The repository's environment (scripts/_env.sh), not one of its own in the test's copy of the layout.
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    env.setdefault("STORYVIZ_VENV", str(REPO / ".venv"))
    return subprocess.run(["bash", str(root / "scripts" / "demo.sh"), *args], cwd=root, capture_output=True,
                          text=True, env=env)


def test_an_unknown_demo_is_a_usage_error():
    proc = run_demo(REPO, "seed_story")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"{USAGE}  (no demo name: the StoryGPT-V demo; 'seed_story' is not a demo)"]
    assert proc.stdout == ""


def test_a_bad_argument_of_the_seed_story_demo_is_named(tmp_path):
    proc = run_demo(REPO, "seed-story", "fast")
    assert proc.returncode == 2 and "'fast' is not key=value" in proc.stderr
    proc = run_demo(REPO, "seed-story", "run_name=x")
    assert proc.returncode == 2 and "run_name=x: the demo's runs are" in proc.stderr


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory, seed_stack, toy_root) -> Path:
    """The repository's code by symlink, with data/toy, data/toy_story and pretrained/tiny of test size."""
    from src.data.toy import generate_toy_dataset

    root = tmp_path_factory.mktemp("demo") / "repo"
    (root / "data").mkdir(parents=True)
    (root / "pretrained").mkdir()
    for name in ("src", "configs", "scripts", "eval", "eval.sh", "requirements.txt"):
        (root / name).symlink_to(REPO / name)
    (root / "data" / "toy").symlink_to(toy_root)
    (root / "pretrained" / "tiny").symlink_to(seed_stack)
    generate_toy_dataset(root / "data" / "toy_story", seed=0, num_train=4, num_val=1, num_test=1,
                         story_frames=30, chunk_frames=10, num_workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def demo(demo_root):
    """The whole chain with the tiny overrides."""
    first = run_demo(demo_root, "seed-story", *TINY, EVAL_ARGS=TINY_EVAL)
    assert first.returncode == 0, first.stderr[-3000:]
    return demo_root, first


@pytest.mark.slow
def test_the_chain_trains_three_stages_and_scores_val_stories(demo):
    root, first = demo
    runs = {"detokenizer": root / "outputs/detokenizer/toy/demo", "story_sft": root / "outputs/story_sft/toy_story/demo",
            "story_adapt": root / "outputs/story_adapt/toy_story/demo"}
    for task, run in runs.items():
        assert json.loads((run / "summary.json").read_text())["final_step"] == 2, task  # the overrides reached it
        assert f"task: {task}" in (run / "config.yaml").read_text()
    # each stage reads the one before it
    assert "detokenizer_run: outputs/detokenizer/toy/demo" in (runs["story_sft"] / "config.yaml").read_text()
    upstream = json.loads((runs["story_adapt"] / "upstream.json").read_text())
    assert "outputs/story_sft/toy_story/demo/checkpoints/step_000002" in json.dumps(upstream)
    assert "outputs/detokenizer/toy/demo/checkpoints/step_000002" in json.dumps(upstream)
    out = root / "outputs/demo_seed_story"
    generation = json.loads((out / "samples" / "generation.json").read_text())
    assert generation["split"] == "val" and generation["mode"] == "story"
    assert generation["detokenizer_task"] == "story_adapt" and generation["num_stories"] == 2
    results = json.loads((out / "metrics.json").read_text())
    assert results["split"] == "val" and results["metrics"]["Char-Acc (%)"]["value"] is not None
    # the report opens with what was trained: one line per stage, in order, before the metrics
    page = (out / "report.html").read_text()
    summary = page[page.index("class='summary'"):page.index("table class='metrics'")]
    lines = ["SEED-Story de-tokenizer (stage 1, UNet full) trained on toy for 2 steps",
             "SEED-Story MLLM (stage 2 SFT, LLM lora) trained on toy_story for 2 steps",
             "SEED-Story de-tokenizer adapted to the MLLM (stage 3, full_unet) trained on toy_story for 2 steps",
             "Scored: val split, 2 stories"]
    positions = [summary.index(line) for line in lines]
    assert positions == sorted(positions)
    # the console: a header and a progress bar per stage, the report's path last
    for number in (1, 2, 3, 4):
        assert f"== [{number}/4]" in first.stdout
    for bar in ("detokenizer/toy:", "story_sft/toy_story:", "story_adapt/toy_story:", "writing stories:"):
        assert bar in first.stderr
    assert "Loading weights" not in first.stderr  # transformers' own bars are off
    assert first.stdout.strip().splitlines()[-1] == f"report: {root}/outputs/demo_seed_story/report.html"


@pytest.mark.slow
def test_the_default_demo_trains_char_ldm_and_scores_its_test_stories(demo_root):
    """Without a demo name (key=value arguments only) demo.sh runs StoryGPT-V's demo: Char-LDM trained on
    data/toy, the test split drawn, the toy protocol's report; no SEED-Story stage runs."""
    root = demo_root
    before = sorted(p.name for p in (root / "outputs").iterdir()) if (root / "outputs").exists() else []
    proc = run_demo(root, *TINY, EVAL_ARGS="metrics=[classifier] classifier.epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = root / "outputs/char_ldm/toy/demo"
    assert json.loads((run / "summary.json").read_text())["final_step"] == 2
    assert "task: char_ldm" in (run / "config.yaml").read_text()
    samples = root / "outputs/demo/samples"
    generation = json.loads((samples / "generation.json").read_text())
    test_stories = (root / "data/toy/test.jsonl").read_text().splitlines()
    assert generation["split"] == "test" and generation["num_stories"] == len(test_stories)
    assert json.loads((root / "outputs/demo/metrics.json").read_text())["metrics"]["Char-Acc (%)"]["value"] is not None
    # the SEED-Story demo may have run in this folder first (the fixture is shared): only its own new folders
    new = sorted(set(p.name for p in (root / "outputs").iterdir()) - set(before))
    assert not {"story_sft", "detokenizer", "story_adapt"} & set(new), new
    assert proc.stdout.strip().splitlines()[-1] == f"report: {root}/outputs/demo/report.html"


@pytest.mark.slow
def test_an_interrupted_stage_continues_from_its_checkpoint(demo):
    """A second call keeps the finished stages (summary.json) and continues one that was stopped before its
    end (no summary.json) from its latest checkpoint."""
    demo_root = demo[0]
    run = demo_root / "outputs/story_adapt/toy_story/demo"
    assert (run / "checkpoints" / "step_000002").is_dir()
    (run / "summary.json").unlink()
    proc = run_demo(demo_root, "seed-story", *TINY, "train.max_steps=3", EVAL_ARGS=TINY_EVAL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("already trained") == 2
    assert "detokenizer/toy:" not in proc.stderr and "story_sft/toy_story:" not in proc.stderr
    assert "continuing the interrupted run in outputs/story_adapt/toy_story/demo" in proc.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["resumed_from_step"], summary["final_step"]) == (2, 3)
