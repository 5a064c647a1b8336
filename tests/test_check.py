"""The dataset checker (python -m src.data.check): a sound folder passes, each defect is named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from src.data.check import check_dataset, main
from src.data.convert import convert
from tests.test_convert_flintstones import FACTS, write_storygptv


def write_dataset(root: Path) -> Path:
    """A hand-written 3-story dataset: 16x16 frames, one mask, one reference."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "chars").mkdir()
    for i in range(6):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(root / f"images/f{i}.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[2:8, 2:8] = 1
    Image.fromarray(mask).save(root / "masks/f0.png")
    Image.new("RGB", (8, 8)).save(root / "chars/Ada.png")
    meta = {"name": "t", "format_version": 1, "frame_size": [16, 16], "frames_per_story": 2,
            "characters": [{"name": "Ada", "gender": "female", "reference": "chars/Ada.png"}], "backgrounds": []}
    (root / "meta.json").write_text(json.dumps(meta))

    def line(sid, a, b, masks=None):
        story = {"id": sid, "images": [f"images/f{a}.png", f"images/f{b}.png"], "captions": ["Ada.", "Ada."],
                 "characters": [["Ada"], ["Ada"]]}
        if masks:
            story["masks"] = masks
        return json.dumps(story) + "\n"

    (root / "train.jsonl").write_text(line("s0", 0, 1, ["masks/f0.png", None]) + line("s1", 2, 3))
    (root / "val.jsonl").write_text(line("s2", 4, 5))
    (root / "test.jsonl").write_text("")
    return root


def test_sound_dataset_passes(tmp_path):
    report = check_dataset(write_dataset(tmp_path / "d"))
    assert report.ok, report.errors
    assert report.stories == {"train": 2, "val": 1, "test": 0} and report.files_checked == 7


def test_each_defect_is_named(tmp_path):
    root = write_dataset(tmp_path / "d")
    (root / "images/f1.png").unlink()                                   # missing frame
    Image.new("RGB", (20, 16)).save(root / "images/f2.png")             # wrong size
    (root / "images/f3.png").write_bytes((root / "images/f4.png").read_bytes()[:40])  # corrupt PNG
    Image.fromarray(np.full((16, 16), 2, np.uint8)).save(root / "masks/f0.png")       # label 2, 1 character
    (root / "test.jsonl").write_text((root / "val.jsonl").read_text())  # s2 also in test
    report = check_dataset(root)
    errors = "\n".join(report.errors)
    assert not report.ok and len(report.errors) == 5, errors
    assert f"story 's0': frame 1: missing file {root / 'images/f1.png'}" in errors
    assert "story 's1': frame 0: images/f2.png is 16x20, meta.json frame_size is 16x16" in errors
    assert f"story 's1': frame 1: {root / 'images/f3.png'}: unreadable image" in errors
    assert "story 's0': mask 0: masks/f0.png has label 2 but the frame has 1 characters" in errors
    assert f"{root / 'test.jsonl'}:1: story 's2': id also in split val (splits overlap)" in errors
    assert any("frame files are used by stories of several splits" in w for w in report.warnings)


def test_misaligned_mask_and_unknown_character(tmp_path, capsys):
    root = write_dataset(tmp_path / "d")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks/f0.png")
    text = (root / "val.jsonl").read_text().replace('[["Ada"], ["Ada"]]', '[["Ada"], ["Bob"]]')
    (root / "val.jsonl").write_text(text)
    assert main([str(root), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "mask 0: masks/f0.png is 8x8, its frame is 16x16 (not aligned)" in out
    assert f"{root / 'val.jsonl'}:1: field 'characters': frame 1: unknown character 'Bob'" in out
    assert "FAILED: 2 errors" in out


def test_converted_release_passes(tmp_path, capsys):
    source = write_storygptv(tmp_path / "flintstones")
    convert("flintstones", source, tmp_path / "out", FACTS, progress=False)
    assert main([str(tmp_path / "out"), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")
