"""Our side of the StoryGPT-V parity checks: from the release-layout weights and inputs of a golden file
(or fresh from the original code), convert with our converters, load with our task code and compute the
outputs the release computed. Used by the parity tool and by tests/test_parity_storygptv.py alike, so the
CI test and the tool compare exactly the same things.

`COMPARISONS` lists each table row: the expected tensor (the release's output), our output of the same
name, the tolerance and, for the rows that run our default modes against the release, the config key that
restores the release (a documented deliberate difference, docs/fidelity.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from src.tools.parity.common import END_TO_END_TOLERANCE, TOLERANCE, group
from src.tools.parity.sgv_cases import TRAINING_MAX, upsample
from src.tools.parity.sgv_tiny import ATTENTION_LAYERS, FLINTSTONES, PORORO, write_clip_folder, write_dataset, write_sd_folder

REPO = Path(__file__).resolve().parents[3]
LDM_RECIPES = {"flintstones": "configs/char_ldm/flintstones.yaml", "pororo": "configs/char_ldm/pororo.yaml"}
# Our own choices where the release differs (the converter's RELEASE_MODES turned back).
OUR_LDM_MODES = ["model.name_tokens=ours", "model.reference_preprocess=ours", "model.attention_loss=ours",
                 "model.mask_loss_antialias=true", "model.text_only_max_characters=-1",
                 "model.fuse_names_at_sampling=true"]
LDM_CONVERTER = "src/tools/convert/storygptv_ldm.py"
OUR_DRAW = "src/pipelines/storygptv.py:StoryGPTVPipeline.draw"


@dataclass
class Comparison:
    component: str
    original: str           # the release's file:class
    ours: str               # our file:class
    key: str                # expected/<key> against our output <key> (or <key>@ours for a deliberate row)
    converter: str = "-"
    tolerance: float = TOLERANCE
    deliberate: Optional[str] = None   # set: our default modes against the release; the key that restores it
    note: str = ""
    output: Optional[str] = None       # our output's name when it is not `key`
    tolerance_key: Optional[str] = None  # the tolerance is this expected entry (measured with the release)

    @property
    def ours_key(self) -> str:
        name = self.output or self.key
        return f"{name}@ours" if self.deliberate else name


STAGE1 = [
    Comparison("Char-LDM text encoder", "models/model.py:CustomTextEncoder", "transformers CLIPTextModel (SD folder)",
               "text", LDM_CONVERTER, note="text_encoder.* dropped: ours reads SD's frozen copy"),
    Comparison("Char-LDM character encoder", "models/model.py:CustomImageEncoder",
               "src/models/character_encoder.py:CharacterImageEncoder", "image", LDM_CONVERTER),
    Comparison("Char-LDM fuse", "models/model.py:FuseModule", "src/models/fuse.py:FuseModule", "fuse", LDM_CONVERTER),
    Comparison("Char-LDM UNet", "diffusers UNet2DConditionModel (unet.*)", "diffusers UNet2DConditionModel",
               "unet", LDM_CONVERTER),
    Comparison("denoising loss, mask-restricted (fixed noise)", "models/model.py:StoryModel.forward",
               "src/tasks/char_ldm.py + attention_control.py:union_mask", "train/denoise_loss", LDM_CONVERTER),
    Comparison("denoising loss, mask-restricted: our resize", "models/model.py:StoryModel.forward",
               "src/models/attention_control.py:union_mask", "train/denoise_loss", LDM_CONVERTER,
               deliberate="model.mask_loss_antialias=false"),
    Comparison("attention-control loss, frames 3+1+0 characters", "models/model.py:get_reg_loss",
               "src/models/attention_control.py:attention_control_loss", "train/reg_loss", LDM_CONVERTER),
    Comparison("attention-control loss: our per-character mean", "models/model.py:get_reg_loss",
               "src/models/attention_control.py:attention_control_loss", "train/reg_loss", LDM_CONVERTER,
               deliberate="model.attention_loss=release"),
    Comparison("reference preprocessing (evaluation)", "models/transforms.py:get_object_transforms",
               "src/data/references.py:load_reference", "refs"),
    Comparison("reference preprocessing: our exact square", "models/transforms.py:get_object_transforms",
               "src/data/references.py:load_reference", "refs", deliberate="model.reference_preprocess=release"),
    Comparison("caption ids, sampling (FlintstonesSV)", "models/data.py:EvalStoryDataset",
               "src/models/name_tokens.py:release_input_ids", "names/flintstones/sampling_ids"),
    Comparison("name tokens, sampling (FlintstonesSV)", "models/data.py:EvalStoryDataset",
               "src/models/char_conditioning.py:sampling_slots", "names/flintstones/sampling_chars"),
    Comparison("name tokens, sampling: ours (FlintstonesSV)", "models/data.py:EvalStoryDataset",
               "src/models/char_conditioning.py:sampling_slots", "names/flintstones/sampling_chars",
               deliberate="model.name_tokens=release"),
    Comparison("name tokens, training (FlintstonesSV)", "models/data.py:ImageDataset",
               "src/tasks/char_ldm.py:training_token_slots", "names/flintstones/training_chars"),
    Comparison("name tokens, training: ours (FlintstonesSV)", "models/data.py:ImageDataset",
               "src/tasks/char_ldm.py:training_token_slots", "names/flintstones/training_chars",
               deliberate="model.name_tokens=release"),
    Comparison("caption ids, sampling (PororoSV)", "models/data.py:EvalPororoStoryDataset",
               "src/models/name_tokens.py:release_input_ids", "names/pororo/sampling_ids"),
    Comparison("name tokens, sampling (PororoSV: none)", "models/data.py:EvalPororoStoryDataset",
               "src/models/char_conditioning.py:sampling_slots", "names/pororo/sampling_chars"),
    Comparison("name tokens, sampling: ours (PororoSV)", "models/data.py:EvalPororoStoryDataset",
               "src/models/char_conditioning.py:sampling_slots", "names/pororo/sampling_chars",
               deliberate="model.fuse_names_at_sampling=false"),
    Comparison("name tokens, training (PororoSV)", "models/data.py:ImageDataset",
               "src/tasks/char_ldm.py:training_token_slots", "names/pororo/training_chars"),
    Comparison("Char-LDM 3-frame story, final latents", "models/pipeline.py:stable_diffusion_call_with_"
               "references_delayed_conditioning", OUR_DRAW, "sample/latents", LDM_CONVERTER,
               tolerance=END_TO_END_TOLERANCE, note="ours draws the 3 frames in one batch, the release one by one"),
    Comparison("Char-LDM 3-frame story, final latents, one frame per batch", "models/pipeline.py:stable_diffusion_"
               "call_with_references_delayed_conditioning", OUR_DRAW, "sample/latents",
               LDM_CONVERTER, tolerance=END_TO_END_TOLERANCE, output="sample/latents_single"),
    Comparison("Char-LDM 3-frame story, final images", "models/pipeline.py:stable_diffusion_call_with_"
               "references_delayed_conditioning", OUR_DRAW, "sample/images", LDM_CONVERTER,
               tolerance=END_TO_END_TOLERANCE),
    Comparison("Char-LDM 3-frame story: our modes", "models/pipeline.py:stable_diffusion_call_with_"
               "references_delayed_conditioning", OUR_DRAW, "sample/latents", LDM_CONVERTER,
               tolerance=END_TO_END_TOLERANCE, deliberate="model.name_tokens=release, reference_preprocess=release"),
]


# ---- building our side from release-layout weights ----------------------------------------------------
def _without_buffers(weights: dict) -> dict:
    return {k: v for k, v in weights.items() if not k.endswith("position_ids")}


def submodule(weights: dict, prefix: str) -> dict:
    """The weights under `prefix.` of a state dict, the prefix stripped."""
    return {k[len(prefix) + 1:]: v for k, v in weights.items() if k.startswith(prefix + ".")}


def reference_arrays(tensors: dict) -> dict[str, np.ndarray]:
    return {name: value.numpy() for name, value in group(tensors, "input/refs").items()}


def stage1_runs(tensors: dict, meta: dict, work: Path) -> dict[str, Path]:
    """{"flintstones", "pororo"}: run folders converted from the release's pytorch_model.bin with our
    converter and the real recipes (pointed at the tiny folders written here); "clip" and "root": the CLIP
    folder and the FlintstonesSV dataset folder (stage 2 reads them too)."""
    from src.tools.convert.storygptv_ldm import main as convert

    work = Path(work)
    release = group(tensors, "release")
    sd = write_sd_folder(work / "sd", group(tensors, "pretrained/unet"), submodule(release, "vae"),
                         _without_buffers(submodule(release, "text_encoder")))
    clip = write_clip_folder(work / "clip", group(tensors, "pretrained/clip"))
    source = work / "release" / "pytorch_model.bin"
    source.parent.mkdir(parents=True, exist_ok=True)
    torch.save(release, source)  # what accelerate's save_state wrote
    story = meta["story"]
    roots = {"flintstones": write_dataset(work / "data" / "flintstones", reference_arrays(tensors),
                                          [{"id": "story", **{k: story[k] for k in ("captions", "captions_coref",
                                                                                   "characters")}}]),
             "pororo": write_dataset(work / "data" / "pororo", {}, [{"id": "story", "captions": ["Pororo runs."]}],
                                     name="pororo", characters=PORORO)}
    runs = {}
    for dataset, root in roots.items():
        runs[dataset] = work / "runs" / dataset
        convert(["--src", str(source), "--out", str(runs[dataset]), "--config", str(REPO / LDM_RECIPES[dataset]),
                 f"model.pretrained={sd}", f"model.image_encoder={clip}", f"data.root={root}",
                 f"data.image_size={tensors['expected/sample/images'].shape[1]}",
                 f"model.attention_layers=[{','.join(ATTENTION_LAYERS)}]", "sample.scheduler=PNDMScheduler",
                 f"sample.num_inference_steps={meta['steps']}", f"sample.guidance_scale={meta['guidance']}",
                 # ours counts text-only steps; the release's --start_merge_step N runs N + 1 (i <= N)
                 f"model.start_merge_step={meta['release_start_merge_step'] + 1}"])
    return {**runs, "clip": clip, "root": roots["flintstones"]}


def load_char_ldm(run: Path, overrides: Optional[list] = None):
    from src.runs import load_task

    task = load_task(run, overrides=overrides)[0]
    return task.eval()


def token_char_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """The release's image_token_mask [B,L] -> our token_char [B,L]: the k-th marked token of a row takes
    that row's object k (models/model.py fuse_object_embeddings pairs them in order)."""
    ranks = mask.long().cumsum(1) - 1
    return torch.where(mask, ranks, torch.full_like(ranks, -1))


