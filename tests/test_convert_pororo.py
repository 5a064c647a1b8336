"""PororoSV converters: the StoryGAN release, StoryGPT-V's processed release and ARLDM's HDF5.

Fixtures are written in each exact layout (np.save'd dicts and byte-string arrays, PNG strips, json,
pkl, HDF5) and converted; results are read back with src.data.stories.read_split.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from src.data.convert import convert, detect_layout
from src.data.prepare import load_facts
from src.data.stories import read_split
from tests.test_convert_flintstones import png_bytes

REPO = Path(__file__).resolve().parent.parent
FACTS, _ = load_facts(REPO / "configs/data/pororo.yaml", "pororo")
SIZE = 16
LABEL_ORDER = ["Pororo", "Loopy", "Eddy", "Harry", "Poby", "Tongtong", "Crong", "Rody", "Petty"]
# 8 consecutive frames of one episode: (caption, characters)
FRAMES = [("Pororo and Crong play.", ["Pororo", "Crong"]), ("Pororo and Crong laugh.", ["Pororo", "Crong"]),
          ("Loopy cooks.", ["Loopy"]), ("Loopy eats with Eddy.", ["Loopy", "Eddy"]), ("Loopy and Eddy talk.", ["Loopy", "Eddy"]),
          ("Poby skis.", ["Poby"]), ("Poby falls.", ["Poby"]), ("Petty sings.", ["Petty"])]
KEY = "Pororo_ENGLISH1_1/Pororo_ENGLISH1_1_ep1/{}"


def strip(index: int, n: int = 3) -> np.ndarray:
    """A clip as StoryGAN stores it: n square frames stacked vertically; frame j coloured (index, j)."""
    frames = [np.full((SIZE, SIZE, 3), (20 * index, 60 + j, 7), np.uint8) for j in range(n)]
    return np.concatenate(frames, axis=0)


def write_storygan(root: Path) -> Path:
    (root / "Pororo_ENGLISH1_1/Pororo_ENGLISH1_1_ep1").mkdir(parents=True)
    for i in range(len(FRAMES)):
        Image.fromarray(strip(i)).save(root / (KEY.format(i) + ".png"))
    descriptions = {KEY.format(i): [caption, "another description"] for i, (caption, _) in enumerate(FRAMES)}
    labels = {KEY.format(i): np.array([float(n in chars) for n in LABEL_ORDER]) for i, (_, chars) in enumerate(FRAMES)}
    np.save(root / "descriptions.npy", descriptions)
    np.save(root / "labels.npy", labels)
    np.save(root / "img_cache4.npy", np.array([(KEY.format(i) + ".png").encode() for i in range(4)]))
    np.save(root / "following_cache4.npy",
            np.array([[(KEY.format(j) + ".png").encode() for j in range(i + 1, i + 5)] for i in range(4)]))
    ids = np.empty(3, dtype=object)
    ids[0], ids[1], ids[2] = np.array([1, 0]), np.array([2]), np.array([3])
    np.save(root / "train_seen_unseen_ids.npy", ids, allow_pickle=True)
    return root


def test_storygan_converts_and_loads(tmp_path):
    source = write_storygan(tmp_path / "pororo_png")
    assert detect_layout("pororo", source) == "storygan"
    summary = convert("pororo", source, tmp_path / "out", FACTS, progress=False)
    assert summary["stories"] == {"train": 2, "val": 1, "test": 1}
    meta, train = read_split(tmp_path / "out", "train", check_files=True)
    genders = {c["name"]: c["gender"] for c in meta["characters"]}
    assert genders["Loopy"] == "female" and genders["Petty"] == "female" and genders["Crong"] == "male"
    story = train[0]  # split ids are sorted: story 0 first
    assert story.id == "Pororo_ENGLISH1_1_Pororo_ENGLISH1_1_ep1_0" and story.extra["source_id"] == KEY.format(0)
    assert story.captions == [c for c, _ in FRAMES[:4]]  # the first description of each frame
    assert story.characters == [["Pororo", "Crong"], ["Pororo", "Crong"], ["Loopy"], ["Loopy", "Eddy"]]
    pixels = np.asarray(Image.open(tmp_path / "out" / story.images[2]))
    assert pixels.shape == (SIZE, SIZE, 3) and pixels[0, 0].tolist() == [40, 61, 7]  # middle of 3 frames
    assert story.captions_coref[1] == "They laugh."
    assert story.captions_coref[3] == "Loopy eats with Eddy."  # Eddy is new in frame 3
    _, val = read_split(tmp_path / "out", "val")
    assert val[0].captions_coref[2] == "They talk."
    assert any("100% of the character names" in n for n in summary["notes"])
    # no release portraits for Pororo: built from the first train frame where each is alone (whole frame)
    refs = {c["name"]: c["reference"] for c in meta["characters"]}
    assert refs["Loopy"] == "chars/Loopy.png" and refs["Petty"] is None
    assert np.asarray(Image.open(tmp_path / "out/chars/Loopy.png"))[0, 0].tolist() == [40, 61, 7]


def test_storygan_wrong_label_order_is_flagged_and_corrupt_png_listed(tmp_path):
    source = write_storygan(tmp_path / "pororo_png")
    (source / (KEY.format(4) + ".png")).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    reversed_order = list(reversed(LABEL_ORDER))
    summary = convert("pororo", source, tmp_path / "out", FACTS, progress=False,
                      options={"label_order": reversed_order})
    assert any("LOW: check --label-order" in n for n in summary["notes"])
    skipped = {s["id"]: s for s in summary["skipped"]}
    assert set(skipped) == {"Pororo_ENGLISH1_1_Pororo_ENGLISH1_1_ep1_1", "Pororo_ENGLISH1_1_Pororo_ENGLISH1_1_ep1_2",
                            "Pororo_ENGLISH1_1_Pororo_ENGLISH1_1_ep1_3"}
    skip = skipped["Pororo_ENGLISH1_1_Pororo_ENGLISH1_1_ep1_2"]
    assert skip["file"] == str(source / (KEY.format(4) + ".png")) and "corrupt or truncated image" in skip["reason"]


def test_storygptv_pororo_builds_references_from_largest_lone_box(tmp_path):
    root = tmp_path / "pororo"
    (root / "video_frames_sampled_4x").mkdir(parents=True)
    clips = [f"pororo_clip_{i}" for i in range(len(FRAMES))]
    annotations = {}
    for i, (caption, chars) in enumerate(FRAMES):
        extent = 16 + 12 * i  # box side at 128 px grows with i, so the largest lone box is well defined
        segments = [{"id": s + 1, "word": name.lower(), "start": 0, "end": 1, "bbox": [0, 0, extent, extent]}
                    for s, name in enumerate(chars)]
        annotations[clips[i]] = {"captions": [caption, "other"], "tokens": [], "segments": segments}
        frames = np.stack([np.full((64, 64, 3), (i, j, 0), np.uint8) for j in range(2)])
        np.save(root / "video_frames_sampled_4x" / f"{clips[i]}.npy", frames)
    (root / "cleaned_annotations.json").write_text(json.dumps(annotations))
    (root / "split.json").write_text(json.dumps({"train": clips[:4], "val": [], "test": []}))
    (root / "following_cache3.pkl").write_bytes(pickle.dumps({c: clips[i + 1:i + 4] for i, c in enumerate(clips[:5])}))
    summary = convert("pororo", root, tmp_path / "out", FACTS, progress=False, options={"masks": False})
    meta, train = read_split(tmp_path / "out", "train", check_files=True)
    assert train[0].captions[0] == "Pororo and Crong play." and train[0].masks is None
    refs = {c["name"]: c["reference"] for c in meta["characters"]}
    assert refs["Loopy"] == "chars/Loopy.png"
    # Loopy is alone in clip 2 only (extent 40 at 128 px -> 20 px at 64 px)
    assert Image.open(tmp_path / "out/chars/Loopy.png").size == (20, 20)
    # Poby is alone in clips 5 (38 px) and 6 (44 px): the larger box wins over the earlier frame
    assert Image.open(tmp_path / "out/chars/Poby.png").size == (44, 44)
    assert any("reference 'Poby' built from train story pororo_clip_3 frame 3" in n for n in summary["notes"])


def test_arldm_pororo_converts(tmp_path):
    path = tmp_path / "arldm/pororo.h5"
    path.parent.mkdir()
    with h5py.File(path, "w") as f:
        for split in ("train", "val", "test"):
            group = f.create_group(split)
            images = [group.create_dataset(f"image{k}", (1,), dtype=h5py.vlen_dtype(np.dtype("uint8"))) for k in range(5)]
            text = group.create_dataset("text", (1,), dtype=h5py.string_dtype(encoding="utf-8"))
            for k in range(5):
                images[k][0] = png_bytes(strip(k, n=5)[..., ::-1])
            text[0] = "|".join(c for c, _ in FRAMES[2:7])
    summary = convert("pororo", path.parent, tmp_path / "out", FACTS, progress=False)
    assert summary["stories"] == {"train": 1, "val": 1, "test": 1}
    _, test = read_split(tmp_path / "out", "test", check_files=True)
    assert test[0].id == "test_000000" and test[0].characters == [["Loopy"], ["Loopy", "Eddy"], ["Loopy", "Eddy"], ["Poby"]]
    assert test[0].captions_coref[2] == "They talk."
    assert np.asarray(Image.open(tmp_path / "out" / test[0].images[1]))[0, 0].tolist() == [20, 62, 7]
