"""Reading story-format folders (docs/story_format.md) for evaluation.

A samples folder (generated stories) and a dataset split are both story-format folders, read by the
framework's one reader, src.data.stories; this module pairs them by story id and loads frames.
Stories are returned as plain dicts (the story line as written), format errors as EvalInputError
carrying the reader's file:line: field message.
"""
from pathlib import Path

from PIL import Image

from src.data import stories as story_reader


class EvalInputError(ValueError):
    """A samples folder, dataset or protocol that eval cannot score; the message names the culprit."""


def _as_dicts(stories):
    return [story.to_json() for story in stories]


def read_samples(samples_dir, meta=None):
    """The generated stories of a samples folder, in file order (docs/story_format.md, end).

    meta (the dataset's meta.json) checks copied `characters`/`backgrounds` against the dataset.
    """
    path = Path(samples_dir) / "stories.jsonl"
    if not path.is_file():
        raise EvalInputError(f"{path}: not found; a samples folder holds stories.jsonl + <id>/<k>.png "
                             "(docs/story_format.md, 'Generated stories')")
    try:
        return _as_dicts(story_reader.read_stories(path, meta=meta))
    except story_reader.StoryFormatError as err:
        raise EvalInputError(str(err)) from None


def read_meta(data_root):
    try:
        return story_reader.read_meta(data_root)
    except story_reader.StoryFormatError as err:
        raise EvalInputError(str(err)) from None


def read_split(data_root, split):
    """{story id: story} of one dataset split file data_root/<split>.jsonl (validated against meta.json)."""
    try:
        _, stories = story_reader.read_split(data_root, split)
    except story_reader.StoryFormatError as err:
        raise EvalInputError(str(err)) from None
    return {story["id"]: story for story in _as_dicts(stories)}


def pair_with_ground_truth(samples, gt_by_id, where):
    """[(generated story, ground-truth story)]; a generated id missing from the split is an error."""
    pairs = []
    for story in samples:
        if story["id"] not in gt_by_id:
            raise EvalInputError(f"story id {story['id']!r} of the samples is not in {where}")
        truth = gt_by_id[story["id"]]
        if len(truth["images"]) != len(story["images"]):
            raise EvalInputError(f"story id {story['id']!r}: {len(story['images'])} generated frames but "
                                 f"{len(truth['images'])} in {where}")
        pairs.append((story, truth))
    return pairs


def load_frame(root, relative_path):
    """One frame as an RGB PIL image; a missing or unreadable file is an error naming it."""
    path = Path(root) / relative_path
    if not path.is_file():
        raise EvalInputError(f"{path}: frame not found")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as err:
        raise EvalInputError(f"{path}: cannot read image ({err})") from None
