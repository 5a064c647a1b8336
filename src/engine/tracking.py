"""Run logs: TensorBoard by default, wandb when configured, and a plain `metrics.jsonl` in the run folder
(one line per logged step) that tests, benchmarks and reports can read without either."""
from __future__ import annotations

import json
from pathlib import Path


def tracker_backends(cfg) -> list[str]:
    backends = []
    if cfg.logging.tensorboard:
        backends.append("tensorboard")
    if cfg.logging.wandb:
        backends.append("wandb")
    return backends


def _flat(node, prefix="") -> dict:
    """Scalars only: TensorBoard's hparams refuse lists and nested mappings."""
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "."))
        elif isinstance(value, (int, float, str, bool)):
            out[name] = value
        elif value is not None:
            out[name] = str(value)
    return out


class RunLog:
    def __init__(self, run_dir: Path, is_main: bool):
        self.run_dir, self.is_main = Path(run_dir), is_main

    def write_jsonl(self, logs: dict, step: int) -> None:
        if self.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps({"step": step, **logs}) + "\n")

    def truncate_after(self, step: int) -> None:
        """On resume: forget steps a killed run logged after its last checkpoint (they are redone)."""
        path = self.run_dir / "metrics.jsonl"
        if self.is_main and path.exists():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
            path.write_text("".join(line + "\n" for line in kept))

    def write_summary(self, summary: dict) -> None:
        if self.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))


def start_trackers(accelerator, cfg, run_dir: Path) -> RunLog:
    from omegaconf import OmegaConf

    if tracker_backends(cfg):
        init_kwargs = {"wandb": {"name": f"{cfg.stage}-{cfg.data.name}-{cfg.run_name}"}} if cfg.logging.wandb else {}
        project = cfg.logging.wandb_project if cfg.logging.wandb else "tensorboard"
        accelerator.init_trackers(project, config=_flat(OmegaConf.to_container(cfg, resolve=True)),
                                  init_kwargs=init_kwargs)
    return RunLog(run_dir, accelerator.is_main_process)


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
