"""StoryGPT-V's drawing, one code path for every caller (docs/storygpt_v.md): a story file
(`bash scripts/story.sh`), the studio, a dataset split (src/generate.py, eval.sh) and a training run's
periodic samples all draw through `StoryGPTVPipeline`.

Char-LDM alone (paper §3.1): each caption's name tokens are fused with their characters' reference
embeddings; the first `start_merge_step` denoising steps use the text-only conditioning and the rest the
fused one (delayed conditioning, FastComposer). Without an image encoder the pipeline is the plain LDM.
With stage 2 (paper §3.2; the released eval_llm.py) frames are drawn in order: for frame k the LLM reads
the frames it has already drawn and the captions so far, and its mapper's output conditions Char-LDM.
Frame 0 comes from Char-LDM on its caption (`first_frame: char_ldm`, the release) or from the LLM with no
context (`llm`, the paper). A frame whose caption holds a pronoun switches to the LLM output after
`pronoun_start_merge_step` text-only steps (the text-only start knows no name), the others after
`start_merge_step` (the released eval_llm.py).

Names: the run's dataset characters (and `data.aliases`) are always known; a story's own characters
are added for that call, so "Zed" in a caption is fused with Zed's image although the dataset never had
him. Built from run folders with `StoryGPTVPipeline.from_run`; memory tiers (offload, dtype, VAE slicing)
are src/memory.py's and set `execution_device`.

Shapes: B frames drawn together, L=77 tokens, E conditioning width, R reference size, H frame size.
  references {name: [3,R,R] in [0,1]} -> ref_embeds {name: [E]}
  captions -> text_states, fused [B,L,E];  stage 2: conditioning [B,L,E];  -> images (PIL, H x H)
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from src.models.char_conditioning import encode_captions, fuse_captions, sampling_slots
from src.models.name_tokens import find_names, name_patterns
from src.pipelines import pronouns
from src.pipelines.diffusion import frame_generator, make_scheduler, sd_pipeline
from src.pipelines.models import PipelineModels

# Pronouns that make a caption a "pronoun frame" when no co-reference flag is given (a user's story).
PRONOUN = pronouns.PRONOUN


@dataclass
class DrawSettings:
    scheduler: str = "PNDMScheduler"      # any diffusers scheduler class (sample.scheduler)
    num_inference_steps: int = 30
    guidance_scale: float = 5.0
    guidance_rescale: float = 0.0
    start_merge_step: int = 16            # text-only conditioning for this many steps, fused after
    batch_size: int = 16                  # frames drawn together (a dataset split's stories)
    pronoun_start_merge_step: int = 0     # stage 2's pronoun frames: text-only steps before the LLM output
    #                                       (the release: 1; its "start_merge_step=0" still runs step 0 text-only)

    @classmethod
    def from_config(cls, sample_cfg, start_merge_step: int = 0, pronoun_start_merge_step: int = 0) -> "DrawSettings":
        return cls(scheduler=sample_cfg.scheduler, num_inference_steps=sample_cfg.num_inference_steps,
                   guidance_scale=sample_cfg.guidance_scale, guidance_rescale=sample_cfg.guidance_rescale,
                   start_merge_step=start_merge_step, batch_size=sample_cfg.batch_size,
                   pronoun_start_merge_step=pronoun_start_merge_step)


@dataclass
class Frame:
    """One drawn frame and what conditioned it."""
    image: object                          # PIL image
    caption: str
    conditioning: str                      # "text" (plain LDM), "char_ldm" (fused names) or "stage2" (the LLM)
    fused: list[str] = field(default_factory=list)   # names fused into the caption's tokens
    pronoun_frame: bool = False            # stage 2: switched to the LLM at pronoun_start_merge_step
    resolved: Optional[dict] = None        # stage 2, a pronoun frame: `resolve_pronouns`' diagnostic

    def record(self) -> dict:
        out = {"caption": self.caption, "conditioning": self.conditioning, "fused": self.fused,
               "pronoun_frame": self.pronoun_frame}
        if self.resolved is not None:
            out["stage2_resolved"] = self.resolved
        return out


def to_pixels(image) -> torch.Tensor:
    """PIL -> [3,H,W] in [-1,1] (how the dataset gives frames; stage 2 reads the frames it drew)."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1


