"""Evaluating SEED-Story's multimodal stories (eval/multimodal.py, eval/run.py, eval/report.py,
scripts/eval_seed_story.sh): `bash eval.sh toy_story MLLM_RUN DETOKENIZER_RUN` end to end on a tiny story_sft
run and a tiny detokenizer run (the real generator's output, scored beat by beat), the judge on those
samples against a stub server on 127.0.0.1 (both A/B orders against the ground truth), and the errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from eval import run as eval_run
from eval.judge import ASPECTS, _image_part
from eval.multimodal import pair_beats, text_labels
from eval.stories_io import load_frame
from tests.test_eval_judge import StubJudge

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def story_runs(seed_runs, tmp_path_factory):
    """test_story_generate's tiny story_sft run (30 steps on long toy stories: enough that greedy decoding
    goes on past the opening) and detokenizer run (2 steps), and a folder for this module's outputs."""
    return {**seed_runs, "tmp": tmp_path_factory.mktemp("story_eval")}


def protocol_overrides(story_runs, seed_stack):
    tmp = story_runs["tmp"]
    return [f"dataset={story_runs['data']}", f"classifier.dir={tmp}/classifier", "classifier.epochs=1",
            "classifier.batch_size=16", f"clip.model={seed_stack}/clip"]


@pytest.fixture(scope="module")
def evaluated(story_runs, seed_stack):
    """`bash eval.sh toy_story MLLM_RUN DETOKENIZER_RUN ...`: 2 test stories of up to 4 beats, scored."""
    out = story_runs["tmp"] / "eval"
    overrides = protocol_overrides(story_runs, seed_stack) + [
        "story.num_stories=2", "story.beats=4", "story.temperature=0", "story.max_text_tokens=10",
        "story.window_images=2", "story.context=multimodal_sink", "story.sink_images=0"]  # toy's default: window
    env = {**os.environ, "EVAL_OUT": str(out), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "eval.sh", "toy_story", str(story_runs["mllm"]), str(story_runs["detok"]),
                           *overrides], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_eval_sh_generates_and_scores_stories_beat_by_beat(evaluated, story_runs):
    samples = evaluated / "samples"
    generation = json.loads((samples / "generation.json").read_text())
    assert generation["task"] == "seed_story" and generation["mode"] == "story" and generation["context"] == "multimodal_sink"
    assert generation["mllm_checkpoint"].endswith("step_000030/trainable.safetensors")
    assert generation["dataset_root"] == str(story_runs["data"]) and generation["beats"] == 4
    assert generation["sink"]["window_images"] == 2 and generation["sink"]["sink_images"] == 0  # the protocol's story: keys
    results = json.loads((evaluated / "metrics.json").read_text())
    rows = results["metrics"]
    # what SEED-Story's Table 2 compares (generated frame vs the ground-truth frame of the same beat) and the toy metrics
    for name in ("Frechet distance (classifier features)", "CLIP I-I", "CLIP T-I", "Char-Acc (%)", "Char-F1 (%)",
                 "BG-Acc (%)", "BG-F1 (%)", "Char-Acc vs its text (%)", "BG-Acc vs its text (%)"):
        assert rows[name]["value"] is not None, name
    # a toy caption names exactly who is on screen and where: the labels read from the ground-truth text are
    # the frame labels, so real frames score the same against either
    from eval.classifier import frame_labels
    from eval.stories_io import read_meta, read_split
    meta = read_meta(story_runs["data"])
    for story in read_split(story_runs["data"], "test").values():
        assert text_labels(story["captions"], meta) == frame_labels(story, meta, "test.jsonl")
    for name in ("Char-Acc", "Char-F1", "BG-Acc", "BG-F1"):
        assert rows[f"{name} vs its text (%)"]["ceiling"] == rows[f"{name} (%)"]["ceiling"] is not None
    assert rows["Story generation"]["value"] == "story mode"
    per_story = results["per_story"]
    assert all("clip_t2i" in scores and "char_acc_vs_text" in scores for scores in per_story.values())
    # beat 0 (given) is never scored; a beat is scored where both the samples and the ground truth have it
    lines = [json.loads(line) for line in (samples / "stories.jsonl").read_text().splitlines()]
    beats = results["details"]["beats"]
    assert [b["generated_beats"] for b in beats] == [len(line["images"]) for line in lines]
    assert all(b["scored_beats"] == [1, min(b["generated_beats"], 10)] for b in beats)
    assert results["frames"] == sum(stop - start for start, stop in (b["scored_beats"] for b in beats))
    # the report: each beat's generated text beside its frame, the ground truth's beside it, metrics on top
    page = (evaluated / "report.html").read_text()
    truth = {json.loads(line)["id"]: json.loads(line) for line in (story_runs["data"] / "test.jsonl").read_text().splitlines()}
    assert page.index("table class='metrics'") < page.index("table class='beats'")
    for line in lines:
        for k, text in enumerate(line["captions"]):
            row = page[page.index(f"alt='{line['id']} beat {k}, generated'"):]
            row = row[:row.index("</tr>")]
            assert f"<td class='text'>{_escaped(text)}</td>" in row  # the generated text, beside its frame
            assert f"<td class='text'>{_escaped(truth[line['id']]['captions'][k])}</td>" in row  # ground truth
    assert page.count("<br>given</td>") == len(lines)


