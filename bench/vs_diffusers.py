"""Side by side: diffusers' own examples/text_to_image/train_text_to_image.py against `python -m src.train`
on the same Stable Diffusion folder, the same frames and captions, batch and precision, data loading
included, runs alternated.

    python -m bench.vs_diffusers --diffusers-script /path/to/diffusers/examples/text_to_image/train_text_to_image.py

The script is not part of this repository: get it from diffusers' repository at the tag of the installed
diffusers (bench/README.md). It needs the `datasets` package; `--diffusers-pythonpath` adds a folder
that holds it (and only what the project's environment lacks) to that side's PYTHONPATH.

Both sides are whole training runs of `--steps` optimizer steps, each in its own process. The rate is
read from each run's tqdm progress bar (both scripts use one, one update per optimizer step): steps/s =
(N - n0) / (elapsed at N - elapsed at n0), with n0 = `--skip` steps to leave out start-up, compilation
and the first steps; the first time a count appears is used, so the final save and samples do not count.
Rounds alternate the order of the sides; the table has each side's median over the rounds and its
ratio to diffusers' median (samples/s, same batch).

Our sides are `--ours NAME=override,override,...` (the toy recipe, configs/char_ldm/toy.yaml, with
diffusers' optimizer settings: AdamW at a constant 1e-4, no warm-up, no EMA; plus the overrides); by
default the plain LDM (`model.character_conditioning=false`) and Char-LDM with every loss on, each with
and without `model.cache_latents=true`. `--stack sd15` runs every side on the random-weight SD 1.5 folder
of bench/make_random_sd15.py instead of the tiny stack; Char-LDM's sides then get a random CLIP ViT-L/14
vision tower and the real recipe's Char-LDM settings (configs/char_ldm/base.yaml: its attention layers,
loss weight, 2 trained tower layers, mask loss on 30% of steps, references cut from the frame).

`--floor` adds bench/unet_floor.py as a side of its own (same rounds, same threads): the UNet's forward and
backward alone, the floor no trainer can beat, with the optimizer step, clipping and the frozen encoders
timed alone beside it (a second table). `--threads N` sets OMP_NUM_THREADS for every side.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, machine, print_table

FLOOR = re.compile(r"^floor: (.+)$", re.M)
PEAK = re.compile(r"capped: peak GPU memory allocated ([\d.]+) GiB, reserved ([\d.]+) GiB")
PROGRESS = re.compile(r"([^\n|]*?)\s*\d+%\|[^|]*\| *(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<")
DEFAULT_OURS = ["ldm=model.character_conditioning=false",
                "ldm_cached=model.character_conditioning=false,model.cache_latents=true",
                "char_ldm=", "char_ldm_cached=model.cache_latents=true"]
# diffusers' side: AdamW (its defaults: betas 0.9/0.999, weight decay 1e-2), constant 1e-4, clip 1.0, no EMA
SAME_OPTIMIZER = ["optim.lr=1e-4", "optim.schedule=constant", "optim.warmup_steps=0", "optim.weight_decay=1e-2",
                  "train.grad_clip=1.0", "train.ema=false"]


def parse_rate(log: str, total: int, skip: int) -> float:
    """steps/s between the first tqdm line at >= `skip` steps and the first at `total` steps, on the
    training bar: of the bars that count to `total`, the one with the most distinct counts (a weight
    loading bar may also count to `total`, in one jump)."""
    bars: dict[str, dict[int, int]] = {}
    for match in PROGRESS.finditer(log.replace("\r", "\n")):
        name, n, of = match.group(1).strip(), int(match.group(2)), int(match.group(3))
        if of == total:
            hours, minutes, seconds = int(match.group(4) or 0), int(match.group(5)), int(match.group(6))
            bars.setdefault(name, {}).setdefault(n, hours * 3600 + minutes * 60 + seconds)
    first = max(bars.values(), key=len, default={})
    start = min((n for n in first if n >= skip), default=None)
    if start is None or total not in first or first[total] <= first[start]:
        raise RuntimeError(f"no progress from step {skip} to {total} in the log (bars: {sorted(bars)})")
    return (total - start) / (first[total] - first[start])


def diffusers_command(args, pretrained: Path, imagefolder: Path, out: Path) -> list[str]:
    return [args.python, str(args.diffusers_script), "--pretrained_model_name_or_path", str(pretrained),
            "--train_data_dir", str(imagefolder), "--resolution", str(args.resolution), "--center_crop",
            "--train_batch_size", str(args.batch), "--mixed_precision", args.precision,
            "--max_train_steps", str(args.steps), "--learning_rate", "1e-4", "--lr_scheduler", "constant",
            "--lr_warmup_steps", "0", "--max_grad_norm", "1.0", "--dataloader_num_workers", str(args.workers),
            "--checkpointing_steps", "100000000", "--seed", "0", "--report_to", "tensorboard",
            "--output_dir", str(out)]


def ours_command(args, overrides: list[str], assets: list[str], out: Path, name: str) -> list[str]:
    from bench.char_ldm_step import recipe_overrides

    return [args.python, "-m", "src.train", "--config", "configs/char_ldm/toy.yaml", *assets,
            *recipe_overrides(args.stack), *SAME_OPTIMIZER,
            f"train.batch_size={args.batch}", f"train.mixed_precision={args.precision}",
            f"data.image_size={args.resolution}", f"data.num_workers={args.workers}",
            f"train.max_steps={args.steps}", "train.max_minutes=0", "train.checkpoint_every=100000000",
            "train.sample_every=0", "sample.num_stories=1", "sample.num_inference_steps=2", "sample.batch_size=4",
            "logging.tensorboard=false", f"output_root={out}", f"run_name={name}", *overrides]


def floor_command(args, pretrained: Path) -> list[str]:
    return [args.python, "-m", "bench.unet_floor", "--pretrained", str(pretrained), "--resolution",
            str(args.resolution), "--batch", str(args.batch), "--precision", args.precision]


def parse_floor(log: str) -> dict[str, float]:
    match = FLOOR.search(log)
    if match is None:
        raise RuntimeError("bench.unet_floor printed no 'floor:' line")
    return {name: float(value) for name, value in (part.split("=") for part in match.group(1).split())}


def run(command: list[str], env: dict, log_path: Path) -> str:
    started = time.time()
    result = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log_path.write_text(result.stdout)
    if result.returncode != 0:
        raise RuntimeError(f"{command[1]} exited with {result.returncode} after {time.time() - started:.0f} s; "
                           f"see {log_path}")
    return result.stdout


def prepare(args) -> tuple[Path, list[str], Path]:
    """(SD folder, our asset overrides, imagefolder) for the chosen stack, built on first use."""
    from bench.common import toy_config
    from bench.make_random_sd15 import save_random_clip_vision, save_random_sd15, write_imagefolder

    cfg = toy_config([], args.tiny_root, args.data)  # builds the tiny stack and the toy data if missing
    assets = [f"data.root={args.data}", f"tiny_stack={args.tiny_root}"]
    pretrained, image_encoder = Path(cfg.model.pretrained), Path(cfg.model.image_encoder)
    if args.stack == "sd15":
        pretrained, image_encoder = args.work / "sd15-random", args.work / "clip-vit-large-patch14-random"
        if not (pretrained / "model_index.json").is_file():
            shutil.rmtree(pretrained, ignore_errors=True)
            save_random_sd15(pretrained, args.tiny_root)
        if not (image_encoder / "config.json").is_file():
            shutil.rmtree(image_encoder, ignore_errors=True)
            save_random_clip_vision(image_encoder)
    assets += [f"model.pretrained={pretrained}", f"model.image_encoder={image_encoder}"]
    imagefolder = args.work / f"imagefolder-{args.resolution}-{args.num_images}"
    if not (imagefolder / "metadata.jsonl").is_file():
        shutil.rmtree(imagefolder, ignore_errors=True)
        write_imagefolder(imagefolder, args.data, args.num_images, args.resolution)
    return pretrained, assets, imagefolder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffusers-script", type=Path, required=True,
                        help="diffusers' examples/text_to_image/train_text_to_image.py (not in this repository)")
    parser.add_argument("--diffusers-pythonpath", default="", help="prepended to PYTHONPATH for diffusers' side")
    parser.add_argument("--python", default=sys.executable, help="interpreter for both sides")
    parser.add_argument("--ours", action="append", default=None, metavar="NAME=OVERRIDES",
                        help="one of our sides: a name and comma-separated config overrides (repeatable)")
    parser.add_argument("--no-diffusers", action="store_true", help="only our sides (ratios to the first one)")
    parser.add_argument("--floor", action="store_true", help="add bench.unet_floor's side (the UNet's forward + backward alone)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every side")
    parser.add_argument("--stack", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--skip", type=int, default=None, help="steps left out at the start (default steps/5)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--precision", choices=("no", "bf16", "fp16"), default="bf16")
    parser.add_argument("--workers", type=int, default=0, help="data loader workers, both sides")
    parser.add_argument("--num-images", type=int, default=2048, help="frames in diffusers' imagefolder")
    parser.add_argument("--work", type=Path, default=REPO / "outputs/bench/vs_diffusers")
    parser.add_argument("--tiny-root", type=Path, default=REPO / "pretrained/tiny")
    parser.add_argument("--data", type=Path, default=REPO / "data/toy")
    parser.add_argument("--memory-limit-gib", type=float, default=None,
                        help="GPU: cap both sides' CUDA allocator (bench/capped.py) and report their peaks")
    parser.add_argument("--table", type=Path, default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)
    if not args.no_diffusers and not args.diffusers_script.is_file():
        parser.error(f"--diffusers-script {args.diffusers_script}: no such file (bench/README.md says how to get it)")
    skip = args.skip if args.skip is not None else max(1, args.steps // 5)
    if not 0 < skip < args.steps:
        parser.error("--skip must be between 1 and --steps - 1")
    ours = []
    for spec in args.ours or DEFAULT_OURS:
        name, sep, overrides = spec.partition("=")
        if not sep or not re.fullmatch(r"[\w.-]+", name):
            parser.error(f"--ours {spec!r}: expected NAME=override,override (overrides may be empty)")
        ours.append((name, [o for o in overrides.split(",") if o]))

    args.work.mkdir(parents=True, exist_ok=True)
    pretrained, assets, imagefolder = prepare(args)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    diffusers_env = dict(env, PYTHONPATH=os.pathsep.join(p for p in (args.diffusers_pythonpath,
                                                                      env.get("PYTHONPATH", "")) if p),
                         HF_HOME=str(args.work / "hf-home"))
    sides = ([] if args.no_diffusers else ["diffusers"]) + [name for name, _ in ours] + (["floor"] if args.floor else [])
    rates: dict[str, list[float]] = {side: [] for side in sides}
    floors: list[dict[str, float]] = []
    peaks: dict[str, str] = {}
    for round_index in range(args.rounds):
        order = sides if round_index % 2 == 0 else sides[::-1]
        for side in order:
            out = args.work / "runs" / f"{side}-{round_index}"
            shutil.rmtree(out, ignore_errors=True)
            if side == "diffusers":
                command, side_env = diffusers_command(args, pretrained, imagefolder, out), diffusers_env
            elif side == "floor":
                command, side_env = floor_command(args, pretrained), env
            else:
                command, side_env = ours_command(args, dict(ours)[side], assets, out, side), env
            if args.memory_limit_gib:
                command = [command[0], "-m", "bench.capped", "--gib", str(args.memory_limit_gib), *command[1:]]
            log = run(command, side_env, args.work / f"{side}-{round_index}.log")
            if side == "floor":
                floors.append(parse_floor(log))
                rates[side].append(1 / floors[-1]["unet_fb"])
            else:
                rates[side].append(parse_rate(log, args.steps, skip))
            peak = PEAK.search(log)
            if peak:
                peaks[side] = f"{peak.group(1)} / {peak.group(2)}"
            print(f"round {round_index + 1}/{args.rounds} {side}: {rates[side][-1]:.3f} steps/s", flush=True)
            shutil.rmtree(out, ignore_errors=True)

    reference = statistics.median(rates[sides[0]])
    rows = []
    for side in sides:
        median = statistics.median(rates[side])
        overrides = {"diffusers": "(diffusers' script)", "floor": "(UNet forward + backward alone)"}.get(side) or (
            " ".join(dict(ours)[side]) or "(recipe)")
        rows.append({"side": side, "overrides": overrides,
                     "steps/s per round": " / ".join(f"{r:.2f}" for r in rates[side]),
                     "median steps/s": f"{median:.3f}", "samples/s": f"{median * args.batch:.1f}",
                     f"x {sides[0]}": f"{median / reference:.2f}"})
        if peaks:
            rows[-1]["peak GPU alloc / reserved (GiB)"] = peaks.get(side, "n/a")
    title = (f"{args.stack} stack, {args.resolution} px, batch {args.batch}, {args.precision}, {args.steps} steps "
             f"(rate over steps {skip}..{args.steps}), {args.workers} loader workers, {args.rounds} alternated "
             f"rounds, OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}; {machine()}"
             + (f"; CUDA allocator capped at {args.memory_limit_gib:g} GiB" if args.memory_limit_gib else ""))
    import io
    from contextlib import redirect_stdout

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        print(f"\n{title}\n")
        print_table(rows, list(rows[0]))
        if floors:
            print("\nThe floor's pieces, each timed alone (bench/unet_floor.py), seconds: median over the rounds\n")
            print_table([{"piece": name, "s": f"{statistics.median(f[name] for f in floors):.3f}",
                          "per round": " / ".join(f"{f[name]:.3f}" for f in floors)} for name in floors[0]],
                        ["piece", "s", "per round"])
    print(buffer.getvalue())
    if args.table is not None:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        with open(args.table, "a") as table:
            table.write(buffer.getvalue())


if __name__ == "__main__":
    main()
