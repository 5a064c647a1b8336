"""The studio: a local web page (Gradio) to draw stories with trained runs (docs/studio.md).

  bash scripts/studio.sh [--port P]        ->  python -m src.studio --port P

  app.py             the page: three tabs, their wiring, serving on 127.0.0.1
  discovery.py       which runs exist (every run folder under outputs/ and pretrained/)
  drawing.py         the kept pipeline, frames streamed from a worker thread, story folders, error messages
  storygptv_tab.py   StoryGPT-V: a story of captions and characters -> frames, one by one
  seed_story_tab.py  SEED-Story: an opening -> written beats and their frames, beat by beat
  runs_tab.py        a run's summary, loss curves, samples and reports

The handlers draw through src/story.py's path (the one `bash scripts/story.sh` takes) and the pipelines
of src/pipelines/; nothing here trains or scores.
"""
