"""A Hugging Face causal LM with R added image tokens and soft visual tokens in its input: the LLM side
of both stage 2s (StoryGPT-V §3.2 after GILL; SEED-Story's MLLM).

The LM's own vocabulary keeps its V rows; the R added tokens ([IMG0]..[IMG{R-1}] by default; SEED-Story's
`<img>`, `</img>`, `<img_00000>`.. through `token_names`) get ids V..V+R-1 in this wrapper's vocabulary
and their own small parameters: `image_embeddings` (the input rows) and, for an LM whose output head is
not tied to its input embeddings (Llama), `image_output` (the output rows). So in `frozen` mode (the
paper's) exactly the added rows train and nothing of the LM can change by accident, with no gradient mask
to get wrong; `lora` adds peft adapters (LoraConfig keys, `modules_to_save` included), `full` trains the
LM as well. `embeddings="full"` also trains the LM's own input embeddings and output head (SEED-Story's
release trains `embed_tokens` and `lm_head` whole); "new_rows" trains only the added rows. When the
tokenizer's length is V, the added names are registered in it as special tokens (same ids), so text
decodes with them. The model family (OPT, Llama, ...) comes from the folder's config.json through the
Auto classes, never its name.

Shapes: B batch, L sequence, D LLM width, V LM vocabulary, R image tokens, K soft tokens per image.
  prompt pieces (text | soft tokens [K,D] | token ids) -> inputs_embeds [B,L,D], ids [B,L] (-1 soft/pad)
  forward(inputs_embeds [B,L,D], attention_mask [B,L] or a prepared 4D mask [B,1,L,L] (bool, True = attend),
          position_ids [B,L] optional) -> hidden [B,L,D] (last layer, after the final norm)
  forward_cached(inputs_embeds [B,L,D], a transformers Cache, position_ids [B,L]) -> hidden [B,L,D]
  logits_at(hidden [N,D]) -> [N,V+R]
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

from src.models.pretrained import ShapeOnlyLLMTokenizer, is_config_only, load_pretrained

MODES = ("frozen", "lora", "full")
EMBEDDINGS = ("new_rows", "full")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
Piece = Union[str, torch.Tensor, Sequence[int]]


def load_tokenizer(path):
    """AutoTokenizer from an LLM folder; a folder without tokenizer files is a one-line error. In
    config-only mode (the shape check) a ShapeOnlyLLMTokenizer read from the folder's config.json."""
    from transformers import AutoTokenizer

    path = Path(path)
    if is_config_only():
        return ShapeOnlyLLMTokenizer.from_folder(path)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"{path}: no tokenizer in the LLM folder (none of {', '.join(TOKENIZER_FILES)}); "
                                f"save the tokenizer with the model (tokenizer.save_pretrained)")
    return AutoTokenizer.from_pretrained(path)


