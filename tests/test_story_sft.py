"""SEED-Story stage 2 (story_sft): the long toy stories, the interleaved sequence (masks, every-beat
labels, truncation by whole beats), and the task through the real entry on the tiny stack (the loss
falls, a resumed run matches, a bad story line is a one-line error)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from src.data.story_sequence import IGNORE, BeatText, SpecialIds, build_sequence, fit_sequence, pad_batch, sink_sequence
from src.data.toy_sprites import BACKGROUNDS
from src.engine.tracking import read_metrics

RECIPE = "configs/story_sft/toy.yaml"
K = 4  # image tokens in the pure sequence tests
IDS = SpecialIds(bos=1, eos=2, boi=90, eoi=91, img=tuple(range(100, 100 + K)), separator=(7, 8))


@pytest.fixture(scope="module")
def story_root(tmp_path_factory) -> Path:
    from src.data.toy import generate_toy_dataset

    return generate_toy_dataset(tmp_path_factory.mktemp("data") / "toy_story", seed=0, num_train=8, num_val=2,
                                num_test=1, story_frames=30, chunk_frames=10, num_workers=1, progress=False)


@pytest.fixture(scope="module")
def stack(tiny_root, toy_root) -> Path:
    from src.tools.tiny.llm import ensure_tiny_llm
    from src.tools.tiny.seed import ensure_tiny_seed

    ensure_tiny_seed(tiny_root, toy_root, vit_steps=30)
    ensure_tiny_llm(tiny_root / "Llama-2-7b-hf", toy_root, "llama", steps=150)  # as tests/test_align.py
    return tiny_root


@pytest.fixture
def overrides(story_root, stack, tmp_path) -> list[str]:
    return [f"data.root={story_root}", f"tiny_stack={stack}", f"model.llm={stack}/Llama-2-7b-hf",
            f"model.tokenizer_path={stack}/qwen_vit.safetensors", f"output_root={tmp_path}/outputs",
            "logging.tensorboard=false", "train.log_every=1", "train.validate_every=0", "train.max_minutes=0",
            "data.num_workers=0", "model.val_stories=2"]


def run_dir(overrides: list[str], name: str) -> Path:
    root = next(o.split("=", 1)[1] for o in overrides if o.startswith("output_root="))
    return Path(root) / "story_sft" / "toy_story" / name


# ---- the long toy stories -------------------------------------------------------------------------------

def test_long_toy_stories_chunk_to_ten_beats_and_their_text_follows_the_characters(story_root):
    from src.data.stories import read_split

    meta, train = read_split(story_root, "train", check_files=True)
    assert meta["frames_per_story"] == 10 and meta["toy"]["story_frames"] == 30
    assert len(train) == 24 and [s.id for s in train[:3]] == ["train_00000_0", "train_00000_1", "train_00000_2"]
    assert train[1].extra == {"source_id": "train_00000", "orders": list(range(10, 20))}
    for story in train:
        for k, (caption, names, place) in enumerate(zip(story.captions, story.characters, story.backgrounds)):
            named = {word.strip(",.") for word in caption.split()} & {"Ada", "Bob", "Cleo", "Dan", "Eve", "Finn", "Kit"}
            assert named == set(names), (story.id, caption, names)  # the text names exactly who is on screen
            if k and place != story.backgrounds[k - 1]:  # places follow a fixed cycle, announced by the text
                assert BACKGROUNDS.index(place) == (BACKGROUNDS.index(story.backgrounds[k - 1]) + 1) % 4
                assert "went" in caption or "stayed out" in caption
        assert not story.captions_coref[0].startswith(("He ", "She ", "They "))  # chunks never open with a pronoun


# ---- the sequence: masks and labels for several interleavings --------------------------------------------

TEXTS = [[10, 11, 12], [13], [], [14, 15, 16, 17], [18, 19]]   # beat 2 has an empty caption
# A tokenizer that splits each piece the same wherever it sits: separator + caption in every place.
CAPTIONS = [BeatText(tuple(t), IDS.separator + tuple(t), IDS.separator + tuple(t)) for t in TEXTS]


def visible_to(seq, row: int) -> list[int]:
    mask = pad_batch([seq], IDS.eos)["attention_mask"][0, 0, row]
    return mask.nonzero().flatten().tolist()


@pytest.mark.parametrize("first,last", [(0, 1), (0, 4), (1, 3), (2, 4)])
def test_every_beat_pass_is_the_union_of_the_released_samples(first, last):
    every = build_sequence(CAPTIONS, first, last, IDS, "every")
    assert every.input_beats == list(range(first, last)) and every.target_beats == list(range(first + 1, last + 1))
    assert sum(every.cmp_mask) == K * (last - first) and sum(every.gen_mask) == K * (last - first)
    # What every other token sees is the released layout of the whole sample, at positions 0..n-1.
    released = build_sequence(CAPTIONS, first, last, IDS, "last")
    shown = [i for i, g in enumerate(every.hidden_group) if g < 0]
    assert [every.input_ids[i] for i in shown] == released.input_ids
    assert [every.position_ids[i] for i in shown] == list(range(len(released)))
    # Each target's query block sees exactly the released sample that ends with that beat.
    gen_rows = [i for i, flag in enumerate(every.gen_mask) if flag]
    for g, beat in enumerate(every.target_beats):
        block = gen_rows[g * K:(g + 1) * K]
        alone = build_sequence(CAPTIONS, first, beat, IDS, "last")
        end = alone.gen_mask.index(True) + K  # the released sample up to its query block
        seen = visible_to(every, block[-1])
        assert [every.input_ids[i] for i in seen] == alone.input_ids[:end]
        assert [every.position_ids[i] for i in seen] == alone.position_ids[:end]


@pytest.mark.parametrize("first,last", [(0, 1), (0, 4), (1, 3)])
def test_every_beat_labels_and_the_released_last_beat_labels(first, last):
    every = build_sequence(CAPTIONS, first, last, IDS, "every")
    supervised = [t for t in every.targets if t != IGNORE]
    expected = [t for b in range(first + 1, last + 1) for t in (*IDS.separator, *TEXTS[b], IDS.boi)] + [IDS.eos]
    assert supervised == expected  # each target beat's text and <img>, then </s>; no image token, no </img>
    shown = [i for i, g in enumerate(every.hidden_group) if g < 0]
    for a, b in zip(shown, shown[1:]):  # a label is always the next token the visible stream holds
        assert every.targets[a] in (IGNORE, every.input_ids[b])
    assert all(every.targets[i] == IGNORE for i, g in enumerate(every.hidden_group) if g >= 0)
    last_only = build_sequence(CAPTIONS, first, last, IDS, "last")
    assert [t for t in last_only.targets if t != IGNORE] == [*IDS.separator, *TEXTS[last], IDS.boi, IDS.eos]
    assert sum(last_only.gen_mask) == K and last_only.target_beats == [last]


def test_each_beat_text_is_tokenized_where_the_release_puts_it():
    """The release tokenizes `cap0 <img>..</img>[INST]cap1 ...` whole and the supervised `[INST]capN ...`
    on its own: the first beat is its opening text, a context beat its text after </img>, the supervised
    last beat (`last`) its text at a string's start; the every-beat pass puts every later beat after </img>."""
    texts = [BeatText((10 + b,), (30 + b, 10 + b), (50 + b, 10 + b)) for b in range(4)]
    last = build_sequence(texts, 1, 3, IDS, "last")
    assert [t for t in last.input_ids if 10 <= t < 70] == [11, 32, 12, 53, 13]
    every = build_sequence(texts, 0, 3, IDS, "every")
    assert [t for t in every.input_ids if 10 <= t < 70] == [10, 31, 11, 32, 12, 33, 13]


