"""Build StoryGPT-V stage 2's alignment targets (§3.2; `bash scripts/align_targets.sh`, the seed's
`scripts/clip.sh`): for every frame of train, val and test, Char-LDM's fused embedding of the ORIGINAL
caption (names, not pronouns) with the dataset's fixed references, [L, D] per frame (`--target text`:
the text-only embedding, the paper's Emb_text ablation). The embedding is Char-LDM's own conditioning
(StoryGPTVPipeline.condition, src/pipelines/storygptv.py), not a copy. The cache's layout and its reader:
src/data/target_cache.py.

Shards are written atomically, so a killed run resumes at the first missing shard; a cache made from
another checkpoint (or config) is refused with a one-line error, never mixed or silently served.

    python -m src.tools.align_targets --dataset toy --checkpoint outputs/char_ldm/toy/default [--out DIR]
        [--target fuse|text] [--dtype float16|float32] [--shard-size 256]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file

from src import runs
from src.data.target_cache import FORMAT, MANIFEST, SPLITS, TARGETS, TargetCache, TargetCacheError, default_cache_dir, write_json
from src.errors import run_entry


def config_fingerprint(cfg, target: str, dtype: str) -> str:
    from src.config import to_dict

    facts = {"model": to_dict(cfg.model), "data_root": str(Path(cfg.data.root).resolve()), "target": target,
             "dtype": dtype}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_manifest(manifest: dict, want: dict, path: Path) -> None:
    for key in ("target", "dtype", "checkpoint_sha256", "config_fingerprint", "shard_size"):
        if manifest.get(key) != want[key]:
            raise TargetCacheError(
                f"{path}: this cache was made with {key}={manifest.get(key)!r} (checkpoint {manifest.get('checkpoint')}), "
                f"not {want[key]!r}; use another --out or delete the folder")


@torch.no_grad()
def build_target_cache(checkpoint, out_dir: Optional[Path] = None, target: str = "fuse", dtype: str = "float16",
                       shard_size: int = 256, batch_size: int = 64, device: Optional[str] = None,
                       dataset: Optional[str] = None, log=print) -> Path:
    """Write (or finish) the cache; returns its folder."""
    from src.assets import ensure_assets
    from src.config import load_config
    from src.data.stories import read_split

    if target not in TARGETS:
        raise ValueError(f"--target {target}: not one of {', '.join(TARGETS)}")
    run_dir, ckpt = runs.resolve_run_checkpoint(checkpoint)
    ensure_assets(load_config(run_dir / "config.yaml"))
    task, cfg, weights = runs.load_task(checkpoint)
    if dataset is not None and cfg.data.name != dataset:
        raise ValueError(f"{checkpoint}: a Char-LDM run on '{cfg.data.name}', not on '{dataset}'")
    if cfg.task != "char_ldm" or not cfg.model.character_conditioning:
        raise ValueError(f"{checkpoint}: targets come from a Char-LDM run (task char_ldm with character "
                         f"conditioning), this run is task '{cfg.task}'")
    out_dir = Path(out_dir) if out_dir is not None else default_cache_dir(run_dir, ckpt, target)
    want = {"format": FORMAT, "checkpoint": str(weights), "checkpoint_sha256": runs.file_sha256(weights),
            "config_fingerprint": config_fingerprint(cfg, target, dtype), "target": target, "dtype": dtype,
            "shard_size": shard_size, "dataset_root": str(cfg.data.root), "caption_field": "captions"}
    manifest_path = out_dir / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        _check_manifest(manifest, want, manifest_path)
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest = {**want, "complete": False, "splits": {}}
        write_json(manifest_path, manifest)
    if manifest.get("complete"):
        log(f"target cache {out_dir} is complete")
        return out_dir

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    task.to(device).eval()
    pipe = task.pipeline()
    ref_embeds = pipe.reference_embeddings()
    written = 0
    for split in SPLITS:
        _, stories = read_split(cfg.data.root, split)
        shards = []
        for index, start in enumerate(range(0, len(stories), shard_size)):
            name = f"{split}-{index:05d}.safetensors"
            shards.append({"file": name, "stories": [s.id for s in stories[start:start + shard_size]]})
            if (out_dir / name).is_file():
                continue  # written before a kill
            jobs = [(s.id, k, caption) for s in stories[start:start + shard_size] for k, caption in enumerate(s.captions)]
            tensors = {}
            for b in range(0, len(jobs), batch_size):
                chunk = jobs[b:b + batch_size]
                text_states, fused, _ = pipe.condition([c for _, _, c in chunk], ref_embeds)
                states = fused if target == "fuse" else text_states
                for (story_id, k, _), state in zip(chunk, states):
                    tensors[f"{story_id}/{k}"] = state.to(getattr(torch, dtype)).cpu().contiguous()
            tmp = out_dir / (name + ".tmp")
            save_file(tensors, str(tmp), metadata={"checkpoint_sha256": want["checkpoint_sha256"]})
            os.replace(tmp, out_dir / name)
            written += 1
            log(f"  {name}: {len(tensors)} frames")
        manifest["splits"][split] = {"num_stories": len(stories), "shards": shards}
        write_json(manifest_path, manifest)
    manifest["shape"] = list(TargetCache(out_dir, check_complete=False).first().shape)
    manifest["complete"] = True
    write_json(manifest_path, manifest)
    log(f"target cache {out_dir}: {written} shard(s) written")
    return out_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=None, help="checked against the run's data.name")
    parser.add_argument("--checkpoint", required=True, help="a Char-LDM run folder or checkpoint folder")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--target", choices=TARGETS, default="fuse")
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    parser.add_argument("--shard-size", type=int, default=256, help="stories per shard")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    out = build_target_cache(args.checkpoint, args.out, args.target, args.dtype, args.shard_size,
                             args.batch_size, args.device, args.dataset)
    print(f"targets: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry(main))
