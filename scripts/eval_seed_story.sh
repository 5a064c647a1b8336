#!/usr/bin/env bash
# SEED-Story: write and draw the stories of a split from their openings, then score them under
# configs/eval/DATASET.yaml (eval/README.md, "Evaluating stories"). Normally called by the root eval.sh.
#   bash scripts/eval_seed_story.sh DATASET MLLM_RUN DETOKENIZER_RUN [protocol key=value ...]
# The two runs may come in either order (the story_sft run is the MLLM); the de-tokenizer is a
# `detokenizer` run or a stage-3 `story_adapt` run.
# Generation settings (mode, beats, context, decoding, seed, split, dataset) are the protocol's `story:`
# section and top-level keys, so the key=value overrides reach the generator and the scoring alike.
# Writes RUN/eval/{samples_test,metrics.json,report.html} for the first run named (EVAL_OUT=DIR moves
# them); GENERATE_ARGS="--opt value ..." adds src.generate_story options (e.g. --device cuda);
# EVAL_RUNS="RUN ..." names training run folders the report opens with (eval.run --run: what was trained,
# for how long, the loss curves), e.g. the three stages' runs in scripts/demo.sh seed-story.
source "$(dirname "$0")/_env.sh"
if [ $# -lt 3 ] || [[ "$3" == *=* ]]; then
  echo "usage: bash scripts/eval_seed_story.sh DATASET MLLM_RUN DETOKENIZER_RUN [protocol key=value ...]" >&2
  exit 2
fi
DATASET=$1 FIRST=${2%/} SECOND=${3%/}
shift 3
PROTOCOL=configs/eval/$DATASET.yaml
if [ ! -f "$PROTOCOL" ]; then
  echo "scripts/eval_seed_story.sh: no protocol $PROTOCOL (one of: $(ls configs/eval | grep -v base.yaml | tr '\n' ' '))" >&2
  exit 2
fi
for run in "$FIRST" "$SECOND"; do
  if [ ! -d "$run" ]; then
    echo "scripts/eval_seed_story.sh: run folder $run not found" >&2
    exit 2
  fi
done
MLLM=$FIRST DETOK=$SECOND
if [ "$(run_task "$SECOND")" = story_sft ]; then
  MLLM=$SECOND DETOK=$FIRST
fi
OUT=${EVAL_OUT:-$FIRST/eval}
ensure_venv requirements.txt
GEN_TEXT=$(python -m eval.protocol "$PROTOCOL" "$@" --generator-args)
mapfile -t GEN <<< "$GEN_TEXT"
SAMPLES=$OUT/samples
if [ -f "$SAMPLES/stories.jsonl" ]; then
  rm -r "$SAMPLES"  # a previous run's samples: regenerated from scratch
fi
mkdir -p "$OUT"
# shellcheck disable=SC2086
python -m src.generate_story --mllm "$MLLM" --detokenizer "$DETOK" --out "$SAMPLES" "${GEN[@]}" ${GENERATE_ARGS:-}
RUN_ARGS=()
for run in ${EVAL_RUNS:-}; do
  RUN_ARGS+=(--run "$run")
done
python -m eval.run --samples "$SAMPLES" --protocol "$PROTOCOL" --out "$OUT" "${RUN_ARGS[@]}" "$@"
