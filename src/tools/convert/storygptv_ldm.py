"""Convert StoryGPT-V's released stage-1 (Char-LDM) weights into a Char-LDM checkpoint of ours.

`python -m src.tools.convert.storygptv_ldm --src checkpoint-N/pytorch_model.bin --out outputs/char_ldm/storygptv
    --image-encoder-trainable-layers 2 [--num-image-layers 24] [--config configs/char_ldm/flintstones.yaml [k=v ...]]`

The source layout
-----------------
StoryGPT-V (github.com/xiaoqian-shen/StoryGPT-V) trains its first stage with `models/train.py`, which
builds `StoryModel` (`models/model.py`, a copy of FastComposer's `FastComposerModel`,
github.com/mit-han-lab/fastcomposer `fastcomposer/model.py`) and saves it with accelerate's
`save_state` into `checkpoint-<step>/pytorch_model.bin`. That file is the `state_dict()` of the whole
model (every sub-model, frozen ones included); the released first-stage `pytorch_model.bin` files
(README) are loaded back strictly with `model.load_state_dict(torch.load(...))` (`evaluate.py`,
`gen_story.py`, `models/train.py --load_model`), so they hold these groups under StoryModel's
attribute names:

  unet.*               diffusers UNet2DConditionModel (SD 1.5); trainable there and here
  image_encoder.vision_model.*, image_encoder.visual_projection.weight
                       `CustomImageEncoder`: CLIPModel's vision tower and projection (ViT-L/14); its
                       `vision_processor` is a torchvision Normalize and has no tensors. Only the last
                       `--image_encoder_trainable_layers` (2 in scripts/train_ldm.sh) encoder layers train.
  postfuse_module.*    `FuseModule`: mlp1 (2D->D->D, no residual), mlp2 (D->D->D, residual), layer_norm;
                       each MLP is layernorm -> fc1 -> GELU (act_fn, no tensors) -> fc2
  text_encoder.*       `CustomTextEncoder` (embeddings, encoder, final_layer_norm of CLIPTextModel); frozen
  vae.*                AutoencoderKL; frozen

accelerate's `save_state` takes the *wrapped* model's state dict (`get_state_dict(model, unwrap=False)`),
and train.py runs under DDP (it reaches `model.module.ema_param`), so an unreleased training checkpoint
may carry a `module.` prefix on every key; it is stripped when every key has it. There is no evidence
of a dict nested under "state_dict"/"module", so anything that is not a flat name -> tensor dict is an
error.

UNet names: StoryGPT-V pins no diffusers version (it imports `diffusers.models.attention_processor`
and `LoRAAttnProcessor`, i.e. the 0.14-0.25 era; FastComposer pins 0.16.1). In that era the SD UNet's
attention already used `to_q/to_k/to_v/to_out.0` (Transformer2DModel blocks), the same names as
diffusers 0.42, and attention processors hold no weights, so `unet.*` passes through unchanged. The
pre-0.15 `query/key/value/proj_attn` names existed only in the deprecated AttentionBlock (VAE,
UNet2DModel); should they appear they get diffusers' own renaming (`_convert_deprecated_attention_blocks`:
query->to_q, key->to_k, value->to_v, proj_attn->to_out.0). `*.processor.*` (LoRA processor weights) is
an error: our UNet has no place for them.

What this writes
----------------
`OUT/checkpoints/step_000000/` in src/engine/checkpoint.py's layout, written to `.tmp` and renamed:
  trainable.safetensors            exactly our Char-LDM task's trainable parameters:
                                   unet.*, fuse.*, image_encoder.vision_model.encoder.layers.{N-K..N-1}.*
                                   (as float32, the precision train.py trains them in)
  image_encoder_frozen.safetensors the rest of the CLIP vision tower (embeddings, pre/post layer norms,
                                   layers 0..N-K-1, visual_projection), as stored (bf16 under train.py's
                                   mixed precision). Our task loads these from the CLIP checkpoint, not from
                                   here; they are kept to check against (or build) that checkpoint.
  optimizer.pt, scheduler.pt       empty placeholders: resolve_checkpoint requires them; this is not a
                                   resumable training state (train.resume on it fails)
  trainer_state.json               step 0, world size 1, no EMA, plus where the weights came from
With `--config RECIPE [key=value ...]` the recipe is validated (task char_ldm, character conditioning
on, the same model.image_encoder_trainable_layers) and saved as `OUT/config.yaml`, so that
`python -m src.generate --checkpoint OUT` finds both. The saved config selects the release's behaviour
wherever ours differs (RELEASE_MODES below, docs/fidelity.md): the released weights then run the way the
release ran them. `--no-release-modes` keeps the recipe's own choices; key=value overrides win over both.

Dropped, and counted in the report: `vae.*` and `text_encoder.*` (frozen in StoryGPT-V's stage 1 unless
--train_text_encoder, which train_ldm.sh does not pass; ours load them from the SD checkpoint) and
`*.embeddings.position_ids` buffers (older transformers saved them; they are recomputed constants).
Any other key is an error that names it, and so is a missing UNet or fuse group or a missing fuse tensor.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import sys
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file

from src.errors import one_line, run_entry
from src.runs import REQUIRED, resolve_checkpoint, step_dir_name

TRAINABLE_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, STATE_FILE = REQUIRED
if not (TRAINABLE_FILE.startswith("trainable") and STATE_FILE.endswith(".json")):
    raise ImportError(f"src.engine.checkpoint.REQUIRED changed order ({REQUIRED}); update this converter")
FROZEN_FILE = "image_encoder_frozen.safetensors"

# original FastComposer/StoryGPT-V name -> ours
FUSE_MAP = {f"postfuse_module.{mlp}.{src}.{p}": f"fuse.{mlp}.{dst}.{p}"
            for mlp in ("mlp1", "mlp2")
            for src, dst in (("layernorm", "layer_norm"), ("fc1", "fc1"), ("fc2", "fc2"))
            for p in ("weight", "bias")}
FUSE_MAP.update({f"postfuse_module.layer_norm.{p}": f"fuse.layer_norm.{p}" for p in ("weight", "bias")})

UNET_TOP = {"conv_in", "time_embedding", "down_blocks", "mid_block", "up_blocks", "conv_norm_out", "conv_out",
            "class_embedding", "add_embedding", "encoder_hid_proj"}
LEGACY_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}

VISION = "image_encoder.vision_model."
LAYER_KEY = re.compile(r"^image_encoder\.vision_model\.encoder\.layers\.(\d+)\.(.+)$")
LAYER_SUFFIXES = {f"{mod}.{p}" for mod in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                           "self_attn.out_proj", "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2")
                  for p in ("weight", "bias")}
VISION_FROZEN = {VISION + name for name in (
    "embeddings.class_embedding", "embeddings.patch_embedding.weight", "embeddings.position_embedding.weight",
    "pre_layrnorm.weight", "pre_layrnorm.bias", "post_layernorm.weight", "post_layernorm.bias")}
VISION_FROZEN.add("image_encoder.visual_projection.weight")
BUFFERS = {VISION + "embeddings.position_ids", "text_encoder.embeddings.position_ids"}
DROPPED_GROUPS = ("vae.", "text_encoder.")


# The release's behaviour where ours differs (docs/fidelity.md, "StoryGPT-V"; src/tasks/char_ldm.py).
RELEASE_MODES = ["model.name_tokens=release", "model.reference_preprocess=release", "model.attention_loss=release",
                 "model.mask_loss_antialias=false", "model.text_only_max_characters=1"]
# The release's PororoSV evaluation marks no name (its name list is FlintstonesSV's), so it fuses nothing.
RELEASE_MODES_PORORO = ["model.fuse_names_at_sampling=false"]


def release_modes(dataset_name: str) -> list[str]:
    return RELEASE_MODES + (RELEASE_MODES_PORORO if dataset_name == "pororo" else [])


class ConversionError(ValueError):
    """The source cannot be converted; the message names the keys at fault."""


def _names(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def _unet_name(key: str) -> tuple[Optional[str], bool]:
    """`unet.<rest>` -> (our name or None if it has no place, whether a legacy name was renamed)."""
    parts = key.split(".")
    if len(parts) < 3 or parts[1] not in UNET_TOP or "processor" in parts or parts[-1] not in ("weight", "bias"):
        return None, False
    if parts[-2] in LEGACY_ATTN:
        return ".".join(parts[:-2] + [LEGACY_ATTN[parts[-2]], parts[-1]]), True
    return key, False


def _strip_module_prefix(state: dict) -> tuple[dict, bool]:
    prefixed = [k for k in state if isinstance(k, str) and k.startswith("module.")]
    if not prefixed:
        return state, False
    if len(prefixed) != len(state):
        rest = set(state) - set(prefixed)
        raise ConversionError(f"{len(prefixed)} keys start with 'module.' (a DDP-wrapped save) but "
                              f"{len(rest)} do not: {_names(rest)}")
    return {k[len("module."):]: v for k, v in state.items()}, True


def convert_state_dict(state: dict, trainable_layers: int, num_image_layers: Optional[int] = None
                       ) -> tuple[dict, dict, dict]:
    """StoryModel state dict -> (our trainable tensors, frozen image-encoder tensors, report).

    Raises ConversionError naming every key it cannot place and every required tensor that is missing."""
    if not isinstance(state, dict):
        raise ConversionError(f"expected a state dict (name -> tensor), got {type(state).__name__}")
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"not a flat state dict: these entries are not name -> tensor: {_names(bad)}")
    if trainable_layers < 0:
        raise ConversionError(f"--image-encoder-trainable-layers must be >= 0, got {trainable_layers}")
    state, stripped = _strip_module_prefix(state)

    unet, fuse, layers, frozen = {}, {}, {}, {}
    dropped = {"vae": 0, "text_encoder": 0, "buffers": 0}
    renamed, unplaced = [], []
    for key, tensor in state.items():
        if key.startswith("unet."):
            ours, was_renamed = _unet_name(key)
            if ours is None:
                unplaced.append(key)
                continue
            if ours in unet:
                raise ConversionError(f"'{key}' and another key both map to '{ours}'")
            unet[ours] = tensor
            if was_renamed:
                renamed.append(f"{key} -> {ours}")
        elif key in FUSE_MAP:
            fuse[FUSE_MAP[key]] = tensor
        elif key in BUFFERS:
            dropped["buffers"] += 1
        elif key in VISION_FROZEN:
            frozen[key] = tensor
        elif (m := LAYER_KEY.match(key)) and m.group(2) in LAYER_SUFFIXES:
            layers.setdefault(int(m.group(1)), {})[key] = tensor
        elif key.startswith(DROPPED_GROUPS):
            dropped[key.split(".", 1)[0]] += 1
        else:
            unplaced.append(key)
    if unplaced:
        raise ConversionError(f"{len(unplaced)} key(s) have no place in the Char-LDM layout: {_names(unplaced)}")

    if not unet:
        raise ConversionError("no UNet weights: the source has no 'unet.*' keys")
    missing_fuse = sorted(set(FUSE_MAP) - set(k for k in state if k in FUSE_MAP))
    if len(missing_fuse) == len(FUSE_MAP):
        raise ConversionError("no fuse weights: the source has none of the 'postfuse_module.*' keys "
                              "(the fuse module, ours 'fuse.*')")
    if missing_fuse:
        raise ConversionError(f"fuse weights incomplete: missing {_names(missing_fuse, 14)}")
    dim = _check_fuse_shapes(fuse)

    # image encoder: the last K layers train, the rest is frozen
    found = sorted(layers)
    if found and found != list(range(len(found))):
        raise ConversionError(f"image encoder layers are not numbered 0..N-1: found {found}")
    n_layers = len(found)
    if num_image_layers is not None and n_layers != num_image_layers:
        raise ConversionError(f"--num-image-layers {num_image_layers}, but the source's image encoder has "
                              f"{n_layers} layers ('{VISION}encoder.layers.*')")
    if trainable_layers > n_layers:
        raise ConversionError(f"--image-encoder-trainable-layers {trainable_layers}, but the source's image encoder "
                              f"has {n_layers} layers ('{VISION}encoder.layers.*')")
    image_trainable = {}
    for index in found:
        if index >= n_layers - trainable_layers:
            present = {LAYER_KEY.match(k).group(2) for k in layers[index]}
            if present != LAYER_SUFFIXES:
                missing = [f"{VISION}encoder.layers.{index}.{s}" for s in LAYER_SUFFIXES - present]
                raise ConversionError(f"trainable image-encoder layer {index} is incomplete: missing {_names(missing)}")
            image_trainable.update(layers[index])
        else:
            frozen.update(layers[index])
    projection = frozen.get("image_encoder.visual_projection.weight")
    if projection is not None and projection.shape[0] != dim:
        raise ConversionError(f"image_encoder.visual_projection.weight is {tuple(projection.shape)}: its output "
                              f"width must equal the fuse width {dim}")
    for key, tensor in unet.items():
        if key.endswith("attn2.to_k.weight") and tensor.shape[1] != dim:
            raise ConversionError(f"'{key}' is {tuple(tensor.shape)}: the UNet's cross-attention width must "
                                  f"equal the fuse/text width {dim}")

    def fp32(t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.float32) if t.is_floating_point() else t

    trainable = {k: fp32(v) for group in (unet, fuse, image_trainable) for k, v in group.items()}
    report = {
        "module_prefix_stripped": stripped,
        "unet": len(unet), "fuse": len(fuse),
        "image_encoder_trainable": len(image_trainable), "image_encoder_frozen": len(frozen),
        "image_encoder_layers": n_layers, "image_encoder_trainable_layers": trainable_layers,
        "embed_dim": dim,
        "dropped": dropped, "renamed": renamed,
        "source_dtypes": sorted({str(t.dtype).replace("torch.", "") for t in state.values()}),
    }
    return trainable, frozen, report


def _check_fuse_shapes(fuse: dict) -> int:
    dim = fuse["fuse.layer_norm.weight"].shape[0]
    expected = {"fuse.layer_norm": (dim,),
                "fuse.mlp1.layer_norm": (2 * dim,), "fuse.mlp1.fc1": (dim, 2 * dim), "fuse.mlp1.fc2": (dim, dim),
                "fuse.mlp2.layer_norm": (dim,), "fuse.mlp2.fc1": (dim, dim), "fuse.mlp2.fc2": (dim, dim)}
    for module, shape in expected.items():
        for p, want in (("weight", shape), ("bias", shape[:1])):
            got = tuple(fuse[f"{module}.{p}"].shape)
            if got != want:
                raise ConversionError(f"'{module}.{p}' (from postfuse_module) is {got}, expected {want} "
                                      f"for fuse width {dim}")
    return dim


def load_source(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError) as err:  # e.g. weights_only refusing an object
        raise ConversionError(f"{path}: cannot be loaded as a state dict: {one_line(err)}") from err


def _for_safetensors(tensors: dict) -> dict:
    out = {}
    for name, t in tensors.items():
        t = t.detach().contiguous()
        if t.untyped_storage().nbytes() != t.numel() * t.element_size():  # a view into a larger storage
            t = t.clone()
        out[name] = t
    return out


def write_checkpoint(out: Path, trainable: dict, frozen: dict, info: dict, overwrite: bool = False) -> Path:
    """Write `out/checkpoints/step_000000` atomically (built in `.tmp`, renamed when complete)."""
    root = out / "checkpoints"
    final = root / step_dir_name(0)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass --overwrite to replace it")
    tmp = root / (step_dir_name(0) + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_for_safetensors(trainable), tmp / TRAINABLE_FILE)
    if frozen:
        save_file(_for_safetensors(frozen), tmp / FROZEN_FILE)
    torch.save({}, tmp / OPTIMIZER_FILE)
    torch.save({}, tmp / SCHEDULER_FILE)
    state = {"step": 0, "world_size": 1, "ema": None, **info}
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    for path in tmp.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():
        trash = final.with_name(final.name + ".deleting")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
        shutil.rmtree(trash)
    os.replace(tmp, final)
    return resolve_checkpoint(str(final), root)


def _load_recipe(path: str, overrides: list[str], trainable_layers: Optional[int], release: bool = True):
    """The run config to save with the weights; it must describe the model the weights are for. `release`:
    with the release's modes (RELEASE_MODES) under the overrides."""
    from omegaconf import OmegaConf

    from src.config import load_config

    cfg = load_config(path, overrides)
    if release and cfg.task == "char_ldm":
        cfg = load_config(path, release_modes(cfg.data.name) + list(overrides))
    if cfg.task != "char_ldm" or not cfg.model.character_conditioning:
        raise ValueError(f"{path}: task '{cfg.task}', model.character_conditioning="
                         f"{OmegaConf.select(cfg, 'model.character_conditioning')}; these weights are for task 'char_ldm' "
                         f"with character conditioning on")
    configured = cfg.model.image_encoder_trainable_layers
    if trainable_layers is not None and trainable_layers != configured:
        raise ValueError(f"--image-encoder-trainable-layers {trainable_layers}, but {path} sets "
                         f"model.image_encoder_trainable_layers={configured}; the checkpoint must match the config")
    return cfg


