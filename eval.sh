#!/usr/bin/env bash
# The evaluation verb at the repository root (the design card's `bash eval.sh`): the same as
# scripts/eval.sh, which documents its arguments (every argument passed on).
exec bash "$(dirname "$0")/scripts/eval.sh" "$@"
