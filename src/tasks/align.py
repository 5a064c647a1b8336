"""StoryGPT-V stage 2: align an LLM with Char-LDM (paper §3.2; docs/storygpt_v_stage2.md).

The LLM reads the story so far, the earlier frames as K soft tokens each and the earlier captions, then
the current caption followed by R [IMG] tokens; the GILL mapper turns the [IMG] tokens' hidden states
into Char-LDM's text conditioning (the prompt and the forward pass: src/models/storygptv_stage2.py;
captions from `data.caption_field`, the co-reference captions). The target is Char-LDM's fused embedding
of the current caption with the names restored (src/data/target_cache.py, built by
src/tools/align_targets.py), so reading "he" the LLM learns to point at "Fred".

Losses: ce_weight * CE on the [IMG] tokens (`ce_tokens: all`: every text token plus [IMG0], the
released code) + align_weight * alignment to the cached target (`align_loss: mse`, the squared error of
Eq. 6 averaged over tokens and width; `l2`: the released code's plain Euclidean distance per token)
+ optionally diffusion_weight * the denoising loss of the frozen Char-LDM UNet conditioned on the
mapper output (released v2).

Shapes: B batch, F frames, K soft tokens per frame, R [IMG] tokens, D LLM width, W vision width,
L=77 conditioning tokens, E conditioning width, S vision input size.
  frames [B,F,3,S,S] -> pooled [B,F,W] -> soft tokens [B,F,K,D]
  prompt -> inputs_embeds [B,T,D] -> hidden [B,T,D] -> at [IMG]: [B,R,D] -> mapper -> [B,L,E]
  targets [B,F,L,E] (cache) -> target [B,L,E]
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from src import runs
from src.data.datasets import StoryDataset
from src.data.stories import read_split
from src.data.target_cache import TargetCache, default_cache_dir
from src.models.character_encoder import CharacterImageEncoder
from src.models.llm_with_image_tokens import LLMWithImageTokens
from src.models.mappers import GILLMapper, ImageToTokens
from src.models.storygptv_stage2 import StoryConditioner
from src.pipelines.story_sampler import generate_stage2_stories
from src.pipelines.storygptv import DrawSettings
from src.tasks.base import Task
from src.tasks.model_configs import lora_kwargs
from src.tasks.validation import Means, val_batches

CHOICES = {"llm_mode": ("frozen", "lora", "full"), "ce_tokens": ("img", "all"), "align_loss": ("mse", "l2"),
           "target": ("fuse", "text"), "first_frame": ("char_ldm", "llm"), "inference_prompt": ("ours", "release"),
           "frame_preprocess": ("ours", "release"),
           "llm_dtype": ("float32", "bfloat16", "float16")}


def alignment_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """[B,L,E] x2 -> scalar. mse: mean squared error; l2: mean over tokens of the Euclidean distance."""
    diff = pred.float() - target.float()
    if kind == "mse":
        return diff.pow(2).mean()
    return diff.pow(2).sum(-1).add(1e-12).sqrt().mean()


class AlignTask(Task):
    upstream_keys = ("stage1",)  # model keys naming runs this task rebuilds (src/assets.py prepares theirs)
    model_choices = CHOICES
    best_metric = "val/l2"  # lower is better; the engine keeps the best checkpoint by it

    def __init__(self, cfg):
        super().__init__(cfg)
        m = cfg.model
        self._targets = None  # the target cache, opened on first use (the constructor reads no data)
        self.llm = LLMWithImageTokens.from_pretrained(
            m.llm, m.num_image_tokens, m.llm_mode, m.llm_dtype,
            lora=lora_kwargs(m.lora))
        self.vision = CharacterImageEncoder.from_pretrained(m.vision_encoder, trainable_layers=0)
        self.visual_tokens = ImageToTokens(self.vision.vision_model.config.hidden_size, self.llm.width,
                                           m.visual_tokens)
        num_tokens, width = m.conditioning
        mp = m.mapper
        self.mapper = GILLMapper(self.llm.width, width, num_tokens, mp.width, mp.encoder_layers,
                                 mp.decoder_layers, mp.heads, mp.ffn)
        self.conditioner = StoryConditioner(self.llm, self.vision, self.visual_tokens, self.mapper, m.interleave,
                                            m.max_length, m.inference_prompt, m.frame_preprocess)
        self._stage1 = {}  # the frozen Char-LDM task, built on first use (sampling, v2 loss); not a submodule

    # ---- targets and stage 1 ----------------------------------------------------------------------
    @property
    def targets(self) -> TargetCache:
        if self._targets is None:
            self._targets = self.open_targets()
        return self._targets

    def open_targets(self) -> TargetCache:
        m = self.cfg.model
        run_dir, ckpt = runs.resolve_run_checkpoint(m.stage1)
        folder = Path(m.targets) if m.targets else default_cache_dir(run_dir, ckpt, m.target)
        if not (folder / "manifest.json").is_file():
            raise FileNotFoundError(f"{folder}/manifest.json: no target cache for model.stage1={m.stage1}; "
                                    f"make it with: bash scripts/align_targets.sh {self.cfg.data.name} {m.stage1} "
                                    f"--target {m.target}")
        cache = TargetCache(folder)
        cache.check_checkpoint(runs.file_sha256(runs.weights_file(ckpt)), m.stage1)
        if list(cache.manifest["shape"]) != list(m.conditioning):
            raise ValueError(f"{cache.manifest_path}: targets of shape {cache.manifest['shape']}, but key "
                             f"'model.conditioning' is {list(m.conditioning)}")
        return cache

    def stage1(self):
        """The frozen Char-LDM task with its trained weights (on this task's device)."""
        if "task" not in self._stage1:
            task, cfg, weights = runs.load_task(self.cfg.model.stage1)
            task.requires_grad_(False).eval()
            self._stage1.update(task=task, cfg=cfg, weights=str(weights))
        task = self._stage1["task"]
        return task.to(self.mapper.out.weight.device)

    # ---- data -------------------------------------------------------------------------------------
    def dataset(self, split: str) -> StoryDataset:
        size = self.cfg.data.image_size if self.cfg.model.diffusion_weight > 0 else self.vision.image_size
        return StoryDataset(self.cfg.data.root, split, size, caption_field=self.cfg.data.caption_field)

    def train_dataset(self):
        self.targets  # a missing, foreign or mis-shaped cache fails here, before the first step
        return self.dataset("train")

    def collate(self, items: list[dict]) -> dict:
        """Stories padded to the longest: pixel_values [B,F,3,H,W] in [-1,1], targets [B,F,L,E]."""
        frames = max(len(item["captions"]) for item in items)
        lo = 0 if self.cfg.model.first_frame_target else 1
        pixels, targets = [], []
        for item in items:
            count = len(item["captions"])
            if count <= lo:
                raise ValueError(f"{self.cfg.data.root}: story '{item['story_id']}' has {count} frame(s); stage 2 "
                                 f"needs a frame after the first (or model.first_frame_target=true)")
            pad = frames - count
            pixels.append(F.pad(item["pixel_values"], (0, 0, 0, 0, 0, 0, 0, pad)))
            story = torch.stack([self.targets.get(item["story_id"], k) for k in range(count)])
            targets.append(F.pad(story, (0, 0, 0, 0, 0, pad)))
        return {"pixel_values": torch.stack(pixels), "targets": torch.stack(targets),
                "num_frames": torch.tensor([len(item["captions"]) for item in items]),
                "captions": [item["captions"] for item in items], "story_id": [item["story_id"] for item in items]}

    def example_batch(self, batch_size: int, device) -> dict:
        """A batch shaped like `collate`'s, from the config alone (the real-scale shape check)."""
        frames = self.cfg.data.frames_per_story
        size = self.cfg.data.image_size if self.cfg.model.diffusion_weight > 0 else self.vision.image_size
        return {"pixel_values": torch.zeros(batch_size, frames, 3, size, size, device=device),
                "targets": torch.zeros(batch_size, frames, *self.cfg.model.conditioning, device=device),
                "num_frames": torch.full((batch_size,), frames),
                "captions": [["Someone walked."] * frames] * batch_size,
                "story_id": [f"example_{i}" for i in range(batch_size)]}

    def conditioning_module(self):
        return self.mapper

    # ---- the model (src/models/storygptv_stage2.py) -------------------------------------------------
    def frame_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.conditioner.frame_tokens(pixel_values)

    def fit_prompt(self, captions: list[str], target: int, tokens: list, inference: bool = False) -> list:
        return self.conditioner.fit_prompt(captions, target, tokens, inference)

    def condition(self, captions: list[list[str]], targets: list[int], frame_tokens: list,
                  inference: bool = False) -> dict:
        return self.conditioner.condition(captions, targets, frame_tokens, inference)

    def ce_loss(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        labels = ids[:, 1:]
        vocab = self.llm.vocab_size
        if self.cfg.model.ce_tokens == "img":
            keep = labels >= vocab
        else:  # released: every text token plus [IMG0]
            keep = (labels >= 0) & (labels <= vocab)
        logits = self.llm.logits_at(hidden[:, :-1][keep])
        return F.cross_entropy(logits.float(), labels[keep])

    def story_conditioning(self, batch: dict, targets: torch.Tensor) -> dict:
        pixels = batch["pixel_values"]
        tokens = self.frame_tokens(pixels.flatten(0, 1)).unflatten(0, pixels.shape[:2])
        return self.condition(batch["captions"], targets.tolist(), list(tokens))

    def training_step(self, batch: dict) -> dict:
        m = self.cfg.model
        lo = 0 if m.first_frame_target else 1
        num_frames = batch["num_frames"]
        # target frame uniform in lo..F-1 per story, from the global (checkpointed) RNG
        targets = lo + (torch.rand(len(num_frames)) * (num_frames.cpu() - lo)).long()
        out = self.story_conditioning(batch, targets)
        pred = out["conditioning"]
        target = batch["targets"][torch.arange(len(targets)), targets.to(batch["targets"].device)]
        align = alignment_loss(pred, target, m.align_loss)
        ce = self.ce_loss(out["hidden"], out["ids"])
        loss = m.ce_weight * ce + m.align_weight * align
        losses = {"ce": ce.detach(), "align": align.detach()}
        if m.diffusion_weight > 0:
            diffusion = self.diffusion_loss(batch, targets, pred)
            loss = loss + m.diffusion_weight * diffusion
            losses["diffusion"] = diffusion.detach()
        return {"loss": loss, **losses}

    def diffusion_loss(self, batch: dict, targets: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        """Released v2: the frozen Char-LDM UNet denoises the target frame conditioned on the mapper
        output. The frame enters the VAE in [-1, 1] (the released code passed 0..255 unscaled)."""
        ldm = self.stage1()
        frames = batch["pixel_values"][torch.arange(len(targets)), targets.to(batch["pixel_values"].device)]
        latents = ldm.encode_latents(frames)
        noise, timesteps, noisy = ldm.objective.add_noise(latents)
        model_pred = ldm.unet(noisy, timesteps, conditioning.to(ldm.unet.dtype)).sample
        return ldm.objective.loss(model_pred, ldm.objective.target(latents, noise, timesteps), timesteps)

    # ---- validation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict:
        """Alignment error on val, every story at every target frame (deterministic); the mean over frames."""
        lo = 0 if self.cfg.model.first_frame_target else 1
        means = Means()
        for batch in val_batches(self.dataset("val"), self.cfg.model.val_stories, self.cfg.train.batch_size,
                                 self.collate, self.mapper.out.weight.device):
            for t in range(lo, int(batch["num_frames"].max())):
                rows = (batch["num_frames"] > t).nonzero(as_tuple=True)[0]
                sub = {k: (v[rows] if torch.is_tensor(v) else [v[i] for i in rows.tolist()]) for k, v in batch.items()}
                pred = self.story_conditioning(sub, torch.full((len(rows),), t))["conditioning"]
                target = sub["targets"][:, t]
                means.add("val/l2", alignment_loss(pred, target, "l2"), len(rows))
                means.add("val/mse", alignment_loss(pred, target, "mse"), len(rows))
        return means.means()

    # ---- sampling (src/pipelines/storygptv.py) ------------------------------------------------------
    def pipeline(self, ldm=None):
        """Char-LDM's pipeline (the stage-1 run's models and merge step; `ldm`: another char_ldm task to
        draw with) with this stage's LLM, drawing with this run's sample settings."""
        ldm = ldm or self.stage1()
        settings = DrawSettings.from_config(self.cfg.sample, ldm.start_merge_step(),
                                           self.cfg.model.pronoun_start_merge_step)
        return ldm.pipeline(settings, stage2=self.conditioner, first_frame=self.cfg.model.first_frame,
                            stage2_target=self.cfg.model.target)

    @property
    def stage1_weights(self):
        """The weights file of the Char-LDM `stage1()` loaded (None before it is loaded)."""
        return self._stage1.get("weights")

    @torch.no_grad()
    def sample(self, out_dir: Path, split: str, num_stories: Optional[int] = None, seed: Optional[int] = None,
               extra_meta: Optional[dict] = None) -> Path:
        """`split`'s stories drawn frame by frame from `data.caption_field` (the co-reference captions)."""
        root, field = self.cfg.data.root, self.cfg.data.caption_field
        stories = read_split(root, split)[1][:num_stories or None]
        for story in stories:
            if getattr(story, field) is None:
                raise ValueError(f"{root}/{split}.jsonl: story '{story.id}' has no '{field}'")
        pipe = self.pipeline()
        meta = {"dataset_root": str(root), "split": split, "task": "align",
                "stage1_checkpoint": self._stage1.get("weights"), **(extra_meta or {})}
        if "checkpoint" in meta:
            meta["stage2_checkpoint"] = meta["checkpoint"]
        return generate_stage2_stories(pipe, stories, out_dir, field, seed=self.cfg.sample.seed if seed is None else seed,
                                       meta=meta)
