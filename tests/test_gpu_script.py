"""bench/gpu.sh and bench/wheelhouse.sh refuse what they cannot run, in one line, before any work. (The
whole dry run, `bash bench/gpu.sh --cpu-dry-run`, takes minutes: bench/README.md records it.)"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


def bash(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # The timeout only catches a hung script: the refusals that import torch first took over 120 s on a
    # shared CPU under load (2 cores, load average 8), so it is generous.
    return subprocess.run(["bash", script, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_unknown_arguments_are_refused_with_the_usage():
    for script, usage in (("bench/gpu.sh", "usage: bash bench/gpu.sh [--system-python] [--cpu-dry-run]"),
                          ("bench/wheelhouse.sh", "usage: bash bench/wheelhouse.sh [--with-datasets 3.X]")):
        proc = bash(script, "--bogus")
        assert proc.returncode == 2 and usage in proc.stderr
    proc = bash("bench/wheelhouse.sh", "--with-datasets", "eleven")
    assert proc.returncode == 2 and "usage:" in proc.stderr


@pytest.mark.skipif(shutil.which("python3") is None, reason="no python3 on PATH")
def test_system_python_names_what_the_machine_lacks(tmp_path):
    bare = tmp_path / "bare"  # a virtual environment without packages: what a machine without torch looks like
    subprocess.run([shutil.which("python3"), "-m", "venv", "--without-pip", str(bare)], check=True)
    proc = bash("bench/gpu.sh", "--system-python", "--cpu-dry-run",
                env={"PYTHON": str(bare / "bin" / "python"), "WORK": str(tmp_path / "work")})
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"error: --system-python: {bare / 'bin' / 'python'} lacks torch, torchvision, "
                                   "transformers, accelerate, peft (needs torch >= 2.4 with CUDA, torchvision, "
                                   "transformers, accelerate, peft)")


def test_system_python_without_a_gpu_points_to_the_dry_run(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU answers here")
    proc = bash("bench/gpu.sh", "--system-python", env={"PYTHON": sys.executable, "WORK": str(tmp_path / "work")})
    assert proc.returncode == 1
    assert "error: --system-python: torch sees no CUDA device; use --cpu-dry-run" in proc.stderr
