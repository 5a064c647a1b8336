"""The studio's page: three tabs laid out with Gradio Blocks, wired to their handlers (storygptv_tab.py,
seed_story_tab.py, runs_tab.py), and how it is served: on 127.0.0.1 only, no share link, no analytics,
one drawing at a time.

The run lists are read again on every page load (a run trained while the studio is open appears on
reload). The draw events are API endpoints (`/draw_storygptv`, `/draw_seed_story`) that gradio_client
drives as the page does (tests/test_studio.py).
"""
from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no telemetry, no version check

import gradio as gr  # noqa: E402

from src.models.story_cache import CONTEXT_MODES  # noqa: E402
from src.studio import runs_tab, seed_story_tab, storygptv_tab  # noqa: E402
from src.studio.drawing import OFFLOAD_TIERS, PRECISIONS, Studio  # noqa: E402

HOST = "127.0.0.1"
CSS = """
#sgv-frames img, #seed-frames img, .studio-refs img { image-rendering: pixelated; }
"""
INTRO = ("# StoryViz studio\nDraw a story with a trained run. Every run folder under the studio's folders is "
         "listed with its task and steps; the story you draw is saved with its record (docs/studio.md).")


def _dropdown(pairs, keep_none: bool = False):
    """A drop-down update: these choices, the first chosen (or nothing, for an optional one)."""
    options = ([("(none)", "")] if keep_none else []) + pairs
    return gr.Dropdown(choices=options, value="" if keep_none else (pairs[0][1] if pairs else None))


def memory_controls(prefix: str):
    with gr.Row():
        offload = gr.Dropdown(list(OFFLOAD_TIERS), value="none", label="Memory tier: offload", elem_id=f"{prefix}-offload",
                              info="model: one model group on the GPU at a time; sequential: layer by layer")
        precision = gr.Dropdown(list(PRECISIONS), value="fp32", label="Precision", elem_id=f"{prefix}-precision")
    return offload, precision


def storygptv_layout(studio: Studio):
    with gr.Row():
        with gr.Column(scale=2):
            run = gr.Dropdown(label="Run (char_ldm or align)", allow_custom_value=True, elem_id="sgv-run")
            stage2 = gr.Dropdown(label="Stage 2: an align run (optional)", allow_custom_value=True, elem_id="sgv-stage2")
            title = gr.Textbox("My story", label="Title", elem_id="sgv-title")
            story = gr.Textbox(storygptv_tab.EXAMPLE_STORY, lines=5, label="Story: one caption per line",
                               elem_id="sgv-story")
            with gr.Row():
                steps = gr.Slider(1, 100, value=15, step=1, label="Steps", elem_id="sgv-steps")
                guidance = gr.Slider(1, 15, value=3, step=0.5, label="CFG scale", elem_id="sgv-cfg")
                seed = gr.Number(0, precision=0, label="Seed", elem_id="sgv-seed", min_width=80)
            offload, precision = memory_controls("sgv")
            with gr.Row():
                draw = gr.Button("Draw", variant="primary", elem_id="sgv-draw")
                stop = gr.Button("Stop", elem_id="sgv-stop")
            with gr.Accordion("Characters", open=True):
                note = gr.Markdown()
                refs = gr.Gallery(label="The run's dataset characters (used when a caption names one)", columns=7,
                                  height=130, format="png", elem_classes=["studio-refs"], interactive=False,
                                  allow_preview=False, fit_columns=False)
                gr.Markdown("Your own characters (optional): a name the captions use and its reference image; a "
                            "dataset character given here takes your image instead.")
                slots = []
                for k in range(storygptv_tab.CHARACTER_SLOTS):
                    with gr.Row():
                        slots.append(gr.Textbox(label=f"Character {k + 1}", placeholder="name", scale=1,
                                                elem_id=f"sgv-name-{k}"))
                        slots.append(gr.File(label="reference image", file_types=["image"], scale=2, height=120,
                                             elem_id=f"sgv-image-{k}"))
        with gr.Column(scale=3):
            status = gr.Markdown(elem_id="sgv-status")
            frames = gr.Gallery(label="Frames", columns=3, format="png", object_fit="contain", height="auto",
                                fit_columns=False, elem_id="sgv-frames")
            files = gr.File(label="Download: strip.png and story.json", file_count="multiple", elem_id="sgv-files")

    def draw_story(*values):
        yield from storygptv_tab.draw(studio, *values)

    run.change(lambda value: storygptv_tab.run_defaults(studio, value), run,
               [steps, guidance, seed, refs, note], api_name="storygptv_defaults")
    event = draw.click(draw_story, [run, stage2, title, story, steps, guidance, seed, offload, precision, *slots],
                       [frames, status, files], api_name="draw_storygptv", concurrency_id="draw")
    stop.click(None, cancels=[event])
    return run, stage2


