#!/usr/bin/env bash
# SEED-Story generation: a story_sft run writes stories, a detokenizer run (stage 1) or a story_adapt run
# (stage 3, the de-tokenizer adapted to that MLLM) draws their frames.
#   bash scripts/generate_story.sh MLLM_RUN DETOKENIZER_RUN SPLIT OUT_DIR [--mode story|vis] [--beats N]
#        [--context dense|window|sink|multimodal_sink] [--sink-images N|all] [--temperature T] [--top-p P] [--seed S] ...
# Every option: python -m src.generate_story --help (docs/seed_story_implementation.md, "Generation").
source "$(dirname "$0")/_env.sh"
if [ $# -lt 4 ]; then
  echo "usage: bash scripts/generate_story.sh MLLM_RUN DETOKENIZER_RUN SPLIT OUT_DIR [options]" >&2
  exit 2
fi
mllm="$1" detok="$2" split="$3" out="$4"; shift 4
ensure_venv requirements.txt
exec python -m src.generate_story --mllm "$mllm" --detokenizer "$detok" --split "$split" --out "$out" "$@"
