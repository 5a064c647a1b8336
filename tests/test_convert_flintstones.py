"""FlintstonesSV converters: StoryGPT-V's processed release, the StoryDALL-E original and ARLDM's HDF5.

Each test writes a few stories in the exact source layout (npy, pkl, json, HDF5, JPEG/PNG bytes),
converts them and reads the result back with the shared reader (src.data.stories.read_split).
"""

from __future__ import annotations

import io
import json
import pickle
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from src.data.convert import ConversionError, convert, detect_layout
from src.data.prepare import load_facts
from src.data.stories import read_split

REPO = Path(__file__).resolve().parent.parent
FACTS, _ = load_facts(REPO / "configs/data/flintstones.yaml", "flintstones")
SIZE = 32          # stored frame size in the fixtures (the release has 512); bboxes are at 128 px
CLIPS = ["s_01_e_01_shot_%06d" % i for i in range(7)]
CAPTIONS = {
    CLIPS[0]: "Fred and Wilma are in the living room.",
    CLIPS[1]: "Fred and Wilma talk to each other.",
    CLIPS[2]: "Wilma holds Fred's hand.",
    CLIPS[3]: "Barney walks in with Mr. Slate.",
    CLIPS[4]: "Barney laughs.",
    CLIPS[5]: "Betty and Barney sit.",
    CLIPS[6]: "Dino runs.",
}
CHARS = {CLIPS[0]: ["fred", "wilma"], CLIPS[1]: ["fred", "wilma"], CLIPS[2]: ["wilma", "fred"],
         CLIPS[3]: ["barney", "slate"], CLIPS[4]: ["barney"], CLIPS[5]: ["betty", "barney"], CLIPS[6]: ["dino"]}
SPLIT = {"train": [CLIPS[0], CLIPS[1]], "val": [CLIPS[2]], "test": [CLIPS[3]]}
FOLLOWING = {CLIPS[i]: CLIPS[i + 1:i + 4] for i in range(4)}


def clip_frames(index: int, n: int = 3, size: int = SIZE) -> np.ndarray:
    """Frame j of clip i is a flat colour that encodes (i, j), so tests can tell which frame was kept."""
    frames = np.zeros((n, size, size, 3), dtype=np.uint8)
    for j in range(n):
        frames[j] = (10 * index + 1, 50 + j, 200 - index)
    return frames


def write_storygptv(root: Path, chars_dir: Path | None = None) -> Path:
    """StoryGPT-V's processed layout (docs/storygpt_v.md), 4 stories of 4 clips."""
    root.mkdir(parents=True)
    (root / "split.json").write_text(json.dumps(SPLIT))
    annotations = {}
    for i, clip in enumerate(CLIPS):
        segments = []
        for s, word in enumerate(CHARS[clip]):
            top = 8 * s  # bbox [h1, w1, h2, w2] at 128 px; segment s occupies rows [8s, 8s+64) x cols [16s, 16s+64)
            segments.append({"id": s + 1, "word": word, "start": 0, "end": 1, "bbox": [top, 16 * s, top + 64, 16 * s + 64]})
        annotations[clip] = {"caption": CAPTIONS[clip], "tokens": CAPTIONS[clip].split(), "segments": segments}
        np.save(root / "video_frames_sampled_4x" / f"{clip}.npy" if (root / "video_frames_sampled_4x").is_dir()
                else _mkdir(root / "video_frames_sampled_4x") / f"{clip}.npy", clip_frames(i))
        for k in range(3):
            seg = np.zeros((SIZE, SIZE), dtype=np.int64)
            for s in range(len(CHARS[clip])):
                seg[2 * s:2 * s + 16, 4 * s:4 * s + 16] = s + 1  # later segments overwrite earlier ones
            np.save(_mkdir(root / "seg_mask_4x_comb") / f"{clip}-frame{k}.npy", seg)
    (root / "cleaned_annotations.json").write_text(json.dumps(annotations))
    (root / "following_cache3.pkl").write_bytes(pickle.dumps(FOLLOWING))
    (root / "labels.pkl").write_bytes(pickle.dumps({c: np.zeros(7) for c in CLIPS}))
    background = {c: np.eye(323)[i] for i, c in enumerate(CLIPS)}
    (root / "labels_bg.pkl").write_bytes(pickle.dumps({"label": background}))
    chars_dir = chars_dir or root.parent / "chars"
    _mkdir(chars_dir)
    for name in ["fred", "wilma", "barney", "betty", "pebbles", "mr slate", "dino", "bamm bamm"]:
        Image.new("RGB", (20, 24), (len(name) * 10, 0, 0)).save(chars_dir / f"{name}.jpeg")
    return root


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def run(source, out, **options):
    return convert("flintstones", source, out, FACTS, options=options, progress=False)


