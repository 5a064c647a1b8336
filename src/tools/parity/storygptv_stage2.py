"""The release's side of the StoryGPT-V stage-2 checks: GILL's model (gill/models.py GILLModel, GILL,
load_gill; gill/layers.py TextFcLayer) imported from the user's clone, built at tiny sizes as
train_llm.py builds it, saved as train_llm.py saves it (pretrained_ckpt.pth.tar + model_args.json), loaded
back with load_gill and run as eval_llm.py runs a story (frame 0 from Char-LDM, the others from the LLM's
[IMG] tokens through the mapper, each LLM prompt holding the frames generated so far).

Run-time shims for today's libraries and the tiny size (nothing of the clone is changed or copied):
  - gill/layers.py runs with its assertions compiled out (`python -O` semantics): TextFcLayer asserts the
    output is SD's 77 x 768, which a tiny build is not;
  - GILL's mapper hard-codes d=512 (FF 2048): after TextFcLayer's own constructor, its fc / tfm / model /
    query_embs are replaced by the same classes at d=16 (4 + 4 layers, 4 heads as in the release);
  - transformers <= 4.3x stripped the spaces around an added token ("[IMG0] [IMG1]" -> 2 ids); 5.x keeps
    them, so the [IMG] tokens are added as AddedToken(lstrip, rstrip) (the era's behaviour);
  - the era's CLIP image processor resized with PIL: transformers 5's CLIPImageProcessorPil stands in for
    AutoFeatureExtractor;
  - load_gill casts the model to bfloat16 (and LlamaForCausalLM is read in float16); the weights are exact
    in both (sgv_tiny.exact_in_half_), so casting back to float32 compares the same weights in fp32.
"""
from __future__ import annotations

import contextlib
import json
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

from src.tools.parity.common import clone_on_path, patched
from src.tools.parity.sgv_cases import FLINTSTONES_CAPTIONS, PORORO_CAPTIONS, STORY
from src.tools.parity.sgv_tiny import (
    MAPPER,
    NUM_IMAGE_TOKENS,
    TEXT,
    VISUAL_TOKENS,
    build_llm,
    llm_tokenizer,
    randomized,
    state,
    write_llm_folder,
)

LLM_FOLDERS = {"opt": "facebook/opt-tiny", "llama": "meta-llama/llama-tiny"}  # GILLModel reads the family off the path


def build_llm_tokenizer_json(family: str) -> str:
    """A small byte-level BPE (the OPT / Llama tokenizers' kind) trained on the test captions and prompts."""
    from src.tools.tiny.llm import build_tokenizer

    texts = [c for c, _ in FLINTSTONES_CAPTIONS + PORORO_CAPTIONS] + [c for c, _ in STORY]
    texts += [" Image: <img></img> Caption: She He They is are the"] * 20
    return build_tokenizer(family, texts, 300).backend_tokenizer.to_str()


