"""StoryGPT-V stage 2: align an LLM with Char-LDM (paper §3.2; docs/storygpt_v_stage2.md).

The LLM reads the story so far, the earlier frames as K soft tokens each and the earlier captions, then
the current caption followed by R [IMG] tokens; the GILL mapper turns the [IMG] tokens' hidden states
into Char-LDM's text conditioning. The target is Char-LDM's fused embedding of the current caption with
the names restored (src/tools/target_cache.py), so reading "he" the LLM learns to point at "Fred".

Prompt for target frame t (captions S from `data.caption_field`, the co-reference captions):
  <bos> for each i < t: " Image: <img>" [K soft tokens of frame i] "</img> Caption: S_i"
        then " Caption: S_t Image:" [IMG0]..[IMG{R-1}]
`model.interleave: false` drops the earlier frames (the paper's Caption- ablation).

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

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F

from src.data.datasets import StoryDataset
from src.data.transforms import pil_bicubic_center_crop
from src.models.character_encoder import CharacterImageEncoder
from src.models.llm_with_image_tokens import LLMWithImageTokens
from src.models.mappers import GILLMapper, ImageToTokens
from src.tasks.base import Task
from src.tools.target_cache import TargetCache, default_cache_dir


@dataclass
class MapperConfig:           # GILL's mapper: d 512, 4 + 4 layers, 4 heads, FF 2048, no dropout
    width: int = 512
    encoder_layers: int = 4
    decoder_layers: int = 4
    heads: int = 4
    ffn: int = 2048


@dataclass
class LoraSettings:           # peft LoraConfig for llm_mode: lora
    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    modules_to_save: Optional[List[str]] = None   # modules trained whole and saved beside the adapters


@dataclass
class AlignModelConfig:
    llm: str = "pretrained/opt-6.7b"          # any Hugging Face causal-LM folder with its tokenizer
    llm_dtype: str = "bfloat16"               # float32 | bfloat16 | float16 (the frozen LM's weights)
    llm_mode: str = "frozen"                  # frozen (paper: only the [IMG] rows train) | lora | full
    lora: LoraSettings = field(default_factory=LoraSettings)
    num_image_tokens: int = 8                 # R
    visual_tokens: int = 4                    # K soft tokens per earlier frame
    vision_encoder: str = "pretrained/clip-vit-large-patch14"   # frozen CLIP vision tower (pooled output)
    interleave: bool = True                   # false: captions only (the Caption- ablation)
    first_frame_target: bool = False          # also train on frame 0 as a target (released: never)
    max_length: int = 160                     # prompt tokens; the earliest frames are dropped beyond it
    mapper: MapperConfig = field(default_factory=MapperConfig)
    conditioning: List[int] = field(default_factory=lambda: [77, 768])   # Char-LDM's [L, E]; the cache must match
    stage1: str = "outputs/ldm/toy/default"   # the Char-LDM run (or checkpoint) whose targets we learn
    target: str = "fuse"                      # fuse (Emb_fuse) | text (Emb_text): the default cache to read
    targets: Optional[str] = None             # a cache folder; default <stage1 run>/targets/<step>-<target>
    ce_weight: float = 0.5
    ce_tokens: str = "img"                    # img (paper Eq. 4) | all (released: text tokens + [IMG0])
    align_weight: float = 1.0
    align_loss: str = "mse"                   # mse (squared, Eq. 6) | l2 (released: per-token distance)
    diffusion_weight: float = 0.0             # released v2: denoising loss through the frozen Char-LDM UNet
    val_stories: int = 0                      # validation: the first N val stories (0: all)
    first_frame: str = "char_ldm"             # inference: frame 0 from char_ldm (released) | llm (paper)
    # Release modes (docs/fidelity.md, "StoryGPT-V"); the converter of the released weights selects them:
    inference_prompt: str = "ours"            # ours: "... Image:" then [IMG0] at inference as in training |
    #                                           release: "... Image: " (a lone space token before [IMG0], eval_llm.py)
    frame_preprocess: str = "ours"            # earlier frames for the vision tower: ours, a float bilinear resize |
    #                                           release: CLIP's image processor (PIL bicubic, centre crop)
    pronoun_start_merge_step: int = 0         # pronoun frames: text-only steps before the LLM output (release: 1)


CHOICES = {"llm_mode": ("frozen", "lora", "full"), "ce_tokens": ("img", "all"), "align_loss": ("mse", "l2"),
           "target": ("fuse", "text"), "first_frame": ("char_ldm", "llm"), "inference_prompt": ("ours", "release"),
           "frame_preprocess": ("ours", "release"),
           "llm_dtype": ("float32", "bfloat16", "float16")}


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


def alignment_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """[B,L,E] x2 -> scalar. mse: mean squared error; l2: mean over tokens of the Euclidean distance."""
    diff = pred.float() - target.float()
    if kind == "mse":
        return diff.pow(2).mean()
    return diff.pow(2).sum(-1).add(1e-12).sqrt().mean()


class AlignTask(Task):
    ModelConfig = AlignModelConfig
    model_choices = CHOICES
    best_metric = "val/l2"  # lower is better; the engine keeps the best checkpoint by it

    def __init__(self, cfg):
        super().__init__(cfg)
        m = cfg.model
        self._targets = None  # the target cache, opened on first use (the constructor reads no data)
        self.llm = LLMWithImageTokens.from_pretrained(
            m.llm, m.num_image_tokens, m.llm_mode, m.llm_dtype,
            lora=dict(r=m.lora.r, lora_alpha=m.lora.lora_alpha, lora_dropout=m.lora.lora_dropout,
                      target_modules=list(m.lora.target_modules),
                      modules_to_save=list(m.lora.modules_to_save) if m.lora.modules_to_save else None))
        self.vision = CharacterImageEncoder.from_pretrained(m.vision_encoder, trainable_layers=0)
        self.visual_tokens = ImageToTokens(self.vision.vision_model.config.hidden_size, self.llm.width,
                                           m.visual_tokens)
        num_tokens, width = m.conditioning
        mp = m.mapper
        self.mapper = GILLMapper(self.llm.width, width, num_tokens, mp.width, mp.encoder_layers,
                                 mp.decoder_layers, mp.heads, mp.ffn)
        self._stage1 = {}  # the frozen Char-LDM task, built on first use (sampling, v2 loss); not a submodule

    # ---- targets and stage 1 ----------------------------------------------------------------------
    @property
    def targets(self) -> TargetCache:
        if self._targets is None:
            self._targets = self.open_targets()
        return self._targets

    def open_targets(self) -> TargetCache:
        from src.tasks.from_checkpoint import file_sha256, resolve_run_checkpoint, weights_file

        m = self.cfg.model
        _, ckpt = resolve_run_checkpoint(m.stage1)
        folder = Path(m.targets) if m.targets else default_cache_dir(m.stage1, m.target)
        if not (folder / "manifest.json").is_file():
            raise FileNotFoundError(f"{folder}/manifest.json: no target cache for model.stage1={m.stage1}; "
                                    f"make it with: bash scripts/clip.sh {self.cfg.data.name} {m.stage1} "
                                    f"--target {m.target}")
        cache = TargetCache(folder)
        cache.check_checkpoint(file_sha256(weights_file(ckpt)), m.stage1)
        if list(cache.manifest["shape"]) != list(m.conditioning):
            raise ValueError(f"{cache.manifest_path}: targets of shape {cache.manifest['shape']}, but key "
                             f"'model.conditioning' is {list(m.conditioning)}")
        return cache

    def stage1(self):
        """The frozen Char-LDM task with its trained weights (on this task's device)."""
        if "task" not in self._stage1:
            from src.tasks.from_checkpoint import load_task_from_checkpoint

            task, cfg, weights = load_task_from_checkpoint(self.cfg.model.stage1)
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

    # ---- the model ----------------------------------------------------------------------------------
    def frame_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N,3,H,W] in [-1,1] -> soft tokens [N,K,D] (frozen tower, trained linear)."""
        size = self.vision.image_size
        if self.cfg.model.frame_preprocess == "release":
            pixels = pil_bicubic_center_crop(pixel_values, size)
        else:
            pixels = (pixel_values.float() + 1) / 2
            if pixels.shape[-1] != size:
                pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True,
                                       align_corners=False)
        with torch.no_grad():
            pooled = self.vision.pooled(pixels.to(self.visual_tokens.proj.weight.device))
        return self.visual_tokens(pooled.to(self.visual_tokens.proj.weight.dtype))

    def fit_prompt(self, captions: list[str], target: int, tokens: list, inference: bool = False) -> list:
        """The prompt, with the earliest frames dropped while it is longer than model.max_length."""
        m, ids = self.cfg.model, self.llm.image_token_ids
        space = inference and m.inference_prompt == "release"
        first = 0
        while True:
            pieces = story_prompt(captions[first:], target - first, tokens[first:], ids, m.interleave, space)
            length = 1 + sum(p.shape[0] if torch.is_tensor(p) else
                             len(self.llm.text_ids(p)) if isinstance(p, str) else len(p) for p in pieces)
            if length <= m.max_length or first == target:
                return pieces
            first += 1

    def condition(self, captions: list[list[str]], targets: list[int], frame_tokens: list,
                  inference: bool = False) -> dict:
        """Mapper output [B,L,E] for the given target frames, plus what the losses need (`inference`:
        drawing a story, where model.inference_prompt applies)."""
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
        noise, timesteps, noisy = ldm.add_training_noise(latents)
        model_pred = ldm.unet(noisy, timesteps, conditioning.to(ldm.unet.dtype)).sample
        return ldm.diffusion_loss(model_pred, ldm.diffusion_target(latents, noise, timesteps), timesteps)

    # ---- validation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict:
        """Alignment error on val, every story at every target frame (deterministic)."""
        data = self.dataset("val")
        count = self.cfg.model.val_stories or len(data)
        lo = 0 if self.cfg.model.first_frame_target else 1
        device = self.mapper.out.weight.device
        total_l2, total_mse, n = 0.0, 0.0, 0
        step = max(1, self.cfg.train.batch_size)
        for start in range(0, min(count, len(data)), step):
            batch = self.collate([data[i] for i in range(start, min(start + step, count, len(data)))])
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            for t in range(lo, int(batch["num_frames"].max())):
                rows = (batch["num_frames"] > t).nonzero(as_tuple=True)[0]
                sub = {k: (v[rows] if torch.is_tensor(v) else [v[i] for i in rows.tolist()]) for k, v in batch.items()}
                pred = self.story_conditioning(sub, torch.full((len(rows),), t))["conditioning"]
                target = sub["targets"][:, t]
                total_l2 += float(alignment_loss(pred, target, "l2")) * len(rows)
                total_mse += float(alignment_loss(pred, target, "mse")) * len(rows)
                n += len(rows)
        return {"val/l2": total_l2 / max(n, 1), "val/mse": total_mse / max(n, 1)}

    # ---- sampling -----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, out_dir: Path, split: str, num_stories: Optional[int] = None, seed: Optional[int] = None,
               extra_meta: Optional[dict] = None) -> Path:
        from src.pipelines.storygptv import generate_stage2_stories

        return generate_stage2_stories(self, self.stage1(), out_dir, split, num_stories,
                                       seed=self.cfg.sample.seed if seed is None else seed, extra_meta=extra_meta)
