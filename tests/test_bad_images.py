"""A story line whose image is missing or cannot be read is one error naming the story file, its line,
the story id, the frame and the image, with exit status 2 from the entry (src/data/transforms.py
story_file, used by every dataset that reads frames: StoryGPT-V's stages, SEED-Story's SFT, story_adapt,
the de-tokenizer's frames and the frozen-feature cache's fingerprint).

The entries run on a copy of the session's toy dataset cut to two training stories, as many items as
one batch, so the broken frame (line 2, frame 1) is read by the first step. (Mismatched images and
captions on a story line: tests/test_story_sft.py and tests/test_data_reader.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from src.data.stories import StoryFormatError, read_split

REPO = Path(__file__).resolve().parent.parent
LINE = 2    # 1-based line of the broken story in train.jsonl
FRAME = 1   # its broken frame
STORIES = 2  # training stories kept in the copy


def bad_copy(toy_root: Path, folder: Path, how: str) -> tuple[Path, str]:
    """A copy of the toy dataset with `STORIES` training stories, whose story on line LINE has frame FRAME
    `missing` or `truncated`. Frames are linked one by one (the broken one is replaced, never the shared
    file); the other folders are linked whole. Returns (root, where the error must point)."""
    folder.mkdir(parents=True)
    for item in toy_root.iterdir():
        if item.name == "images":
            (folder / "images").mkdir()
            for frame in item.iterdir():
                (folder / "images" / frame.name).symlink_to(frame)
        elif item.is_dir():
            (folder / item.name).symlink_to(item)
        elif item.name == "train.jsonl":
            lines = item.read_text().splitlines()[:STORIES]
            (folder / item.name).write_text("\n".join(lines) + "\n")
        else:
            (folder / item.name).write_bytes(item.read_bytes())
    story = json.loads((folder / "train.jsonl").read_text().splitlines()[LINE - 1])
    image = folder / story["images"][FRAME]
    original = image.read_bytes()
    image.unlink()
    if how == "truncated":
        image.write_bytes(original[:len(original) // 2])
    where = f"{folder / 'train.jsonl'}:{LINE}: field 'images': story '{story['id']}' frame {FRAME}: "
    problem = f"{image.resolve()}: cannot read image" if how == "truncated" else f"missing file {image.resolve()}"
    return folder, where + problem


def run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env.pop("STORYVIZ_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, timeout=300, env=env)
    # bytes, decoded here: text=True would turn each carriage return of a progress bar into a new line
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def on_screen(text: str) -> list[str]:
    """The non-blank lines a terminal shows for `text`: a carriage return's segment overwrites the line
    (a progress bar that was cleared leaves nothing)."""
    shown = []
    for line in text.split("\n"):
        screen = ""
        for segment in line.split("\r"):
            screen = segment + screen[len(segment):]
        if screen.strip():
            shown.append(screen.rstrip())
    return shown


def assert_one_line(proc: subprocess.CompletedProcess, expected: str) -> None:
    """Exit 2 and stderr shows one line: the error, naming the story line, the frame and the image."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    lines = on_screen(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), repr(proc.stderr[-4000:])


