"""ViStoryBench (CVPR 2026) in and out (docs/vistorybench.md).

In: the benchmark's dataset folder (`data/dataset/ViStory` in its repository) -> one `StoryRequest` per
story, the same object a story file gives (src/data/story_file.py), so either pipeline takes either.
Out: generated frames in the folder layout the benchmark's `bench_run.py` reads, so its own code scores
a StoryViz run; and a reader of that layout, to check what was written.

The dataset layout (the benchmark's `vistorybench/dataset_loader/dataset_load.py`):

    ViStory/<story id>/story.json       story ids are digit folders: 01 .. 80
    ViStory/<story id>/image/<character key>/<any name>.jpg|png    reference images (sorted: first = main)

    story.json: {"Story_type": {"en", "ch"},
                 "Characters": {<key>: {"name_en", "name_ch", "prompt_en", "prompt_ch", "tag", ...}},
                 "Shots": [{"index": 1,
                            "Setting Description": {"en", "ch"}, "Plot Correspondence": {"en", "ch"},
                            "Static Shot Description": {"en", "ch"}, "Shot Perspective Design": {"en", "ch"},
                            "Characters Appearing": {"en": [<key>, ...], "ch": [<name>, ...]}}, ...]}

A character's key is its English name; a shot's English "Characters Appearing" lists keys. Shots are
numbered from 1 (`index`); the benchmark finds a shot's image by that number.

How a story becomes a request (docs/vistorybench.md, "From a ViStoryBench story to a request"):
- characters: name_<language> -> its first reference image and prompt_<language> as the description;
- frames: one caption per shot, `caption_fields` joined (default: the static shot description, the
  setting, the perspective), prefixed with the names of the shot's characters the text does not name;
- opening (SEED-Story): the first reference image of the first character of the first shot that has one
  (the benchmark's own SEED-Story adaptation, data_process/dataset_process/adapt2seedstory.py, starts
  from the same image), with "<name>: <description>" as its text; beats = the number of shots (vis mode:
  SEED-Story draws every shot's caption after the opening, which is not a shot and is not written out).

The outputs layout (the benchmark's `vistorybench/dataset_loader/read_outputs.py`, mode-first as its
README shows):

    <outputs>/<method>/<mode>/<language>/<timestamp YYYYMMDD_HHMMSS>/<story id>/shots/shot_<index:02d>.png

Its reader maps a file to a shot by the integer after the last '_' of the file name.
"""
from __future__ import annotations

import datetime
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from src.data.story_file import Character, Opening, StoryFileError, StoryRequest, mentioned_characters

LANGUAGES = ("en", "ch")
# The benchmark's `lite` split (bench_run.py --split lite; its dataset_load.py's list): 20 of the 80 stories.
LITE_STORY_IDS = ("01", "08", "09", "15", "17", "19", "24", "27", "28", "29", "32", "41", "52", "53", "55",
                  "57", "60", "64", "68", "79")
# our name -> story.json's key, for the text fields of a shot
SHOT_FIELDS = {"setting": "Setting Description", "plot": "Plot Correspondence",
               "script": "Static Shot Description", "camera": "Shot Perspective Design"}
