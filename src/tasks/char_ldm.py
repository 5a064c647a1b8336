"""StoryGPT-V stage 1: Char-LDM (paper §3.1; docs/storygpt_v.md, docs/char_ldm.md).

The baseline LDM (src/tasks/ldm.py) plus
  - character-augmented conditioning: the caption's name tokens are fused with the CLIP image embedding
    of the character's reference (src/models/fuse.py, src/models/character_encoder.py);
  - the cross-attention control loss on chosen UNet layers (src/models/attention_control.py, Eq. 2-3);
  - the mask-restricted denoising loss with probability `mask_loss_prob` (released code, not in the paper);
  - conditioning dropout: empty caption / text-only / fused;
  - delayed conditioning at sampling (text-only for the first `start_merge_step` steps, FastComposer).
`character_conditioning: false` turns all of it off: the task is then exactly the baseline LDM.
Where the released code does something else, the release's behaviour is one `model:` key away (the
"release" values below; docs/fidelity.md), and the converter of the released weights selects it.

Shapes: B batch, L=77 tokens, D text width (= image projection width), M character slots per frame,
R reference size, c×h×w latents, H×W frames.
  captions -> token_char [B,L] (slot of the character a token names, -1 none)
  ref_pixels [B,M,3,R,R] -> char_embeds [B,M,D];  text_states [B,L,D] -> encoder_hidden_states [B,L,D]
  char_masks [B,M,H,W] -> attention loss;  union mask [B,1,h,w] -> mask-restricted MSE
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F

from src.data.datasets import CharacterFrameDataset, collate_frames
from src.data.references import augment_references, fixed_references
from src.data.stories import read_meta
from src.models.attention_control import (AttentionStore, attention_control_loss, install_processors,
                                          name_token_weights, union_mask)
from src.models.character_encoder import CharacterImageEncoder
from src.models.fuse import FuseModule
from src.models.name_tokens import (name_patterns, name_token_positions, release_input_ids, release_sampling_marks,
                                    release_training_marks)
from src.tasks.ldm import LDMModelConfig, LDMTask


@dataclass
class ReferenceAugmentConfig:
    rotate: float = 30.0                  # degrees, ±
    scale: List[float] = field(default_factory=lambda: [0.8, 1.2])   # zoom range
    translate: float = 0.1                # fraction of the reference size, ±
    flip: float = 0.5                     # probability of a horizontal flip
    jitter: float = 0.2                   # brightness / contrast / saturation, ±
    gray: float = 0.1                     # probability
    blur: float = 0.1                     # probability


@dataclass
class CharLDMModelConfig(LDMModelConfig):
    character_conditioning: bool = True   # false: the baseline LDM (no image encoder, fuse or extra losses)
    image_encoder: str = "pretrained/clip-vit-large-patch14"   # a CLIPModel / CLIPVisionModelWithProjection folder
    image_encoder_trainable_layers: int = 2
    max_characters: int = 4               # name slots fused per caption (FastComposer's max_num_objects)
    text_only_prob: float = 0.1           # caption_dropout (empty) + text_only_prob + fused = 1 (paper 10/10/80)
    attention_loss_weight: float = 1.0e-3   # lambda of Eq. 3 (released code's --reg_weight)
    attention_layers: List[str] = field(default_factory=lambda: [
        "down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.1", "up_blocks.2"])
    mask_loss_prob: float = 0.3           # MSE restricted to the characters' union mask on this share of batches
    fixed_reference_prob: float = 0.0     # train with the dataset's fixed chars/ reference instead of the crop
    reference_augment: ReferenceAugmentConfig = field(default_factory=ReferenceAugmentConfig)
    start_merge_step: int = 16            # sampling: text-only conditioning for this many steps, fused after
    # (the release's --start_merge_step N samples N + 1 text-only steps: `i <= N`, models/pipeline.py)
    # Release modes (docs/fidelity.md, "StoryGPT-V"):
    name_tokens: str = "ours"             # ours: every piece of a name, one slot per name | release: the last
    #                                       piece of a name word, a slot per occurrence (src/models/name_tokens.py)
    fuse_names_at_sampling: bool = True   # false: sampling fuses no name (the release's PororoSV inference)
    reference_preprocess: str = "ours"    # ours: exact square, float resize | release: d//2 padding, 8-bit resize
    attention_loss: str = "ours"          # ours: mean over the batch's characters | release: per-frame mean
    mask_loss_antialias: bool = True      # false: the release's plain bilinear resize of the union mask
    text_only_max_characters: int = -1    # -1: any frame may be text-only | release: 1 (frames with <= 1 segment)


class CharLDMTask(LDMTask):
    ModelConfig = CharLDMModelConfig
    model_choices = {"name_tokens": ("ours", "release"), "reference_preprocess": ("ours", "release"),
                     "attention_loss": ("ours", "release")}

    def __init__(self, cfg, components: Optional[dict] = None):
        super().__init__(cfg, components)
        m = cfg.model
        self.character_conditioning = m.character_conditioning
        if not self.character_conditioning:
            return
        if m.caption_dropout + m.text_only_prob > 1:
            raise ValueError(f"model.caption_dropout + model.text_only_prob = "
                             f"{m.caption_dropout + m.text_only_prob} > 1")
        self.image_encoder = (components or {}).get("image_encoder") or CharacterImageEncoder.from_pretrained(
            m.image_encoder, m.image_encoder_trainable_layers)
        width = self.text_encoder.config.hidden_size
        if self.image_encoder.embed_dim != width:
            raise ValueError(f"model.image_encoder: projection width {self.image_encoder.embed_dim} != text encoder "
                             f"width {width} (the fuse writes image embeddings into text positions)")
        self.fuse = FuseModule(width)
        self.attention_store = AttentionStore()
        self.attention_modules = install_processors(self.unet, list(m.attention_layers), self.attention_store)
        self._name_patterns = None  # from the dataset's meta.json on first use (the constructor reads no data)
        self._fixed_refs = None  # {name: [3,R,R]}, loaded on first use

    # ---- names and references ---------------------------------------------------------------------
    @property
    def name_patterns(self) -> list:
        if self._name_patterns is None:
            names = [c["name"] for c in read_meta(self.cfg.data.root)["characters"]]
            self._name_patterns = name_patterns(names, dict(self.cfg.data.aliases))
        return self._name_patterns

    def fixed_references(self) -> dict:
        if self._fixed_refs is None:
            self._fixed_refs = fixed_references(self.cfg.data.root, read_meta(self.cfg.data.root),
                                                self.image_encoder.image_size, self.cfg.model.reference_preprocess)
        return self._fixed_refs

    def find_names(self, caption: str) -> list:
        return name_token_positions(self.tokenizer, caption, self.name_patterns, self.tokenizer.model_max_length)

    def token_slots(self, found: list, slot_of: dict) -> torch.Tensor:
        """[L] long: the slot (slot_of[name]) each token of `find_names`' names gets, -1 elsewhere."""
        token_char = torch.full((self.tokenizer.model_max_length,), -1, dtype=torch.long)
        for name, positions in found:
            slot = slot_of.get(name)
            if slot is not None and slot < self.cfg.model.max_characters:
                token_char[positions] = slot
        return token_char

    # ---- data -------------------------------------------------------------------------------------
    def train_dataset(self):
        if not self.character_conditioning:
            return super().train_dataset()
        return CharacterFrameDataset(self.cfg.data.root, "train", self.cfg.data.image_size,
                                     self.image_encoder.image_size, caption_field=self.cfg.data.caption_field)

    def training_token_slots(self, caption: str, names: list[str]) -> torch.Tensor:
        """[L] long: a name's slot is its index in the frame's annotated characters `names`."""
        if self.cfg.model.name_tokens == "release":
            token_char = torch.full((self.tokenizer.model_max_length,), -1, dtype=torch.long)
            for slot, position in release_training_marks(self.tokenizer, caption, names,
                                                         self.tokenizer.model_max_length,
                                                         self.cfg.model.max_characters):
                token_char[position] = slot
            return token_char
        return self.token_slots(self.find_names(caption), {name: j for j, name in enumerate(names)})

    def sampling_slots(self, caption: str) -> tuple[torch.Tensor, list[str]]:
        """([L] token -> slot, the character of each slot) for drawing `caption`: ours, one slot per named
        character in order of first mention (at most model.max_characters); release, one slot per marked
        occurrence, uncapped (models/data.py EvalStoryDataset); none with fuse_names_at_sampling false."""
        m, length = self.cfg.model, self.tokenizer.model_max_length
        token_char = torch.full((length,), -1, dtype=torch.long)
        if not m.fuse_names_at_sampling:
            return token_char, []
        if m.name_tokens == "release":
            names = [c["name"] for c in read_meta(self.cfg.data.root)["characters"]]
            marks = release_sampling_marks(self.tokenizer, caption, names, length)
            for slot, (_, position) in enumerate(marks):
                token_char[position] = slot
            return token_char, [name for name, _ in marks]
        found = self.find_names(caption)
        order = list(dict.fromkeys(name for name, _ in found))[: m.max_characters]
        return self.token_slots(found, {n: j for j, n in enumerate(order)}), order

    def collate(self, items):
        batch = collate_frames(items)
        if self.character_conditioning:
            batch["token_char"] = torch.stack([self.training_token_slots(caption, names)
                                               for caption, names in zip(batch["caption"], batch["characters"])])
        return batch

    def example_batch(self, batch_size: int, device) -> dict:
        batch = super().example_batch(batch_size, device)
        if not self.character_conditioning:
            return batch
        slots, size, ref = self.cfg.model.max_characters, self.cfg.data.image_size, self.image_encoder.image_size
        batch.update({
            "characters": [[f"character {j}" for j in range(slots)] for _ in range(batch_size)],  # every slot named
            "char_masks": torch.zeros(batch_size, slots, size, size, device=device),
            "ref_pixels": torch.zeros(batch_size, slots, 3, ref, ref, device=device),
            "ref_masks": torch.zeros(batch_size, slots, 1, ref, ref, device=device),
            "token_char": torch.zeros(batch_size, self.tokenizer.model_max_length, dtype=torch.long, device=device),
        })
        return batch

    def conditioning_module(self):
        return self.fuse if self.character_conditioning else super().conditioning_module()

    # ---- training ---------------------------------------------------------------------------------
    def encode_references(self, batch: dict, slots: torch.Tensor) -> torch.Tensor:
        """Augmented same-frame references (or, with fixed_reference_prob, the fixed ones) of the
        chosen slots [B,M] -> char_embeds [B,M,D] (zeros elsewhere)."""
        m = self.cfg.model
        batch_size, num_slots = slots.shape
        embeds = torch.zeros(batch_size, num_slots, self.image_encoder.embed_dim, device=slots.device)
        if not slots.any():  # one blank reference, weighted 0: the same modules run on every step and
            # process (DDP needs every trainable weight in the graph; ZeRO-3 gathers weights module by module)
            size = self.image_encoder.image_size
            return embeds + self.image_encoder(embeds.new_zeros(1, 3, size, size)).sum() * 0.0
        aug = m.reference_augment
        refs = augment_references(batch["ref_pixels"][slots], batch["ref_masks"][slots], rotate=aug.rotate,
                                  scale=tuple(aug.scale), translate=aug.translate, flip=aug.flip,
                                  jitter=aug.jitter, gray=aug.gray, blur=aug.blur)
        if m.fixed_reference_prob > 0:
            names = [batch["characters"][b][j] for b, j in torch.nonzero(slots).tolist()]
            use_fixed = (torch.rand(len(names)) < m.fixed_reference_prob).tolist()
            fixed = self.fixed_references()
            for n, (name, swap) in enumerate(zip(names, use_fixed)):
                if swap and name in fixed:
                    refs[n] = fixed[name].to(refs)
        embeds[slots] = self.image_encoder(refs).to(embeds.dtype)
        return embeds

    def training_step(self, batch):
        if not self.character_conditioning:
            return super().training_step(batch)
        m = self.cfg.model
        pixel_values, token_char, char_masks = batch["pixel_values"], batch["token_char"], batch["char_masks"]
        batch_size, num_slots = char_masks.shape[:2]
        device = pixel_values.device
        latents, text_states, null_states = self.frozen_outputs(batch)

        # Conditioning dropout (paper §3.1: 10% empty, 10% text-only, 80% fused).
        draw = torch.rand(batch_size).to(device)
        empty = draw < m.caption_dropout
        fused = draw >= m.caption_dropout + m.text_only_prob
        named = F.one_hot(token_char + 1, num_slots + 1)[..., 1:].amax(1).bool()       # [B,M]
        if m.text_only_max_characters >= 0:  # release: a frame with more segments stays fused (models/data.py)
            fused = fused | (~empty & (named.sum(1) > m.text_only_max_characters))
        char_embeds = self.encode_references(batch, named & fused[:, None])
        states = torch.where(empty[:, None, None], null_states.expand_as(text_states), text_states)
        encoder_hidden_states = self.fuse(states, char_embeds, torch.where(fused[:, None], token_char, -1))

        noise, timesteps, noisy_latents = self.add_training_noise(latents)

        # Eq. 2-3 on every frame whose caption still names a character that has a mask (release: only
        # fused frames; its text-only frames have no segments left).
        attend = named & (char_masks.flatten(2).amax(-1) > 0) & ~empty[:, None]
        if m.attention_loss == "release":
            attend = attend & fused[:, None]
        record = m.attention_loss_weight > 0  # (a frame with no valid character adds 0; no host sync here)
        if record:
            self.attention_store.start(name_token_weights(torch.where(empty[:, None], -1, token_char), num_slots))
        try:
            model_pred = self.denoise(noisy_latents, timesteps, encoder_hidden_states)
        finally:
            maps = self.attention_store.stop()
        target = self.diffusion_target(latents, noise, timesteps)

        if m.mask_loss_prob > 0 and float(torch.rand(())) < m.mask_loss_prob:
            union = union_mask(char_masks, latents.shape[-2:], m.mask_loss_antialias).to(model_pred.dtype)
            model_pred, target = model_pred * union, target * union
        mse = self.diffusion_loss(model_pred, target, timesteps)
        attention = (attention_control_loss(maps, char_masks, attend, per_frame=m.attention_loss == "release")
                     if record else mse.new_zeros(()))
        loss = mse + m.attention_loss_weight * attention
        return {"loss": loss, "mse": mse.detach(), "attention": attention.detach()}

    # ---- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def reference_embeddings(self) -> dict:
        """{name: [D]} from the fixed references with the current weights."""
        refs = self.fixed_references()
        if not refs:
            return {}
        names = sorted(refs)
        device = self.image_encoder.visual_projection.weight.device
        embeds = self.image_encoder(torch.stack([refs[n] for n in names]).to(device))
        return dict(zip(names, embeds))

    @torch.no_grad()
    def condition(self, captions: list[str], ref_embeds: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(text-only, fused) encoder states [B,L,D] for sampling (slots: `sampling_slots`)."""
        text_states = self.encode_text(captions)
        token_char, embeds = [], []
        for caption in captions:
            slots, names = self.sampling_slots(caption)
            missing = sorted({n for n in names if n not in ref_embeds})
            if missing:
                raise ValueError(f"{self.cfg.data.root}/meta.json: no reference image for {missing}, named in "
                                 f"the caption {caption!r} (add 'reference' to those characters)")
            token_char.append(slots)
            embeds.append([ref_embeds[n] for n in names])
        named_states = text_states
        if self.cfg.model.name_tokens == "release":  # the release encodes its own ids for the fused states
            length = self.tokenizer.model_max_length
            ids = torch.tensor([release_input_ids(self.tokenizer, c, length) for c in captions])
            named_states = self.text_encoder(ids.to(self.text_encoder.device))[0]
        slots = max(1, max(len(e) for e in embeds))
        char_embeds = text_states.new_zeros(len(captions), slots, text_states.shape[-1])
        for b, row in enumerate(embeds):
            for j, embed in enumerate(row):
                char_embeds[b, j] = embed
        fused = self.fuse(named_states, char_embeds, torch.stack(token_char).to(text_states.device))
        return text_states, fused

    def generation_meta(self) -> dict:
        if not self.character_conditioning:
            return super().generation_meta()
        return {"task": "char_ldm", "start_merge_step": self.cfg.model.start_merge_step,
                "references": "meta.json fixed references (chars/)"}

    def drawer(self, pipe, output_type: str = "pil"):
        """`draw(captions, generators)` -> images (PIL; "latent": the final latents [B,c,h,w])."""
        if not self.character_conditioning:
            return super().drawer(pipe)
        from src.pipelines.storygptv import draw_frames

        s, merge = self.cfg.sample, self.cfg.model.start_merge_step
        ref_embeds = self.reference_embeddings()

        def draw(captions, generators):
            text_states, fused = self.condition(captions, ref_embeds)
            null = self.encode_text([""] * len(captions))
            return draw_frames(pipe, text_states, fused, null, merge, s, self.cfg.data.image_size, generators,
                               output_type=output_type)
        return draw
