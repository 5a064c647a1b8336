"""The release side of the SEED-Story parity checks (docs/fidelity.md): each original module built at toy
size (src/tools/parity/seed_tiny.py) with seeded random weights, its state dict as the release saves it,
inputs, and the original code's outputs. A case is flat tensors under `release/` (the release's state
dict, keys as in its checkpoint), `base/` (weights the release reads from elsewhere: Llama-2), `input/`
and `expected/`, plus a JSON-able `meta`: exactly what a golden file holds (tests/assets/parity/), so the
CI tests compare our code with these outputs without the original code.

Everything here runs inside seed_release.release_env (`rel`: the release's modules).
"""
from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from src.tools.parity import seed_tiny as tiny
from src.tools.parity.common import randomize_, seeded

# The number of context beats decode_long_story_data draws (random.randint(0, F - 2)) under this seed:
# 1 of the story's 3 beats, so a sample holds an input image, a context beat and the target beat.
DECODE_SEED = 0
MAX_LENGTH = 96        # the release pads to it (1280 released)
MAX_NEW_TOKENS = 40    # the release's generate budget for the sample (500 released)
STEPS = 4              # de-tokenizer sampling steps (50 released)
GUIDANCE = 7.5         # the release's CFG scale
DRAW_SEED = 42         # adapter.generate's default seed (every frame)
BOI_HEAD_SCALE = 30.0  # the toy agent's `<img>` row of lm_head, scaled (its first added token: id V)


@dataclass
class Case:
    name: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def put(self, group: str, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            self.tensors[f"{group}/{key}"] = value.detach().cpu().contiguous()


def randomize_trainable_(module: torch.nn.Module, seed: int, scale: float = 0.02) -> None:
    """Seeded random values for the parameters the release trains (requires_grad: LoRA, the norms'
    saved copies, embeddings, head, resamplers), in name order; the frozen ones (Llama-2's, the fixed
    2D sin-cos positions) stay as they are. Norm scales are drawn around 1."""
    gen = seeded(seed)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters()):
            if param.requires_grad:
                noise = torch.randn(param.shape, generator=gen) * scale
                is_scale = name.endswith("weight") and ("norm" in name or ".ln_" in name)
                param.copy_(noise + 1.0 if is_scale else noise)


# ---- the visual tokenizer -----------------------------------------------------------------------------

def build_vit(rel, seed: int):
    """qwen_visual.py:VisionTransformerWithAttnPool at toy size, seeded random weights except the
    attention pool's fixed 2D sin-cos positions (a frozen parameter, stored in the release's weights)."""
    vit = rel.qwen_visual.VisionTransformerWithAttnPool(**tiny.VISUAL)
    positions = vit.attn_pool.pos_embed.detach().clone()
    randomize_(vit, seed)
    with torch.no_grad():
        vit.attn_pool.pos_embed.copy_(positions)
    return vit.eval()


def vit_case(rel, vit) -> Case:
    """Qwen-VL's ViT + attention pool: qwen_visual.py:VisionTransformerWithAttnPool."""
    case = Case("seed_vit", meta={"visual": tiny.VISUAL})
    case.put("release", vit.state_dict())
    pixels = torch.randn(2, 3, tiny.VISUAL["image_size"], tiny.VISUAL["image_size"], generator=seeded(11))
    with torch.no_grad():
        case.put("input", {"pixel_values": pixels})
        case.put("expected", {"features": vit(pixels)})
    return case


# ---- the agent ----------------------------------------------------------------------------------------

