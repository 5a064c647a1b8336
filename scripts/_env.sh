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
  # One stamp per requirements file, named by the hash of its content: the demo (requirements.txt) and the
  # tests (requirements.txt + requirements-dev.txt) then never re-install after each other.
  local stamps="$VENV/.requirements" file todo=()
  if [ ! -x "$VENV/bin/python" ]; then
    echo "creating the virtual environment in $VENV ..."
    "$python" -m venv "$VENV"
  fi
  for file in "$@"; do
    [ -f "$stamps/$(sha256sum "$file" | cut -d' ' -f1)" ] || todo+=("$file")
  done
  if [ ${#todo[@]} -gt 0 ]; then
    echo "installing ${todo[*]} into $VENV (once; a few minutes) ..."
    local args=() attempt
    for file in "${todo[@]}"; do args+=(-r "$file"); done
    # torch's CUDA dependencies are several GB from the registry: an interrupted download is retried
    # (pip resumes a file up to --resume-retries times; a whole new attempt starts a stalled one afresh).
    for attempt in 1 2 3 4; do
      if "$VENV/bin/python" -m pip install -q --upgrade pip \
         && "$VENV/bin/python" -m pip install -q --resume-retries 20 "${args[@]}"; then
        break
      fi
      if [ "$attempt" = 4 ]; then
        echo "error: pip could not install ${todo[*]} into $VENV after 4 attempts (see pip's message above)" >&2
        exit 1
      fi
      echo "pip install failed (attempt $attempt of 4); retrying in $((attempt * 20)) s ..." >&2
      sleep $((attempt * 20))
    done
    mkdir -p "$stamps"
    for file in "${todo[@]}"; do touch "$stamps/$(sha256sum "$file" | cut -d' ' -f1)"; done
  fi
  export PATH="$VENV/bin:$PATH"
  export VIRTUAL_ENV="$VENV"
}

# ensure_studio: the studio's packages (requirements-studio.txt, after ensure_venv requirements.txt). gradio
# declares pillow<13 and requirements.txt pins pillow 13, so pip's resolver would refuse the pair: the file
# pins gradio and every package it needs beyond requirements.txt, installed without the resolver.
ensure_studio() {
  PIP_NO_DEPS=1 ensure_venv requirements-studio.txt
}

# run_task RUN: the `task:` of a run folder's config.yaml (RUN: the run folder, a checkpoint folder inside
# it, or its best/ folder); empty when there is none. eval.sh dispatches on it.
run_task() {
  local dir="${1%/}" file
  for file in "$dir/config.yaml" "$dir/../../config.yaml" "$dir/../config.yaml"; do
    if [ -f "$file" ]; then
      sed -n "s/^task: *['\"]\{0,1\}\([A-Za-z0-9_]*\).*/\1/p" "$file" | head -n1
      return 0
    fi
  done
}

has_gpu() {
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1
}

# configs/accelerate/<name>.yaml to launch with: $LAUNCH if set, else single_gpu when a GPU answers, else cpu.
# Without a GPU, a LAUNCH with a cpu_ twin (ddp, zero2, zero3: all GPUs) runs the twin (2 CPU processes).
launch_config() {
  local name="${LAUNCH:-}"
  if [ -z "$name" ]; then
    if has_gpu; then name=single_gpu; else name=cpu; fi
  elif [ -f "configs/accelerate/cpu_$name.yaml" ] && ! has_gpu; then
    echo "no GPU answers: LAUNCH=$name runs configs/accelerate/cpu_$name.yaml (2 CPU processes)" >&2
    name="cpu_$name"
  fi
  if [ ! -f "configs/accelerate/$name.yaml" ]; then
    echo "error: LAUNCH=$name: no configs/accelerate/$name.yaml (have: $(ls configs/accelerate | sed 's/.yaml//' | tr '\n' ' '))" >&2
    exit 2
  fi
  echo "configs/accelerate/$name.yaml"
}

# DeepSpeed without a GPU runs on its CPU accelerator (it would guess so too, with a warning).
if ! has_gpu; then
  export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
fi

# launch_training CONFIG_PREFIX SCRIPT_NAME DATASET [key=value ...]: the body of every training launcher.
# The recipe is $CONFIG_PREFIX$DATASET.yaml (e.g. configs/char_ldm/toy.yaml, configs/detokenizer/toy.yaml).
launch_training() {
  local prefix="$1" script="$2"; shift 2
  local dir="${prefix%/*}" stem="${prefix##*/}"
  if [ $# -lt 1 ] || [ "$1" = base ] || [ ! -f "$prefix$1.yaml" ]; then
    echo "usage: bash scripts/$script DATASET [key=value ...]; DATASET is one of: $(ls "$dir" | grep "^$stem" | grep -v 'base.yaml$' | sed "s/^$stem//; s/.yaml$//" | tr '\n' ' ')" >&2
    exit 2
  fi
  local dataset="$1"; shift
  ensure_venv requirements.txt
  local config
  config="$(launch_config)"
  # --quiet: after src.train's one-line error, a one-process launcher adds no traceback of its own.
  # shellcheck disable=SC2086
  exec accelerate launch --quiet --config_file "$config" ${LAUNCH_ARGS:-} -m src.train --config "$prefix$dataset.yaml" "$@"
}
