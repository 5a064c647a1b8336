"""StoryGPT-V's processed FlintstonesSV / PororoSV release (docs/storygpt_v.md, "Data the released code expects"; data/README.md).

    split.json                          {'train','val','test': [clip id]}
    cleaned_annotations.json            {id: {'caption' (F) | 'captions' [..] (P), 'tokens',
                                              'segments': [{'id','word','start','end','bbox'}]}}
    video_frames_sampled_4x/{id}.npy    uint8 (n, 512, 512, 3)
    seg_mask_4x_comb/{id}-frame{k}.npy  int (512, 512) map of segment ids
    following_cache3.pkl                {id: [next 3 ids]}
    labels_bg.pkl                       {'label': {id: multi-hot over 323 backgrounds}} (Flintstones)
    ../chars/*.jpeg                     portraits (Flintstones only)

Choices (deterministic, documented in data/README.md):
- the frame of a clip is `frame_choice` (default the middle one, n // 2), and its mask is
  `{id}-frame{k}.npy` for that same k; the original drew a random frame per access;
- Pororo's several captions per clip: the first one;
- characters of a frame are its segments whose `word` names a character (aliases from the data
  config); several segments of one character merge (box union, mask union); a segment's bbox
  [h1, w1, h2, w2] at 128 px becomes [x0, y0, x1, y1] at the stored size;
- the mask becomes our label map: pixels equal to a character's segment id get value i + 1;
- backgrounds: labels_bg.pkl has no names, so background j is called `bg_{j:03d}`; a frame with several
  positives takes the lowest index (counted in the notes); labels.pkl is not read (characters come
  from the named segments).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from src.data.convert.clips import ClipStorySource, load_json, load_pickle, load_splits
from src.data.convert.common import (ConversionError, FrameSpec, SourceError, bbox_128_to_box, choose_frame,
                                     npy_frame, open_npy, safe_name, union_box)

FRAMES_DIR = "video_frames_sampled_4x"
MASKS_DIR = "seg_mask_4x_comb"


class StoryGPTVSource(ClipStorySource):
    layout = "storygptv"
    split_file = "split.json"
    following_file = "following_cache3.pkl"

    @staticmethod
    def detect(source_dir: Path) -> bool:
        return (source_dir / "cleaned_annotations.json").is_file() or (source_dir / FRAMES_DIR).is_dir()

    def __init__(self, source_dir, facts, options):
        super().__init__(source_dir, facts, options)
        d = self.source_dir
        self.frame_choice = options["frame_choice"]
        self.use_masks = options.get("masks", True)
        self.split_ids = load_splits(d / self.split_file)
        self.annotations = load_json(d / "cleaned_annotations.json")
        if not isinstance(self.annotations, dict):
            raise ConversionError(f"{d / 'cleaned_annotations.json'}: expected an object keyed by clip id")
        self.followings = {str(k): v for k, v in load_pickle(d / self.following_file).items()}
        self.frame_size = self._probe_frame_size()
        self.background_names: list[str] = []
        self.background_labels = None
        self.multi_backgrounds = Counter()
        self.missing_backgrounds = 0
        if (d / "labels_bg.pkl").is_file():
            labels = load_pickle(d / "labels_bg.pkl")
            labels = labels.get("label", labels) if isinstance(labels, dict) else None
            if not isinstance(labels, dict) or not labels:
                raise ConversionError(f"{d / 'labels_bg.pkl'}: expected {{'label': {{id: multi-hot vector}}}}")
            self.background_labels = {str(k): v for k, v in labels.items()}
            width = len(next(iter(self.background_labels.values())))
            self.background_names = [f"bg_{j:03d}" for j in range(width)]
        else:
            self.notes.append(f"{d / 'labels_bg.pkl'} absent: no backgrounds")
        self.notes.append("labels.pkl not read: characters come from the named segments")
        if not self.use_masks:
            self.notes.append("masks not converted (--no-masks)")

    def _probe_frame_size(self) -> tuple[int, int]:
        """Frame size of the release, from the first clip file that opens (boxes are scaled to it)."""
        for ids in self.split_ids.values():
            for clip_id in ids:
                try:
                    clip = open_npy(self.source_dir / FRAMES_DIR / f"{clip_id}.npy", clip_id)
                except SourceError:
                    continue
                if clip.ndim == 4:
                    return int(clip.shape[1]), int(clip.shape[2])
        raise ConversionError(f"{self.source_dir / FRAMES_DIR}: no readable clip .npy for any split id")

    def describe(self) -> str:
        return f"StoryGPT-V processed release ({self.layout}) at {self.source_dir}, frame_choice={self.frame_choice}"

    def backgrounds(self) -> list[str]:
        return self.background_names

    def release_references(self) -> dict[str, Path]:
        chars_dir = self.options.get("chars_dir")
        candidates = [Path(chars_dir)] if chars_dir else [self.source_dir / "chars", self.source_dir.parent / "chars"]
        for folder in candidates:
            if folder.is_dir():
                found = {}
                for path in sorted(folder.iterdir()):
                    if path.suffix.lower() not in (".jpeg", ".jpg", ".png"):
                        continue
                    name = self.matcher.canonical(path.stem)
                    if name is None:
                        self.notes.append(f"release reference {path} names no character of the dataset (not used)")
                    else:
                        found[name] = path
                return found
        if chars_dir:
            raise ConversionError(f"--chars-dir {chars_dir}: not a folder")
        return {}

    # -- one clip ------------------------------------------------------------------------------

    def frame(self, clip_id: str) -> FrameSpec:
        ann_file = self.source_dir / "cleaned_annotations.json"
        ann = self.annotations.get(clip_id)
        if not isinstance(ann, dict):
            raise SourceError(ann_file, clip_id, "no annotation for this clip")
        caption = ann.get("caption")
        if caption is None and isinstance(ann.get("captions"), list) and ann["captions"]:
            caption = ann["captions"][0]
        if not isinstance(caption, str):
            raise SourceError(ann_file, clip_id, "annotation has neither 'caption' nor a non-empty 'captions' list")
        height, width = self.frame_size
        characters: list[str] = []
        boxes: list[list[int]] = []
        segment_ids: list[list[int]] = []
        for seg in ann.get("segments") or []:
            if not isinstance(seg, dict) or "word" not in seg or "bbox" not in seg or "id" not in seg:
                raise SourceError(ann_file, clip_id, f"segment without 'id', 'word' or 'bbox': {seg!r}")
            name = self.matcher.canonical(str(seg["word"]))
            if name is None:
                self.ignored[str(seg["word"]).lower()] += 1
                continue
            box = bbox_128_to_box(seg["bbox"], width, height)
            if box is None:
                self.ignored[f"{seg['word']} (empty bbox)"] += 1
                continue
            if name in characters:
                i = characters.index(name)
                boxes[i] = union_box(boxes[i], box)
                segment_ids[i].append(int(seg["id"]))
            else:
                characters.append(name)
                boxes.append(box)
                segment_ids.append([int(seg["id"])])
        frame_file = self.source_dir / FRAMES_DIR / f"{clip_id}.npy"
        return FrameSpec(
            key=clip_id, caption=caption, image_path=f"images/{safe_name(clip_id)}.png",
            read_image=lambda: self._read_frame(frame_file, clip_id),
            characters=characters, boxes=boxes,
            read_mask=(lambda: self._read_mask(frame_file, clip_id, segment_ids)) if self.use_masks else None,
            background=self._background(clip_id))

    def _read_frame(self, path: Path, clip_id: str) -> np.ndarray:
        frame = npy_frame(path, clip_id, self.frame_choice)
        if frame.shape[:2] != self.frame_size:
            raise SourceError(path, clip_id, f"frames are {frame.shape[:2]}, the release's are {self.frame_size}")
        return frame

    def _read_mask(self, frame_file: Path, clip_id: str, segment_ids: list[list[int]]) -> np.ndarray:
        k = choose_frame(open_npy(frame_file, clip_id).shape[0], self.frame_choice)
        path = self.source_dir / MASKS_DIR / f"{clip_id}-frame{k}.npy"
        seg_map = open_npy(path, clip_id)
        if seg_map.ndim != 2:
            raise SourceError(path, clip_id, f"expected an (H, W) map of segment ids, got shape {seg_map.shape}")
        seg_map = np.asarray(seg_map)
        label = np.zeros(seg_map.shape, dtype=np.uint8)
        for i, ids in enumerate(segment_ids):
            label[np.isin(seg_map, ids)] = i + 1
        return label

    def _background(self, clip_id: str) -> str | None:
        if self.background_labels is None:
            return None
        vector = self.background_labels.get(clip_id)
        if vector is None:
            self.missing_backgrounds += 1
            if self.missing_backgrounds == 1:
                self.notes.append(f"{self.source_dir / 'labels_bg.pkl'}: some clips have no background label and "
                                  f"get null (first: '{clip_id}')")
            return None
        positives = np.flatnonzero(np.asarray(vector))
        if len(positives) == 0:
            return None
        if len(positives) > 1:
            self.multi_backgrounds[clip_id] += 1
            if len(self.multi_backgrounds) == 1:
                self.notes.append("some clips have several background labels; the lowest index is kept "
                                  f"(first: '{clip_id}')")
        return self.background_names[int(positives[0])]
