"""Our side of the StoryGPT-V stage-2 parity checks (see sgv_ours.py): the released GILL checkpoint
(pretrained_ckpt.pth.tar) through convert_storygptv_llm and the align recipe, our AlignTask on the
release's prompts and frames, and the whole story through generate_stage2_stories.
"""
from __future__ import annotations

from pathlib import Path

import torch

from src.tools.parity.common import END_TO_END_TOLERANCE, group
from src.tools.parity.sgv_ours import REPO, Comparison
from src.tools.parity.sgv_tiny import MAPPER, NUM_IMAGE_TOKENS, TEXT, VISUAL_TOKENS, write_llm_folder

LLM_CONVERTER = "src/tools/convert/storygptv_llm.py"
CONDITIONER = "src/models/storygptv_stage2.py:StoryConditioner"
ALIGN_RECIPE = "configs/align/flintstones.yaml"
OUR_ALIGN_MODES = ["model.inference_prompt=ours", "model.frame_preprocess=ours", "model.pronoun_start_merge_step=0"]
GENERATE = "gill/models.py:GILL.generate_for_images_emb"


def _llm_rows(family: str, frames: list[int]) -> list[Comparison]:
    label = {"opt": "OPT", "llama": "Llama, untied output"}[family]
    rows = []
    for k in frames:
        rows += [
            Comparison(f"stage-2 prompt embeddings, frame {k} ({label})", GENERATE,
                       CONDITIONER + ".fit_prompt + llm_with_image_tokens.py:assemble",
                       f"stage2/{family}/{k}/prompt", LLM_CONVERTER),
            Comparison(f"[IMG] input embeddings, frame {k} ({label})", "gill/models.py:load_gill ([IMG] rows)",
                       "src/models/llm_with_image_tokens.py:LLMWithImageTokens.image_embeddings",
                       f"stage2/{family}/{k}/img_embeds", LLM_CONVERTER),
            Comparison(f"[IMG] hidden states, frame {k} ({label})", "gill/models.py:GILLModel.generate",
                       "src/models/llm_with_image_tokens.py:LLMWithImageTokens", f"stage2/{family}/{k}/img_hidden",
                       LLM_CONVERTER),
            Comparison(f"GILL mapper output, frame {k} ({label})", "gill/layers.py:TextFcLayer (gill_mapper)",
                       "src/models/mappers.py:GILLMapper", f"stage2/{family}/{k}/conditioning", LLM_CONVERTER),
        ]
    return rows


STAGE2 = [
    Comparison("stage-2 earlier frames for CLIP", "gill/utils.py:get_pixel_values_for_model",
               "src/models/character_encoder.py:clip_processor_pixels", "stage2/opt/pixels", note="tool only"),
    Comparison("stage-2 earlier frames for CLIP: our float resize", "gill/utils.py:get_pixel_values_for_model",
               CONDITIONER + ".frame_tokens", "stage2/opt/pixels", deliberate="model.frame_preprocess=release",
               note="tool only"),
    *_llm_rows("opt", [1, 2]),
    Comparison("stage-2 prompt: ours, no space token before [IMG0]", GENERATE, "src/models/storygptv_stage2.py:story_prompt",
               "stage2/opt/1/prompt", LLM_CONVERTER, deliberate="model.inference_prompt=release"),
    Comparison("GILL mapper output, frame 1 (OPT), bf16", GENERATE + " (load_gill: bf16)",
               CONDITIONER + ".condition (model.llm_dtype=bfloat16)", "stage2/opt/bf16/1/conditioning",
               LLM_CONVERTER, output="stage2/opt/bf16/1/conditioning", tolerance_key="stage2/opt/bf16/tolerance",
               note="tolerance: twice the release's own bf16-vs-fp32 difference; ours keeps the trained parts fp32"),
    *_llm_rows("llama", [1]),
    Comparison("stage-2 3-frame story (Char-LDM, OPT, OPT), final latents", "eval_llm.py (main loop)",
               "src/pipelines/story_sampler.py:generate_stage2_stories", "stage2/latents", LLM_CONVERTER,
               tolerance=END_TO_END_TOLERANCE, note="frame 2 reads its 2 earlier frames through CLIP in one batch, "
               "the release one by one: the prompt's 1e-7 above"),
    Comparison("stage-2 story: our modes (pronoun frame fused from step 0, ...)", "eval_llm.py (main loop)",
               "src/pipelines/story_sampler.py:generate_stage2_stories", "stage2/latents", LLM_CONVERTER,
               tolerance=END_TO_END_TOLERANCE,
               deliberate="model.pronoun_start_merge_step=1, inference_prompt=release, frame_preprocess=release"),
]


def align_run(tensors: dict, meta: dict, family: str, work: Path, stage1_run: Path, clip: Path,
              data_root: Path) -> Path:
    """The released pretrained_ckpt.pth.tar (from the golden tensors) converted with our converter and the
    align recipe, pointed at the tiny LLM / CLIP folders and the converted stage-1 run."""
    from src.tools.convert.storygptv_llm import main as convert

    work = Path(work)
    info = meta["stage2"][family]
    llm = write_llm_folder(work / f"llm-{family}", family, group(tensors, f"pretrained/{family}"), info["tokenizer"])
    source = work / f"gill-{family}" / "pretrained_ckpt.pth.tar"
    source.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": group(tensors, f"release/{family}")}, source)  # as train_llm.py saved it
    run = work / "runs" / f"align-{family}"
    mapper = "{" + ", ".join(f"{k}: {v}" for k, v in MAPPER.items()) + "}"
    code = convert(["--src", str(source), "--out", str(run), "--config", str(REPO / ALIGN_RECIPE),
                    f"model.llm={llm}", "model.llm_dtype=float32", f"model.vision_encoder={clip}",
                    f"model.mapper={mapper}", f"model.conditioning=[77,{TEXT['hidden_size']}]",
                    f"model.num_image_tokens={NUM_IMAGE_TOKENS}", f"model.visual_tokens={VISUAL_TOKENS}",
                    f"model.stage1={stage1_run}", f"data.root={data_root}", "sample.scheduler=PNDMScheduler",
                    f"sample.num_inference_steps={meta['steps']}", f"sample.guidance_scale={meta['guidance']}"])
    if code != 0:
        raise RuntimeError(f"convert_storygptv_llm failed for {family} (exit {code})")
    return run


