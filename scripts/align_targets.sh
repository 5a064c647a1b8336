#!/usr/bin/env bash
# StoryGPT-V stage-2 alignment targets (the seed's name: scripts/clip.sh): Char-LDM's fused embedding of every frame's
# original caption with the dataset's fixed references, for train, val and test.
#   bash scripts/align_targets.sh DATASET CKPT [--out DIR] [--target fuse|text] [--dtype float16|float32] [--shard-size N]
# CKPT: a Char-LDM run folder (its latest checkpoint) or one checkpoints/step_NNNNNN folder.
# Default output: <run>/targets/<step>-<target>/ (safetensors shards + manifest.json); resumes after a kill.
source "$(dirname "$0")/_env.sh"
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/align_targets.sh DATASET CKPT [--out DIR] [--target fuse|text] [--dtype float16|float32]" >&2
  exit 2
fi
dataset="$1" ckpt="$2"; shift 2
ensure_venv requirements.txt
exec python -m src.tools.align_targets --dataset "$dataset" --checkpoint "$ckpt" "$@"
