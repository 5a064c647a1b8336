#!/usr/bin/env bash
# Every GPU row of bench/README.md in one go, in under 8 minutes on one H100 from a bare start; one markdown file.
#
#   bash bench/gpu.sh                          # the project's .venv (scripts/_env.sh installs requirements.txt)
#   bash bench/gpu.sh --system-python          # the machine's own python3 and torch (no network: bench/README.md)
#   bash bench/gpu.sh --cpu-dry-run            # the same pieces at toy size on a CPU: checks the script, not numbers
#
# Rows, each in its own process under its own timeout (a failing row prints its error in the table and the
# others go on), all with random weights: (1) the SD 1.5 step (configs/bench/sd15.yaml) at 512 px, batch 8,
# bf16, LDM and Char-LDM, without and with model.cache_latents, then Char-LDM with gradient checkpointing,
# PyTorch's allocator capped at MEMORY_LIMIT_GIB (a 24 GB card); (2) diffusers' train_text_to_image.py beside
# `python -m src.train` (LDM and Char-LDM with the cache) and the UNet's forward + backward alone, data
# loading included; (3) real-size steps of the other stages (bench/real_step.py on the config-only folders of
# tests/assets/config_only): the SDXL de-tokenizer, the Llama-2-7b story_sft step with LoRA and the ViT-G
# tokenizer, the OPT-6.7b align step; (4) Char-LDM's kept reference states (fixed references, with and
# without model.cache_references); (5) the memory tiers of drawing (bench/memory_tiers.py, docs/own_story.md):
# each system drawing one story under each --offload tier. (4) and (5) run last, if time is left.
#
# --system-python: python3 (or $PYTHON) must have torch >= 2.4 with CUDA, transformers, accelerate, peft and
# torchvision; the pure-Python wheels the path needs besides (bench/wheelhouse.sh puts them in .whl/ on a
# machine with network) are installed with `pip --no-index` into $WORK/site, which goes first on PYTHONPATH.
# .whl/train_text_to_image.py, if there, is diffusers' script (else DIFFUSERS_SCRIPT; without one, row (2)
# says it was skipped). Environment: WORK (default outputs/bench/gpu), TABLE (default $WORK/table.md),
# MEMORY_LIMIT_GIB (22), BUDGET_S (the whole run's seconds, 480: a row gets at most what is left),
# WHEELHOUSE (.whl).
source "$(dirname "$0")/../scripts/_env.sh"
DRY=0 SYSTEM=0
for arg in "$@"; do
  case "$arg" in
    --cpu-dry-run) DRY=1 ;;
    --system-python) SYSTEM=1 ;;
    *) echo "usage: bash bench/gpu.sh [--system-python] [--cpu-dry-run]" >&2; exit 2 ;;
  esac
done
WORK="${WORK:-outputs/bench/gpu}"
TABLE="${TABLE:-$WORK/table.md}"
MEM="${MEMORY_LIMIT_GIB:-22}"
BUDGET="${BUDGET_S:-480}"
WHEELS="${WHEELHOUSE:-.whl}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
started=$(date +%s)
stamp() { echo "[gpu.sh $(( $(date +%s) - started )) s] $*"; }

if [ "$SYSTEM" = 1 ]; then
  PY="${PYTHON:-python3}"
  # The machine's own packages; our pinned pure-Python wheels in $WORK/site, ahead of anything installed.
  "$PY" - "$DRY" <<'EOF' || exit 1
import importlib.util, sys
dry = sys.argv[1] == "1"
missing = [name for name in ("torch", "torchvision", "transformers", "accelerate", "peft")
           if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"error: --system-python: {sys.executable} lacks {', '.join(missing)} (needs torch >= 2.4 with CUDA, "
             "torchvision, transformers, accelerate, peft)")
import torch
major, minor = (int(part) for part in torch.__version__.split(".")[:2])
if (major, minor) < (2, 4):
    sys.exit(f"error: --system-python: torch {torch.__version__} is older than 2.4")
