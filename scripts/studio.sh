#!/usr/bin/env bash
# The studio, a local web page to draw stories with trained runs (docs/studio.md):
#   bash scripts/studio.sh [--port P] [--runs DIR ...] [--out DIR] [--device cpu|cuda]
# Serves http://127.0.0.1:P/ (default 7860) only: no share link, no analytics. Lists every run folder under
# outputs/ and pretrained/; each drawn story is saved under outputs/studio/. Installs Gradio on first use
# (requirements-studio.txt).
source "$(dirname "$0")/_env.sh"
ensure_venv requirements.txt
ensure_studio
exec python -m src.studio "$@"
