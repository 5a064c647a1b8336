"""StoryGPT-V stage 2 through its real entry points on the small toy dataset and tiny stack: tiny LLMs,
the target cache, the alignment task (prompt, frozen mode, losses, checkpoints, resume) and stage-2
story inference."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from src.engine.tracking import read_metrics

RECIPE = "configs/align/toy.yaml"


@pytest.fixture(scope="session")
def stage1(stage1_run) -> Path:
    return stage1_run


@pytest.fixture(scope="module")
def llms(tiny_root, toy_root) -> Path:
    from src.tools.tiny.llm import FOLDERS, ensure_tiny_llm

    for family, name in FOLDERS.items():
        ensure_tiny_llm(tiny_root / name, toy_root, family, steps=150)
    return tiny_root


@pytest.fixture(scope="module")
def cache(stage1) -> Path:
    from src.tools.align_targets import build_target_cache

    return build_target_cache(stage1, shard_size=16, log=lambda *a: None)


@pytest.fixture
def overrides(toy_root, llms, stage1, cache, tmp_path) -> list[str]:
    return [f"data.root={toy_root}", f"tiny_stack={llms}", f"model.llm={llms}/opt-6.7b",
            f"model.vision_encoder={llms}/clip", f"model.stage1={stage1}", f"output_root={tmp_path}/outputs",
            "logging.tensorboard=false", "train.batch_size=4", "train.log_every=1", "train.checkpoint_every=3",
            "train.validate_every=0", "sample.num_stories=1", "sample.num_inference_steps=2", "model.val_stories=4"]


def train(overrides):
    from src.train import main
    assert main(["--config", RECIPE, *overrides]) == 0


def run_dir(overrides, name) -> Path:
    root = next(o.split("=", 1)[1] for o in overrides if o.startswith("output_root="))
    return Path(root) / "align" / "toy" / name


def build(overrides):
    from src.config import load_config
    from src.tasks import build_task
    return build_task(load_config(RECIPE, overrides))


# ---- tiny LLMs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,cls,model_type", [("opt-6.7b", "OPTForCausalLM", "opt"),
                                                  ("Llama-2-7b-hf", "LlamaForCausalLM", "llama")])
def test_tiny_llms_load_through_the_auto_classes_and_pretraining_lowered_perplexity(llms, name, cls, model_type):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(llms / name)
    tokenizer = AutoTokenizer.from_pretrained(llms / name)
    assert type(model).__name__ == cls and model.config.model_type == model_type
    ids = tokenizer("Ada waved to Bob.").input_ids
    assert ids[0] == tokenizer.bos_token_id and tokenizer.decode(ids[1:]) == "Ada waved to Bob."
    record = json.loads((llms / name / "pretrain.json").read_text())
    assert record["val_perplexity_after"] < record["val_perplexity_before"] / 5


def test_an_llm_folder_without_a_tokenizer_is_a_one_line_error(llms, tmp_path):
    from src.models.llm_with_image_tokens import LLMWithImageTokens

    folder = tmp_path / "llm"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(llms / "opt-6.7b" / name, folder / name)
    with pytest.raises(FileNotFoundError, match=f"{folder}: no tokenizer in the LLM folder"):
        LLMWithImageTokens.from_pretrained(folder)


# ---- prompt, mapper, frozen mode ---------------------------------------------------------------------
def test_the_prompt_interleaves_frames_and_captions_exactly(overrides):
    from src.models.storygptv_stage2 import story_prompt

    task = build(overrides)
    llm, K, R = task.llm, 4, 8
    captions = ["Ada ran.", "She sat.", "They met Bob."]
    frames = [torch.full((K, llm.width), float(i + 1)) for i in range(3)]
    pieces = story_prompt(captions, 2, frames, llm.image_token_ids)
    assert [p if isinstance(p, str) else "IMG" if isinstance(p, list) else "F" for p in pieces] == [
        " Image: <img>", "F", "</img> Caption: Ada ran.", " Image: <img>", "F", "</img> Caption: She sat.",
        " Caption: They met Bob. Image:", "IMG"]
    assert pieces[1] is frames[0] and pieces[4] is frames[1] and pieces[-1] == llm.image_token_ids
    embeds, ids, mask = llm.assemble([pieces])
    ids = ids[0].tolist()
    soft = [i for i, v in enumerate(ids) if v == -1]
    first, second = soft[:K], soft[K:]
    assert len(soft) == 2 * K and second[0] > first[-1] + 1
    text = llm.tokenizer.decode([v for v in ids[:first[0]] if v < llm.vocab_size], skip_special_tokens=True)
    assert text == " Image: <img>"
    middle = llm.tokenizer.decode(ids[first[-1] + 1:second[0]])
    assert middle == "</img> Caption: Ada ran. Image: <img>"
    assert torch.equal(embeds[0, first[0]], frames[0][0]) and torch.equal(embeds[0, second[0]], frames[1][0])
    assert ids[-R:] == llm.image_token_ids and ids[0] == llm.tokenizer.bos_token_id
    assert llm.tokenizer.decode(ids[second[-1] + 1:-R]) == "</img> Caption: She sat. Caption: They met Bob. Image:"
    no_frames = story_prompt(captions, 2, frames, llm.image_token_ids, interleave=False)
    assert no_frames[:2] == [" Caption: Ada ran.", " Caption: She sat."]


def test_the_mapper_output_has_char_ldm_conditioning_shape(overrides, stage1):
    from src.runs import load_task

    task = build(overrides)
    ldm = load_task(stage1)[0]
    expected = ldm.encode_text(["Ada ran."]).shape[1:]
    tokens = task.frame_tokens(torch.zeros(2, 3, 64, 64))
    out = task.condition([["Ada ran.", "She sat."]], [1], [list(tokens)])["conditioning"]
    assert out.shape == (1, *expected) == (1, 77, 64)
    batch = task.example_batch(2, "cpu")   # what the real-scale shape check feeds the task
    seen = []
    task.conditioning_module().register_forward_hook(lambda m, i, o: seen.append(o.shape))
    assert torch.isfinite(task.training_step(batch)["loss"]) and seen == [(2, *expected)]


@pytest.mark.parametrize("llm", ["opt-6.7b", "Llama-2-7b-hf"])
def test_frozen_mode_trains_only_the_img_rows_of_the_llm(overrides, llms, llm):
    task = build(overrides + [f"model.llm={llms}/{llm}", "model.llm_mode=frozen"])  # the toy recipe trains it whole
    trainable = {n for n, p in task.named_parameters() if p.requires_grad}
    llm_trainable = {n for n in trainable if n.startswith("llm.")}
    untied = llm == "Llama-2-7b-hf"
    assert llm_trainable == ({"llm.image_embeddings", "llm.image_output"} if untied else {"llm.image_embeddings"})
    frozen = {n: p.detach().clone() for n, p in task.llm.lm.named_parameters()}
    rows = task.llm.image_embeddings.detach().clone()
    optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-2)
    data = task.train_dataset()
    for step in range(3):
        losses = task.training_step(task.collate([data[i] for i in range(4 * step, 4 * step + 4)]))
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    assert not torch.equal(rows, task.llm.image_embeddings)
    for name, param in task.llm.lm.named_parameters():
        assert torch.equal(frozen[name], param), f"{name} changed in frozen mode"
    head = task.llm.lm.get_output_embeddings().weight
    assert (head is task.llm.lm.get_input_embeddings().weight) != untied


def test_lora_mode_trains_adapters_and_not_the_base_weights(overrides):
    task = build(overrides + ["model.llm_mode=lora"])
    trainable = [n for n, p in task.named_parameters() if p.requires_grad and n.startswith("llm.lm.")]
    assert trainable and all("lora_" in n for n in trainable)


# ---- target cache ------------------------------------------------------------------------------------
def test_the_cache_resumes_after_a_kill_and_refuses_a_foreign_checkpoint(stage1, cache, tmp_path, monkeypatch):
    import src.tools.align_targets as tc

    out = tmp_path / "cache"
    real_save, saved = tc.save_file, []

    def dying_save(tensors, path, metadata=None):
        if len(saved) == 2:
            raise KeyboardInterrupt  # killed while writing the third shard
        real_save(tensors, path, metadata=metadata)
        saved.append(Path(path).name)
    monkeypatch.setattr(tc, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        tc.build_target_cache(stage1, out, shard_size=16, log=lambda *a: None)
    monkeypatch.setattr(tc, "save_file", real_save)
    with pytest.raises(tc.TargetCacheError, match="incomplete"):
        tc.TargetCache(out)
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors")}
    assert len(kept) == 2 and not list(out.glob("*.tmp"))
    written = []
    tc.build_target_cache(stage1, out, shard_size=16, log=written.append)
    assert f"target cache {out}: 3 shard(s) written" in written          # 5 shards: 2 survived the kill
    assert all(out.joinpath(n).stat().st_mtime_ns == t for n, t in kept.items())
    resumed, straight = tc.TargetCache(out), tc.TargetCache(cache)
    for story in straight.shard_of:
        assert torch.equal(resumed.get(story, 1), straight.get(story, 1))
    assert resumed.get("train_00001", 1).shape == (77, 64) and resumed.get("train_00001", 1).dtype == torch.float16

    text = tc.build_target_cache(stage1, tmp_path / "text", target="text", shard_size=16, log=lambda *a: None)
    assert not torch.equal(tc.TargetCache(text).get("train_00001", 0), straight.get("train_00001", 0))
    with pytest.raises(tc.TargetCacheError, match=r"manifest.json: this cache was made with target='text'"):
        tc.build_target_cache(stage1, text, target="fuse", shard_size=16)
    foreign = json.loads((out / "manifest.json").read_text())
    foreign["checkpoint_sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(foreign))
    with pytest.raises(tc.TargetCacheError, match=r"manifest.json: this cache was made with checkpoint_sha256"):
        tc.build_target_cache(stage1, out, shard_size=16)


def test_an_align_run_on_a_cache_from_another_checkpoint_is_a_one_line_error(overrides, cache, tmp_path):
    from src.tools.align_targets import TargetCacheError

    other = tmp_path / "other"
    shutil.copytree(cache, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["checkpoint_sha256"] = "f" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TargetCacheError, match=f"{other}/manifest.json: made from checkpoint .* not from model.stage1"):
        build(overrides + [f"model.targets={other}"]).train_dataset()


def test_a_missing_caption_field_is_an_error_naming_the_file_and_field(overrides, toy_root, tmp_path):
    from src.data.stories import StoryFormatError

    data = tmp_path / "toy"
    shutil.copytree(toy_root, data)
    lines = (data / "train.jsonl").read_text().splitlines()
    story = json.loads(lines[2])
    del story["captions_coref"]
    lines[2] = json.dumps(story)
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    task = build(overrides + [f"data.root={data}"])
    with pytest.raises(StoryFormatError, match=rf"{data}/train.jsonl:3: field 'captions_coref'"):
        task.train_dataset()


# ---- training -----------------------------------------------------------------------------------------
def test_alignment_loss_falls_and_validation_keeps_the_best_weights(overrides):
    o = overrides + ["model.llm_mode=frozen", "run_name=learn", "train.max_steps=40", "train.checkpoint_every=40",
                     "optim.warmup_steps=5", "train.validate_every=20", "train.batch_size=8"]
    train(o)
    rows = read_metrics(run_dir(o, "learn"))
    align = [r["train/align"] for r in rows if "train/align" in r]
    assert len(align) == 40 and sum(align[-5:]) / 5 < 0.5 * sum(align[:5]) / 5
    val = [r["val/l2"] for r in rows if "val/l2" in r]
    assert len(val) == 2
    best = json.loads((run_dir(o, "learn") / "best" / "best.json").read_text())
    assert best["metric"] == "val/l2" and best["value"] == min(val)
    weights = load_file(str(run_dir(o, "learn") / "best" / "trainable.safetensors"))
    assert {n.split(".")[0] for n in weights} == {"llm", "visual_tokens", "mapper"}
    assert not any(n.startswith("llm.lm.") for n in weights)


def test_checkpoint_round_trips_strictly_and_a_resumed_run_matches(overrides):
    common = overrides + ["train.max_steps=6", "train.checkpoint_every=3", "train.validate_every=3"]
    train(common + ["run_name=straight"])
    train(common + ["run_name=halves", "train.max_steps=3"])
    train(common + ["run_name=halves", "train.resume=latest"])
    a = load_file(str(run_dir(common, "straight") / "checkpoints" / "step_000006" / "trainable.safetensors"))
    b = load_file(str(run_dir(common, "halves") / "checkpoints" / "step_000006" / "trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    task = build(common)
    task.load_trainable_state_dict(a)
    with pytest.raises(ValueError, match="unexpected.*llm.image_output"):
        task.load_trainable_state_dict({**a, "llm.image_output": torch.zeros(8, 64)})
    with pytest.raises(ValueError, match="1 missing.*mapper.queries"):
        task.load_trainable_state_dict({k: v for k, v in a.items() if k != "mapper.queries"})


# ---- inference -----------------------------------------------------------------------------------------
def test_stage2_generation_writes_the_story_layout_and_names_both_checkpoints(overrides, tmp_path):
    from src.generate import main

    o = overrides + ["run_name=gen", "train.max_steps=2", "train.checkpoint_every=2"]
    train(o)
    out = tmp_path / "samples"
    assert main(["--checkpoint", str(run_dir(o, "gen")), "--split", "test", "--num-stories", "3", "--out", str(out),
                 "sample.num_inference_steps=2"]) == 0
    info = json.loads((out / "generation.json").read_text())
    assert info["caption_field"] == "captions_coref" and info["stage"] == 2
    assert info["stage1_checkpoint"].endswith("step_000002/ema.safetensors")  # the toy stage-1 recipe keeps EMA weights
    assert info["stage2_checkpoint"].endswith("gen/checkpoints/step_000002")
    lines = [json.loads(line) for line in (out / "stories.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all((out / image).is_file() for line in lines for image in line["images"])


def test_root_eval_sh_checks_its_arguments(tmp_path):
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    usage = subprocess.run(["bash", "eval.sh", "toy"], cwd=repo, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: bash eval.sh DATASET STAGE1_CKPT [STAGE2_CKPT]" in usage.stderr
    missing = subprocess.run(["bash", "eval.sh", "toy", str(tmp_path), str(tmp_path / "nope")], cwd=repo,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and f"checkpoint folder {tmp_path / 'nope'} not found" in missing.stderr


def test_released_v2_diffusion_loss_feeds_the_vae_frames_in_minus_one_to_one(overrides):
    task = build(overrides + ["model.diffusion_weight=1.0"])
    ldm = task.stage1()
    seen = []
    real_encode = ldm.vae.encode
    ldm.vae.encode = lambda x, *a, **k: (seen.append(x), real_encode(x, *a, **k))[1]
    data = task.train_dataset()
    losses = task.training_step(task.collate([data[i] for i in range(4)]))
    assert torch.isfinite(losses["diffusion"]) and losses["diffusion"] > 0
    frames = seen[0]
    assert frames.shape == (4, 3, 64, 64) and frames.min() >= -1 and frames.max() <= 1 and frames.min() < -0.5
    losses["loss"].backward()
    assert task.mapper.out.weight.grad is not None
    assert all(p.grad is None for p in ldm.parameters())


def test_pronoun_frames_take_the_llm_conditioning_from_step_0(overrides, stage1, tmp_path):
    from src.data.stories import read_split
    from src.runs import load_task

    task = build(overrides + ["sample.guidance_scale=1.0", "sample.num_inference_steps=2", "sample.scheduler=DDIMScheduler"])
    ldm, _, weights = load_task(stage1, overrides=["model.start_merge_step=1"])
    task._stage1.update(task=ldm.requires_grad_(False).eval(), weights=str(weights))
    stories = read_split(task.cfg.data.root, "test")[1]
    index = next(i for i, s in enumerate(stories) if s.captions_coref[1:] != s.captions[1:]
                 and any(c == o for c, o in zip(s.captions_coref[1:], s.captions[1:])))
    story = stories[index]   # has frames with and frames without a pronoun after frame 0
    seen = []  # one entry per UNet call: the frames k of every story, drawn together
    ldm.unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["encoder_hidden_states"]
                                       if "encoder_hidden_states" in kwargs else args[2]), with_kwargs=True)
    task.sample(tmp_path / "gen", "test", num_stories=index + 1)
    steps = 2
    assert len(seen) == story.num_frames * steps
    for k in range(1, story.num_frames):
        text = ldm.encode_text([story.captions_coref[k]])[0]
        first, second = seen[k * steps][index], seen[k * steps + 1][index]
        pronoun = story.captions_coref[k] != story.captions[k]
        assert torch.allclose(first, text, atol=1e-5) != pronoun, f"frame {k}: step 0"
        assert not torch.allclose(second, text, atol=1e-5), f"frame {k}: after the merge step"


# ---- released weights -----------------------------------------------------------------------------------
def gill_state_dict(task) -> dict:
    """A tiny state dict in GILL's pretrained_ckpt.pth.tar layout (names from StoryGPT-V's train_llm.py and
    gill/models.py), with random values, shaped for the toy recipe's models."""
    from src.models.mappers import GILLMapper

    torch.manual_seed(1)
    m = task.cfg.model.mapper
    ref = GILLMapper(task.llm.width, 64, 77, m.width, m.encoder_layers, m.decoder_layers, m.heads, m.ffn)
    state = {"model.input_embeddings.weight": torch.randn(8, task.llm.width),
             "model.visual_embeddings.weight": torch.randn(4 * task.llm.width, 96),
             "model.visual_embeddings.bias": torch.randn(4 * task.llm.width),
             "model.gen_text_hidden_fcs.0.query_embs": ref.queries.detach()[None].clone(),
             "model.gen_text_hidden_fcs.0.model.weight": ref.out.weight.detach().clone(),
             "model.gen_text_hidden_fcs.0.model.bias": ref.out.bias.detach().clone(),
             "model.ret_text_hidden_fcs.0.model.weight": torch.randn(256, task.llm.width),
             "model.ret_text_hidden_fcs.0.model.bias": torch.randn(256),
             "model.visual_fc.weight": torch.randn(256, 96), "model.visual_fc.bias": torch.randn(256),
             "model.logit_scale": torch.tensor(2.0)}
    for name, value in ref.state_dict().items():
        if name.startswith(("fc.", "tfm.")):
            state[f"model.gen_text_hidden_fcs.0.{name}"] = value.clone()
    return {"state_dict": state}, ref


