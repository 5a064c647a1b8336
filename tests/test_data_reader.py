"""The story format reader (src/data/stories.py), frame/mask loading and the torch datasets."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from src.data.datasets import FrameDataset, StoryDataset, collate_frames
from src.data.stories import Story, StoryFormatError, check_unique_ids, read_meta, read_split, read_stories, resolve
from src.data.toy import generate_toy_dataset
from src.data.transforms import load_frame, load_mask, to_pil

META = {
    "name": "mini", "format_version": 1, "source": "test", "converter_version": "1",
    "frame_size": [8, 8], "frames_per_story": 2,
    "characters": [{"name": "Ada", "gender": "female", "reference": "chars/Ada.png"},
                   {"name": "Bob", "gender": "male"}],
    "backgrounds": ["beach", "forest"],
}
GOOD = {"id": "s0", "images": ["images/a.png", "images/b.png"], "captions": ["Ada ran.", "Ada sat."],
        "captions_coref": ["Ada ran.", "She sat."], "characters": [["Ada"], ["Ada", "Bob"]],
        "boxes": [[[0, 0, 4, 4]], [[0, 0, 4, 4], [4, 4, 8, 8]]], "masks": ["masks/a.png", None],
        "backgrounds": ["beach", None]}


def write_dataset(root, lines, meta=META):
    root.mkdir(parents=True, exist_ok=True)
    (root / "meta.json").write_text(json.dumps(meta))
    (root / "train.jsonl").write_text("".join(line if isinstance(line, str) else json.dumps(line) + "\n" for line in lines))
    return root


def line_with(**changes):
    line = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if value is None:
            del line[key]
        else:
            line[key] = value
    return line


# ---------------------------------------------------------------------------------------------- reader


def test_good_line_round_trips(tmp_path):
    extra = line_with(id="s1", orders=[0, 1])  # StoryStream key: kept, ignored
    root = write_dataset(tmp_path / "d", [GOOD, extra])
    meta, stories = read_split(root, "train")
    assert meta["characters"][1]["reference"] is None  # optional reference defaults to None
    first, second = stories
    assert isinstance(first, Story) and first.num_frames == 2 and first.line == 1
    assert first.to_json() == GOOD
    assert second.extra == {"orders": [0, 1]} and second.to_json() == extra
    assert resolve(root, first.images[0]) == (root / "images/a.png").resolve()


def test_storystream_line_without_meta(tmp_path):
    path = tmp_path / "stories.jsonl"
    path.write_text(json.dumps({"id": "x", "images": ["0.png"], "captions": ["a cat"], "orders": [0]}) + "\n")
    (story,) = read_stories(path)
    assert story.characters is None and story.boxes is None and story.extra == {"orders": [0]}


@pytest.mark.parametrize("line, field, message", [
    ('{"id": "s1", "images": [', None, "invalid JSON"),
    (line_with(captions=None), "captions", "missing required field"),
    (line_with(captions=["only one"]), "captions", "has 1 entries but 'images' has 2"),
    (line_with(characters=[["Ada"], ["Zed"]]), "characters", "frame 1: unknown character 'Zed'"),
    (line_with(boxes=[[[0, 0, 4, 4]], [[0, 0, 4, 4]]]), "boxes", "frame 1 has 1 boxes for 2 characters"),
    (line_with(boxes=[[[0, 0, 4, 4]], [[0, 0, 4, 4], [4, 4, 9, 8]]]), "boxes", "leaves the 8x8 frame"),
    (line_with(backgrounds=["moon", None]), "backgrounds", "frame 0: unknown background 'moon'"),
    (line_with(images=["a.png", "b.png", "c.png"], captions=["a", "b", "c"]), "images", "frames_per_story=2"),
    (line_with(id=7), "id", "must be a non-empty str"),
    (line_with(characters=None), "boxes", "lacks"),
    (line_with(masks=["/abs/a.png", None]), "masks", "must be relative"),
    ("\n", None, "empty line"),
])
def test_bad_line_names_file_line_and_field(tmp_path, line, field, message):
    root = write_dataset(tmp_path / "d", [GOOD, line])
    with pytest.raises(StoryFormatError) as caught:
        read_split(root, "train")
    err = caught.value
    assert err.path == str(root / "train.jsonl") and err.line == 2 and err.field == field
    assert message in str(err)
    prefix = f"{root / 'train.jsonl'}:2: " + (f"field '{field}': " if field else "")
    assert str(err).startswith(prefix)


def test_duplicate_ids_within_and_across_splits(tmp_path):
    root = write_dataset(tmp_path / "d", [GOOD, GOOD])
    with pytest.raises(StoryFormatError, match=r"train.jsonl:2: field 'id': duplicate id 's0' \(first on line 1\)"):
        read_split(root, "train")
    root = write_dataset(tmp_path / "e", [GOOD])
    (root / "val.jsonl").write_text(json.dumps(GOOD) + "\n")
    with pytest.raises(StoryFormatError, match=r"val.jsonl:1: field 'id': id 's0' also used at .*train.jsonl:1"):
        check_unique_ids(root, splits=("train", "val"))


def test_check_files_names_story_field_and_path(tmp_path):
    root = write_dataset(tmp_path / "d", [GOOD])
    (root / "images").mkdir()
    (root / "chars").mkdir()
    (root / "chars/Ada.png").write_bytes(b"")
    (root / "images/a.png").write_bytes(b"")
    missing_frame = r"train.jsonl:1: field 'images': story 's0' frame 1: missing file .*b.png"
    with pytest.raises(StoryFormatError, match=missing_frame):
        read_split(root, "train", check_files=True)
    (root / "images/b.png").write_bytes(b"")
    with pytest.raises(StoryFormatError, match=r"field 'masks': story 's0' frame 0: missing file .*masks/a.png"):
        read_split(root, "train", check_files=True)
    (root / "chars/Ada.png").unlink()
    with pytest.raises(StoryFormatError, match=r"meta.json: field 'characters\[0\].reference': missing file"):
        read_split(root, "train", check_files=True)


@pytest.mark.parametrize("change, field, message", [
    ({"name": None}, "name", "missing required key"),
    ({"frame_size": "64"}, "frame_size", "must be a list"),
    ({"frame_size": [64]}, "frame_size", "[height, width]"),
    ({"format_version": 2}, "format_version", "unsupported version 2"),
    ({"characters": [{"name": "Ada", "gender": "girl"}]}, "characters[0].gender", "got 'girl'"),
    ({"characters": [{"name": "Ada", "gender": "female"}, {"name": "ada", "gender": "female"}]},
     "characters[1].name", "duplicate character name 'ada'"),
    ({"backgrounds": ["beach", "beach"]}, "backgrounds[1]", "duplicate background 'beach'"),
])
def test_bad_meta_names_key(tmp_path, change, field, message):
    meta = {k: v for k, v in META.items() if change.get(k, 0) is not None}
    meta.update({k: v for k, v in change.items() if v is not None})
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StoryFormatError) as caught:
        read_meta(tmp_path)
    assert caught.value.field == field and message in str(caught.value)
    assert str(caught.value).startswith(f"{tmp_path / 'meta.json'}: field '{field}'")


def test_missing_and_broken_meta(tmp_path):
    with pytest.raises(StoryFormatError, match=r"meta.json: missing meta.json"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text('{"name": ')
    with pytest.raises(StoryFormatError, match=r"meta.json:1: invalid JSON"):
        read_meta(tmp_path)


# ---------------------------------------------------------------------------------------------- transforms


def test_frame_and_mask_loading(tmp_path):
    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    pixels[:, :, 0] = 255
    pixels[1, 2] = (0, 128, 255)
    Image.fromarray(pixels).save(tmp_path / "f.png")
    frame = load_frame(tmp_path / "f.png", (4, 6))
    assert frame.shape == (3, 4, 6) and frame.dtype == torch.float32
    assert frame[0, 0, 0] == 1.0 and frame[1, 0, 0] == -1.0 and frame[2, 1, 2] == 1.0
    assert np.array_equal(np.asarray(to_pil(frame)), pixels)  # exact round trip
    assert load_frame(tmp_path / "f.png", 2).shape == (3, 2, 2)  # resized

    labels = np.array([[0, 1], [2, 2]], dtype=np.uint8)
    Image.fromarray(labels).save(tmp_path / "m.png")
    mask = load_mask(tmp_path / "m.png", 4)
    assert mask.dtype == torch.long and mask.shape == (4, 4)
    assert mask.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]]  # nearest, labels kept


def test_bad_image_files_are_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(StoryFormatError, match=r"broken.png: cannot read image"):
        load_frame(tmp_path / "broken.png", 8)
    with pytest.raises(FileNotFoundError, match=r"absent.png"):
        load_frame(tmp_path / "absent.png", 8)
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb_mask.png")
    with pytest.raises(StoryFormatError, match=r"rgb_mask.png: a mask must be an 8-bit single-channel PNG"):
        load_mask(tmp_path / "rgb_mask.png", 4)


# ---------------------------------------------------------------------------------------------- datasets


@pytest.fixture(scope="module")
def small_toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "toy"
    return generate_toy_dataset(root, seed=3, num_train=5, num_val=2, num_test=2, num_workers=1, progress=False)


def test_frame_dataset_items(small_toy):
    data = FrameDataset(small_toy, "train", 32, with_masks=True)
    assert len(data) == 5 * 4 and data.max_chars == max(len(c) for s in data.stories for c in s.characters)
    item = data[5]  # story 1, frame 1
    story = data.stories[1]
    assert item["story_id"] == story.id and item["frame_index"] == 1
    assert item["caption"] == story.captions[1] and item["characters"] == story.characters[1]
    assert item["pixel_values"].shape == (3, 32, 32)
    assert -1.0 <= item["pixel_values"].min() < item["pixel_values"].max() <= 1.0
    names = [c["name"] for c in data.meta["characters"]]
    assert item["char_labels"].tolist() == [float(n in story.characters[1]) for n in names]
    assert item["bg_label"] == data.meta["backgrounds"].index(story.backgrounds[1])
    assert item["char_masks"].shape == (data.max_chars, 32, 32) and item["num_chars"] == len(story.characters[1])
    for i in range(data.max_chars):  # one non-empty channel per character of the frame, zero padding after
        assert (item["char_masks"][i].sum() > 0) == (i < item["num_chars"])
    coref = FrameDataset(small_toy, "train", 32, caption_field="captions_coref")
    assert coref[5]["caption"] == story.captions_coref[1] and coref[5]["caption_original"] == story.captions[1]

    batch = collate_frames([data[0], data[1], data[2]])
    assert batch["pixel_values"].shape == (3, 3, 32, 32) and batch["bg_label"].dtype == torch.long
    assert batch["frame_index"].tolist() == [0, 1, 2] and batch["story_id"] == [data.stories[0].id] * 3
    assert isinstance(batch["characters"], list) and len(batch["characters"]) == 3
    assert torch.equal(data[3]["pixel_values"], data[3]["pixel_values"])  # deterministic


def test_story_dataset_items(small_toy):
    data = StoryDataset(small_toy, "val", 64, caption_field="captions_coref", with_masks=True)
    item = data[1]
    story = data.stories[1]
    assert item["pixel_values"].shape == (4, 3, 64, 64) and item["captions"] == story.captions_coref
    assert item["captions_original"] == story.captions and item["characters"] == story.characters
    assert item["char_labels"].shape == (4, 7) and item["bg_labels"].shape == (4,)
    assert item["char_masks"].shape[:2] == (4, data.max_chars)
    assert item["num_chars"].tolist() == [len(c) for c in story.characters]
    batch = collate_frames([data[0], data[1]])
    assert batch["pixel_values"].shape == (2, 4, 3, 64, 64) and len(batch["captions"]) == 2


def test_dataset_errors_name_the_story(tmp_path):
    root = write_dataset(tmp_path / "d", [line_with(captions_coref=None)])
    no_coref = r"train.jsonl:1: field 'captions_coref': story 's0' has no captions_coref"
    with pytest.raises(StoryFormatError, match=no_coref):
        FrameDataset(root, "train", 8, caption_field="captions_coref")
    no_mask = r"field 'masks': story 's0' frame 1 has characters \['Ada', 'Bob'\] but no mask"
    with pytest.raises(StoryFormatError, match=no_mask):
        FrameDataset(root, "train", 8, with_masks=True)
    with pytest.raises(ValueError, match="caption_field must be one of"):
        FrameDataset(root, "train", 8, caption_field="text")
    with pytest.raises(ValueError, match="'pixel_values' has different shapes"):
        collate_frames([{"pixel_values": torch.zeros(3, 2, 2)}, {"pixel_values": torch.zeros(3, 4, 4)}])
