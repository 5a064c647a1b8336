"""Your own story: the story file (docs/story_format.md, "Your own story: the story file").

A story file is a small YAML file a user writes to draw a story of their own instead of a dataset split:

    title: Ada and Bob at the seaside
    characters:
      Ada:                           # no image: the run's dataset reference for 'Ada'
      Fred: {image: refs/fred.png, description: a man in an orange shirt}
    frames:                          # StoryGPT-V: one caption per frame
      - Ada and Fred walked on the beach.
      - They played on the beach.
    opening:                         # SEED-Story: the first beat, text and image ...
      text: Ada and Fred were on the beach.
      image: refs/beach.png
    beats: 2                         # ... and how many beats to draw after it

`read_story_file` turns it into a `StoryRequest`, the one in-memory story every pipeline takes (the
ViStoryBench reader, src/data/vistorybench.py, makes the same objects). Paths are relative to the story
file's folder and are stored absolute. Bad input is a `StoryFileError` naming the file and the key
(`story.yaml: key 'characters.Fred.image': refs/fred.png: no such file ...`); the entries turn it into
one line and exit status 2 (src/errors.py).

Which pipeline takes what:
- `frames` only: StoryGPT-V draws one frame per caption;
- `opening` + `beats`: SEED-Story's story mode (the MLLM writes `beats` beats after the opening);
- `opening` + `frames`: both; SEED-Story's vis mode draws the given captions after the opening
  (`beats` is then len(frames)).
`beats` never counts the opening: src/generate_story.py's `--beats` does (`--beats = beats + 1`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from PIL import Image

from src.data.stories import read_meta, resolve
from src.models.name_tokens import find_names, name_patterns

TOP_KEYS = ("title", "characters", "frames", "opening", "beats")
CHARACTER_KEYS = ("image", "description")
OPENING_KEYS = ("text", "image")


class StoryFileError(ValueError):
    """A story file breaks the format; `path` and `key` (dotted, e.g. 'characters.Fred.image') say where."""

    def __init__(self, path, key: Optional[str], message: str, line: Optional[int] = None):
        self.path, self.key, self.line, self.reason = str(path), key, line, message
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {message}" if key is None else f"{where}: key '{key}': {message}")


@dataclass
class Character:
    name: str
    image: Optional[Path] = None          # None: the run's dataset reference image for `name`
    description: Optional[str] = None


@dataclass
class Opening:
    text: str
    image: Path


@dataclass
class StoryRequest:
    """One story to draw. `frames`: StoryGPT-V's captions (and SEED-Story's in vis mode); `opening` and
    `beats`: SEED-Story (`beats` drawn after the opening, the opening not counted). `source`: the file it
    came from (a story file or a ViStoryBench story.json), for error messages. `metadata`: what a reader
    keeps beyond the story (ViStoryBench: the story id, language and each shot's fields)."""

    title: str
    characters: dict[str, Character]
    frames: Optional[list[str]] = None
    opening: Optional[Opening] = None
    beats: Optional[int] = None
    source: Optional[Path] = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def seed_story_mode(self) -> Optional[str]:
        """'vis' (captions given), 'story' (the MLLM writes them) or None (no opening: StoryGPT-V only)."""
        if self.opening is None:
            return None
        return "vis" if self.frames is not None else "story"

    def mentions(self) -> list[list[str]]:
        """Per frame caption, the character names it mentions (see `mentioned_characters`)."""
        return [mentioned_characters(caption, self.characters) for caption in self.frames or []]


# ----------------------------------------------------------------------------------------------
# which characters a caption names


def mentioned_characters(caption: str, names: Iterable[str]) -> list[str]:
    """The names of `names` that `caption` mentions, in order of first mention, each once. Matching is
    src/models/name_tokens.py's (the one Char-LDM conditions with): case- and punctuation-insensitive on
    word boundaries, multi-word names ("mr slate" finds "Mr. Slate"), the longest name first. A name
    without any a-z / 0-9 character (e.g. a Chinese name from ViStoryBench's `ch` texts), which that
    matcher cannot see, is found as a plain substring. A pronoun mentions nobody ("They played." -> [])."""
    names = list(names)
    found = [(start, name) for start, _, name in find_names(caption, name_patterns(names))]
    matchable = {name for _, name in name_patterns(names)}
    for name in names:
        if name not in matchable and name.strip() and name.casefold() in caption.casefold():
            found.append((caption.casefold().index(name.casefold()), name))
    return list(dict.fromkeys(name for _, name in sorted(found)))


# ----------------------------------------------------------------------------------------------
# reading


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys in silence; a story file with two 'Ada:' is an error."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _type_name(value) -> str:
    return "nothing" if value is None else type(value).__name__


class _Checker:
    """Validates the parsed YAML of one story file; every failure names the file and the key."""

    def __init__(self, path: Path):
        self.path = path
        self.folder = path.parent

    def fail(self, key: Optional[str], message: str):
        raise StoryFileError(self.path, key, message)

    def mapping(self, value, key: str, known: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping with keys {', '.join(known)}, got {_type_name(value)}")
        for name in value:
            if name not in known:
                self.fail(f"{key}.{name}", f"unknown key (known: {', '.join(known)})")
        return value

    def text(self, value, key: str, required: bool = True) -> Optional[str]:
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"must be a non-empty string, got {_type_name(value)} {value!r}")
        return value.strip()

    def image(self, value, key: str) -> Path:
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"must be an image path (relative to {self.folder}), got {_type_name(value)} {value!r}")
        path = (self.folder / Path(value.strip()).expanduser()).resolve()  # an absolute path stays as it is
        if not path.is_file():
            self.fail(key, f"{value}: no such file ({path})")
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as err:  # PIL raises many kinds (UnidentifiedImageError, SyntaxError, OSError)
            self.fail(key, f"{value}: cannot read image: {err}")
        return path

    def characters(self, value) -> dict[str, Character]:
        if value is None or value == {}:
            self.fail("characters", "empty: name at least one character, or leave the key out")
        if not isinstance(value, dict):
            self.fail("characters", f"must be a mapping of name -> {{image, description}}, got {_type_name(value)}")
        out = {}
        for name, entry in value.items():
            key = f"characters.{name}"
            if not isinstance(name, str) or not name.strip():
                self.fail(key, f"a character name must be a non-empty string, got {_type_name(name)} {name!r} "
                               f"(quote a name YAML reads as a number or yes/no)")
            if entry is None:
                entry = {}
            self.mapping(entry, key, CHARACTER_KEYS)
            image = self.image(entry["image"], f"{key}.image") if entry.get("image") is not None else None
            description = self.text(entry.get("description"), f"{key}.description", required=False)
            out[name.strip()] = Character(name.strip(), image, description)
        # Captions find characters by name (src/models/name_tokens.py): two names that match the same words
        # ('Ada' and 'ada.') or a name with no letter or digit could never be told apart or found.
        matchable = [name for _, name in name_patterns(out)]
        for name in out:
            if name not in matchable:
                twin = [other for other in matchable if other != name
                        and mentioned_characters(name, [other]) == [other]]
                self.fail(f"characters.{name}", f"same words as character '{twin[0]}' (names are matched "
                                                 f"case- and punctuation-insensitively)" if twin else
                          "has no letter or digit: captions find characters by their a-z / 0-9 words")
        return out

    def frames(self, value) -> list[str]:
        if value is None or value == []:
            self.fail("frames", "empty: give at least one caption, or leave the key out")
        if not isinstance(value, list):
            self.fail("frames", f"must be a list of captions, got {_type_name(value)}")
        return [self.text(caption, f"frames[{i}]") for i, caption in enumerate(value)]

    def opening(self, value) -> Opening:
        entry = self.mapping(value, "opening", OPENING_KEYS)
        for key in OPENING_KEYS:
            if key not in entry:
                self.fail(f"opening.{key}", "missing (an opening has a text and an image)")
        return Opening(self.text(entry["text"], "opening.text"), self.image(entry["image"], "opening.image"))

    def beats(self, value, frames: Optional[list[str]], has_opening: bool) -> Optional[int]:
        if not has_opening:
            self.fail("beats", "needs an opening (beats are what SEED-Story draws after it)")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            self.fail("beats", f"must be a positive integer, got {_type_name(value)} {value!r}")
        if frames is not None and value != len(frames):
            self.fail("beats", f"is {value} but there are {len(frames)} frames (with frames, SEED-Story draws "
                               f"one beat per caption: leave beats out)")
        return value

    def story(self, data) -> StoryRequest:
        if data is None:
            self.fail(None, "empty story file: give frames (StoryGPT-V) or an opening and beats (SEED-Story)")
        if not isinstance(data, dict):
            self.fail(None, f"must be a YAML mapping with keys {', '.join(TOP_KEYS)}, got {_type_name(data)}")
        for key in data:
            if key not in TOP_KEYS:
                self.fail(str(key), f"unknown key (known: {', '.join(TOP_KEYS)})")
        if "frames" not in data and "opening" not in data:
            self.fail(None, "empty story: give frames (StoryGPT-V) or an opening and beats (SEED-Story)")
        title = self.text(data["title"], "title") if "title" in data else self.path.stem
        characters = self.characters(data["characters"]) if "characters" in data else {}
        frames = self.frames(data["frames"]) if "frames" in data else None
        opening = self.opening(data["opening"]) if "opening" in data else None
        if "beats" in data:
            beats = self.beats(data["beats"], frames, opening is not None)
        elif opening is not None and frames is None:
            self.fail("beats", "missing: how many beats SEED-Story draws after the opening")
        else:
            beats = len(frames) if opening is not None else None
        return StoryRequest(title, characters, frames, opening, beats, source=self.path)


