#!/usr/bin/env bash
# Stage-2 alignment training (StoryGPT-V): bash scripts/train_align.sh DATASET [key=value ...]
#   DATASET    a recipe in configs/align/ (toy, flintstones, flintstones_llama, pororo)
#   key=value  config overrides, e.g. model.llm_mode=lora model.num_image_tokens=16 train.resume=latest
#   LAUNCH=cpu|cpu_ddp|single_gpu|ddp|zero2|zero3   accelerate settings (real recipes: zero2)
#   LAUNCH_ARGS="--num_processes 4"                 extra arguments for accelerate launch
# Needs the stage-1 run (model.stage1) and its target cache (bash scripts/align_targets.sh DATASET STAGE1_CKPT).
source "$(dirname "$0")/_env.sh"
launch_training configs/align/ train_align.sh "$@"
