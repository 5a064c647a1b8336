"""The root eval.sh, two-run form (stage 2): the caller's GENERATE_ARGS reach src.generate beside the
stage-1 override, so that e.g. `GENERATE_ARGS="sample.guidance_scale=3"` draws stage 2 with the same CFG
as the Char-LDM rows. Driven through the real scripts with a recording stand-in for the venv's python
(no model is built). The protocol's split (split=val) decides which split is drawn, not only scored."""
import hashlib
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def fake_venv(root: Path, record: Path) -> Path:
    """A venv whose python answers `eval.protocol --get split` with the split=... argument (test if none),
    and otherwise writes its arguments to `record` and fails (the script stops there); stamped as holding
    requirements.txt, so ensure_venv installs nothing."""
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text('#!/usr/bin/env bash\n'
                      'if [ "$2" = eval.protocol ]; then split=test\n'
                      '  for a in "$@"; do case $a in split=*) split=${a#split=};; esac; done\n'
                      '  echo "$split"; exit 0; fi\n'
                      f'printf "%s\\n" "$@" > "{record}"\nexit 3\n')
    python.chmod(0o755)
    stamp = hashlib.sha256((REPO / "requirements.txt").read_bytes()).hexdigest()
    (venv / ".requirements").mkdir()
    (venv / ".requirements" / stamp).touch()
    return venv


def test_two_run_eval_keeps_the_callers_generate_args(tmp_path):
    record = tmp_path / "argv.txt"
    venv = fake_venv(tmp_path, record)
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    stage1.mkdir()
    stage2.mkdir()
    (stage1 / "config.yaml").write_text("task: char_ldm\n")
    (stage2 / "config.yaml").write_text("task: align\n")
    env = {**os.environ, "STORYVIZ_VENV": str(venv), "GENERATE_ARGS": "sample.guidance_scale=3",
           "EVAL_OUT": str(tmp_path / "out")}
    env.pop("CAPTIONS", None)
    run = subprocess.run(["bash", "eval.sh", "toy", str(stage1), str(stage2), "split=test"], cwd=REPO, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 3, run.stderr
    argv = record.read_text().split("\n")
    assert argv[:3] == ["-m", "src.generate", "--checkpoint"] and argv[3] == str(stage2)
    assert "data.caption_field=captions_coref" in argv
    assert f"model.stage1={stage1.resolve()}" in argv
    assert "sample.guidance_scale=3" in argv


def test_one_run_eval_draws_the_split_it_scores(tmp_path):
    record = tmp_path / "argv.txt"
    venv = fake_venv(tmp_path, record)
    stage1 = tmp_path / "stage1"
    stage1.mkdir()
    (stage1 / "config.yaml").write_text("task: char_ldm\n")
    env = {**os.environ, "STORYVIZ_VENV": str(venv), "EVAL_OUT": str(tmp_path / "out")}
    for key in ("CAPTIONS", "GENERATE_ARGS"):
        env.pop(key, None)
    run = subprocess.run(["bash", "eval.sh", "toy", str(stage1), "split=val"], cwd=REPO, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 3, run.stderr
    argv = record.read_text().split("\n")
    assert argv[argv.index("--split") + 1] == "val"
    assert argv[argv.index("--out") + 1] == str(tmp_path / "out" / "samples_val")
