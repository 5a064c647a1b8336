"""The toy dataset generator (src/data/toy.py): determinism, structure, masks, co-reference captions."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import src.data.toy as toy
from src.data.coref import corefer_caption
from src.data.stories import check_unique_ids, read_split

COUNTS = {"num_train": 6, "num_val": 3, "num_test": 3}


def all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_toy(tmp_path_factory):
    return toy.generate_toy_dataset(tmp_path_factory.mktemp("a") / "toy", seed=0, num_workers=1,
                                    progress=False, **COUNTS)


def test_same_seed_same_bytes_whatever_the_workers(small_toy, tmp_path):
    again = toy.generate_toy_dataset(tmp_path / "toy", seed=0, num_workers=2, progress=False, **COUNTS)
    first, second = all_bytes(small_toy), all_bytes(again)
    assert len(first) == 3 + 1 + 7 + 2 * 4 * 12  # jsonl, meta, references, frames and masks
    assert first == second
    other = all_bytes(toy.generate_toy_dataset(tmp_path / "seed1", seed=1, num_workers=1, progress=False, **COUNTS))
    assert other.keys() == first.keys()
    assert other["train.jsonl"] != first["train.jsonl"]
    assert other["images/train_00000_0.png"] != first["images/train_00000_0.png"]
    assert other["chars/Ada.png"] == first["chars/Ada.png"]  # references do not depend on the seed


def test_structure_and_meta(small_toy):
    check_unique_ids(small_toy)
    meta = json.loads((small_toy / "meta.json").read_text())
    assert meta["frame_size"] == [64, 64] and meta["frames_per_story"] == 4
    assert meta["source"] == "src.data.toy (seed 0)"
    chars = meta["characters"]
    assert len(chars) >= 6 and len(meta["backgrounds"]) >= 4
    assert len({c["shape"] for c in chars}) == len(chars) and len({tuple(c["colour"]) for c in chars}) == len(chars)
    assert {c["gender"] for c in chars} == {"female", "male", "neutral"}
    for split, count in (("train", 6), ("val", 3), ("test", 3)):
        _, stories = read_split(small_toy, split, check_files=True)  # every referenced file exists
        assert [s.id for s in stories] == [f"{split}_{i:05d}" for i in range(count)]
        for story in stories:
            assert story.num_frames == 4 and all(1 <= len(c) <= 3 for c in story.characters)
            for k in range(4):
                for name in story.characters[k]:
                    assert name in story.captions[k]
                assert story.backgrounds[k].split()[0] in story.captions[k]
    reference = np.asarray(Image.open(small_toy / "chars/Ada.png"))
    assert reference.shape == (64, 64, 3) and tuple(reference[32, 32]) == tuple(chars[0]["colour"])
    assert [p.name for p in small_toy.parent.iterdir()] == ["toy"]  # no temporary folder left behind


def test_masks_match_boxes_and_characters(small_toy):
    _, stories = read_split(small_toy, "train")
    for story in stories:
        for k in range(story.num_frames):
            labels = np.asarray(Image.open(small_toy / story.masks[k]))
            frame = np.asarray(Image.open(small_toy / story.images[k]))
            assert labels.dtype == np.uint8 and labels.shape == frame.shape[:2] == (64, 64)
            assert set(np.unique(labels)) <= set(range(len(story.characters[k]) + 1))
            for i, (x0, y0, x1, y1) in enumerate(story.boxes[k]):
                ys, xs = np.nonzero(labels == i + 1)
                assert len(xs) >= 20, f"{story.id} frame {k}: {story.characters[k][i]} hardly visible"
                assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
            # the last-drawn character is never occluded, so its mask fills its box tightly
            ys, xs = np.nonzero(labels == len(story.boxes[k]))
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == story.boxes[k][-1]


def test_coref_captions_follow_the_rule(small_toy):
    _, stories = read_split(small_toy, "train")
    genders = {c.name: c.gender for c in toy.CHARACTERS}
    for story in stories:
        assert story.captions_coref[0] == story.captions[0]
        for k in range(1, 4):
            same_cast = set(story.characters[k]) <= set(story.characters[k - 1])
            assert (story.captions_coref[k] != story.captions[k]) == same_cast
            assert story.captions_coref[k] == corefer_caption(story.captions[k], story.characters[k],
                                                              story.characters[k - 1], genders)


def test_story_statistics_are_in_range():
    """Over many drawn story plans: co-reference in a third to half of frames 1..3, casts recur."""
    plans = [toy.plan_story(np.random.default_rng([0, 0, i])) for i in range(300)]
    rate = np.mean([set(c[k]) <= set(c[k - 1]) for c, _ in plans for k in range(1, 4)])
    assert 1 / 3 <= rate <= 1 / 2
    assert np.mean([len({n for frame in c for n in frame}) <= 4 for c, _ in plans]) == 1.0
    assert 0.6 <= np.mean([b[k] == b[k - 1] for _, b in plans for k in range(1, 4)]) <= 0.95


def test_existing_folder_and_interrupted_run(tmp_path, monkeypatch):
    out = toy.generate_toy_dataset(tmp_path / "toy", num_train=1, num_val=0, num_test=0, num_workers=1, progress=False)
    with pytest.raises(FileExistsError, match="toy already exists"):
        toy.generate_toy_dataset(out, num_train=1, num_val=0, num_test=0, num_workers=1, progress=False)
    toy.main(["--out", str(out), "--overwrite", "--seed", "5", "--num-train", "2", "--num-val", "1",
              "--num-test", "0", "--num-workers", "1"])
    assert json.loads((out / "meta.json").read_text())["toy"]["seed"] == 5
    assert len((out / "train.jsonl").read_text().splitlines()) == 2

    def broken(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(toy, "make_story", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        toy.generate_toy_dataset(tmp_path / "half", num_train=2, num_val=0, num_test=0, num_workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]  # neither 'half' nor a partial folder
