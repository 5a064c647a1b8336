#!/usr/bin/env bash
# Stage-1 LDM training: bash scripts/train_ldm.sh DATASET [key=value ...]
#   DATASET    a recipe in configs/ldm/ (toy, flintstones, pororo)
#   key=value  config overrides, e.g. train.max_steps=200 run_name=try1 train.resume=latest
#   LAUNCH=cpu|cpu_ddp|single_gpu|ddp|zero2|zero3   accelerate settings (default: single_gpu if a GPU, else cpu);
#                                                   without a GPU zero2/zero3 run 2 CPU processes (docs/distributed.md)
#   LAUNCH_ARGS="--num_processes 4"                 extra arguments for accelerate launch
source "$(dirname "$0")/_env.sh"
launch_training configs/ldm/ train_ldm.sh "$@"