def _escaped(text):
    import html
    return html.escape(text)


def test_judge_scores_multimodal_stories_and_asks_both_orders_against_the_ground_truth(evaluated, story_runs,
                                                                                         seed_stack, tmp_path):
    samples, data = evaluated / "samples", story_runs["data"]
    truth = {json.loads(line)["id"]: json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()}
    truth_urls = {_image_part(load_frame(data, path))["image_url"]["url"] for story in truth.values()
                  for path in story["images"]}
    asked = []

    def answer(body, number):
        """Ground-truth stories score 9, generated ones 4; verdicts always prefer whoever is shown first."""
        parts = body["messages"][0]["content"]
        urls = [part["image_url"]["url"] for part in parts if part["type"] == "image_url"]
        texts = " ".join(part["text"] for part in parts if part["type"] == "text")
        if "Assistant A" in texts:
            asked.append("truth first" if urls[0] in truth_urls else "generated first")
            return "Story A reads better. [[A]]"
        return "[[9]]" if set(urls) <= truth_urls else "Fine. [[4]]"

    out = tmp_path / "judged"
    with StubJudge(answer) as stub:
        eval_run.main(["--samples", str(samples), "--protocol", "configs/eval/toy_story.yaml", "--out", str(out),
                       *protocol_overrides(story_runs, seed_stack), "metrics=[judge]", f"judge.url={stub.url}",
                       "judge.model=stub", "judge.api_key_env=null", "judge.retries=0", "judge.max_frames=3"])
    stories = len((samples / "stories.jsonl").read_text().splitlines())
    # per aspect and story: the generated story, its ground truth, then the pair in both orders
    assert len(stub.requests) == len(ASPECTS) * stories * 4
    assert asked.count("generated first") == asked.count("truth first") == len(ASPECTS) * stories
    results = json.loads((out / "metrics.json").read_text())
    rows = results["metrics"]
    for aspect in ASPECTS:
        assert rows[f"Judge {aspect} (1-10)"]["value"] == 4.0 and rows[f"Judge {aspect} (1-10)"]["ceiling"] == 9.0
        # a pure position bias cancels over the two orders: one win and one loss per story
        assert rows[f"Judge {aspect}: win / tie / loss vs ground truth"]["value"] == "50.0% / 0.0% / 50.0%"
        votes = results["details"]["judge"]["pairwise_vs_ground_truth"][aspect]
        assert votes["ours"] == votes["other"] == stories and votes["missing"] == 0
    story_id = next(iter(results["per_story"]))
    assert results["per_story"][story_id]["judge_style"] == 4.0
    assert results["per_story"][story_id]["judge_style (ground truth)"] == 9.0
    images = [p for p in stub.requests[0]["body"]["messages"][0]["content"] if p["type"] == "image_url"]
    assert 1 <= len(images) <= 3  # judge.max_frames beats of text and frames


