"""The tiny VAE up-weights character pixels: the masks it trains with line up with the frames."""
import json

import numpy as np
from PIL import Image

from src.tools.tiny_vae import list_split_frames, load_character_masks


def test_character_masks_align_with_frames(toy_root):
    frames = list_split_frames(toy_root, "train")
    masks = load_character_masks(toy_root, "train", frames, 64)
    assert masks.shape == (len(frames), 1, 64, 64) and set(masks.unique().tolist()) <= {0, 1}
    story = json.loads((toy_root / "train.jsonl").read_text().splitlines()[3])
    for image, mask in zip(story["images"], story["masks"]):
        i = frames.index(toy_root / image)
        expected = np.asarray(Image.open(toy_root / mask)) > 0
        assert expected.any() and np.array_equal(masks[i, 0].numpy().astype(bool), expected)


def test_a_split_without_masks_trains_unweighted(tmp_path, toy_root):
    lines = [json.loads(l) for l in (toy_root / "val.jsonl").read_text().splitlines()]
    (tmp_path / "val.jsonl").write_text("".join(json.dumps({k: v for k, v in s.items() if k != "masks"}) + "\n"
                                                for s in lines))
    (tmp_path / "images").symlink_to(toy_root / "images")
    assert load_character_masks(tmp_path, "val", list_split_frames(tmp_path, "val"), 64) is None
