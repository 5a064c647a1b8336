#!/usr/bin/env bash
# The toy demo, from nothing to a report:
#   1. the virtual environment (.venv, re-installed only when requirements.txt changes),
#   2. the toy dataset (data/toy) and the tiny pretrained stack (pretrained/tiny) if missing,
#   3. stage-1 Char-LDM training with the toy recipe (configs/ldm/toy.yaml; resumed if interrupted),
#      shortened to 850 steps (~10 min) so that the whole demo fits in 20 minutes on 2 CPU cores
#      (the recipe's full 1200 steps / 14 minutes: bash scripts/train_ldm.sh toy),
#   4. the test split's stories drawn with it, 5. the toy metrics and outputs/demo/report.html.
# Extra key=value arguments go to the training config (e.g. train.max_minutes=5).
source "$(dirname "$0")/_env.sh"
ensure_venv requirements.txt
run=outputs/ldm/toy/demo
resume=()
if ls -d "$run"/checkpoints/step_* >/dev/null 2>&1; then
  echo "continuing the earlier demo run in $run"
  resume=(train.resume=latest)
fi
python -m src.train --config configs/ldm/toy.yaml run_name=demo train.max_steps=850 train.max_minutes=11 \
  "${resume[@]}" "$@"
python -m src.generate --checkpoint "$run" --split test --out outputs/demo/samples
python -m eval.run --samples outputs/demo/samples --protocol configs/eval/toy.yaml --out outputs/demo
echo
echo "report: $ROOT/outputs/demo/report.html"
