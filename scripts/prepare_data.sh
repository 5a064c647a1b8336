#!/usr/bin/env bash
# Convert a public dataset release into the story format (data/README.md):
#   bash scripts/prepare_data.sh DATASET SOURCE_DIR [--out DIR] [--layout L] [more options of src.data.prepare]
#   DATASET     flintstones, pororo or storystream_george (configs/data/DATASET.yaml)
#   SOURCE_DIR  the release as downloaded; its layout is detected (or give --layout)
# Resumable: re-run the same command after an interruption. Check the result with
#   python -m src.data.check data/DATASET
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ $# -lt 2 ] || [ ! -f "configs/data/$1.yaml" ]; then
  echo "usage: bash scripts/prepare_data.sh DATASET SOURCE_DIR [options]; DATASET is one of:" \
       "$(ls configs/data | sed 's/.yaml//' | tr '\n' ' ')" >&2
  exit 2
fi
if [ ! -e "$2" ]; then
  echo "error: SOURCE_DIR '$2' does not exist" >&2
  exit 2
fi
if [ -f .venv/bin/activate ]; then
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
export HF_HUB_OFFLINE=1
exec python -m src.data.prepare "$@"