@pytest.mark.parametrize("how", ["truncated", "missing"])
def test_frame_datasets_name_the_story_line(toy_root, tmp_path, how):
    """Every dataset that reads a story's frames, one item each (no model)."""
    from src.data.datasets import CharacterFrameDataset, StoryDataset
    from src.tasks.detokenizer import DetokenizerFrames
    from src.tasks.frozen_cache import data_digest
    from src.tasks.story_adapt import AdaptItems

    root, expected = bad_copy(toy_root, tmp_path / "toy", how)
    frames = read_split(root, "train")[1][0].num_frames
    broken = (LINE - 1) * frames + FRAME  # the broken frame's row in a frame dataset
    reads = {"StoryDataset": lambda: StoryDataset(root, "train", 32)[LINE - 1],
             "CharacterFrameDataset": lambda: CharacterFrameDataset(root, "train", 32, 16)[broken],
             "DetokenizerFrames": lambda: DetokenizerFrames(root, "train", 32)[broken],
             "AdaptItems": lambda: AdaptItems(root, "train", 16, 32)[(LINE - 1) * (frames - 1) + FRAME - 1]}
    if how == "missing":  # the frozen cache's fingerprint stats every frame before any is read
        reads["data_digest"] = lambda: data_digest(StoryDataset(root, "train", 32))
    else:  # the good frames still read as before (the SDXL time ids from the stored 64 px frame)
        assert DetokenizerFrames(root, "train", 32)[0]["time_ids"].tolist() == [64, 64, 0, 0, 32, 32]
        good = AdaptItems(root, "train", 16, 32)[0]
        assert good["pixel_values"].shape == (2, 3, 16, 16) and good["target_pixels"].shape == (3, 32, 32)
    for name, read in reads.items():
        with pytest.raises(StoryFormatError) as caught:
            read()
        assert str(caught.value).startswith(expected), (name, str(caught.value))
        assert caught.value.line == LINE and caught.value.path == str(root / "train.jsonl")


def test_a_bad_mask_names_the_story_line(toy_root, tmp_path):
    from src.data.datasets import FrameDataset

    root, _ = bad_copy(toy_root, tmp_path / "toy", "truncated")
    story = read_split(root, "train")[1][0]
    k = next(k for k, mask in enumerate(story.masks) if mask)
    (root / "masks").unlink()  # the linked folder: replaced by a copy with one mask of another mode
    (root / "masks").mkdir()
    for mask in (toy_root / "masks").iterdir():
        (root / "masks" / mask.name).symlink_to(mask)
    bad = root / story.masks[k]
    bad.unlink()
    Image.new("RGB", (8, 8)).save(bad)
    with pytest.raises(StoryFormatError, match=rf"train.jsonl:1: field 'masks': story '{story.id}' frame {k}: "
                                               rf"{bad.resolve()}: a mask must be an 8-bit"):
        FrameDataset(root, "train", 32, with_masks=True)[k]


@pytest.mark.parametrize("how", ["truncated", "missing"])
def test_story_sft_entry_names_the_bad_image(toy_root, seed_stack, tmp_path, how):
    """SEED-Story's SFT recipe (StoryDataset) on the tiny stack; the bad frame is read at the first step."""
    root, expected = bad_copy(toy_root, tmp_path / "toy", how)
    proc = run(["src.train", "--config", "configs/story_sft/toy.yaml", f"data.root={root}",
                f"tiny_stack={seed_stack}", f"model.llm={seed_stack}/Llama-2-7b-hf",
                f"model.tokenizer_path={seed_stack}/qwen_vit.safetensors", f"output_root={tmp_path}/outputs",
                "logging.tensorboard=false", "train.validate_every=0", "train.max_steps=1",
                f"train.batch_size={STORIES}", "data.num_workers=0"])
    assert_one_line(proc, expected)


@pytest.mark.parametrize("how, workers", [("truncated", 0), ("missing", 1)])
def test_ldm_entry_names_the_bad_image(toy_root, char_ldm_overrides, tmp_path, how, workers):
    """StoryGPT-V's LDM recipe (CharacterFrameDataset). Read in a DataLoader worker, the error still reaches
    the user as the same one line (src/errors.py worker_error), not a RuntimeError traceback."""
    root, expected = bad_copy(toy_root, tmp_path / "toy", how)
    frames = read_split(root, "train")[1][0].num_frames
    proc = run(["src.train", "--config", "configs/char_ldm/toy.yaml", *char_ldm_overrides, f"data.root={root}",
                "train.max_steps=1", f"train.batch_size={STORIES * frames}", f"data.num_workers={workers}"])
    assert_one_line(proc, expected)
