#!/usr/bin/env bash
# StoryGPT-V's own name for stage-1 (Char-LDM) training: the same as scripts/train_char_ldm.sh (every argument passed on).
exec bash "$(dirname "$0")/train_char_ldm.sh" "$@"
