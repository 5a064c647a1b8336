"""The studio (src/studio/, docs/studio.md) driven through its API with gradio_client, as the page drives it,
on the session's tiny runs: the app is launched in-process on a free 127.0.0.1 port. A 3-caption story
gives 3 frames that arrive one by one; a 3-beat SEED-Story gives the opening and 3 written beats, each
with its text; a bad upload, a missing run and an out-of-memory are messages and the next request draws;
the runs tab reads a run's summary and losses. Run discovery is checked on folders made here."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from src.studio.discovery import find_runs, reports_of
from tests.ports import free_port

STORY = "Ada walked on the beach.\nBob ran in the forest.\nAda met Bob in the city."
NO_CHARACTERS = ["", None] * 3


@pytest.fixture(scope="module")
def studio(stage1_run, tmp_path_factory):
    """(the Studio, a gradio Client) for an app serving the tiny Char-LDM run (the SEED-Story test adds the
    tiny SEED-Story runs' folder: the studio lists runs afresh on each request)."""
    from src.studio.app import build_app, launch
    from src.studio.drawing import PipelineCache, Studio

    studio = Studio(roots=[stage1_run.parent.parent.parent],
                    out=tmp_path_factory.mktemp("studio") / "stories", cache=PipelineCache("cpu"))
    app = build_app(studio)
    url = launch(app, studio, free_port(), block=False)
    assert url.startswith("http://127.0.0.1:")
    yield studio, Client(url, verbose=False)
    app.close()


def storygptv(client, run, story=STORY, characters=NO_CHARACTERS, steps=1):
    """A submitted StoryGPT-V draw (positional inputs, in the page's order)."""
    return client.submit(str(run), "", "Test story", story, steps, 3.0, 0, "none", "fp32", *characters,
                         api_name="/draw_storygptv")


def zed_image(path: Path) -> Path:
    from PIL import Image

    Image.new("RGBA", (40, 30), (30, 200, 60, 255)).save(path)
    return path


# ---- StoryGPT-V -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_3_caption_story_gives_3_frames_one_by_one_and_a_download(studio, stage1_run):
    _, client = studio
    job = storygptv(client, stage1_run)
    frames, status, files = job.result()
    assert [f["caption"].splitlines()[0] for f in frames] == [f"{k + 1}. {c}" for k, c in enumerate(STORY.splitlines())]
    assert [f["caption"].splitlines()[1] for f in frames] == ["fused: Ada", "fused: Bob", "fused: Ada, Bob"]
    assert all(Path(f["image"]).is_file() for f in frames)
    # the page saw the frames arrive one at a time: 0 (loading), 1, 2, 3 frames, then the final update
    assert [len(update[0] or []) for update in job.outputs()] == [0, 1, 2, 3, 3]
    assert status.startswith("**Done**: 3 frames with StoryGPT-V (Char-LDM), seed 0")
    assert sorted(Path(f).name for f in files) == ["story.json", "strip.png"]
    record = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())
    assert [f["fused"] for f in record["frames"]] == [["Ada"], ["Bob"], ["Ada", "Bob"]]
    assert record["settings"]["num_inference_steps"] == 1 and record["memory"]["offload"] == "none"
    folder = Path(record["story_file"]).parent
    assert (folder / "story.yaml").is_file() and (folder / "index.html").is_file()


@pytest.mark.slow
def test_a_bad_upload_is_a_message_and_the_next_request_draws(studio, stage1_run, tmp_path):
    _, client = studio
    bad = tmp_path / "zed.png"
    bad.write_bytes(b"this is no picture")
    story = "Zed walked on the beach.\nAda met Zed in the city."
    with pytest.raises(AppError, match=r"character 'Zed', its reference image: refs/Zed.png: cannot read image"):
        storygptv(client, stage1_run, story, ["Zed", handle_file(str(bad)), "", None, "", None]).result()
    with pytest.raises(AppError, match="Invalid file type"):  # gradio refuses a file that is no image type at all
        (tmp_path / "zed.txt").write_text("no")
        storygptv(client, stage1_run, story, ["Zed", handle_file(str(tmp_path / "zed.txt")), "", None, "", None]).result()
    good = zed_image(tmp_path / "good.png")
    frames, status, _ = storygptv(client, stage1_run, story, ["Zed", handle_file(str(good)), "", None, "", None]).result()
    assert [f["caption"].splitlines()[1] for f in frames] == ["fused: Zed", "fused: Ada, Zed"]
    assert status.startswith("**Done**: 2 frames")


@pytest.mark.slow
def test_a_missing_run_and_an_out_of_memory_are_messages_and_the_app_keeps_drawing(studio, stage1_run, monkeypatch):
    import torch

    import src.story

    studio_obj, client = studio
    with pytest.raises(AppError, match="no StoryGPT-V run chosen"):
        storygptv(client, "").result()
    with pytest.raises(AppError, match="^Run: .*no-such-run: neither a run folder nor a checkpoint"):
        storygptv(client, "outputs/no-such-run").result()
    with pytest.raises(AppError, match="the story's captions: no caption names a character"):
        storygptv(client, stage1_run, "It was a day.\nNothing happened.").result()

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    with monkeypatch.context() as patch:
        patch.setattr(src.story, "draw_storygptv", out_of_memory)
        with pytest.raises(AppError, match="out of memory while drawing: choose the memory tier 'model'"):
            storygptv(client, stage1_run).result()
    assert studio_obj.cache.pipe is None  # released: the next request builds it again
    frames, status, _ = storygptv(client, stage1_run).result()
    assert len(frames) == 3 and status.startswith("**Done**")


