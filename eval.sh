#!/usr/bin/env bash
# Evaluate StoryGPT-V on the test split under configs/eval/DATASET.yaml.
#   bash eval.sh DATASET STAGE1_CKPT [protocol key=value ...]
#       stage 1 (Char-LDM or the baseline LDM) on the original captions: scripts/eval.sh
#       (CAPTIONS=captions_coref: on the co-reference captions, the "Char-LDM fed pronouns" row)
#   bash eval.sh DATASET STAGE1_CKPT STAGE2_CKPT [protocol key=value ...]
#       stage 2 on the co-reference captions: the LLM resolves the pronouns, Char-LDM draws (the seed's
#       eval_llm.sh). Writes STAGE2_CKPT/eval/{samples_test,metrics.json,report.html} (EVAL_OUT=DIR moves them).
# The report names the captions the frames were drawn from and scores the pronoun frames on their own.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash eval.sh DATASET STAGE1_CKPT [STAGE2_CKPT] [protocol key=value ...]" >&2
  exit 2
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -lt 3 ] || [[ "$3" == *=* ]]; then
  exec bash "$HERE/scripts/eval.sh" "$@"
fi
DATASET=$1 STAGE1=${2%/} STAGE2=${3%/}
shift 3
if [ ! -d "$STAGE1" ]; then
  echo "eval.sh: checkpoint folder $STAGE1 not found" >&2
  exit 2
fi
# The stage-2 run names its stage-1 run in its config; STAGE1 replaces it (the target cache's checkpoint
# check refuses a stage-1 model the LLM was not aligned with).
STAGE1_ABS="$(cd "$STAGE1" && pwd)"
CAPTIONS=captions_coref GENERATE_ARGS="model.stage1=$STAGE1_ABS" exec bash "$HERE/scripts/eval.sh" "$DATASET" "$STAGE2" "$@"
