#!/usr/bin/env bash
# The SEED-Story toy demo, from nothing to a report: bash scripts/demo.sh seed-story [key=value ...]
#   0. the virtual environment (.venv, as the StoryGPT-V demo); the toy data (data/toy, data/toy_story)
#      and the tiny stack (pretrained/tiny: the SD VAE, the SDXL-layout UNet, the tiny Qwen-ViT visual
#      tokenizer, the tiny Llama) are built by the stages that first need them,
#   1. stage 1, the de-tokenizer (configs/detokenizer/toy.yaml)  -> outputs/detokenizer/toy/demo
#   2. stage 2, the MLLM's SFT (configs/story_sft/toy.yaml)            -> outputs/story_sft/toy_story/demo
#   3. stage 3, the de-tokenizer adapted to it (configs/story_adapt/toy.yaml)
#                                                                      -> outputs/story_adapt/toy_story/demo
#   4. the MLLM writes 8 val stories from their openings, the adapted de-tokenizer draws them, and
#      bash eval.sh toy_story scores them under configs/eval/toy_story.yaml with split=val (the demo never
#      scores the test split) -> outputs/demo_seed_story/report.html, which opens with the three runs.
# Stages 2 and 3 run their recipe's own step count (600 / 300); stage 1 runs 2400 of its recipe's 3600 steps
# (all 3600 take about 11 minutes alone: the demo keeps its time, its de-tokenizer draws less sharply; 2400
# steps at this recipe's lr scored val Char-Acc 53.0 against 67.5 for 3600). Each
# stage has a time guard (train.max_minutes 8.5 / 3.5 / 4.5: a slower machine stops a stage early, its
# cosine schedule unfinished). A stage whose run
# finished (summary.json) is kept; one that was interrupted continues from its latest checkpoint.
# Extra key=value arguments go to all three trainings (e.g. train.max_steps=50); EVAL_ARGS="key=value ..."
# adds protocol overrides to the evaluation (e.g. EVAL_ARGS="story.num_stories=2").
#
# Time, install excluded: bench/README.md ("Wall-clock times of the toy recipes and demos") gives the
# measured minutes per stage. The guards
# (16.5 min of training at most) keep the worst case near 20 minutes.
source "$(dirname "$0")/_env.sh"
for arg in "$@"; do
  case "$arg" in
    run_name=*|output_root=*)
      echo "scripts/demo.sh seed-story: $arg: the demo's runs are outputs/<stage>/<dataset>/demo; run the stage scripts to train elsewhere" >&2
      exit 2 ;;
    *=*) ;;
    *) echo "usage: bash scripts/demo.sh seed-story [key=value ...]  ('$arg' is not key=value)" >&2; exit 2 ;;
  esac
done
ensure_venv requirements.txt
export HF_HUB_DISABLE_PROGRESS_BARS=1  # transformers' "Loading weights" bars: one bar per stage is the engine's
DETOK=outputs/detokenizer/toy/demo
SFT=outputs/story_sft/toy_story/demo
ADAPT=outputs/story_adapt/toy_story/demo
OUT=outputs/demo_seed_story

# stage NUMBER TITLE RUN SCRIPT key=value...: train a stage unless its run finished; resume an interrupted one.
stage() {
  local number="$1" title="$2" run="$3" script="$4" started=$SECONDS resume=()
  shift 4
  echo
  echo "== [$number/4] $title -> $run"
  if [ -f "$run/summary.json" ]; then
    echo "already trained (delete $run to train it again)"
    return 0
  fi
  if ls -d "$run"/checkpoints/step_* >/dev/null 2>&1; then
    echo "continuing the interrupted run in $run"
    resume=(train.resume=latest)
  fi
  bash "scripts/$script" toy run_name=demo "$@" "${resume[@]}" "${EXTRA[@]}"
  echo "stage $number: $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s"
}

EXTRA=("$@")
stage 1 "stage 1: the de-tokenizer draws frames from the visual tokenizer's features" "$DETOK" \
  train_detokenizer.sh train.max_steps=2400 train.max_minutes=8.5
stage 2 "stage 2: the MLLM learns to write the stories and regress their frames' features" "$SFT" \
  train_story_sft.sh train.max_steps=600 train.max_minutes=3.5 "model.detokenizer_run=$DETOK"
stage 3 "stage 3: the de-tokenizer adapted to the MLLM's regressed features" "$ADAPT" \
  train_story_adapt.sh train.max_steps=300 train.max_minutes=4.5 "model.sft_run=$SFT"

echo
echo "== [4/4] val stories written from their openings, drawn and scored -> $OUT"
read -r -a eval_args <<< "${EVAL_ARGS:-}"  # split on spaces, no glob: metrics=[classifier] stays as it is
EVAL_OUT=$OUT EVAL_RUNS="$DETOK $SFT $ADAPT" bash eval.sh toy_story "$SFT" "$ADAPT" split=val story.num_stories=8 \
  "${eval_args[@]}"
echo
echo "demo finished in $(( SECONDS / 60 )) min $(( SECONDS % 60 )) s"
echo "report: $ROOT/$OUT/report.html"
