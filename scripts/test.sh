#!/usr/bin/env bash
# The test suite: bash scripts/test.sh [--fast] [pytest arguments]
#   --fast   leave out the tests marked slow (trainings, whole commands): a few minutes on 2 cores, for
#            development; CI runs everything.
# Installs the environment (requirements.txt + requirements-dev.txt, and the studio's requirements-studio.txt:
# tests/test_studio*.py drive it) first if needed. CPU only, offline. The browser test
# (tests/test_studio_browser.py) needs Debian's chromium and chromium-driver, which .ci/run installs; without
# them it is skipped with that reason.
source "$(dirname "$0")/_env.sh"
ensure_venv requirements.txt requirements-dev.txt
ensure_studio
if [ "${1:-}" = --fast ]; then
  shift
  set -- -m "not slow" "$@"
fi
exec python -m pytest "$@"
