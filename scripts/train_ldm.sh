#!/usr/bin/env bash
# Stage-1 LDM training: bash scripts/train_ldm.sh DATASET [key=value ...]
#   DATASET    a recipe in configs/ldm/ (toy, flintstones, pororo)
#   key=value  config overrides, e.g. train.max_steps=200 run_name=try1 train.resume=latest
#   LAUNCH=cpu|cpu_ddp|single_gpu|ddp|zero2|zero3   accelerate settings (default: single_gpu if a GPU, else cpu);
#                                                   without a GPU zero2/zero3 run 2 CPU processes (docs/distributed.md)
#   LAUNCH_ARGS="--num_processes 4"                 extra arguments for accelerate launch
source "$(dirname "$0")/_env.sh"
if [ $# -lt 1 ] || [ ! -f "configs/ldm/$1.yaml" ]; then
  echo "usage: bash scripts/train_ldm.sh DATASET [key=value ...]; DATASET is one of: $(ls configs/ldm | grep -v base | sed 's/.yaml//' | tr '\n' ' ')" >&2
  exit 2
fi
dataset="$1"; shift
ensure_venv requirements.txt
config="$(launch_config)"
# --quiet: after src.train's one-line error, a one-process launcher adds no traceback of its own.
# shellcheck disable=SC2086
exec accelerate launch --quiet --config_file "$config" ${LAUNCH_ARGS:-} -m src.train --config "configs/ldm/$dataset.yaml" "$@"
