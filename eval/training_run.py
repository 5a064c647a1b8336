"""What a training run folder tells the report: what was trained and for how long, its loss curves
(metrics.jsonl), and the classifier metrics of its periodic samples (samples/step_N/) over training.

The engine logs steps, not clock time; minutes are steps x the run's mean seconds per step
(summary.json), so the time axis assumes an even pace. A resumed run's summary.json times only the steps
since the resume (`resumed_from_step`); their pace is applied to every step.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from omegaconf import OmegaConf

from eval.plots import line_chart
from eval.stories_io import EvalInputError

LOSS_KEYS = ("train/mse", "train/attention")
# The losses plotted per task (a config without `task:` is a stage-1 LDM / Char-LDM run).
TASK_LOSS_KEYS = {"detokenizer": ("train/loss",), "story_sft": ("train/ce", "train/cosine"),
                  "story_adapt": ("train/loss",)}


def read_run(run_dir) -> dict:
    """config.yaml, summary.json and metrics.jsonl of a finished run; a missing file is an error naming it."""
    run_dir = Path(run_dir)
    files = {name: run_dir / name for name in ("config.yaml", "summary.json", "metrics.jsonl")}
    for path in files.values():
        if not path.is_file():
            raise EvalInputError(f"{path}: not found; --run takes a finished training run folder "
                                 "(outputs/<stage>/<dataset>/<run_name>)")
    metrics = []
    for number, line in enumerate(files["metrics.jsonl"].read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                metrics.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise EvalInputError(f"{files['metrics.jsonl']}:{number}: invalid JSON: {err.msg}") from None
    return {"dir": run_dir, "config": OmegaConf.to_container(OmegaConf.load(files["config.yaml"])),
            "summary": json.loads(files["summary.json"].read_text(encoding="utf-8")), "metrics": metrics}


def minutes_per_step(run: dict) -> float:
    """The pace of the last training session (summary.json counts the steps after resumed_from_step)."""
    summary = run["summary"]
    return summary["minutes"] / max(summary["final_step"] - summary.get("resumed_from_step", 0), 1)


def describe(run: dict) -> str:
    """One sentence: what was trained, on what, for how many steps and minutes."""
    config, summary = run["config"], run["summary"]
    model = config["model"]
    what, source = _what_and_source(config.get("task"), model)
    minutes = minutes_per_step(run) * summary["final_step"]
    return (f"{what} trained on {config['data']['name']} for {summary['final_step']} steps "
            f"({minutes:.1f} min, batch {config['train']['batch_size']}, lr {config['optim']['lr']:g} "
            f"{config['optim']['schedule']}) from {source}")


def _what_and_source(task, model: dict) -> tuple[str, str]:
    """(what the run trained, what it started from), by the run's task."""
    if task == "detokenizer":
        return f"SEED-Story de-tokenizer (stage 1, UNet {model['train_unet']})", model["pretrained"]
    if task == "story_sft":
        return f"SEED-Story MLLM (stage 2 SFT, LLM {model['llm_mode']})", model["llm"]
    if task == "story_adapt":
        return (f"SEED-Story de-tokenizer adapted to the MLLM (stage 3, {model['trainable']})",
                f"{model['sft_run']} and its de-tokenizer")
    what = "Char-LDM (StoryGPT-V stage 1)" if model.get("character_conditioning", False) else "baseline LDM"
    return what, model["pretrained"]


def loss_chart(run: dict):
    keys = TASK_LOSS_KEYS.get(run["config"].get("task"), LOSS_KEYS)
    series = {key.split("/", 1)[1]: [(row["step"], row[key]) for row in run["metrics"] if key in row]
              for key in keys}
    series = {name: points for name, points in series.items() if points}
    if not series:
        return None
    task = run["config"].get("task")
    title = f"{task} training losses ({run['dir'].name})" if task in TASK_LOSS_KEYS else "training losses (metrics.jsonl)"
    return line_chart(series, title, "step", "loss")


def periodic_scores(run: dict, protocol: dict, evaluate) -> list[dict]:
    """Char-Acc and BG-Acc of each samples/step_N folder, scored like the main samples (`evaluate` is
    eval.run.evaluate with the classifier only, on the split the samples were drawn from). A run trained on
    another dataset than the protocol's (SEED-Story's stage 1 on data/toy, scored on data/toy_story) has
    no periodic scores: its samples have no ground truth there."""
    rows = []
    root = run["config"]["data"].get("root")
    if root is not None and Path(root).resolve() != Path(protocol["dataset"]).resolve():
        return rows
    for folder in sorted((run["dir"] / "samples").glob("step_*")):
        generation = folder / "generation.json"
        if not (folder / "stories.jsonl").is_file() or not generation.is_file():
            raise EvalInputError(f"{folder}: not a samples folder (stories.jsonl and generation.json expected)")
        split = json.loads(generation.read_text(encoding="utf-8"))["split"]
        sub = copy.deepcopy(protocol)
        sub.update(split=split, metrics=["classifier"])
        scored = evaluate(folder, sub, log=lambda message: None)["metrics"]
        step = int(folder.name.split("_")[1])
        rows.append({"step": step, "minutes": step * minutes_per_step(run), "split": split,
                     **{name: scored[name]["value"] for name in ("Char-Acc (%)", "BG-Acc (%)") if name in scored}})
    return rows


def metric_chart(rows: list[dict]):
    if not rows:
        return None
    series = {name: [(row["minutes"], row[name]) for row in rows if name in row] for name in ("Char-Acc (%)", "BG-Acc (%)")}
    split = rows[0]["split"]
    return line_chart({name: points for name, points in series.items() if points},
                      f"periodic {split} samples over training", "training minutes", "%", y_range=(0, 100))
