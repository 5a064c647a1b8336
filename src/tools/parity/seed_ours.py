"""Our side of the SEED-Story parity checks (docs/fidelity.md): from a case's release-layout weights and
inputs (src/tools/parity/seed_cases.py, or a golden file of tests/assets/parity/), write the files a user
would have (the release's checkpoint as pytorch_model.bin, a Llama-2 folder, a Qwen-VL-Chat folder, an
SDXL folder, a dataset), convert them with our converters, build our modules through our own entry
points (tasks from recipe configs) and compare their outputs with the original code's. Needs no clone.

`compare(cases, workdir)` -> rows of the table (src/tools/parity/common.py: Row).
"""
from __future__ import annotations

from pathlib import Path

import torch

from src.tools.parity import seed_tiny as tiny
from src.tools.parity.common import END_TO_END_TOLERANCE, Row, group, max_abs_diff

PROJECT = Path(__file__).resolve().parents[3]
SFT_CONFIG = PROJECT / "configs" / "story_sft" / "base.yaml"
ADAPT_CONFIG = PROJECT / "configs" / "story_adapt" / "base.yaml"
DETOKENIZER_CONFIG = PROJECT / "configs" / "detokenizer" / "base.yaml"
# The original files, named in the table.
QWEN = "SEED-Story src/models/qwen_visual.py"
MODELS = "SEED-Story src/models_clm/models.py"
DATA = "SEED-Story src/data/story_telling.py:decode_long_story_data"
IPA = "SEED-Story src/models_ipa"