@torch.no_grad()
def module_outputs(task, tensors: dict) -> dict:
    t = group(tensors, "input")
    states = task.fuse(t["fuse/text"], t["fuse/objects"][:, :, 0], token_char_from_mask(t["fuse/mask"]))
    return {"text": task.text_encoder(t["text/ids"])[0],
            "image": task.image_encoder(upsample(t["image/levels"])),
            "fuse": states,
            "unet": task.unet(t["unet/latents"], t["unet/timesteps"], t["unet/states"]).sample}


def loss_outputs(task, tensors: dict) -> dict:
    """The release's training losses on its own draws (latents, noise, timesteps): our encoders, fuse,
    UNet with the recording processors, union mask and attention-control loss, as char_ldm's
    training_step composes them."""
    from src.models.attention_control import attention_control_loss, name_token_weights, union_mask

    t, m = group(tensors, "input/train"), task.cfg.model
    token_char = token_char_from_mask(t["mask"])
    batch_size, slots = t["levels"].shape[:2]
    valid = torch.arange(slots)[None] < t["num_objects"][:, None]                      # [B,M]
    with torch.no_grad():
        embeds = task.image_encoder(upsample(t["levels"]).flatten(0, 1)).view(batch_size, slots, -1)
        states = task.fuse(task.text_encoder(t["ids"])[0], embeds * valid[..., None], token_char)
    noisy = task.noise_scheduler.add_noise(t["latents"], t["noise"], t["timesteps"])
    with torch.enable_grad():  # the processors record while autograd is on, as in training
        task.attention_store.start(name_token_weights(token_char, slots))
        try:
            pred = task.denoise(noisy, t["timesteps"], states)
        finally:
            maps = task.attention_store.stop()
            task.attention_store.clear()
    union = union_mask(t["segmaps"], pred.shape[-2:], m.mask_loss_antialias)
    target = task.objective.target(t["latents"], t["noise"], t["timesteps"])
    return {"train/denoise_loss": task.objective.loss(pred * union, target * union, t["timesteps"]).detach(),
            "train/reg_loss": attention_control_loss(maps, t["segmaps"], valid,
                                                     per_frame=m.attention_loss == "release").detach()}


