#!/usr/bin/env bash
# SEED-Story stage-3 de-tokenizer adaptation: bash scripts/train_story_adapt.sh [DATASET] [key=value ...]
#   DATASET    a recipe configs/story_adapt/DATASET.yaml (toy: the default; george)
#   key=value  config overrides, e.g. model.sft_run=outputs/story_sft/toy_story/default
#              model.trainable=full_unet train.resume=latest
#   LAUNCH=cpu|cpu_ddp|single_gpu|ddp|zero2|zero3   accelerate settings (george: zero2)
#   LAUNCH_ARGS="--num_processes 8"                 extra arguments for accelerate launch
# It reads the stage-2 run folder (model.sft_run) and the de-tokenizer run that run's config names.
source "$(dirname "$0")/_env.sh"
if [ $# -eq 0 ] || [[ "$1" == *=* ]]; then
  set -- toy "$@"
fi
launch_training configs/story_adapt/ train_story_adapt.sh "$@"