SHOT_CHARACTERS = "Characters Appearing"
DEFAULT_CAPTION_FIELDS = ("script", "setting", "camera")
REFERENCE_SUFFIXES = (".png", ".jpg", ".jpeg")
OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp")  # what the benchmark's reader takes as a shot
TIMESTAMP = re.compile(r"^\d{8}[_-]\d{6}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# ----------------------------------------------------------------------------------------------
# the dataset


def list_story_ids(root) -> list[str]:
    """The story ids of a ViStoryBench dataset folder (its digit-named subfolders), in number order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such ViStoryBench dataset folder")
    ids = sorted((p.name for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=int)
    if not ids:
        hint = f" (its subfolder {root / 'ViStory'} looks like one: pass that)" if (root / "ViStory").is_dir() else ""
        raise FileNotFoundError(f"{root}: no story folder (01, 02, ...) here{hint}")
    return ids


def read_vistorybench(root, language: str = "en", story_ids: Optional[Iterable[str]] = None,
                      caption_fields: Sequence[str] = DEFAULT_CAPTION_FIELDS) -> list[StoryRequest]:
    """Every story of the ViStoryBench dataset folder `root` (or those of `story_ids`, e.g. LITE_STORY_IDS),
    as story requests in `language` ('en' or 'ch'). A story.json that lacks a field or a language, names a
    character it does not define, or a character without reference image is an error naming the file and
    the key (the benchmark's loader skips such shots with a warning; we do not skip in silence)."""
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {', '.join(LANGUAGES)}, got {language!r}")
    unknown = [f for f in caption_fields if f not in SHOT_FIELDS]
    if unknown or not caption_fields:
        raise ValueError(f"caption_fields must name some of {', '.join(SHOT_FIELDS)}, got {list(caption_fields)}")
    available = list_story_ids(root)
    wanted = available if story_ids is None else [str(s) for s in story_ids]
    missing = [s for s in wanted if s not in available]
    if missing:
        raise FileNotFoundError(f"{root}: no story {', '.join(missing)} (stories there: {available[0]} .. "
                                f"{available[-1]}, {len(available)} in all)")
    return [read_vistorybench_story(Path(root) / story_id, language, caption_fields) for story_id in wanted]


class _StoryJson:
    """Reads one story.json; every failure names the file and the key."""

    def __init__(self, path: Path, language: str):
        self.path, self.language = path, language

    def fail(self, key: Optional[str], message: str):
        raise StoryFileError(self.path, key, message)

    def field(self, obj: dict, key: str, where: str, kind: type):
        if not isinstance(obj, dict) or key not in obj:
            self.fail(f"{where}.{key}" if where else key, "missing")
        value = obj[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            self.fail(f"{where}.{key}" if where else key, f"must be a {kind.__name__}, got {type(value).__name__}")
        return value

    def localized(self, obj: dict, key: str, where: str, kind: type = str):
        """obj[key][language] (a {"en": ..., "ch": ...} object)."""
        return self.field(self.field(obj, key, where, dict), self.language, f"{where}.{key}", kind)


def _references(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in REFERENCE_SUFFIXES)


def shot_caption(shot: dict, fields: Sequence[str], names: Sequence[str]) -> str:
    """A shot's caption: its `fields` texts joined by spaces, and before them the names of its characters
    `names` that the texts do not mention ("Jack, Rose: ..."), so that StoryGPT-V finds every character
    on stage by name (src/models/name_tokens.py)."""
    text = " ".join(shot[f].strip() for f in fields if shot[f].strip())
    unnamed = [n for n in names if n not in mentioned_characters(text, names)]
    return f"{', '.join(unnamed)}: {text}" if unnamed else text


def read_vistorybench_story(story_dir, language: str = "en",
                            caption_fields: Sequence[str] = DEFAULT_CAPTION_FIELDS) -> StoryRequest:
    """One story folder (`<root>/<story id>`) as a StoryRequest; see the module docstring for the rules.
    `metadata`: benchmark, story_id, language, story_type, caption_fields, character_keys (name -> key),
    references (name -> every reference image) and shots (index, setting, plot, script, camera,
    characters (names), character_keys)."""
    story_dir = Path(story_dir)
    path = story_dir / "story.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (every ViStoryBench story folder has one)")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # the benchmark's files may start with a BOM
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoryFileError(path, None, f"not valid JSON: {err}") from None
    check = _StoryJson(path, language)
    if not isinstance(data, dict):
        check.fail(None, f"must hold a JSON object, got {type(data).__name__}")

    characters: dict[str, Character] = {}
    keys: dict[str, str] = {}                # character key -> name in `language`
    references: dict[str, list[str]] = {}
    for key, entry in check.field(data, "Characters", "", dict).items():
        where = f"Characters.{key}"
        name = check.field(entry, f"name_{language}", where, str).strip()
        if not name:
            check.fail(f"{where}.name_{language}", "empty")
        if name in characters:
            check.fail(f"{where}.name_{language}", f"'{name}' names two characters")
        description = check.field(entry, f"prompt_{language}", where, str).strip() or None
        images = _references(story_dir / "image" / key)
        if not images:
            check.fail(where, f"no reference image (.png/.jpg) in {story_dir / 'image' / key}")
        characters[name] = Character(name, images[0].resolve(), description)
        keys[key] = name
        references[name] = [str(p.resolve()) for p in images]

    shots, seen = [], set()
    for i, shot in enumerate(check.field(data, "Shots", "", list)):
        where = f"Shots[{i}]"
        if not isinstance(shot, dict):
            check.fail(where, f"must be an object, got {type(shot).__name__}")
        index = shot.get("index")
        if isinstance(index, str) and index.isdigit():
            index = int(index)
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            check.fail(f"{where}.index", f"must be a shot number, got {index!r}")
        if index in seen:
            check.fail(f"{where}.index", f"shot {index} appears twice")
        seen.add(index)
        fields = {ours: check.localized(shot, theirs, where).strip() for ours, theirs in SHOT_FIELDS.items()}
        appearing = check.field(shot, SHOT_CHARACTERS, where, dict)
        on_stage = check.field(appearing, "en", f"{where}.{SHOT_CHARACTERS}", list)
        for key in on_stage:
            if not isinstance(key, str) or key.strip() not in keys:
                check.fail(f"{where}.{SHOT_CHARACTERS}.en", f"character {key!r} is not in Characters "
                                                            f"({', '.join(keys)})")
        on_stage = list(dict.fromkeys(key.strip() for key in on_stage))
        shots.append({"index": index, **fields, "characters": [keys[k] for k in on_stage], "character_keys": on_stage})
    if not shots:
        check.fail("Shots", "empty: a story has at least one shot")

    frames = [shot_caption(shot, caption_fields, shot["characters"]) for shot in shots]
    opening = _opening(shots, characters, check)
    story_type = data.get("Story_type", {}).get(language) if isinstance(data.get("Story_type"), dict) else None
    metadata = {"benchmark": "ViStoryBench", "story_id": story_dir.name, "language": language,
                "story_type": story_type, "caption_fields": list(caption_fields),
                "character_keys": {name: key for key, name in keys.items()}, "references": references,
                "shots": shots}
    return StoryRequest(title=f"ViStoryBench {story_dir.name}", characters=characters, frames=frames,
                        opening=opening, beats=len(frames), source=path, metadata=metadata)


def _opening(shots: list[dict], characters: dict[str, Character], check: _StoryJson) -> Opening:
    on_stage = [name for shot in shots for name in shot["characters"]]
    if not on_stage and not characters:
        check.fail("Characters", "empty: SEED-Story's opening is a character's reference image")
    name = on_stage[0] if on_stage else next(iter(characters))
    char = characters[name]
    return Opening(f"{name}: {char.description}" if char.description else name, char.image)


# ----------------------------------------------------------------------------------------------
# the outputs


def run_timestamp(now: Optional[datetime.datetime] = None) -> str:
    """A run's timestamp folder name, YYYYMMDD_HHMMSS. Take one per run and pass it for every story:
    the benchmark scores one timestamp folder at a time."""
    return (now or datetime.datetime.now()).strftime("%Y%m%d_%H%M%S")


def _check_name(kind: str, value: str) -> None:
    if not isinstance(value, str) or not NAME.match(value):
        raise ValueError(f"{kind} {value!r}: use letters, digits, '.', '_' and '-' (it is a folder name)")
    if value in LANGUAGES:  # bench_run.py would read a folder named en/ch under the method as a language
        raise ValueError(f"{kind} {value!r}: en and ch are the benchmark's language folder names")


def write_vistorybench_outputs(out_root, method_name: str, story: StoryRequest, frames: Sequence, *,
                               timestamp: str, mode: str = "base", overwrite: bool = False) -> Path:
    """Write one story's generated frames (PIL images, one per shot, in shot order) where the benchmark's
    bench_run.py reads them: <out_root>/<method>/<mode>/<language>/<timestamp>/<story id>/shots/
    shot_<index:02d>.png. `story` is a request read by `read_vistorybench` (its metadata gives the story id,
    the language and the shot numbers). For SEED-Story, pass the frames drawn for the shots, not the
    opening's. Returns the story's shots folder. An existing shot file is an error unless `overwrite`."""
    meta = story.metadata
    if meta.get("benchmark") != "ViStoryBench":
        raise ValueError(f"{story.source}: not a ViStoryBench story (read it with read_vistorybench)")
    _check_name("method name", method_name)
    _check_name("mode", mode)
    if not isinstance(timestamp, str) or not TIMESTAMP.match(timestamp):
        raise ValueError(f"timestamp {timestamp!r}: must be YYYYMMDD_HHMMSS (run_timestamp() makes one)")
    story_id = meta["story_id"]
    if not story_id.isdigit():
        raise ValueError(f"story id {story_id!r}: the benchmark reads only digit story folders")
    indices = [shot["index"] for shot in meta["shots"]]
    if len(frames) != len(indices):
        raise ValueError(f"story {story_id}: {len(frames)} frames for {len(indices)} shots")
    folder = Path(out_root) / method_name / mode / meta["language"] / timestamp / story_id / "shots"
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in zip(indices, frames):
        if not hasattr(frame, "save"):
            raise TypeError(f"story {story_id} shot {index}: a frame must be a PIL image, got {type(frame).__name__}")
        target = folder / f"shot_{index:02d}.png"
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} already exists (a run's timestamp folder is written once)")
        partial = folder / f".shot_{index:02d}.partial-{os.getpid()}.png"
        frame.convert("RGB").save(partial, format="PNG")
        partial.replace(target)
    return folder


@dataclass
class BenchOutputs:
    """A run in the outputs layout: its timestamp folder and, per story id, shot number -> image file."""

    timestamp: str
    shots: dict[str, dict[int, Path]]


def read_vistorybench_outputs(out_root, method_name: str, language: str = "en", mode: str = "base",
                              timestamp: Optional[str] = None) -> BenchOutputs:
    """Read a run in the outputs layout as the benchmark's reader does: `timestamp` None takes the latest
    timestamp folder; story folders are digit names; a story's images are in its `shots/` folder (or in
    the story folder itself), and a file's shot number is the integer after the last '_' of its name
    (`shot_03.png` and `03.png` are shot 3). What the benchmark's reader would stumble on is an error here:
    a story folder that is not a number, an image name without a shot number, two images of one shot."""
    lang_dir = Path(out_root) / method_name / mode / language
    if not lang_dir.is_dir():
        raise FileNotFoundError(f"{lang_dir}: no such folder "
                                f"(layout: <outputs>/<method>/<mode>/<language>/<timestamp>)")
    if timestamp is None:
        stamps = sorted((p.name for p in lang_dir.iterdir() if p.is_dir() and TIMESTAMP.match(p.name)),
                        key=lambda name: name.replace("-", "_"))
        if not stamps:
            raise FileNotFoundError(f"{lang_dir}: no timestamp folder (YYYYMMDD_HHMMSS)")
        timestamp = stamps[-1]
    run_dir = lang_dir / timestamp
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such timestamp folder")
    shots: dict[str, dict[int, Path]] = {}
    for story_dir in sorted((p for p in run_dir.iterdir() if p.is_dir()), key=lambda p: p.name):
        if not story_dir.name.isdigit():
            raise ValueError(f"{story_dir}: not a story id (the benchmark reads int(folder name))")
        images = story_dir / "shots" if (story_dir / "shots").is_dir() else story_dir
        found: dict[int, Path] = {}
        for path in sorted(images.iterdir()):
            if not path.is_file() or path.suffix.lower() not in OUTPUT_SUFFIXES:
                continue
            number = path.stem.rsplit("_", 1)[-1]
            if not number.isdigit():
                raise ValueError(f"{path}: no shot number after the last '_' of the name (e.g. shot_01.png)")
            if int(number) in found:
                raise ValueError(f"{path}: shot {int(number)} already has {found[int(number)].name}")
            found[int(number)] = path
        shots[story_dir.name] = dict(sorted(found.items()))
    return BenchOutputs(timestamp, dict(sorted(shots.items(), key=lambda item: int(item[0]))))
