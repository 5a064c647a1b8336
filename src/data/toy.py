"""The embedded toy dataset: short procedural stories in the story format (docs/story_format.md).

Deterministic: story i of split s is drawn from its own random generator seeded by (seed, s, i), so
the files are byte-identical whatever the number of worker processes. The dataset is written to a
temporary sibling folder and renamed into place only when complete.

    python -m src.data.toy --out data/toy [--seed 0 --num-train 2000 --num-val 200 --num-test 200]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from src.data.convert.storystream import chunk_ranges
from src.data.coref import corefer_story
from src.data.toy_long import chunk_line, name_phrase, plan_long_story
from src.data.toy_sprites import BACKGROUNDS, CHARACTERS, background_layout, draw_background, \
    draw_character, draw_reference

GENERATOR_VERSION = "2"  # 2: flat backgrounds (no 1-pixel waves, pebbles, windows, stars)
FRAMES_PER_STORY = 4
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
GENDERS = {c.name: c.gender for c in CHARACTERS}
BY_NAME = {c.name: c for c in CHARACTERS}

# How stories unfold (tuned so that about 40% of frames 1..3 satisfy the co-reference rule).
P_KEEP_CAST = 0.4        # frame k shows only characters of frame k-1 on purpose
P_KEEP_BACKGROUND = 0.8  # the background usually stays
CAST_SIZES, CAST_WEIGHTS = (1, 2, 3), (0.1, 0.5, 0.4)
MIN_VISIBLE = 0.75       # a character keeps at least this share of its own pixels after occlusion

LOCATIONS = {"beach": "on the beach", "forest": "in the forest", "city": "in the city", "night": "at night"}
GROUP_TEMPLATES = ("{S} walked {loc}.", "{S} played {loc}.", "{S} waited {loc}.", "{S} rested {loc}.",
                   "{S} danced {loc}.", "{S} looked around {loc}.", "{Loc}, {S} stopped.")
PAIR_TEMPLATES = ("{A} met {B} {loc}.", "{A} waved to {B} {loc}.", "{A} talked with {B} {loc}.")


# ----------------------------------------------------------------------------------------------
# one story


def make_caption(names: list[str], background: str, rng: np.random.Generator) -> str:
    loc = LOCATIONS[background]
    templates = GROUP_TEMPLATES + (PAIR_TEMPLATES if len(names) == 2 else ())
    template = templates[rng.integers(len(templates))]
    return template.format(S=name_phrase(names), A=names[0], B=names[-1], loc=loc, Loc=loc[0].upper() + loc[1:])


def _pick(rng: np.random.Generator, pool: list[str], low: int, high: int) -> list[str]:
    count = int(rng.integers(low, high + 1))
    return [pool[i] for i in sorted(rng.choice(len(pool), size=count, replace=False))]


def plan_story(rng: np.random.Generator, frames: int = FRAMES_PER_STORY) -> tuple[list[list[str]], list[str]]:
    """Characters and background per frame. A small cast makes characters recur, so co-reference is common."""
    names = [c.name for c in CHARACTERS]
    cast = _pick(rng, names, *(2 * [int(rng.choice(CAST_SIZES, p=CAST_WEIGHTS))]))
    characters = [_pick(rng, cast, 1, len(cast))]
    backgrounds = [BACKGROUNDS[rng.integers(len(BACKGROUNDS))]]
    for _ in range(1, frames):
        previous = characters[-1]
        if rng.random() < P_KEEP_CAST:
            frame = _pick(rng, previous, 1, len(previous))
        else:  # at least one character who was not in the previous frame
            newcomers = [n for n in cast if n not in previous]
            if not newcomers:  # the whole cast was on screen: a guest joins the cast
                guest = _pick(rng, [n for n in names if n not in cast], 1, 1)[0]
                cast, newcomers = [n for n in names if n in cast or n == guest], [guest]
            entering = _pick(rng, newcomers, 1, len(newcomers))
            staying = _pick(rng, previous, 0, min(len(previous), 3 - len(entering)))
            frame = [n for n in cast if n in entering or n in staying]
        characters.append(frame)
        if rng.random() < P_KEEP_BACKGROUND:
            backgrounds.append(backgrounds[-1])
        else:
            others = [b for b in BACKGROUNDS if b != backgrounds[-1]]
            backgrounds.append(others[rng.integers(len(others))])
    return characters, backgrounds


def render_frame(names: list[str], background: np.ndarray, rng: np.random.Generator):
    """Draw the characters at random places and sizes with small overlap.

    Returns (image uint8 [S,S,3], label map uint8 [S,S], boxes [[x0, y0, x1, y1]] in `names` order)."""
    image = background.copy()
    frame = image.shape[0]
    labels = np.zeros((frame, frame), dtype=np.uint8)
    boxes = []
    for i, name in enumerate(names):
        for attempt in range(200):
            side = int(rng.integers(int(frame * 0.22), int(frame * 0.42) + 1))
            side = max(6, side - attempt // 40 * frame // 16)  # shrink if the frame is crowded
            x0, y0 = int(rng.integers(0, frame - side + 1)), int(rng.integers(0, frame - side + 1))
            trial = image.copy()
            mask = draw_character(trial, BY_NAME[name], x0, y0, side)
            new_labels = labels.copy()
            new_labels[mask] = i + 1
            own = [np.count_nonzero(labels == j + 1) for j in range(i)]
            kept = [np.count_nonzero(new_labels == j + 1) for j in range(i)]
            if all(k >= MIN_VISIBLE * o for k, o in zip(kept, own)):
                break
        else:
            raise RuntimeError(f"could not place {names} without large overlap")  # never seen in practice
        image, labels = trial, new_labels
        ys, xs = np.nonzero(mask)
        boxes.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
    return image, labels, boxes


def _save_png(array: np.ndarray, path: Path):
    # fixed settings and no metadata: the same pixels always give the same bytes
    Image.fromarray(array).save(path, format="PNG", compress_level=6)


def make_story(seed: int, split: str, index: int, image_size: int, out_dir: Path,
               frames: int = FRAMES_PER_STORY, long: bool = False) -> dict:
    """Draw story `index` of `split`, write its frames and masks under out_dir, return its story line.
    `long`: a long story whose text follows the characters from beat to beat (src/data/toy_long.py)."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    story_id = f"{split}_{index:05d}"
    if long:
        characters, backgrounds, captions = plan_long_story(rng, frames)
    else:
        characters, backgrounds = plan_story(rng, frames)
    layouts = {b: background_layout(b, rng) for b in BACKGROUNDS}  # one layout per story: places stay put
    line = {"id": story_id, "images": [], "captions": [], "captions_coref": [], "characters": characters,
            "boxes": [], "masks": [], "backgrounds": backgrounds}
    for k, (names, background) in enumerate(zip(characters, backgrounds)):
        image, labels, boxes = render_frame(names, draw_background(background, layouts[background], image_size), rng)
        line["images"].append(f"images/{story_id}_{k}.png")
        line["masks"].append(f"masks/{story_id}_{k}.png")
        _save_png(image, out_dir / line["images"][-1])
        _save_png(labels, out_dir / line["masks"][-1])
        line["boxes"].append(boxes)
        line["captions"].append(captions[k] if long else make_caption(names, background, rng))
    line["captions_coref"] = corefer_story(line["captions"], characters, GENDERS)
    return {key: line[key] for key in ("id", "images", "captions", "captions_coref", "characters", "boxes",
                                       "masks", "backgrounds")}


