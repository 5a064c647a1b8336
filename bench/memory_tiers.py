"""Memory tiers (src/memory.py; docs/own_story.md, "Will it fit my GPU?"): peak GPU memory and seconds per
frame of each system drawing a story under `--offload none|model|sequential`, with random weights.

    python -m bench.memory_tiers --system char_ldm --tier model --size real --tokenizer CLIP_TOKENIZER_FOLDER
    python -m bench.memory_tiers --estimate                  # weights per tier from parameter counts, no GPU
    python -m bench.memory_tiers --system seed_story --tier sequential --size tiny --sd-folder TINY/stable-diffusion-v1-5 \\
        --clip-folder TINY/clip --tokenizer TINY/stable-diffusion-v1-5/tokenizer     # the CPU dry run's size

Systems: `char_ldm` (StoryGPT-V's Char-LDM: SD 1.5 UNet, VAE, CLIP-L text encoder, CLIP-L/14 vision
tower, fuse; 512 px), `stage2` (the same with stage 2: OPT-6.7b with the GILL mapper and a second CLIP-L
vision tower, the recipe configs/align/flintstones.yaml), `seed_story` (SEED-Story: Qwen-VL's ViT-G
visual tokenizer, Llama-2-7b with LoRA and both resamplers, the SDXL de-tokenizer; 1024 px; vis mode).
`--size real` builds the published architectures from the config files in tests/assets/config_only with
random weights (the same code path as training: `build_task` inside `config_only()`, on the device, so a
7B model is initialised on the GPU in seconds); `--size tiny` the toy-size models. Only the CLIP text
tokenizer must be real (`--tokenizer`: any CLIP tokenizer folder, e.g. the tiny stack's, which has CLIP's
vocabulary); the LLM's token ids come from the shape-only tokenizer (their number is what costs).

A row: the models built on the device (`none`) or on the CPU (offload tiers), the tier applied, one
warm-up frame, then `--frames` frames of one story timed; peak GPU memory is torch's peak allocation
over the timed story (weights on the GPU included), never a measure of anything else on the card.
On a CPU the row says so: it checks the script, not the numbers. `--estimate` counts the parameters of
each model group on the meta device (nothing is allocated) and prints the weights each tier must hold:
`none` all of them, `model` the largest group, `sequential` the largest single layer plus the pinned
tensors; activations come on top.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bench.common import machine, peak_memory_gib, reset_peak

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "tests/assets/config_only"
SYSTEMS = ("char_ldm", "stage2", "seed_story")
NAMES = ("Fred", "Wilma")
CAPTIONS = ["Fred and Wilma walk into the kitchen.", "They sit at the table and talk.",
            "Wilma laughs at Fred's joke.", "He stands up and leaves the room."]
TINY_LLM = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 4, "intermediate_size": 256, "vocab_size": 600, "max_position_embeddings": 2048,
            "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False, "architectures": ["LlamaForCausalLM"]}
TINY_OPT = {"model_type": "opt", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 256,
            "vocab_size": 600, "max_position_embeddings": 2048, "word_embed_proj_dim": 64, "bos_token_id": 2,
            "eos_token_id": 2, "do_layer_norm_before": True, "architectures": ["OPTForCausalLM"]}


def folders(args, tmp: Path) -> dict:
    """Where each part's config files are: the published ones, or toy-size ones written into `tmp`."""
    if args.size == "real":
        return {"sd": ASSETS / "stable-diffusion-v1-5", "clip": ASSETS / "clip-vit-large-patch14",
                "opt": ASSETS / "opt-6.7b", "llama": ASSETS / "Llama-2-7b-hf", "sdxl": ASSETS / "stable-diffusion-xl-base-1.0",
                "qwen": ASSETS / "Qwen-VL-Chat", "image_size": None}
    from src.tools.tiny.seed import TINY_VISUAL, write_tiny_sdxl

    if args.sd_folder is None or args.clip_folder is None:
        raise SystemExit("--size tiny needs --sd-folder and --clip-folder (a tiny stack's stable-diffusion-v1-5 and clip)")
    out = {"sd": Path(args.sd_folder), "clip": Path(args.clip_folder), "image_size": 64}
    for name, config in (("llama", TINY_LLM), ("opt", TINY_OPT), ("qwen", {"visual": TINY_VISUAL})):
        (tmp / name).mkdir()
        (tmp / name / "config.json").write_text(json.dumps(config))
        out[name] = tmp / name
    write_tiny_sdxl(tmp / "sdxl", out["sd"], seed=0)
    out["sdxl"] = tmp / "sdxl"
    return out


