"""ViStoryBench in and out (src/data/vistorybench.py, docs/vistorybench.md) on a tiny dataset written here in
the benchmark's layout (ViStory/<id>/story.json + image/<character>/*.png): stories become the same
requests a story file gives, and generated frames written in the benchmark's outputs layout read back as
the same stories, shots and pixels."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.data.story_file import StoryFileError, read_story_file, write_story_file
from src.data.vistorybench import (
    LITE_STORY_IDS,
    list_story_ids,
    read_vistorybench,
    read_vistorybench_outputs,
    run_timestamp,
    write_vistorybench_outputs,
)

TIMESTAMP = "20260101_120000"


def texts(en: str, ch: str) -> dict:
    return {"en": en, "ch": ch}


def shot(index, setting, plot, script, camera, keys, names_ch) -> dict:
    return {"index": index, "Setting Description": setting, "Plot Correspondence": plot,
            "Static Shot Description": script, "Shot Perspective Design": camera,
            "Characters Appearing": {"en": keys, "ch": names_ch}}


STORIES = {
    "01": {
        "Story_type": texts("Children's Picture Books", "儿童绘本"),
        "Characters": {
            "Big Brown Rabbit": {"name_en": "Big Brown Rabbit", "name_ch": "大兔子", "prompt_en": "a large brown rabbit",
                                 "prompt_ch": "一只棕色的大兔子", "tag": "non_human", "num_of_appearances": 1},
            "Little Nutbrown Hare": {"name_en": "Little Nutbrown Hare", "name_ch": "小兔子",
                                     "prompt_en": "a small nutbrown hare", "prompt_ch": "一只栗色的小兔子",
                                     "tag": "non_human", "num_of_appearances": 2},
        },
        "Shots": [
            shot(1, texts("A meadow at dusk.", "黄昏的草地。"), texts("Bedtime comes.", "该睡觉了。"),
                 texts("Little Nutbrown Hare holds on to a long ear.", "小兔子抓着长耳朵。"),
                 texts("Medium shot.", "中景。"), ["Little Nutbrown Hare"], ["小兔子"]),
            shot(2, texts("Under a tree.", "树下。"), texts("They measure their love.", "他们比谁的爱更多。"),
                 texts("The big rabbit stretches his arms; Little Nutbrown Hare watches.", "大的那只张开双臂。"),
                 texts("Wide shot.", "远景。"), ["Big Brown Rabbit", "Little Nutbrown Hare"], ["大兔子", "小兔子"]),
            shot(3, texts("The moon over the hills.", "山上的月亮。"), texts("Night falls.", "夜深了。"),
                 texts("An empty meadow.", "空旷的草地。"), texts("Long shot.", "大远景。"), [], []),
        ],
    },
    "02": {
        "Story_type": texts("Film", "电影"),
        "Characters": {"Jack": {"name_en": "Jack", "name_ch": "杰克", "prompt_en": "a young man in a cap",
                                "prompt_ch": "戴帽子的年轻人", "tag": "realistic_human", "num_of_appearances": 2}},
        "Shots": [
            shot(1, texts("A ship's deck.", "船的甲板。"), texts("Jack boards.", "杰克登船。"),
                 texts("Jack runs up the gangway.", "杰克跑上舷梯。"), texts("Low angle.", "仰拍。"), ["Jack"], ["杰克"]),
            shot(2, texts("The bow at sunset.", "日落时的船头。"), texts("Freedom.", "自由。"),
                 texts("Jack spreads his arms.", "杰克张开双臂。"), texts("Close-up.", "特写。"), ["Jack"], ["杰克"]),
        ],
    },
}
# reference images: (file name, colour); the first in name order is the character's reference
REFERENCES = {"Big Brown Rabbit": [("00.png", (120, 80, 40))],
              "Little Nutbrown Hare": [("01.jpg", (10, 10, 10)), ("00.png", (170, 120, 60))],
              "Jack": [("00.png", (20, 40, 200))]}


def tiny_image(path: Path, colour) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), colour, dtype=np.uint8)).save(path)


def write_dataset(root: Path, stories: dict = STORIES) -> Path:
    """A ViStoryBench-layout dataset folder with `stories` (story id -> story.json content)."""
    for story_id, story in stories.items():
        folder = root / story_id
        folder.mkdir(parents=True)
        (folder / "story.json").write_text(json.dumps(story, ensure_ascii=False), encoding="utf-8-sig")
        for key in story["Characters"]:
            for name, colour in REFERENCES[key]:
                tiny_image(folder / "image" / key / name, colour)
    return root


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_dataset(tmp_path / "dataset" / "ViStory")


def test_stories_become_requests_with_one_caption_per_shot(dataset):
    stories = read_vistorybench(dataset)
    assert [s.metadata["story_id"] for s in stories] == ["01", "02"]
    rabbit = stories[0]
    assert rabbit.title == "ViStoryBench 01" and rabbit.source == dataset / "01" / "story.json"
    assert list(rabbit.characters) == ["Big Brown Rabbit", "Little Nutbrown Hare"]
    hare = rabbit.characters["Little Nutbrown Hare"]
    assert hare.image == (dataset / "01" / "image" / "Little Nutbrown Hare" / "00.png").resolve()
    assert hare.description == "a small nutbrown hare"
    # static shot description, setting, perspective; a character on stage the text does not name goes first
    assert rabbit.frames == [
        "Little Nutbrown Hare holds on to a long ear. A meadow at dusk. Medium shot.",
        "Big Brown Rabbit: The big rabbit stretches his arms; Little Nutbrown Hare watches. Under a tree. Wide shot.",
        "An empty meadow. The moon over the hills. Long shot.",
    ]
    assert rabbit.mentions() == [["Little Nutbrown Hare"], ["Big Brown Rabbit", "Little Nutbrown Hare"], []]
    # SEED-Story: the opening is the first on-stage character's reference; one beat per shot (vis mode)
    assert rabbit.opening.image == hare.image
    assert rabbit.opening.text == "Little Nutbrown Hare: a small nutbrown hare"
    assert rabbit.beats == 3 and rabbit.seed_story_mode == "vis"
    shots = rabbit.metadata["shots"]
    assert [s["index"] for s in shots] == [1, 2, 3]
    assert shots[1]["characters"] == ["Big Brown Rabbit", "Little Nutbrown Hare"]
    assert shots[1]["plot"] == "They measure their love." and shots[1]["camera"] == "Wide shot."
    assert rabbit.metadata["story_type"] == "Children's Picture Books"
    assert rabbit.metadata["references"]["Little Nutbrown Hare"][1].endswith("01.jpg")


def test_chinese_texts_and_caption_fields_and_story_ids(dataset):
    (story,) = read_vistorybench(dataset, language="ch", story_ids=["01"], caption_fields=("plot",))
    assert list(story.characters) == ["大兔子", "小兔子"]
    assert story.metadata["character_keys"] == {"大兔子": "Big Brown Rabbit", "小兔子": "Little Nutbrown Hare"}
    assert story.frames == ["小兔子: 该睡觉了。", "大兔子, 小兔子: 他们比谁的爱更多。", "夜深了。"]
    assert story.opening.text == "小兔子: 一只栗色的小兔子"
    assert story.metadata["shots"][1]["character_keys"] == ["Big Brown Rabbit", "Little Nutbrown Hare"]


def test_the_dataset_folder_and_story_ids_are_checked(dataset):
    assert list_story_ids(dataset) == ["01", "02"]
    with pytest.raises(FileNotFoundError, match=r"no story folder \(01, 02, ...\) here \(its subfolder .*ViStory looks like one"):
        read_vistorybench(dataset.parent)
    with pytest.raises(FileNotFoundError, match=r"no story 07 \(stories there: 01 \.\. 02, 2 in all\)"):
        read_vistorybench(dataset, story_ids=["07"])
    with pytest.raises(ValueError, match="language must be one of en, ch"):
        read_vistorybench(dataset, language="fr")
    with pytest.raises(ValueError, match="caption_fields must name some of setting, plot, script, camera"):
        read_vistorybench(dataset, caption_fields=("dialogue",))
    assert len(LITE_STORY_IDS) == 20 and len(set(LITE_STORY_IDS)) == 20


def broken(change) -> dict:
    story = copy.deepcopy(STORIES["01"])
    change(story)
    return {"01": story}


@pytest.mark.parametrize("change,key,reason", [
    (lambda s: s["Shots"][1]["Setting Description"].pop("en"), "Shots[1].Setting Description.en", "missing"),
    (lambda s: s["Shots"][0].pop("Static Shot Description"), "Shots[0].Static Shot Description", "missing"),
    (lambda s: s["Shots"][2]["Characters Appearing"]["en"].append("Grey Owl"), "Shots[2].Characters Appearing.en",
     "character 'Grey Owl' is not in Characters (Big Brown Rabbit, Little Nutbrown Hare)"),
    (lambda s: s["Shots"][1].update(index=1), "Shots[1].index", "shot 1 appears twice"),
    (lambda s: s["Shots"][1].update(index="two"), "Shots[1].index", "must be a shot number"),
    (lambda s: s["Characters"]["Big Brown Rabbit"].update(prompt_en=3), "Characters.Big Brown Rabbit.prompt_en",
     "must be a str, got int"),
    (lambda s: s.update(Shots=[]), "Shots", "empty"),
], ids=["no language", "no field", "unknown character", "shot twice", "index not a number", "wrong type", "no shots"])
def test_a_bad_story_json_names_the_file_and_the_key(tmp_path, change, key, reason):
    root = write_dataset(tmp_path / "ViStory", broken(change))
    with pytest.raises(StoryFileError) as caught:
        read_vistorybench(root)
    assert str(caught.value).startswith(f"{root / '01' / 'story.json'}: key '{key}': "), str(caught.value)
    assert reason in str(caught.value)


def test_a_character_without_reference_image_is_an_error(dataset):
    for image in (dataset / "02" / "image" / "Jack").iterdir():
        image.unlink()
    with pytest.raises(StoryFileError, match=r"02/story.json: key 'Characters.Jack': no reference image"):
        read_vistorybench(dataset)


def fake_frames(story, size=(12, 8)) -> list[Image.Image]:
    """A distinct colour per story and shot, so a frame in the wrong place shows."""
    sid = int(story.metadata["story_id"])
    return [Image.fromarray(np.full((size[1], size[0], 3), (sid * 40, k * 50 + 10, 99), dtype=np.uint8))
            for k in range(len(story.frames))]


def test_round_trip_dataset_requests_outputs_layout_and_back(dataset, tmp_path):
    outputs = tmp_path / "outputs"
    stories = read_vistorybench(dataset)
    frames = {s.metadata["story_id"]: fake_frames(s) for s in stories}
    for story in stories:
        folder = write_vistorybench_outputs(outputs, "storyviz_storygptv", story, frames[story.metadata["story_id"]],
                                            timestamp=TIMESTAMP)
        assert folder == outputs / "storyviz_storygptv" / "base" / "en" / TIMESTAMP / story.metadata["story_id"] / "shots"
        # the benchmark finds a shot's image by the integer after the last '_' of its name
        assert sorted(int(p.name.split("_")[-1].split(".")[0]) for p in folder.iterdir()) == \
               [s["index"] for s in story.metadata["shots"]]

    run = read_vistorybench_outputs(outputs, "storyviz_storygptv")
    assert run.timestamp == TIMESTAMP
    assert list(run.shots) == [s.metadata["story_id"] for s in stories]
    for story in stories:
        written = run.shots[story.metadata["story_id"]]
        assert list(written) == [s["index"] for s in story.metadata["shots"]]
        for path, frame in zip(written.values(), frames[story.metadata["story_id"]]):
            assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(frame))


def test_a_benchmark_story_as_a_story_file_reads_back_the_same(dataset, tmp_path):
    story = read_vistorybench(dataset, story_ids=["01"])[0]
    back = read_story_file(write_story_file(story, tmp_path / "mine" / "rabbit.yaml"))
    assert (back.characters, back.frames, back.opening, back.beats) == \
           (story.characters, story.frames, story.opening, story.beats)


def test_the_writer_refuses_what_the_benchmark_could_not_read(dataset, tmp_path):
    story = read_vistorybench(dataset, story_ids=["02"])[0]
    frames = fake_frames(story)
    with pytest.raises(ValueError, match="story 02: 1 frames for 2 shots"):
        write_vistorybench_outputs(tmp_path, "m", story, frames[:1], timestamp=TIMESTAMP)
    with pytest.raises(ValueError, match="must be YYYYMMDD_HHMMSS"):
        write_vistorybench_outputs(tmp_path, "m", story, frames, timestamp="latest")
    with pytest.raises(ValueError, match="en and ch are the benchmark's language folder names"):
        write_vistorybench_outputs(tmp_path, "m", story, frames, timestamp=TIMESTAMP, mode="en")
    with pytest.raises(ValueError, match="method name 'my method'"):
        write_vistorybench_outputs(tmp_path, "my method", story, frames, timestamp=TIMESTAMP)
    with pytest.raises(ValueError, match="not a ViStoryBench story"):
        write_vistorybench_outputs(tmp_path, "m", read_story_file_like(story, tmp_path), frames, timestamp=TIMESTAMP)
    write_vistorybench_outputs(tmp_path, "m", story, frames, timestamp=TIMESTAMP)
    with pytest.raises(FileExistsError, match="shot_01.png already exists"):
        write_vistorybench_outputs(tmp_path, "m", story, frames, timestamp=TIMESTAMP)
    write_vistorybench_outputs(tmp_path, "m", story, frames[::-1], timestamp=TIMESTAMP, overwrite=True)
    first = read_vistorybench_outputs(tmp_path, "m").shots["02"][1]
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(frames[-1]))


def read_story_file_like(story, folder):
    """The same story through a story file: no ViStoryBench metadata."""
    return read_story_file(write_story_file(story, folder / "copy.yaml"))


def test_the_outputs_reader_takes_the_latest_run_and_rejects_unreadable_names(dataset, tmp_path):
    story = read_vistorybench(dataset, story_ids=["02"])[0]
    for stamp in ("20250101_000000", "20260301-101010", "20251231_235959"):
        write_vistorybench_outputs(tmp_path, "m", story, fake_frames(story), timestamp=stamp)
    assert read_vistorybench_outputs(tmp_path, "m").timestamp == "20260301-101010"
    assert read_vistorybench_outputs(tmp_path, "m", timestamp="20250101_000000").shots["02"].keys() == {1, 2}
    run_dir = tmp_path / "m" / "base" / "en" / "20260301-101010"
    tiny_image(run_dir / "02" / "shots" / "cover.png", (0, 0, 0))
    with pytest.raises(ValueError, match=r"cover.png: no shot number after the last '_'"):
        read_vistorybench_outputs(tmp_path, "m")
    (run_dir / "02" / "shots" / "cover.png").unlink()
    tiny_image(run_dir / "02" / "shots" / "02.jpg", (0, 0, 0))
    with pytest.raises(ValueError, match=r"shot 2 already has"):
        read_vistorybench_outputs(tmp_path, "m")
    (run_dir / "02" / "shots" / "02.jpg").unlink()
    (run_dir / "notes").mkdir()
    with pytest.raises(ValueError, match=r"notes: not a story id"):
        read_vistorybench_outputs(tmp_path, "m")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        read_vistorybench_outputs(tmp_path, "m", language="ch")


def test_run_timestamp_is_the_benchmarks_folder_name():
    import datetime

    assert run_timestamp(datetime.datetime(2026, 3, 4, 5, 6, 7)) == "20260304_050607"