def _corefer(captions: list[str], characters: list[list[str]]) -> list[str]:
    return corefer_story(captions, characters, GENDERS)


def _make_chunk(args) -> list[dict]:
    seed, split, indices, image_size, out_dir, frames, story_frames, chunk_frames = args
    if not story_frames:
        return [make_story(seed, split, i, image_size, Path(out_dir), frames) for i in indices]
    return [piece for i in indices
            for piece in chunk_line(make_story(seed, split, i, image_size, Path(out_dir), story_frames, long=True),
                                    chunk_frames, _corefer)]


# ----------------------------------------------------------------------------------------------
# the whole dataset


def _meta(seed: int, image_size: int, counts: dict[str, int], frames: int | None = FRAMES_PER_STORY,
          long: dict | None = None) -> dict:
    return {
        "name": "toy",
        "format_version": 1,
        "source": f"src.data.toy (seed {seed})",
        "converter_version": GENERATOR_VERSION,
        "frame_size": [image_size, image_size],
        "frames_per_story": frames,
        "characters": [{"name": c.name, "gender": c.gender, "reference": f"chars/{c.name}.png",
                        "shape": c.shape, "colour": list(c.colour)} for c in CHARACTERS],
        "backgrounds": list(BACKGROUNDS),
        "toy": {"seed": seed, "image_size": image_size, **{f"num_{s}": n for s, n in counts.items()}, **(long or {})},
    }