class World:
    """The files of one comparison, under `root`, written once and shared by the cases."""

    def __init__(self, root: Path, cases: dict):
        self.root, self.cases = Path(root), cases
        self.tensors = {name: case[0] for name, case in cases.items()}
        self.meta = {name: case[1] for name, case in cases.items()}

    # ---- the visual tokenizer: a Qwen-VL-Chat folder, extracted by src.tools.convert.qwen_vit ----------
    def vit_file(self) -> Path:
        from src.tools.convert.qwen_vit import extract

        out = self.root / "qwen_vit.safetensors"
        if not out.is_file():
            folder = tiny.write_qwen_vl_folder(self.root / "Qwen-VL-Chat", group(self.tensors["seed_vit"], "release"),
                                               self.meta["seed_vit"]["visual"])
            extract(folder, out)
        return out

    # ---- the agent: Llama-2 folder, dataset, the release's pytorch_model.bin converted ------------------
    def llm_folder(self) -> Path:
        folder = self.root / "Llama-2-7b-hf"
        if not (folder / "config.json").is_file():
            tiny.write_llm_folder(folder, self.meta["seed_agent"]["tokenizer"], group(self.tensors["seed_agent"], "base"))
        return folder

    def dataset(self) -> Path:
        root = self.root / "data"
        if not (root / "meta.json").is_file():
            frames = [self.tensors["seed_agent"][f"input/frame_{k}"] for k in range(len(tiny.CAPTIONS))]
            tiny.write_dataset(root, frames, self.meta["seed_agent"]["captions"])
        return root

    def sft_overrides(self, supervision: str = "last") -> list[str]:
        a = self.meta["seed_agent"]["agent"]
        return [f"model.llm={self.llm_folder()}", "model.llm_dtype=float32", f"model.tokenizer_path={self.vit_file()}",
                f"model.num_image_tokens={a['num_image_tokens']}", f"model.input_resampler_heads={a['input_heads']}",
                f"model.output_resampler_heads={a['output_heads']}", f"model.lora.r={a['lora_r']}",
                f"model.lora.lora_alpha={a['lora_alpha']}", f"model.lora.lora_dropout={a['lora_dropout']}",
                f"model.supervision={supervision}", "model.gradient_checkpointing=false",
                "data.name=parity", f"data.root={self.dataset()}", f"data.frames_per_story={len(tiny.CAPTIONS)}"]

    def agent_weights(self) -> Path:
        from src.tools.convert.seed_agent import convert

        out = self.root / "agent" / "trainable.safetensors"
        if not out.is_file():
            src = self.root / "agent" / "pytorch_model.bin"
            src.parent.mkdir(parents=True, exist_ok=True)
            torch.save(group(self.tensors["seed_agent"], "release"), src)  # as zero_to_fp32 writes it
            convert(src, out, str(SFT_CONFIG), self.sft_overrides())
        return out

    def sft_task(self, supervision: str = "last"):
        """The story_sft task (configs/story_sft/base.yaml) on the Llama-2 and Qwen-VL folders, with the
        converted release agent as model.init_weights."""
        from src.config import load_config
        from src.tasks import build_task

        tasks = self.__dict__.setdefault("_sft", {})
        if supervision not in tasks:
            cfg = load_config(SFT_CONFIG, self.sft_overrides(supervision) + [f"model.init_weights={self.agent_weights()}"])
            tasks[supervision] = build_task(cfg).eval()
        return tasks[supervision]

    # ---- the de-tokenizer: an SDXL folder, the release's pytorch_model.bin converted ---------------------
    def sdxl_folder(self) -> Path:
        from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

        folder = self.root / "stable-diffusion-xl-base-1.0"
        if not (folder / "unet" / "config.json").is_file():
            unet = UNet2DConditionModel(**self.meta["seed_detokenizer"]["unet"])
            unet.load_state_dict({k[len("unet."):]: v for k, v in group(self.tensors["seed_detokenizer"], "release").items()
                                  if k.startswith("unet.")})
            unet.save_pretrained(folder / "unet")
            vae = AutoencoderKL(**self.meta["seed_e2e"]["vae"])
            vae.load_state_dict({k[len("vae."):]: v for k, v in group(self.tensors["seed_e2e"], "release").items()})
            vae.save_pretrained(folder / "vae")
            EulerDiscreteScheduler(**self.meta["seed_e2e"]["scheduler"]).save_pretrained(folder / "scheduler")
        return folder

    def detokenizer_weights(self, case: str = "seed_detokenizer", normalize: str = "released") -> Path:
        from src.tools.convert.seed_detokenizer import convert

        out = self.root / case / "detokenizer.safetensors"
        if not out.is_file():
            state = group(self.tensors[case], "release")
            if not any(k.startswith("unet.") for k in state):  # a resampler-only case: the tiny UNet's weights
                state.update({k: v for k, v in group(self.tensors["seed_detokenizer"], "release").items()
                              if k.startswith("unet.")})
            src = self.root / case / "pytorch_model.bin"
            src.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, src)
            convert(src, self.sdxl_folder(), out, heads=self.meta[case]["resampler"]["heads"], normalize=normalize)
        return out

    def detokenizer_task(self):
        """The detokenizer task (configs/detokenizer/base.yaml) on the SDXL folder, with the converted
        release weights as model.init_weights and the end-to-end case's sampling settings."""
        from src.config import load_config
        from src.tasks import build_task

        if "_detok" in self.__dict__:
            return self._detok
        e2e = self.meta["seed_e2e"]
        overrides = [f"model.pretrained={self.sdxl_folder()}", f"model.tokenizer_path={self.vit_file()}",
                     f"model.init_weights={self.detokenizer_weights()}", "model.gradient_checkpointing=false",
                     "data.name=parity", f"data.root={self.dataset()}", f"data.image_size={e2e['sd_size']}",
                     "sample.scheduler=EulerDiscreteScheduler", f"sample.num_inference_steps={e2e['steps']}",
                     f"sample.guidance_scale={e2e['guidance_scale']}"]
        self._detok = build_task(load_config(DETOKENIZER_CONFIG, overrides)).eval()
        return self._detok


def expected(world: World, case: str) -> dict[str, torch.Tensor]:
    return group(world.tensors[case], "expected")


# ---- the checks ---------------------------------------------------------------------------------------

def vit_rows(world: World) -> list[Row]:
    from src.models.qwen_vit import load_qwen_vit

    vit = load_qwen_vit(world.vit_file())
    with torch.no_grad():
        ours = vit(group(world.tensors["seed_vit"], "input")["pixel_values"])
    return [Row("visual tokenizer: Qwen-VL ViT-G + attention pool", f"{QWEN}:VisionTransformerWithAttnPool",
                "src/models/qwen_vit.py:QwenViT", "reload_qwen_vit", max_abs_diff(ours, expected(world, "seed_vit")["features"]))]


