#!/usr/bin/env bash
# The wheels `bash bench/gpu.sh --system-python` needs on a GPU machine that has PyTorch but no network.
# Run it here, on a machine with pip's registry; copy the repository (with .whl/) to the GPU machine.
#
#   bash bench/wheelhouse.sh                          # the pure-Python wheels the GPU path imports (about 9 MB)
#   bash bench/wheelhouse.sh --with-datasets 3.11     # + diffusers' script's `datasets` and its binary wheels
#                                                     #   for CPython 3.11 on x86_64 Linux (about 62 MB in all)
#
# What the machine must already have (most PyTorch images do): torch >= 2.4 with CUDA, torchvision,
# transformers, accelerate, peft, and what they pull in (huggingface-hub, safetensors, tokenizers, numpy,
# pillow, pyyaml, tqdm, regex). What the wheelhouse adds, at requirements.txt's versions, downloaded with
# `pip download --no-deps --only-binary=:all:` into .whl/ (git-ignored; WHEELHOUSE=DIR for another folder):
#   diffusers        the UNets, VAE, schedulers and pipelines
#   omegaconf        the configs (src/config.py)
#   open_clip_torch  only for its CLIP BPE vocabulary file (the tiny stack's tokenizer; never imported)
# With --with-datasets PYTHON_VERSION: datasets, dill, multiprocess, fsspec, pandas, pyarrow, xxhash,
# python-dateutil, pytz, tzdata, six for that CPython on manylinux x86_64 (diffusers' train_text_to_image.py
# reads its images through `datasets`; without them only its row of bench/gpu.sh fails).
# diffusers' script itself: DIFFUSERS_SCRIPT=/path/to/train_text_to_image.py, else it is fetched with git
# from diffusers' repository at the pinned version's tag; it lands in .whl/train_text_to_image.py.
# The folder must stay under 64 MiB (what the project's device tool carries); the script checks it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${WHEELHOUSE:-.whl}"
LIMIT_MIB=64
PYVER=""
case "${1:-}" in
  "") ;;
  --with-datasets)
    PYVER="${2:-}"
    [[ "$PYVER" =~ ^3\.[0-9]+$ ]] || { echo "usage: bash bench/wheelhouse.sh [--with-datasets 3.X]" >&2; exit 2; } ;;
  *) echo "usage: bash bench/wheelhouse.sh [--with-datasets 3.X]" >&2; exit 2 ;;
esac
PY="${PYTHON:-python3}"

pinned() {  # pinned NAME: NAME==VERSION from requirements.txt
  local line
  line="$(grep -iE "^$1==" requirements.txt)" || { echo "error: $1 is not pinned in requirements.txt" >&2; exit 1; }
  echo "$line"
}

mkdir -p "$OUT"
download() { "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$OUT" "$@"; }
echo "downloading the pure-Python wheels into $OUT ..."
download "$(pinned diffusers)" "$(pinned omegaconf)" "$(pinned open_clip_torch)"
if [ -n "$PYVER" ]; then
  echo "downloading datasets and its wheels for CPython $PYVER (manylinux x86_64) ..."
  # manylinux2014 wheels only: they run on older glibc too, and pyarrow's are 13 MB smaller than its 2_28 ones
  target=(--python-version "$PYVER" --implementation cp --platform manylinux2014_x86_64)
  download "${target[@]}" datasets dill multiprocess fsspec pandas pyarrow xxhash python-dateutil pytz tzdata six
fi

diffusers_version="$(pinned diffusers | cut -d= -f3)"
if [ -n "${DIFFUSERS_SCRIPT:-}" ]; then
  cp "$DIFFUSERS_SCRIPT" "$OUT/train_text_to_image.py"
elif [ ! -f "$OUT/train_text_to_image.py" ]; then
  scratch="$(mktemp -d)"
  if git clone -q --depth 1 --branch "v$diffusers_version" https://github.com/huggingface/diffusers "$scratch/diffusers" 2>/dev/null; then
    cp "$scratch/diffusers/examples/text_to_image/train_text_to_image.py" "$OUT/"
  else
    echo "note: could not clone diffusers v$diffusers_version; pass DIFFUSERS_SCRIPT=... for the side by side row" >&2
  fi
  rm -rf "$scratch"
fi

size=$(du -sb "$OUT" | cut -f1)
ls -l "$OUT"
echo "$OUT: $(( size / 1024 / 1024 )) MiB"
if [ "$size" -gt $(( LIMIT_MIB * 1024 * 1024 )) ]; then
  echo "error: $OUT holds $(( size / 1024 / 1024 )) MiB, over the $LIMIT_MIB MiB a device carries; remove what is not needed" >&2
  exit 1
fi
