"""Asset preparation (src/assets.py) as the entries run it: several processes of one launch call
ensure_assets at once; one builds the toy dataset, the others wait and find it ready."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCRIPT = """
import sys
from src.config import load_config
from src.assets import ensure_assets
ensure_assets(load_config("configs/char_ldm/toy.yaml", sys.argv[1:]))
"""


def test_processes_started_together_build_the_toy_dataset_once(tmp_path):
    root = tmp_path / "toy"
    overrides = [f"data.root={root}", "data.toy.num_train=6", "data.toy.num_val=2", "data.toy.num_test=2",
                 "tiny_stack=null", f"model.pretrained={tmp_path}", f"model.image_encoder={tmp_path}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, *overrides], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err[-3000:] for _, err in outputs]
    assert sum("building the toy dataset" in out for out, _ in outputs) == 1

    from src.data.stories import read_split

    assert len(read_split(root, "train")[1]) == 6