def test_long_samples_are_cut_by_whole_beats_from_the_front():
    full = len(build_sequence(CAPTIONS, 0, 4, IDS, "every"))
    assert fit_sequence(CAPTIONS, 4, IDS, "every", full).first == 0
    cut = fit_sequence(CAPTIONS, 4, IDS, "every", full - 1)
    assert cut.first == 1 and cut.input_ids[:3] == [IDS.bos, 13, IDS.boi]  # beat 1 opens the sample, no [INST]
    assert cut.input_ids == build_sequence(CAPTIONS, 1, 4, IDS, "every").input_ids
    with pytest.raises(ValueError, match=r"story 'x': beats 3..4 take \d+ tokens, more than model.max_length=10"):
        fit_sequence(CAPTIONS, 4, IDS, "every", 10, "story 'x'")


# ---- sink-shaped samples: the context the multimodal-sink cache holds ------------------------------------

TEXTS6 = TEXTS + [[20, 21, 22, 23, 24, 25]]
CAPTIONS6 = [BeatText(tuple(t), IDS.separator + tuple(t), IDS.separator + tuple(t)) for t in TEXTS6]
# K=4 image tokens: [<img>-2, <img>+2) and [</img>-1, </img>+1) keep 2 text tokens, <img>, image tokens 0 and 3, </img>
FRAGMENTS = dict(before_boi=2, after_boi=2, before_eoi=1, after_eoi=1)
WINDOW = [*IDS.separator, 14, 15, 16, 17, 90, 100, 101, 102, 103, 91, *IDS.separator, 18, 19, 90, 100, 101, 102, 103, 91]
LAST = [*IDS.separator, 20, 21, 22, 23, 24, 25, 90, 100, 101, 102, 103, 91, IDS.eos]