def generate_toy_dataset(out_dir, seed: int = 0, num_train: int = 2000, num_val: int = 200, num_test: int = 200,
                         image_size: int = 64, num_workers: int = 2, overwrite: bool = False,
                         progress: bool = True, frames_per_story: int = FRAMES_PER_STORY, story_frames: int = 0,
                         chunk_frames: int = 0) -> Path:
    """Write the toy dataset to `out_dir` and return its path. An existing `out_dir` is an error unless
    `overwrite`; an interrupted run leaves only a hidden `.<name>.partial-<pid>` folder, never `out_dir`.
    `frames_per_story` > 4 gives long stories (StoryGPT-V Table 5: 10/20/40/50 frames); the default 4
    draws exactly the stories it always drew.
    `story_frames` > 0 gives StoryStream-shaped stories instead (SEED-Story stage 2): `story_frames` beats
    whose text follows the characters (src/data/toy_long.py), cut into stories of `chunk_frames` beats (0:
    kept whole); `num_*` then count the long stories, and `frames_per_story` is not used."""
    out_dir = Path(out_dir)
    counts = {"train": num_train, "val": num_val, "test": num_test}
    for split, count in counts.items():
        if count < 0:
            raise ValueError(f"num_{split} must be >= 0, got {count}")
    if frames_per_story < 1:
        raise ValueError(f"frames_per_story must be >= 1, got {frames_per_story}")
    if story_frames < 0 or chunk_frames < 0:
        raise ValueError(f"story_frames and chunk_frames must be >= 0, got {story_frames}, {chunk_frames}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 for recognisable sprites, got {image_size}")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass overwrite=True / --overwrite to replace it)")
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        for sub in ("images", "masks", "chars"):
            (tmp / sub).mkdir(parents=True)
        for char in CHARACTERS:
            _save_png(draw_reference(char, image_size), tmp / "chars" / f"{char.name}.png")
        chunk = 25
        jobs = [(seed, split, list(range(start, min(start + chunk, count))), image_size, str(tmp), frames_per_story,
                 story_frames, chunk_frames) for split, count in counts.items() for start in range(0, count, chunk)]
        lines: dict[str, list[dict]] = {split: [] for split in counts}
        bar = tqdm(total=sum(counts.values()), desc=f"toy stories -> {out_dir}", unit="story", disable=not progress)
        bar_unit = max(1, len(chunk_ranges(story_frames, chunk_frames))) if story_frames else 1
        if num_workers > 1:
            context = multiprocessing.get_context("spawn")  # safe even when the caller has threads (torch)
            with ProcessPoolExecutor(num_workers, mp_context=context) as pool:
                for job, stories in zip(jobs, pool.map(_make_chunk, jobs)):
                    lines[job[1]] += stories
                    bar.update(len(stories) // bar_unit)
        else:
            for job in jobs:
                stories = _make_chunk(job)
                lines[job[1]] += stories
                bar.update(len(stories) // bar_unit)
        bar.close()
        for split, stories in lines.items():
            text = "".join(json.dumps(line) + "\n" for line in stories)
            (tmp / f"{split}.jsonl").write_text(text, encoding="utf-8")
        if story_frames:  # every chunk has chunk_frames beats only when they divide the story
            frames = (chunk_frames or story_frames) if story_frames % (chunk_frames or story_frames) == 0 else None
            meta = _meta(seed, image_size, counts, frames, {"story_frames": story_frames, "chunk_frames": chunk_frames})
        else:
            meta = _meta(seed, image_size, counts, frames_per_story)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():  # overwrite: swap the new folder in, then drop the old one
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description="Generate the toy story dataset (docs/story_format.md).")
    parser.add_argument("--out", required=True, help="dataset folder to create, e.g. data/toy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--frames-per-story", type=int, default=FRAMES_PER_STORY, help="e.g. 10/20/40/50: long stories")
    parser.add_argument("--story-frames", type=int, default=0,
                        help="SEED-Story stage 2: long stories of N beats whose text follows the characters, e.g. 30")
    parser.add_argument("--chunk-frames", type=int, default=10, help="with --story-frames: beats per story (0: whole)")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    args = parser.parse_args(argv)
    path = generate_toy_dataset(args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val,
                                num_test=args.num_test, image_size=args.image_size,
                                num_workers=args.num_workers, overwrite=args.overwrite,
                                frames_per_story=args.frames_per_story, story_frames=args.story_frames,
                                chunk_frames=args.chunk_frames)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
