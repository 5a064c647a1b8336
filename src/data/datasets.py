"""Torch datasets over a story-format folder: one item per frame, or one item per story.

Shapes: F frames, C characters in meta.json, M max characters per frame (`max_chars`), H/W frame size.
Deterministic: an item depends only on its index (no random crops, flips or frame sampling), so two
runs see the same data and an evaluation ground truth is always the same frame.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from src.data.stories import Story, StoryFormatError, read_split
from src.data.references import crop_reference
from src.data.transforms import ImageFileError, load_mask, story_file, story_frame

CAPTION_FIELDS = ("captions", "captions_coref")


class _SplitFrames:
    """Shared by both datasets: the split, its meta, and how to build one frame's fields."""

    def __init__(self, root, split: str, image_size, caption_field: str, with_masks: bool, max_chars: int | None,
                 resample: str = "bicubic"):
        if caption_field not in CAPTION_FIELDS:
            raise ValueError(f"caption_field must be one of {CAPTION_FIELDS}, got {caption_field!r}")
        self.root = Path(root)
        self.split = split
        self.jsonl = self.root / f"{split}.jsonl"
        self.image_size = image_size
        self.resample = resample  # the frames' resize filter (src/data/transforms.py: load_frame)
        self.caption_field = caption_field
        self.with_masks = with_masks
        self.meta, self.stories = read_split(self.root, split)
        self.character_names = [c["name"] for c in self.meta["characters"]]
        self.char_index = {name: i for i, name in enumerate(self.character_names)}
        self.bg_index = {name: i for i, name in enumerate(self.meta["backgrounds"])}
        for story in self.stories:
            self._check_story(story)
        most = max((len(names) for s in self.stories for names in (s.characters or [])), default=0)
        self.max_chars = most if max_chars is None else max_chars
        if most > self.max_chars:
            raise ValueError(f"{self.jsonl}: a frame has {most} characters but max_chars={self.max_chars}")

    def _check_story(self, story: Story):
        if getattr(story, self.caption_field) is None:
            raise StoryFormatError(self.jsonl, story.line, self.caption_field,
                                   f"story '{story.id}' has no {self.caption_field} "
                                   f"(asked for by caption_field='{self.caption_field}')")
        if self.with_masks:
            for key in ("characters", "masks"):
                if getattr(story, key) is None:
                    raise StoryFormatError(self.jsonl, story.line, key,
                                           f"story '{story.id}' has no {key}, needed by with_masks=True")
            for k, names in enumerate(story.characters):
                if names and story.masks[k] is None:
                    raise StoryFormatError(self.jsonl, story.line, "masks",
                                           f"story '{story.id}' frame {k} has characters {names} but no mask")

    def frame(self, story: Story, k: int) -> dict:
        names = story.characters[k] if story.characters is not None else []
        background = story.backgrounds[k] if story.backgrounds is not None else None
        char_labels = torch.zeros(len(self.character_names))
        for name in names:
            char_labels[self.char_index[name]] = 1.0
        item = {
            "pixel_values": story_frame(self.root, story, k, self.image_size, self.resample),
            "caption": getattr(story, self.caption_field)[k],
            "caption_original": story.captions[k],
            "story_id": story.id,
            "frame_index": k,
            "characters": list(names),
            "background": background,
            "char_labels": char_labels,
            "bg_label": self.bg_index[background] if background is not None else -1,
        }
        if self.with_masks:
            item["char_masks"] = self.char_masks(story, k, len(names))
            item["num_chars"] = len(names)
        return item

    def char_masks(self, story: Story, k: int, num_chars: int) -> torch.Tensor:
        """[M, H, W] float: channel i is the visible pixels of the frame's i-th character, zero-padded."""
        height, width = (self.image_size, self.image_size) if isinstance(self.image_size, int) else self.image_size
        masks = torch.zeros(self.max_chars, height, width)
        if num_chars == 0:
            return masks
        def read(path):
            labels = load_mask(path, self.image_size)
            if int(labels.max()) > num_chars:
                raise ImageFileError(path, None, None, f"mask has label {int(labels.max())} but the frame has "
                                                       f"{num_chars} characters")
            return labels

        labels = story_file(self.root, story, "masks", k, read)
        for i in range(num_chars):
            masks[i] = (labels == i + 1).float()
        return masks