def reference_outputs(tensors: dict, work: Path, mode: str) -> dict:
    """Our load_reference on the same images (written as PNG), as 8-bit levels where exact."""
    from src.data.references import load_reference

    folder = Path(work) / f"refs-{mode}"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in sorted(group(tensors, "expected/refs")):
        Image.fromarray(tensors[f"input/refs/{name}"].numpy()).save(folder / f"{name}.png")
        out.append(load_reference(folder / f"{name}.png", 224, mode))
    return {"refs": torch.stack(out)}


def expected_refs(tensors: dict) -> torch.Tensor:
    refs = group(tensors, "expected/refs")
    return torch.stack([refs[name].float() / 255 for name in sorted(refs)])


@torch.no_grad()
def sample_outputs(task, meta: dict, everything: bool = True) -> dict:
    """The story drawn by our Char-LDM pipeline (StoryGPTVPipeline's frame drawer) with the release's seeds:
    final latents (the frames in one batch, and with `everything` one frame per batch, as the release
    draws) and decoded images."""
    captions = meta["story"]["captions_coref"]
    pipe = task.pipeline()
    refs = pipe.reference_embeddings()

    def generators():
        return [torch.Generator().manual_seed(seed) for seed in meta["seeds"]]
    out = {"sample/latents": pipe.frame_drawer(refs, output_type="latent")(captions, generators())}
    if everything:
        images = pipe.frame_drawer(refs, output_type="np")(captions, generators())
        out["sample/images"] = torch.as_tensor(np.asarray(images))
        draw = pipe.frame_drawer(refs, output_type="latent")
        out["sample/latents_single"] = torch.cat([draw([caption], [generator])
                                                  for caption, generator in zip(captions, generators())])
    return out