def read_story_file(path) -> StoryRequest:
    """Read and validate a story file (docs/story_format.md, "Your own story: the story file")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such story file")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        raise StoryFileError(path, None, f"not valid YAML: {problem}",
                             line=None if mark is None else mark.line + 1) from None
    except UnicodeDecodeError as err:
        raise StoryFileError(path, None, f"not UTF-8 text: {err}") from None
    return _Checker(path).story(data)


# ----------------------------------------------------------------------------------------------
# writing


def story_to_dict(request: StoryRequest, folder) -> dict:
    """The story file's content for `request`, image paths relative to `folder` (where it will be written).
    `metadata` and `source` are not part of the format and are left out."""
    folder = Path(folder).resolve()

    def relative(path: Path) -> str:
        return Path(os.path.relpath(Path(path).resolve(), folder)).as_posix()

    out: dict[str, Any] = {"title": request.title}
    if request.characters:
        out["characters"] = {}
        for name, char in request.characters.items():
            entry = {}
            if char.image is not None:
                entry["image"] = relative(char.image)
            if char.description:
                entry["description"] = char.description
            out["characters"][name] = entry or None
    if request.frames is not None:
        out["frames"] = list(request.frames)
    if request.opening is not None:
        out["opening"] = {"text": request.opening.text, "image": relative(request.opening.image)}
        if request.frames is None:
            out["beats"] = request.beats
    return out


def write_story_file(request: StoryRequest, path) -> Path:
    """Write `request` as a story file (e.g. a ViStoryBench story to edit by hand); read back, it gives the
    same story. An existing file is an error."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists")
    text = yaml.safe_dump(story_to_dict(request, path.parent), sort_keys=False, allow_unicode=True, width=100)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return path


