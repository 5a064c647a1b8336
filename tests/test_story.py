"""Your own story (src/story.py, scripts/story.sh, docs/own_story.md) on the session's tiny runs: a story
file drawn by StoryGPT-V's Char-LDM (with a character the run's dataset never had), by stage 2 and by
SEED-Story; the same story and seed give the same pixels through the dataset path and through story.sh;
each bad input is one line naming the file and key with exit status 2; a ViStoryBench fixture is read,
drawn, written in the scorer's layout and read back."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from src.errors import run_entry
from src.story import main

REPO = Path(__file__).resolve().parent.parent


def write_story(folder: Path, story: dict, name: str = "story.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(story, sort_keys=False))
    return path


def zed_image(path: Path) -> Path:
    """A character of the user's own: an RGBA picture of another size than the references (a green disc)."""
    size = 37
    y, x = np.mgrid[:size, :size]
    alpha = (((x - 18) ** 2 + (y - 18) ** 2) < 15 ** 2) * 255
    rgba = np.stack([np.full((size, size), 30), np.full((size, size), 200), np.full((size, size), 60), alpha], -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba.astype(np.uint8), "RGBA").save(path)
    return path


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ---- StoryGPT-V: Char-LDM alone ---------------------------------------------------------------------
def test_a_story_file_draws_with_char_ldm_and_fuses_a_character_the_dataset_never_had(stage1_run, tmp_path):
    zed_image(tmp_path / "refs/zed.png")
    story = write_story(tmp_path, {
        "title": "Ada meets Zed",
        "characters": {"Ada": None, "Zed": {"image": "refs/zed.png", "description": "a green disc"}},
        "frames": ["Ada and Zed walked on the beach.", "They played on the beach.", "Zed waved at night."]})
    out = tmp_path / "out"
    assert main([str(story), "--run", str(stage1_run), "--out", str(out), "--seed", "3"]) == 0

    record = json.loads((out / "story.json").read_text())
    assert [f["file"] for f in record["frames"]] == ["frame_00.png", "frame_01.png", "frame_02.png"]
    assert [f["fused"] for f in record["frames"]] == [["Ada", "Zed"], [], ["Zed"]]
    assert [f["named"] for f in record["frames"]] == [["Ada", "Zed"], [], ["Zed"]]
    assert {f["conditioning"] for f in record["frames"]} == {"char_ldm"}
    assert record["system"] == "StoryGPT-V (Char-LDM)" and record["seed"] == 3
    assert record["checkpoints"]["char_ldm"].endswith("s1/checkpoints/step_000002")
    assert record["provenance"]["char_ldm"]["weights_file"].endswith("ema.safetensors")
    assert record["story"]["characters"]["Zed"] == {"image": "../refs/zed.png", "description": "a green disc"}
    assert record["memory"]["offload"] == "none" and record["settings"]["num_inference_steps"] == 1
    frames = [Image.open(out / f["file"]) for f in record["frames"]]
    assert all(frame.size == (64, 64) for frame in frames)
    assert Image.open(out / "strip.png").size == (3 * 64 + 2 * 4, 64)
    page = (out / "index.html").read_text()
    assert "Ada and Zed walked on the beach." in page and "fused: Ada, Zed" in page and 'src="frame_02.png"' in page
    # an existing story is kept unless --overwrite
    assert run_entry(main, [str(story), "--run", str(stage1_run), "--out", str(out)]) == 2
    assert main([str(story), "--run", str(stage1_run), "--out", str(out), "--seed", "3", "--overwrite"]) == 0
    assert all(np.array_equal(pixels(out / f"frame_{k:02d}.png"), np.asarray(frames[k].convert("RGB")))
               for k in range(3))


def test_the_dataset_path_and_story_sh_draw_the_same_pixels(stage1_run, toy_root, tmp_path):
    """The first toy test story through `python -m src.generate --num-stories 1` and, as a story file
    holding its captions, through story.sh's entry: the same noise per frame, one batch, the same frames."""
    from src.data.stories import read_split
    from src.generate import main as generate

    story0 = read_split(toy_root, "test")[1][0]
    assert generate(["--checkpoint", str(stage1_run), "--split", "test", "--num-stories", "1",
                     "--out", str(tmp_path / "dataset")]) == 0
    names = list(dict.fromkeys(name for frame in story0.characters for name in frame))
    story = write_story(tmp_path, {"characters": {name: None for name in names}, "frames": story0.captions})
    assert main([str(story), "--run", str(stage1_run), "--out", str(tmp_path / "story")]) == 0  # what story.sh runs
    for k in range(story0.num_frames):
        assert np.array_equal(pixels(tmp_path / f"dataset/{story0.id}/{k}.png"),
                              pixels(tmp_path / f"story/frame_{k:02d}.png")), f"frame {k}"


