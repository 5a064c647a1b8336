#!/usr/bin/env bash
# The toy demos, from nothing to a report:
#   bash scripts/demo.sh [key=value ...]              StoryGPT-V (this file, below)
#   bash scripts/demo.sh seed-story [key=value ...]   SEED-Story's three stages (scripts/demo_seed_story.sh)
# The StoryGPT-V demo (meant to fit in 15 minutes on 2 CPU cores; measured: bench/README.md, "Wall-clock
# times of the toy recipes and demos"):
#   1. the virtual environment (.venv, re-installed only when requirements.txt changes),
#   2. the toy dataset (data/toy) and the tiny pretrained stack (pretrained/tiny) if missing,
#   3. stage-1 Char-LDM training with the toy recipe (configs/char_ldm/toy.yaml; resumed if interrupted),
#      shortened to 900 steps (the 9.5-minute guard stops it earlier on a slower machine); the recipe's
#      full 1400 steps are `bash scripts/train_char_ldm.sh toy`,
#   4. the test split's stories drawn with it, 5. the toy metrics and outputs/demo/report.html, which
#      opens with a summary, the training losses and Char-Acc/BG-Acc of the periodic val samples.
# Extra key=value arguments go to the training config (e.g. train.max_steps=300); EVAL_ARGS="key=value ..."
# adds protocol overrides to the evaluation (e.g. EVAL_ARGS="metrics=[classifier]").
if [ $# -gt 0 ] && [[ "$1" != *=* ]]; then
  case "$1" in
    seed-story) shift; exec bash "$(dirname "$0")/demo_seed_story.sh" "$@" ;;
    *) echo "usage: bash scripts/demo.sh [seed-story] [key=value ...]  (no demo name: the StoryGPT-V demo; '$1' is not a demo)" >&2
       exit 2 ;;
  esac
fi
source "$(dirname "$0")/_env.sh"
ensure_venv requirements.txt
run=outputs/char_ldm/toy/demo
resume=()
if ls -d "$run"/checkpoints/step_* >/dev/null 2>&1; then
  echo "continuing the earlier demo run in $run"
  resume=(train.resume=latest)
fi
python -m src.train --config configs/char_ldm/toy.yaml run_name=demo train.max_steps=900 train.max_minutes=9.5 \
  "${resume[@]}" "$@"
python -m src.generate --checkpoint "$run" --split test --out outputs/demo/samples
read -r -a eval_args <<< "${EVAL_ARGS:-}"  # split on spaces, no glob: metrics=[classifier] stays as it is
python -m eval.run --samples outputs/demo/samples --protocol configs/eval/toy.yaml --out outputs/demo --run "$run" \
  "${eval_args[@]}"
echo
echo "demo finished in $(( SECONDS / 60 )) min $(( SECONDS % 60 )) s"
echo "report: $ROOT/outputs/demo/report.html"
