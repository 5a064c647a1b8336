"""The release's data code on our inputs (StoryGPT-V stage 1): its co-reference rewrite, name marking and
tokenization (models/data.py EvalStoryDataset, EvalPororoStoryDataset, ImageDataset) and its reference
transforms (models/transforms.py), run from a folder in the layout its datasets read (split.json,
cleaned_annotations.json, following_cache*.pkl, data/chars/{name}.jpeg relative to the working folder).
`R` is storygptv_stage1.release_modules' namespace of the clone's modules.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from src.tools.parity.sgv_cases import FILLER, FLINTSTONES_CAPTIONS, IMAGE_TOKEN, PORORO_CAPTIONS, TRAINING_MAX


def release_args(R, **values):
    """models/utils.py's defaults, then the values the release's scripts pass."""
    args = R.utils.parse_args(default=True)
    for key, value in values.items():
        setattr(args, key, value)
    return args


def _clip_id(n: int) -> str:
    return f"s_01_e_01_shot_{n:06d}_{n + 1:06d}"


def write_release_dataset(root: Path, stories: list[list[tuple[str, list[str]]]], pororo: bool = False) -> list[str]:
    """A data/flintstones (or data/pororo) folder in the layout the release's Eval*StoryDataset reads,
    one 3-frame story per entry; returns the stories' first clip ids."""
    root.mkdir(parents=True, exist_ok=True)
    clips, followings, annotations, characters = [], {}, {}, []
    for s, story in enumerate(stories):
        ids = [_clip_id(100 * s + k) for k in range(len(story))]
        followings[ids[0]] = ids[1:]
        clips.append(ids[0])
        for cid, (caption, names) in zip(ids, story):
            annotations[cid] = {"captions": [caption]} if pororo else {"caption": caption}
            characters.append({"globalID": cid, "characters": [{"entityLabel": n} for n in names]})
    (root / "split.json").write_text(json.dumps({"train": [], "val": [], "test": clips}))
    (root / "cleaned_annotations.json").write_text(json.dumps(annotations))
    (root / "flintstones_annotations_v1-0.json").write_text(json.dumps(characters))
    for name in ("following_cache2.pkl", "following_cache3.pkl"):
        (root / name).write_bytes(pickle.dumps(followings))
    (root / "labels.pkl").write_bytes(pickle.dumps({}))
    return clips


def write_release_chars(folder: Path, images: dict[str, np.ndarray]) -> None:
    """data/chars/{name}.jpeg as the release reads them (the content is PNG: lossless, and read_image
    decodes by content)."""
    (folder / "data" / "chars").mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        Image.fromarray(image).save(folder / "data" / "chars" / f"{name}.jpeg", format="PNG")


@contextlib.contextmanager
def working_dir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def inference_batches(R, tokenizer, work: Path, stories, pororo: bool = False) -> list[list[dict]]:
    """The release's prepare_data_batch for every story (co-reference rewrite, name marking, tokens,
    references read from data/chars/ with its evaluation transforms)."""
    root = work / ("pororo" if pororo else "flintstones")
    clips = write_release_dataset(root, stories, pororo)
    transforms = R.transforms.get_object_transforms(release_args(R, no_object_augmentation=True))
    cls = R.data.EvalPororoStoryDataset if pororo else R.data.EvalStoryDataset
    kwargs = {} if pororo else {"story_len": 3}
    dataset = cls(tokenizer=tokenizer, object_transforms=transforms, device="cpu", max_num_objects=4, root=str(root),
                  ref_image="same", **kwargs)
    with working_dir(work):
        return [dataset.prepare_data_batch(clip) for clip in clips]


def training_marks(R, tokenizer, caption: str, names: list[str]):
    """ImageDataset._tokenize_and_mask_noun_phrases_ends on the caption's space-separated words, with one
    segment per annotated character ending at its name's last word (how the annotations mark them)."""
    from src.models.name_tokens import name_word_span

    dataset = R.data.ImageDataset.__new__(R.data.ImageDataset)
    dataset.tokenizer, dataset.image_token = tokenizer, IMAGE_TOKEN
    dataset.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    segments = []
    for name in names:
        span = name_word_span(caption, name)
        if span is not None:
            segments.append({"start": span[0], "end": span[1], "word": name})
    segments = sorted(segments, key=lambda s: s["end"])
    ids, mask = dataset._tokenize_and_mask_noun_phrases_ends(caption, segments, caption.split(" "))
    return ids[0], mask[0], [s["word"] for s in segments]