def load_align(run: Path, overrides=None):
    from src.runs import load_task

    return load_task(run, overrides=overrides)[0].eval()


def _frames(tensors: dict) -> torch.Tensor:
    """The release's generated frames (uint8 [N,H,W,3]) as our pipeline hands frames on: [N,3,H,W] in [-1,1]."""
    return tensors["input/stage2/frames"].permute(0, 3, 1, 2).float() / 127.5 - 1


@torch.no_grad()
def llm_outputs(align, tensors: dict, meta: dict, family: str, frames: list[int]) -> dict:
    """For frame k: the prompt embeddings without the R [IMG] rows (the release generates those), the [IMG]
    rows' input embeddings and hidden states, the mapper's output; the context is the release's frames."""
    captions = meta["story"]["captions_coref"]
    context = _frames(tensors)
    out = {}
    for k in frames:
        tokens = align.frame_tokens(context[:k])
        prompt = align.fit_prompt(captions, k, list(tokens), inference=True)
        embeds, ids, mask = align.llm.assemble([prompt])
        result = align.condition([captions], [k], [list(tokens)], inference=True)
        rows = (result["ids"][0] >= align.llm.vocab_size).nonzero().flatten()
        out[f"stage2/{family}/{k}/prompt"] = embeds[0, :rows[0]]
        out[f"stage2/{family}/{k}/img_embeds"] = embeds[0, rows]
        out[f"stage2/{family}/{k}/img_hidden"] = result["hidden"][0, rows]
        out[f"stage2/{family}/{k}/conditioning"] = result["conditioning"][0]
    return out


def pixel_outputs(align, tensors: dict) -> dict:
    """The CLIP input of every earlier frame the release encoded (frame 0 for frame 1; 0 and 1 for frame 2),
    normalised as the vision tower reads it."""
    from src.models.character_encoder import clip_processor_pixels

    frames = _frames(tensors)
    context = torch.cat([frames[:1], frames[:2]])
    size = align.vision.image_size
    if align.cfg.model.frame_preprocess == "release":
        pixels = clip_processor_pixels(context, size)
    else:
        pixels = torch.nn.functional.interpolate((context + 1) / 2, size=(size, size), mode="bilinear",
                                                 antialias=True, align_corners=False)
    return {"stage2/opt/pixels": (pixels - align.vision.mean) / align.vision.std}


def story_outputs(align, ldm, work: Path, tag: str) -> dict:
    """The test story drawn as src.generate draws a stage-2 run's split (generate_stage2_stories through the
    align task's pipeline over `ldm`'s models), keeping each frame's final latents."""
    from src.data.stories import read_split
    from src.pipelines.story_sampler import generate_stage2_stories

    align._stage1.update(task=ldm)
    stories = read_split(align.cfg.data.root, "test")[1]
    latents = {}
    generate_stage2_stories(align.pipeline(), stories, Path(work) / f"samples-{tag}", align.cfg.data.caption_field,
                            seed=0, progress=False, latents_out=latents)
    return {"stage2/latents": torch.stack([latents[(0, k)] for k in range(len(latents))])}


def stage2_outputs(tensors: dict, meta: dict, stage1: dict, work: Path) -> dict:
    """Every output of the stage-2 comparisons (release modes under their key, ours under `<key>@ours`).
    `stage1`: stage1_outputs' "_stage1" (the converted stage-1 run, its CLIP and data folders, its tasks)."""
    out = {}
    ldm, ldm_ours = stage1["task"], stage1["task@ours"]
    for family, frames in (("opt", [1, 2]), ("llama", [1])):
        run = align_run(tensors, meta, family, work, stage1["run"], stage1["clip"], stage1["root"])
        align, ours = load_align(run), load_align(run, OUR_ALIGN_MODES)
        out.update(llm_outputs(align, tensors, meta, family, frames))
        if family == "opt":
            bf16 = load_align(run, ["model.llm_dtype=bfloat16"])
            out.update({k.replace("/opt/", "/opt/bf16/"): v.float()
                        for k, v in llm_outputs(bf16, tensors, meta, family, [1]).items()})
            out.update({f"{k}@ours": v for k, v in llm_outputs(ours, tensors, meta, family, frames).items()})
            out.update(pixel_outputs(align, tensors))
            out.update({f"{k}@ours": v for k, v in pixel_outputs(ours, tensors).items()})
            out.update(story_outputs(align, ldm, work, "release"))
            out.update({f"{k}@ours": v for k, v in story_outputs(ours, ldm_ours, work, "ours").items()})
    return out


def expected_outputs(tensors: dict) -> dict:
    out = group(tensors, "expected")
    out.update(group(tensors, "tool"))
    return out
