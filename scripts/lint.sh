#!/usr/bin/env bash
# The linter: bash scripts/lint.sh [ruff arguments, e.g. --fix]. Settings: pyproject.toml ([tool.ruff]).
source "$(dirname "$0")/_env.sh"
ensure_venv requirements.txt requirements-dev.txt
exec ruff check "${@:-.}"