def test_storygptv_converts_and_loads(tmp_path):
    source = write_storygptv(tmp_path / "flintstones")
    assert detect_layout("flintstones", source) == "storygptv"
    summary = run(source, tmp_path / "out")
    assert summary["stories"] == {"train": 2, "val": 1, "test": 1}
    meta, train = read_split(tmp_path / "out", "train", check_files=True)
    assert meta["frame_size"] == [SIZE, SIZE] and meta["frames_per_story"] == 4
    assert {c["name"]: c["gender"] for c in meta["characters"]}["mr slate"] == "male"
    story = train[0]
    assert story.id == CLIPS[0] and story.images[1] == f"images/{CLIPS[1]}.png"
    assert story.captions[2] == CAPTIONS[CLIPS[2]]
    # the middle frame (k = 3 // 2 = 1) of each clip is kept, not a random one
    pixels = np.asarray(Image.open(tmp_path / "out" / story.images[2]))
    assert pixels[0, 0].tolist() == clip_frames(2)[1, 0, 0].tolist()
    assert story.characters[2] == ["wilma", "fred"]
    assert story.boxes[2] == [[0, 0, 16, 16], [4, 2, 20, 18]]  # [h1,w1,h2,w2]@128 -> [x0,y0,x1,y1]@32
    mask = np.asarray(Image.open(tmp_path / "out" / story.masks[2]))
    assert mask.shape == (SIZE, SIZE) and mask[1, 1] == 1 and mask[10, 10] == 2 and mask[30, 30] == 0
    assert story.backgrounds == ["bg_000", "bg_001", "bg_002", "bg_003"]
    # co-reference: frame 1 has the same characters as frame 0, frame 2 too; frame 3 brings Barney in
    assert story.captions_coref[1] == "They talk to each other."
    assert story.captions_coref[2] == "She holds his hand."
    assert story.captions_coref[3] == CAPTIONS[CLIPS[3]]
    _, test = read_split(tmp_path / "out", "test")
    assert test[0].characters[0] == ["barney", "mr slate"]  # the alias 'slate' maps to 'mr slate'
    assert test[0].captions_coref[1] == "He laughs."
    refs = {c["name"]: c["reference"] for c in meta["characters"]}
    assert refs["mr slate"] == "chars/mr_slate.jpeg"  # the release portrait, copied
    assert any("bamm bamm" in note for note in summary["notes"])