def agent_rows(world: World) -> list[Row]:
    """Tokenization, the ViT's inputs and features, both resamplers, the LLM, the losses."""
    from src.models.story_mllm import regression_loss

    exp, meta = expected(world, "seed_agent"), world.meta["seed_agent"]
    task = world.sft_task("last")
    data = task.dataset("train")
    item = data[0]
    batch = task.collate([item])
    last = meta["last_beat"]
    seqs, _ = task.sequences(batch, [last], "last")
    seq = seqs[0]
    rows = []
    convert = "convert_seed_agent"
    # tokenization: ids and masks; labels shifted (ours: the token a position predicts)
    ids, labels = torch.tensor(seq.input_ids), torch.tensor(seq.targets)
    release_targets = torch.cat([exp["labels"][1:], torch.tensor([-100])])
    rows.append(Row("agent sample: token ids (<s> beats </s>, [INST], image tokens)", DATA,
                    "src/data/story_sequence.py:build_sequence", "-", max_abs_diff(ids, exp["input_ids"])))
    rows.append(Row("agent sample: supervised tokens (labels)", DATA, "src/data/story_sequence.py:build_sequence",
                    "-", max_abs_diff(labels, release_targets)))
    rows.append(Row("agent sample: image positions (ids_cmp_mask, ids_gen_mask)", DATA,
                    "src/data/story_sequence.py:build_sequence", "-",
                    max(max_abs_diff(torch.tensor(seq.cmp_mask), exp["ids_cmp_mask"]),
                        max_abs_diff(torch.tensor(seq.gen_mask), exp["ids_gen_mask"]))))
    # the ViT's input: the release's transform of each frame vs our frame loading + preprocess
    used = list(range(last + 1))
    pixels = task.visual_tokenizer.preprocess(batch["pixel_values"][used])
    rows.append(Row("ViT input: frame resize + CLIP normalisation (the story's frames)",
                    "SEED-Story src/processer/transforms.py:get_transform(clip, keep_ratio=False)",
                    "src/data/transforms.py:load_frame + src/models/visual_tokenizer.py:VisualTokenizer.preprocess",
                    "-", max_abs_diff(pixels, exp["vit_pixels"])))
    with torch.no_grad():
        out = task.teacher_forced(batch, seqs)
        features = task.visual_tokenizer(batch["pixel_values"][used])
        tokens = task.mllm.input_resampler(exp["image_embeds"])
        hidden = out["hidden"][0]
        logits = task.mllm.llm.logits_at(hidden)
        regressed_from_release = task.mllm.output_resampler(
            exp["hidden"][exp["ids_gen_mask"]].view(-1, meta["agent"]["num_image_tokens"], hidden.shape[-1]))
        losses = task.losses(batch, seqs)
    rows.append(Row("ViT features of the story's frames (tokenizer + preprocessing)",
                    f"{QWEN}:VisionTransformerWithAttnPool + transforms.py",
                    "src/models/visual_tokenizer.py:VisualTokenizer", "reload_qwen_vit",
                    max_abs_diff(features, exp["image_embeds"])))
    rows.append(Row("agent input resampler (features -> K input tokens)", f"{QWEN}:Resampler (grid 8, nn.LayerNorm)",
                    "src/models/resamplers.py:QwenAttnPool", convert, max_abs_diff(tokens, exp["input_tokens"])))
    rows.append(Row("agent LLM: last hidden states (LoRA, vocab split at the image tokens)",
                    "SEED-Story src/models_clm/modeling_llama_xformer.py:LlamaForCausalLM + peft 0.4 LoRA "
                    "(peft_models.py:get_peft_model_with_resize_embedding)",
                    "src/models/llm_with_image_tokens.py:LLMWithImageTokens", convert, max_abs_diff(hidden, exp["hidden"])))
    rows.append(Row("agent LLM: logits over V + 66 (embed_tokens / lm_head split)",
                    "modeling_llama_xformer.py:LlamaForCausalLM.lm_head (resized)",
                    "LLMWithImageTokens.logits_at", convert, max_abs_diff(logits, exp["logits"])))
    rows.append(Row("agent output resampler (hidden at the image tokens -> features)",
                    f"{QWEN}:Resampler (grid 16, nn.LayerNorm)", "src/models/resamplers.py:QwenAttnPool", convert,
                    max_abs_diff(regressed_from_release, exp["regressed"])))
    rows.append(Row("agent regressed features (the whole teacher-forced pass)", f"{MODELS}:ContinuousLVLM.forward",
                    "src/tasks/story_sft.py:StorySFTTask.teacher_forced", convert,
                    max_abs_diff(out["regressed"], exp["regressed"])))
    rows.append(Row("agent CE loss (last beat supervised)", f"{MODELS}:ContinuousLVLM.forward (lm_loss)",
                    "src/tasks/story_sft.py:StorySFTTask.losses (ce)", convert, max_abs_diff(losses["ce"], exp["lm_loss"])))
    rows.append(Row("cosine regression loss", f"{MODELS}:cosine_loss",
                    "src/models/story_mllm.py:regression_loss (cosine)", "-",
                    max_abs_diff(regression_loss(exp["regressed"], exp["image_embeds"][exp["embeds_gen_mask"]], "cosine"),
                                 exp["rec_loss"])))
    rows.append(Row("agent total loss (1 CE + 1 cosine)", f"{MODELS}:ContinuousLVLM.forward (total_loss)",
                    "src/tasks/story_sft.py:StorySFTTask.losses (loss)", convert,
                    max_abs_diff(losses["loss"], exp["total_loss"])))
    return rows