@pytest.mark.parametrize("sink_images,kept,fragments", [
    (1, [1, 10, 11, 12, 7, 8, 90, 100, 103, 91], [(2, (0, 3))]),   # <s> + 3 opening tokens; beat 2's head and tail
    (0, [1, 10, 11, 12], []),                                       # the first tokens alone
    (None, [1, 10, 11, 12, 90, 100, 103, 91, 8, 13, 90, 100, 103, 91, 7, 8, 90, 100, 103, 91],
     [(0, (0, 3)), (1, (0, 3)), (2, (0, 3))])])                     # as released: every evicted image
def test_a_sink_shaped_sample_holds_what_the_cache_keeps_then_the_window_whole(sink_images, kept, fragments):
    """Beat 5 written with a window of 2 images: beats 0..2 are evicted; the sample shows what the cache
    keeps of them, then beats 3 and 4 whole, then beat 5, at positions 0..n-1 (the cache re-rotates its
    kept keys to 0..n-1)."""
    from src.models.story_cache import SinkSettings

    seq = sink_sequence(CAPTIONS6, 5, IDS, SinkSettings(window_images=2, sink_images=sink_images, **FRAGMENTS))
    shown = [i for i, g in enumerate(seq.hidden_group) if g < 0]
    assert [seq.input_ids[i] for i in shown] == kept + WINDOW + LAST
    assert [seq.position_ids[i] for i in shown] == list(range(len(shown)))
    assert list(zip(seq.input_beats, seq.input_tokens)) == fragments + [(3, (0, 1, 2, 3)), (4, (0, 1, 2, 3))]
    assert sum(seq.cmp_mask) == sum(len(t) for t in seq.input_tokens) and seq.target_beats == [3, 4, 5]
    assert seq.first == 3
    # nothing of the evicted beats is supervised; the window's beats and the last are, as the every-beat pass does
    supervised = [t for b in (3, 4, 5) for t in (*IDS.separator, *TEXTS6[b], IDS.boi)] + [IDS.eos]
    assert [t for t in seq.targets if t != IGNORE] == supervised
    assert all(t == IGNORE for t in seq.targets[:len(kept) - 1])
    last_only = sink_sequence(CAPTIONS6, 5, IDS, SinkSettings(window_images=2, sink_images=sink_images, **FRAGMENTS), "last")
    assert last_only.target_beats == [5] and [t for t in last_only.targets if t != IGNORE] == LAST[:-6] + [IDS.eos]


def test_a_sink_shaped_sample_with_nothing_evicted_is_the_whole_story():
    from src.models.story_cache import SinkSettings

    seq = sink_sequence(CAPTIONS6, 3, IDS, SinkSettings(window_images=3))
    assert seq.input_ids == build_sequence(CAPTIONS6, 0, 3, IDS, "every").input_ids and seq.first == 0
    with pytest.raises(ValueError, match="a context beat and a target beat"):
        sink_sequence(CAPTIONS6, 0, IDS, SinkSettings())


# ---- the task ---------------------------------------------------------------------------------------------

