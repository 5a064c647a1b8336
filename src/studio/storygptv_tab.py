"""The StoryGPT-V tab's handlers: a run's defaults when it is chosen, and drawing a story.

A story is one caption per line. Characters: up to CHARACTER_SLOTS name + reference image pairs; a
caption that names one of the run's dataset characters without a slot takes the dataset's reference
(as a story file's character without `image`). The request becomes a story file in a fresh folder under
the studio's output folder and is checked and drawn as `bash scripts/story.sh` would (src/story.py).

Frames appear one by one. With stage 2 the pipeline draws them in order anyway (each frame conditions the
LLM's next). Char-LDM alone would draw a story in batches of the run's sample.batch_size (the dataset
path's choice); here it draws one frame per batch, so each frame shows as soon as it is done.
"""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from src.studio.discovery import STORYGPTV, info_for, runs_of
from src.studio.drawing import Studio, copy_upload, new_story_folder, write_story_yaml

CHARACTER_SLOTS = 3
EXAMPLE_STORY = "\n".join(["Ada and Bob walked on the beach.", "Ada met Cleo in the forest.", "Bob waited in the city."])
NO_RUN = ("no StoryGPT-V run chosen: the studio lists every char_ldm and align run under its folders "
          "(outputs/, pretrained/); train one with `bash scripts/demo.sh`")


def run_defaults(studio: Studio, run: str):
    """(steps, guidance, seed, the run's dataset characters as (image, name) pairs, a note) for a chosen run."""
    info = info_for(studio.runs(), run)
    if info is None:
        return 15, 3.0, 0, [], ""
    steps, guidance = info.sample("num_inference_steps", 15), info.sample("guidance_scale", 3.0)
    seed = info.sample("seed", 0)
    return steps, guidance, seed, *dataset_characters(info.config)


def dataset_characters(config: dict) -> tuple[list, str]:
    """The run's dataset characters with their reference images, and a note when there are none to show."""
    from src.data.stories import read_meta, resolve

    root = (config.get("data") or {}).get("root")
    try:
        meta = read_meta(root)
    except (ValueError, OSError, TypeError):
        return [], f"The run's dataset ({root}) is not on disk yet: it is built on the first draw."
    refs = [(str(resolve(root, c["reference"])), c["name"]) for c in meta["characters"] if c.get("reference")]
    names = ", ".join(c["name"] for c in meta["characters"])
    return refs, f"The run's dataset characters: {names}. A caption that names one uses its reference below."


def frame_caption(k: int, record: dict) -> str:
    """What the page writes under frame k: its caption, the names fused in it, what conditioned it."""
    lines = [f"{k + 1}. {record['caption']}"]
    fused = record.get("fused") or []
    if record.get("conditioning") == "stage2":
        lines.append("stage 2: the LLM's conditioning" + (" (pronoun frame)" if record.get("pronoun_frame") else ""))
        resolved = record.get("stage2_resolved") or {}
        if resolved.get("nearest"):
            lines.append(f"nearest to: {resolved['nearest']}")
    else:
        lines.append("fused: " + (", ".join(fused) if fused else "none"))
    return "\n".join(lines)


def build_request(studio: Studio, title: str, text: str, slots: tuple):
    """(story folder, StoryRequest) from the page's fields; a bad field is a ValueError naming it."""
    from src.data.story_file import read_story_file

    captions = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not captions:
        raise ValueError("the story is empty: write one caption per line")
    folder = new_story_folder(studio.out)
    try:
        characters = {}
        for slot in range(0, len(slots), 2):
            name, upload = (slots[slot] or "").strip(), slots[slot + 1]
            if not name and not upload:
                continue
            if not name:
                raise ValueError(f"character {slot // 2 + 1}: an image without a name (give the name the captions use)")
            if name in characters:
                raise ValueError(f"character '{name}' is given twice")
            characters[name] = {"image": copy_upload(upload, folder, name)} if upload else None
        story = {"title": (title or "").strip() or "My story", "frames": captions}
        if characters:
            story["characters"] = characters
        return folder, read_story_file(write_story_yaml(folder, story))
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def draw(studio: Studio, run, stage2, title, text, steps, guidance, seed, offload, precision, *slots):
    """Draw the story; yields (frames with captions, status, download files) as each frame is done."""
    from src.story import check_storygptv_story, draw_request, parse_args, resolve_system

    folder = None
    try:
        if not run:
            raise ValueError(NO_RUN)
        info = info_for(studio.runs(), run)
        if info is not None and info.task not in STORYGPTV:
            raise ValueError(f"{run}: a {info.task} run; the StoryGPT-V tab draws with char_ldm or align runs")
        if stage2 and info is not None and info.task == "align":
            raise ValueError(f"{run} is an align run already (stage 2 with its own Char-LDM): leave 'Stage 2' empty")
        folder, request = build_request(studio, title, text, slots)
        argv = [str(folder / "story.yaml"), "--run", str(run), "--out", str(folder), "--seed", str(int(seed)),
                "--steps", str(int(steps)), "--guidance", str(float(guidance))] + (["--stage2", str(stage2)] if stage2 else [])
        args = parse_args(argv)
        system = resolve_system(args)
        characters = check_storygptv_story(request, system["ldm_cfg"], system["stage2"] is not None)
    except Exception as err:
        raise studio.refuse(err, folder) from err

    def work(on_frame):
        pipe = studio.cache.get(system, args, offload, precision)
        if pipe.stage2 is None:
            pipe.settings = replace(pipe.settings, batch_size=1)  # one frame per batch: each shows when done
        return draw_request(pipe, system, request, characters, args, on_frame)

    def render(frames, status, files):
        return [(f.image, frame_caption(f.index, f.record)) for f in frames], status, files

    def status(frames, record):
        if record is not None:
            return done_status(record, folder)
        if not frames:
            return f"Loading the models and drawing {len(request.frames)} frames ..."
        return f"Frame {len(frames)} of {len(request.frames)} drawn ..."
    yield from studio.draw(folder, request, work, render, status)


def done_status(record: dict, folder: Path) -> str:
    return (f"**Done**: {len(record['frames'])} frames with {record['system']}, seed {record['seed']}, in "
            f"{record['seconds']:.1f} s ({record['seconds_per_frame']:.2f} s per frame). Saved in `{folder}` "
            f"(story.yaml, the frames, strip.png, index.html, story.json).")


def run_choices(studio: Studio):
    """(StoryGPT-V runs, align runs) as drop-down choices."""
    from src.studio.discovery import choices

    runs = studio.runs()
    return choices(runs_of(runs, STORYGPTV)), choices(runs_of(runs, ("align",)))