def stage3_rows(world: World) -> list[Row]:
    """Stage 3's item of the story's last beat: the tokenizer frames, the SDXL target and its time ids,
    in our default (`model.frames=squash`) and in the release's mode (`model.frames=released`)."""
    from src.models.visual_tokenizer import build_visual_tokenizer
    from src.tasks.story_adapt import AdaptItems

    preprocess = build_visual_tokenizer("qwen_vit", str(world.vit_file())).preprocess
    exp, meta = expected(world, "seed_agent"), world.meta["seed_agent"]
    where, ours = f"{DATA} (stage 3: keep-ratio transforms)", "src/tasks/story_adapt.py:AdaptItems"
    rows = []
    for frames in ("released", "squash"):
        items = AdaptItems(world.dataset(), "train", world.meta["seed_vit"]["visual"]["image_size"], meta["sd_size"],
                           frames)
        item = items[items.index.index((0, meta["last_beat"]))]
        pixels = preprocess(item["pixel_values"])
        deliberate = None if frames == "released" else "model.frames=released"
        mode = f"model.frames={frames}"
        rows += [Row(f"stage-3 tokenizer frames ({mode})", where, ours, "-",
                     max_abs_diff(pixels, exp["stage3_vit_pixels"]), deliberate=deliberate),
                 Row(f"stage-3 SDXL target frame ({mode})", f"{DATA} + transforms.py:get_transform(sd)", ours, "-",
                     max_abs_diff(item["target_pixels"], exp["sd_pixels"]), deliberate=deliberate),
                 Row(f"stage-3 SDXL time ids ({mode})", f"{DATA} (calculate_new_dimensions)",
                     f"{ours} + src/models/detokenizer.py:released_time_ids", "-",
                     max_abs_diff(item["time_ids"], exp["time_ids"].float()), deliberate=deliberate)]
    return rows


