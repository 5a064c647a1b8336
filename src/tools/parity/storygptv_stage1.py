"""The release's side of the StoryGPT-V stage-1 checks: its own modules (models/model.py), data code
(models/data.py, models/transforms.py) and sampler (models/pipeline.py), imported from the user's clone,
built at the tiny sizes of sgv_tiny.py with seeded weights, run on sgv_cases.py's inputs.

Run-time shims for today's libraries (nothing of the clone is changed or copied):
  - transformers 5 has no `CLIPTextTransformer`; models/model.py imports it but never uses it: a stub;
  - transformers 5's CLIPTextModel has no `.text_model` and its encoder takes no `causal_attention_mask`:
    CustomTextEncoder is given the CLIPTextModel itself (same embeddings / encoder / final_layer_norm) and
    its encoder's forward turns the causal mask the release passes into the additive attention mask that
    transformers 4 applied (the state dict is unchanged);
  - the era's transformers saved `embeddings.position_ids` buffers: they are added to the written file;
  - diffusers 0.42's deprecated `_encode_prompt` fails without guidance (the release's text-only embedding):
    the pipeline gets 0.1x's behaviour (the prompt's embedding alone).
"""
from __future__ import annotations

import contextlib
import copy
import types
from pathlib import Path

import torch

from src.tools.parity.common import clone_on_path, module_with, seeded
from src.tools.parity.sgv_cases import GUIDANCE, IMAGE_TOKEN, RELEASE_MERGE_STEP, SEED, STEPS, STORY, reference_images, upsample
from src.tools.parity.sgv_tiny import (
    FRAME_SIZE,
    SCHEDULER,
    build_text_encoder,
    build_unet,
    build_vae,
    build_vision,
    randomized,
    state,
)
from src.tools.parity.storygptv_data import (
    inference_batches,
    name_token_case,
    real_reference_diffs,
    reference_case,
    release_args,
    training_marks,
    write_release_chars,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@contextlib.contextmanager
def release_modules(clone: Path):
    """(models.model, models.pipeline, models.data, models.transforms, models.utils) of the clone."""
    shim = module_with("transformers.models.clip.modeling_clip",
                       CLIPTextTransformer=type("CLIPTextTransformer", (), {}))
    with clone_on_path(clone, shims={"transformers.models.clip.modeling_clip": shim}):
        import models.data as data
        import models.model as model
        import models.pipeline as pipeline
        import models.transforms as transforms
        import models.utils as utils
        yield types.SimpleNamespace(model=model, pipeline=pipeline, data=data, transforms=transforms, utils=utils)


def _encoder_forward(self, inputs_embeds, attention_mask=None, causal_attention_mask=None,
                     output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
    """transformers 4's CLIPEncoder.forward signature: the causal mask is added to the attention mask."""
    if causal_attention_mask is not None:
        attention_mask = causal_attention_mask if attention_mask is None else attention_mask + causal_attention_mask
    return type(self).forward(self, inputs_embeds, attention_mask=attention_mask, **kwargs)


def custom_text_encoder(R, clip_text_model):
    encoder = R.model.CustomTextEncoder(clip_text_model)
    encoder.encoder.forward = types.MethodType(_encoder_forward, encoder.encoder)
    return encoder


def build_story_parts(R, seed: int = SEED) -> dict:
    """StoryModel's parts as train_ldm.sh trains them, with seeded weights, and the pretrained weights it
    started from that its state dict holds only in trained form: SD's UNet before fine-tuning and the CLIP
    vision tower before its last 2 layers trained."""
    text = randomized(build_text_encoder(), seed + 1, 0.1)
    vae = randomized(build_vae(), seed + 2, 0.05)
    sd_unet = randomized(build_unet(), seed + 3, 0.1)
    unet = randomized(build_unet(), seed + 4, 0.15)
    for name, module in unet.named_modules():  # peaked cross-attention: an attention loss far from 0
        if name.endswith("attn2"):
            randomized(module.to_q, seed + 8, 0.5)
            randomized(module.to_k, seed + 9, 0.5)
    clip = randomized(build_vision(), seed + 5, 0.05)
    tuned = copy.deepcopy(clip)
    for layer in tuned.vision_model.encoder.layers[-2:]:
        randomized(layer, seed + 6, 0.05)
    from torchvision import transforms as T

    image_encoder = R.model.CustomImageEncoder(tuned.vision_model, tuned.visual_projection,
                                                T.Normalize(CLIP_MEAN, CLIP_STD))
    fuse = randomized(R.model.FuseModule(text.config.hidden_size), seed + 7, 0.1)
    return {"text": custom_text_encoder(R, text), "image_encoder": image_encoder, "vae": vae, "unet": unet,
            "fuse": fuse, "pretrained": {"pretrained/unet": state(sd_unet), "pretrained/clip": state(clip)}}


def story_model(R, parts: dict, training: bool):
    """StoryModel over `parts`: as train_ldm.sh builds it (`training`: --enable_reg_loss, which hooks the
    UNet's cross-attention; --mask_loss, here on every batch) or as evaluate.py does (no hooks)."""
    args = release_args(R, enable_reg_loss=training, mask_loss=training, mask_loss_prob=1.0, operate_layers=5)
    model = R.model.StoryModel(parts["text"], parts["image_encoder"], parts["vae"], parts["unet"], args)
    model.postfuse_module = parts["fuse"]
    return model.eval()


def release_state_dict(model) -> dict[str, torch.Tensor]:
    """What accelerate's save_state wrote to pytorch_model.bin: StoryModel's state dict, with the
    position_ids buffers the era's transformers kept in it."""
    sd = state(model)
    sd["text_encoder.embeddings.position_ids"] = torch.arange(77)[None]
    patches = (model.image_encoder.image_size // model.image_encoder.vision_model.config.patch_size) ** 2
    sd["image_encoder.vision_model.embeddings.position_ids"] = torch.arange(patches + 1)[None]
    return sd


def clip_tokenizer(folder: Path):
    from src.tools.tiny.tokenizer import build_clip_tokenizer

    return build_clip_tokenizer(folder)


# ---- modules, losses and the sampler ---------------------------------------------------------------------
def module_case(R, model, tokenizer, seed: int = SEED) -> dict[str, torch.Tensor]:
    """Each converted module on its own: text encoder, image encoder, fuse, UNet."""
    gen = seeded(seed + 10)
    out = {}
    ids = tokenizer(["Fred is talking to Barney in the yard.", "Wilma and Betty are laughing"], padding="max_length",
                    max_length=77, return_tensors="pt").input_ids
    levels = torch.randint(0, 256, (2, 3, 28, 28), generator=gen, dtype=torch.uint8)
    text = torch.randn(2, 77, 8, generator=gen)
    objects = torch.randn(2, 4, 1, 8, generator=gen)
    mask = torch.zeros(2, 77, dtype=torch.bool)
    mask[0, [3, 6, 9]] = True
    mask[1, [2]] = True
    num_objects = torch.tensor([3, 1])
    latents, timesteps = torch.randn(2, 4, 16, 16, generator=gen), torch.tensor([10, 700])
    states = torch.randn(2, 77, 8, generator=gen)
    with torch.no_grad():
        out["expected/text"] = model.text_encoder(ids)[0]
        out["expected/image"] = model.image_encoder(upsample(levels)[None])[0, :, 0]
        out["expected/fuse"] = model.postfuse_module(text.clone(), objects, mask, num_objects)
        out["expected/unet"] = model.unet(latents, timesteps, states).sample
    out.update({"input/text/ids": ids, "input/image/levels": levels, "input/fuse/text": text,
                "input/fuse/objects": objects, "input/fuse/mask": mask, "input/fuse/num_objects": num_objects,
                "input/unet/latents": latents, "input/unet/timesteps": timesteps, "input/unet/states": states})
    return out


LOSS_CAPTIONS = [("Fred, Barney and Wilma are in the kitchen.", ["fred", "barney", "wilma"]),
                 ("Betty walks outside.", ["betty"]),
                 ("The room is empty.", [])]


def loss_case(R, model, tokenizer, seed: int = SEED) -> dict[str, torch.Tensor]:
    """StoryModel.forward (denoising loss restricted to the union mask, attention-control loss) on a batch
    of 3 + 1 + 0 characters; the latents, noise and timesteps it drew are kept as inputs."""
    from diffusers import DDPMScheduler

    gen = seeded(seed + 20)
    rows = [training_marks(R, tokenizer, caption, names) for caption, names in LOSS_CAPTIONS]
    ids = torch.stack([r[0] for r in rows])
    mask = torch.stack([r[1] for r in rows])
    idx, idx_mask = zip(*(R.data.prepare_image_token_idx(r[1][None], 4) for r in rows))
    counts = [len(r[2]) for r in rows]
    levels = torch.zeros(3, 4, 3, 28, 28, dtype=torch.uint8)
    segmaps = torch.zeros(3, 4, FRAME_SIZE, FRAME_SIZE)
    for b, count in enumerate(counts):
        for j in range(count):
            levels[b, j] = torch.randint(0, 256, (3, 28, 28), generator=gen, dtype=torch.uint8)
            y, x = torch.randint(0, FRAME_SIZE - 12, (2,), generator=gen).tolist()
            h, w = torch.randint(4, 12, (2,), generator=gen).tolist()
            segmaps[b, j, y:y + h, x:x + w] = 1
    batch = {"pixel_values": torch.rand(3, 3, FRAME_SIZE, FRAME_SIZE, generator=gen) * 2 - 1, "input_ids": ids,
             "image_token_mask": mask, "image_token_idx": torch.cat(idx), "image_token_idx_mask": torch.cat(idx_mask),
             "object_pixel_values": upsample(levels), "object_segmaps": segmaps, "num_objects": torch.tensor(counts)}
    scheduler = DDPMScheduler.from_config(SCHEDULER)  # train.py: DDPMScheduler from SD's scheduler folder
    drawn = {}
    add_noise = scheduler.add_noise

    def capture(latents, noise, timesteps):
        drawn.update(latents=latents.clone(), noise=noise.clone(), timesteps=timesteps.clone())
        return add_noise(latents, noise, timesteps)
    scheduler.add_noise = capture
    torch.manual_seed(seed + 21)
    losses = model(batch, scheduler)
    return {"input/train/ids": ids, "input/train/mask": mask, "input/train/levels": levels,
            "input/train/segmaps": segmaps, "input/train/num_objects": torch.tensor(counts),
            **{f"input/train/{k}": v for k, v in drawn.items()},
            "expected/train/denoise_loss": losses["denoise_loss"].detach(),
            "expected/train/reg_loss": losses["reg_loss"].detach()}


def _encode_prompt(self, prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt=None,
                   prompt_embeds=None, negative_prompt_embeds=None, **kwargs):
    """diffusers 0.1x's `_encode_prompt`: [negative; prompt] with guidance, the prompt alone without (0.42's
    deprecated wrapper fails without guidance, as the release calls it for its text-only embedding)."""
    positive, negative = self.encode_prompt(prompt, device, num_images_per_prompt, do_classifier_free_guidance,
                                            negative_prompt, prompt_embeds=prompt_embeds,
                                            negative_prompt_embeds=negative_prompt_embeds)
    return torch.cat([negative, positive]) if do_classifier_free_guidance else positive


def release_pipeline(R, model, tokenizer):
    """What evaluate.py / eval_llm.py assemble: SD's pipeline with StoryModel's modules and the delayed-
    conditioning sampler bound as `inference`."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=tokenizer, unet=model.unet,
                                   scheduler=PNDMScheduler.from_config(SCHEDULER),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe._encode_prompt = types.MethodType(_encode_prompt, pipe)
    pipe.inference = types.MethodType(R.pipeline.stable_diffusion_call_with_references_delayed_conditioning, pipe)
    return pipe


def char_ldm_frame(pipe, model, batch: dict, start_merge_step: int, generator, output_type: str):
    """One frame as evaluate.py draws it (and eval_llm.py its first): fuse, text-only embedding, sampler."""
    with torch.no_grad():
        object_embeds = model.image_encoder(batch["object_pixel_values"][None].float())
        states = model.text_encoder(batch["input_ids"])[0]
        fused = model.postfuse_module(states, object_embeds, batch["image_token_mask"], batch["num_objects"][None])
        text_only = pipe._encode_prompt(batch["prompt_text_only"], "cpu", 1, do_classifier_free_guidance=False)
        return pipe.inference(prompt_embeds=fused, prompt_embeds_text_only=text_only, num_inference_steps=STEPS,
                              height=FRAME_SIZE, width=FRAME_SIZE, guidance_scale=GUIDANCE, num_images_per_prompt=1,
                              cross_attention_kwargs={}, start_merge_step=start_merge_step, generator=generator,
                              output_type=output_type).images


def frame_seed(k: int) -> int:
    from src.pipelines.diffusion import frame_generator

    return frame_generator(SEED, 0, k, "cpu").initial_seed()


def sample_case(R, model, tokenizer, work: Path) -> tuple[dict, dict, dict]:
    """The 3-frame story drawn frame by frame with Char-LDM (final latents and images). Also returns what
    stage 2 reuses: the release's batches of the story and its pipeline."""
    batches = inference_batches(R, tokenizer, work / "story", [STORY])[0]
    pipe = release_pipeline(R, model, tokenizer)
    latents, images = [], []
    for k, batch in enumerate(batches):
        latents.append(char_ldm_frame(pipe, model, batch, RELEASE_MERGE_STEP, torch.Generator().manual_seed(frame_seed(k)),
                                      "latent")[0])
        images.append(torch.from_numpy(char_ldm_frame(pipe, model, batch, RELEASE_MERGE_STEP,
                                                      torch.Generator().manual_seed(frame_seed(k)), "np")[0]))
    meta = {"story": {"captions": [c for c, _ in STORY], "captions_coref": batches[0]["captions"],
                      "characters": [n for _, n in STORY], "ref_flags": [bool(b["ref_flag"]) for b in batches]},
            "steps": STEPS, "guidance": GUIDANCE, "release_start_merge_step": RELEASE_MERGE_STEP,
            "seeds": [frame_seed(k) for k in range(len(STORY))]}
    tensors = {"expected/sample/latents": torch.stack(latents), "expected/sample/images": torch.stack(images)}
    return tensors, meta, {"batches": batches, "pipe": pipe}


def release_cases(clone: Path, work: Path) -> dict[str, tuple[dict, dict]]:
    """Everything the golden files hold, from the original code: {"stage1": ..., "stage2": ...}, each
    (tensors: release/ (the released files' tensors), pretrained/, input/, expected/; meta)."""
    from src.data.references import load_reference
    from src.tools.parity.sgv_tiny import write_clip_folder
    from src.tools.parity.storygptv_stage2 import stage2_case

    work = Path(work)
    with release_modules(clone) as R:
        parts = build_story_parts(R)
        tokenizer = clip_tokenizer(work / "tokenizer")
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)  # what every release dataset does first
        model = story_model(R, parts, training=False)
        tensors = {f"release/{k}": v for k, v in release_state_dict(model).items()}
        for group, weights in parts["pretrained"].items():
            tensors.update({f"{group}/{k}": v for k, v in weights.items()})
        tensors.update(module_case(R, model, tokenizer))
        images = reference_images()
        write_release_chars(work / "story", images)
        sample, meta, story = sample_case(R, model, tokenizer, work)
        tensors.update(sample)
        tensors.update(reference_case(R, images, work))
        names, names_meta = name_token_case(R, tokenizer, work, images)
        tensors.update(names)
        meta.update(names_meta)
        # GILL reads the pretrained CLIP tower (a path with "clip" in it), not Char-LDM's tuned one
        clip = write_clip_folder(work / "openai" / "clip-vit-tiny", parts["pretrained"]["pretrained/clip"])
        stage2 = stage2_case(clone, work, R, model, tokenizer, story["batches"], story["pipe"], clip,
                             meta["seeds"], RELEASE_MERGE_STEP)
        tensors.update(loss_case(R, story_model(R, parts, training=True), tokenizer))  # hooks the UNet: last
        real_refs = {mode: real_reference_diffs(R, clone, lambda path, mode=mode: load_reference(path, 224, mode))
                     for mode in ("release", "ours")}
    stage2[1].update({k: meta[k] for k in ("story", "steps", "guidance", "seeds", "release_start_merge_step")})
    return {"stage1": (tensors, meta), "stage2": stage2, "tool": {"real_refs": real_refs}}