@contextlib.contextmanager
def release_gill(clone: Path):
    """gill.models / gill.layers / gill.utils of the clone, with the shims above."""
    from transformers import AddedToken, AutoTokenizer, CLIPImageProcessorPil

    with clone_on_path(clone):
        import gill.layers as layers
        import gill.models as models
        import gill.utils as utils

        source = Path(layers.__file__)
        exec(compile(source.read_text(), str(source), "exec", optimize=1), layers.__dict__)
        original_init = layers.TextFcLayer.__init__

        def tiny_init(self, in_dim, out_dim, num_input_tokens=1, num_output_tokens=1, mode="linear"):
            original_init(self, in_dim, out_dim, num_input_tokens, num_output_tokens, mode)
            if mode == "gill_mapper":
                width = MAPPER["width"]
                self.fc = nn.Linear(in_dim, width)
                self.tfm = nn.Transformer(batch_first=True, norm_first=True, d_model=width,
                                          num_encoder_layers=MAPPER["encoder_layers"],
                                          num_decoder_layers=MAPPER["decoder_layers"],
                                          dim_feedforward=MAPPER["ffn"], dropout=0.0, nhead=MAPPER["heads"])
                self.model = nn.Linear(width, out_dim)
                self.query_embs = nn.Parameter(torch.randn(1, num_output_tokens, width))

        class EraAutoTokenizer:
            @staticmethod
            def from_pretrained(path, **kwargs):
                tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
                add_tokens = tokenizer.add_tokens

                def stripping_add_tokens(tokens, special_tokens=False):
                    tokens = tokens if isinstance(tokens, (list, tuple)) else [tokens]
                    return add_tokens([AddedToken(t, lstrip=True, rstrip=True) if isinstance(t, str) else t
                                       for t in tokens], special_tokens=special_tokens)
                tokenizer.add_tokens = stripping_add_tokens
                return tokenizer

        def feature_extractor(model_name, image_size=224, train=True):
            return CLIPImageProcessorPil.from_pretrained(model_name)

        with patched(layers.TextFcLayer, "__init__", tiny_init), patched(models, "AutoTokenizer", EraAutoTokenizer), \
                patched(utils, "get_feature_extractor_for_model", feature_extractor):
            yield types.SimpleNamespace(models=models, layers=layers, utils=utils)


def model_args(G, llm: Path, clip: Path) -> dict:
    """train_llm.py's model_args (the released model_args.json), tiny widths."""
    args = {"llm_model": str(llm), "visual_encoder": str(clip), "freeze_lm": True, "freeze_vm": True,
            "n_visual_tokens": VISUAL_TOKENS, "ret_emb_dim": TEXT["hidden_size"], "gen_emb_dim": TEXT["hidden_size"],
            "text_fc_mode": "gill_mapper", "ret_text_fc_mode": "linear", "num_tokens": NUM_IMAGE_TOKENS,
            "num_clip_tokens": 77, "text_emb_layers": [-1], "max_len": 160, "interleave": True}
    return args


