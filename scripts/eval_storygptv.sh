#!/usr/bin/env bash
# Generate a split of DATASET with a checkpoint (the protocol's `split`, test unless split=val is given),
# then score it under configs/eval/DATASET.yaml.
#   bash scripts/eval_storygptv.sh DATASET CKPT [protocol key=value ...]   (normally through bash eval.sh)
# CKPT: a run folder (its latest checkpoint) or outputs/<stage>/<dataset>/<run>/checkpoints/step_NNNNNN.
# Writes CKPT/eval/samples_<split>/ (the samples), CKPT/eval/metrics.json and CKPT/eval/report.html;
# EVAL_OUT=DIR writes them under DIR instead; CAPTIONS=captions_coref draws from the co-reference captions;
# GENERATE_ARGS="key=value ..." are passed to src.generate.
# Seed 0 throughout: a second run gives the same numbers.
source "$(dirname "$0")/_env.sh"
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/eval_storygptv.sh DATASET CKPT [protocol key=value ...]" >&2
  exit 2
fi
DATASET=$1
CKPT=${2%/}
shift 2
PROTOCOL=configs/eval/$DATASET.yaml
if [ ! -f "$PROTOCOL" ]; then
  echo "scripts/eval_storygptv.sh: no protocol $PROTOCOL (one of: $(ls configs/eval | grep -v base.yaml | tr '\n' ' '))" >&2
  exit 2
fi
if [ ! -d "$CKPT" ]; then
  echo "scripts/eval_storygptv.sh: checkpoint folder $CKPT not found" >&2
  exit 2
fi
OUT=${EVAL_OUT:-$CKPT/eval}
ensure_venv requirements.txt
SPLIT=$(python -m eval.protocol "$PROTOCOL" "$@" --get split)  # the protocol checked before any drawing
SAMPLES=$OUT/samples_$SPLIT
if [ -f "$SAMPLES/stories.jsonl" ]; then
  rm -r "$SAMPLES"  # a previous run's samples: regenerated from scratch
fi
mkdir -p "$OUT"
# shellcheck disable=SC2086
python -m src.generate --checkpoint "$CKPT" --split "$SPLIT" --out "$SAMPLES" --seed 0 \
  ${CAPTIONS:+data.caption_field=$CAPTIONS} ${GENERATE_ARGS:-}
python -m eval.run --samples "$SAMPLES" --protocol "$PROTOCOL" --out "$OUT" "$@"
