"""SEED-Story generation (SEED-Story §3.3; docs/seed_story.md): the stage-2 MLLM writes a story beat by beat,
the de-tokenizer draws each beat's frame from the features the MLLM regressed. `SeedStoryPipeline` is the
one drawing path: a story file (`bash scripts/story.sh`), the studio, a dataset split
(src/generate_story.py, eval.sh), a de-tokenizer run's reconstructions and stage 3's periodic samples.

The context is a KV cache (src/models/story_cache.py): every token is computed once, and the
`window` / `sink` / `multimodal_sink` modes evict old beats from the cache instead of re-filling the
prompt each beat (the release re-fills it, and computes its sink only to discard it; docs/seed_story.md).

A beat in the cache is laid out as stage 2 trained it (src/data/story_sequence.py):
  [INST] text <img> [K input features] </img>
A target image is made in two forwards at the same positions, as the every-beat training pass does:
`<img>` and the K raw image tokens (the queries; forced, never sampled) -> their hidden states -> the
output resampler -> regressed features [Q,E]; then the query block is cropped from the cache and the
input resampler's tokens of those regressed features plus `</img>` take its place, so later beats read
the image as context exactly as in training (the release also feeds back the regressed features, not
a re-encoding of the drawn frame).

- story mode: beat 0 is the given first frame and text; the MLLM writes each next beat's text
  (sampled: temperature and top-p, or greedy at temperature 0) until it emits `<img>`, then its image.
  After `</img>` the model chooses between the separator `[INST]` (then fed whole) and `</s>` (the
  story ends); image tokens, `</img>` and `</s>` are banned inside a beat's text, and `<img>` is forced
  after `max_text_tokens` (counted per story in generation.json). Decode policy "released" decodes as
  the release instead (greedy over the whole vocabulary, image tokens and `</img>` at logit 0.0).
- Text pieces are tokenized where they sit, as the release tokenizes its whole prompt string: the first
  caption at the start, later ones right after `</img>` (LLMWithImageTokens.text_ids_in_context).
- vis mode: the given captions are the text (teacher-forced), the MLLM draws their frames.
Frame 0 is in both modes the de-tokenizer's drawing of the given first frame's tokenizer features.

Shapes: K image tokens, Q feature tokens, E feature width, D LLM width.
  features [1,Q,E] -> input tokens [1,K,D]; hidden at the query block [1,K,D] -> regressed [1,Q,E]
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import torch
from PIL import Image

from src.models.story_cache import SinkSettings, StoryKVCache, rope_inv_freq
from src.models.story_mllm import BOI, EOI
from src.pipelines.models import PipelineModels

GEN_MODES = ("story", "vis")
# How a beat's text is decoded in story mode: "constrained" (ours: after </img> only the separator or </s>,
# image tokens and </s> banned inside a beat's text, temperature / top-p sampling) or "released" (the
# release's ContinuousLVLM.generate: greedy over the whole vocabulary, the image tokens and </img> given
# logit 0.0 outside an image by generation.py:AutoImageTokenGenerationProcessor; docs/fidelity.md).
DECODE_POLICIES = ("constrained", "released")
# The release's dense context, for reference timings (bench/story_context.py): before every beat the
# whole story so far is fed again, in one forward, into an empty cache (the release calls generate with
# past_key_values=None each beat, docs/seed_story.md). Same attention as `dense`, O(story) work per beat.
REFILL = "dense_refill"


@dataclass
class DecodeSettings:
    temperature: float = 0.7      # the values the release passes (and ignores: it decodes greedily)
    top_p: float = 0.5
    max_text_tokens: int = 64     # per beat; reached without <img>, <img> is forced (counted in the stats)
    seed: int = 0
    policy: str = "constrained"   # constrained | released (DECODE_POLICIES)


@dataclass
class Beat:
    text: str
    features: torch.Tensor                  # [Q,E] regressed (beat 0: the given frame's features)
    token_ids: list[int] = field(default_factory=list)
    index: int = 0                          # the beat's place in the story (0: the given opening)


def pick_token(logits: torch.Tensor, decode: DecodeSettings, generator: Optional[torch.Generator]) -> int:
    """logits [V] (banned ids already -inf) -> a token id: greedy at temperature 0, else temperature
    then top-p (transformers' own warpers) then a draw from `generator`."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    if decode.temperature <= 0:
        return int(logits.argmax())
    scores = TemperatureLogitsWarper(decode.temperature)(None, logits[None].float())
    if decode.top_p < 1.0:
        scores = TopPLogitsWarper(decode.top_p)(None, scores)
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs[0].cpu(), 1, generator=generator))


