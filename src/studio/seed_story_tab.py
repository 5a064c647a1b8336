"""The SEED-Story tab's handlers: a run's defaults and a dataset opening when it is chosen, and writing and
drawing a story from an opening.

The run is a story_sft run (its MLLM, drawn by its model.detokenizer_run) or a story_adapt run (the adapted
de-tokenizer and the MLLM it was adapted to); a detokenizer or story_adapt run may replace the
de-tokenizer, as `bash scripts/story.sh --detokenizer` does. The request becomes a story file (opening
text and image, `beats` beats after it) in a fresh folder and is drawn by src/story.py's SEED-Story path:
SeedStoryPipeline.stream writes a beat and draws its frame before writing the next, and each beat (its
text and frame) reaches the page as soon as it is drawn. Beat 0 is the opening, drawn back from its
features. The MLLM may end the story before `beats` (it chose </s>): the status says so.
"""
from __future__ import annotations

from src.studio.discovery import DETOKENIZERS, SEED_STORY, choices, info_for, read_run_info, runs_of
from src.studio.drawing import Studio, copy_upload, new_story_folder, page_error, write_story_yaml

NO_RUN = ("no SEED-Story run chosen: the studio lists every story_sft and story_adapt run under its folders "
          "(outputs/, pretrained/); train them with `bash scripts/demo.sh seed-story`")


def run_choices(studio: Studio):
    """(MLLM runs, de-tokenizer runs) as drop-down choices."""
    runs = studio.runs()
    return choices(runs_of(runs, SEED_STORY)), choices(runs_of(runs, DETOKENIZERS))


def drawing_config(studio: Studio, run: str) -> dict:
    """The config whose `sample:` settings draw: a story_adapt run's own, a story_sft run's de-tokenizer's."""
    info = info_for(studio.runs(), run)
    if info is None:
        return {}
    if info.task == "story_sft":
        detok = (info.config.get("model") or {}).get("detokenizer_run")
        upstream = read_run_info(_run_folder(detok)) if detok else None
        return upstream.config if upstream is not None else info.config
    return info.config


def _run_folder(path):
    from src.runs import run_folder_of

    try:
        return run_folder_of(path)
    except FileNotFoundError:
        return path


def run_defaults(studio: Studio, run: str):
    """(steps, guidance) of the run that draws."""
    sample = drawing_config(studio, run).get("sample") or {}
    return sample.get("num_inference_steps", 25), sample.get("guidance_scale", 5.0)


def dataset_opening(studio: Studio, run: str):
    """(text, image path) of the first val story of the run's dataset: an opening that works out of the box."""
    from src.data.stories import read_split, resolve

    try:
        info = info_for(studio.runs(), run)
        if info is None:
            raise ValueError(NO_RUN)
        root = (info.config.get("data") or {}).get("root")
        _, stories = read_split(root, "val")
        if not stories:
            raise ValueError(f"{root}/val.jsonl: no story to open with")
        return stories[0].captions[0], str(resolve(root, stories[0].images[0]))
    except Exception as err:
        raise page_error(err) from err


def beat_caption(k: int, record: dict) -> str:
    return f"{'opening' if k == 0 else f'beat {k}'}: {record['text']}"


def story_text(records: list[dict]) -> str:
    """The story so far, one beat a line, as the page shows it."""
    return "\n\n".join(f"**{'Opening' if k == 0 else f'Beat {k}'}.** {r['text']}" for k, r in enumerate(records))


def draw(studio: Studio, run, detokenizer, title, opening_text, opening_image, beats, context, steps, guidance,
         seed, temperature, offload, precision):
    """Write and draw the story; yields (frames with their text, the story's text, status, download files)
    as each beat is drawn."""
    from src.data.story_file import read_story_file
    from src.story import check_seed_story, draw_request, parse_args, resolve_system

    folder = None
    try:
        if not run:
            raise ValueError(NO_RUN)
        if not (opening_text or "").strip():
            raise ValueError("the opening text is empty: SEED-Story starts from an opening text and image")
        if not opening_image:
            raise ValueError("no opening image: upload one, or take the run's dataset opening")
        folder = new_story_folder(studio.out)
        story = {"title": (title or "").strip() or "My story",
                 "opening": {"text": opening_text.strip(), "image": copy_upload(opening_image, folder, "opening")},
                 "beats": int(beats)}
        request = read_story_file(write_story_yaml(folder, story))
        check_seed_story(request)
        argv = [str(folder / "story.yaml"), "--run", str(run), "--out", str(folder), "--seed", str(int(seed)),
                "--steps", str(int(steps)), "--guidance", str(float(guidance)), "--context", str(context),
                "--temperature", str(float(temperature))] + (["--detokenizer", str(detokenizer)] if detokenizer else [])
        args = parse_args(argv)
        system = resolve_system(args)
    except Exception as err:
        raise studio.refuse(err, folder) from err

    def work(on_frame):
        pipe = studio.cache.get(system, args, offload, precision)
        return draw_request(pipe, system, request, {}, args, on_frame)

    def render(frames, status, files):
        return ([(f.image, beat_caption(f.index, f.record)) for f in frames], story_text([f.record for f in frames]),
                status, files)

    def status(frames, record):
        if record is not None:
            return done_status(record, request.beats, folder)
        if not frames:
            return f"Loading the models, then the opening and {request.beats} beats ..."
        return f"Beat {frames[-1].index} of {request.beats} written and drawn ..."
    yield from studio.draw(folder, request, work, render, status)


def done_status(record: dict, beats: int, folder) -> str:
    stats = record["settings"].get("stats") or {}
    written = len(record["frames"]) - 1
    ended = (f" The MLLM ended the story after {written} of {beats} beats (it chose `</s>`)."
             if stats.get("stop") == "</s>" else "")
    return (f"**Done**: the opening and {written} beats with {record['system']}, seed {record['seed']}, context "
            f"{record['settings']['context']}, in {record['seconds']:.1f} s.{ended} Saved in `{folder}` "
            f"(story.yaml, the frames, strip.png, index.html, story.json).")
