"""StoryStream: the JSONL lines load as they are; chunking into stories of N frames keeps the remainder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from src.data.convert import ConversionError, convert, detect_layout
from src.data.convert.storystream import chunk_ranges
from src.data.prepare import main as prepare_main
from src.data.stories import read_split

REPO = Path(__file__).resolve().parent.parent
FACTS = {"name": "storystream_george", "characters": [], "genders": {}, "aliases": {}, "frames_per_story": None}


def write_storystream(root: Path, lengths: dict[str, list[int]], series: str = "") -> Path:
    """SEED-Story's layout: json/{split}.jsonl with {"id", "images", "captions", "orders"}; images under
    image/ (or image/<series>/, as SEED-Story's scripts read them: image/george_full/...)."""
    (root / "json").mkdir(parents=True)
    for split, story_lengths in lengths.items():
        lines = []
        for story, length in enumerate(story_lengths):
            folder = f"{story:06d}_{split}"
            (root / "image" / series / folder).mkdir(parents=True)
            images = [f"{folder}/{folder}_keyframe_{k}.jpg" for k in range(length)]
            for k, rel in enumerate(images):
                Image.new("RGB", (24, 16), (k * 8, story, 0)).save(root / "image" / series / rel, format="JPEG")
            lines.append(json.dumps({"id": story, "images": images, "captions": [f"George {split} {story} beat {k}."
                                                                                 for k in range(length)],
                                     "orders": list(range(length))}))
        (root / "json" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_chunk_ranges_keep_the_remainder():
    assert chunk_ranges(30, 10) == [(0, 10), (10, 20), (20, 30)]
    assert chunk_ranges(32, 10) == [(0, 10), (10, 20), (20, 30), (30, 32)]
    assert chunk_ranges(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert chunk_ranges(30, 0) == [(0, 30)]


def test_chunked_conversion_loads(tmp_path):
    source = write_storystream(tmp_path / "George", {"train": [30, 32], "val": [30]})
    assert detect_layout("storystream_george", source) == "storystream"
    summary = convert("storystream_george", source, tmp_path / "out", FACTS, progress=False,
                      options={"chunk_frames": 10})
    assert summary["stories"] == {"train": 7, "val": 3, "test": 0}
    meta, train = read_split(tmp_path / "out", "train", check_files=True)
    assert meta["frame_size"] == [16, 24] and meta["frames_per_story"] is None
    assert [len(s.images) for s in train] == [10, 10, 10, 10, 10, 10, 2]
    last = train[-1]
    assert last.id == "train_1_3" and last.extra == {"source_id": 1, "orders": [30, 31]}
    assert last.captions == ["George train 1 beat 30.", "George train 1 beat 31."]
    assert last.images[0] == "images/000001_train/000001_train_keyframe_30.jpg"
    assert (tmp_path / "out/images").is_symlink()  # linked, not copied
    assert any("no test.jsonl" in n for n in summary["notes"])


def test_unchunked_and_copied(tmp_path):
    source = write_storystream(tmp_path / "George", {"train": [5], "test": [4]})
    summary = convert("storystream_george", source, tmp_path / "out", FACTS, progress=False,
                      options={"chunk_frames": 0, "images": "copy"})
    _, test = read_split(tmp_path / "out", "test", check_files=True)
    assert summary["stories"] == {"train": 1, "val": 0, "test": 1}
    assert test[0].id == "test_0" and len(test[0].images) == 4
    assert not (tmp_path / "out/images").is_symlink() and (tmp_path / "out" / test[0].images[3]).is_file()


def test_missing_and_corrupt_frames_skip_their_chunk(tmp_path):
    source = write_storystream(tmp_path / "George", {"train": [8]})
    (source / "image/000000_train/000000_train_keyframe_1.jpg").unlink()
    jpeg = source / "image/000000_train/000000_train_keyframe_6.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:100])
    summary = convert("storystream_george", source, tmp_path / "out", FACTS, progress=False,
                      options={"chunk_frames": 3})
    skipped = {s["id"]: s for s in summary["skipped"]}
    assert set(skipped) == {"train_0_0", "train_0_2"} and summary["stories"]["train"] == 1
    assert skipped["train_0_0"]["file"].endswith("000000_train_keyframe_1.jpg")
    assert skipped["train_0_0"]["reason"].startswith("missing file")
    assert "corrupt or truncated image" in skipped["train_0_2"]["reason"]


def test_malformed_line_names_file_line_and_field(tmp_path):
    source = write_storystream(tmp_path / "George", {"train": [3, 3]})
    path = source / "json/train.jsonl"
    lines = path.read_text().splitlines()
    broken = json.loads(lines[1])
    broken["captions"] = broken["captions"][:2]
    path.write_text(lines[0] + "\n" + json.dumps(broken) + "\n")
    with pytest.raises(ConversionError, match=r"train.jsonl:2: field 'captions': 2 captions for 3 images"):
        convert("storystream_george", source, tmp_path / "out", FACTS, progress=False)


def test_cli_reads_chunk_size_from_config_and_overrides(tmp_path, capsys):
    source = write_storystream(tmp_path / "George", {"train": [12]})
    code = prepare_main(["storystream_george", str(source), "--out", str(tmp_path / "out"), "--quiet",
                         "--config", str(REPO / "configs/data/storystream_george.yaml"), "--chunk-frames", "5"])
    assert code == 0
    out = capsys.readouterr().out
    assert "stories: train 3, val 0, test 0" in out and "skipped: 0" in out
    assert [len(s.images) for s in read_split(tmp_path / "out", "train")[1]] == [5, 5, 2]
    assert prepare_main(["storystream_george", str(source), "--out", str(tmp_path / "out"), "--quiet",
                         "--config", str(REPO / "configs/data/storystream_george.yaml"), "--chunk-frames", "5"]) == 0
    assert "already complete" in capsys.readouterr().out


def test_seed_story_layout_converts_without_flags(tmp_path):
    """json/{train,val}.jsonl next to image/<series>/...: the script's one command finds the image root."""
    source = write_storystream(tmp_path / "data", {"train": [12], "val": [10]}, series="george_full")
    (source / "image" / "other_series").mkdir()  # a series folder without these frames is passed over
    proc = subprocess.run(["bash", "scripts/prepare_data.sh", "storystream_george", str(source), "--out",
                           str(tmp_path / "out"), "--quiet"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out/images").resolve() == (source / "image/george_full").resolve()
    _, val = read_split(tmp_path / "out", "val", check_files=True)
    assert [len(s.images) for s in val] == [10]


def test_image_in_two_series_folders_asks_for_the_root(tmp_path):
    source = write_storystream(tmp_path / "data", {"train": [3]}, series="george_full")
    shutil.copytree(source / "image/george_full", source / "image/george_copy")
    with pytest.raises(ConversionError, match=r"several series folders .*pass --image-root"):
        convert("storystream_george", source, tmp_path / "out", FACTS, progress=False)