class LLMWithImageTokens(nn.Module):
    def __init__(self, lm: nn.Module, tokenizer, num_image_tokens: int = 8, mode: str = "frozen",
                 lora: Optional[dict] = None, token_names: Optional[Sequence[str]] = None,
                 embeddings: str = "new_rows"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"LLM mode '{mode}' is not one of {', '.join(MODES)}")
        if embeddings not in EMBEDDINGS:
            raise ValueError(f"LLM embeddings '{embeddings}' is not one of {', '.join(EMBEDDINGS)}")
        self.mode = mode
        self.tokenizer = tokenizer
        table = lm.get_input_embeddings()
        self.vocab_size, self.width = table.num_embeddings, table.embedding_dim
        self.token_names = list(token_names) if token_names is not None else [f"[IMG{j}]" for j in range(num_image_tokens)]
        self.num_image_tokens = num_image_tokens = len(self.token_names)
        if token_names is not None and len(tokenizer) == self.vocab_size:
            tokenizer.add_special_tokens({"additional_special_tokens": self.token_names})
        head = lm.get_output_embeddings()
        self.tied = head is None or head.weight is table.weight
        std = getattr(lm.config, "init_std", None) or getattr(lm.config, "initializer_range", 0.02)
        self.image_embeddings = nn.Parameter(torch.randn(num_image_tokens, self.width) * std)
        self.image_output = None if self.tied else nn.Parameter(torch.randn(num_image_tokens, self.width) * std)
        if mode == "frozen":
            lm.requires_grad_(False)
        elif mode == "lora":
            from peft import LoraConfig, get_peft_model

            lm = get_peft_model(lm, LoraConfig(**(lora or {})))
        else:
            lm.requires_grad_(True)
        if embeddings == "full":
            for module in (lm.get_input_embeddings(), lm.get_output_embeddings()):
                if module is not None:
                    module.requires_grad_(True)
        self.lm = lm

    @classmethod
    def from_pretrained(cls, path, num_image_tokens: int = 8, mode: str = "frozen", dtype: str = "float32",
                        lora: Optional[dict] = None, token_names: Optional[Sequence[str]] = None,
                        embeddings: str = "new_rows") -> "LLMWithImageTokens":
        from transformers import AutoModelForCausalLM

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}/config.json: not found (model.llm must be a Hugging Face causal-LM folder)")
        tokenizer = load_tokenizer(path)
        lm = load_pretrained(AutoModelForCausalLM, str(path), dtype=getattr(torch, dtype))
        return cls(lm, tokenizer, num_image_tokens, mode, lora, token_names, embeddings)

    # ---- vocabulary -------------------------------------------------------------------------------
    @property
    def image_token_ids(self) -> list[int]:
        return list(range(self.vocab_size, self.vocab_size + self.num_image_tokens))

    def image_token_names(self) -> list[str]:
        return list(self.token_names)

    def token_id(self, name: str) -> int:
        """The id of an added token by name (e.g. "<img>")."""
        return self.vocab_size + self.token_names.index(name)

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of ids in this wrapper's vocabulary (>= V: the [IMG] rows)."""
        table = self.lm.get_input_embeddings()
        text = table(ids.clamp(max=self.vocab_size - 1))
        image = self.image_embeddings.to(text.dtype)[(ids - self.vocab_size).clamp(min=0)]
        return torch.where((ids >= self.vocab_size)[..., None], image, text)

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def text_ids_in_context(self, text: str, before: Optional[str] = None, after: Optional[str] = None) -> list[int]:
        """The ids of `text` as the tokenizer splits it inside a longer string, right after the added token
        `before` and right before `after` (None: the string's start / end). A tokenizer splits text
        differently at a string's start than after a special token (Llama's Metaspace "▁" prefix), so a
        sequence assembled from pieces matches one tokenized whole only if each piece is tokenized where
        it sits: `before + text + after` is tokenized and the two tokens dropped."""
        ids = self.text_ids((before or "") + text + (after or ""))
        for name, index in ((before, 0), (after, -1)):
            if name is not None and (not ids or ids[index] != self.token_id(name)):
                raise ValueError(f"the tokenizer does not keep {name!r} as one token (is it registered as an "
                                 f"added special token?); tokenizing {(before or '') + text + (after or '')!r}")
        return ids[(1 if before else 0):(len(ids) - 1 if after else len(ids))]

    # ---- prompts ----------------------------------------------------------------------------------
    def assemble(self, prompts: list[list[Piece]], bos: bool = True):
        """Right-padded batch from prompts made of pieces: a string (tokenized without specials), a
        tensor [K,D] of soft tokens, or a list of token ids (e.g. `image_token_ids`).
        Returns inputs_embeds [B,L,D], ids [B,L] (-1 at soft tokens and padding), attention_mask [B,L]."""
        device = self.image_embeddings.device
        dtype = self.lm.get_input_embeddings().weight.dtype
        rows = []
        for pieces in prompts:
            parts, ids = [], []
            if bos and self.tokenizer.bos_token_id is not None:
                pieces = [[self.tokenizer.bos_token_id]] + list(pieces)
            for piece in pieces:
                if torch.is_tensor(piece):
                    parts.append(piece.to(device, dtype))
                    ids += [-1] * piece.shape[0]
                else:
                    piece_ids = self.text_ids(piece) if isinstance(piece, str) else list(piece)
                    parts.append(self.embed_ids(torch.tensor(piece_ids, device=device, dtype=torch.long)))
                    ids += piece_ids
            rows.append((torch.cat(parts), ids))
        length = max(len(ids) for _, ids in rows)
        embeds = torch.zeros(len(rows), length, self.width, device=device, dtype=dtype)
        all_ids = torch.full((len(rows), length), -1, dtype=torch.long, device=device)
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=device)
        for b, (row, ids) in enumerate(rows):
            embeds[b, :len(ids)] = row
            all_ids[b, :len(ids)] = torch.tensor(ids, device=device)
            mask[b, :len(ids)] = 1
        return embeds, all_ids, mask

    # ---- forward ----------------------------------------------------------------------------------
    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Last-layer hidden states [B,L,D] (the states the LM head reads). Logits are left to
        `logits_at`, for the few positions a loss needs (a 50k-word head over every position is costly).
        A 4D boolean mask is used as it is (custom visibility, e.g. SEED-Story's every-beat supervision);
        eager attention adds its mask, so it gets the additive form."""
        if attention_mask.dim() == 4 and self.lm.config._attn_implementation == "eager":
            blocked = torch.finfo(inputs_embeds.dtype).min
            attention_mask = torch.zeros(attention_mask.shape, dtype=inputs_embeds.dtype,
                                         device=attention_mask.device).masked_fill(~attention_mask, blocked)
        out = self.lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                      output_hidden_states=True, logits_to_keep=1, use_cache=False)
        return out.hidden_states[-1]

    def forward_cached(self, inputs_embeds: torch.Tensor, cache, position_ids: torch.Tensor) -> torch.Tensor:
        """Inference with a KV cache (a transformers Cache, extended in place): the new tokens
        [B,L,D] at `position_ids` [B,L] attend to every cached token and causally to each other.
        Returns their last-layer hidden states [B,L,D]."""
        out = self.lm(inputs_embeds=inputs_embeds, past_key_values=cache, position_ids=position_ids,
                      use_cache=True, output_hidden_states=True, logits_to_keep=1)
        return out.hidden_states[-1]

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each decoder layer in backward (non-reentrant: the inputs need no grad flag)."""
        self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def logits_at(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N,D] -> [N,V+R]: the LM head's logits, then the [IMG] rows'."""
        text = self.lm.get_output_embeddings()(hidden)
        rows = self.image_embeddings if self.tied else self.image_output
        return torch.cat([text, hidden @ rows.to(hidden.dtype).T], dim=-1)