def _char_row(mask: torch.Tensor, chars: list[int]) -> torch.Tensor:
    """[L]: at the k-th marked position the index of the k-th object's character (-1 elsewhere), as
    fuse_object_embeddings pairs marks and objects."""
    row = torch.full(mask.shape, -1, dtype=torch.long)
    for k, position in enumerate(torch.nonzero(mask).flatten().tolist()):
        row[position] = chars[k] if k < len(chars) else -2  # -2: a mark without an object
    return row


def _object_characters(batch: dict, refs: dict[str, torch.Tensor], names: list[str]) -> list[int]:
    """Which character each of the batch's objects is: the reference whose transformed pixels it holds."""
    chars = []
    for k in range(int(batch["num_objects"])):
        match = [i for i, n in enumerate(names) if n in refs and torch.equal(batch["object_pixel_values"][k], refs[n])]
        if len(match) != 1:
            raise RuntimeError(f"object {k} of {batch['prompt_sd']!r} matches {len(match)} references")
        chars.append(match[0])
    return chars


def name_token_case(R, tokenizer, work: Path, images: dict) -> tuple[dict, dict]:
    """The release's marks on every test caption, on its three paths."""
    from torchvision.io import ImageReadMode, read_image

    from src.tools.parity.sgv_tiny import FLINTSTONES, PORORO

    transforms = R.transforms.get_object_transforms(release_args(R, no_object_augmentation=True))
    write_release_chars(work / "names", images)
    refs = {n: transforms(read_image(str(work / "names" / "data" / "chars" / f"{n}.jpeg"), mode=ImageReadMode.RGB))
            for n in images}
    filler = [(FILLER, ["x1"]), (FILLER, ["x2"])]
    tensors, meta = {}, {"names": {"flintstones": FLINTSTONES_CAPTIONS, "pororo": PORORO_CAPTIONS}}
    for dataset, captions, names, pororo in (("flintstones", FLINTSTONES_CAPTIONS, FLINTSTONES, False),
                                             ("pororo", PORORO_CAPTIONS, PORORO, True)):
        batches = inference_batches(R, tokenizer, work / "names", [[c] + filler for c in captions], pororo)
        ids, chars = [], []
        for batch, (caption, _) in zip(batches, captions):
            first = batch[0]
            if first["prompt_text_only"] != caption:
                raise RuntimeError(f"the release rewrote the first caption {caption!r}")
            ids.append(first["input_ids"][0])
            chars.append(_char_row(first["image_token_mask"][0], _object_characters(first, refs, names)))
        tensors[f"expected/names/{dataset}/sampling_ids"] = torch.stack(ids)
        tensors[f"expected/names/{dataset}/sampling_chars"] = torch.stack(chars)
        chars = []
        lowered = [n.lower() for n in names]
        for caption, annotated in captions:
            if len(annotated) > TRAINING_MAX:  # the release keeps a random 4 (ImageDataset.preprocess)
                chars.append(torch.full((77,), -1, dtype=torch.long))
                continue
            _, mask, words = training_marks(R, tokenizer, caption, annotated)
            chars.append(_char_row(mask, [lowered.index(w.lower()) for w in words]))
        tensors[f"expected/names/{dataset}/training_chars"] = torch.stack(chars)
    return tensors, meta


def reference_case(R, images: dict[str, np.ndarray], work: Path) -> dict[str, torch.Tensor]:
    """The release's evaluation transforms on each reference image (read with torchvision's read_image)."""
    from torchvision.io import ImageReadMode, read_image

    write_release_chars(work / "refs", images)
    transforms = R.transforms.get_object_transforms(release_args(R, no_object_augmentation=True))
    out = {}
    for name in ("fred", "barney", "wilma", "dino"):
        pixels = transforms(read_image(str(work / "refs" / "data" / "chars" / f"{name}.jpeg"), mode=ImageReadMode.RGB))
        out[f"expected/refs/{name}"] = (pixels * 255).round().to(torch.uint8)  # exactly k / 255
    out.update({f"input/refs/{name}": torch.from_numpy(image) for name, image in images.items()})
    return out


def real_reference_diffs(R, clone: Path, ours_loader) -> dict[str, float]:
    """Max |ours - release| per image of the release's own data/chars/*.jpeg (its portraits, 517 x 1110
    and the like), through its evaluation transforms and through `ours_loader(path)`."""
    from torchvision.io import ImageReadMode, read_image

    transforms = R.transforms.get_object_transforms(release_args(R, no_object_augmentation=True))
    diffs = {}
    for path in sorted((Path(clone) / "data" / "chars").glob("*.jpeg")):
        theirs = transforms(read_image(str(path), mode=ImageReadMode.RGB))
        diffs[path.name] = float((ours_loader(path) - theirs).abs().max())
    return diffs
