# Sourced by every script: go to the repository root, work offline, and make sure the project's virtual
# environment (.venv) exists with the pinned requirements. It re-installs only when a requirements file
# changes (their hash is stored in the venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 DIFFUSERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
VENV="${STORYVIZ_VENV:-$ROOT/.venv}"

ensure_venv() {  # ensure_venv REQUIREMENTS_FILE...
  local python="${PYTHON:-python3}"
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "error: StoryViz needs Python >= 3.10 ('$python' is $("$python" --version 2>&1))" >&2
    exit 1
  fi
  local stamp="$VENV/.requirements.sha256" want
  want="$(cat "$@" | sha256sum | cut -d' ' -f1)"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "creating the virtual environment in $VENV ..."
    "$python" -m venv "$VENV"
  fi
  if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "installing $* into $VENV (once; a few minutes) ..."
    "$VENV/bin/python" -m pip install -q --upgrade pip
    local args=()
    for file in "$@"; do args+=(-r "$file"); done
    "$VENV/bin/python" -m pip install -q "${args[@]}"
    echo "$want" > "$stamp"
  fi
  export PATH="$VENV/bin:$PATH"
  export VIRTUAL_ENV="$VENV"
}

# configs/accelerate/<name>.yaml to launch with: $LAUNCH if set, else single_gpu when a GPU answers, else cpu.
launch_config() {
  local name="${LAUNCH:-}"
  if [ -z "$name" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then name=single_gpu; else name=cpu; fi
  fi
  if [ ! -f "configs/accelerate/$name.yaml" ]; then
    echo "error: LAUNCH=$name: no configs/accelerate/$name.yaml (have: $(ls configs/accelerate | sed 's/.yaml//' | tr '\n' ' '))" >&2
    exit 2
  fi
  echo "configs/accelerate/$name.yaml"
}