# ----------------------------------------------------------------------------------------------
# characters without an image: the run's dataset reference


def reference_images(request: StoryRequest, dataset_root) -> dict[str, Path]:
    """Every character's reference image: its own `image`, or else the reference image the run's dataset
    gives that name (meta.json `characters[].reference`, matched case-insensitively as captions are).
    A character the dataset does not know, or knows without a reference, is an error naming the key."""
    meta = read_meta(dataset_root)
    known = {char["name"].casefold(): char for char in meta["characters"]}
    out = {}
    for name, char in request.characters.items():
        if char.image is not None:
            out[name] = char.image
            continue
        key = f"characters.{name}.image"
        entry = known.get(name.casefold())
        if entry is None:
            names = ", ".join(c["name"] for c in meta["characters"])
            raise StoryFileError(request.source, key, f"omitted, and the run's dataset {dataset_root} has no "
                                                      f"character '{name}' (it has {names}): give an image")
        if entry["reference"] is None:
            raise StoryFileError(request.source, key, f"omitted, and the run's dataset {dataset_root} has no "
                                                      f"reference image for '{entry['name']}': give an image")
        out[name] = resolve(dataset_root, entry["reference"])
        if not out[name].is_file():
            raise FileNotFoundError(f"{dataset_root}/meta.json: reference of '{entry['name']}': {out[name]} is missing")
    return out
