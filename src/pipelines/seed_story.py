"""SEED-Story generation (SEED-Story §3.3; docs/seed_story.md): the stage-2 MLLM writes a story beat by beat
(src/pipelines/story_writer.py, `StoryWriter`), the de-tokenizer draws each beat's frame from the features
the MLLM regressed. `SeedStoryPipeline` is the one drawing path: a story file (`bash scripts/story.sh`),
the studio, a dataset split (src/generate_story.py, eval.sh), a de-tokenizer run's reconstructions and
stage 3's periodic samples.

- story mode: beat 0 is the given first frame and text; the MLLM writes each next beat's text and image
  (the writer's decoding; counted per story in generation.json).
- vis mode: the given captions are the text (teacher-forced), the MLLM draws their frames.
Frame 0 is in both modes the de-tokenizer's drawing of the given first frame's tokenizer features.

Shapes: Q feature tokens, E feature width, H frame size.
  opening image -> features [Q,E] -> (writer) regressed features [Q,E] per beat -> frames (PIL, H x H)
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch
from PIL import Image

from src.models.story_cache import SinkSettings
from src.pipelines.models import PipelineModels
from src.pipelines.story_writer import DecodeSettings, StoryWriter

GEN_MODES = ("story", "vis")


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