def build(overrides, extra=()):
    from src.config import load_config
    from src.tasks import build_task

    return build_task(load_config(RECIPE, [*overrides, *extra]))


def test_the_hidden_query_blocks_give_the_released_hidden_states(overrides):
    """Through the real Llama: the every-beat pass's query-block states equal the release's one-target pass."""
    task = build(overrides).eval()
    data = task.train_dataset()
    batch = task.collate([data[0]])
    ids = batch["caption_ids"][0]
    with torch.no_grad():
        features = task.visual_tokenizer(batch["pixel_values"][:6])

        def gen_states(seq):
            t = pad_batch([seq], task.special.eos)
            hidden = task.mllm(t["input_ids"], features[seq.input_beats], t["cmp_mask"], t["attention_mask"],
                               t["position_ids"])
            return hidden[t["gen_mask"]].view(len(seq.target_beats), -1, hidden.shape[-1])

        every = gen_states(build_sequence(ids, 0, 5, task.special, "every"))
        for g, beat in enumerate(range(1, 6)):
            alone = gen_states(build_sequence(ids, 0, beat, task.special, "last"))[0]
            torch.testing.assert_close(every[g], alone, rtol=1e-4, atol=1e-5)


def test_added_tokens_trainable_parts_and_cut_samples_are_counted(overrides):
    task = build(overrides, ["model.max_length=200", "model.context_beats=all"])
    names = task.mllm.llm.tokenizer.convert_ids_to_tokens([task.special.boi, task.special.eoi, task.special.img[0]])
    assert names == ["<img>", "</img>", "<img_00000>"]
    trainable = set(task.trainable_state_dict())
    for part in ("lora_A", "input_layernorm.modules_to_save", "model.norm.modules_to_save", "embed_tokens",
                 "lm_head", "mllm.input_resampler.query", "mllm.output_resampler.query", "mllm.llm.image_embeddings"):
        assert any(part in name for name in trainable), part
    assert not any(n.startswith("visual_tokenizer.") for n in trainable)
    rows_only = build(overrides, ["model.embeddings=new_rows"])
    assert not any("embed_tokens" in n or "lm_head" in n for n in rows_only.trainable_state_dict())
    data = task.train_dataset()
    batch = task.collate([data[i] for i in range(3)])
    first = task.training_step(batch)
    assert first["samples_cut"] == 3 and first["samples_cut_total"] == 3  # 10 beats never fit in 200 tokens
    assert task.training_step(batch)["samples_cut_total"] == 6


def test_sink_shaped_samples_are_drawn_at_their_probability_and_train(overrides, monkeypatch):
    """model.sink_shaped.probability=1: every sample of a story long enough to evict a beat is sink-shaped
    (windows drawn in 1..window_images, the target after the window); the step trains on it."""
    task = build(overrides, ["model.sink_shaped.probability=1", "model.sink_shaped.window_images=3"])
    seen = []
    real = task.losses
    monkeypatch.setattr(task, "losses", lambda batch, seqs: seen.append(seqs) or real(batch, seqs))
    data = task.train_dataset()
    batch = task.collate([data[i] for i in range(4)])
    torch.manual_seed(0)
    out = task.training_step(batch)
    assert torch.isfinite(out["loss"]) and out["samples_cut"] == 0
    for seq, beats in zip(seen[0], batch["num_beats"]):
        window = len(seq.target_beats) - 1        # every-beat: the window's beats and the last are targets
        assert 1 <= window <= 3 and seq.first > 0 and seq.target_beats[-1] < beats
        # the last evicted beat's image: the release's head and tail, all of its 16 tokens but the 8th
        assert seq.input_beats[0] == seq.first - 1 and seq.input_tokens[0] == (*range(7), *range(8, 16))
    out["loss"].backward()
    assert task.mllm.input_resampler.query.grad is not None
    for bad, message in (("model.sink_shaped.probability=2", "model.sink_shaped.probability"),
                         ("model.sink_shaped.window=some", "model.sink_shaped.window"),
                         ("model.sink_shaped.sink_images=-1", "model.sink_shaped.sink_images"),
                         ("model.sink_shaped.after_eoi=-1", "model.sink_shaped.after_eoi")):
        with pytest.raises(ValueError, match=message):
            build(overrides, [bad])


