"""The story file (src/data/story_file.py, docs/story_format.md "Your own story: the story file"): the
examples work on the toy runs' data, every bad input is one error naming the file and the key, and a
written story file reads back as the same story."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from src.data.story_file import (
    Character,
    Opening,
    StoryFileError,
    StoryRequest,
    mentioned_characters,
    read_story_file,
    reference_images,
    write_story_file,
)
from src.errors import run_entry

REPO = Path(__file__).resolve().parent.parent


def tiny_png(path: Path, colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), colour, dtype=np.uint8)).save(path)
    return path


def write(tmp_path: Path, text: str, name: str = "story.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def toy_meta_root(tmp_path_factory) -> Path:
    """The toy dataset's meta.json and references (one story: the characters are what matters here)."""
    from src.data.toy import generate_toy_dataset

    return generate_toy_dataset(tmp_path_factory.mktemp("toy") / "toy", num_train=1, num_val=0, num_test=0,
                                num_workers=1, progress=False)


# ----------------------------------------------------------------------------------------------
# the examples


def test_storygptv_example_is_a_toy_story_with_coreference_captions(toy_meta_root):
    from src.data.coref import corefer_story
    from src.data.toy import GENDERS

    story = read_story_file(REPO / "examples" / "storygptv_toy.yaml")
    assert story.opening is None and story.beats is None and story.seed_story_mode is None
    assert list(story.characters) == ["Ada", "Bob", "Cleo"]
    assert all(char.image is None for char in story.characters.values())
    # every name is the toy dataset's, so the run's references stand in for the omitted images
    refs = reference_images(story, toy_meta_root)
    assert refs == {name: (toy_meta_root / "chars" / f"{name}.png").resolve() for name in story.characters}
    # the captions are what the toy data's co-reference rule makes of these named captions
    named = ["Ada and Bob walked on the beach.", "Ada and Bob played on the beach.", "Ada met Cleo in the forest.",
             "Bob waited in the city.", "Bob looked around at night."]
    cast = [["Ada", "Bob"], ["Ada", "Bob"], ["Ada", "Cleo"], ["Bob"], ["Bob"]]
    assert story.frames == corefer_story(named, cast, GENDERS)
    assert story.mentions() == [["Ada", "Bob"], [], ["Ada", "Cleo"], ["Bob"], []]


def test_seed_story_example_opens_on_the_toy_long_story_it_describes(tmp_path):
    """The example's opening image is data/toy_story's test_00000 frame 0: drawn here by the toy generator
    with configs/data/toy_story.yaml's values, its characters and place are the opening text's."""
    from src.data.toy import make_story

    cfg = yaml.safe_load((REPO / "configs" / "data" / "toy_story.yaml").read_text())
    root = tmp_path / "data" / "toy_story"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    line = make_story(cfg["toy"]["seed"], "test", 0, cfg["image_size"], root, cfg["toy"]["story_frames"], long=True)
    (tmp_path / "examples").mkdir()
    example = Path(shutil.copy(REPO / "examples" / "seed_story_toy.yaml", tmp_path / "examples"))

    story = read_story_file(example)
    assert story.opening.image == (root / line["images"][0]).resolve()
    assert story.opening.text == line["captions"][0]
    assert list(story.characters) == line["characters"][0]
    assert story.frames is None and story.beats == 6 and story.seed_story_mode == "story"


def test_seed_story_example_without_the_toy_data_names_the_missing_image(tmp_path):
    (tmp_path / "examples").mkdir()
    example = Path(shutil.copy(REPO / "examples" / "seed_story_toy.yaml", tmp_path / "examples"))
    with pytest.raises(StoryFileError, match=r"seed_story_toy.yaml: key 'opening.image': "
                                             r"\.\./data/toy_story/images/test_00000_0.png: no such file"):
        read_story_file(example)


# ----------------------------------------------------------------------------------------------
# bad input: one error naming the file and the key