class _SplitDataset(Dataset):
    """What both datasets share: the split's meta, stories and frame builder."""

    def __init__(self, root, split: str, image_size, caption_field: str = "captions",
                 with_masks: bool = False, max_chars: int | None = None, resample: str = "bicubic"):
        self.data = _SplitFrames(root, split, image_size, caption_field, with_masks, max_chars, resample)

    @property
    def meta(self) -> dict:
        return self.data.meta

    @property
    def stories(self) -> list[Story]:
        return self.data.stories

    @property
    def max_chars(self) -> int:
        """M: the number of char_masks channels (the most characters in one frame unless given)."""
        return self.data.max_chars


class FrameDataset(_SplitDataset):
    """Every frame of every story of a split. Item keys: pixel_values [3,H,W] in [-1,1], caption (from
    `caption_field`), caption_original, story_id, frame_index, characters, background (str|None),
    char_labels [C] multi-hot in meta order, bg_label (int, -1 if none), index (i); with_masks adds
    char_masks [M,H,W] and num_chars."""

    def __init__(self, root, split: str, image_size, caption_field: str = "captions",
                 with_masks: bool = False, max_chars: int | None = None):
        super().__init__(root, split, image_size, caption_field, with_masks, max_chars)
        self.index = [(s, k) for s, story in enumerate(self.stories) for k in range(story.num_frames)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        s, k = self.index[i]
        return {**self.data.frame(self.stories[s], k), "index": i}  # i: the frame's row in a frozen-output cache


class StoryDataset(_SplitDataset):
    """Whole stories of a split. Item keys: pixel_values [F,3,H,W], captions (from `caption_field`),
    captions_original, story_id, characters (per frame), backgrounds, char_labels [F,C],
    bg_labels [F]; with_masks adds char_masks [F,M,H,W] and num_chars [F]."""

    def __len__(self) -> int:
        return len(self.stories)

    def __getitem__(self, i: int) -> dict:
        story = self.stories[i]
        frames = [self.data.frame(story, k) for k in range(story.num_frames)]
        item = {
            "pixel_values": torch.stack([f["pixel_values"] for f in frames]),
            "captions": [f["caption"] for f in frames],
            "captions_original": [f["caption_original"] for f in frames],
            "story_id": story.id,
            "characters": [f["characters"] for f in frames],
            "backgrounds": [f["background"] for f in frames],
            "char_labels": torch.stack([f["char_labels"] for f in frames]),
            "bg_labels": torch.tensor([f["bg_label"] for f in frames], dtype=torch.long),
        }
        if self.data.with_masks:
            item["char_masks"] = torch.stack([f["char_masks"] for f in frames])
            item["num_chars"] = torch.tensor([f["num_chars"] for f in frames], dtype=torch.long)
        return item


class CharacterFrameDataset(FrameDataset):
    """FrameDataset with masks, plus each character's reference cut from the frame itself (Char-LDM
    training, src/data/references.py). Extra keys: ref_pixels [M,3,R,R] in [0,1] and ref_masks
    [M,1,R,R] (zeros for empty slots); R = `reference_size`, the image encoder's input."""

    def __init__(self, root, split: str, image_size, reference_size: int, caption_field: str = "captions",
                 max_chars: int | None = None):
        super().__init__(root, split, image_size, caption_field, with_masks=True, max_chars=max_chars)
        self.reference_size = reference_size

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        size = self.reference_size
        item["ref_pixels"] = torch.zeros(self.max_chars, 3, size, size)
        item["ref_masks"] = torch.zeros(self.max_chars, 1, size, size)
        for j in range(item["num_chars"]):
            item["ref_pixels"][j], item["ref_masks"][j] = crop_reference(item["pixel_values"],
                                                                         item["char_masks"][j], size)
        return item


def collate_frames(items: list[dict]) -> dict:
    """Batch items of FrameDataset or StoryDataset: tensors stacked (new dim 0), ints -> LongTensor,
    floats -> FloatTensor, strings / None / lists kept as Python lists of length B."""
    if not items:
        raise ValueError("collate_frames: empty batch")
    keys = list(items[0])
    for n, item in enumerate(items):
        if list(item) != keys:
            raise ValueError(f"collate_frames: item {n} has keys {sorted(item)} but item 0 has {sorted(keys)}")
    batch = {}
    for key in keys:
        values = [item[key] for item in items]
        if all(isinstance(v, torch.Tensor) for v in values):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"collate_frames: '{key}' has different shapes in one batch: {sorted(shapes)}")
            batch[key] = torch.stack(values)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            batch[key] = torch.tensor(values, dtype=torch.long)
        elif all(isinstance(v, float) for v in values):
            batch[key] = torch.tensor(values, dtype=torch.float32)
        else:
            batch[key] = values
    return batch
