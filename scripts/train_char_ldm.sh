#!/usr/bin/env bash
# StoryGPT-V stage 1, Char-LDM: bash scripts/train_char_ldm.sh DATASET [key=value ...]
# (the seed's name: scripts/train_ldm.sh; the plain-LDM baseline: model.character_conditioning=false)
#   DATASET    a recipe in configs/char_ldm/ (toy, flintstones, pororo)
#   key=value  config overrides, e.g. train.max_steps=200 run_name=try1 train.resume=latest
#   LAUNCH=cpu|cpu_ddp|single_gpu|ddp|zero2|zero3   accelerate settings (default: single_gpu if a GPU, else cpu);
#                                                   without a GPU zero2/zero3 run 2 CPU processes (docs/distributed.md)
#   LAUNCH_ARGS="--num_processes 4"                 extra arguments for accelerate launch
source "$(dirname "$0")/_env.sh"
launch_training configs/char_ldm/ train_char_ldm.sh "$@"
