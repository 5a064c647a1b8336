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
DATASET=$1
STAGE1=${2%/}
STAGE2=${3%/}
shift 3
source "$HERE/scripts/_env.sh"
PROTOCOL=configs/eval/$DATASET.yaml
if [ ! -f "$PROTOCOL" ]; then
  echo "eval.sh: no protocol $PROTOCOL (one of: $(ls configs/eval | grep -v base.yaml | tr '\n' ' '))" >&2
  exit 2
fi
for ckpt in "$STAGE1" "$STAGE2"; do
  if [ ! -d "$ckpt" ]; then
    echo "eval.sh: checkpoint folder $ckpt not found" >&2
    exit 2
  fi
done
OUT=${EVAL_OUT:-$STAGE2/eval}
SAMPLES=$OUT/samples_test
if [ -f "$SAMPLES/stories.jsonl" ]; then
  rm -r "$SAMPLES"  # a previous run's samples: regenerated from scratch
fi
mkdir -p "$OUT"
ensure_venv requirements.txt
python -m src.generate --checkpoint "$STAGE2" --split test --out "$SAMPLES" --seed 0 \
  "model.stage1=$STAGE1" data.caption_field=captions_coref
python -m eval.run --samples "$SAMPLES" --protocol "$PROTOCOL" --out "$OUT" "$@"
