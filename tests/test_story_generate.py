"""SEED-Story generation (src/generate_story.py, src/pipelines/seed_story.py, src/models/story_cache.py):
the KV-cache policies (what each mode keeps, re-rotated positions, logits against a dense forward over
the kept tokens), decoding (greedy, temperature, top-p), image-token forcing, and the entry end to end on
a tiny story_sft run and a tiny detokenizer run."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from src.models.story_cache import SinkSettings, StoryKVCache, rope_inv_freq, rotate_keys
from src.pipelines.story_writer import DecodeSettings, pick_token

K = 16


def tiny_llama(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaForCausalLM(config).eval()


def beat_kinds(beat: int) -> list[str]:
    """A beat as generation caches it: (bos +) text, <img>, K image tokens, </img>."""
    return ["text"] * (6 if beat == 0 else 5) + ["boi"] + ["img"] * K + ["eoi"]


def filled(model, mode: str, beats: int, window: int = 2, sink_images=None):
    """A StoryKVCache fed `beats` beats of random embeddings; also every embedding fed, in order."""
    cache = StoryKVCache(mode, SinkSettings(window_images=window, sink_images=sink_images), rope_inv_freq(model))
    fed = []
    for beat in range(beats):
        cache.evict_if_full()
        kinds = beat_kinds(beat)
        embeds = torch.randn(1, len(kinds), 32)
        with torch.no_grad():
            model(inputs_embeds=embeds, past_key_values=cache.cache, position_ids=cache.position_ids(len(kinds), "cpu"),
                  use_cache=True)
        cache.appended(beat, kinds)
        fed.append(embeds[0])
    return cache, torch.cat(fed)


def expected_kept(mode: str, beats: int, window: int = 2, sink_images=None) -> list[int]:
    """Stream indices each mode keeps after `beats` beats, from the release's ranges (docs/seed_story.md);
    `sink_images`: only the most recently evicted images keep their head and tail."""
    starts, index = [], 0
    for beat in range(beats):
        starts.append(index)
        index += len(beat_kinds(beat))
    evicted = max(0, beats - 1 - window) if mode != "dense" else 0  # evictions happen before each new beat
    kept = list(range(starts[evicted], index))
    fragments = range(0 if sink_images is None else max(0, evicted - sink_images), evicted)
    for beat in range(evicted):
        first, boi = starts[beat], starts[beat] + len(beat_kinds(beat)) - K - 2
        eoi = boi + K + 1
        for i in range(first, first + len(beat_kinds(beat))):
            if mode in ("sink", "multimodal_sink") and i < 4:
                kept.append(i)
            elif mode == "multimodal_sink" and beat in fragments and (boi - 4 <= i < boi + 8 or eoi - 8 <= i < eoi + 4):
                kept.append(i)
    return sorted(kept)


@pytest.mark.parametrize("mode", ["dense", "window", "sink", "multimodal_sink"])
def test_each_mode_keeps_exactly_the_tokens_it_lists(mode):
    model = tiny_llama(2)
    cache, _ = filled(model, mode, beats=6)
    assert [s.index for s in cache.slots] == expected_kept(mode, 6)
    assert cache.cache.get_seq_length() == len(cache.slots)
    if mode == "multimodal_sink":  # per evicted beat: 4 text, <img>, 7 + 8 image tokens, </img> (K=16)
        per_beat = [sum(1 for s in cache.slots if s.beat == b) for b in cache.evicted]
        assert cache.evicted == [0, 1, 2] and per_beat[1:] == [4 + 1 + 7 + 8 + 1] * 2
        assert per_beat[0] == 6 + 1 + 7 + 8 + 1  # beat 0's text is 6 tokens, all within [0,4) or [BOI-4, BOI)
        assert [s.kind for s in cache.slots if s.beat == 1] == ["text"] * 4 + ["boi"] + ["img"] * 15 + ["eoi"]
    if mode == "sink":
        assert [s.index for s in cache.slots if s.beat in cache.evicted] == [0, 1, 2, 3]


@pytest.mark.parametrize("sink_images", [0, 1, 2])
def test_multimodal_sink_keeps_the_head_and_tail_of_only_its_last_sink_images_evicted_images(sink_images):
    model = tiny_llama(1)
    cache, embeds = filled(model, "multimodal_sink", beats=8, sink_images=sink_images)
    assert cache.evicted == [0, 1, 2, 3, 4]
    assert [s.index for s in cache.slots] == expected_kept("multimodal_sink", 8, sink_images=sink_images)
    assert cache.fragments == cache.evicted[len(cache.evicted) - sink_images:]  # [] for 0
    assert sorted({s.beat for s in cache.slots if s.kind == "boi"}) == [*cache.fragments, 5, 6, 7]
    assert [s.index for s in cache.slots if s.beat == 0][:4] == [0, 1, 2, 3]  # the first tokens always stay
    uncapped, _ = filled(model, "multimodal_sink", beats=8)
    dropped = 5 - sink_images  # beats 0.. lose their head and tail: 21 tokens, beat 0 19 (its first 4 stay)
    assert len(uncapped.slots) - len(cache.slots) == 19 + (dropped - 1) * (4 + 1 + 7 + 8 + 1)
    new = torch.randn(1, 3, 32)  # and the logits still match a dense forward over what is kept
    with torch.no_grad():
        cached = model(inputs_embeds=new, past_key_values=cache.cache, position_ids=cache.position_ids(3, "cpu"),
                       use_cache=True).logits
        dense = model(inputs_embeds=torch.cat([embeds[[s.index for s in cache.slots]][None], new], 1)).logits[:, -3:]
    torch.testing.assert_close(cached, dense, rtol=1e-4, atol=1e-5)


def test_a_negative_sink_images_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match="sink.sink_images"):
        StoryKVCache("multimodal_sink", SinkSettings(sink_images=-1), torch.ones(4))


def test_kept_keys_are_the_original_keys_re_rotated_to_their_new_positions():
    model = tiny_llama(2)
    torch.manual_seed(1)
    cache, embeds = filled(model, "multimodal_sink", beats=6)
    with torch.no_grad():  # the dense pass over the whole stream: every token's key at its stream position
        full = model(inputs_embeds=embeds[None], use_cache=True).past_key_values
    rows = torch.tensor([s.index for s in cache.slots])
    # Layer 0's keys and values depend on the token and its position alone (deeper layers' also on the
    # context they were computed in, which eviction changes), so they can be compared exactly.
    dense, kept = full.layers[0], cache.cache.layers[0]
    moved = rotate_keys(dense.keys[:, :, rows], torch.arange(len(rows)) - rows, cache.inv_freq)
    torch.testing.assert_close(kept.keys, moved, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(kept.values, dense.values[:, :, rows])
    assert not torch.allclose(kept.keys, dense.keys[:, :, rows], atol=1e-3)  # they did move


@pytest.mark.parametrize("mode", ["window", "sink", "multimodal_sink"])
def test_sink_logits_match_a_dense_forward_over_the_kept_tokens_at_their_positions(mode):
    """One layer: a cached token's key and value depend on it and its position only, so the next token's
    logits through the evicted, re-rotated cache must equal a plain forward over the kept tokens."""
    model = tiny_llama(1)
    torch.manual_seed(2)
    cache, embeds = filled(model, mode, beats=6)
    new = torch.randn(1, 3, 32)
    positions = cache.position_ids(3, "cpu")
    assert positions[0, 0] == len(cache.slots) < cache.next_index  # positions stay within the cache
    with torch.no_grad():
        cached = model(inputs_embeds=new, past_key_values=cache.cache, position_ids=positions, use_cache=True).logits
        kept = embeds[[s.index for s in cache.slots]]
        dense = model(inputs_embeds=torch.cat([kept[None], new], 1)).logits[:, -3:]
    torch.testing.assert_close(cached, dense, rtol=1e-4, atol=1e-5)


def test_dense_cache_equals_one_forward_over_the_whole_stream():
    model = tiny_llama(2)
    cache, embeds = filled(model, "dense", beats=4)
    new = torch.randn(1, 2, 32)
    with torch.no_grad():
        cached = model(inputs_embeds=new, past_key_values=cache.cache, position_ids=cache.position_ids(2, "cpu"),
                       use_cache=True).logits
        dense = model(inputs_embeds=torch.cat([embeds[None], new], 1)).logits[:, -2:]
    torch.testing.assert_close(cached, dense, rtol=1e-4, atol=1e-5)


def test_greedy_is_the_argmax_and_sampling_honours_seed_temperature_and_top_p():
    torch.manual_seed(0)
    logits = torch.randn(40)
    greedy = DecodeSettings(temperature=0.0)
    assert pick_token(logits, greedy, None) == int(logits.argmax())
    hot = DecodeSettings(temperature=5.0, top_p=1.0)
    draws = [pick_token(logits, hot, torch.Generator().manual_seed(3)) for _ in range(3)]
    assert len(set(draws)) == 1  # same seed, same draw
    g = torch.Generator().manual_seed(4)
    assert len({pick_token(logits, hot, g) for _ in range(50)}) > 5  # a hot temperature spreads the draws
    narrow = DecodeSettings(temperature=5.0, top_p=1e-6)  # top-p keeps the best token only
    g.manual_seed(5)
    assert {pick_token(logits, narrow, g) for _ in range(20)} == {int(logits.argmax())}
    cold = DecodeSettings(temperature=1e-3, top_p=1.0)
    assert {pick_token(logits, cold, g) for _ in range(20)} == {int(logits.argmax())}


# ---- the tiny trained runs and the entry -------------------------------------------------------------------

@pytest.fixture(scope="session")
def runs(seed_runs):
    return seed_runs


@pytest.fixture(scope="module")
def mllm_task(runs):
    from src.runs import load_task

    return load_task(runs["mllm"])[0].eval()


def test_image_tokens_are_forced_after_img(mllm_task, monkeypatch):
    """Even a model that would rather emit image tokens or </img> as text never does: outside an image
    they are banned; after <img> exactly the K image tokens and </img> follow, as one forced block; after
    </img> the whole separator."""
    from src.pipelines.story_writer import StoryWriter

    s = mllm_task.special
    writer = StoryWriter(mllm_task.mllm, s, "dense", SinkSettings(), DecodeSettings(temperature=0.0))
    features = mllm_task.visual_tokenizer.empty_features(1)[0]
    real = writer.llm.logits_at

    def prefer_image_tokens(hidden):
        logits = real(hidden)
        logits[:, list(s.img) + [s.eoi]] = 1e4   # what the model "wants"
        logits[:, s.boi] = 1e3                    # the best allowed token
        logits[:, s.separator[0]] = 5e2           # after </img>: go on (rather than </s>)
        return logits
    monkeypatch.setattr(writer.llm, "logits_at", prefer_image_tokens)
    beats, stats = writer.write("Ada was on the beach.", features, 3)
    assert stats["beats"] == 3 and [b.token_ids for b in beats[1:]] == [list(s.separator)] * 2
    kinds = [slot.kind for slot in writer.cache.slots if slot.beat == 2]
    assert kinds == ["text"] * len(s.separator) + ["boi"] + ["img"] * len(s.img) + ["eoi"]
    assert beats[2].features.shape == features.shape


def test_the_released_refill_writes_what_dense_writes_re_feeding_the_whole_story_each_beat(mllm_task, monkeypatch):
    """dense_refill (the release's dense, a bench reference): the same attention as the cached dense, so
    the same story; but every beat feeds the whole story so far again, so the LLM's work grows with it."""
    from src.pipelines.story_writer import REFILL, StoryWriter

    features = mllm_task.visual_tokenizer.empty_features(1)[0]
    decode = DecodeSettings(temperature=0.0, max_text_tokens=6)
    written = {}
    for context in ("dense", REFILL):
        writer = StoryWriter(mllm_task.mllm, mllm_task.special, context, SinkSettings(), decode)
        fed, real = [], type(writer.llm).forward_cached.__get__(writer.llm)  # the unpatched method

        def counted(embeds, cache, positions, fed=fed, real=real):
            fed.append((cache.get_seq_length(), embeds.shape[1]))  # (tokens cached before, tokens fed)
            return real(embeds, cache, positions)
        monkeypatch.setattr(writer.llm, "forward_cached", counted)
        beats, stats = writer.write("Ada was on the beach.", features, 4)
        written[context] = (beats, stats, fed, [slot.index for slot in writer.cache.slots])
    (dense, dstats, dfed, dslots), (refill, rstats, rfed, rslots) = written["dense"], written[REFILL]
    assert [b.token_ids for b in refill] == [b.token_ids for b in dense] and rslots == dslots
    for a, b in zip(dense, refill):
        torch.testing.assert_close(b.features, a.features, rtol=1e-4, atol=1e-4)
    assert rstats["peak_cache_tokens"] == dstats["peak_cache_tokens"] and len(rstats["beat_seconds"]) == 4
    # each of beats 1..3 starts with one forward into an empty cache over everything fed so far; the rest
    # is the dense run's own forwards, token for token
    refills = [(i, n) for i, (before, n) in enumerate(rfed) if before == 0][1:]
    assert len(refills) == 3
    assert [n for i, (_, n) in enumerate(rfed) if i not in dict(refills)] == [n for _, n in dfed]
    for count, (i, n) in enumerate(refills, start=1):
        k = i + 1 - count  # the dense run's forward that comes where this refill's next forward does
        assert n == dfed[k][0] > 0  # the refill fed exactly what the dense cache held there
    assert [n for _, n in refills] == sorted(n for _, n in refills)


def test_a_sink_shaped_training_sample_regresses_what_generation_regresses(mllm_task, runs):
    """Stage 2's sink-shaped sample (story_sequence.sink_sequence) holds the tokens, image features and
    positions the multimodal-sink cache holds when generation writes that beat: with one LLM layer (a
    cached token's key and value then depend on the token and its position alone) the sample's last
    beat regresses exactly the features the writer regressed, from the same earlier features."""
    import copy

    from src.data.stories import read_split
    from src.data.story_sequence import pad_batch, sink_sequence
    from src.pipelines.story_writer import StoryWriter
    from src.tasks.story_sft import beat_text

    mllm = copy.deepcopy(mllm_task.mllm)
    lm = mllm.llm.lm
    layers = next(module for name, module in lm.named_modules() if name.endswith("model.layers"))
    del layers[1:]
    lm.config.num_hidden_layers = 1
    story = read_split(runs["data"], "val")[1][0]
    sink = SinkSettings(window_images=2, sink_images=1)
    writer = StoryWriter(mllm, mllm_task.special, "multimodal_sink", sink, DecodeSettings(temperature=0.0),
                         mllm_task.cfg.model.separator)
    torch.manual_seed(0)
    size = mllm_task.visual_tokenizer.image_size
    opening = mllm_task.visual_tokenizer(torch.rand(1, 3, size, size) * 2 - 1)[0]
    beats, stats = writer.write(story.captions[0], opening, 7, story.captions[:7])
    assert stats["evicted_beats"] == [0, 1, 2, 3]
    captions = [beat_text(mllm.llm, c, mllm_task.cfg.model.separator) for c in story.captions[:7]]
    seq = sink_sequence(captions, 6, mllm_task.special, sink)
    shown = [i for i, g in enumerate(seq.hidden_group) if g < 0]
    assert len(shown) == len(writer.cache.slots) + 1   # the cache's tokens (beat 6's included), then </s>
    assert [seq.input_ids[i] for i in shown][:4] == [mllm_task.special.bos, *captions[0].opening[:3]]
    t = pad_batch([seq], mllm_task.special.eos)
    image_tokens = torch.zeros(len(seq.input_beats), len(mllm_task.special.img), dtype=torch.bool)
    for i, kept in enumerate(seq.input_tokens):
        image_tokens[i, list(kept)] = True
    assert image_tokens.sum(1).tolist() == [15, 16, 16]   # beat 3's head and tail (the 8th token goes), beats 4, 5
    with torch.no_grad():
        features = torch.stack([beats[b].features for b in seq.input_beats])
        hidden = mllm(t["input_ids"], features, t["cmp_mask"], t["attention_mask"], t["position_ids"], image_tokens)
        regressed = mllm.regress(hidden, t["gen_mask"])[-1]
    torch.testing.assert_close(regressed, beats[6].features, rtol=1e-4, atol=1e-4)


def test_greedy_story_is_deterministic_and_a_seeded_sample_reproducible(mllm_task):
    from src.pipelines.story_writer import StoryWriter

    features = mllm_task.visual_tokenizer.empty_features(1)[0]

    def texts(decode):
        writer = StoryWriter(mllm_task.mllm, mllm_task.special, "multimodal_sink", SinkSettings(window_images=1), decode)
        beats, _ = writer.write("Ada and Bob were on the beach.", features, 4)
        return [b.token_ids for b in beats]
    greedy = texts(DecodeSettings(temperature=0.0, max_text_tokens=12))
    assert len(greedy) >= 2 and all(greedy[1:])       # it wrote past the opening
    assert texts(DecodeSettings(temperature=0.0, max_text_tokens=12, seed=99)) == greedy   # greedy: the seed is unused
    seven, again, eight = (texts(DecodeSettings(temperature=1.5, top_p=0.95, max_text_tokens=12, seed=s))
                           for s in (7, 7, 8))
    assert seven == again                              # a seeded sample is reproducible,
    assert seven != eight and seven != greedy          # and the seed (not only the settings) decides it


@pytest.mark.parametrize("mode,context", [("story", "multimodal_sink"), ("vis", "window")])
def test_the_entry_writes_the_generated_story_layout(runs, tmp_path, mode, context):
    from src.data.stories import read_split, read_stories
    from src.generate_story import main

    out = tmp_path / "samples"
    assert main(["--mllm", str(runs["mllm"]), "--detokenizer", str(runs["detok"]), "--split", "test",
                 "--out", str(out), "--mode", mode, "--context", context, "--beats", "4", "--num-stories", "1",
                 "--window-images", "1", "--max-text-tokens", "40", "--temperature", "0"]) == 0
    info = json.loads((out / "generation.json").read_text())
    assert info["mllm_checkpoint"].endswith("step_000030/trainable.safetensors")
    assert info["detokenizer_checkpoint"].endswith("step_000002/trainable.safetensors")
    assert info["mode"] == mode and info["context"] == context
    stories = read_stories(out / "stories.jsonl")
    source = read_split(runs["data"], "test")[1][0]
    story = stories[0]
    assert story.id == source.id and story.captions[0] == source.captions[0]
    assert 1 <= story.num_frames <= 4 and all((out / p).is_file() for p in story.images)
    stats = info["stories"][0]
    if mode == "vis":
        assert story.captions == source.captions[:4] and stats["evicted_beats"] == [0, 1]
    else:
        assert stats["beats"] == story.num_frames and stats["stop"] in ("beats", "</s>")
        assert story.num_frames >= 2 and all(text.strip() for text in story.captions[1:]), story.captions


def test_a_missing_run_folder_is_a_one_line_error(runs, tmp_path, capsys):
    from src.errors import run_entry
    from src.generate_story import main

    missing = tmp_path / "no_such_run"
    assert run_entry(main, ["--mllm", str(missing), "--detokenizer", str(runs["detok"]), "--out", str(tmp_path / "o")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(missing) in errors[0] and "config.yaml" in errors[0], errors
    assert run_entry(main, ["--mllm", str(runs["detok"]), "--detokenizer", str(runs["detok"]), "--out", str(tmp_path / "o")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "key 'task' is 'detokenizer'" in errors[0], errors


def test_a_story_with_mismatched_images_and_captions_is_a_one_line_error(runs, tmp_path, capsys):
    from src.errors import run_entry
    from src.generate_story import main

    broken = tmp_path / "broken"
    shutil.copytree(runs["data"], broken)
    lines = (broken / "test.jsonl").read_text().splitlines()
    story = json.loads(lines[1])
    story["captions"] = story["captions"][:7]
    lines[1] = json.dumps(story)
    (broken / "test.jsonl").write_text("\n".join(lines) + "\n")
    assert run_entry(main, ["--mllm", str(runs["mllm"]), "--detokenizer", str(runs["detok"]), "--data-root", str(broken),
                            "--out", str(tmp_path / "o")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{broken}/test.jsonl:2: field 'captions'" in errors[0], errors
