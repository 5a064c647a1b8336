#!/usr/bin/env bash
# Evaluate StoryGPT-V or SEED-Story on the test split under configs/eval/DATASET.yaml; the task in the
# first run's config.yaml says which. The root `bash eval.sh` is the same command.
#   bash eval.sh DATASET MLLM_RUN DETOKENIZER_RUN [protocol key=value ...]
#       SEED-Story (the first run is story_sft or story_adapt; the two runs in either order): the MLLM
#       writes the stories from the split's openings, the de-tokenizer draws them (scripts/eval_seed_story.sh,
#       settings in the protocol's `story:` section); FID / CLIP against the ground-truth frames of the
#       same beats, the toy metrics on toy_story, the judge when configured (eval/README.md, "Evaluating
#       stories"). Writes MLLM_RUN/eval/{samples,metrics.json,report.html} (EVAL_OUT=DIR moves them).
#   bash eval.sh DATASET STAGE1_CKPT [protocol key=value ...]
#       stage 1 (Char-LDM or the baseline LDM) on the original captions: scripts/eval_storygptv.sh
#       (CAPTIONS=captions_coref: on the co-reference captions, the "Char-LDM fed pronouns" row)
#   bash eval.sh DATASET STAGE1_CKPT STAGE2_CKPT [protocol key=value ...]
#       stage 2 on the co-reference captions: the LLM resolves the pronouns, Char-LDM draws (the seed's
#       eval_llm.sh). Writes STAGE2_CKPT/eval/{samples_<split>,metrics.json,report.html} (EVAL_OUT=DIR moves them;
#       GENERATE_ARGS="key=value ..." reach src.generate, as in scripts/eval_storygptv.sh).
# The report names the captions the frames were drawn from and scores the pronoun frames on their own.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash eval.sh DATASET STAGE1_CKPT [STAGE2_CKPT] [protocol key=value ...]  (StoryGPT-V), or" >&2
  echo "       bash eval.sh DATASET MLLM_RUN DETOKENIZER_RUN [protocol key=value ...]  (SEED-Story)" >&2
  exit 2
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/_env.sh"  # run_task; paths are relative to the repository root, as in every script
case "$(run_task "$2")" in
  story_sft|story_adapt) exec bash "$HERE/eval_seed_story.sh" "$@" ;;
esac
if [ $# -lt 3 ] || [[ "$3" == *=* ]]; then
  exec bash "$HERE/eval_storygptv.sh" "$@"
fi
DATASET=$1 STAGE1=${2%/} STAGE2=${3%/}
shift 3
if [ ! -d "$STAGE1" ]; then
  echo "eval.sh: checkpoint folder $STAGE1 not found" >&2
  exit 2
fi
# The stage-2 run names its stage-1 run in its config; STAGE1 replaces it (the target cache's checkpoint
# check refuses a stage-1 model the LLM was not aligned with). The caller's GENERATE_ARGS (e.g.
# sample.guidance_scale=3) are kept after it.
STAGE1_ABS="$(cd "$STAGE1" && pwd)"
CAPTIONS=captions_coref GENERATE_ARGS="model.stage1=$STAGE1_ABS ${GENERATE_ARGS:-}" \
  exec bash "$HERE/eval_storygptv.sh" "$DATASET" "$STAGE2" "$@"
