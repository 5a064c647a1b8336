"""SEED-Story stage 3: adapt the de-tokenizer to the MLLM's regressed features (SEED-Story §3.1 stage 3,
App. C.3; the release's train_sdxl_img2img_llm.py).

Stage 1 taught the de-tokenizer to draw a frame from the visual tokenizer's features of that very frame;
at generation it gets the features the stage-2 MLLM regresses instead, which are close but not equal
(the cosine error of stage 2). Stage 3 closes that gap: the frozen stage-2 MLLM runs teacher-forced over
the story up to and including the target beat's text (the release's stage-2 sample ending at that beat:
src/data/story_sequence.py with `supervision: last`), its output resampler regresses the target frame's
features, and those condition the de-tokenizer, whose ordinary diffusion loss (the detokenizer task's:
the frame's VAE latent, its noise, its target and loss settings) trains it.

Inputs come from the upstream run folders, never from hand-copied paths:
  model.sft_run           the story_sft run (its config names the tokenizer and the LLM; its weights load strictly)
  model.detokenizer_run   the detokenizer run to start from; default: the one the SFT run's config names
                          (its `model.detokenizer_run`). Its config names the SDXL folder and its loss settings.

What trains (`model.trainable`): `resampler_kv` (the release) = the de-tokenizer's resampler and every UNet
attention's to_k / to_v (self- and cross-attention: the release selects modules by name suffix);
`full_unet` (the paper, App. C.3) = the resampler and the whole UNet. The MLLM, the visual tokenizer and
the VAE are frozen and stay in eval mode (no LoRA dropout) whatever mode the engine puts the task in.

An item is one target beat b >= 1 of a story: the release samples n ~ U{0..F-2} context beats and
supervises beat n+1, i.e. a uniform target beat; here every (story, beat) is an item and the engine's
sampler draws them, so a batch of 128 is 128 target frames, as the release counts.

Shapes: B targets, b+1 beats of the item's story up to its target, T tokenizer input size, S frame size,
Q feature tokens, E feature width, c/h/w latent channels and size.
  pixel_values [sum (b+1),3,T,T] (every story's beats 0..b) -> regressed [B,Q,E] (frozen MLLM)
  target_pixels [B,3,S,S] -> latents [B,c,h,w] (frozen VAE); time_ids [B,6]; model_pred, target [B,c,h,w]
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import Dataset

from src import runs
from src.data.stories import read_split
from src.data.transforms import image_size, story_file, story_frame
from src.models.detokenizer import released_time_ids
from src.models.visual_tokenizer import INPUT_RESAMPLE
from src.pipelines.diffusion import scheduler_config
from src.pipelines.seed_story import DetokenizerSettings, SeedStoryPipeline
from src.tasks.base import Task
from src.tasks.detokenizer import stored_frame_time_ids
from src.tasks.story_sft import check_two_beats
from src.tasks.validation import Means, val_batches

TRAINABLE = {"resampler_kv": "to_kv", "full_unet": "full"}  # -> Detokenizer.set_trainable's UNet modes
# How an item's frames are made from the stored ones. squash (ours): every frame resized whole to the
# square, the target's time ids (h, w, 0, 0, S, S), as stage 2 and generation read frames. released
# (train_sdxl_img2img_llm.py): Resize + CenterCrop of the tokenizer frames (qwen_448_transform_keep_ratio)
# and of the target (sd_transform_1024, bicubic), with the release's time ids (crop offsets swapped:
# src/models/detokenizer.py:released_time_ids). Equal for square frames.
FRAMES = ("squash", "released")
UPSTREAM_FILE = "upstream.json"


class AdaptItems(Dataset):
    """Every target beat b >= 1 of every story of a split. Item keys: pixel_values [b+1,3,T,T] (beats 0..b
    at the tokenizer's size), captions (beats 0..b), story_id, target_pixels [3,S,S] (beat b at the frame
    size), time_ids [6], index (the item's number)."""

    def __init__(self, root, split: str, tokenizer_size: int, image_size: int, frames: str = "squash"):
        if frames not in FRAMES:
            raise ValueError(f"key 'model.frames': {frames!r} is not one of {', '.join(FRAMES)}")
        self.root, self.frames = Path(root), frames
        _, self.stories = read_split(self.root, split)
        check_two_beats(self.root / f"{split}.jsonl", self.stories)
        self.tokenizer_size, self.image_size = tokenizer_size, image_size
        self.index = [(s, b) for s, story in enumerate(self.stories) for b in range(1, story.num_frames)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        s, b = self.index[i]
        story = self.stories[s]
        fit = "crop" if self.frames == "released" else "squash"
        if self.frames == "released":
            size = story_file(self.root, story, "images", b, image_size)  # the header only
            time_ids = torch.tensor(released_time_ids(size, self.image_size), dtype=torch.float32)
        else:
            time_ids = stored_frame_time_ids(self.root, story, b, self.image_size)
        return {"pixel_values": torch.stack([story_frame(self.root, story, k, self.tokenizer_size, INPUT_RESAMPLE, fit)
                                             for k in range(b + 1)]),
                "captions": story.captions[:b + 1], "story_id": story.id,
                "target_pixels": story_frame(self.root, story, b, self.image_size, "bicubic", fit),
                "time_ids": time_ids, "index": i}


class StoryAdaptTask(Task):
    upstream_keys = ("sft_run", "detokenizer_run")  # model keys naming runs this task rebuilds (src/assets.py prepares theirs)
    model_choices = {"trainable": tuple(TRAINABLE), "upstream_weights": ("auto", "ema", "trained"), "frames": FRAMES}
    best_metric = "val/loss"  # validate(): the diffusion loss on val items with fixed noise

    def __init__(self, cfg):
        super().__init__(cfg)
        m = cfg.model
        _, sft_ckpt, sft_cfg = runs.open_run(m.sft_run, ("story_sft",), "key 'model.sft_run'")
        detok_spec, where = m.detokenizer_run, "key 'model.detokenizer_run'"
        if detok_spec is None:
            detok_spec, where = sft_cfg.model.detokenizer_run, f"{m.sft_run}: key 'model.detokenizer_run'"
            if detok_spec is None:
                raise ValueError(f"key 'model.detokenizer_run': not set, and the SFT run's config ({m.sft_run}) "
                                 f"names no de-tokenizer either; set model.detokenizer_run to a detokenizer run")
        _, detok_ckpt, detok_cfg = runs.open_run(detok_spec, ("detokenizer",), where)
        runs.check_same_tokenizer(sft_cfg, detok_cfg, f"model.sft_run ({m.sft_run})", f"the de-tokenizer run ({detok_spec})")
        if detok_cfg.data.image_size != cfg.data.image_size:
            raise ValueError(f"key 'data.image_size': {cfg.data.image_size}, but the de-tokenizer run ({detok_spec}) "
                             f"was trained at {detok_cfg.data.image_size}")
        # The SFT run's init_weights (e.g. the converted SEED-X agent) are all replaced by its checkpoint.
        self.sft, _, sft_file = runs.load_task(sft_ckpt, m.upstream_weights, ["model.init_weights=null"])
        self.detok, _, detok_file = runs.load_task(detok_ckpt, m.upstream_weights)
        self.detok.visual_tokenizer = self.sft.visual_tokenizer  # the same tokenizer (checked): keep one copy
        self.sft.requires_grad_(False)
        self.detok.requires_grad_(False)
        self.detok.detokenizer.set_trainable(TRAINABLE[m.trainable])
        unet = self.detok.detokenizer.unet
        unet.enable_gradient_checkpointing() if m.gradient_checkpointing else unet.disable_gradient_checkpointing()
        self.upstream = {"sft_run": {"given": m.sft_run, "checkpoint": str(sft_ckpt.resolve()), **runs.file_stamp(sft_file)},
                         "detokenizer_run": {"given": detok_spec, "checkpoint": str(detok_ckpt.resolve()),
                                             **runs.file_stamp(detok_file)}}
        self.check_upstream()
        self.train()

    # ---- the adapted de-tokenizer and what draws with it ----------------------------------------------
    @property
    def detokenizer(self):
        return self.detok.detokenizer

    @property
    def vae(self):
        return self.detok.vae

    @property
    def visual_tokenizer(self):
        return self.sft.visual_tokenizer

    def pipeline(self, **parts) -> SeedStoryPipeline:
        """The adapted de-tokenizer's drawing pipeline, with this stage's sample settings (`mllm=`,
        `special=`: an MLLM to write with; the one it was adapted to is `self.sft`)."""
        return SeedStoryPipeline(self.detokenizer, self.vae, self.visual_tokenizer,
                                 scheduler_config(self.detok.cfg.model.pretrained), self.cfg.data.image_size,
                                 DetokenizerSettings.from_config(self.cfg.sample), **parts)

    def train(self, mode: bool = True):
        """The frozen MLLM and VAE stay in eval mode (LoRA dropout off: the features are the MLLM's own),
        unless model.sft_dropout asks for the release's training-mode MLLM while training."""
        super().train(mode)
        self.sft.train(mode and self.cfg.model.sft_dropout)
        self.detok.vae.eval()
        return self

    # ---- the upstream runs a run was trained from ----------------------------------------------------
    def upstream_path(self) -> Path:
        return runs.run_dir_of(self.cfg) / UPSTREAM_FILE

    def has_checkpoints(self) -> bool:
        return bool(runs.list_checkpoints(self.upstream_path().parent / "checkpoints"))

    def check_upstream(self) -> None:
        """A run that recorded its upstream checkpoints (its first training session) and saved weights is
        rebuilt (resume, generation) from exactly those: `latest` moving on in an upstream run is an error
        naming the key. (A folder without checkpoints starts afresh: the record is rewritten.)"""
        path = self.upstream_path()
        if not path.is_file() or not self.has_checkpoints():
            return
        recorded = json.loads(path.read_text())
        for key, now in self.upstream.items():
            was = recorded.get(key, {})
            if {k: was.get(k) for k in ("file", "bytes", "mtime_ns")} != {k: now[k] for k in ("file", "bytes", "mtime_ns")}:
                raise ValueError(f"key 'model.{key}': {path} records that this run was trained from {was.get('file')}, "
                                 f"but '{now['given']}' now gives {now['file']}; pin the checkpoint: "
                                 f"model.{key}={was.get('checkpoint')}")

    def record_upstream(self) -> None:
        path = self.upstream_path()
        if path.parent.is_dir() and not (path.is_file() and self.has_checkpoints()):
            tmp = path.with_name(f"{UPSTREAM_FILE}.tmp{os.getpid()}")
            tmp.write_text(json.dumps(self.upstream, indent=2))
            os.replace(tmp, path)

    # ---- data -------------------------------------------------------------------------------------
    def dataset(self, split: str) -> AdaptItems:
        return AdaptItems(self.cfg.data.root, split, self.visual_tokenizer.image_size, self.cfg.data.image_size,
                          self.cfg.model.frames)

    def train_dataset(self):
        self.record_upstream()  # the engine asks for the dataset once per training session, in its run folder
        return self.dataset("train")

    def collate(self, items: list[dict]) -> dict:
        """story_sft's batch of the items' beats 0..b, plus the targets' frames and time ids."""
        batch = self.sft.collate(items)
        batch["target_pixels"] = torch.stack([item["target_pixels"] for item in items])
        batch["time_ids"] = torch.stack([item["time_ids"] for item in items])
        batch["index"] = torch.tensor([item["index"] for item in items])
        return batch

    # ---- the step ---------------------------------------------------------------------------------
    @torch.no_grad()
    def regressed_features(self, batch: dict) -> tuple[torch.Tensor, int]:
        """The frozen MLLM's regressed features of each item's last beat [B,Q,E], teacher-forced over beats
        0..b as stage 2 builds the sample (cut from the front beyond the SFT run's max_length); the count
        of cut samples."""
        seqs, cut = self.sft.sequences(batch, [n - 1 for n in batch["num_beats"]], "last")
        return self.sft.teacher_forced(batch, seqs)["regressed"], cut

    def diffusion_losses(self, batch: dict, uncond_prob: float) -> tuple[torch.Tensor, int]:
        features, cut = self.regressed_features(batch)
        latents = self.detok.encode_latents(batch["target_pixels"])
        features = self.detok.drop_condition(features, uncond_prob)
        noise, timesteps, noisy = self.detok.objective.add_noise(latents)
        model_pred = self.detokenizer(noisy, timesteps, features, batch["time_ids"])
        target = self.detok.objective.target(latents, noise, timesteps)
        return self.detok.objective.loss(model_pred, target, timesteps), cut

    def training_step(self, batch: dict) -> dict:
        loss, cut = self.diffusion_losses(batch, self.cfg.model.uncond_prob)
        return {"loss": loss, "samples_cut": torch.tensor(float(cut))}

    @torch.no_grad()
    def validate(self) -> dict:
        """The diffusion loss on the first model.val_items val items, with the same noise every time (the
        engine runs this in a forked RNG); the mean over items."""
        means = Means()
        torch.manual_seed(0)
        for batch in val_batches(self.dataset("val"), self.cfg.model.val_items, self.cfg.train.batch_size,
                                 self.collate, self.detok.vae.device):
            loss, _ = self.diffusion_losses(batch, 0.0)
            means.add("val/loss", loss, len(batch["index"]))
        return means.means()

    # ---- sampling -----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, out_dir: Path, split: str, num_stories: Optional[int] = None, seed: Optional[int] = None,
               extra_meta: Optional[dict] = None) -> Path:
        """`split`'s stories drawn as generation draws them in vis mode (src/pipelines/seed_story.py): the
        MLLM reads the given captions and regresses each frame's features, the adapted de-tokenizer draws them."""
        from src.models.story_cache import SinkSettings
        from src.pipelines.seed_story import generate_seed_stories
        from src.pipelines.story_writer import DecodeSettings

        root = self.cfg.data.root
        stories = read_split(root, split)[1][:num_stories or None]
        seed = self.cfg.sample.seed if seed is None else seed
        meta = {"detokenizer": "story_adapt", "upstream": self.upstream, "dataset_root": str(root), "split": split,
                **(extra_meta or {})}
        pipe = self.pipeline(**self.sft.writer_parts())
        return generate_seed_stories(pipe, stories, root, out_dir, "vis",
                                     max(story.num_frames for story in stories), "dense", SinkSettings(),
                                     DecodeSettings(seed=seed), meta)
