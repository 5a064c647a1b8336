#!/usr/bin/env bash
# SEED-Story stage 3 (de-tokenizer adaptation) under the name of its stage-2 command: the same as scripts/train_story_adapt.sh (every argument passed on).
exec bash "$(dirname "$0")/train_story_adapt.sh" "$@"