# ---- SEED-Story -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_3_beat_seed_story_gives_3_written_texts_and_frames_beat_by_beat(studio, seed_runs):
    studio_obj, client = studio
    studio_obj.roots.append(seed_runs["out"])
    opening_text, opening_image = client.predict(str(seed_runs["mllm"]), api_name="/seed_story_opening")
    assert opening_text and Path(opening_image["path"] if isinstance(opening_image, dict) else opening_image).is_file()
    opening = seed_runs["data"] / "images/test_00000_0.png"
    job = client.submit(str(seed_runs["mllm"]), "", "In town", "Bob was in the city.", handle_file(str(opening)), 3,
                        "multimodal_sink", 1, 5.0, 0, 0.0, "none", "fp32", api_name="/draw_seed_story")
    frames, text, status, files = job.result()
    record = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())
    written = [f["text"] for f in record["frames"][1:]]
    # greedy decoding of the fixture's MLLM goes on past the opening (tests/conftest.py); 3 beats, 3 frames
    assert record["settings"]["stats"]["stop"] == "beats" and len(written) == 3 and all(written)
    assert [f["caption"] for f in frames] == ["opening: Bob was in the city."] + [
        f"beat {k}: {t}" for k, t in enumerate(written, start=1)]
    assert text.count("**Beat ") == 3 and text.startswith("**Opening.** Bob was in the city.")
    assert [len(update[0] or []) for update in job.outputs()] == [0, 1, 2, 3, 4, 4]
    assert record["system"] == "SEED-Story (story mode)" and record["settings"]["context"] == "multimodal_sink"
    assert status.startswith("**Done**: the opening and 3 beats")


# ---- the runs tab and run discovery -------------------------------------------------------------------------
@pytest.mark.slow
def test_the_runs_tab_shows_a_runs_summary_and_losses(studio, stage1_run):
    _, client = studio
    summary, losses, samples, reports = client.predict(str(stage1_run), api_name="/show_run")
    assert "### char_ldm · toy/s1" in summary and "Char-LDM (StoryGPT-V stage 1) trained on toy for 2 steps" in summary
    assert Path(losses["path"] if isinstance(losses, dict) else losses).is_file()


def write_run(folder: Path, task: str, steps=(), converted=None, finished=False) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"task: {task}\nrun_name: {folder.name}\ndata: {{name: toy}}\n")
    for step in steps:
        ckpt = folder / "checkpoints" / f"step_{step:06d}"
        ckpt.mkdir(parents=True)
        for name in ("trainable.safetensors", "optimizer.pt", "scheduler.pt"):
            (ckpt / name).write_bytes(b"")
        state = {"step": step, **({"converted_from": converted} if converted else {})}
        (ckpt / "trainer_state.json").write_text(json.dumps(state))
    if finished:
        (folder / "summary.json").write_text("{}")
    return folder


def test_discovery_lists_trained_and_converted_runs_and_nothing_else(tmp_path):
    outputs, pretrained = tmp_path / "outputs", tmp_path / "pretrained"
    write_run(outputs / "char_ldm/toy/a", "char_ldm", steps=(100, 300), finished=True)
    write_run(outputs / "story_sft/toy_story/b", "story_sft", steps=(50,))
    write_run(pretrained / "storygptv_ldm", "char_ldm", steps=(0,), converted="/weights/pytorch_model.bin")
    write_run(outputs / "char_ldm/toy/empty", "char_ldm")  # no checkpoint yet: nothing to draw with
    (outputs / "studio/20260101_000000_00").mkdir(parents=True)  # a drawn story is no run
    (outputs / "studio/20260101_000000_00/story.yaml").write_text("frames: [a]\n")
    runs = {run.run_name: run for run in find_runs([outputs, pretrained, tmp_path / "missing"])}
    assert sorted(runs) == ["a", "b", "storygptv_ldm"]
    assert runs["a"].steps == 300 and runs["a"].label.startswith("char_ldm · toy/a · 300 steps (")
    assert runs["b"].label.startswith("story_sft · toy/b · 50 steps, training or stopped (")
    assert "converted release" in runs["storygptv_ldm"].label


def test_reports_are_found_in_the_run_and_where_an_evaluation_names_it(tmp_path):
    run = write_run(tmp_path / "outputs/char_ldm/toy/demo", "char_ldm", steps=(900,), finished=True)
    (run / "eval").mkdir()
    (run / "eval/report.html").write_text("<html></html>")
    demo = tmp_path / "outputs/demo"
    demo.mkdir()
    (demo / "report.html").write_text("<html></html>")
    (demo / "metrics.json").write_text(json.dumps({"training": [{"run": str(run), "step": 900}]}))
    other = tmp_path / "outputs/other"
    other.mkdir()
    (other / "report.html").write_text("<html></html>")
    (other / "metrics.json").write_text(json.dumps({"generation": {"checkpoint": "/elsewhere/step_1"}}))
    [info] = find_runs([tmp_path / "outputs"])
    assert reports_of(info, [tmp_path / "outputs"]) == [(run / "eval/report.html").resolve(), (demo / "report.html").resolve()]