class StoryGPTVPipeline(PipelineModels):
    """Components in, frames out. `image_encoder`, `fuse` and `names` (the run's dataset characters, with
    `aliases` {alias: name}) make it Char-LDM (None: the plain LDM); `stage2`
    (src/models/storygptv_stage2.StoryConditioner) adds the LLM, trained towards Char-LDM's `stage2_target`
    conditioning ("fuse" or "text"). `references`: the run's dataset references {name: [3,R,R]}, used for a
    character the caller gives no image of. `name_tokens` / `fuse_names`: how name tokens are marked when
    drawing (src/models/char_conditioning.py sampling_slots; the release's modes). `provenance`: what built
    it (from_run: runs and weights files)."""

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler_config: dict, image_size: int,
                 settings: DrawSettings, image_encoder=None, fuse=None, names=(), aliases: Optional[dict] = None,
                 max_characters: int = 4, references: Optional[dict] = None, stage2=None,
                 first_frame: str = "char_ldm", references_from: str = "the dataset", stage2_target: str = "fuse",
                 name_tokens: str = "ours", fuse_names: bool = True):
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.scheduler_config, self.image_size, self.settings = scheduler_config, image_size, settings
        self.image_encoder, self.fuse = image_encoder, fuse
        self.names, self.aliases = list(names), dict(aliases or {})
        self.name_patterns = name_patterns(self.names, self.aliases)
        self.max_characters, self.references = max_characters, dict(references or {})
        self.references_from = references_from
        self.stage2, self.first_frame, self.stage2_target = stage2, first_frame, stage2_target
        self.name_tokens, self.fuse_names = name_tokens, fuse_names
        self.execution_device: Optional[torch.device] = None  # set by src/memory.py's offload tiers
        self.provenance: dict = {}
        if stage2 is not None and image_encoder is None:
            raise ValueError("stage 2 conditions Char-LDM: the pipeline needs its image encoder and fuse module")

    @property
    def device(self) -> torch.device:
        """Where the pipeline computes: the execution device when the models are offloaded, else the UNet's."""
        return self.execution_device or self.unet.device

    # ---- building, moving, memory -----------------------------------------------------------------------
    @classmethod
    def from_run(cls, run, stage2=None, weights: str = "auto", device=None, dtype=None, llm_dtype=None,
                 overrides=()) -> "StoryGPTVPipeline":
        """The pipeline of a trained (or converted: src/tools/convert/storygptv_ldm.py) run folder, one of its
        checkpoints or its best/. `run`: a char_ldm run (Char-LDM alone), or an align run (stage 2 with
        the Char-LDM its model.stage1 names; then leave `stage2` out). `stage2`: an align run to draw with
        `run`'s Char-LDM. `weights`: auto / ema / trained. `device`: default cuda when available; `dtype`
        the diffusion models' and `llm_dtype` the LLM's (default `dtype`; None: as trained). `overrides`:
        key=value changes of the runs' configs (e.g. sample.num_inference_steps=20). The runs' datasets
        and weights must be on disk (the entries make sure with src/assets.py)."""
        from src import runs

        if run is None and stage2 is None:
            raise ValueError("from_run: name a char_ldm run, an align run, or both a char_ldm run and stage2")
        if run is not None and stage2 is None:
            if runs.open_run(run, ("char_ldm", "align"), "--run")[2].task == "align":
                run, stage2 = None, run
        ldm = ldm_cfg = ldm_file = None
        if run is not None:
            ldm_dir, ldm_ckpt, _ = runs.open_run(run, ("char_ldm",), "--run")
            ldm, ldm_cfg, ldm_file = runs.load_task(ldm_ckpt, weights, list(overrides))
        if stage2 is None:
            pipe = ldm.pipeline()
        else:
            align_dir, align_ckpt, _ = runs.open_run(stage2, ("align",), "--stage2")
            align, _, align_file = runs.load_task(align_ckpt, weights, list(overrides))
            pipe = align.pipeline(ldm)
            if ldm is None:
                ldm = align.stage1()
                ldm_file = Path(align.stage1_weights)
                ldm_dir, ldm_ckpt = runs.resolve_run_checkpoint(align.cfg.model.stage1)
            pipe.provenance["stage2"] = {"run": str(align_dir), "checkpoint": str(align_ckpt),
                                         "weights_file": str(align_file)}
        pipe.provenance["char_ldm"] = {"run": str(ldm_dir), "checkpoint": str(ldm_ckpt), "weights_file": str(ldm_file),
                                       "task": ldm.cfg.task, "dataset_root": str(ldm.cfg.data.root)}
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return pipe.to(device, dtype, llm_dtype).eval()

    def components(self) -> list[tuple[str, list]]:
        """The models the pipeline runs, grouped as they move together under model offloading (src/memory.py),
        in the order they run: [(name, [modules])]. Stage 2's vision tower, soft-token projection, LLM and
        mapper are one group (the LLM dominates it)."""
        groups = [("text_encoder", [self.text_encoder])]
        if self.character_conditioning:
            groups = [("image_encoder", [self.image_encoder]), *groups, ("fuse", [self.fuse])]
        if self.stage2 is not None:
            s = self.stage2
            groups.insert(0, ("stage2", [s.vision, s.visual_tokens, s.llm, s.mapper]))
        return [*groups, ("unet", [self.unet]), ("vae", [self.vae])]

    def llm_module(self):
        return self.stage2.llm if self.stage2 is not None else None

    # ---- names ----------------------------------------------------------------------------------------
    def known_name(self, name: str) -> str:
        """A story character's name as the run's dataset spells it when it is one of its characters ("ada"
        -> "Ada"), else as given."""
        found = find_names(name, self.name_patterns)
        if len(found) == 1 and found[0][0] == 0 and found[0][1] == len(name):
            return found[0][2]
        return name

    def names_for(self, story_names) -> tuple[list, list]:
        """(patterns, names) for one call: the dataset's names and aliases plus `story_names` (a story's own
        characters)."""
        extra = [n for n in story_names if n not in self.names]
        if not extra:
            return self.name_patterns, self.names
        return name_patterns(self.names + extra, self.aliases), self.names + extra

    @property
    def character_conditioning(self) -> bool:
        return self.image_encoder is not None

    # ---- conditioning ---------------------------------------------------------------------------------
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        return encode_captions(self.tokenizer, self.text_encoder, captions)

    @torch.no_grad()
    def reference_embeddings(self, characters: Optional[dict] = None) -> dict:
        """{name: [E]}: the given references ({name: image or [3,R,R] tensor}, see
        src/data/references.reference_from_image; None: the run's dataset reference) over the run's
        dataset references."""
        from src.data.references import reference_from_image

        if not self.character_conditioning:
            return {}
        size = self.image_encoder.image_size
        refs = dict(self.references)
        for name, image in (characters or {}).items():
            if image is not None:
                refs[name] = reference_from_image(image, size)
        if not refs:
            return {}
        names = sorted(refs)
        return dict(zip(names, self.image_encoder(torch.stack([refs[n] for n in names]).to(self.device))))

    @torch.no_grad()
    def condition(self, captions: list[str], ref_embeds: dict,
                  names: Optional[tuple] = None) -> tuple[torch.Tensor, torch.Tensor, list]:
        """(text-only states, fused states [B,L,E], the names fused in each caption). `names`: `names_for`'s
        (patterns, names) to find (default the dataset's)."""
        text_states = self.encode_text(captions)
        if not self.character_conditioning:
            return text_states, text_states, [[] for _ in captions]
        patterns, character_names = names or (self.name_patterns, self.names)

        def slots_of(caption):
            return sampling_slots(self.tokenizer, caption, patterns, self.max_characters, self.name_tokens,
                                  self.fuse_names, tuple(character_names))
        fused, fused_names = fuse_captions(self.tokenizer, self.text_encoder, self.fuse, text_states, captions,
                                           ref_embeds, slots_of, release_ids=self.name_tokens == "release",
                                           where=f"{self.references_from}: ",
                                           hint=" (give that character a reference image)")
        return text_states, fused, fused_names

    # ---- denoising ------------------------------------------------------------------------------------
    @torch.no_grad()
    def draw(self, text_states: torch.Tensor, final: torch.Tensor, generators: list, settings: DrawSettings,
             merge_steps, output_type: str = "pil", latents_out: Optional[list] = None) -> list:
        """Delayed conditioning (FastComposer; the released models/pipeline.py): frame b is denoised with
        `text_states[b]` for its first `merge_steps[b]` steps (an int: the same for every frame) and with
        `final[b]` after (0: `final` throughout), classifier-free guidance against the empty caption.
        Returns PIL images (output_type "latent" / "np": the final latents / float images); `latents_out`
        (a list) also receives the final latents [B,c,h,w]."""
        null = self.encode_text([""] * text_states.shape[0])
        cfg_on = settings.guidance_scale > 1
        merge = torch.as_tensor(merge_steps, device=final.device).expand(final.shape[0])

        def conditioning(steps_done: int) -> torch.Tensor:
            return torch.where((merge <= steps_done)[:, None, None], final, text_states)

        def switch(pipeline, i, t, tensors):
            if latents_out is not None and i == pipeline.num_timesteps - 1:
                latents_out.append(tensors["latents"])
            if bool((merge == i + 1).any()):
                states = conditioning(i + 1)
                return {"prompt_embeds": torch.cat([null, states]) if cfg_on else states}
            return {}
        pipe = sd_pipeline(self.unet, self.vae, self.text_encoder, self.tokenizer,
                           make_scheduler(settings.scheduler, self.scheduler_config))
        return pipe(prompt_embeds=conditioning(0), negative_prompt_embeds=null,
                    height=self.image_size, width=self.image_size, num_inference_steps=settings.num_inference_steps,
                    guidance_scale=settings.guidance_scale, guidance_rescale=settings.guidance_rescale,
                    generator=generators, output_type=output_type, callback_on_step_end=switch,
                    callback_on_step_end_tensor_inputs=["prompt_embeds", "latents"]).images

    def frame_drawer(self, ref_embeds: dict, settings: Optional[DrawSettings] = None,
                     output_type: str = "pil", names: Optional[tuple] = None) -> Callable:
        """`draw(captions, generators) -> images` for Char-LDM alone (src/pipelines/story_sampler.py), also
        recording the names fused in each caption in `draw.fused`."""
        settings = settings or self.settings

        def draw(captions: list[str], generators: list) -> list:
            text_states, fused, fused_names = self.condition(captions, ref_embeds, names)
            draw.fused.extend(fused_names)
            return self.draw(text_states, fused, generators, settings, settings.start_merge_step, output_type)
        draw.fused = []
        return draw

    # ---- stage 2 ------------------------------------------------------------------------------------
    def by_llm(self, k: int) -> bool:
        """Stage 2: whether frame k is conditioned by the LLM (frame 0 may be Char-LDM's, `first_frame`)."""
        return not (k == 0 and self.first_frame == "char_ldm")

    @torch.no_grad()
    def stage2_condition(self, captions: list[list[str]], k: int, drawn: list[list[torch.Tensor]], ref_embeds: dict,
                         names: Optional[tuple] = None) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Frame k of several stories with stage 2: (text-only states, conditioning [B,L,E], the names fused
        where Char-LDM conditions)."""
        current = [story[k] for story in captions]
        if not self.by_llm(k):
            text_states, conditioning, fused = self.condition(current, ref_embeds, names)
        else:
            tokens = [self.stage2.frame_tokens(torch.stack(frames).to(self.device)) if k else [] for frames in drawn]
            conditioning = self.stage2.condition(captions, [k] * len(captions), [list(t) for t in tokens],
                                                 inference=True)["conditioning"]
            text_states, fused = self.encode_text(current), [[] for _ in current]
        return text_states, conditioning.to(text_states.device, text_states.dtype), fused

    def stage2_draw(self, text_states: torch.Tensor, conditioning: torch.Tensor, pronoun: list[bool],
                    generators: list, settings: DrawSettings, latents_out: Optional[list] = None) -> list:
        """A pronoun frame switches to `conditioning` after `pronoun_start_merge_step` text-only steps, the
        others after `start_merge_step` (the released eval_llm.py)."""
        merges = [settings.pronoun_start_merge_step if flag else settings.start_merge_step for flag in pronoun]
        return self.draw(text_states, conditioning, generators, settings, merges, latents_out=latents_out)

    @torch.no_grad()
    def stage2_step(self, captions: list[list[str]], k: int, drawn: list[list[torch.Tensor]], pronoun: list[bool],
                    ref_embeds: dict, generators: list, settings: DrawSettings,
                    latents_out: Optional[list] = None) -> tuple[list, list]:
        """Frame k of several stories with stage 2: (images, the names fused where Char-LDM drew)."""
        text_states, conditioning, fused = self.stage2_condition(captions, k, drawn, ref_embeds)
        return self.stage2_draw(text_states, conditioning, pronoun, generators, settings, latents_out), fused

    @torch.no_grad()
    def resolve_pronouns(self, caption: str, conditioning: torch.Tensor, earlier_mentions: list[list[str]],
                         ref_embeds: dict, names: Optional[tuple] = None) -> dict:
        """The diagnostic of src/pipelines/pronouns.py for one pronoun frame: the LLM's `conditioning` [L,E]
        against Char-LDM's conditioning (`stage2_target`: fused or text-only, what stage 2 was trained
        towards) of the caption with its pronouns replaced by each candidate. Distances are mean squared
        errors over L x E; `margin` is the runner-up's distance minus the nearest's."""
        found = pronouns.pronouns_in(caption)
        options = pronouns.candidates(earlier_mentions)
        if not found or not options:
            return {"pronouns": found, "nearest": None, "margin": None, "candidates": [],
                    "note": "no pronoun" if not found else "no character named in an earlier caption"}
        texts = [pronouns.replace_pronouns(caption, names) for names in options]
        text_states, fused, _ = self.condition(texts, ref_embeds, names)
        target = fused if self.stage2_target == "fuse" else text_states
        distances = (target.float() - conditioning.float()[None]).pow(2).mean(dim=(1, 2)).tolist()
        ranked = sorted(zip(distances, options, texts), key=lambda item: item[0])
        return {"pronouns": found, "nearest": pronouns.group_label(ranked[0][1]),
                "margin": round(ranked[1][0] - ranked[0][0], 6) if len(ranked) > 1 else None,
                "candidates": [{"characters": names, "caption": text, "distance": round(d, 6)}
                               for d, names, text in ranked]}

    # ---- a story ------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, captions: list[str], characters: Optional[dict] = None, seed: int = 0,
                 settings: Optional[DrawSettings] = None, pronoun_frames: Optional[list[bool]] = None,
                 story_index: int = 0, on_frame: Optional[Callable] = None, **overrides) -> list[Frame]:
        """Draw one story. `characters`: {name: reference image} (a path, a PIL image of any size and
        mode, a [3,H,W] tensor in [0,1], or None for the run's dataset reference of that name); a name
        the run's dataset does not know is found in the captions too. A named character without an image
        takes the run's dataset reference. `overrides` change `settings` (num_inference_steps=...,
        guidance_scale=..., start_merge_step=..., scheduler=...). Frame k starts from the noise of (seed,
        story_index, k), as the dataset path draws story `story_index` of a split. `pronoun_frames`
        (stage 2): which captions hold a pronoun; default: a he/she/they/him/her/them/his/their in the
        caption; each such frame records `resolve_pronouns`' diagnostic. `on_frame(k, frame)` is called
        as each frame is done (stage 2 draws them one by one)."""
        if not captions:
            raise ValueError("a story needs at least one caption")
        settings = replace(settings or self.settings, **overrides)
        characters = {self.known_name(name): image for name, image in (characters or {}).items()}
        names = self.names_for(characters)
        ref_embeds = self.reference_embeddings(characters)
        generators = [frame_generator(seed, story_index, k, self.device) for k in range(len(captions))]
        frames: list[Frame] = []
        if self.stage2 is None:
            kind = "char_ldm" if self.character_conditioning else "text"
            for start in range(0, len(captions), settings.batch_size):
                chunk = captions[start:start + settings.batch_size]
                text_states, fused, fused_names = self.condition(chunk, ref_embeds, names)
                images = self.draw(text_states, fused, generators[start:start + len(chunk)], settings,
                                   settings.start_merge_step)
                for caption, image, fused_names in zip(chunk, images, fused_names):
                    frames.append(Frame(image, caption, kind, fused_names))
                    if on_frame is not None:
                        on_frame(len(frames) - 1, frames[-1])
            return frames
        flags = pronoun_frames if pronoun_frames is not None else [bool(PRONOUN.search(c)) for c in captions]
        if len(flags) != len(captions):
            raise ValueError(f"pronoun_frames has {len(flags)} entries for {len(captions)} captions")
        mentions = [list(dict.fromkeys(name for _, _, name in find_names(c, names[0]))) for c in captions]
        drawn: list[torch.Tensor] = []
        for k in range(len(captions)):
            text_states, conditioning, fused = self.stage2_condition([captions], k, [drawn], ref_embeds, names)
            resolved = None
            if flags[k] and self.by_llm(k):
                resolved = self.resolve_pronouns(captions[k], conditioning[0], mentions[:k], ref_embeds, names)
            images = self.stage2_draw(text_states, conditioning, [flags[k]], [generators[k]], settings)
            frames.append(Frame(images[0], captions[k], "stage2" if self.by_llm(k) else "char_ldm", fused[0], flags[k],
                                resolved))
            drawn.append(to_pixels(images[0]))
            if on_frame is not None:
                on_frame(k, frames[-1])
        return frames