def build_agent(rel, tokenizer_spec: dict, base_state: dict, seed: int):
    """ContinuousLVLM as configs/clm_models/{llama2chat7b_lora,agent_7b_sft}.yaml build it: the
    xformers Llama (Llama-2's weights), the vocabulary resized to V + 66 and peft 0.4 LoRA
    (peft_models.py:get_peft_model_with_resize_embedding), Qwen-VL Resamplers in and out."""
    vocab = len(tiny.llama_tokenizer(tokenizer_spec))
    llm = rel.llama.LlamaForCausalLM(tiny.llama_config(vocab))
    missing, unexpected = llm.load_state_dict(base_state, strict=False)  # from_pretrained: inv_freq is computed
    if unexpected or any(not key.endswith("rotary_emb.inv_freq") for key in missing):
        raise RuntimeError(f"the base Llama does not fit the release's class: {missing} {unexpected}")
    a = tiny.AGENT
    peft_config = rel.peft.LoraConfig(
        r=a["lora_r"], lora_alpha=a["lora_alpha"], lora_dropout=a["lora_dropout"], task_type="CAUSAL_LM",
        target_modules=["q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "down_proj", "up_proj"],
        modules_to_save=["input_layernorm", "post_attention_layernorm", "norm"])
    added = len(tiny.image_token_names(a["num_image_tokens"]))
    peft_llm = rel.peft_models.get_peft_model_with_resize_embedding(llm, peft_config=peft_config,
                                                                    vocab_size=vocab + added, torch_dtype="fp32")
    width, features = tiny.LLAMA["hidden_size"], tiny.VISUAL["output_dim"]
    grid_in, grid_out = int(a["num_image_tokens"] ** 0.5), int(tiny.VISUAL["n_queries"] ** 0.5)
    agent = rel.models.ContinuousLVLM.from_pretrained(
        llm=peft_llm,
        input_resampler=rel.qwen_visual.Resampler(grid_size=grid_in, embed_dim=width, num_heads=a["input_heads"],
                                                  kv_dim=features),
        output_resampler=rel.qwen_visual.Resampler(grid_size=grid_out, embed_dim=features,
                                                   num_heads=a["output_heads"], kv_dim=width),
        lm_loss_scale=1.0, rec_loss_scale=1.0)
    randomize_trainable_(agent, seed)
    with torch.no_grad():  # a louder <img> row: the toy agent starts an image after a few words
        agent.llm.get_output_embeddings().weight[vocab] *= BOI_HEAD_SCALE
    return agent.eval()


def decode_story(rel, tokenizer, root: Path, line: dict, keep_ratio: bool = False) -> dict:
    """The release's stage-2/3 sample of the story (story_telling.py:decode_long_story_data) with the
    release's transforms: configs/processer/qwen_448_transform.yaml (stage 2; keep_ratio: stage 3's
    qwen_448_transform_keep_ratio.yaml) and sd_transform_1024.yaml (stage 3's targets)."""
    image_transform = rel.transforms.get_transform(type="clip", keep_ratio=keep_ratio,
                                                   image_size=tiny.VISUAL["image_size"])
    sd_transform = rel.transforms.get_transform(type="sd", keep_ratio=True, image_size=tiny.SD_SIZE)
    random.seed(DECODE_SEED)
    k = tiny.AGENT["num_image_tokens"]
    sample = rel.story_telling.decode_long_story_data(
        ("parity_0", line), image_dir=str(root), tokenizer=tokenizer, story_len=len(line["images"]),
        image_transform=image_transform, sd_image_transform=sd_transform, max_length=MAX_LENGTH,
        min_resolution=8, instruction_prompt="{instruction}", min_aspect_ratio=0.2, num_img_in_tokens=k,
        num_img_out_tokens=k)
    if not sample:
        raise RuntimeError("decode_long_story_data dropped the parity story")
    return sample


def agent_case(rel, vit, agent, tokenizer_spec: dict, base_state: dict, frames: list) -> Case:
    """The agent's teacher-forced pass over the release's sample of the story, with its pieces."""
    tokenizer = tiny.release_tokenizer(tokenizer_spec, tiny.AGENT["num_image_tokens"])
    case = Case("seed_agent", meta={"tokenizer": tokenizer_spec, "captions": tiny.CAPTIONS, "agent": tiny.AGENT,
                                    "llama": tiny.LLAMA, "separator": tiny.SEPARATOR, "vit_case": "seed_vit",
                                    "sd_size": tiny.SD_SIZE})
    case.put("release", agent.state_dict())
    case.put("base", base_state)
    with tempfile.TemporaryDirectory() as tmp:
        root, line = tiny.write_dataset(Path(tmp), frames, tiny.CAPTIONS)
        sample = decode_story(rel, tokenizer, root, line)
        stage3 = decode_story(rel, tokenizer, root, line, keep_ratio=True)
    length = int(sample["attention_mask"].sum())
    last = int(sample["embeds_gen_mask"].nonzero()[0, 0])
    case.meta.update({"last_beat": last, "length": length})
    case.put("input", {f"frame_{k}": frame for k, frame in enumerate(frames)})

    # Eval mode (no LoRA dropout) with the KV-cache head off, as train_sdxl_img2img_llm.py sets it for
    # the frozen agent; the fork's eval-mode cache bookkeeping needs input_ids otherwise.
    agent.llm.base_model.model.use_kv_cache_head = False
    captured = {}
    hooks = [agent.input_resampler.register_forward_hook(lambda m, i, o: captured.__setitem__("input_tokens", o)),
             agent.llm.register_forward_hook(lambda m, i, o: captured.__setitem__("llm", o))]
    with torch.no_grad():
        image_embeds = vit(sample["images"])
        out = agent(input_ids=sample["input_ids"][None], attention_mask=sample["attention_mask"][None],
                    labels=sample["labels"][None], image_embeds=image_embeds,
                    embeds_gen_mask=sample["embeds_gen_mask"], embeds_cmp_mask=sample["embeds_cmp_mask"],
                    ids_gen_mask=sample["ids_gen_mask"][None], ids_cmp_mask=sample["ids_cmp_mask"][None],
                    return_recon_image_embeds=True)
    for hook in hooks:
        hook.remove()
    valid = slice(0, length)
    case.put("expected", {
        "input_ids": sample["input_ids"][valid], "labels": sample["labels"][valid],
        "ids_cmp_mask": sample["ids_cmp_mask"][valid], "ids_gen_mask": sample["ids_gen_mask"][valid],
        "embeds_cmp_mask": sample["embeds_cmp_mask"], "embeds_gen_mask": sample["embeds_gen_mask"],
        "vit_pixels": sample["images"], "image_embeds": image_embeds, "input_tokens": captured["input_tokens"],
        "hidden": captured["llm"].hidden_states[-1][0, valid], "logits": captured["llm"].logits[0, valid],
        "regressed": out["recon_image_embeds"], "lm_loss": out["lm_loss"], "rec_loss": out["rec_loss"],
        "total_loss": out["total_loss"], "stage3_vit_pixels": stage3["images"], "sd_pixels": stage3["sd_images"],
        "time_ids": stage3["time_ids"]})
    return case


# ---- the de-tokenizer ---------------------------------------------------------------------------------

def build_adapter(rel, resampler_module, seed: int, **resampler_kwargs):
    """SDXLAdapter (models_ipa/adapter_modules.py) around the tiny SDXL-layout UNet, as
    configs/detokenizer/detokenizer_sdxl_qwen_vit_*.yaml builds it."""
    resampler = resampler_module.ResamplerXLV2(**tiny.RESAMPLER, **resampler_kwargs)
    randomize_(resampler, seed + 1)
    adapter = rel.adapter.SDXLAdapter.from_pretrained(unet=tiny.tiny_unet(seed), resampler=resampler,
                                                      pretrained_model_path=None)
    return adapter.eval()


def detokenizer_case(rel, adapter, name: str = "seed_detokenizer", with_unet: bool = True) -> Case:
    """The de-tokenizer's conditioning and one denoising step with SDXL's added conditions
    (SDXLAdapter.forward: ResamplerXLV2 -> encoder_hidden_states, text_embeds; time_ids)."""
    case = Case(name, meta={"resampler": tiny.RESAMPLER, "unet": tiny.UNET})
    state = adapter.state_dict()
    case.put("release", state if with_unet else {k: v for k, v in state.items() if k.startswith("resampler.")})
    gen = seeded(21)
    batch = 2
    inputs = {"image_embeds": torch.randn(batch, tiny.VISUAL["n_queries"], tiny.VISUAL["output_dim"], generator=gen),
              "noisy_latents": torch.randn(batch, 4, tiny.UNET["sample_size"], tiny.UNET["sample_size"], generator=gen),
              "noise": torch.randn(batch, 4, tiny.UNET["sample_size"], tiny.UNET["sample_size"], generator=gen),
              "timesteps": torch.tensor([17, 803]),
              # (h, w) original, crop (top, left) as the release computes it for a 30x52 frame, target
              "time_ids": torch.tensor([[30, 52, 6, 0, 16, 16], [44, 26, 0, 3, 16, 16]])}
    case.put("input", inputs)
    with torch.no_grad():
        states, pooled = adapter.encode_image_embeds(inputs["image_embeds"])
        out = adapter(noisy_latents=inputs["noisy_latents"], timesteps=inputs["timesteps"],
                      image_embeds=inputs["image_embeds"], text_embeds=None, noise=inputs["noise"],
                      time_ids=inputs["time_ids"])
    case.put("expected", {"encoder_hidden_states": states, "pooled": pooled, "noise_pred": out["noise_pred"],
                          "loss": out["total_loss"]})
    return case


# ---- one beat, end to end -----------------------------------------------------------------------------

def write_beat(rel, vit, agent, tokenizer_spec: dict, frames: list) -> dict:
    """src/inference/gen_george.py's first call: the first frame and caption as the prompt
    (<s> caption <img> [features] </img>), ContinuousLVLM.generate (greedy, with its image-token logits
    processor) writes on and regresses the features of the last image it drew. The budget ends the
    sample right after the first image (a trained agent ends its beat with </s>; this toy one would
    go on drawing): max_new_tokens is first MAX_NEW_TOKENS, then the first `</img>`'s position."""
    k = tiny.AGENT["num_image_tokens"]
    tokenizer = tiny.release_tokenizer(tokenizer_spec, k)
    image_transform = rel.transforms.get_transform(type="clip", keep_ratio=False, image_size=tiny.VISUAL["image_size"])
    agent.llm.base_model.model.use_kv_cache_head = False
    image_tokens = "<img>" + "".join(f"<img_{j:05d}>" for j in range(k)) + "</img>"
    input_ids = [tokenizer.bos_token_id] + tokenizer.encode(tiny.CAPTIONS[0] + image_tokens, add_special_tokens=False)
    boi_id, eoi_id = tokenizer.convert_tokens_to_ids("<img>"), tokenizer.convert_tokens_to_ids("</img>")
    boi, eoi = input_ids.index(boi_id), input_ids.index(eoi_id)
    input_ids = torch.tensor(input_ids)[None]
    ids_cmp_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    ids_cmp_mask[0, boi + 1:eoi] = True
    with torch.no_grad():
        image_embeds = vit(image_transform(Image.fromarray(frames[0].numpy()))[None])

    def generate(budget: int) -> dict:
        return agent.generate(tokenizer=tokenizer, input_ids=input_ids, image_embeds=image_embeds,
                              embeds_cmp_mask=torch.tensor([True]), ids_cmp_mask=ids_cmp_mask, max_new_tokens=budget,
                              num_img_gen_tokens=k, dtype=torch.float32, device="cpu")

    first = generate(MAX_NEW_TOKENS)["generate_ids"].tolist()
    if eoi_id not in first or first.index(boi_id) == 0:
        raise RuntimeError(f"the tiny agent's greedy beat {first} has no text before an image; the end-to-end "
                           f"sample needs one (SEEDS['agent'] in src/tools/parity/seed_story.py)")
    output = generate(first.index(eoi_id) + 1)
    return {"prompt_ids": input_ids[0], "image_embeds": image_embeds, "generate_ids": output["generate_ids"],
            "regressed": output["img_gen_feat"]}


def e2e_case(rel, vit, adapter, beat: dict, frames: list, vae_seed: int) -> Case:
    """The beat's regressed features drawn by SDXLAdapter.generate (gen_george.py: Euler, CFG 7.5
    against the features of an all-zero ViT input, seed 42), to final latents and images."""
    vae = tiny.tiny_vae(vae_seed).eval()
    case = Case("seed_e2e", meta={"vit_case": "seed_vit", "agent_case": "seed_agent",
                                  "detokenizer_case": "seed_detokenizer", "vae": tiny.VAE, "scheduler": tiny.SCHEDULER,
                                  "max_new_tokens": len(beat["generate_ids"]), "steps": STEPS,
                                  "guidance_scale": GUIDANCE, "seed": DRAW_SEED, "sd_size": tiny.SD_SIZE,
                                  "caption": tiny.CAPTIONS[0]})
    case.put("release", {f"vae.{key}": value for key, value in vae.state_dict().items()})
    case.put("input", {"frame": frames[0]})
    image_transform = rel.transforms.get_transform(type="clip", keep_ratio=False, image_size=tiny.VISUAL["image_size"])
    adapter.init_pipe(vae=vae, scheduler=tiny.euler_scheduler(), visual_encoder=vit, image_transform=image_transform,
                      discrete_model=rel.discrete.DiscreteModleIdentity(), dtype=torch.float32, device="cpu")
    adapter.sdxl_pipe.set_progress_bar_config(disable=True)
    draw = dict(image_embeds=beat["regressed"], seed=DRAW_SEED, height=tiny.SD_SIZE, width=tiny.SD_SIZE,
                guidance_scale=GUIDANCE, num_inference_steps=STEPS, input_image_size=tiny.VISUAL["image_size"])
    latents = adapter.generate(**draw, output_type="latent")
    images = adapter.generate(**draw, output_type="np")
    case.put("expected", {**beat, "latents": latents, "images": torch.from_numpy(images)})
    return case


# ---- bf16 ---------------------------------------------------------------------------------------------

def bf16_case(rel, vit, agent, adapter, vit_case: Case, agent_case: Case) -> Case:
    """The same modules cast to bf16 as the release casts them (`.to(dtype=bf16)`, inputs cast at the
    module's door) on the fp32 cases' inputs. Each output's spread, max |bf16 - fp32| of the original
    code itself, is the scale our bf16 outputs are judged on (bf16 keeps 8 bits of mantissa)."""
    import copy

    bf16 = torch.bfloat16
    exp = {k[len("expected/"):]: v for k, v in agent_case.tensors.items() if k.startswith("expected/")}
    pixels = vit_case.tensors["input/pixel_values"]
    length = len(exp["input_ids"])
    with torch.no_grad():
        vit16, agent16 = copy.deepcopy(vit).to(bf16), copy.deepcopy(agent).to(bf16)
        resampler16 = copy.deepcopy(adapter.resampler).to(bf16)
        features = vit16(pixels.to(bf16))
        image_embeds = vit16(exp["vit_pixels"].to(bf16))
        tokens = agent16.input_resampler(image_embeds)
        captured = {}
        hook = agent16.llm.register_forward_hook(lambda m, i, o: captured.__setitem__("llm", o))
        out = agent16(input_ids=exp["input_ids"][None], attention_mask=torch.ones(1, length, dtype=torch.long),
                      labels=exp["labels"][None], image_embeds=image_embeds, embeds_gen_mask=exp["embeds_gen_mask"],
                      embeds_cmp_mask=exp["embeds_cmp_mask"], ids_gen_mask=exp["ids_gen_mask"][None],
                      ids_cmp_mask=exp["ids_cmp_mask"][None], return_recon_image_embeds=True)
        hook.remove()
        states, pooled = resampler16(exp["image_embeds"].to(bf16))
        states32, pooled32 = adapter.resampler(exp["image_embeds"])
    outputs = {"features": features, "image_embeds": image_embeds, "input_tokens": tokens,
               "hidden": captured["llm"].hidden_states[-1][0], "regressed": out["recon_image_embeds"],
               "encoder_hidden_states": states, "pooled": pooled}
    reference = {"features": vit_case.tensors["expected/features"], "image_embeds": exp["image_embeds"],
                 "input_tokens": exp["input_tokens"], "hidden": exp["hidden"], "regressed": exp["regressed"],
                 "encoder_hidden_states": states32, "pooled": pooled32}
    spread = {k: float((outputs[k].float() - reference[k].float()).abs().max()) for k in outputs}
    case = Case("seed_bf16", meta={"spread": spread, "vit_case": "seed_vit", "agent_case": "seed_agent",
                                   "detokenizer_case": "seed_detokenizer"})
    case.put("expected", {k: v.float() for k, v in outputs.items()})
    return case