# ---- bad input: one line naming the file and the key, exit 2 ------------------------------------------
BAD = {
    "a missing image": ({"characters": {"Zed": {"image": "nope.png"}}, "frames": ["Zed ran."]},
                        "key 'characters.Zed.image': nope.png: no such file"),
    "a caption naming no known character": ({"characters": {"Ada": None}, "frames": ["Somebody walked away."]},
                                            "key 'frames': no caption names a character"),
    "an empty story": (None, "empty story file"),
    "an unknown key": ({"frames": ["Ada ran."], "colour": "red"}, "key 'colour': unknown key"),
    "a character the dataset does not know, without an image": (
        {"characters": {"Zed": None}, "frames": ["Zed ran."]},
        "key 'characters.Zed.image': omitted, and the run's dataset"),
    "a SEED-Story story given to StoryGPT-V": (
        {"opening": {"text": "Ada was here.", "image": "ada.png"}, "beats": 2}, "key 'frames': missing"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_story_is_one_line_naming_the_file_and_key(case, stage1_run, toy_root, tmp_path, capsys):
    content, expected = BAD[case]
    Image.open(toy_root / "chars/Ada.png").save(tmp_path / "ada.png")
    story = tmp_path / "story.yaml"
    story.write_text("" if content is None else yaml.safe_dump(content))
    assert run_entry(main, [str(story), "--run", str(stage1_run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {story}") and expected in err[0], err
    assert not (tmp_path / "out").exists()


def test_story_sh_reports_a_bad_story_in_one_line(stage1_run, tmp_path):
    story = write_story(tmp_path, {"frames": ["Ada ran."], "colour": "red"})
    proc = subprocess.run(["bash", "scripts/story.sh", str(story), "--run", str(stage1_run), "--out",
                           str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == (f"error: {story}: key 'colour': unknown key (known: title, "
                                                            "characters, frames, opening, beats)  (--debug shows the traceback)")


def test_runs_and_flags_that_do_not_fit_together_are_one_line_errors(stage1_run, seed_runs, tmp_path, capsys):
    story = write_story(tmp_path, {"frames": ["Ada ran."]})
    cases = [(["--run", str(seed_runs["detok"])], "--run: ", "key 'task' is 'detokenizer'"),
             (["--run", str(stage1_run), "--detokenizer", str(seed_runs["detok"])], "--detokenizer: a SEED-Story flag", ""),
             (["--run", str(seed_runs["mllm"]), "--stage2", str(stage1_run)], "--stage2: a StoryGPT-V flag", ""),
             (["--run", str(seed_runs["mllm"])], f"error: {story}: key 'opening': missing", "")]
    for flags, first, second in cases:
        assert run_entry(main, [str(story), *flags, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and first in err[0] and second in err[0], err


# ---- SEED-Story ----------------------------------------------------------------------------------------
def test_a_story_file_draws_with_seed_story_beat_by_beat(seed_runs, tmp_path):
    opening = seed_runs["data"] / "images/test_00000_0.png"
    story = write_story(tmp_path, {"title": "In town", "characters": {"Bob": None},
                                   "opening": {"text": "Bob was in the city.", "image": str(opening)}, "beats": 2})
    out = tmp_path / "out"
    assert main([str(story), "--run", str(seed_runs["mllm"]), "--out", str(out), "--steps", "1",
                 "--temperature", "0", "--max-text-tokens", "6"]) == 0
    record = json.loads((out / "story.json").read_text())
    assert record["system"] == "SEED-Story (story mode)" and record["settings"]["num_inference_steps"] == 1
    assert record["frames"][0] == {"text": "Bob was in the city.", "source": "opening", "named": ["Bob"], "index": 0,
                                   "file": "frame_00.png"}
    assert 1 <= len(record["frames"]) <= 3 and all(f["source"] == "written" for f in record["frames"][1:])
    assert "detokenizer/toy/gen/checkpoints/step_000002/" in record["checkpoints"]["detokenizer"]
    assert record["settings"]["stats"]["beats"] == len(record["frames"])
    assert all((out / f["file"]).is_file() for f in record["frames"]) and (out / "strip.png").is_file()

    vis = write_story(tmp_path, {"opening": {"text": "Bob was in the city.", "image": str(opening)},
                                 "frames": ["Bob walked in the city.", "Cleo met Bob in the city."]}, "vis.yaml")
    assert main([str(vis), "--run", str(seed_runs["mllm"]), "--detokenizer", str(seed_runs["detok"]),
                 "--out", str(tmp_path / "vis"), "--steps", "1"]) == 0
    record = json.loads((tmp_path / "vis/story.json").read_text())
    assert record["system"] == "SEED-Story (vis mode)"
    assert [f["text"] for f in record["frames"]] == ["Bob was in the city.", "Bob walked in the city.",
                                                    "Cleo met Bob in the city."]


# ---- StoryGPT-V stage 2 -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def align_run(stage1_run, tiny_root, toy_root, tmp_path_factory) -> Path:
    """A 2-step align run on the tiny OPT (as tests/test_align.py trains them)."""
    from src.tools.align_targets import build_target_cache
    from src.tools.tiny.llm import ensure_tiny_llm
    from src.train import main as train

    ensure_tiny_llm(tiny_root / "opt-6.7b", toy_root, "opt", steps=150)
    build_target_cache(stage1_run, shard_size=16, log=lambda *a: None)
    out = tmp_path_factory.mktemp("align")
    assert train(["--config", "configs/align/toy.yaml", f"data.root={toy_root}", f"tiny_stack={tiny_root}",
                  f"model.llm={tiny_root}/opt-6.7b", f"model.vision_encoder={tiny_root}/clip",
                  f"model.stage1={stage1_run}", f"output_root={out}", "logging.tensorboard=false", "run_name=a",
                  "train.batch_size=4", "train.max_steps=2", "train.checkpoint_every=2", "train.validate_every=0",
                  "sample.num_stories=1", "sample.num_inference_steps=1", "model.val_stories=4"]) == 0
    return out / "align/toy/a"


@pytest.mark.slow
def test_stage2_draws_a_story_file_and_says_whom_each_pronoun_came_nearest(stage1_run, align_run, tmp_path):
    story = write_story(tmp_path, {"characters": {"Ada": None, "Bob": None},
                                   "frames": ["Ada and Bob walked on the beach.", "They played on the beach.",
                                              "Bob waited in the city.", "He looked around at night."]})
    assert main([str(story), "--run", str(align_run), "--out", str(tmp_path / "a")]) == 0
    record = json.loads((tmp_path / "a/story.json").read_text())
    assert record["system"] == "StoryGPT-V (Char-LDM + stage 2)"
    assert [f["conditioning"] for f in record["frames"]] == ["char_ldm", "stage2", "stage2", "stage2"]
    assert [f["pronoun_frame"] for f in record["frames"]] == [False, True, False, True]
    they, he = record["frames"][1]["stage2_resolved"], record["frames"][3]["stage2_resolved"]
    assert [c["characters"] for c in they["candidates"]].count(["Ada", "Bob"]) == 1 and len(they["candidates"]) == 3
    assert he["nearest"] in ("Ada", "Bob", "Ada and Bob") and he["margin"] >= 0
    assert "stage 2 nearest to:" in (tmp_path / "a/index.html").read_text()
    assert record["checkpoints"]["stage2"].endswith("a/checkpoints/step_000002")
    # the same with --run the Char-LDM and --stage2 the align run: the same frames
    assert main([str(story), "--run", str(stage1_run), "--stage2", str(align_run), "--out", str(tmp_path / "b")]) == 0
    for k in range(4):
        assert np.array_equal(pixels(tmp_path / f"a/frame_{k:02d}.png"), pixels(tmp_path / f"b/frame_{k:02d}.png"))
    # a pronoun with nobody named before it is an error naming the key
    bad = write_story(tmp_path, {"characters": {"Ada": None}, "frames": ["He walked.", "Ada ran."]}, "bad.yaml")
    assert run_entry(main, [str(bad), "--run", str(align_run), "--out", str(tmp_path / "c")]) == 2


def test_the_pronoun_diagnostic_finds_the_candidate_whose_conditioning_it_was_given(stage1_run):
    """Fed Char-LDM's own fused conditioning of "Bob looked around", the diagnostic of "He looked around"
    names Bob at distance 0, ahead of the other candidates by a positive margin."""
    import torch

    from src.pipelines.storygptv import StoryGPTVPipeline

    pipe = StoryGPTVPipeline.from_run(stage1_run, device="cpu")
    refs = pipe.reference_embeddings()
    target = pipe.condition(["Bob looked around."], refs)[1][0]
    out = pipe.resolve_pronouns("He looked around.", target, [["Ada", "Bob"], ["Cleo"]], refs)
    assert out["nearest"] == "Bob" and out["candidates"][0]["distance"] <= 1e-6 and out["margin"] > 0
    assert [c["characters"] for c in out["candidates"]][1:] != [] and len(out["candidates"]) == 4  # Ada, Bob, Cleo, Ada+Bob
    assert out["candidates"][0]["caption"] == "Bob looked around."
    none = pipe.resolve_pronouns("He looked around.", target, [[]], refs)
    assert none["nearest"] is None and none["note"] == "no character named in an earlier caption"
    assert torch.equal(target, pipe.condition(["Bob looked around."], refs)[1][0])


# ---- ViStoryBench in and out -------------------------------------------------------------------------------
def vistorybench_fixture(root: Path) -> Path:
    """One story in the benchmark's layout: two characters with reference images, three shots."""
    def texts(en):
        return {"en": en, "ch": en}

    def shot(index, script, keys):
        return {"index": index, "Setting Description": texts("A beach."), "Plot Correspondence": texts("Plot."),
                "Static Shot Description": texts(script), "Shot Perspective Design": texts("Wide shot."),
                "Characters Appearing": {"en": keys, "ch": keys}}
    story = {"Story_type": texts("Film"),
             "Characters": {name: {"name_en": name, "name_ch": name, "prompt_en": f"{name}, a shape", "prompt_ch": name,
                                   "tag": "non_human", "num_of_appearances": 2} for name in ("Jack", "Rose")},
             "Shots": [shot(1, "Jack runs.", ["Jack"]), shot(2, "Rose waves at him.", ["Jack", "Rose"]),
                       shot(3, "An empty beach.", [])]}
    folder = root / "07"
    folder.mkdir(parents=True)
    (folder / "story.json").write_text(json.dumps(story))
    for name, colour in (("Jack", (20, 40, 200)), ("Rose", (230, 40, 40))):
        (folder / "image" / name).mkdir(parents=True)
        Image.new("RGB", (48, 40), colour).save(folder / "image" / name / "00.png")
    return root


def test_a_vistorybench_story_is_read_drawn_written_in_its_layout_and_read_back(stage1_run, tmp_path):
    from src.data.vistorybench import read_vistorybench, read_vistorybench_outputs
    from src.pipelines.storygptv import StoryGPTVPipeline

    root = vistorybench_fixture(tmp_path / "ViStory")
    outputs = tmp_path / "outputs"
    assert main(["--vistorybench", str(root), "--method", "storyviz_toy", "--run", str(stage1_run), "--out",
                 str(outputs), "--timestamp", "20260101_120000"]) == 0
    bench = read_vistorybench_outputs(outputs, "storyviz_toy")
    assert bench.timestamp == "20260101_120000" and list(bench.shots) == ["07"] and list(bench.shots["07"]) == [1, 2, 3]
    record = json.loads((outputs / "storyviz_toy/base/en/20260101_120000/storyviz.json").read_text())
    assert [f["fused"] for f in record["stories"][0]["frames"]] == [["Jack"], ["Jack", "Rose"], []]
    # the shots are what the pipeline draws for that story, through the Python API
    request = read_vistorybench(root)[0]
    pipe = StoryGPTVPipeline.from_run(stage1_run, device="cpu")
    frames = pipe(request.frames, {n: c.image for n, c in request.characters.items()}, seed=record["seed"])
    for shot, frame in zip(bench.shots["07"].values(), frames):
        assert np.array_equal(pixels(shot), np.asarray(frame.image.convert("RGB")))