def name_outputs(tasks: dict, meta: dict) -> dict:
    """Per caption: the ids the fused embedding is encoded from (sampling) and, at each position, the index
    of the character fused there (-1: none), on the sampling and training paths."""
    from src.data.stories import read_meta
    from src.models.char_conditioning import sampling_slots
    from src.models.name_tokens import release_input_ids

    out = {}
    for dataset, names in (("flintstones", FLINTSTONES), ("pororo", PORORO)):
        task = tasks[dataset]
        tokenizer, length = task.tokenizer, task.tokenizer.model_max_length
        index = {n.lower(): i for i, n in enumerate(names)}
        ids, sampling, training = [], [], []
        for caption, annotated in meta["names"][dataset]:
            if task.cfg.model.name_tokens == "release":
                ids.append(torch.tensor(release_input_ids(tokenizer, caption, length)))
            else:
                ids.append(tokenizer(caption, padding="max_length", max_length=length, truncation=True,
                                     return_tensors="pt").input_ids[0])
            slots, slot_names = sampling_slots(tokenizer, caption, task.name_patterns, task.cfg.model.max_characters,
                                               task.cfg.model.name_tokens, task.cfg.model.fuse_names_at_sampling,
                                               tuple(c["name"] for c in read_meta(task.cfg.data.root)["characters"]))
            sampling.append(_chars(slots, [index[n.lower()] for n in slot_names]))
            if len(annotated) > TRAINING_MAX:
                training.append(torch.full((length,), -1, dtype=torch.long))
            else:
                slots = task.training_token_slots(caption, annotated)
                training.append(_chars(slots, [index[n.lower()] for n in annotated]))
        out[f"names/{dataset}/sampling_ids"] = torch.stack(ids)
        out[f"names/{dataset}/sampling_chars"] = torch.stack(sampling)
        out[f"names/{dataset}/training_chars"] = torch.stack(training)
    return out


def _chars(token_char: torch.Tensor, slot_chars: list[int]) -> torch.Tensor:
    table = torch.tensor(slot_chars + [-1], dtype=torch.long)  # slot -1 -> -1
    return table[token_char.clamp(min=-1)]


def stage1_outputs(tensors: dict, meta: dict, work: Path) -> dict:
    """Every output of the stage-1 comparisons: release modes under their key, our default modes under
    `<key>@ours`. Also returns what stage 2 builds on under "_stage1" (the converted run, CLIP, data folders)."""
    runs = stage1_runs(tensors, meta, work)
    release = {d: load_char_ldm(runs[d]) for d in LDM_RECIPES}
    ours = {d: load_char_ldm(runs[d], OUR_LDM_MODES) for d in LDM_RECIPES}
    out = {**module_outputs(release["flintstones"], tensors), **loss_outputs(release["flintstones"], tensors),
           **reference_outputs(tensors, work, "release"), **sample_outputs(release["flintstones"], meta),
           **name_outputs(release, meta)}
    our_modes = {**loss_outputs(ours["flintstones"], tensors), **reference_outputs(tensors, work, "ours"),
                 **sample_outputs(ours["flintstones"], meta, everything=False), **name_outputs(ours, meta)}
    out.update({f"{k}@ours": v for k, v in our_modes.items()})
    out["_stage1"] = {"run": runs["flintstones"], "clip": runs["clip"], "root": runs["root"],
                      "task": release["flintstones"], "task@ours": ours["flintstones"]}
    return out


def expected_outputs(tensors: dict) -> dict:
    out = group(tensors, "expected")
    for name in list(out):
        if name.startswith("refs/"):
            del out[name]
    if any(k.startswith("expected/refs/") for k in tensors):
        out["refs"] = expected_refs(tensors)
    return out
