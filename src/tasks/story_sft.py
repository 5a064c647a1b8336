"""SEED-Story stage 2: supervised fine-tuning of the MLLM on stories (SEED-Story §3.2; docs/seed_story.md).

A sample is a story's beats 0..n+1 with n context beats drawn uniformly in 0..F-2 (`context_beats:
random`, the release) or all beats (`all`). The sequence, its masks and labels: src/data/story_sequence.py.
By default every beat after the first is supervised in one causal pass, its text and its image features
(`supervision: every`); `last` supervises only the last beat, as released. A sample longer than
`model.max_length` tokens is cut by whole beats from the front; the number of cut samples is logged
every step (`train/samples_cut`, and `train/samples_cut_total` since the process started).

Sink-shaped samples (ours, `model.sink_shaped`): with probability `probability` a sample is instead the
context the multimodal-sink cache holds when generation writes a beat (story_sequence.sink_sequence):
the first tokens and the head and tail of the last evicted images, then a window of whole beats and the
target, re-indexed from 0 as the cache re-rotates them; the window is drawn in 1..window_images
(`window: random`) so that a 10-beat training story also shows fragments of mid-story beats.

Loss: ce_weight * CE on the supervised tokens + regression_weight * (1 - cos) between the regressed and
the frozen visual tokenizer's features of every target image (`regression_loss: mse` as an option).

Trainable (released): LoRA adapters, the modules in lora.modules_to_save (the norms), the LLM's
embeddings and head (`embeddings: full`; `new_rows`: only the added tokens' rows), both resamplers.

Shapes: B batch, F beats, S tokenizer input size, L sequence, K image tokens, Q feature tokens, E width.
  pixel_values [sum F,3,S,S] (every beat of every story of the batch) -> features [N,Q,E]
  sequence tensors [B,L] (story_sequence.pad_batch), attention_mask [B,1,L,L]
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from src.data.datasets import StoryDataset
from src.data.stories import StoryFormatError
from src.data.story_sequence import SUPERVISION, BeatText, SpecialIds, build_sequence, fit_sequence, pad_batch, sink_sequence
from src.models.llm_with_image_tokens import EMBEDDINGS, LLMWithImageTokens
from src.models.pretrained import is_config_only
from src.models.story_cache import SinkSettings
from src.models.story_mllm import BOI, EOI, REGRESSION_LOSSES, StoryMLLM, regression_loss, seed_token_names
from src.models.visual_tokenizer import INPUT_RESAMPLE, build_visual_tokenizer
from src.tasks.base import Task
from src.tasks.model_configs import lora_kwargs
from src.tasks.validation import Means, val_batches

SELECTION_MASKS = ("cmp_mask", "gen_mask", "targets")  # the sequence tensors that select positions
CHOICES = {"llm_mode": ("frozen", "lora", "full"), "embeddings": EMBEDDINGS, "supervision": SUPERVISION,
           "context_beats": ("random", "all"), "regression_loss": REGRESSION_LOSSES,
           "llm_dtype": ("float32", "bfloat16", "float16")}
SINK_WINDOWS = ("random", "fixed")  # model.sink_shaped.window


def check_two_beats(jsonl: Path, stories: list) -> None:
    """A stage-2 or stage-3 sample needs a context beat and a target beat: a shorter story is an error
    naming its line."""
    for story in stories:
        if story.num_frames < 2:
            raise StoryFormatError(jsonl, story.line, "images",
                                   f"story '{story.id}' has {story.num_frames} beat; SEED-Story's stages 2 and 3 need at least 2")


def beat_text(llm: LLMWithImageTokens, caption: str, separator: str) -> BeatText:
    """A caption's ids in the three places the release's sample strings put it (story_sequence.BeatText):
    each text piece tokenized between the image tokens that bound it (every piece is followed by `<img>`)."""
    return BeatText(opening=tuple(llm.text_ids_in_context(caption, after=BOI)),
                    continued=tuple(llm.text_ids_in_context(separator + caption, before=EOI, after=BOI)),
                    response=tuple(llm.text_ids_in_context(separator + caption, after=BOI)))


def sink_settings(sink) -> dict:
    """model.sink_shaped's cache settings as SinkSettings' keyword arguments."""
    keys = ("window_images", "first_tokens", "sink_images", "before_boi", "after_boi", "before_eoi", "after_eoi")
    return {key: getattr(sink, key) for key in keys}


class StorySFTTask(Task):
    model_choices = CHOICES
    best_metric = "val/loss"
    draws_samples = False  # stage 2 draws no frames (story generation is the inference entry's job)

    def __init__(self, cfg):
        super().__init__(cfg)
        m = cfg.model
        self.visual_tokenizer = build_visual_tokenizer(m.tokenizer, m.tokenizer_path, m.tokenizer_arch)
        probe = self.visual_tokenizer.empty_features(1)
        llm = LLMWithImageTokens.from_pretrained(m.llm, mode=m.llm_mode, dtype=m.llm_dtype, lora=lora_kwargs(m.lora),
                                                 token_names=seed_token_names(m.num_image_tokens),
                                                 embeddings=m.embeddings)
        self.mllm = StoryMLLM(llm, m.num_image_tokens, probe.shape[1], probe.shape[2], m.input_resampler_heads,
                              m.output_resampler_heads)
        if m.gradient_checkpointing:
            llm.enable_gradient_checkpointing()
        tok = llm.tokenizer
        self.special = SpecialIds(bos=tok.bos_token_id, eos=tok.eos_token_id, boi=self.mllm.boi_id,
                                  eoi=self.mllm.eoi_id, img=self.mllm.image_ids,
                                  separator=tuple(llm.text_ids_in_context(m.separator, before=EOI)))
        self.samples_cut_total = 0
        self.check_sink_shaped(m.sink_shaped)
        if m.init_weights and not is_config_only():  # the shape check reads no weights
            self.load_init_weights(m.init_weights)

    @staticmethod
    def check_sink_shaped(sink) -> None:
        if not 0 <= sink.probability <= 1:
            raise ValueError(f"key 'model.sink_shaped.probability': {sink.probability} is not in [0, 1]")
        if sink.window not in SINK_WINDOWS:
            raise ValueError(f"key 'model.sink_shaped.window': '{sink.window}' is not one of {', '.join(SINK_WINDOWS)}")
        if sink.window_images < 1:
            raise ValueError(f"key 'model.sink_shaped.window_images': {sink.window_images}; must be at least 1")
        if sink.sink_images is not None and sink.sink_images < 0:
            raise ValueError(f"key 'model.sink_shaped.sink_images': {sink.sink_images}; must be at least 0 "
                             f"(or null: every evicted image)")
        for key in ("first_tokens", "before_boi", "after_boi", "before_eoi", "after_eoi"):
            if getattr(sink, key) < 0:
                raise ValueError(f"key 'model.sink_shaped.{key}': {getattr(sink, key)}; must be at least 0")

    def load_init_weights(self, path: str) -> None:
        """model.init_weights: a trainable.safetensors of this task (a run's checkpoint, or converted
        weights in the same names), loaded strictly."""
        from safetensors.torch import load_file

        if not Path(path).is_file():
            raise FileNotFoundError(f"key 'model.init_weights': {path} not found (a trainable.safetensors of a "
                                    f"story_sft run, or converted weights in its names)")
        self.load_trainable_state_dict(load_file(path), source=path)

    def writer_parts(self) -> dict:
        """What a drawing pipeline needs to write with this MLLM (SeedStoryPipeline's mllm, special, separator)."""
        return {"mllm": self.mllm, "special": self.special, "separator": self.cfg.model.separator}

    # ---- data -------------------------------------------------------------------------------------
    def dataset(self, split: str) -> StoryDataset:
        data = StoryDataset(self.cfg.data.root, split, self.visual_tokenizer.image_size, resample=INPUT_RESAMPLE)
        check_two_beats(data.data.jsonl, data.stories)
        return data

    def train_dataset(self):
        return self.dataset("train")

    def collate(self, items: list[dict]) -> dict:
        """Every beat's frame [sum F,3,S,S]; captions as BeatTexts (lists, per story)."""
        return {"pixel_values": torch.cat([item["pixel_values"] for item in items]),
                "num_beats": [len(item["captions"]) for item in items],
                "caption_ids": [[beat_text(self.mllm.llm, c, self.cfg.model.separator) for c in item["captions"]]
                                for item in items],
                "story_id": [item["story_id"] for item in items]}

    # ---- the step ---------------------------------------------------------------------------------
    def sequences(self, batch: dict, lasts: list[int], supervision: str) -> tuple[list, int]:
        """Fitted sequences of beats ..lasts[b]; how many were cut."""
        seqs = [fit_sequence(ids, last, self.special, supervision, self.cfg.model.max_length, f"story '{sid}'")
                for ids, last, sid in zip(batch["caption_ids"], lasts, batch["story_id"])]
        return seqs, sum(1 for s in seqs if s.first > 0)

    def teacher_forced(self, batch: dict, seqs: list) -> dict:
        """The MLLM's pass over fitted sequences (stage 2's step; stage 3 reads the regressed features).
        Returns hidden [B,L,D], the padded sequence tensors `t`, the frozen tokenizer's features of the
        target images in sequence order `target_features` [N_gen,Q,E] and `regressed` [N_gen,Q,E]."""
        device = batch["pixel_values"].device
        offsets = [0]
        for count in batch["num_beats"][:-1]:
            offsets.append(offsets[-1] + count)
        inputs = [offsets[b] + k for b, s in enumerate(seqs) for k in s.input_beats]
        targets = [offsets[b] + k for b, s in enumerate(seqs) for k in s.target_beats]
        used = sorted(set(inputs) | set(targets))
        row = {frame: i for i, frame in enumerate(used)}
        features = self.visual_tokenizer(batch["pixel_values"][used])  # frozen: no grad
        # On the meta device (the shape check) the selection masks stay on the CPU: a selection by a CPU
        # mask keeps its real size, a meta mask would select everything.
        masks_on = torch.device("cpu") if device.type == "meta" else device
        t = {k: v.to(masks_on if k in SELECTION_MASKS else device) for k, v in pad_batch(seqs, self.special.eos).items()}
        image_tokens = None  # every input image whole, unless a sink-shaped sample holds fragments of some
        k = self.mllm.num_image_tokens
        if any(len(kept) < k for s in seqs for kept in s.input_tokens):
            image_tokens = torch.zeros(len(inputs), k, dtype=torch.bool, device=masks_on)
            for i, kept in enumerate(kept for s in seqs for kept in s.input_tokens):
                image_tokens[i, list(kept)] = True
        hidden = self.mllm(t["input_ids"], features[[row[i] for i in inputs]], t["cmp_mask"], t["attention_mask"],
                           t["position_ids"], image_tokens)
        return {"hidden": hidden, "t": t, "target_features": features[[row[i] for i in targets]],
                "regressed": self.mllm.regress(hidden, t["gen_mask"])}

    def losses(self, batch: dict, seqs: list) -> dict:
        out = self.teacher_forced(batch, seqs)
        hidden, t, regressed = out["hidden"], out["t"], out["regressed"]
        supervised = t["targets"] != -100
        logits = self.mllm.llm.logits_at(hidden[supervised])
        ce = F.cross_entropy(logits.float(), t["targets"][supervised].to(hidden.device))
        regression = regression_loss(regressed, out["target_features"], self.cfg.model.regression_loss)
        m = self.cfg.model
        return {"loss": m.ce_weight * ce + m.regression_weight * regression, "ce": ce.detach(),
                m.regression_loss: regression.detach(), "tokens": t["valid"].sum().float() / len(seqs),
                "images": torch.tensor(float(regressed.shape[0]))}

    def sink_shaped(self, captions: list[BeatText], frames: int, where: str):
        """A sink-shaped sample of a story of `frames` beats (story_sequence.sink_sequence), or None when
        the story is too short to evict a beat (3 beats at least). The window w is drawn in
        1..min(window_images, F-2) (`window: random`) or is window_images, the target beat in w+1..F-1,
        both from the global RNG; a sample longer than model.max_length drops whole window beats."""
        m = self.cfg.model
        s = m.sink_shaped
        top = min(s.window_images, frames - 2)
        if top < 1:
            return None
        window = 1 + int(torch.randint(0, top, ())) if s.window == "random" else top
        last = window + 1 + int(torch.randint(0, frames - 1 - window, ()))
        while True:
            seq = sink_sequence(captions, last, self.special,
                                SinkSettings(**{**sink_settings(s), "window_images": window}), m.supervision)
            if len(seq) <= m.max_length:
                return seq
            if window == 1:
                raise ValueError(f"{where}: a sink-shaped sample of beat {last} with a one-beat window takes "
                                 f"{len(seq)} tokens, more than model.max_length={m.max_length}")
            window -= 1

    def training_step(self, batch: dict) -> dict:
        m = self.cfg.model
        beats = batch["num_beats"]
        if m.context_beats == "random":  # n ~ U{0..F-2} context beats after the first, from the global RNG
            lasts = [1 + int(torch.randint(0, f - 1, ())) for f in beats]
        else:
            lasts = [f - 1 for f in beats]
        seqs, cut = self.sequences(batch, lasts, m.supervision)
        if m.sink_shaped.probability > 0:  # drawn only then: a recipe without sink-shaped samples keeps its RNG stream
            for b, (captions, frames, sid) in enumerate(zip(batch["caption_ids"], beats, batch["story_id"])):
                if float(torch.rand(())) < m.sink_shaped.probability:
                    seq = self.sink_shaped(captions, frames, f"story '{sid}'")
                    if seq is not None:
                        cut -= seqs[b].first > 0
                        seqs[b] = seq
        self.samples_cut_total += cut
        out = self.losses(batch, seqs)
        out["samples_cut"] = torch.tensor(float(cut))
        out["samples_cut_total"] = torch.tensor(float(self.samples_cut_total))
        return out

    # ---- shape check (src/tools/shape_check.py) -----------------------------------------------------
    def example_batch(self, batch_size: int, device) -> dict:
        """`batch_size` stories of data.frames_per_story beats at the tokenizer's input size, their captions
        as long as lets the whole story (every beat, the recipe's supervision) fill model.max_length: the
        longest sequence the recipe can see. The step's own draw of the context beats still applies
        (`model.context_beats=all` takes every beat)."""
        m, frames = self.cfg.model, self.cfg.data.frames_per_story
        if frames < 2:
            raise ValueError(f"key 'data.frames_per_story': {frames}; stage 2 needs at least 2 beats")
        empty = BeatText((), self.special.separator, self.special.separator)
        fixed = len(build_sequence([empty] * frames, 0, frames - 1, self.special, m.supervision))
        per_caption = (m.max_length - fixed) // frames
        if per_caption < 1:
            raise ValueError(f"key 'model.max_length': {m.max_length} tokens do not hold {frames} beats "
                             f"({fixed} tokens without any caption text)")
        size = self.visual_tokenizer.image_size
        text = (self.special.eos,) * per_caption
        captions = [BeatText(text, self.special.separator + text, self.special.separator + text)] * frames
        return {"pixel_values": torch.zeros(batch_size * frames, 3, size, size, device=device),
                "num_beats": [frames] * batch_size, "caption_ids": [captions] * batch_size,
                "story_id": [f"example_{b}" for b in range(batch_size)]}

    def conditioning_module(self):
        """The output resampler: the regressed visual-tokenizer features the de-tokenizer draws from."""
        return self.mllm.output_resampler

    # ---- validation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict:
        """Teacher-forced CE and regression on val stories, every beat of each whole story (the every-beat
        pass equals the union of the release's samples, so it scores either supervision mode); the mean
        of the batches' losses."""
        means = Means()
        kept = ("loss", "ce", self.cfg.model.regression_loss)
        for batch in val_batches(self.dataset("val"), self.cfg.model.val_stories, self.cfg.train.batch_size,
                                 self.collate, self.mllm.input_resampler.query.device):
            seqs, _ = self.sequences(batch, [f - 1 for f in batch["num_beats"]], "every")
            for key, value in self.losses(batch, seqs).items():
                if key in kept:
                    means.add(f"val/{key}", value)
        return means.means()
