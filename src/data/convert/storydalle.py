"""The StoryDALL-E original FlintstonesSV release (data/README.md).

    train-val-test_split.json          {'train','val','test': [clip id]}
    flintstones_annotations_v1-0.json  [{'globalID', 'description', 'characters': [{'entityLabel', ...}], ...}]
    following_cache4.pkl               {id: [next 4 ids]}
    video_frames_sampled/{id}.npy      uint8 (n, 128, 128, 3)
    labels.pkl                         {id: multi-hot 7}: not read, characters come from entityLabel

The frame of a clip is `frame_choice` (default the middle one). Characters are the entityLabels that
name a character of the dataset (aliases from the data config; others are counted in the notes). The
release has no boxes, masks or background names.
"""

from __future__ import annotations

from pathlib import Path

from src.data.convert.clips import ClipStorySource, load_json, load_pickle, load_splits
from src.data.convert.common import ConversionError, FrameSpec, SourceError, npy_frame, safe_name

FRAMES_DIR = "video_frames_sampled"
ANNOTATIONS = "flintstones_annotations_v1-0.json"


class StoryDalleSource(ClipStorySource):
    layout = "storydalle"
    split_file = "train-val-test_split.json"
    following_file = "following_cache4.pkl"

    @staticmethod
    def detect(source_dir: Path) -> bool:
        return (source_dir / "train-val-test_split.json").is_file() and (source_dir / FRAMES_DIR).is_dir()

    def __init__(self, source_dir, facts, options):
        super().__init__(source_dir, facts, options)
        d = self.source_dir
        self.frame_choice = options["frame_choice"]
        self.split_ids = load_splits(d / self.split_file)
        self.followings = {str(k): v for k, v in load_pickle(d / self.following_file).items()}
        entries = load_json(d / ANNOTATIONS)
        if not isinstance(entries, list):
            raise ConversionError(f"{d / ANNOTATIONS}: expected a list of clip annotations")
        self.annotations = {}
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "globalID" not in entry:
                raise ConversionError(f"{d / ANNOTATIONS}: entry {i} has no 'globalID'")
            self.annotations[str(entry["globalID"])] = entry
        self.notes.append("labels.pkl not read: characters come from the named entityLabels")

    def describe(self) -> str:
        return f"StoryDALL-E FlintstonesSV release ({self.layout}) at {self.source_dir}, frame_choice={self.frame_choice}"

    def frame(self, clip_id: str) -> FrameSpec:
        ann_file = self.source_dir / ANNOTATIONS
        ann = self.annotations.get(clip_id)
        if ann is None:
            raise SourceError(ann_file, clip_id, "no annotation for this clip")
        caption = ann.get("description")
        if not isinstance(caption, str):
            raise SourceError(ann_file, clip_id, "annotation has no 'description' string")
        characters: list[str] = []
        for char in ann.get("characters") or []:
            label = str(char.get("entityLabel", "")) if isinstance(char, dict) else ""
            name = self.matcher.canonical(label)
            if name is None:
                self.ignored[label.lower()] += 1
            elif name not in characters:
                characters.append(name)
        frame_file = self.source_dir / FRAMES_DIR / f"{clip_id}.npy"
        return FrameSpec(key=clip_id, caption=caption.strip(), image_path=f"images/{safe_name(clip_id)}.png",
                         read_image=lambda: npy_frame(frame_file, clip_id, self.frame_choice),
                         characters=characters)
