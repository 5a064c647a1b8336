"""StoryGPT-V stage 1: Char-LDM (paper §3.1; docs/storygpt_v.md, docs/char_ldm.md).

The baseline LDM (src/tasks/ldm.py) plus
  - character-augmented conditioning: the caption's name tokens are fused with the CLIP image embedding
    of the character's reference (src/models/fuse.py, src/models/character_encoder.py);
  - the cross-attention control loss on chosen UNet layers (src/models/attention_control.py, Eq. 2-3);
  - the mask-restricted denoising loss with probability `mask_loss_prob` (released code, not in the paper);
  - conditioning dropout: empty caption / text-only / fused;
  - delayed conditioning at sampling (text-only for the first `start_merge_step` steps, FastComposer).
`character_conditioning: false` turns all of it off: the recipe then runs the baseline LDMTask
(src/tasks/__init__.py). Drawing: src/pipelines/storygptv.py; the conditioning: src/models/char_conditioning.py.
Where the released code does something else, the release's behaviour is one `model:` key away (the
"release" values in src/tasks/model_configs.py; docs/fidelity.md), and the converter of the released
weights selects it.

Shapes: B batch, L=77 tokens, D text width (= image projection width), M character slots per frame,
R reference size, c×h×w latents, H×W frames.
  captions -> token_char [B,L] (slot of the character a token names, -1 none)
  ref_pixels [B,M,3,R,R] -> char_embeds [B,M,D];  text_states [B,L,D] -> encoder_hidden_states [B,L,D]
  char_masks [B,M,H,W] -> attention loss;  union mask [B,1,h,w] -> mask-restricted MSE
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from src.data.datasets import CharacterFrameDataset, collate_frames
from src.data.references import augment_references, fixed_references
from src.data.stories import read_meta
from src.models.attention_control import (
    AttentionStore,
    attention_control_loss,
    install_processors,
    name_token_weights,
    union_mask,
)
from src.models.char_conditioning import find_names, token_slots
from src.models.character_encoder import CharacterImageEncoder
from src.models.fuse import FuseModule
from src.models.name_tokens import name_patterns, release_training_marks
from src.tasks.ldm import LDMTask


class CharLDMTask(LDMTask):
    model_choices = {"name_tokens": ("ours", "release"), "reference_preprocess": ("ours", "release"),
                     "attention_loss": ("ours", "release")}

    def __init__(self, cfg, components: Optional[dict] = None):
        super().__init__(cfg, components)
        m = cfg.model
        if not m.character_conditioning:
            raise ValueError("key 'model.character_conditioning': false runs the baseline LDMTask (build_task picks it)")
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
        self._fixed_states = None  # (validity key, {name: [T,W]}): fixed_reference_states

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
        return find_names(self.tokenizer, caption, self.name_patterns)

    def token_slots(self, found: list, slot_of: dict) -> torch.Tensor:
        return token_slots(found, slot_of, self.tokenizer.model_max_length, self.cfg.model.max_characters)

    def training_token_slots(self, caption: str, names: list[str]) -> torch.Tensor:
        """[L] long: a name's slot is its index in the frame's annotated characters `names` (release: the
        last piece of each annotated name's word, src/models/name_tokens.py release_training_marks)."""
        if self.cfg.model.name_tokens == "release":
            token_char = torch.full((self.tokenizer.model_max_length,), -1, dtype=torch.long)
            for slot, position in release_training_marks(self.tokenizer, caption, names,
                                                         self.tokenizer.model_max_length,
                                                         self.cfg.model.max_characters):
                token_char[position] = slot
            return token_char
        return self.token_slots(self.find_names(caption), {name: j for j, name in enumerate(names)})

    # ---- data -------------------------------------------------------------------------------------
    def train_dataset(self):
        return CharacterFrameDataset(self.cfg.data.root, "train", self.cfg.data.image_size,
                                     self.image_encoder.image_size, caption_field=self.cfg.data.caption_field)

    def collate(self, items):
        batch = collate_frames(items)
        batch["token_char"] = torch.stack([self.training_token_slots(caption, names)
                                           for caption, names in zip(batch["caption"], batch["characters"])])
        return batch

    def example_batch(self, batch_size: int, device) -> dict:
        batch = super().example_batch(batch_size, device)
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
        return self.fuse

    # ---- training ---------------------------------------------------------------------------------
    def encode_references(self, batch: dict, slots: torch.Tensor) -> torch.Tensor:
        """Augmented same-frame references (or, with fixed_reference_prob, the fixed ones) of the
        chosen slots [B,M] -> char_embeds [B,M,D] (zeros elsewhere)."""
        m = self.cfg.model
        batch_size, num_slots = slots.shape
        embeds = torch.zeros(batch_size, num_slots, self.image_encoder.embed_dim, device=slots.device)
        cached = self.fixed_reference_states() if m.cache_references and m.fixed_reference_prob > 0 else {}
        if not slots.any():  # one blank reference, weighted 0: the same modules run on every step and
            # process (DDP needs every trainable weight in the graph; ZeRO-3 gathers weights module by module)
            size = self.image_encoder.image_size
            return embeds + self.embed_references(embeds.new_zeros(1, 3, size, size), {}, {}).sum() * 0.0
        aug = m.reference_augment
        refs = augment_references(batch["ref_pixels"][slots], batch["ref_masks"][slots], rotate=aug.rotate,
                                  scale=tuple(aug.scale), translate=aug.translate, flip=aug.flip,
                                  jitter=aug.jitter, gray=aug.gray, blur=aug.blur)
        fixed_rows = {}  # row of refs -> the name whose fixed reference replaces it
        if m.fixed_reference_prob > 0:
            names = [batch["characters"][b][j] for b, j in torch.nonzero(slots).tolist()]
            use_fixed = (torch.rand(len(names)) < m.fixed_reference_prob).tolist()
            fixed = self.fixed_references()
            fixed_rows = {n: name for n, (name, swap) in enumerate(zip(names, use_fixed)) if swap and name in fixed}
            if not m.cache_references:
                for n, name in fixed_rows.items():
                    refs[n] = fixed[name].to(refs)
                fixed_rows = {}
        embeds[slots] = self.embed_references(refs, fixed_rows, cached).to(embeds.dtype)
        return embeds

    def embed_references(self, refs: torch.Tensor, fixed_rows: dict, cached: dict) -> torch.Tensor:
        """refs [N,3,R,R] -> [N,D]. A row of `fixed_rows` takes its fixed reference's frozen tower states from
        `cached`, so the frozen layers run on the other rows only. Under ZeRO-3 every process must call the
        same modules in the same order (each gathers its weights from all processes, and DeepSpeed prefetches
        along the order it recorded): the tower's two halves are called on every path, never its forward."""
        encoder = self.image_encoder
        fresh = [n for n in range(len(refs)) if n not in fixed_rows]
        if not fixed_rows:
            return encoder.embed_states(encoder.frozen_states(refs))
        if fresh:
            fresh_states = encoder.frozen_states(refs[fresh])
        elif hasattr(encoder.visual_projection.weight, "ds_id"):  # ZeRO-3 (above): the frozen layers run on
            # one blank image, discarded
            fresh_states = encoder.frozen_states(refs[:1] * 0)[:0]
        else:
            fresh_states = None
        first = next(iter(cached.values()))
        states = first.new_empty(len(refs), *first.shape)
        if fresh_states is not None:
            states[fresh] = fresh_states
        for n, name in fixed_rows.items():
            states[n] = cached[name]
        return encoder.embed_states(states)

    def fixed_reference_states(self) -> dict:
        """{name: [T,W]}: the frozen tower states of every fixed reference (model.cache_references), computed
        once for all names together, again only when the frozen weights' dtype or device or the autocast
        setting changes (the engine's hold_frozen_in, sampling in fp32). Called on every training step, so
        that every process builds it on the same step."""
        weight = self.image_encoder.visual_projection.weight
        device_type = weight.device.type
        key = (weight.dtype, weight.device, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        if self._fixed_states is None or self._fixed_states[0] != key:
            fixed = self.fixed_references()
            names = sorted(fixed)
            refs = torch.stack([fixed[name] for name in names]).to(weight.device) if names else None
            states = self.image_encoder.frozen_states(refs) if names else []
            self._fixed_states = (key, dict(zip(names, states)))
        return self._fixed_states[1]

    def training_step(self, batch):
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

        noise, timesteps, noisy_latents = self.objective.add_noise(latents)

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
        target = self.objective.target(latents, noise, timesteps)

        if m.mask_loss_prob > 0 and float(torch.rand(())) < m.mask_loss_prob:
            union = union_mask(char_masks, latents.shape[-2:], m.mask_loss_antialias).to(model_pred.dtype)
            model_pred, target = model_pred * union, target * union
        mse = self.objective.loss(model_pred, target, timesteps)
        attention = (attention_control_loss(maps, char_masks, attend, per_frame=m.attention_loss == "release")
                     if record else mse.new_zeros(()))
        loss = mse + m.attention_loss_weight * attention
        return {"loss": loss, "mse": mse.detach(), "attention": attention.detach()}

    # ---- sampling (src/pipelines/storygptv.py) ------------------------------------------------------
    def start_merge_step(self) -> int:
        return self.cfg.model.start_merge_step

    def character_parts(self) -> dict:
        m = self.cfg.model
        return {"image_encoder": self.image_encoder, "fuse": self.fuse,
                "names": [c["name"] for c in read_meta(self.cfg.data.root)["characters"]],
                "aliases": dict(self.cfg.data.aliases), "max_characters": m.max_characters,
                "references": self.fixed_references(), "references_from": f"{self.cfg.data.root}/meta.json",
                "name_tokens": m.name_tokens, "fuse_names": m.fuse_names_at_sampling}

    def generation_meta(self) -> dict:
        return {"task": "char_ldm", "start_merge_step": self.cfg.model.start_merge_step,
                "references": "meta.json fixed references (chars/)"}