BAD = {
    "missing image": ("characters:\n  Fred: {image: refs/fred.png}\nframes: [Fred ran.]\n",
                      "characters.Fred.image", "refs/fred.png: no such file"),
    "unknown key": ("frame: [Ada ran.]\n", "frame", "unknown key (known: title, characters, frames, opening, beats)"),
    "unknown character key": ("characters:\n  Ada: {img: a.png}\nframes: [Ada ran.]\n", "characters.Ada.img",
                              "unknown key (known: image, description)"),
    "no frames": ("frames: []\n", "frames", "empty"),
    "frames not a list": ("frames: Ada ran.\n", "frames", "must be a list of captions, got str"),
    "caption not text": ("frames: [Ada ran., 3]\n", "frames[1]", "must be a non-empty string, got int 3"),
    "empty caption": ("frames: [Ada ran., '  ']\n", "frames[1]", "must be a non-empty string"),
    "no characters": ("characters:\nframes: [Ada ran.]\n", "characters", "empty"),
    "characters not a mapping": ("characters: [Ada, Bob]\nframes: [Ada ran.]\n", "characters", "must be a mapping"),
    "name YAML reads as a bool": ("characters:\n  yes:\nframes: [Ada ran.]\n", "characters.True",
                                  "must be a non-empty string, got bool True (quote a name"),
    "two names, same words": ("characters:\n  Ada:\n  ada.:\nframes: [Ada ran.]\n", "characters.Ada",
                              "same words as character 'ada.'"),
    "a name without letters": ("characters:\n  '!!':\nframes: [Ada ran.]\n", "characters.!!", "has no letter or digit"),
    "title not text": ("title: [a, b]\nframes: [Ada ran.]\n", "title", "must be a non-empty string, got list"),
    "beats not a number": ("opening: {text: Ada ran., image: a.png}\nbeats: six\n", "beats",
                           "must be a positive integer, got str 'six'"),
    "beats zero": ("opening: {text: Ada ran., image: a.png}\nbeats: 0\n", "beats", "must be a positive integer"),
    "opening without beats": ("opening: {text: Ada ran., image: a.png}\n", "beats", "missing"),
    "beats without opening": ("frames: [Ada ran.]\nbeats: 3\n", "beats", "needs an opening"),
    "beats against frames": ("frames: [Ada ran., Ada sat.]\nopening: {text: Ada woke., image: a.png}\nbeats: 3\n",
                             "beats", "is 3 but there are 2 frames"),
    "opening without image": ("opening: {text: Ada ran.}\nbeats: 2\n", "opening.image", "missing"),
    "opening not a mapping": ("opening: a.png\nbeats: 2\n", "opening", "must be a mapping with keys text, image"),
    "opening text empty": ("opening: {text: '', image: a.png}\nbeats: 2\n", "opening.text", "must be a non-empty"),
    "opening image unreadable": ("opening: {text: Ada ran., image: notes.png}\nbeats: 2\n", "opening.image",
                                 "notes.png: cannot read image"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_file_and_key(tmp_path, case):
    text, key, reason = BAD[case]
    tiny_png(tmp_path / "a.png")
    (tmp_path / "notes.png").write_text("not an image")
    path = write(tmp_path, text)
    with pytest.raises(StoryFileError) as caught:
        read_story_file(path)
    assert str(caught.value).startswith(f"{path}: key '{key}': "), str(caught.value)
    assert reason in str(caught.value)
    assert caught.value.key == key and caught.value.path == str(path)


@pytest.mark.parametrize("text,reason", [
    ("", "empty story file"),
    ("title: Nothing happens\n", "empty story: give frames (StoryGPT-V) or an opening and beats (SEED-Story)"),
    ("- Ada ran.\n", "must be a YAML mapping with keys title, characters, frames, opening, beats, got list"),
])
def test_an_empty_story_is_an_error_naming_the_file(tmp_path, text, reason):
    path = write(tmp_path, text)
    with pytest.raises(StoryFileError) as caught:
        read_story_file(path)
    assert str(caught.value).startswith(f"{path}: {reason}"), str(caught.value)


def test_broken_yaml_and_duplicate_names_give_the_line(tmp_path):
    path = write(tmp_path, "characters:\n  Ada:\n  Bob:\n  Ada:\nframes: [Ada ran.]\n")
    with pytest.raises(StoryFileError, match=rf"^{path}:4: not valid YAML: duplicate key 'Ada'"):
        read_story_file(path)
    path = write(tmp_path, "frames: [Ada ran.\ntitle: x\n", "broken.yaml")
    with pytest.raises(StoryFileError, match=rf"^{path}:\d+: not valid YAML"):
        read_story_file(path)
    with pytest.raises(FileNotFoundError, match="no such story file"):
        read_story_file(tmp_path / "absent.yaml")


def test_an_entry_reports_a_bad_story_file_as_one_line_and_exit_2(tmp_path, capsys):
    path = write(tmp_path, "characters:\n  Fred: {image: fred.png}\nframes: [Fred ran.]\n")
    assert run_entry(lambda argv: read_story_file(path), []) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: key 'characters.Fred.image': fred.png: no such file")


# ----------------------------------------------------------------------------------------------
# good input


def test_paths_are_relative_to_the_story_file_and_both_pipelines_read_one_file(tmp_path):
    tiny_png(tmp_path / "refs" / "fred.png")
    tiny_png(tmp_path / "beach.png", (30, 30, 200))
    (tmp_path / "stories").mkdir()
    path = write(tmp_path / "stories", (
        "title: Fred at the beach\n"
        "characters:\n"
        "  Fred: {image: ../refs/fred.png, description: a man in an orange shirt}\n"
        "  Mr. Slate:\n"
        "frames: [Fred and mr slate walked on the beach., He waved.]\n"
        "opening: {text: Fred was on the beach., image: ../beach.png}\n"))
    story = read_story_file(path)
    assert story.characters == {"Fred": Character("Fred", (tmp_path / "refs" / "fred.png").resolve(),
                                                  "a man in an orange shirt"),
                                "Mr. Slate": Character("Mr. Slate", None, None)}
    assert story.opening == Opening("Fred was on the beach.", (tmp_path / "beach.png").resolve())
    assert story.beats == 2 and story.seed_story_mode == "vis" and story.source == path
    assert story.mentions() == [["Fred", "Mr. Slate"], []]


def test_the_title_defaults_to_the_file_name(tmp_path):
    assert read_story_file(write(tmp_path, "frames: [Ada ran.]\n", "quick_one.yaml")).title == "quick_one"


def test_a_written_story_file_reads_back_as_the_same_story(tmp_path):
    request = StoryRequest(
        title="Two friends", frames=["Fred met Wilma.", "They laughed."],
        characters={"Fred": Character("Fred", tiny_png(tmp_path / "refs" / "fred.png"), "a caveman"),
                    "Wilma": Character("Wilma")},
        opening=Opening("Fred woke up.", tiny_png(tmp_path / "refs" / "cave.png")), beats=2)
    path = write_story_file(request, tmp_path / "out" / "story.yaml")
    text = path.read_text()
    assert "image: ../refs/fred.png" in text and "beats" not in text  # relative paths; beats = len(frames)
    back = read_story_file(path)
    assert (back.title, back.characters, back.frames, back.opening, back.beats) == \
           (request.title, request.characters, request.frames, request.opening, request.beats)
    with pytest.raises(FileExistsError):
        write_story_file(request, path)


def test_reference_images_come_from_the_story_or_the_runs_dataset(tmp_path, toy_meta_root):
    tiny_png(tmp_path / "zed.png")
    story = read_story_file(write(tmp_path, "characters:\n  ada:\n  Zed: {image: zed.png}\nframes: [ada met Zed.]\n"))
    assert reference_images(story, toy_meta_root) == {"ada": (toy_meta_root / "chars" / "Ada.png").resolve(),
                                                      "Zed": (tmp_path / "zed.png").resolve()}
    path = write(tmp_path, "characters:\n  Zed:\nframes: [Zed ran.]\n", "unknown.yaml")
    with pytest.raises(StoryFileError, match=rf"^{path}: key 'characters.Zed.image': omitted, and the run's "
                                             rf"dataset .* has no character 'Zed' \(it has Ada, Bob, Cleo"):
        reference_images(read_story_file(path), toy_meta_root)


def test_mentioned_characters_matches_names_as_captions_are_matched():
    names = ["Fred", "Mr. Slate", "Slate", "Big Brown Rabbit"]
    assert mentioned_characters("mr slate saw FRED; then Slate, and fred again.", names) == ["Mr. Slate", "Fred", "Slate"]
    assert mentioned_characters("The big-brown rabbit slept.", names) == ["Big Brown Rabbit"]
    assert mentioned_characters("Fredrick and they walked.", names) == []  # word boundaries; a pronoun names nobody
    assert mentioned_characters("小兔子和大兔子在草地上。", ["大兔子", "小兔子"]) == ["小兔子", "大兔子"]