def train_llm_tokenizer(G, llm: Path):
    """train_llm.py's tokenizer: pad, the <|image|> cls token, then [IMG0..R-1]."""
    tokenizer = G.models.AutoTokenizer.from_pretrained(str(llm), use_fast=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "$$" if "llama" in str(llm) else tokenizer.eos_token
    tokenizer.add_special_tokens({"cls_token": "<|image|>"})
    ids = []
    for i in range(NUM_IMAGE_TOKENS):
        tokenizer.add_tokens(f"[IMG{i}]")
        ids.append(tokenizer(f"[IMG{i}]", add_special_tokens=False).input_ids[0])
    return tokenizer, ids


def write_release_checkpoint(G, family: str, work: Path, clip: Path, seed: int) -> tuple[Path, dict, str]:
    """The frozen LLM's folder, then GILL as train_llm.py builds it with seeded trainable weights, saved as
    train_llm.py saves its best checkpoint. Returns (the checkpoint folder, the LLM's weights, tokenizer json)."""
    tokenizer_json = build_llm_tokenizer_json(family)
    tokenizer = llm_tokenizer(tokenizer_json, family)
    lm = randomized(build_llm(family, len(tokenizer), tokenizer), seed, 0.1)
    lm_weights = state(lm)
    llm = write_llm_folder(work / LLM_FOLDERS[family], family, lm_weights, tokenizer_json)
    gill_tokenizer, ids = train_llm_tokenizer(G, llm)
    args = {**model_args(G, llm, clip), "retrieval_token_idx": ids, "gen_token_idx": ids}
    torch.manual_seed(seed)
    model = G.models.GILL(gill_tokenizer, types.SimpleNamespace(**args))
    inner = model.model
    for module in (inner.visual_embeddings, inner.gen_text_hidden_fcs, inner.ret_text_hidden_fcs, inner.visual_fc):
        randomized(module, seed + 1, 0.1)
    with torch.no_grad():  # the trained [IMG] rows
        rows = torch.randn(NUM_IMAGE_TOKENS, inner.input_embeddings.embedding_dim,
                           generator=torch.Generator().manual_seed(seed + 2))
        inner.input_embeddings.weight[-NUM_IMAGE_TOKENS:] = (rows * 0.1).bfloat16().float()
    stripped = {k: v for k, v in model.state_dict().items() if ".lm" not in k and ".visual_model" not in k}
    stripped["model.input_embeddings.weight"] = stripped["model.input_embeddings.weight"][-NUM_IMAGE_TOKENS:].clone()
    folder = work / f"gill-{family}"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": dict(sorted(stripped.items()))}, folder / "pretrained_ckpt.pth.tar")
    (folder / "model_args.json").write_text(json.dumps(args, indent=4))
    return folder, lm_weights, tokenizer_json


def load_release_gill(G, folder: Path):
    """load_gill (bf16), back in float32: the weights are exact (see the module docstring); the buffers a
    model computes from its config (Llama's rotary `inv_freq`) are computed again in float32, as a float32
    model holds them."""
    torch.manual_seed(0)  # resize_token_embeddings draws the <|image|> row
    gill = G.models.load_gill(str(folder), device="cpu").float().eval()
    lm = gill.model.lm
    fresh = dict(type(lm)(lm.config).named_buffers())
    persistent = set(lm.state_dict())
    with torch.no_grad():
        for name, buffer in lm.named_buffers():
            if name not in persistent and buffer.is_floating_point():
                buffer.copy_(fresh[name])
    return gill


class Recorder:
    """What one generate_for_images_emb call computed: the prompt embeddings, the CLIP pixels of the
    earlier frames, the [IMG] hidden states and input embeddings the mapper read, the mapper's output."""

    def __init__(self, gill):
        self.gill, self.calls, self.pixels = gill, [], []
        inner = gill.model
        generate = inner.generate

        def recording_generate(embeddings, *args, **kwargs):
            self.calls.append({"prompt": embeddings[0].detach().clone()})
            return generate(embeddings, *args, **kwargs)
        inner.generate = recording_generate
        inner.visual_model.register_forward_pre_hook(
            lambda module, args, kwargs: self.pixels.append(args[0][0].detach().clone()) if args else None,
            with_kwargs=True)

        def mapper_hook(module, args, output):
            self.calls[-1].update(img_hidden=args[0][0].detach().clone(), img_embeds=args[1][0].detach().clone(),
                                  conditioning=output[0].detach().clone())
        inner.gen_text_hidden_fcs[0].register_forward_hook(mapper_hook)


def llm_prompt(captions: list[str], k: int, images: list) -> list:
    """eval_llm.py's prompt for frame k > 0 (its loop, with the generated PIL frames)."""
    prompt = []
    for i in range(k + 1):
        if i == k:
            prompt.append(" Caption: " + captions[i] + " Image: ")
        else:
            prompt += [" Image: <img>", images[i], "</img> Caption: " + captions[i]]
    return prompt


def stage2_case(clone: Path, work: Path, R, parts_model, tokenizer, batches, pipe, clip: Path,
                seeds: list[int], start_merge_step: int) -> tuple[dict, dict]:
    """The story through eval_llm.py's loop with the OPT model (frame 0 by Char-LDM with the stage-1
    `parts_model`, frames 1 and 2 by the LLM); the Llama model on frame 1 with the same context frames."""
    from PIL import Image

    from src.tools.parity.storygptv_stage1 import char_ldm_frame

    tensors, meta = {}, {"stage2": {}}
    with release_gill(clone) as G:
        for family in ("opt", "llama"):
            folder, lm_weights, tokenizer_json = write_release_checkpoint(G, family, work, clip, seed=40 + len(meta["stage2"]))
            checkpoint = torch.load(folder / "pretrained_ckpt.pth.tar", weights_only=True)["state_dict"]
            tensors.update({f"release/{family}/{k}": v for k, v in checkpoint.items()})
            tensors.update({f"pretrained/{family}/{k}": v for k, v in lm_weights.items()})
            written = json.loads((folder / "model_args.json").read_text())
            for key in ("llm_model", "visual_encoder"):  # the temporary folder left out: the golden file stays the same
                written[key] = str(Path(written[key]).relative_to(work))
            meta["stage2"][family] = {"tokenizer": tokenizer_json, "model_args": written}
            gill = load_release_gill(G, folder)
            recorder = Recorder(gill)
            captions = batches[0]["captions"]
            if family == "opt":
                images, latents = [], []
                for k, batch in enumerate(batches):
                    if k == 0:
                        conditioning, merge = None, start_merge_step
                    else:
                        conditioning, _ = gill.generate_for_images_emb(llm_prompt(captions, k, images), num_words=2)
                        merge = 0 if batch["ref_flag"] else start_merge_step
                    def draw(output_type, k=k, batch=batch, conditioning=conditioning, merge=merge):
                        if k == 0:
                            return char_ldm_frame(pipe, parts_model, batch, merge,
                                                  torch.Generator().manual_seed(seeds[k]), output_type)
                        return llm_frame(pipe, batch, conditioning, merge, seeds[k], output_type)
                    latents.append(draw("latent")[0])
                    images.append(draw("pil")[0])
                tensors["expected/stage2/latents"] = torch.stack(latents)
                tensors["input/stage2/frames"] = torch.stack([torch.from_numpy(np.asarray(im)) for im in images])
                meta["stage2"]["ref_flags"] = [bool(b["ref_flag"]) for b in batches]
                tensors.update(bf16_case(G, folder, captions, images, recorder.calls[0]["conditioning"]))
            else:  # the untied-output path on frame 1, after the OPT story's frame 0
                frames = [Image.fromarray(f.numpy()) for f in tensors["input/stage2/frames"]]
                gill.generate_for_images_emb(llm_prompt(captions, 1, frames), num_words=2)
            for k, call in enumerate(recorder.calls, start=1):
                for key, value in call.items():
                    tensors[f"expected/stage2/{family}/{k}/{key}"] = value
            # 4 x 3 x 224 x 224 floats: compared by the tool, left out of the golden files (tool/ prefix)
            tensors[f"tool/stage2/{family}/pixels"] = torch.stack(recorder.pixels)
    return tensors, meta


def llm_frame(pipe, batch: dict, conditioning, start_merge_step: int, seed: int, output_type: str):
    """eval_llm.py's frames k > 0: the mapper output as prompt_embeds, the caption's text-only embedding,
    start_merge_step 0 for a pronoun frame."""
    with torch.no_grad():
        text_only = pipe._encode_prompt(batch["prompt_text_only"], "cpu", 1, do_classifier_free_guidance=False)
        from src.tools.parity.sgv_cases import GUIDANCE, STEPS
        from src.tools.parity.sgv_tiny import FRAME_SIZE

        return pipe.inference(prompt_embeds=conditioning.float(), prompt_embeds_text_only=text_only,
                              num_inference_steps=STEPS, height=FRAME_SIZE, width=FRAME_SIZE, guidance_scale=GUIDANCE,
                              num_images_per_prompt=1, cross_attention_kwargs={}, start_merge_step=start_merge_step,
                              generator=torch.Generator().manual_seed(seed), output_type=output_type).images


def bf16_case(G, folder: Path, captions: list[str], images: list, fp32_conditioning: torch.Tensor) -> dict:
    """Frame 1's mapper output with the model as load_gill leaves it (bfloat16, how the release runs), and
    the tolerance for ours in bf16: twice the release's own bf16-vs-fp32 difference."""
    gill = G.models.load_gill(str(folder), device="cpu").eval()
    recorder = Recorder(gill)
    gill.generate_for_images_emb(llm_prompt(captions, 1, images), num_words=2)
    conditioning = recorder.calls[0]["conditioning"].float()
    return {"expected/stage2/opt/bf16/1/conditioning": conditioning,
            "expected/stage2/opt/bf16/tolerance": 2 * (conditioning - fp32_conditioning).abs().max()}
