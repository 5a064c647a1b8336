#!/usr/bin/env bash
# StoryGPT-V's own name for building the stage-2 alignment targets: the same as scripts/align_targets.sh (every argument passed on).
exec bash "$(dirname "$0")/align_targets.sh" "$@"