@pytest.mark.parametrize("llm", ["opt-6.7b", "Llama-2-7b-hf"])
def test_the_converter_maps_the_gill_key_layout(overrides, llms, llm, tmp_path, capsys):
    from src.runs import load_task
    from src.tools.convert.storygptv_llm import ConversionError, convert_state_dict, main

    o = overrides + [f"model.llm={llms}/{llm}", "model.llm_mode=frozen"]  # the release's mode
    task = build(o)
    source, ref = gill_state_dict(task)
    torch.save(source, tmp_path / "pretrained_ckpt.pth.tar")
    out = tmp_path / "converted"
    assert main(["--src", str(tmp_path / "pretrained_ckpt.pth.tar"), "--out", str(out), "--config", RECIPE, *o]) == 0
    converted = load_task(out)[0]   # strict: exactly the task's trainable weights
    state = source["state_dict"]
    assert torch.equal(converted.llm.image_embeddings, state["model.input_embeddings.weight"])
    assert torch.equal(converted.visual_tokens.proj.bias, state["model.visual_embeddings.bias"])
    hidden, embeds = torch.randn(2, 8, task.llm.width), torch.randn(2, 8, task.llm.width)
    with torch.no_grad():
        assert torch.allclose(converted.mapper(hidden, embeds), ref(hidden, embeds), atol=1e-5)
    untied = llm == "Llama-2-7b-hf"
    assert (converted.llm.image_output is not None) == untied
    if untied:
        assert not converted.llm.image_output.any()
    trainer = json.loads((out / "checkpoints" / "step_000000" / "trainer_state.json").read_text())
    assert trainer["conversion"]["dropped_retrieval_head"] == 5
    m = converted.cfg.model  # the saved config runs the released weights the release's way (docs/fidelity.md)
    assert (m.inference_prompt, m.frame_preprocess, m.pronoun_start_merge_step) == ("release", "release", 1)
    assert main(["--src", str(tmp_path / "pretrained_ckpt.pth.tar"), "--out", str(tmp_path / "full"), "--config",
                 RECIPE, *overrides, f"model.llm={llms}/{llm}"]) == 2   # the toy recipe trains its LLM whole
    assert "model.llm_mode=full; the released weights are frozen-mode" in capsys.readouterr().err
    assert not (tmp_path / "full").exists()
    with pytest.raises(ConversionError, match="a second text_emb_layer mapper"):
        convert_state_dict({"state_dict": {**state, "model.gen_text_hidden_fcs.1.fc.weight": torch.zeros(1)}}, untied)