def detokenizer_rows(world: World) -> list[Row]:
    from diffusers import UNet2DConditionModel

    from src.models.detokenizer import load_detokenizer

    rows = []
    convert = "convert_seed_detokenizer"
    task = world.detokenizer_task()
    detok = task.detokenizer
    inp, exp = group(world.tensors["seed_detokenizer"], "input"), expected(world, "seed_detokenizer")
    with torch.no_grad():
        states, pooled = detok.encode(inp["image_embeds"])
        noise_pred = detok(inp["noisy_latents"], inp["timesteps"], inp["image_embeds"], inp["time_ids"])
    rows.append(Row("de-tokenizer resampler: encoder_hidden_states + pooled text_embeds",
                    f"{IPA}/resampler.py:ResamplerXLV2", "src/models/resamplers.py:ResamplerXL", convert,
                    max_abs_diff((states, pooled), (exp["encoder_hidden_states"], exp["pooled"]))))
    rows.append(Row("de-tokenizer UNet step with SDXL added conditions (text_embeds, time_ids)",
                    f"{IPA}/adapter_modules.py:SDXLAdapter.forward", "src/models/detokenizer.py:Detokenizer.forward",
                    convert, max_abs_diff(noise_pred, exp["noise_pred"])))
    loss = task.objective.loss(noise_pred, task.objective.target(None, inp["noise"], inp["timesteps"]), inp["timesteps"])
    rows.append(Row("de-tokenizer loss (epsilon MSE)", f"{IPA}/adapter_modules.py:SDXLAdapter.forward (total_loss)",
                    "src/tasks/diffusion.py:DiffusionObjective.loss (snr_gamma 0)", convert, max_abs_diff(loss, exp["loss"])))
    if "seedx_detokenizer" in world.tensors:
        unet = UNet2DConditionModel.from_pretrained(world.sdxl_folder(), subfolder="unet")
        seedx = load_detokenizer(unet, world.detokenizer_weights("seedx_detokenizer", normalize="none")).eval()
        inp_x, exp_x = group(world.tensors["seedx_detokenizer"], "input"), expected(world, "seedx_detokenizer")
        with torch.no_grad():
            states, pooled = seedx.encode(inp_x["image_embeds"])
        rows.append(Row("SEED-X de-tokenizer resampler (normalize: False)",
                        "SEED-X src/models/detokenizer/resampler.py:ResamplerXLV2",
                        "src/models/resamplers.py:ResamplerXL (normalize none)", f"{convert} --normalize none",
                        max_abs_diff((states, pooled), (exp_x["encoder_hidden_states"], exp_x["pooled"]))))
    return rows


def e2e_rows(world: World) -> list[Row]:
    """One beat, end to end: our StoryWriter (decode policy "released", the dense cache) writes from the
    first frame and caption and regresses the image's features; SeedStoryPipeline.draw_features draws them with the
    de-tokenizer task's pipeline (its Euler scheduler, CFG against the empty image, the generator seeded
    as the release's)."""
    from src.models.story_cache import SinkSettings
    from src.pipelines.story_writer import DecodeSettings, StoryWriter

    meta, exp = world.meta["seed_e2e"], expected(world, "seed_e2e")
    sft, detok = world.sft_task(), world.detokenizer_task()
    frame = group(world.tensors["seed_e2e"], "input")["frame"]
    writer = StoryWriter(sft.mllm, sft.special, "dense", SinkSettings(),
                         DecodeSettings(policy="released", max_text_tokens=meta["max_new_tokens"]),
                         sft.cfg.model.separator)
    with torch.no_grad():
        pixels = load_tokenizer_frame(world, frame, sft.visual_tokenizer.image_size)
        features = sft.visual_tokenizer(pixels[None])[0]
        beats, stats = writer.write(meta["caption"], features, 2)
        if len(beats) < 2:
            raise RuntimeError(f"our writer drew no image ({stats['stop']}); the release's beat was "
                               f"{exp['generate_ids'].tolist()}")
        written = list(beats[1].token_ids) + [sft.special.boi, *sft.special.img, sft.special.eoi]
        regressed = beats[1].features[None]

        def draw(kind):
            out = detok.pipeline().draw_features([beats[1].features], [torch.Generator().manual_seed(meta["seed"])],
                                                 output_type=kind)
            return torch.stack([torch.as_tensor(x) for x in out])

        latents, images = draw("latent"), draw("np")
    drawn = "SEED-Story src/models_ipa/adapter_modules.py:SDXLAdapter.generate (gen_george.py)"
    both = "convert_seed_agent + convert_seed_detokenizer"
    note = f"{meta['steps']} Euler steps, CFG {meta['guidance_scale']}"
    return [
        Row("end to end: the prompt (<s> caption <img> features </img>)", "SEED-Story src/inference/gen_george.py",
            "src/pipelines/story_writer.py:StoryWriter.start", "-",
            max_abs_diff(torch.tensor(beats[0].token_ids), exp["prompt_ids"][:len(beats[0].token_ids)])),
        Row("end to end: the beat's tokens (greedy, image-token logits processor)",
            f"{MODELS}:ContinuousLVLM.generate + generation.py:AutoImageTokenGenerationProcessor",
            "src/pipelines/story_writer.py:StoryWriter (decode policy released)", both,
            max_abs_diff(torch.tensor(written), exp["generate_ids"])),
        Row("end to end: the beat's regressed features", f"{MODELS}:ContinuousLVLM.generate (img_gen_feat)",
            "src/pipelines/story_writer.py:StoryWriter._image", both, max_abs_diff(regressed, exp["regressed"])),
        Row("end to end: final latents", drawn, "src/pipelines/seed_story.py:SeedStoryPipeline.draw_features", both,
            max_abs_diff(latents, exp["latents"]), tolerance=END_TO_END_TOLERANCE, note=note),
        Row("end to end: final images", drawn, "src/pipelines/seed_story.py:SeedStoryPipeline.draw_features", both,
            max_abs_diff(images, exp["images"]), tolerance=END_TO_END_TOLERANCE, note=note),
    ]


