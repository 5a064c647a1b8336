#!/usr/bin/env bash
# Draw a split's stories with a trained checkpoint:
#   bash scripts/generate.sh CHECKPOINT SPLIT OUT_DIR [key=value ...]
# CHECKPOINT is a run folder (latest checkpoint) or outputs/<stage>/<dataset>/<run>/checkpoints/step_N.
source "$(dirname "$0")/_env.sh"
if [ $# -lt 3 ]; then
  echo "usage: bash scripts/generate.sh CHECKPOINT SPLIT OUT_DIR [key=value ...]" >&2
  exit 2
fi
ckpt="$1" split="$2" out="$3"; shift 3
ensure_venv requirements.txt
exec python -m src.generate --checkpoint "$ckpt" --split "$split" --out "$out" "$@"
