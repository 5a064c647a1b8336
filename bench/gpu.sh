#!/usr/bin/env bash
# Every GPU row of bench/README.md in one go, about 8 minutes on one H200; writes one markdown file.
#
#   DIFFUSERS_SCRIPT=/path/to/train_text_to_image.py bash bench/gpu.sh
#   bash bench/gpu.sh --cpu-dry-run        # the same pieces at toy size on a CPU: checks the script, not the numbers
#
# Rows: (1) the SD 1.5 step (random weights, configs/bench/sd15.yaml) at 512 px, batch 8, bf16, ldm and
# char_ldm, then char_ldm with gradient checkpointing, with PyTorch's allocator capped at 22 GiB (a 24 GB
# card); (2) diffusers' train_text_to_image.py beside `python -m src.train` on the same random SD 1.5
# folder and toy frames at 512 px, batch 8, bf16, data loading included, under the same cap; (3) the memory
# tiers of drawing (bench/memory_tiers.py): StoryGPT-V with and without stage 2 and SEED-Story under each
# --offload tier, peak GPU memory and seconds per frame (about 10 more minutes).
# Needs: python3 >= 3.10 and the wheels of requirements.txt (CUDA torch) plus `datasets` for diffusers'
# script; set PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheelhouse on a machine without an index, or
# STORYVIZ_VENV to an environment that has them. DIFFUSERS_SCRIPT: diffusers' examples/text_to_image/
# train_text_to_image.py at the installed diffusers' tag (bench/README.md); without it row (2) is skipped
# and the table says so. Environment: WORK (default outputs/bench/gpu), TABLE (default $WORK/table.md),
# MEMORY_LIMIT_GIB (22).
source "$(dirname "$0")/../scripts/_env.sh"
DRY=0
if [ "${1:-}" = "--cpu-dry-run" ]; then DRY=1; shift; fi
if [ $# -gt 0 ]; then echo "usage: bash bench/gpu.sh [--cpu-dry-run]" >&2; exit 2; fi
WORK="${WORK:-outputs/bench/gpu}"
TABLE="${TABLE:-$WORK/table.md}"
MEM="${MEMORY_LIMIT_GIB:-22}"
mkdir -p "$WORK"

ensure_venv requirements.txt
if [ -n "${DIFFUSERS_SCRIPT:-}" ]; then
  if [ ! -f "$DIFFUSERS_SCRIPT" ]; then echo "error: DIFFUSERS_SCRIPT=$DIFFUSERS_SCRIPT: no such file" >&2; exit 2; fi
  python -c "import datasets" 2>/dev/null || python -m pip install -q "datasets>=2.19.1"
fi
if [ "$DRY" = 0 ]; then
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA device; use --cpu-dry-run')"
  ARCH=sd15 RES=512 BATCH=8 STEPS=10 WARMUP=3 GC_STEPS=5 VS_STEPS=40 VS_SKIP=10 WORKERS=4 IMAGES=320
else
  ARCH=tiny RES=64 BATCH=4 STEPS=2 WARMUP=1 GC_STEPS=2 VS_STEPS=6 VS_SKIP=2 WORKERS=0 IMAGES=32
fi
STACK="$ARCH"

started=$(date +%s)
stamp() { echo "[gpu.sh $(( $(date +%s) - started )) s] $*"; }

# Small toy data and tiny stack: the tokenizer (CLIP's vocabulary), frames, masks and references.
stamp "toy data and tiny stack in $WORK"
[ -f "$WORK/toy/meta.json" ] || python -m src.data.toy --out "$WORK/toy" --num-train 96 --num-val 8 --num-test 8 \
  --num-workers "$(( $(nproc) < 8 ? $(nproc) : 8 ))"
python -m src.tools.tiny.stack --out "$WORK/tiny" --data "$WORK/toy" --vae-steps 60 > "$WORK/tiny-stack.log"
COMMON=(--tiny-root "$WORK/tiny" --data "$WORK/toy")

{
  echo "# StoryViz GPU benchmarks ($(date -u +%F), $([ "$DRY" = 1 ] && echo 'CPU DRY RUN: not measurements' || echo 'GPU'))"
  echo
  python -c "from bench.common import machine; import diffusers; print(machine() + ', diffusers ' + diffusers.__version__)"
  echo
} > "$TABLE"

step_rows() {  # step_rows TITLE ARGS...: bench.char_ldm_step's table into $TABLE
  local title="$1"; shift
  local log="$WORK/step-$(echo "$title" | tr -c 'a-z0-9' '-').log"
  stamp "$title"
  if timeout 240 python -m bench.char_ldm_step --arch "$ARCH" --resolution "$RES" --batch "$BATCH" \
      --precision bf16 --memory-limit-gib "$MEM" "${COMMON[@]}" "$@" > "$log" 2>&1; then
    { echo "## $title"; echo; grep -E '^Char-LDM training step' "$log"; echo; grep -E '^\|' "$log"; echo
      grep -E '^(MFU peak|batch )' "$log"; echo; } >> "$TABLE"
  else
    { echo "## $title"; echo; echo "FAILED (exit $?): see $log"; tail -5 "$log"; echo; } >> "$TABLE"
  fi
}

step_rows "Training step, $ARCH at $RES px, batch $BATCH, bf16, allocator capped at $MEM GiB" \
  --variant both --steps "$STEPS" --warmup "$WARMUP"
step_rows "Char-LDM step with gradient checkpointing, same settings" \
  --variant char_ldm --gradient-checkpointing --steps "$GC_STEPS" --warmup 1 --no-flops

if [ -n "${DIFFUSERS_SCRIPT:-}" ]; then
  stamp "side by side with diffusers' script"
  { echo "## Side by side with diffusers' train_text_to_image.py (data loading included)"; echo; } >> "$TABLE"
  VS_LOG="$WORK/vs_diffusers.log"
  if ! timeout 330 python -m bench.vs_diffusers --diffusers-script "$DIFFUSERS_SCRIPT" --stack "$STACK" \
      --resolution "$RES" --batch "$BATCH" --precision bf16 --steps "$VS_STEPS" --skip "$VS_SKIP" --rounds 1 \
      --workers "$WORKERS" --num-images "$IMAGES" --memory-limit-gib "$MEM" --work "$WORK/vs" \
      "${COMMON[@]}" --table "$TABLE" > "$VS_LOG" 2>&1; then
    { echo "FAILED: see $VS_LOG"; tail -5 "$VS_LOG"; echo; } >> "$TABLE"
  fi
else
  { echo "## Side by side with diffusers: skipped (DIFFUSERS_SCRIPT not set)"; echo; } >> "$TABLE"
fi
# (3) Memory tiers (bench/memory_tiers.py; docs/own_story.md "Will it fit my GPU?"): each system drawing one
# story under --offload none / model / sequential, fp16, random weights at real size; one process and one
# timeout per row, so a row that fails or runs out of time is marked and the others still run.
if [ "$DRY" = 0 ]; then
  TIER_ARGS=(--size real --frames 4 --steps 20 --dtype fp16) TIER_TIMEOUT=300
else
  TIER_ARGS=(--size tiny --sd-folder "$WORK/tiny/stable-diffusion-v1-5" --clip-folder "$WORK/tiny/clip" --frames 2
             --steps 2 --dtype fp32 --device cpu) TIER_TIMEOUT=240
fi
stamp "memory tiers"
{ echo "## Memory tiers: peak memory and seconds per frame, one story ($([ "$DRY" = 1 ] && echo 'tiny size' || echo 'real size, random weights'))"
  echo
  echo "| system | tier | size | dtype | frames | peak GiB | s/frame | params | hooked modules |"
  echo "|---|---|---|---|---|---|---|---|---|"; } >> "$TABLE"
for system in char_ldm stage2 seed_story; do
  for tier in none model sequential; do
    log="$WORK/tiers-$system-$tier.log"
    if timeout "$TIER_TIMEOUT" python -m bench.memory_tiers --system "$system" --tier "$tier" "${TIER_ARGS[@]}" \
        --tokenizer "$WORK/tiny/stable-diffusion-v1-5/tokenizer" > "$log" 2>&1; then
      grep -E '^\| ' "$log" | tail -1 >> "$TABLE"
    else
      echo "| $system | $tier | FAILED (exit $?): see $log | | | | | | |" >> "$TABLE"
    fi
  done
done
{ echo; echo "Weights each tier holds, from parameter counts (an estimate: activations come on top):"; echo
  timeout 300 python -m bench.memory_tiers --estimate --dtype fp16 2>/dev/null | grep -E '^(\||<!--)' \
    || echo "FAILED: python -m bench.memory_tiers --estimate"; echo; } >> "$TABLE"

stamp "done: $TABLE"
cat "$TABLE"