def load_tokenizer_frame(world: World, frame: torch.Tensor, size: int) -> torch.Tensor:
    """The given first frame as generation loads it (story_frame at the tokenizer's size, its filter)."""
    from src.data.stories import read_split
    from src.data.transforms import story_frame
    from src.models.visual_tokenizer import INPUT_RESAMPLE

    root = world.dataset()
    story = read_split(root, "train")[1][0]
    if not torch.equal(frame, world.tensors["seed_agent"]["input/frame_0"]):
        raise ValueError("the end-to-end case's first frame is not the story's first frame")
    return story_frame(root, story, 0, size, INPUT_RESAMPLE)


def bf16_rows(world: World) -> list[Row]:
    """Our modules cast to bf16 as the release casts its own, on the same inputs. Each row's tolerance is
    twice the original code's own bf16-vs-fp32 difference for that output: two bf16 computations of one
    function, each within that rounding of the exact value, can be that far apart. A cast in the wrong
    place (a resampler run in fp32, or a norm in bf16) shows as a larger difference."""
    import copy

    from src.models.qwen_vit import load_qwen_vit

    bf16, meta, exp = torch.bfloat16, world.meta["seed_bf16"], expected(world, "seed_bf16")
    agent_exp = expected(world, "seed_agent")
    task = copy.deepcopy(world.sft_task()).to(bf16)
    detok = copy.deepcopy(world.detokenizer_task().detokenizer).to(bf16)
    last = world.meta["seed_agent"]["last_beat"]
    with torch.no_grad():
        features = load_qwen_vit(world.vit_file()).to(bf16)(group(world.tensors["seed_vit"], "input")["pixel_values"])
        batch = task.collate([task.dataset("train")[0]])
        seqs, _ = task.sequences(batch, [last], "last")
        out = task.teacher_forced(batch, seqs)
        tokens = task.mllm.input_resampler(exp["image_embeds"].to(bf16))
        states, pooled = detok.encode(agent_exp["image_embeds"])
    rows = []
    for name, what, ours_where, value in (
            ("features", "visual tokenizer", "src/models/qwen_vit.py:QwenViT", features),
            ("input_tokens", "agent input resampler", "src/models/resamplers.py:QwenAttnPool", tokens),
            ("hidden", "agent LLM last hidden states", "src/models/llm_with_image_tokens.py:LLMWithImageTokens",
             out["hidden"][0]),
            ("regressed", "agent regressed features (teacher-forced pass)", "src/tasks/story_sft.py:StorySFTTask.teacher_forced",
             out["regressed"]),
            ("encoder_hidden_states", "de-tokenizer resampler (encoder_hidden_states)",
             "src/models/resamplers.py:ResamplerXL", states),
            ("pooled", "de-tokenizer resampler (pooled)", "src/models/resamplers.py:ResamplerXL", pooled)):
        rows.append(Row(f"bf16: {what}", "the fp32 rows' original code, cast to bf16", ours_where, "as fp32",
                        max_abs_diff(value.float(), exp[name]), tolerance=2 * meta["spread"][name],
                        note=f"tolerance {2 * meta['spread'][name]:.1e}: twice the original's own bf16 rounding"))
    return rows


def compare(cases: dict, workdir: Path) -> list[Row]:
    """cases: name -> (tensors, meta). Rows for every case present."""
    world = World(workdir, cases)
    rows = []
    if "seed_vit" in cases:
        rows += vit_rows(world)
    if "seed_agent" in cases:
        rows += agent_rows(world)
        rows += stage3_rows(world)
    if "seed_detokenizer" in cases:
        rows += detokenizer_rows(world)
    if "seed_e2e" in cases:
        rows += e2e_rows(world)
    if "seed_bf16" in cases:
        rows += bf16_rows(world)
    return rows
