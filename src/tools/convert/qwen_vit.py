"""Extract Qwen-VL-Chat's visual encoder (`transformer.visual.*`) into one safetensors file.

    python -m src.tools.convert.qwen_vit --src pretrained/Qwen-VL-Chat --out pretrained/qwen_vit_G.safetensors

Reads the checkpoint as Hugging Face stores it (safetensors or .bin, sharded with an index or single),
opening only the shards that hold visual weights; strips the `transformer.visual.` prefix; loads the
result strictly into src.models.qwen_vit.QwenViT built from config.json's `visual` section; writes the
weights (dtype unchanged) with that section in the file's metadata, so the file alone rebuilds the model.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from src.errors import run_entry
from src.models.loading import load_strict, write_weights_file
from src.models.qwen_vit import CONFIG_METADATA_KEY, QwenViT

PREFIX = "transformer.visual."
# Hugging Face checkpoint layouts, in the order they are tried.
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")


def read_visual_config(src: Path) -> dict:
    config_path = src / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not found (expected a Qwen-VL-Chat folder)")
    config = json.loads(config_path.read_text())
    if "visual" not in config:
        raise KeyError(f"{config_path}: no `visual` section; is this a Qwen-VL checkpoint?")
    return config["visual"]


def shard_keys(src: Path) -> dict[Path, list[str]]:
    """{shard file: its keys under PREFIX}, from the index if there is one, else from the single file."""
    for name in INDEX_FILES:
        index = src / name
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map")
            if not isinstance(weight_map, dict):
                raise KeyError(f"{index}: no `weight_map`")
            shards: dict[Path, list[str]] = {}
            for key, shard in weight_map.items():
                if key.startswith(PREFIX):
                    shards.setdefault(src / shard, []).append(key)
            return shards
    for name in SINGLE_FILES:
        path = src / name
        if path.is_file():
            return {path: [key for key in read_keys(path) if key.startswith(PREFIX)]}
    raise FileNotFoundError(f"{src}: no checkpoint found (looked for {', '.join(INDEX_FILES + SINGLE_FILES)})")


def read_keys(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    return list(load_bin(path))


def load_bin(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def read_visual_weights(src: Path) -> dict[str, torch.Tensor]:
    shards = {path: keys for path, keys in shard_keys(src).items() if keys}
    if not shards:
        raise KeyError(f"{src}: the checkpoint holds no {PREFIX}* weights (a Qwen-VL *language* checkpoint, "
                       f"or a different model?)")
    state: dict[str, torch.Tensor] = {}
    for path, keys in shards.items():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: shard named in the index is missing")
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                for key in keys:
                    state[key[len(PREFIX):]] = handle.get_tensor(key)
        else:
            shard = load_bin(path)
            for key in keys:
                if key not in shard:
                    raise KeyError(f"{path}: the index says it holds {key}, but it does not")
                state[key[len(PREFIX):]] = shard[key].clone()
    return state


def extract(src: Path, out: Path) -> QwenViT:
    visual = read_visual_config(src)
    state = read_visual_weights(src)
    with torch.device("meta"):
        model = QwenViT.from_config(visual)
    load_strict(model, state, f"{src} ({PREFIX}*)", assign=True)
    write_weights_file(state, out, {CONFIG_METADATA_KEY: json.dumps(visual)})
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="Qwen-VL-Chat folder (config.json + weights)")
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    args = parser.parse_args(argv)
    model = extract(args.src, args.out)
    count = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {count:,} parameters from {args.src}")


if __name__ == "__main__":
    sys.exit(run_entry(main))