if not dry and not torch.cuda.is_available():
    sys.exit("error: --system-python: torch sees no CUDA device; use --cpu-dry-run to check the script on a CPU")
EOF
  if compgen -G "$WHEELS/*.whl" > /dev/null; then
    stamp_file="$WORK/site/.wheels"
    wanted="$(cd "$WHEELS" && ls ./*.whl | sort | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$stamp_file" 2>/dev/null)" != "$wanted" ]; then
      stamp "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $WORK/site (pip --no-index)"
      rm -rf "$WORK/site"
      "$PY" -m pip install -q --no-index --no-deps --target "$WORK/site" "$WHEELS"/*.whl
      echo "$wanted" > "$stamp_file"
    fi
  fi
  export PYTHONPATH="$WORK/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  if [ -z "${DIFFUSERS_SCRIPT:-}" ] && [ -f "$WHEELS/train_text_to_image.py" ]; then
    DIFFUSERS_SCRIPT="$WHEELS/train_text_to_image.py"
  fi
  # Every `python` below (and in rows added later, under `timeout` too) is the machine's interpreter.
  mkdir -p "$WORK/bin"
  printf '#!/bin/sh\nexec %q "$@"\n' "$(command -v "$PY")" > "$WORK/bin/python"
  chmod +x "$WORK/bin/python"
  export PATH="$WORK/bin:$PATH"
else
  ensure_venv requirements.txt
  if [ -n "${DIFFUSERS_SCRIPT:-}" ]; then
    python -c "import datasets" 2>/dev/null || python -m pip install -q "datasets>=2.19.1"
  fi
fi
if [ -n "${DIFFUSERS_SCRIPT:-}" ] && [ ! -f "$DIFFUSERS_SCRIPT" ]; then
  echo "error: DIFFUSERS_SCRIPT=$DIFFUSERS_SCRIPT: no such file" >&2; exit 2
fi

if [ "$DRY" = 0 ]; then
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA device; use --cpu-dry-run')"
  ARCH=sd15 RES=512 BATCH=8 STEPS=8 WARMUP=2 GC_STEPS=4 VS_STEPS=25 VS_SKIP=8 WORKERS=4 IMAGES=256
  TRAIN_STORIES=64 REAL_STEPS=4
  CONFIGS=tests/assets/config_only SDXL=$CONFIGS/stable-diffusion-xl-base-1.0 QWEN=$CONFIGS/Qwen-VL-Chat
  LLAMA=$CONFIGS/Llama-2-7b-hf OPT=$CONFIGS/opt-6.7b CLIP_L=$CONFIGS/clip-vit-large-patch14
  DETOK=(--config configs/detokenizer/george.yaml --batch 4 "model.pretrained=$SDXL" "model.tokenizer_path=$QWEN")
  SFT=(--config configs/story_sft/george.yaml --batch 2 "model.llm=$LLAMA" "model.tokenizer_path=$QWEN"
       model.context_beats=all)
  ALIGN=(--config configs/align/flintstones.yaml --batch 8 "model.llm=$OPT" "model.vision_encoder=$CLIP_L")
else
  ARCH=tiny RES=64 BATCH=4 STEPS=2 WARMUP=1 GC_STEPS=2 VS_STEPS=6 VS_SKIP=2 WORKERS=0 IMAGES=32
  TRAIN_STORIES=16 REAL_STEPS=1
  T="$WORK/tiny" TOY=(--tiny-root "$WORK/tiny" --data "$WORK/toy")
  DETOK=(--config configs/detokenizer/toy.yaml --batch 2 "model.pretrained=$T/sdxl"
         "model.tokenizer_path=$T/qwen_vit.safetensors")
  SFT=(--config configs/story_sft/toy.yaml --batch 2 "model.llm=$T/Llama-2-7b-hf"
       "model.tokenizer_path=$T/qwen_vit.safetensors")
  ALIGN=(--config configs/align/toy.yaml --batch 2 "model.llm=$T/opt-6.7b" "model.vision_encoder=$T/clip")
fi
STACK="$ARCH"

# Small toy data and the tiny stack: the tokenizer (CLIP's vocabulary), frames, masks and references.
stamp "toy data and tiny stack in $WORK"
[ -f "$WORK/toy/meta.json" ] || python -m src.data.toy --out "$WORK/toy" --num-train "$TRAIN_STORIES" --num-val 4 \
  --num-test 4 --num-workers "$(( $(nproc) < 8 ? $(nproc) : 8 ))" > "$WORK/toy.log"
python -m src.tools.tiny.stack --out "$WORK/tiny" --data "$WORK/toy" --vae-steps 60 > "$WORK/tiny-stack.log"
COMMON=(--tiny-root "$WORK/tiny" --data "$WORK/toy")
if [ "$DRY" = 1 ]; then  # the other stages' tiny pieces (SDXL-layout UNet, Qwen-ViT, Llama, OPT), as the toy recipes build them
  python - "$WORK" > "$WORK/tiny-seed.log" 2>&1 <<'EOF'
import sys
from src.assets import ensure_assets
from src.config import load_config
work = sys.argv[1]
common = [f"data.root={work}/toy", f"tiny_stack={work}/tiny"]
for recipe in ("detokenizer", "story_sft", "align"):
    ensure_assets(load_config(f"configs/{recipe}/toy.yaml", common + [
        f"model.{key}={work}/tiny/{folder}" for key, folder in
        {"detokenizer": {"pretrained": "sdxl", "tokenizer_path": "qwen_vit.safetensors"},
         "story_sft": {"llm": "Llama-2-7b-hf", "tokenizer_path": "qwen_vit.safetensors"},
         "align": {"llm": "opt-6.7b", "vision_encoder": "clip"}}[recipe].items()]))
EOF
fi

{
  echo "# StoryViz GPU benchmarks ($(date -u +%F), $([ "$DRY" = 1 ] && echo 'CPU DRY RUN: not measurements' || echo 'GPU'))"
  echo
  python -c "from bench.common import machine; import diffusers, transformers, accelerate, peft; print(machine() + \
', diffusers ' + diffusers.__version__ + ', transformers ' + transformers.__version__ + ', accelerate ' + \
accelerate.__version__ + ', peft ' + peft.__version__)"
  echo
} > "$TABLE"

left() { echo $(( BUDGET - ($(date +%s) - started) )); }
# row TITLE SECONDS LOG COMMAND...: COMMAND under `timeout min(SECONDS, time left)`; its table lines (those
# starting with "|", and the lines matching $KEEP) go into $TABLE under TITLE, or its error if it fails.
row() {
  local title="$1" seconds="$2" log="$3"; shift 3
  local limit; limit=$(left)
  [ "$limit" -lt "$seconds" ] && seconds="$limit"
  { echo "## $title"; echo; } >> "$TABLE"
  if [ "$seconds" -lt 20 ]; then
    { echo "SKIPPED: the time budget (BUDGET_S=$BUDGET) is spent"; echo; } >> "$TABLE"; stamp "skipped: $title"; return
  fi
  stamp "$title (at most $seconds s)"
  if timeout "$seconds" "$@" > "$log" 2>&1; then
    # a blank line between a table and the text around it (markdown)
    { grep -E "^\||${KEEP:-^(Char-LDM training step|Real-size training step|MFU peak|batch [0-9]+: )}" "$log" \
        | awk '{ table = /^\|/ } NR > 1 && table != was { print "" } { print; was = table }'; echo; } >> "$TABLE"
  else
    local status=$?
    { echo "FAILED (exit $status$([ $status = 124 ] && echo ': out of time')): see $log"; echo '```'
      grep -vE '^\s*$' "$log" | tail -5; echo '```'; echo; } >> "$TABLE"
  fi
}

STEP=(python -m bench.char_ldm_step --arch "$ARCH" --resolution "$RES" --batch "$BATCH" --precision bf16
      --memory-limit-gib "$MEM" "${COMMON[@]}")
row "Training step, SD 1.5 ($ARCH) at $RES px, batch $BATCH, bf16, allocator capped at $MEM GiB" 150 \
  "$WORK/step.log" "${STEP[@]}" --variant both --steps "$STEPS" --warmup "$WARMUP"
row "The same with the latent and text cache (model.cache_latents=true)" 150 "$WORK/step-cached.log" \
  "${STEP[@]}" --variant both --steps "$STEPS" --warmup "$WARMUP" --set model.cache_latents=true
row "Char-LDM with the cache and gradient checkpointing" 90 "$WORK/step-gc.log" \
  "${STEP[@]}" --variant char_ldm --gradient-checkpointing --steps "$GC_STEPS" --warmup 1 --no-flops \
  --set model.cache_latents=true

if [ -n "${DIFFUSERS_SCRIPT:-}" ]; then
  KEEP="^(The floor|sd15 stack|tiny stack)" row \
    "Side by side with diffusers' train_text_to_image.py (data loading included)" 210 "$WORK/vs_diffusers.log" \
    python -m bench.vs_diffusers --diffusers-script "$DIFFUSERS_SCRIPT" --stack "$STACK" --resolution "$RES" \
      --batch "$BATCH" --precision bf16 --steps "$VS_STEPS" --skip "$VS_SKIP" --rounds 1 --workers "$WORKERS" \
      --num-images "$IMAGES" --memory-limit-gib "$MEM" --work "$WORK/vs" "${COMMON[@]}" --floor \
      --ours "ldm_cached=model.character_conditioning=false,model.cache_latents=true" \
      --ours "char_ldm_cached=model.cache_latents=true"
else
  { echo "## Side by side with diffusers: skipped (no DIFFUSERS_SCRIPT, no $WHEELS/train_text_to_image.py)"; echo; } >> "$TABLE"
fi

REAL=(python -m bench.real_step --steps "$REAL_STEPS" --warmup 1)
row "SEED-Story de-tokenizer step (SDXL UNet + ResamplerXL, Qwen ViT-G tokenizer, no frozen cache)" 100 \
  "$WORK/real-detokenizer.log" "${REAL[@]}" --label detokenizer "${DETOK[@]}" model.cache_frozen=false
row "SEED-Story story_sft step (Llama-2-7b, LoRA, Qwen ViT-G tokenizer)" 100 "$WORK/real-story_sft.log" \
  "${REAL[@]}" --label story_sft "${SFT[@]}"
row "StoryGPT-V align step (OPT-6.7b, CLIP ViT-L/14)" 100 "$WORK/real-align.log" \
  "${REAL[@]}" --label align "${ALIGN[@]}"

for kept in true false; do
  row "Char-LDM on fixed references (model.fixed_reference_prob=1), model.cache_references=$kept" 70 \
    "$WORK/step-references-$kept.log" "${STEP[@]}" --variant char_ldm --steps "$GC_STEPS" --warmup 1 --no-flops \
    --set model.cache_latents=true --set model.fixed_reference_prob=1.0 --set "model.cache_references=$kept"
done

# (5) Memory tiers (bench/memory_tiers.py; docs/own_story.md): each system drawing one story under
# --offload none / model / sequential, random weights (real size on a GPU), one row each.
if [ "$DRY" = 0 ]; then
  TIERS=(--size real --frames 4 --steps 20 --dtype fp16)
else
  TIERS=(--size tiny --sd-folder "$WORK/tiny/stable-diffusion-v1-5" --clip-folder "$WORK/tiny/clip" --frames 2
         --steps 2 --dtype fp32 --device cpu)
fi
for system in char_ldm stage2 seed_story; do
  for tier in none model sequential; do
    row "Drawing one story: $system, --offload $tier" 120 "$WORK/tiers-$system-$tier.log" \
      python -m bench.memory_tiers --system "$system" --tier "$tier" "${TIERS[@]}" \
      --tokenizer "$WORK/tiny/stable-diffusion-v1-5/tokenizer"
  done
done

stamp "done: $TABLE"
cat "$TABLE"
