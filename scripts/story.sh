#!/usr/bin/env bash
# Draw a story of your own with a trained run (docs/own_story.md):
#   bash scripts/story.sh STORY.yaml --run RUN [--stage2 ALIGN_RUN | --detokenizer RUN] --out DIR [options]
#   bash scripts/story.sh --vistorybench ViStory --method NAME --run RUN --out OUTPUTS [--lite]
# RUN's task picks the system: char_ldm / align (StoryGPT-V), story_sft / story_adapt (SEED-Story).
# DIR gets frame_NN.png, strip.png, index.html and story.json. `--help` lists every option
# (memory: --offload none|model|sequential, --dtype, --llm-dtype, --vae-slicing, --vae-tiling).
source "$(dirname "$0")/_env.sh"
if [ $# -lt 1 ]; then
  echo "usage: bash scripts/story.sh STORY.yaml --run RUN --out DIR [options]  (--help for all of them)" >&2
  exit 2
fi
ensure_venv requirements.txt
exec python -m src.story "$@"