def test_loss_falls_through_the_real_entry(overrides):
    from src.train import main

    run = overrides + ["run_name=learn", "train.max_steps=40", "optim.warmup_steps=5", "train.checkpoint_every=40",
                       "train.validate_every=40"]
    assert main(["--config", RECIPE, *run]) == 0
    metrics = read_metrics(run_dir(run, "learn"))
    losses = [m["train/loss"] for m in metrics if "train/loss" in m]
    assert len(losses) == 40 and all(m["train/samples_cut"] == 0 for m in metrics if "train/loss" in m)
    start, end = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert end < 0.6 * start, f"loss went from {start:.3f} to {end:.3f}"
    cosines = [m["train/cosine"] for m in metrics if "train/cosine" in m]
    assert sum(cosines[-5:]) / 5 < 0.8 * sum(cosines[:5]) / 5  # the regression learns, not only the text
    assert any("val/loss" in m for m in metrics) and (run_dir(run, "learn") / "best").is_dir()


def test_a_resumed_run_matches_an_uninterrupted_one(overrides):
    from src.train import main

    # constant LR: the first half stops at max_steps=3, and a cosine schedule depends on max_steps
    common = overrides + ["optim.schedule=constant", "optim.min_lr_ratio=0", "optim.warmup_steps=0", "train.checkpoint_every=3",
                          "train.batch_size=4"]
    # One intra-op thread: with two, CPU kernels of the three in-process runs may reduce in different orders
    # (seen on 2 cores: last-bit differences in the attention biases), and the comparison below is bitwise.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["--config", RECIPE, *common, "run_name=straight", "train.max_steps=6"]) == 0
        assert main(["--config", RECIPE, *common, "run_name=split", "train.max_steps=3"]) == 0
        assert main(["--config", RECIPE, *common, "run_name=split", "train.max_steps=6", "train.resume=latest"]) == 0
    finally:
        torch.set_num_threads(threads)
    step6 = "checkpoints/step_000006/trainable.safetensors"
    straight, resumed = load_file(str(run_dir(common, "straight") / step6)), load_file(str(run_dir(common, "split") / step6))
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), f"{name} differs after resume"
    # and a run can start from those weights (model.init_weights: strict, by name)
    task = build(overrides, [f"model.init_weights={run_dir(common, 'straight') / step6}"])
    assert torch.equal(task.trainable_state_dict()["mllm.input_resampler.query"], straight["mllm.input_resampler.query"])


def test_a_story_with_mismatched_images_and_captions_is_a_one_line_error(overrides, story_root, tmp_path, capsys):
    from src.errors import run_entry
    from src.train import main

    broken = tmp_path / "broken"
    shutil.copytree(story_root, broken)
    lines = (broken / "train.jsonl").read_text().splitlines()
    story = json.loads(lines[2])
    story["captions"] = story["captions"][:9]
    lines[2] = json.dumps(story)
    (broken / "train.jsonl").write_text("\n".join(lines) + "\n")
    assert run_entry(main, ["--config", RECIPE, *overrides, f"data.root={broken}", "train.max_steps=1"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{broken}/train.jsonl:3: field 'captions'" in errors[0], errors


def test_the_cosine_schedule_ends_at_its_floor():
    from src.config import load_config
    from src.engine.loop import make_lr_schedule

    cfg = load_config("configs/story_sft/george.yaml", ["train.max_steps=300"])
    assert (cfg.optim.warmup_steps, cfg.optim.min_lr_ratio, tuple(cfg.optim.betas)) == (100, 0.05, (0.9, 0.98))
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    schedule = make_lr_schedule(cfg.optim, optimizer, cfg.train.max_steps)
    lrs = []
    for _ in range(300):
        lrs.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert lrs[0] == 0 and lrs[50] == pytest.approx(5e-5) and max(lrs) == pytest.approx(1e-4)
    assert schedule.get_last_lr()[0] == pytest.approx(5e-6)  # 0.05 x lr at the last step
    with pytest.raises(ValueError, match="optim.min_lr_ratio"):
        load_config("configs/story_sft/george.yaml", ["optim.schedule=constant"])