# ---- long stories ---------------------------------------------------------------------------------------
def test_long_toy_stories_are_drawn_by_stage2_with_a_prompt_window(overrides, tmp_path, capsys):
    from bench.stage2_long import main as bench
    from src.data.stories import read_split
    from src.data.toy import generate_toy_dataset

    root = generate_toy_dataset(tmp_path / "long", num_train=1, num_val=1, num_test=2, frames_per_story=10,
                                num_workers=1, progress=False)
    story = read_split(root, "test")[1][0]
    assert story.num_frames == 10 and len(story.captions_coref) == 10
    assert any(c != o for c, o in zip(story.captions_coref, story.captions))

    o = overrides + ["run_name=long", "train.max_steps=1", "train.checkpoint_every=1", "model.max_length=100"]
    train(o)
    task = build(o)
    tokens = list(task.frame_tokens(torch.zeros(10, 3, 64, 64)))
    pieces = task.fit_prompt(story.captions_coref, 9, tokens)
    embeds, ids, _ = task.llm.assemble([pieces])
    assert ids.shape[1] <= 100 and ids[0, -8:].tolist() == task.llm.image_token_ids
    kept = sum(torch.is_tensor(p) for p in pieces)
    assert 0 < kept < 9 and pieces[-2] == f" Caption: {story.captions_coref[9]} Image:"
    assert pieces[-3] == f"</img> Caption: {story.captions_coref[8]}"   # the window keeps the latest frames

    bench(["--align", str(run_dir(o, "long")), "--lengths", "6", "--steps", "1"])
    table = capsys.readouterr().out
    assert "| frames | stories | s/frame |" in table and "\n| 6 " in table
