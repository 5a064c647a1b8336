#!/usr/bin/env bash
# SEED-Story stage-1 de-tokenizer training: bash scripts/train_detokenizer.sh DATASET [key=value ...]
#   DATASET    a recipe configs/story/detokenizer_DATASET.yaml (toy, george)
#   key=value  config overrides, e.g. train.max_steps=200 run_name=try1 train.resume=latest
#   LAUNCH=cpu|cpu_ddp|single_gpu|ddp|zero2|zero3   accelerate settings (default: single_gpu if a GPU, else cpu)
#   LAUNCH_ARGS="--num_processes 4"                 extra arguments for accelerate launch
source "$(dirname "$0")/_env.sh"
if [ $# -lt 1 ] || [ ! -f "configs/story/detokenizer_$1.yaml" ]; then
  echo "usage: bash scripts/train_detokenizer.sh DATASET [key=value ...]; DATASET is one of: $(ls configs/story | grep '^detokenizer_' | grep -v base | sed 's/^detokenizer_//; s/.yaml//' | tr '\n' ' ')" >&2
  exit 2
fi
dataset="$1"; shift
ensure_venv requirements.txt
config="$(launch_config)"
# shellcheck disable=SC2086
exec accelerate launch --config_file "$config" ${LAUNCH_ARGS:-} -m src.train --config "configs/story/detokenizer_$dataset.yaml" "$@"