def seed_story_layout(studio: Studio):
    with gr.Row():
        with gr.Column(scale=2):
            run = gr.Dropdown(label="Run (story_sft or story_adapt)", allow_custom_value=True, elem_id="seed-run")
            detokenizer = gr.Dropdown(label="De-tokenizer: a detokenizer or story_adapt run (optional: the run's)",
                                      allow_custom_value=True, elem_id="seed-detok")
            title = gr.Textbox("My story", label="Title", elem_id="seed-title")
            opening_text = gr.Textbox(label="Opening text", lines=2, elem_id="seed-opening-text")
            opening_image = gr.Image(label="Opening image", type="filepath", sources=["upload"], height=160,
                                     elem_id="seed-opening-image")
            take = gr.Button("Take an opening from the run's dataset (its first val story)", elem_id="seed-take")
            with gr.Row():
                beats = gr.Slider(1, 30, value=6, step=1, label="Beats after the opening", elem_id="seed-beats")
                context = gr.Dropdown(list(CONTEXT_MODES), value="multimodal_sink", label="Context (KV cache)",
                                      elem_id="seed-context")
            with gr.Row():
                steps = gr.Slider(1, 100, value=25, step=1, label="Steps", elem_id="seed-steps")
                guidance = gr.Slider(1, 15, value=5, step=0.5, label="CFG scale", elem_id="seed-cfg")
            with gr.Row():
                seed = gr.Number(0, precision=0, label="Seed", elem_id="seed-seed")
                temperature = gr.Slider(0, 1.5, value=0.7, step=0.05, label="Temperature (0: greedy)",
                                        elem_id="seed-temperature")
            offload, precision = memory_controls("seed")
            with gr.Row():
                draw = gr.Button("Write and draw", variant="primary", elem_id="seed-draw")
                stop = gr.Button("Stop", elem_id="seed-stop")
        with gr.Column(scale=3):
            status = gr.Markdown(elem_id="seed-status")
            frames = gr.Gallery(label="Beats", columns=4, format="png", object_fit="contain", height="auto",
                                fit_columns=False, elem_id="seed-frames")
            text = gr.Markdown(elem_id="seed-text")
            files = gr.File(label="Download: strip.png and story.json", file_count="multiple", elem_id="seed-files")

    def draw_story(*values):
        yield from seed_story_tab.draw(studio, *values)

    run.change(lambda value: seed_story_tab.run_defaults(studio, value), run, [steps, guidance],
               api_name="seed_story_defaults")
    take.click(lambda value: seed_story_tab.dataset_opening(studio, value), run, [opening_text, opening_image],
               api_name="seed_story_opening")
    event = draw.click(draw_story, [run, detokenizer, title, opening_text, opening_image, beats, context, steps,
                                    guidance, seed, temperature, offload, precision],
                       [frames, text, status, files], api_name="draw_seed_story", concurrency_id="draw")
    stop.click(None, cancels=[event])
    return run, detokenizer


def runs_layout(studio: Studio):
    run = gr.Dropdown(label="Run", allow_custom_value=True, elem_id="runs-run")
    summary = gr.Markdown(elem_id="runs-summary")
    with gr.Row():
        losses = gr.Image(label="Training losses (metrics.jsonl)", type="pil", format="png", interactive=False,
                          elem_id="runs-losses")
        samples = gr.Image(label="Latest periodic samples (samples/step_N/grid.png)", type="filepath",
                           interactive=False, elem_id="runs-samples")
    report = gr.Dropdown(label="Evaluation report", allow_custom_value=True, elem_id="runs-report")
    page = gr.HTML(elem_id="runs-report-page")
    report_file = gr.File(label="Download the report", elem_id="runs-report-file")

    def show(value):
        text, chart, grid, reports, first = runs_tab.show_run(studio, value)
        return text, chart, grid, gr.Dropdown(choices=reports, value=first)

    run.change(show, run, [summary, losses, samples, report], api_name="show_run")
    report.change(runs_tab.show_report, report, [page, report_file], api_name="show_report")
    return run


def build_app(studio: Studio) -> gr.Blocks:
    with gr.Blocks(title="StoryViz studio", analytics_enabled=False) as app:
        gr.Markdown(INTRO)
        with gr.Tab("StoryGPT-V", id="storygptv", elem_id="tab-storygptv"):
            sgv_run, sgv_stage2 = storygptv_layout(studio)
        with gr.Tab("SEED-Story", id="seed-story", elem_id="tab-seed-story"):
            seed_run, seed_detok = seed_story_layout(studio)
        with gr.Tab("Runs", id="runs", elem_id="tab-runs"):
            runs_run = runs_layout(studio)

        def refresh():
            sgv, align = storygptv_tab.run_choices(studio)
            seed, detok = seed_story_tab.run_choices(studio)
            return (_dropdown(sgv), _dropdown(align, keep_none=True), _dropdown(seed), _dropdown(detok, keep_none=True),
                    _dropdown(runs_tab.run_choices(studio)))
        app.load(refresh, None, [sgv_run, sgv_stage2, seed_run, seed_detok, runs_run], api_name="list_runs")
    return app


def launch(app: gr.Blocks, studio: Studio, port: int, block: bool = True):
    """Serve the page on 127.0.0.1:`port` (0: a free port). Returns the local URL."""
    app.queue(default_concurrency_limit=1)
    _, url, _ = app.launch(server_name=HOST, server_port=port or None, share=False, ssr_mode=False, show_error=True,
                           prevent_thread_lock=not block, allowed_paths=[str(studio.out.resolve())], css=CSS,
                           quiet=not block, footer_links=["api", "settings"])
    return url
