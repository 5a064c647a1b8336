"""Stage-2 alignment targets on disk, the read side (StoryGPT-V §3.2; built by src/tools/align_targets.py,
`bash scripts/align_targets.sh`, the seed's `scripts/clip.sh`): Char-LDM's fused embedding of every frame's
original caption, [L, D] per frame.

Layout of a cache folder (default `<Char-LDM run>/targets/<step>-<target>/`):
  manifest.json                 checkpoint, its sha256, config fingerprint, target, dtype, shape, shards
  <split>-<NNNNN>.safetensors   one shard per `shard_size` stories; keys "<story id>/<frame>" -> [L, D]
A cache made from another checkpoint is refused with a one-line error, never mixed or silently served.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

FORMAT = 1
TARGETS = ("fuse", "text")
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"


class TargetCacheError(ValueError):
    """A cache that cannot serve this request; the message names the manifest at fault."""


def default_cache_dir(run_dir: Path, checkpoint: Path, target: str) -> Path:
    """<Char-LDM run>/targets/<checkpoint folder name>-<target>."""
    return Path(run_dir) / "targets" / f"{Path(checkpoint).name}-{target}"


def write_json(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


class TargetCache:
    """Read side: `cache.get(story_id, frame)` -> [L, D]; shards open lazily (memory-mapped)."""

    def __init__(self, folder, check_complete: bool = True):
        self.folder = Path(folder)
        self.manifest_path = self.folder / MANIFEST
        if not self.manifest_path.is_file():
            raise FileNotFoundError(f"{self.manifest_path}: no target cache here (bash scripts/align_targets.sh DATASET CKPT)")
        self.manifest = json.loads(self.manifest_path.read_text())
        if check_complete and not self.manifest.get("complete"):
            raise TargetCacheError(f"{self.manifest_path}: the cache is incomplete (a killed run); run "
                                   f"scripts/align_targets.sh again to finish it")
        self.shard_of = {story: shard["file"] for split in self.manifest["splits"].values()
                         for shard in split["shards"] for story in shard["stories"]}
        self._open = {}

    def check_checkpoint(self, sha256: str, checkpoint) -> None:
        if self.manifest["checkpoint_sha256"] != sha256:
            raise TargetCacheError(f"{self.manifest_path}: made from checkpoint {self.manifest['checkpoint']}, not "
                                   f"from model.stage1={checkpoint} (sha256 differs); rebuild the cache with "
                                   f"scripts/align_targets.sh or point model.targets at this checkpoint's cache")

    def get(self, story_id: str, frame: int) -> torch.Tensor:
        file = self.shard_of.get(story_id)
        if file is None:
            raise KeyError(f"{self.manifest_path}: no targets for story '{story_id}'")
        if file not in self._open:
            self._open[file] = safe_open(str(self.folder / file), framework="pt")
        return self._open[file].get_tensor(f"{story_id}/{frame}")

    def first(self) -> torch.Tensor:
        story = next(iter(self.shard_of))
        return self.get(story, 0)

    def __getstate__(self):  # DataLoader workers reopen the shards themselves
        return {**self.__dict__, "_open": {}}
