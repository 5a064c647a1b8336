"""Your own story: draw a story file with a trained run (docs/own_story.md).

  bash scripts/story.sh STORY.yaml --run RUN [--stage2 ALIGN_RUN | --detokenizer RUN] --out DIR [options]
  bash scripts/story.sh --vistorybench ViStory --method NAME --run RUN --out OUTPUTS [--stories 01 02 | --lite]

The story file is docs/story_format.md's ("Your own story: the story file"). What --run is (its
config.yaml's `task`) decides the system:
  char_ldm      StoryGPT-V, Char-LDM alone; with --stage2 ALIGN_RUN, with that run's LLM (stage 2)
  align         StoryGPT-V with stage 2 and the Char-LDM its model.stage1 names
  story_sft     SEED-Story: this MLLM, drawn by --detokenizer or by its model.detokenizer_run
  story_adapt   SEED-Story: this adapted de-tokenizer and the MLLM it was adapted to (--detokenizer overrides)
StoryGPT-V draws the story's `frames`; SEED-Story starts from its `opening` and writes `beats` beats (or,
with `frames`, draws those captions: vis mode). DIR gets frame_NN.png, strip.png, index.html and story.json
(src/data/story_output.py). --vistorybench draws the benchmark's stories (src/data/vistorybench.py) into
the folder layout its scorer reads: OUTPUTS/<method>/<mode>/<language>/<timestamp>/<id>/shots/.

Memory (docs/own_story.md, "Will it fit my GPU?"): --offload none|model|sequential, --dtype and
--llm-dtype fp32|fp16|bf16|auto, --vae-slicing, --vae-tiling (src/memory.py). A bad input is one line
naming the file and key, exit status 2 (src/errors.py); --debug shows the traceback.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from src.errors import run_entry
from src.memory import DTYPES, OFFLOAD
from src.models.story_cache import CONTEXT_MODES, SinkSettings

STORYGPTV_TASKS = ("char_ldm", "align")
SEED_TASKS = ("story_sft", "story_adapt")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("story", nargs="?", type=Path, help="the story file (YAML)")
    parser.add_argument("--run", required=True, type=Path,
                        help="a char_ldm, align, story_sft or story_adapt run (folder, checkpoint or best/)")
    parser.add_argument("--stage2", type=Path, default=None, help="StoryGPT-V: an align run drawing with --run's Char-LDM")
    parser.add_argument("--detokenizer", type=Path, default=None,
                        help="SEED-Story: a detokenizer or story_adapt run (default: the one --run names or is)")
    parser.add_argument("--out", required=True, type=Path, help="the story's folder (--vistorybench: the outputs root)")
    parser.add_argument("--overwrite", action="store_true", help="replace a story already in --out")
    parser.add_argument("--seed", type=int, default=None,
                        help="default: the run's sample.seed (StoryGPT-V), 0 (SEED-Story)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the run's sample settings)")
    parser.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    parser.add_argument("--scheduler", default=None, help="a diffusers scheduler class name")
    parser.add_argument("--merge-step", type=int, default=None,
                        help="StoryGPT-V: text-only conditioning for this many steps, fused after")
    parser.add_argument("--context", choices=CONTEXT_MODES, default="multimodal_sink", help="SEED-Story's KV cache")
    parser.add_argument("--window-images", type=int, default=SinkSettings.window_images)
    parser.add_argument("--temperature", type=float, default=0.7, help="SEED-Story text sampling; 0: greedy")
    parser.add_argument("--top-p", type=float, default=0.5)
    parser.add_argument("--max-text-tokens", type=int, default=64)
    parser.add_argument("--weights", choices=("auto", "ema", "trained"), default="auto")
    parser.add_argument("--device", default=None, help="default: cuda when available")
    parser.add_argument("--offload", choices=OFFLOAD, default="none")
    parser.add_argument("--dtype", choices=("auto", *DTYPES), default="fp32", help="the diffusion models' precision")
    parser.add_argument("--llm-dtype", choices=("auto", *DTYPES), default=None, help="the LLM's (default: --dtype)")
    parser.add_argument("--vae-slicing", action="store_true", help="decode the frames one at a time")
    parser.add_argument("--vae-tiling", action="store_true", help="decode large frames tile by tile")
    bench = parser.add_argument_group("ViStoryBench (docs/vistorybench.md)")
    bench.add_argument("--vistorybench", type=Path, default=None, help="the benchmark's ViStory dataset folder")
    bench.add_argument("--method", default=None, help="the method's folder name in the outputs layout")
    bench.add_argument("--stories", nargs="+", default=None, help="story ids (default: all)")
    bench.add_argument("--lite", action="store_true", help="the benchmark's 20-story lite split")
    bench.add_argument("--language", choices=("en", "ch"), default="en")
    bench.add_argument("--mode", default="base", help="the outputs layout's mode folder")
    bench.add_argument("--timestamp", default=None, help="default: now, YYYYMMDD_HHMMSS")
    args = parser.parse_args(argv)
    if (args.story is None) == (args.vistorybench is None):
        parser.error("give a story file, or --vistorybench ROOT --method NAME (not both)")
    if args.vistorybench is not None and not args.method:
        parser.error("--vistorybench needs --method NAME (the folder the scorer reads the method from)")
    if args.stories and args.lite:
        parser.error("--stories and --lite: give one")
    return args


# ---- which system the runs make ------------------------------------------------------------------------
def resolve_system(args) -> dict:
    """{"system": "storygptv" | "seed_story", ...the runs and their configs}; every problem names the flag."""
    from src import runs

    task = runs.open_run(args.run, STORYGPTV_TASKS + SEED_TASKS, "--run")[2].task
    if task in STORYGPTV_TASKS:
        if args.detokenizer is not None:
            raise ValueError(f"--detokenizer: a SEED-Story flag, but --run is a {task} run (StoryGPT-V)")
        stage2 = args.run if task == "align" else args.stage2
        if task == "align" and args.stage2 is not None:
            raise ValueError("--stage2: --run is already an align run (stage 2 with the Char-LDM its model.stage1 names)")
        ldm_run = None if task == "align" else args.run
        configs = []
        if stage2 is not None:
            align_cfg = runs.open_run(stage2, ("align",), "--stage2")[2]
            configs.append(align_cfg)
            if ldm_run is None:
                ldm_run = Path(align_cfg.model.stage1)
        ldm_cfg = runs.open_run(ldm_run, ("char_ldm",), "--run" if task == "char_ldm" else
                                f"{stage2}: key 'model.stage1'")[2]
        return {"system": "storygptv", "run": None if task == "align" else args.run, "stage2": stage2,
                "ldm_cfg": ldm_cfg, "configs": [ldm_cfg, *configs]}
    if args.stage2 is not None:
        raise ValueError(f"--stage2: a StoryGPT-V flag, but --run is a {task} run (SEED-Story)")
    mllm, detok = (args.run, args.detokenizer) if task == "story_sft" else (None, args.detokenizer or args.run)
    mllm_run, mcfg, detok_run, dcfg, tokenizer_cfg = runs.resolve_seed_story_runs(mllm, detok)
    runs.check_same_tokenizer(mcfg, tokenizer_cfg, f"the MLLM run ({mllm_run})", f"the de-tokenizer run ({detok_run})")
    return {"system": "seed_story", "mllm": mllm_run, "detokenizer": detok_run, "configs": [mcfg, dcfg]}


# ---- the story, checked against the system --------------------------------------------------------------
def check_storygptv_story(request, ldm_cfg, stage2: bool) -> dict:
    """The story's characters for StoryGPT-V: {name: image path or None (the run's dataset reference)}.
    A story without frames, a character without an image the dataset does not know, a story in which no
    caption names a character (Char-LDM draws characters by name), and (stage 2) a pronoun with nobody
    named before it are errors naming the file and key."""
    from src.data.stories import read_meta
    from src.data.story_file import StoryFileError, reference_images
    from src.pipelines.pronouns import pronouns_in

    if request.frames is None:
        raise StoryFileError(request.source, "frames", "missing: StoryGPT-V draws one frame per caption (an opening "
                                                       "and beats are SEED-Story's; draw them with a story_sft run)")
    if not ldm_cfg.model.character_conditioning:
        return {}
    root = ldm_cfg.data.root
    reference_images(request, root)  # every character has an image or a dataset reference (else key error)
    known = [c["name"] for c in read_meta(root)["characters"]]
    named = [name_finder(request, root, ldm_cfg.data.aliases)(caption) for caption in request.frames]
    if request.source is not None and request.metadata.get("benchmark") is None:
        if not any(named):
            raise StoryFileError(request.source, "frames", f"no caption names a character (the story's: "
                                 f"{', '.join(request.characters) or 'none'}; the run's dataset: {', '.join(known)}); "
                                 f"Char-LDM draws a character only where a caption names it")
        for k, caption in enumerate(request.frames):
            if stage2 and pronouns_in(caption) and not any(named[:k + 1]):
                raise StoryFileError(request.source, f"frames[{k}]", f"{caption!r}: its pronoun refers to nobody "
                                     f"(no character is named in it or before it); stage 2 resolves a pronoun from "
                                     f"the story so far")
    return {name: char.image for name, char in request.characters.items()}


def name_finder(request, dataset_root, aliases=None):
    """`named(text) -> [names]`: the story's characters and the run's dataset's that a text names, in order
    (src/models/name_tokens.py's matcher, the one Char-LDM conditions with). story.json records it per
    frame: what the text asks to see (eval/story_folder.py scores frames against it)."""
    from src.data.stories import read_meta
    from src.models.name_tokens import find_names, name_patterns

    known = [c["name"] for c in read_meta(dataset_root)["characters"]]
    patterns = name_patterns(list(dict.fromkeys(known + list(request.characters))), dict(aliases or {}))
    return lambda text: list(dict.fromkeys(name for _, _, name in find_names(text, patterns)))


def check_seed_story(request) -> None:
    from src.data.story_file import StoryFileError

    if request.opening is None:
        raise StoryFileError(request.source, "opening", "missing: SEED-Story starts from an opening text and image "
                                                        "(captions alone are StoryGPT-V's; draw them with a char_ldm run)")


# ---- drawing ---------------------------------------------------------------------------------------------
def build_pipeline(system: dict, args, device, dtype, llm_dtype):
    if system["system"] == "storygptv":
        from src.pipelines.storygptv import StoryGPTVPipeline

        return StoryGPTVPipeline.from_run(system["run"], system["stage2"], args.weights, device, dtype, llm_dtype)
    from src.pipelines.seed_story import SeedStoryPipeline

    return SeedStoryPipeline.from_runs(system["mllm"], system["detokenizer"], args.weights, device, dtype, llm_dtype)


def draw_storygptv(pipe, request, characters: dict, args, progress, on_frame=None) -> tuple[list, list, dict]:
    """(images, frame records, settings). `on_frame(k, image, record)` as each frame is done (the studio)."""
    overrides = {key: value for key, value in (("num_inference_steps", args.steps), ("guidance_scale", args.guidance),
                                               ("scheduler", args.scheduler), ("start_merge_step", args.merge_step))
                 if value is not None}
    settings = replace(pipe.settings, **overrides)
    seed = args.seed

    def done(k, frame):
        progress.update(1)
        if on_frame is not None:
            on_frame(k, frame.image, frame.record())
    frames = pipe(list(request.frames), characters, seed=seed, settings=settings, on_frame=done)
    return [f.image for f in frames], [f.record() for f in frames], vars(settings)


def draw_seed_story(pipe, request, args, progress, on_frame=None) -> tuple[list, list, dict]:
    """(images, beat records, settings). `on_frame(k, image, record)` as each beat is drawn (the studio)."""
    from src.pipelines.story_writer import DecodeSettings

    overrides = {key: value for key, value in (("num_inference_steps", args.steps), ("guidance_scale", args.guidance),
                                               ("scheduler", args.scheduler)) if value is not None}
    settings = replace(pipe.settings, **overrides)
    decode = DecodeSettings(temperature=args.temperature, top_p=args.top_p, max_text_tokens=args.max_text_tokens,
                            seed=args.seed)
    sink = SinkSettings(window_images=args.window_images)
    vis = request.frames is not None
    captions = [request.opening.text, *request.frames] if vis else None
    images, records = [], []
    for beat in pipe.stream(request.opening.text, request.opening.image, request.beats + 1, context=args.context,
                            sink=sink, decode=decode, captions=captions, settings=settings):
        images.append(beat.image)
        records.append({"text": beat.text, "source": "opening" if beat.index == 0 else "given" if vis else "written"})
        progress.update(1)
        if on_frame is not None:
            on_frame(beat.index, beat.image, records[-1])
    info = {**vars(settings), "mode": "vis" if vis else "story", "context": args.context, "sink": vars(sink),
            "decode": vars(decode), "stats": pipe.last_stats}
    return images, records, info


def checkpoints_of(pipe) -> dict:
    p = pipe.provenance
    if "char_ldm" in p:
        return {name: info["checkpoint"] for name, info in p.items()}
    return {"mllm": p["mllm_checkpoint"], "detokenizer": p["detokenizer_checkpoint"]}


def draw_request(pipe, system, request, characters, args, on_frame=None):
    """(images, record) of one story; `on_frame(k, image, record)` as each frame or beat is done."""
    from tqdm.auto import tqdm

    total = len(request.frames) if system["system"] == "storygptv" else request.beats + 1
    unit = "frame" if system["system"] == "storygptv" else "beat"
    start = time.perf_counter()
    with tqdm(total=total, desc=request.title[:40], unit=unit, dynamic_ncols=True) as progress:
        if system["system"] == "storygptv":
            images, frames, settings = draw_storygptv(pipe, request, characters, args, progress, on_frame)
            name = "StoryGPT-V (Char-LDM + stage 2)" if pipe.stage2 is not None else (
                "StoryGPT-V (Char-LDM)" if pipe.character_conditioning else "StoryGPT-V (plain LDM)")
        else:
            images, frames, settings = draw_seed_story(pipe, request, args, progress, on_frame)
            name = f"SEED-Story ({settings['mode']} mode)"
    seconds = time.perf_counter() - start
    data = system["configs"][0].data
    named = name_finder(request, data.root, data.aliases)
    for frame in frames:
        frame["named"] = named(frame.get("caption") or frame.get("text") or "")
    record = {"title": request.title, "system": name, "seed": args.seed, "checkpoints": checkpoints_of(pipe),
              "provenance": pipe.provenance, "settings": settings, "frames": frames,
              "seconds": round(seconds, 3), "seconds_per_frame": round(seconds / max(len(images), 1), 4)}
    return images, record


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.max_text_tokens < 1 or not 0 < args.top_p <= 1:
        raise ValueError("--max-text-tokens must be >= 1 and --top-p in (0, 1]")

    import torch

    from src.assets import ensure_assets
    from src.data.story_file import read_story_file, story_to_dict
    from src.memory import apply_memory_tier, parse_dtype

    system = resolve_system(args)
    for cfg in system["configs"]:
        ensure_assets(cfg)  # the datasets (their references) and weights, before the story is read
    if args.seed is None:
        # the sample seed of the run whose settings draw (stage 2: the align run's), as src.generate takes it
        args.seed = int(system["configs"][-1].sample.seed) if system["system"] == "storygptv" else 0
    if args.vistorybench is not None:
        from src.data.vistorybench import LITE_STORY_IDS, read_vistorybench

        ids = LITE_STORY_IDS if args.lite else args.stories
        requests = read_vistorybench(args.vistorybench, args.language, ids)
    else:
        requests = [read_story_file(args.story)]
        if (args.out / "story.json").exists() and not args.overwrite:
            raise FileExistsError(f"--out: {args.out}/story.json exists (another --out, or --overwrite)")
    characters = []
    for request in requests:  # every story checked before a model is built
        if system["system"] == "storygptv":
            characters.append(check_storygptv_story(request, system["ldm_cfg"], system["stage2"] is not None))
        else:
            check_seed_story(request)
            characters.append({})

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = parse_dtype(args.dtype, device)
    llm_dtype = parse_dtype(args.llm_dtype, device) if args.llm_dtype else dtype
    pipe = build_pipeline(system, args, "cpu" if args.offload != "none" else device, dtype, llm_dtype)
    for note in getattr(pipe, "notes", []):
        print(f"note: {note}", file=sys.stderr)
    offload = apply_memory_tier(pipe, args.offload, device, args.vae_slicing, args.vae_tiling)
    memory = {"device": str(device), "offload": args.offload, "dtype": str(dtype).replace("torch.", ""),
              "llm_dtype": str(llm_dtype).replace("torch.", ""), "vae_slicing": args.vae_slicing,
              "vae_tiling": args.vae_tiling, "hooked_modules": len(offload.hooked)}
    if args.vistorybench is not None:
        return draw_benchmark(pipe, system, requests, characters, args, memory)
    request = requests[0]
    images, record = draw_request(pipe, system, request, characters[0], args)
    record.update({"story_file": str(request.source.resolve()), "story": story_to_dict(request, args.out),
                   "memory": memory})
    from src.data.story_output import write_story_folder

    out = write_story_folder(args.out, images, record)
    print(f"story: {out}/index.html ({len(images)} frames, {record['seconds_per_frame']} s per frame)")
    return 0


def draw_benchmark(pipe, system, requests, characters, args, memory) -> int:
    """Every ViStoryBench story drawn and written in the scorer's layout, memory released between stories;
    <timestamp>/storyviz.json records the runs and settings (the scorer reads only story folders)."""
    import json

    from src.data.vistorybench import run_timestamp, write_vistorybench_outputs

    timestamp = args.timestamp or run_timestamp()
    records = []
    for request, chars in zip(requests, characters):
        images, record = draw_request(pipe, system, request, chars, args)
        if system["system"] == "seed_story":
            images = images[1:]  # the opening is not a shot
        folder = write_vistorybench_outputs(args.out, args.method, request, images, timestamp=timestamp,
                                            mode=args.mode, overwrite=args.overwrite)
        records.append({"story_id": request.metadata["story_id"], "shots": str(folder),
                        "seconds": record["seconds"], "frames": record["frames"]})
        pipe.release()
    run_dir = Path(args.out) / args.method / args.mode / args.language / timestamp
    (run_dir / "storyviz.json").write_text(json.dumps(
        {"system": record["system"], "seed": args.seed, "checkpoints": record["checkpoints"],
         "provenance": pipe.provenance, "settings": record["settings"], "memory": memory,
         "benchmark": str(args.vistorybench), "language": args.language, "stories": records}, indent=2,
        ensure_ascii=False, default=str))
    print(f"ViStoryBench outputs: {run_dir} ({len(records)} stories)")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry(main))