def recipe(path: str, overrides: list[str], image_size) -> object:
    from src.config import load_config

    sizes = [f"data.image_size={image_size}"] if image_size else []
    return load_config(path, [*overrides, *sizes, "data.root=unused", "output_root=unused"])


def build(system: str, parts: dict, args, device: torch.device):
    """The system's pipeline with random weights, built on `device` (config-only folders: nothing is read
    but config files and the CLIP tokenizer)."""
    from transformers import CLIPTokenizer

    from src.models.pretrained import config_only
    from src.pipelines.diffusion import scheduler_config
    from src.tasks import build_task

    with config_only(), torch.device(device):
        if system == "seed_story":
            detok = build_task(recipe("configs/detokenizer/george.yaml", [
                f"model.pretrained={parts['sdxl']}", f"model.tokenizer_path={parts['qwen']}", "model.init_weights=null"],
                parts["image_size"]))
            sft = build_task(recipe("configs/story_sft/george.yaml", [
                f"model.llm={parts['llama']}", f"model.tokenizer_path={parts['qwen']}", "model.init_weights=null",
                "model.detokenizer_run=null"], parts["image_size"]))
            detok.visual_tokenizer = sft.visual_tokenizer  # one tokenizer for both (as story_adapt shares it)
            pipe = detok.pipeline(mllm=sft.mllm, special=sft.special)
            pipe.settings.num_inference_steps, pipe.settings.batch_size = args.steps, 1
        else:
            from src.pipelines.storygptv import DrawSettings, StoryGPTVPipeline

            ldm = build_task(recipe("configs/char_ldm/flintstones.yaml", [
                f"model.pretrained={parts['sd']}", f"model.image_encoder={parts['clip']}"], parts["image_size"]))
            stage2 = None
            if system == "stage2":
                width = json.loads((Path(parts["sd"]) / "text_encoder/config.json").read_text())["hidden_size"]
                align = build_task(recipe("configs/align/flintstones.yaml", [
                    f"model.llm={parts['opt']}", f"model.vision_encoder={parts['clip']}", "model.stage1=unused",
                    f"model.conditioning=[77,{width}]"], parts["image_size"]))
                stage2 = align.conditioner
            size = ldm.image_encoder.image_size
            tokenizer = CLIPTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else ldm.tokenizer
            pipe = StoryGPTVPipeline(
                ldm.unet, ldm.vae, ldm.text_encoder, tokenizer,
                scheduler_config(str(parts["sd"])), ldm.cfg.data.image_size,
                DrawSettings(scheduler="DPMSolverMultistepScheduler", num_inference_steps=args.steps,
                             start_merge_step=args.steps // 2, batch_size=args.frames),
                image_encoder=ldm.image_encoder, fuse=ldm.fuse, names=NAMES,
                references={name: torch.rand(3, size, size) for name in NAMES}, stage2=stage2)
    meta = [name for module in pipe.modules() for name, t in [*module.named_parameters(), *module.named_buffers()]
            if t.is_meta]
    if meta and device.type != "meta":
        raise RuntimeError(f"left on the meta device: {meta[:5]}")
    return pipe


def draw(pipe, system: str, frames: int, seed: int) -> int:
    """One story of `frames` frames; the number drawn."""
    if system == "seed_story":
        from PIL import Image

        from src.pipelines.story_writer import DecodeSettings

        size = pipe.visual_tokenizer.image_size
        captions = [f"Beat {k}: " + CAPTIONS[k % len(CAPTIONS)] for k in range(frames)]
        beats = pipe.stream(captions[0], Image.new("RGB", (size, size), (120, 90, 60)), frames,
                            decode=DecodeSettings(temperature=0, seed=seed), captions=captions)
        return sum(1 for _ in beats)
    captions = [CAPTIONS[k % len(CAPTIONS)] for k in range(frames)]
    return len(pipe(captions, seed=seed))


def groups(pipe) -> list[tuple[str, int]]:
    return [(name, sum(p.numel() for m in group for p in m.parameters())) for name, group in pipe.components()]


def measure(args) -> dict:
    from src.memory import apply_memory_tier, parse_dtype

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = parse_dtype(args.dtype, device)
    with tempfile.TemporaryDirectory() as tmp:
        pipe = build(args.system, folders(args, Path(tmp)), args, device)  # random init is fast on a GPU
    pipe.to(None, dtype).eval()
    offload = apply_memory_tier(pipe, args.tier, device, args.vae_slicing, args.vae_tiling)  # offload: to the CPU
    pipe.release()
    draw(pipe, args.system, 1, seed=1)  # warm-up: kernels chosen, allocator grown
    pipe.release()
    reset_peak(device)
    start = time.perf_counter()
    drawn = draw(pipe, args.system, args.frames, seed=0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak, kind = peak_memory_gib(device)
    return {"system": args.system, "tier": args.tier, "size": args.size, "dtype": str(dtype).replace("torch.", ""),
            "image_size": pipe.image_size, "steps": args.steps, "frames": drawn, "peak_gib": round(peak, 2),
            "peak_kind": kind, "seconds_per_frame": round(seconds / max(drawn, 1), 3),
            "params": sum(n for _, n in groups(pipe)), "hooked_modules": len(offload.hooked),
            "vae_slicing": args.vae_slicing, "vae_tiling": args.vae_tiling, "device": machine()}


def estimate(args) -> list[dict]:
    """Weights per tier from parameter counts of the real-size models built on the meta device."""
    from src.memory import WHOLE

    args.size = "real"
    rows = []
    bytes_per = {"fp32": 4, "fp16": 2, "bf16": 2}[args.dtype if args.dtype != "auto" else "bf16"]
    for system in SYSTEMS:
        pipe = build(system, folders(args, Path(".")), args, torch.device("meta"))
        sizes = groups(pipe)
        layers = [sum(p.numel() for p in m.parameters())
                  for module in pipe.modules() for m in module.modules()
                  if isinstance(m, WHOLE) or next(m.children(), None) is None]
        total = sum(n for _, n in sizes)
        biggest = max(sizes, key=lambda item: item[1])
        gib = bytes_per / 2**30
        rows.append({"system": system, "params": total, "groups": dict(sizes),
                     "none_gib": round(total * gib, 2), "model_gib": round(biggest[1] * gib, 2),
                     "model_largest_group": biggest[0], "sequential_gib": round(max(layers) * gib, 2)})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", choices=SYSTEMS, default="char_ldm")
    parser.add_argument("--tier", choices=("none", "model", "sequential"), default="none")
    parser.add_argument("--size", choices=("real", "tiny"), default="real")
    parser.add_argument("--estimate", action="store_true", help="weights per tier from parameter counts (meta device)")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dtype", choices=("auto", "fp32", "fp16", "bf16"), default="fp16")
    parser.add_argument("--vae-slicing", action="store_true")
    parser.add_argument("--vae-tiling", action="store_true")
    parser.add_argument("--tokenizer", default=None, help="a CLIP tokenizer folder (the tiny stack's has CLIP's vocabulary)")
    parser.add_argument("--sd-folder", default=None, help="--size tiny: a tiny stack's stable-diffusion-v1-5")
    parser.add_argument("--clip-folder", default=None, help="--size tiny: a tiny stack's clip")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", action="store_true", help="print the row as JSON too")
    args = parser.parse_args(argv)
    if args.estimate:
        print("| system | parameters | none: all weights (GiB) | model: largest group (GiB) | sequential: largest layer (GiB) |")
        print("|---|---|---|---|---|")
        for row in estimate(args):
            print(f"| {row['system']} | {row['params'] / 1e9:.2f} B | {row['none_gib']} | {row['model_gib']} "
                  f"({row['model_largest_group']}) | {row['sequential_gib']} |")
            print(f"<!-- {row['system']} groups: {json.dumps({k: round(v / 1e6, 1) for k, v in row['groups'].items()})} (M) -->")
        return
    if args.tokenizer is None:
        raise SystemExit("--tokenizer: a CLIP tokenizer folder is needed (the tiny stack's stable-diffusion-v1-5/tokenizer)")
    row = measure(args)
    print(f"| {row['system']} | {row['tier']} | {row['size']}, {row['image_size']} px, {row['steps']} steps | "
          f"{row['dtype']} | {row['frames']} | {row['peak_gib']} ({row['peak_kind']}) | {row['seconds_per_frame']} | "
          f"{row['params'] / 1e9:.3f} B | {row['hooked_modules']} |")
    if args.json:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
