"""eval.run / eval.report / the toy classifier end to end on the session's toy dataset and tiny stack."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from eval import run as eval_run
from eval.report import write_report
from eval.stories_io import EvalInputError
from eval.train_classifier import train_classifier

# a short schedule for the 48-story fixture (configs/eval/toy.yaml trains longer on data/toy)
TRAINING = {"arch": "small_cnn", "input_size": 64, "epochs": 14, "lr": 3e-3, "batch_size": 16, "seed": 0}


def make_samples(data_root, out_dir, mode, drop_ids=(), split="test"):
    """A samples folder of a split: real frames copied, or uniform noise frames."""
    rng = np.random.default_rng(0)
    lines = []
    for line in (data_root / f"{split}.jsonl").read_text().splitlines():
        story = json.loads(line)
        if story["id"] in drop_ids:
            continue
        (out_dir / story["id"]).mkdir(parents=True)
        for k, path in enumerate(story["images"]):
            pixels = np.asarray(Image.open(data_root / path).convert("RGB"))
            if mode == "noise":
                pixels = rng.integers(0, 256, pixels.shape, dtype=np.uint8)
            Image.fromarray(pixels).save(out_dir / story["id"] / f"{k}.png")
        lines.append(json.dumps({"id": story["id"], "images": [f"{story['id']}/{k}.png" for k in range(len(story["images"]))],
                                 "captions": story["captions"], "characters": story["characters"]}))
    (out_dir / "stories.jsonl").write_text("\n".join(lines) + "\n")
    (out_dir / "generation.json").write_text(json.dumps({"split": split, "mode": mode}))
    return out_dir


@pytest.fixture(scope="module")
def classifier_dir(toy_root, tmp_path_factory):
    """The toy classifier, trained on a copy of the dataset that has no test.jsonl at all."""
    no_test = tmp_path_factory.mktemp("no_test") / "toy"
    no_test.mkdir()
    for name in ("meta.json", "train.jsonl", "val.jsonl"):
        shutil.copy(toy_root / name, no_test / name)
    (no_test / "images").symlink_to(toy_root / "images")
    out_dir = tmp_path_factory.mktemp("classifier") / "toy"
    train_classifier(no_test, out_dir, log=lambda message: None, **TRAINING)
    return out_dir


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """The tiny stack's CLIP folder, built with its own builders but without the VAE training that
    build_tiny_stack does first (minutes on CPU; CLIP does not need it)."""
    from src.tools.tiny.config import load_tiny_config
    from src.tools.tiny.models import build_clip_model, build_image_processor, build_text_encoder
    from src.tools.tiny.tokenizer import build_clip_tokenizer
    folder = tmp_path_factory.mktemp("tiny") / "clip"
    config = load_tiny_config()
    build_clip_model(config, 0, build_text_encoder(config, 0)).save_pretrained(folder)
    build_image_processor(config).save_pretrained(folder)
    build_clip_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def scored(toy_root, tiny_clip, classifier_dir, tmp_path_factory):
    """metrics.json of real-frame and noise-frame samples under the toy protocol."""
    base = tmp_path_factory.mktemp("scored")
    overrides = [f"dataset={toy_root}", f"classifier.dir={classifier_dir}", f"clip.model={tiny_clip}",
                 f"caption.model={base}/blip2", "classifier.train_if_missing=false"]
    overrides += [f"classifier.{key}={value}" for key, value in TRAINING.items()]
    results = {}
    for mode in ("real", "noise"):
        samples = make_samples(toy_root, base / mode, mode)
        eval_run.main(["--samples", str(samples), "--protocol", "configs/eval/toy.yaml", *overrides])
        results[mode] = json.loads((samples / "metrics.json").read_text())
    return results, overrides, base


def test_classifier_never_sees_test_ids(classifier_dir, toy_root):
    split_ids = json.loads((classifier_dir / "split_ids.json").read_text())
    ids = {split: {json.loads(line)["id"] for line in (toy_root / f"{split}.jsonl").read_text().splitlines()}
           for split in ("train", "val", "test")}
    assert set(split_ids["train"]) == ids["train"] and set(split_ids["val"]) == ids["val"]
    assert not (set(split_ids["train"]) | set(split_ids["val"])) & ids["test"]
    config = json.loads((classifier_dir / "config.json").read_text())
    assert config["characters"] == [c["name"] for c in json.loads((toy_root / "meta.json").read_text())["characters"]]


def test_real_frames_score_near_the_top_and_noise_near_the_bottom(scored):
    results, _, _ = scored
    real, noise = results["real"]["metrics"], results["noise"]["metrics"]
    distance = "Frechet distance (classifier features)"
    assert "FID" not in real and real[distance]["value"] == pytest.approx(0.0, abs=1e-6)
    assert noise[distance]["value"] > 1.0
    # real test frames are their own ceiling; noise shows no character exactly and no background
    for name in ("Char-Acc (%)", "Char-F1 (%)", "BG-Acc (%)", "BG-F1 (%)"):
        assert real[name]["value"] == real[name]["ceiling"]
        assert noise[name]["value"] < real[name]["value"]
    assert real["Char-F1 (%)"]["value"] >= 55 and real["BG-Acc (%)"]["value"] >= 75
    assert real["CLIP I-I"]["value"] == pytest.approx(1.0, abs=1e-5)
    assert noise["CLIP I-I"]["value"] < real["CLIP I-I"]["value"]
    assert real["CLIP T-I"]["note"] == "not meaningful (tiny random weights)"
    assert real["CIDEr"]["note"] == "not meaningful (tiny random weights)"
    assert results["real"]["details"]["classifier"]["character_frames"] == results["real"]["frames"] == 32
    story = next(iter(results["real"]["per_story"].values()))
    assert set(story) == {"char_acc", "clip_t2i", "clip_i2i", "cider"}


def test_two_runs_give_identical_numbers_and_a_report(scored):
    results, overrides, base = scored
    eval_run.main(["--samples", str(base / "real"), "--protocol", "configs/eval/toy.yaml", "--out",
                   str(base / "again"), *overrides])
    again = json.loads((base / "again" / "metrics.json").read_text())
    assert again["metrics"] == results["real"]["metrics"] and again["per_story"] == results["real"]["per_story"]
    page = (base / "again" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 * 32  # generated and ground-truth frames
    assert "Frechet distance (classifier features)" in page and "not meaningful (tiny random weights)" in page


def test_report_opens_with_a_summary_and_plots_of_the_training_run(scored, toy_root, tmp_path):
    """--run: the run's losses and its periodic val samples' metrics over training, as images in the page."""
    results, overrides, base = scored
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data: {name: toy}\nmodel: {character_conditioning: true, pretrained: tiny}\n"
                                     "train: {batch_size: 32}\noptim: {lr: 0.001, schedule: cosine}\n")
    (run / "summary.json").write_text(json.dumps({"final_step": 4, "minutes": 2.0}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train/mse": 1 / s, "train/attention": -s / 10}) + "\n"
                                               for s in (1, 2, 3, 4)))
    make_samples(toy_root, run / "samples" / "step_000002", "noise", split="val")
    make_samples(toy_root, run / "samples" / "step_000004", "real", split="val")
    eval_run.main(["--samples", str(base / "real"), "--protocol", "configs/eval/toy.yaml", "--out",
                   str(tmp_path / "report"), "--run", str(run), *overrides])
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert saved["metrics"] == results["real"]["metrics"]
    early, late = saved["training"]
    assert (early["step"], late["step"], late["minutes"], late["split"]) == (2, 4, 2.0, "val")
    # a resumed run: the pace of the steps after the resume is applied to every step
    from eval.training_run import minutes_per_step
    assert minutes_per_step({"summary": {"final_step": 900, "resumed_from_step": 600, "minutes": 3.0}}) == 0.01
    assert late["Char-Acc (%)"] > early["Char-Acc (%)"] and late["BG-Acc (%)"] > early["BG-Acc (%)"]
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Char-LDM (StoryGPT-V stage 1) trained on toy for 4 steps (2.0 min" in page
    assert "Scored: test split, 8 stories / 32 frames" in page
    char_acc = results["real"]["metrics"]["Char-Acc (%)"]
    assert f"Char-Acc {char_acc['value']:.1f}% (real frames {char_acc['ceiling']:.1f}%)" in page
    assert page.count("data:image/png;base64,") == 2 * 32 + 2  # the frames and the two plots
    assert page.index("class='summary'") < page.index("class='plots'") < page.index("class='story'")


def test_report_shows_frames_captions_and_ground_truth(toy_root, tmp_path):
    samples = make_samples(toy_root, tmp_path / "samples", "real", drop_ids={"test_00001"})
    out = write_report(samples, tmp_path / "page.html", metrics={"x <b>": 1.5}, per_story={"test_00000": {"s": 0.25}})
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 28 and "image-rendering: pixelated" in page
    assert "x &lt;b&gt;" in page and "s: 0.2500" in page
    caption = json.loads((toy_root / "test.jsonl").read_text().splitlines()[0])["captions"][0]
    assert caption.replace("'", "&#x27;") in page
    with_truth = write_report(samples, tmp_path / "truth.html", data_root=toy_root, split="test").read_text()
    assert with_truth.count("data:image/png;base64,") == 56 and "ground truth" in with_truth


def test_bad_samples_are_named(toy_root, tmp_path, classifier_dir):
    samples = make_samples(toy_root, tmp_path / "samples", "real")
    with pytest.raises(EvalInputError, match=r"holds a classifier trained on other data or settings; train it with "
                                         r"`python -m eval\.train_classifier"):
        eval_run.main(["--samples", str(samples), "--protocol", "configs/eval/toy.yaml", f"dataset={toy_root}",
                       f"classifier.dir={classifier_dir}", "classifier.epochs=3", "classifier.train_if_missing=false",
                       "metrics=[classifier]"])
    lines = (samples / "stories.jsonl").read_text().splitlines()
    story = json.loads(lines[0])
    story["id"] = "test_99999"
    (samples / "stories.jsonl").write_text("\n".join([json.dumps(story)] + lines[1:]) + "\n")
    with pytest.raises(EvalInputError, match=r"story id 'test_99999' of the samples is not in .*test\.jsonl"):
        write_report(samples, tmp_path / "page.html", data_root=toy_root, split="test")
    (samples / "test_00001" / "2.png").unlink()
    with pytest.raises(EvalInputError, match=r"test_00001/2\.png: frame not found"):
        write_report(samples, tmp_path / "page.html")


def test_pronoun_caption_frames_are_also_scored_on_their_own(scored, toy_root):
    results, _, _ = scored
    real, noise = results["real"], results["noise"]
    stories = [json.loads(line) for line in (toy_root / "test.jsonl").read_text().splitlines()]
    count = sum(coref != original for s in stories for coref, original in zip(s["captions_coref"], s["captions"]))
    assert 0 < count < 32 and real["details"]["pronoun_frames"] == count
    for name in ("Char-Acc, pronoun frames (%)", "Char-F1, pronoun frames (%)"):
        row = real["metrics"][name]
        assert row["value"] == row["ceiling"] and row["note"].startswith(f"{count} of 32 frames")
        assert noise["metrics"][name]["value"] < row["value"]
