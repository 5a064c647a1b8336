#!/usr/bin/env bash
# SEED-Story stage-2 MLLM fine-tuning: bash scripts/train_story_sft.sh [DATASET] [key=value ...]
#   DATASET    a recipe configs/story_sft/DATASET.yaml (toy: the default; george)
#   key=value  config overrides, e.g. train.max_steps=200 model.supervision=last train.resume=latest
#   LAUNCH=cpu|cpu_ddp|single_gpu|ddp|zero2|zero3   accelerate settings (george: zero2)
#   LAUNCH_ARGS="--num_processes 8"                 extra arguments for accelerate launch
source "$(dirname "$0")/_env.sh"
if [ $# -eq 0 ] || [[ "$1" == *=* ]]; then
  set -- toy "$@"
fi
launch_training configs/story_sft/ train_story_sft.sh "$@"
