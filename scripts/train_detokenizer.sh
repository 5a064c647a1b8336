#!/usr/bin/env bash
# SEED-Story stage-1 de-tokenizer training: bash scripts/train_detokenizer.sh DATASET [key=value ...]
#   DATASET    a recipe configs/detokenizer/DATASET.yaml (toy, george)
#   key=value  config overrides, e.g. train.max_steps=200 run_name=try1 train.resume=latest
#   LAUNCH=cpu|cpu_ddp|single_gpu|ddp|zero2|zero3   accelerate settings (default: single_gpu if a GPU, else cpu)
#   LAUNCH_ARGS="--num_processes 4"                 extra arguments for accelerate launch
source "$(dirname "$0")/_env.sh"
launch_training configs/detokenizer/ train_detokenizer.sh "$@"