def test_a_malformed_sample_line_is_a_one_line_error_naming_file_and_line(evaluated, story_runs, seed_stack,
                                                                          tmp_path, capsys):
    from src.errors import run_entry

    broken = tmp_path / "broken"
    shutil.copytree(evaluated / "samples", broken)
    lines = (broken / "stories.jsonl").read_text().splitlines()
    story = json.loads(lines[1])
    story["captions"] = story["captions"][:-1] + [7]  # a beat's text that is not a string
    lines[1] = json.dumps(story)
    (broken / "stories.jsonl").write_text("\n".join(lines) + "\n")
    status = run_entry(eval_run.main, ["--samples", str(broken), "--protocol", "configs/eval/toy_story.yaml",
                                       *protocol_overrides(story_runs, seed_stack)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1 and f"{broken}/stories.jsonl:2: field 'captions'" in errors[0], errors


def test_beats_are_paired_up_to_the_shorter_story_and_text_names_give_labels():
    samples = [{"id": "a", "images": [f"a/{k}.png" for k in range(4)], "captions": ["x"] * 4},
               {"id": "b", "images": ["b/0.png"], "captions": ["y"]}]  # b ended right after its opening
    truth = {"a": {"id": "a", "images": [f"t/{k}.png" for k in range(3)], "captions": ["t"] * 3,
                   "characters": [["Ada"], ["Bob"], []], "orders": [0, 1, 2], "source_id": "s"},
             "b": {"id": "b", "images": ["u/0.png", "u/1.png"], "captions": ["u", "v"], "characters": [[], []]}}
    pairs, counts = pair_beats(samples, truth, "test.jsonl", given_beats=1)
    assert [c["scored_beats"] for c in counts] == [[1, 3], [1, 1]]
    generated, real = pairs[0]
    assert generated["images"] == ["a/1.png", "a/2.png"] and real["images"] == ["t/1.png", "t/2.png"]
    assert real["characters"] == [["Bob"], []] and real["orders"] == [1, 2] and real["source_id"] == "s"
    assert pairs[1][0]["images"] == [] and pairs[1][1]["images"] == []
    with pytest.raises(ValueError, match="no beat to score"):
        pair_beats(samples[1:], truth, "test.jsonl", given_beats=1)
    with pytest.raises(ValueError, match="story id 'a' of the samples is not in test.jsonl"):
        pair_beats(samples, {"b": truth["b"]}, "test.jsonl", given_beats=1)
    meta = {"characters": [{"name": "Ada"}, {"name": "Bob"}, {"name": "Kit"}], "backgrounds": ["beach", "city"]}
    labels = text_labels(["Ada and bob went to the city.", "Kitten Ada on the beach in the city", "Nobody."], meta)
    assert labels == [([1.0, 1.0, 0.0], 1), ([1.0, 0.0, 0.0], None), ([0.0, 0.0, 0.0], None)]


def test_eval_sh_sends_a_story_run_to_the_story_path_and_checks_its_arguments(story_runs, tmp_path):
    env = {**os.environ, "EVAL_OUT": str(tmp_path / "never")}
    usage = subprocess.run(["bash", "eval.sh", "toy_story", str(story_runs["mllm"])], cwd=REPO, env=env,
                           capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: bash scripts/eval_seed_story.sh DATASET MLLM_RUN DETOKENIZER_RUN" in usage.stderr
    missing = subprocess.run(["bash", "eval.sh", "toy_story", str(story_runs["mllm"]), str(tmp_path / "nope")],
                             cwd=REPO, env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and f"run folder {tmp_path / 'nope'} not found" in missing.stderr
    protocol = subprocess.run(["bash", "eval.sh", "no_such", str(story_runs["mllm"]), str(story_runs["detok"])],
                              cwd=REPO, env=env, capture_output=True, text=True)
    assert protocol.returncode == 2 and "no protocol configs/eval/no_such.yaml" in protocol.stderr
    # a judge listed without an endpoint is named before any story is written
    judge = subprocess.run(["bash", "eval.sh", "toy_story", str(story_runs["mllm"]), str(story_runs["detok"]),
                            "metrics=[judge]"], cwd=REPO, env=env, capture_output=True, text=True)
    assert judge.returncode == 2 and "protocol key 'judge.url' is not set" in judge.stderr, judge.stderr
    assert not (tmp_path / "never").exists()


def test_story_sink_images_reaches_the_generator_and_a_bad_value_names_the_key():
    from eval.protocol import generator_args, load_protocol
    from eval.stories_io import EvalInputError

    args = generator_args(load_protocol("configs/eval/toy_story.yaml", []))
    assert args[args.index("--sink-images") + 1] == "1"  # the default, chosen on toy val
    args = generator_args(load_protocol("configs/eval/toy_story.yaml", ["story.sink_images=null"]))
    assert args[args.index("--sink-images") + 1] == "all"  # null: every evicted image, as released
    message = r"toy_story\.yaml: key 'story\.sink_images' must be null or an integer >= 0, not -1"
    with pytest.raises(EvalInputError, match=message):
        load_protocol("configs/eval/toy_story.yaml", ["story.sink_images=-1"])
