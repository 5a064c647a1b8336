"""StoryGPT-V stage 2's forward pass (paper §3.2; docs/storygpt_v_stage2.md): the LLM reads the story so far
(earlier frames as K soft tokens each, earlier captions), then the current caption and R [IMG] tokens;
the GILL mapper turns the [IMG] tokens' hidden states into Char-LDM's text conditioning. Training
(src/tasks/align.py) and drawing (src/pipelines/storygptv.py) share it.

Prompt for target frame t (captions S, the co-reference captions in the dataset):
  <bos> for each i < t: " Image: <img>" [K soft tokens of frame i] "</img> Caption: S_i"
        then " Caption: S_t Image:" [IMG0]..[IMG{R-1}]
`interleave=False` drops the earlier frames (the paper's Caption- ablation).

Shapes: N frames, K soft tokens per frame, R [IMG] tokens, D LLM width, W vision width, B prompts,
T prompt tokens, L=77 conditioning tokens, E conditioning width, S vision input size.
  frames [N,3,H,W] in [-1,1] -> pooled [N,W] -> soft tokens [N,K,D]
  prompts -> inputs_embeds [B,T,D] -> hidden [B,T,D] -> at [IMG]: [B,R,D] -> mapper -> [B,L,E]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from src.models.character_encoder import clip_processor_pixels


def story_prompt(captions: list[str], target: int, image_tokens: list, img_ids: list[int],
                 interleave: bool = True, image_space: bool = False) -> list:
    """The interleaved prompt for `target` as pieces for LLMWithImageTokens.assemble: strings, the
    soft tokens of frame i (`image_tokens[i]`) and the [IMG] ids (docs/storygpt_v_stage2.md, gill/data.py).
    `image_space`: end the text with "Image: " as the release's inference does (eval_llm.py; its training
    prompt, gill/data.py, has no space token before [IMG0])."""
    pieces = []
    for i in range(target):
        if interleave:
            pieces += [" Image: <img>", image_tokens[i], f"</img> Caption: {captions[i]}"]
        else:
            pieces.append(f" Caption: {captions[i]}")
    pieces += [f" Caption: {captions[target]} Image:" + (" " if image_space else ""), list(img_ids)]
    return pieces


class StoryConditioner:
    """The four models of stage 2 and how they turn a story into Char-LDM's conditioning. Holds references
    to modules owned elsewhere (the align task registers them under its own names), so it adds no weights.
    Release modes (docs/fidelity.md): `inference_prompt` "release" puts the release's lone space token
    before [IMG0] when drawing; `frame_preprocess` "release" gives earlier frames to the vision tower as
    CLIP's image processor does (PIL bicubic, centre crop) instead of a float bilinear resize."""

    def __init__(self, llm, vision, visual_tokens, mapper, interleave: bool = True, max_length: int = 160,
                 inference_prompt: str = "ours", frame_preprocess: str = "ours"):
        self.llm, self.vision, self.visual_tokens, self.mapper = llm, vision, visual_tokens, mapper
        self.interleave, self.max_length = interleave, max_length
        self.inference_prompt, self.frame_preprocess = inference_prompt, frame_preprocess

    @property
    def device(self) -> torch.device:
        return self.mapper.out.weight.device

    def frame_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N,3,H,W] in [-1,1] -> soft tokens [N,K,D] (frozen tower, trained linear)."""
        size = self.vision.image_size
        if self.frame_preprocess == "release":
            pixels = clip_processor_pixels(pixel_values, size)
        else:
            pixels = (pixel_values.float() + 1) / 2
            if pixels.shape[-1] != size:
                pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True,
                                       align_corners=False)
        with torch.no_grad():
            pooled = self.vision.pooled(pixels.to(self.visual_tokens.proj.weight.device))
        return self.visual_tokens(pooled.to(self.visual_tokens.proj.weight.dtype))

    def fit_prompt(self, captions: list[str], target: int, tokens: list, inference: bool = False) -> list:
        """The prompt, with the earliest frames dropped while it is longer than `max_length` tokens
        (`inference`: drawing a story, where `inference_prompt` applies)."""
        ids = self.llm.image_token_ids
        space = inference and self.inference_prompt == "release"
        first = 0
        while True:
            pieces = story_prompt(captions[first:], target - first, tokens[first:], ids, self.interleave, space)
            length = 1 + sum(p.shape[0] if torch.is_tensor(p) else
                             len(self.llm.text_ids(p)) if isinstance(p, str) else len(p) for p in pieces)
            if length <= self.max_length or first == target:
                return pieces
            first += 1

    def condition(self, captions: list[list[str]], targets: list[int], frame_tokens: list,
                  inference: bool = False) -> dict:
        """Mapper output `conditioning` [B,L,E] for each story's target frame, plus the LLM's `hidden`
        states [B,T,D] and the prompt `ids` [B,T] (what the training losses read)."""
        prompts = [self.fit_prompt(c, t, tok, inference) for c, t, tok in zip(captions, targets, frame_tokens)]
        embeds, ids, mask = self.llm.assemble(prompts)
        hidden = self.llm(embeds, mask)
        is_img = ids >= self.llm.vocab_size
        count = is_img.sum(1)
        if not bool((count == self.llm.num_image_tokens).all()):
            raise RuntimeError(f"prompt holds {count.tolist()} [IMG] tokens, expected {self.llm.num_image_tokens}")
        rows = is_img.nonzero(as_tuple=True)
        width = hidden.shape[-1]
        img_hidden = hidden[rows].view(len(prompts), -1, width)
        img_embeds = embeds[rows].view(len(prompts), -1, width)
        return {"conditioning": self.mapper(img_hidden, img_embeds), "hidden": hidden, "ids": ids}
