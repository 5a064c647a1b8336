#!/usr/bin/env bash
# The test suite: bash scripts/test.sh [--fast] [pytest arguments]
#   --fast   leave out the tests marked slow (trainings, whole commands): a few minutes on 2 cores, for
#            development; CI runs everything.
# Installs the environment (requirements.txt + requirements-dev.txt) first if needed. CPU only, offline.
source "$(dirname "$0")/_env.sh"
ensure_venv requirements.txt requirements-dev.txt
if [ "${1:-}" = --fast ]; then
  shift
  set -- -m "not slow" "$@"
fi
exec python -m pytest "$@"