class StoryWriter:
    """The MLLM side of generation: `mllm` a StoryMLLM, `special` its SpecialIds (story_sft's)."""

    def __init__(self, mllm, special, context: str, sink: SinkSettings, decode: DecodeSettings,
                 separator: str = "[INST]", device=None):
        if decode.policy not in DECODE_POLICIES:
            raise ValueError(f"decode policy '{decode.policy}' is not one of {', '.join(DECODE_POLICIES)}")
        self.mllm, self.special, self.decode, self.separator = mllm, special, decode, separator
        self.refill = context == REFILL
        self.context, self.sink = ("dense" if self.refill else context), sink
        self.llm = mllm.llm
        self.inv_freq = rope_inv_freq(self.llm.lm)
        self.device = device or mllm.input_resampler.query.device  # the execution device when offloaded
        self.banned = torch.tensor([special.eoi, *special.img], device=self.device)
        self.cache: Optional[StoryKVCache] = None
        self.last_hidden: Optional[torch.Tensor] = None
        self.last_stats: dict = {}
        self.fed: list[tuple[torch.Tensor, int, list[str]]] = []  # refill: every block fed, in order

    # ---- feeding the cache ------------------------------------------------------------------------
    def _embed(self, ids: list[int]) -> torch.Tensor:
        return self.llm.embed_ids(torch.tensor(ids, device=self.device, dtype=torch.long))

    def _feed(self, embeds: torch.Tensor, beat: int, kinds: list[str]) -> torch.Tensor:
        """Append [L,D] embeddings to the cache; their hidden states [L,D]."""
        positions = self.cache.position_ids(len(kinds), self.device)
        hidden = self.llm.forward_cached(embeds[None], self.cache.cache, positions)[0]
        self.cache.appended(beat, kinds)
        self.last_hidden = hidden[-1]
        if self.refill:
            self.fed.append((embeds, beat, kinds))
        return hidden

    def _crop(self, count: int) -> None:
        """Forget the last `count` tokens fed (they all belong to the last block)."""
        self.cache.crop(count)
        if self.refill:
            embeds, beat, kinds = self.fed[-1]
            self.fed[-1] = (embeds[:-count], beat, kinds[:-count])

    def _refill(self) -> None:
        """The release's dense context (REFILL): an empty cache, the whole story so far fed again in one forward."""
        blocks, peak = self.fed, self.cache.peak_tokens
        self.cache = StoryKVCache("dense", self.sink, self.inv_freq)
        embeds = torch.cat([block for block, _, _ in blocks])
        beats = [beat for _, beat, kinds in blocks for _ in kinds]
        hidden = self.llm.forward_cached(embeds[None], self.cache.cache, self.cache.position_ids(len(beats), self.device))
        self.cache.appended(beats, [kind for _, _, kinds in blocks for kind in kinds])
        self.cache.peak_tokens = max(peak, self.cache.peak_tokens)
        self.last_hidden = hidden[0, -1]

    def _input_block(self, features: torch.Tensor) -> torch.Tensor:
        """Features [Q,E] -> the K input tokens [K,D] (the input resampler)."""
        tokens = self.mllm.input_resampler(features[None].to(self.mllm.input_resampler.query.dtype))[0]
        return tokens.to(self.llm.lm.get_input_embeddings().weight.dtype)

    def _image(self, prefix_ids: list[int], beat: int) -> torch.Tensor:
        """prefix ids (the beat's text not yet cached) + <img> + the K forced image tokens -> regressed
        features [Q,E]; then the query block is replaced by the features' input tokens + </img>."""
        s, k = self.special, len(self.special.img)
        ids = list(prefix_ids) + [s.boi, *s.img]
        kinds = ["text"] * len(prefix_ids) + ["boi"] + ["img"] * k
        hidden = self._feed(self._embed(ids), beat, kinds)
        regressed = self.mllm.regress(hidden[None, -k:], torch.ones(1, k, dtype=torch.bool, device=self.device))[0]
        self._crop(k)
        block = torch.cat([self._input_block(regressed), self._embed([s.eoi])])
        self._feed(block, beat, ["img"] * k + ["eoi"])
        return regressed

    # ---- a story ----------------------------------------------------------------------------------
    def start(self, caption: str, features: torch.Tensor) -> Beat:
        """Beat 0: <s> caption <img> [the given frame's features] </img>."""
        s = self.special
        self.cache = StoryKVCache(self.context, self.sink, self.inv_freq)
        self.fed = []
        text = ([s.bos] if s.bos is not None else []) + self.llm.text_ids_in_context(caption, after=BOI)
        block = torch.cat([self._embed(text + [s.boi]), self._input_block(features), self._embed([s.eoi])])
        self._feed(block, 0, ["text"] * len(text) + ["boi"] + ["img"] * len(s.img) + ["eoi"])
        return Beat(caption, features, text)

    def next_text(self, beat: int, generator) -> tuple[Optional[list[int]], str]:
        """The beat's tokens until <img>: (ids, all cached, "" or "max_text_tokens" when <img> was forced
        there), or (None, "</s>") when the story ends. After </img> the layout stage 2 trained on allows
        only the separator or </s>: one choice between the two, then the whole separator is fed; the text
        is then sampled with image tokens and </img> banned."""
        s = self.special
        logits = self.llm.logits_at(self.last_hidden[None])[0]
        allowed = torch.full_like(logits, float("-inf"))
        allowed[[s.separator[0], s.eos]] = logits[[s.separator[0], s.eos]]
        if pick_token(allowed, self.decode, generator) == s.eos:
            return None, "</s>"
        ids = list(s.separator)
        self._feed(self._embed(ids), beat, ["text"] * len(ids))
        while len(ids) - len(s.separator) < self.decode.max_text_tokens:
            logits = self.llm.logits_at(self.last_hidden[None])[0]
            logits[self.banned] = float("-inf")  # the release sets them to 0.0 (docs/seed_story.md); never sampled here
            logits[s.eos] = float("-inf")        # a beat's text ends with <img>; </s> only follows </img>
            token = pick_token(logits, self.decode, generator)
            if token == s.boi:
                return ids, ""
            ids.append(token)
            self._feed(self._embed([token]), beat, ["text"])
        return ids, "max_text_tokens"

    def next_text_released(self, beat: int) -> tuple[Optional[list[int]], str]:
        """The release's decoding of a beat (models_clm/models.py:ContinuousLVLM.generate, do_sample=False):
        greedy over the whole vocabulary, where outside an image the image tokens and `</img>` get logit
        0.0, not -inf (generation.py:AutoImageTokenGenerationProcessor); `<img>` starts the image (its
        forced chain is _image's). `</s>` ends the story, as an image-less output ends the release's
        loop; so does an image token or `</img>` winning at 0.0 outside an image (the release would then
        force an image without `<img>`). At max_text_tokens `<img>` is forced (the release goes on to
        500 new tokens)."""
        s = self.special
        ids: list[int] = []
        while len(ids) < self.decode.max_text_tokens:
            logits = self.llm.logits_at(self.last_hidden[None])[0].clone()
            logits[self.banned] = 0.0
            token = int(logits.argmax())
            if token == s.boi:
                return ids, ""
            if token == s.eos:
                return None, "</s>"
            if token in self.banned.tolist():
                return None, "image token outside an image"
            ids.append(token)
            self._feed(self._embed([token]), beat, ["text"])
        return ids, "max_text_tokens"

    @torch.no_grad()
    def beats(self, caption: str, features: torch.Tensor, beats: int,
              captions: Optional[list[str]] = None) -> Iterator[Beat]:
        """Up to `beats` beats (beat 0 given), each yielded as soon as it is written. `captions` given: vis
        mode (captions[1:] teacher-forced). At the end `last_stats` holds the stop reason, the LLM's
        seconds (time spent by the caller between beats is not counted), peak cached tokens and bytes."""
        generator = torch.Generator().manual_seed(self.decode.seed)
        start = time.perf_counter()
        away = 0.0  # seconds the caller held a yielded beat (drawing it, showing it)
        out = [self.start(caption, features)]
        peak_bytes, stop, evicted, forced = self.cache.kv_bytes(), "beats", [], 0
        beat_seconds = [round(time.perf_counter() - start, 5)]  # the LLM's seconds for each beat
        left = time.perf_counter()
        yield out[0]
        away += time.perf_counter() - left
        for beat in range(1, beats):
            began = time.perf_counter()
            if self.refill:
                self._refill()
            evicted += self.cache.evict_if_full()
            if captions is not None:
                prefix = self.llm.text_ids_in_context(self.separator + captions[beat], before=EOI, after=BOI)
                regressed = self._image(prefix, beat)
                out.append(Beat(captions[beat], regressed, prefix, beat))
            else:
                if self.decode.policy == "released":
                    ids, why = self.next_text_released(beat)
                else:
                    ids, why = self.next_text(beat, generator)
                if ids is None:
                    stop = why
                    break
                forced += why == "max_text_tokens"
                regressed = self._image([], beat)
                out.append(Beat(self.text_of(ids), regressed, ids, beat))
            peak_bytes = max(peak_bytes, self.cache.kv_bytes())
            beat_seconds.append(round(time.perf_counter() - began, 5))
            left = time.perf_counter()
            yield out[-1]
            away += time.perf_counter() - left
        seconds = time.perf_counter() - start - away
        self.last_stats = {"beats": len(out), "stop": stop, "llm_seconds": round(seconds, 4),
                           "seconds_per_beat": round(seconds / max(len(out) - 1, 1), 5),
                           "peak_cache_tokens": self.cache.peak_tokens, "peak_cache_bytes": peak_bytes,
                           "final_cache_tokens": len(self.cache), "evicted_beats": evicted,
                           "img_forced_at_max_text_tokens": forced, "beat_seconds": beat_seconds}

    def write(self, caption: str, features: torch.Tensor, beats: int,
              captions: Optional[list[str]] = None) -> tuple[list[Beat], dict]:
        """Every beat of `beats(...)` and the stats."""
        out = list(self.beats(caption, features, beats, captions))
        return out, self.last_stats

    def text_of(self, ids: list[int]) -> str:
        """A generated beat's text without its leading separator."""
        sep = list(self.special.separator)
        if ids[:len(sep)] == sep:
            ids = ids[len(sep):]
        return self.llm.tokenizer.decode(ids, skip_special_tokens=True).strip()


