#!/usr/bin/env bash
# The seed's name for stage-2 training: same as scripts/train_align.sh.
exec bash "$(dirname "$0")/train_align.sh" "$@"