def _write_config(cfg, out: Path, overwrite: bool) -> Path:
    from src.config import save_config

    target = out / "config.yaml"
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
    tmp = out / "config.yaml.tmp"
    save_config(cfg, tmp)
    os.replace(tmp, target)
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, type=Path, help="StoryGPT-V stage-1 pytorch_model.bin")
    parser.add_argument("--out", required=True, type=Path, help="run folder to create (checkpoints/step_000000)")
    parser.add_argument("--image-encoder-trainable-layers", type=int, default=None,
                        help="model.image_encoder_trainable_layers (K) of the config the weights are for: the last "
                             "K CLIP vision layers go to trainable.safetensors (default: --config's value)")
    parser.add_argument("--num-image-layers", type=int, default=None,
                        help="check that the source's image encoder has exactly this many layers (24 for ViT-L/14)")
    parser.add_argument("--config", default=None, help="a char_ldm recipe to save as OUT/config.yaml")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing step_000000 / config.yaml")
    parser.add_argument("--no-release-modes", action="store_true",
                        help="keep the recipe's own choices where the release behaves otherwise (docs/fidelity.md)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for --config")
    args = parser.parse_args(argv)
    if args.overrides and not args.config:
        parser.error("key=value overrides need --config")
    if args.image_encoder_trainable_layers is None and not args.config:
        parser.error("--image-encoder-trainable-layers is required without --config")
    cfg, layers = None, args.image_encoder_trainable_layers
    if args.config:  # fail before writing anything
        cfg = _load_recipe(args.config, args.overrides, layers, release=not args.no_release_modes)
        layers = cfg.model.image_encoder_trainable_layers
    state = load_source(args.src)
    trainable, frozen, report = convert_state_dict(state, layers, args.num_image_layers)
    del state
    if cfg is not None and (args.out / "config.yaml").exists() and not args.overwrite:
        raise FileExistsError(f"{args.out / 'config.yaml'} exists; pass --overwrite to replace it")
    info = {"converted_from": str(args.src.resolve()), "converter": "src.tools.convert.storygptv_ldm",
            "conversion": report}
    ckpt = write_checkpoint(args.out, trainable, frozen, info, overwrite=args.overwrite)
    config = _write_config(cfg, args.out, args.overwrite) if cfg is not None else None
    dropped = report["dropped"]
    print(f"converted {args.src} -> {ckpt}")
    print(f"  trainable: unet {report['unet']}, fuse {report['fuse']}, image encoder "
          f"{report['image_encoder_trainable']} (last {report['image_encoder_trainable_layers']} of "
          f"{report['image_encoder_layers']} layers) -> {TRAINABLE_FILE}")
    print(f"  frozen image encoder: {report['image_encoder_frozen']} -> {FROZEN_FILE}")
    print(f"  dropped: vae {dropped['vae']}, text_encoder {dropped['text_encoder']}, position_ids buffers "
          f"{dropped['buffers']}; renamed legacy attention keys: {len(report['renamed'])}"
          f"{'; stripped a module. prefix' if report['module_prefix_stripped'] else ''}")
    print(f"  width {report['embed_dim']}; source dtypes {', '.join(report['source_dtypes'])}")
    if config is None:
        print("  no --config: add OUT/config.yaml (a char_ldm recipe) before `python -m src.generate --checkpoint OUT`")
    else:
        print(f"  config: {config}")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry(main))
