#!/usr/bin/env bash
# SEED-Story's own name for stage-2 (MLLM SFT) training: the same as scripts/train_story_sft.sh (every argument passed on).
exec bash "$(dirname "$0")/train_story_sft.sh" "$@"