def test_storygptv_missing_truncated_and_unannotated_are_listed(tmp_path):
    source = write_storygptv(tmp_path / "flintstones")
    frames = source / "video_frames_sampled_4x"
    (frames / f"{CLIPS[6]}.npy").unlink()                                  # only in the test story
    data = (frames / f"{CLIPS[0]}.npy").read_bytes()
    (frames / f"{CLIPS[0]}.npy").write_bytes(data[:len(data) // 2])        # truncated; only in story 0
    following = pickle.loads((source / "following_cache3.pkl").read_bytes())
    following["s_98_unannotated"] = CLIPS[1:4]
    (source / "following_cache3.pkl").write_bytes(pickle.dumps(following))
    split = json.loads((source / "split.json").read_text())
    split["train"] += ["s_99_no_story", "s_98_unannotated"]
    (source / "split.json").write_text(json.dumps(split))
    summary = run(source, tmp_path / "out")
    assert summary["stories"] == {"train": 1, "val": 1, "test": 0}
    skipped = {s["id"]: s for s in summary["skipped"]}
    assert set(skipped) == {CLIPS[0], CLIPS[3], "s_99_no_story", "s_98_unannotated"}
    assert "truncated or corrupt .npy" in skipped[CLIPS[0]]["reason"]
    assert skipped[CLIPS[0]]["file"] == str(frames / f"{CLIPS[0]}.npy")
    assert skipped[CLIPS[3]]["reason"].startswith("missing file") and f"'{CLIPS[6]}'" in skipped[CLIPS[3]]["reason"]
    assert skipped[CLIPS[3]]["file"] == str(frames / f"{CLIPS[6]}.npy")
    assert skipped["s_99_no_story"]["file"].endswith("following_cache3.pkl")
    assert "no annotation" in skipped["s_98_unannotated"]["reason"]
    assert skipped["s_98_unannotated"]["file"].endswith("cleaned_annotations.json")
    assert [s.id for s in read_split(tmp_path / "out", "train")[1]] == [CLIPS[1]]


def test_missing_top_level_file_is_an_error_naming_it(tmp_path):
    source = write_storygptv(tmp_path / "flintstones")
    (source / "following_cache3.pkl").unlink()
    with pytest.raises(ConversionError, match="following_cache3.pkl: missing"):
        run(source, tmp_path / "out")


def test_interrupted_conversion_resumes_without_redoing_stories(tmp_path):
    source = write_storygptv(tmp_path / "flintstones")
    out = tmp_path / "out"
    converted: list[str] = []

    def stop_after_two(story_id):
        converted.append(story_id)
        if len(converted) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert("flintstones", source, out, FACTS, progress=False, on_story=stop_after_two)
    first_image = out / f"images/{CLIPS[0]}.png"
    stamp = first_image.stat().st_mtime_ns
    # a torn last line, as if the process died while appending the marker
    with (out / ".convert/progress.jsonl").open("a") as log:
        log.write('{"split": "val", "ind')
    again: list[str] = []
    summary = convert("flintstones", source, out, FACTS, progress=False, on_story=again.append)
    assert converted == [CLIPS[0], CLIPS[1]] and again == [CLIPS[2], CLIPS[3]]
    assert summary["resumed"] == 2 and summary["converted_now"] == 2
    assert first_image.stat().st_mtime_ns == stamp
    assert [s.id for s in read_split(out, "train")[1]] == [CLIPS[0], CLIPS[1]]
    third: list[str] = []
    summary = convert("flintstones", source, out, FACTS, progress=False, on_story=third.append)
    assert summary.get("up_to_date") and third == []


def test_other_options_on_same_output_are_refused(tmp_path):
    source = write_storygptv(tmp_path / "flintstones")
    run(source, tmp_path / "out")
    with pytest.raises(ConversionError, match="frame_choice"):
        run(source, tmp_path / "out", frame_choice="first")


def write_storydalle(root: Path) -> Path:
    """The StoryDALL-E original layout: 128 px clips (here SIZE), 5-frame stories, entityLabel names."""
    root.mkdir(parents=True)
    (root / "train-val-test_split.json").write_text(json.dumps(SPLIT))
    entries = [{"globalID": c, "description": CAPTIONS[c] + "\n",
                "characters": [{"entityLabel": n.capitalize(), "labelNPC": n} for n in CHARS[c]] +
                              ([{"entityLabel": "Mailman"}] if i == 0 else [])}
               for i, c in enumerate(CLIPS)]
    (root / "flintstones_annotations_v1-0.json").write_text(json.dumps(entries))
    following = {CLIPS[i]: CLIPS[i + 1:i + 5] for i in range(3)}
    (root / "following_cache4.pkl").write_bytes(pickle.dumps(following))
    (root / "labels.pkl").write_bytes(pickle.dumps({c: np.zeros(7) for c in CLIPS}))
    for i, clip in enumerate(CLIPS):
        np.save(_mkdir(root / "video_frames_sampled") / f"{clip}.npy", clip_frames(i, n=5))
    return root


def test_storydalle_original_converts_and_loads(tmp_path):
    source = write_storydalle(tmp_path / "flintstones_data")
    assert detect_layout("flintstones", source) == "storydalle"
    summary = run(source, tmp_path / "out", frame_choice="last")
    assert summary["stories"] == {"train": 2, "val": 1, "test": 0}
    assert [s["id"] for s in summary["skipped"]] == [CLIPS[3]]  # CLIPS[3] starts no 5-clip story here
    meta, train = read_split(tmp_path / "out", "train", check_files=True)
    story = train[0]
    assert story.captions[0] == CAPTIONS[CLIPS[0]] and story.characters[3] == ["barney", "mr slate"]
    assert story.boxes is None and story.masks is None
    pixels = np.asarray(Image.open(tmp_path / "out" / story.images[1]))
    assert pixels[0, 0].tolist() == clip_frames(1, n=5)[4, 0, 0].tolist()  # frame_choice=last
    assert any("'mailman' x1" in note for note in summary["notes"])
    # no release portraits: references are built from train frames where the character is alone
    refs = {c["name"]: c["reference"] for c in meta["characters"]}
    assert refs["barney"] == "chars/barney.png" and refs["pebbles"] is None


def png_bytes(array: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def write_arldm(path: Path, rows: dict[str, list[list[int]]]) -> Path:
    """ARLDM's HDF5: per split image0..4 (PNG bytes of the clip's frames stacked vertically, channels in
    OpenCV's B,G,R order) and text (captions joined by '|')."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for split, stories in rows.items():
            group = f.create_group(split)
            images = [group.create_dataset(f"image{k}", (len(stories),), dtype=h5py.vlen_dtype(np.dtype("uint8")))
                      for k in range(5)]
            text = group.create_dataset("text", (len(stories),), dtype=h5py.string_dtype(encoding="utf-8"))
            for i, clips in enumerate(stories):
                for k, clip in enumerate(clips):
                    strip = np.concatenate(clip_frames(clip, n=5), axis=0)
                    images[k][i] = png_bytes(strip[..., ::-1])  # what cv2.imencode does to an RGB array
                text[i] = "|".join(CAPTIONS[CLIPS[c]] for c in clips)
    return path


def test_arldm_hdf5_converts_with_colours_restored(tmp_path):
    source = write_arldm(tmp_path / "arldm" / "flintstones.h5", {"train": [[0, 1, 2, 3, 4], [1, 2, 3, 4, 5]],
                                                                 "val": [[2, 3, 4, 5, 6]], "test": [[0, 1, 2, 3, 4]]})
    assert detect_layout("flintstones", source.parent) == "arldm"
    summary = run(source.parent, tmp_path / "out")
    assert summary["stories"] == {"train": 2, "val": 1, "test": 1}
    _, train = read_split(tmp_path / "out", "train", check_files=True)
    story = train[1]
    assert story.id == "train_000001" and len(story.images) == 4
    pixels = np.asarray(Image.open(tmp_path / "out" / story.images[0]))
    assert pixels.shape == (SIZE, SIZE, 3)
    assert pixels[5, 5].tolist() == clip_frames(1, n=5)[2, 0, 0].tolist()  # middle of 5, R and B as in the source
    assert story.characters[2] == ["barney", "mr slate"]  # from the caption "Barney walks in with Mr. Slate."
    assert story.captions_coref[3] == "He laughs."


def test_arldm_corrupt_png_is_listed_with_file_and_id(tmp_path):
    source = write_arldm(tmp_path / "arldm" / "flintstones.h5", {"train": [[0, 1, 2, 3, 4], [1, 2, 3, 4, 5]],
                                                                 "val": [], "test": []})
    with h5py.File(source, "r+") as f:
        data = f["train/image2"][1]
        f["train/image2"][1] = data[: len(data) // 2]
    summary = run(source.parent, tmp_path / "out")
    assert summary["stories"]["train"] == 1
    (skip,) = summary["skipped"]
    assert skip["id"] == "train_000001" and skip["file"].endswith("flintstones.h5:/train/image2")
    assert "corrupt or truncated image" in skip["reason"]


def test_prepare_script_converts_and_rejects_bad_arguments(tmp_path):
    source = write_storygptv(tmp_path / "flintstones")
    script = str(REPO / "scripts/prepare_data.sh")
    usage = subprocess.run(["bash", script, "flintstones"], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: bash scripts/prepare_data.sh DATASET SOURCE_DIR" in usage.stderr
    missing = subprocess.run(["bash", script, "flintstones", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert missing.returncode == 2 and "nowhere' does not exist" in missing.stderr
    (source / "video_frames_sampled_4x" / f"{CLIPS[6]}.npy").unlink()
    done = subprocess.run(["bash", script, "flintstones", str(source), "--out", str(tmp_path / "out"), "--quiet",
                           "--strict"], capture_output=True, text=True)
    assert done.returncode == 1, done.stderr  # converted, but --strict reports the skipped test story
    assert "stories: train 2, val 1, test 0" in done.stdout and "skipped: 1" in done.stdout
    assert f"[test] {CLIPS[3]}: {source / 'video_frames_sampled_4x' / CLIPS[6]}.npy: missing file" in done.stdout


@pytest.fixture
def tiny_sd(request) -> Path:
    """The session's tiny Stable Diffusion folder (tests/conftest.py builds it with src.tools.tiny.stack)."""
    pytest.importorskip("src.tools.tiny.stack", reason="src/tools/tiny/stack.py (the tiny pretrained stack) is not there yet")
    return request.getfixturevalue("tiny_root") / "stable-diffusion-v1-5"


def test_converted_data_trains_one_step_of_stage1(tmp_path, tiny_sd):
    from src.engine.tracking import read_metrics
    from src.train import main as train_main

    out = tmp_path / "flintstones_converted"
    convert("flintstones", write_storygptv(tmp_path / "flintstones"), out, FACTS, progress=False)
    overrides = [f"data.root={out}", "data.image_size=64", f"model.pretrained={tiny_sd}",
                 f"model.image_encoder={tiny_sd.parent / 'clip'}", f"output_root={tmp_path}/outputs",
                 "logging.tensorboard=false", "train.max_steps=1", "sample.scheduler=DPMSolverMultistepScheduler",
                 "train.batch_size=4", "train.mixed_precision=no", "train.log_every=1", "train.checkpoint_every=1",
                 "sample.num_stories=1", "sample.num_inference_steps=2", "data.num_workers=0",
                 "data.caption_field=captions_coref"]
    assert train_main(["--config", str(REPO / "configs/char_ldm/flintstones.yaml"), *overrides]) == 0
    (run_dir,) = (tmp_path / "outputs").glob("*/flintstones/*")
    (record,) = read_metrics(run_dir)
    losses = [v for k, v in record.items() if "loss" in k]
    assert record["step"] == 1 and losses and all(np.isfinite(losses))