# ---- drawing ----------------------------------------------------------------------------------------

@dataclass
class DetokenizerSettings:
    scheduler: str = "EulerDiscreteScheduler"   # any diffusers scheduler class (sample.scheduler)
    num_inference_steps: int = 30
    guidance_scale: float = 5.0
    batch_size: int = 16

    @classmethod
    def from_config(cls, sample_cfg) -> "DetokenizerSettings":
        return cls(sample_cfg.scheduler, sample_cfg.num_inference_steps, sample_cfg.guidance_scale,
                   sample_cfg.batch_size)


@dataclass
class DrawnBeat:
    """One beat of a story as the pipeline yields it."""
    index: int
    text: str
    image: object                  # PIL image
    features: torch.Tensor         # [Q,E] the features it was drawn from (beat 0: the opening image's)


class SeedStoryPipeline(PipelineModels):
    """Components in, beats out. `detokenizer` (src/models/detokenizer.Detokenizer), `vae` and the frozen
    `visual_tokenizer` draw; `mllm` (src/models/story_mllm.StoryMLLM) with its `special` token ids writes
    (absent: the pipeline only draws features, e.g. a de-tokenizer run's reconstructions). Built from run
    folders with `from_runs`; `provenance` records the runs and weights files, `notes` what the caller
    should be told (e.g. a de-tokenizer adapted to another MLLM)."""

    def __init__(self, detokenizer, vae, visual_tokenizer, scheduler_config: dict, image_size: int,
                 settings: DetokenizerSettings, mllm=None, special=None, separator: str = "[INST]"):
        self.detokenizer, self.vae, self.visual_tokenizer = detokenizer, vae, visual_tokenizer
        self.scheduler_config, self.image_size, self.settings = scheduler_config, image_size, settings
        self.mllm, self.special, self.separator = mllm, special, separator
        self.execution_device: Optional[torch.device] = None  # set by src/memory.py's offload tiers
        self.provenance: dict = {}
        self.notes: list[str] = []

    @property
    def device(self) -> torch.device:
        """Where the pipeline computes: the execution device when the models are offloaded, else the VAE's."""
        return self.execution_device or self.vae.device

    # ---- building, moving, memory -----------------------------------------------------------------------
    @classmethod
    def from_runs(cls, mllm=None, detokenizer=None, weights: str = "auto", device=None, dtype=None,
                  llm_dtype=None) -> "SeedStoryPipeline":
        """The pipeline of a story_sft run (`mllm`, the MLLM) and a detokenizer or story_adapt run
        (`detokenizer`; default the MLLM run's model.detokenizer_run; a story_adapt run alone brings the
        MLLM it was adapted to). Each is a run folder, a checkpoint or best/. `weights`: auto / ema /
        trained. `device`: default cuda when available; `dtype` the de-tokenizer's, VAE's and visual
        tokenizer's, `llm_dtype` the MLLM's (default `dtype`; None: as trained). The runs' datasets and
        weights must be on disk (the entries make sure with src/assets.py)."""
        from src import runs

        mllm_run, mcfg, detok_run, dcfg, tokenizer_cfg = runs.resolve_seed_story_runs(mllm, detokenizer)
        runs.check_same_tokenizer(mcfg, tokenizer_cfg, f"the MLLM run ({mllm_run})", f"the de-tokenizer run ({detok_run})")
        detok, _, dfile = runs.load_task(detok_run, weights)
        provenance, notes = {"detokenizer_task": dcfg.task}, []
        mllm_ckpt = runs.open_run(mllm_run, ("story_sft",), "--mllm")[1]
        if dcfg.task == "story_adapt" and mllm_ckpt.resolve() == Path(detok.upstream["sft_run"]["checkpoint"]).resolve():
            writer, mfile = detok.sft, Path(detok.upstream["sft_run"]["file"])  # the one it holds already
        else:
            if dcfg.task == "story_adapt":
                notes.append(f"the de-tokenizer was adapted to the MLLM at {detok.upstream['sft_run']['checkpoint']}, "
                             f"not {mllm_run}")
            writer, _, mfile = runs.load_task(mllm_ckpt, weights)
        if dcfg.task == "story_adapt":
            provenance["adapted_to_mllm"] = detok.upstream["sft_run"]["checkpoint"]
        provenance.update({"mllm_checkpoint": str(mfile), "mllm_config": str(runs.run_folder_of(mllm_run) / "config.yaml"),
                           "detokenizer_checkpoint": str(dfile),
                           "detokenizer_config": str(runs.run_folder_of(detok_run) / "config.yaml")})
        pipe = detok.pipeline(**writer.writer_parts())
        pipe.provenance, pipe.notes = provenance, notes
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return pipe.to(device, dtype, llm_dtype).eval()

    def components(self) -> list[tuple[str, list]]:
        """The models the pipeline runs, grouped as they move together under model offloading (src/memory.py),
        in the order they run: [(name, [modules])]. The MLLM (LLM and both resamplers) is one group."""
        groups = [("visual_tokenizer", [self.visual_tokenizer])]
        if self.mllm is not None:
            groups.append(("mllm", [self.mllm]))
        return [*groups, ("detokenizer_resampler", [self.detokenizer.resampler]),
                ("unet", [self.detokenizer.unet]), ("vae", [self.vae])]

    def llm_module(self):
        return self.mllm

    @torch.no_grad()
    def features_of(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames [N,3,T,T] in [-1,1] at the tokenizer's size -> features [N,Q,E]."""
        return self.visual_tokenizer(frames.to(self.device))

    @torch.no_grad()
    def draw_features(self, features: list[torch.Tensor], generators: list[torch.Generator],
                      settings: Optional[DetokenizerSettings] = None, output_type: str = "pil") -> list:
        """Feature maps [Q,E] -> PIL frames (classifier-free guidance against the empty image's features);
        output_type "latent" / "np": the pipeline's final latents / float images instead."""
        from src.pipelines.diffusion import make_scheduler, sdxl_pipeline

        s = settings or self.settings
        pipe = sdxl_pipeline(self.vae, self.detokenizer.unet, make_scheduler(s.scheduler, self.scheduler_config))
        neg_states, neg_pooled = self.detokenizer.encode(self.visual_tokenizer.empty_features(1).to(self.device))
        images = []
        for start in range(0, len(features), s.batch_size):
            chunk = torch.stack(features[start:start + s.batch_size]).to(self.device)
            states, pooled = self.detokenizer.encode(chunk)
            n = chunk.shape[0]
            images.extend(pipe(prompt_embeds=states, pooled_prompt_embeds=pooled,
                               negative_prompt_embeds=neg_states.expand(n, -1, -1),
                               negative_pooled_prompt_embeds=neg_pooled.expand(n, -1), height=self.image_size,
                               width=self.image_size, num_inference_steps=s.num_inference_steps,
                               guidance_scale=s.guidance_scale, generator=generators[start:start + n],
                               output_type=output_type).images)  # extend: "np" output is one array
        return images

    def writer(self, context: str, sink: SinkSettings, decode: DecodeSettings) -> "StoryWriter":
        if self.mllm is None:
            raise ValueError("this pipeline has no MLLM (a de-tokenizer alone draws features, it writes no story)")
        return StoryWriter(self.mllm, self.special, context, sink, decode, self.separator, device=self.device)

    def opening_features(self, image) -> torch.Tensor:
        """The opening frame (a PIL image, a path, or [3,T,T] in [-1,1] at the tokenizer's size) -> its
        features [Q,E]; an image is resized as the release feeds its tokenizer (INPUT_RESAMPLE)."""
        from src.data.transforms import load_frame
        from src.models.visual_tokenizer import INPUT_RESAMPLE

        size = self.visual_tokenizer.image_size
        if torch.is_tensor(image):
            frame = image
        elif isinstance(image, (str, Path)):
            frame = load_frame(image, size, INPUT_RESAMPLE)
        else:
            from src.pipelines.storygptv import to_pixels
            resample = Image.Resampling[INPUT_RESAMPLE.upper()]
            frame = to_pixels(image.convert("RGB").resize((size, size), resample))
        return self.features_of(frame[None])[0]

    def stream(self, opening_text: str, opening_image, beats: int, context: str = "multimodal_sink",
               sink: Optional[SinkSettings] = None, decode: Optional[DecodeSettings] = None,
               captions: Optional[list[str]] = None, story_index: int = 0,
               settings: Optional[DetokenizerSettings] = None) -> Iterator[DrawnBeat]:
        """Write and draw a story beat by beat, yielding each beat as soon as its frame is drawn. Beat 0 is
        the opening (its text, and its image drawn back from its features); story mode writes up to `beats`
        beats in all; `captions` given: vis mode (captions[1:] teacher-forced, the MLLM draws them). Frame k
        starts from the noise of (decode.seed, story_index, k), as the dataset path draws story
        `story_index` of a split. The writer's stats end up in `self.last_stats`."""
        from src.pipelines.diffusion import frame_generator

        if beats < 1:
            raise ValueError(f"beats must be at least 1, got {beats}")
        decode = decode or DecodeSettings()
        writer = self.writer(context, sink or SinkSettings(), decode)
        features = self.opening_features(opening_image)
        self.last_stats = {}
        for beat in writer.beats(opening_text, features, beats, captions):
            generator = frame_generator(decode.seed, story_index, beat.index, self.device)
            image = self.draw_features([beat.features], [generator], settings)[0]
            yield DrawnBeat(beat.index, beat.text, image, beat.features)
        self.last_stats = writer.last_stats

    def __call__(self, opening_text: str, opening_image, beats: int, **options) -> list[DrawnBeat]:
        """`stream`'s beats as a list."""
        return list(self.stream(opening_text, opening_image, beats, **options))


@torch.no_grad()
def generate_seed_stories(pipeline: SeedStoryPipeline, stories, root, out_dir, mode: str, beats: int, context: str,
                          sink: SinkSettings, decode: DecodeSettings, meta: Optional[dict] = None,
                          progress: bool = False):
    """Write `stories` of a dataset (their first frame and text; vis mode: all their captions, up to
    `beats`) and draw them, into the generated-story layout. The story's frames are drawn together after
    its text is written (one de-tokenizer batch per story). generation.json records `meta` (the
    checkpoints), the settings and each story's stats; `progress` shows a bar over the stories."""
    from tqdm.auto import tqdm

    from src.data.stories import Story
    from src.data.transforms import story_frame
    from src.models.visual_tokenizer import INPUT_RESAMPLE
    from src.pipelines.diffusion import frame_generator
    from src.pipelines.story_sampler import write_stories

    if mode not in GEN_MODES:
        raise ValueError(f"generation mode '{mode}' is not one of {', '.join(GEN_MODES)}")
    if beats < 1:
        raise ValueError(f"--beats must be at least 1, got {beats}")
    writer = pipeline.writer(context, sink, decode)
    images, written, per_story = {}, [], []
    draw_seconds = 0.0
    for i, story in enumerate(tqdm(stories, desc="writing stories", disable=not progress, dynamic_ncols=True)):
        frame = story_frame(root, story, 0, pipeline.visual_tokenizer.image_size, INPUT_RESAMPLE)
        features = pipeline.opening_features(frame)
        count = min(beats, story.num_frames) if mode == "vis" else beats
        result, stats = writer.write(story.captions[0], features, count,
                                     story.captions[:count] if mode == "vis" else None)
        start = time.perf_counter()
        frames = pipeline.draw_features([b.features for b in result],
                                        [frame_generator(decode.seed, i, k, pipeline.device) for k in range(len(result))])
        draw_seconds += time.perf_counter() - start
        images.update({(i, k): image for k, image in enumerate(frames)})
        n = len(result)
        same = mode == "vis"  # vis mode keeps the source's per-frame labels; story mode's text is new
        written.append(Story(id=story.id, images=[""] * n, captions=[b.text for b in result],
                             characters=story.characters[:n] if same and story.characters else None,
                             backgrounds=story.backgrounds[:n] if same and story.backgrounds else None))
        per_story.append({"id": story.id, **stats})
    s = pipeline.settings
    info = {"num_stories": len(written), "caption_field": "captions", "task": "seed_story", "mode": mode,
            "beats": beats, "context": context, "sink": vars(sink), "decode": vars(decode),
            "seed": decode.seed, "scheduler": s.scheduler, "num_inference_steps": s.num_inference_steps,
            "guidance_scale": s.guidance_scale, "image_size": pipeline.image_size,
            "first_frame": "the given first frame's tokenizer features, drawn by the de-tokenizer",
            "captions": "given (vis mode)" if mode == "vis" else "beat 0 given, the rest generated",
            "draw_seconds": round(draw_seconds, 3), "stories": per_story, **(meta or {})}
    return write_stories(images, written, Path(out_dir), "captions", info)
