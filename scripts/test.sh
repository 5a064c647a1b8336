#!/usr/bin/env bash
# The test suite: bash scripts/test.sh [pytest arguments]
# Installs the environment (requirements.txt + requirements-dev.txt) first if needed. CPU only, offline.
source "$(dirname "$0")/_env.sh"
ensure_venv requirements.txt requirements-dev.txt
exec python -m pytest "$@"
