"""Tiny causal LLMs for the toy stage 2: an OPT and a Llama, in the on-disk layout of
facebook/opt-6.7b and meta-llama/Llama-2-7b-hf (config.json + model.safetensors + tokenizer files), so
`AutoModelForCausalLM` / `AutoTokenizer` load them with the same code as the real weights.

A real LLM arrives pretrained; so each tiny one is pre-trained briefly on the toy train captions
(next-token loss, whole stories: original and co-reference captions) and its perplexity on the val
captions before and after is written to `pretrain.json`. The tokenizer is a small byte-level BPE trained
on the same captions, wrapped as a `PreTrainedTokenizerFast` and saved with `save_pretrained`.

Built lazily (src/assets.py calls `ensure_tiny_llm` only for a recipe whose `model.llm` lies in
the tiny stack), atomically (a temporary sibling folder renamed into place) and under a file lock.

    python -m src.tools.tiny.llm --out pretrained/tiny --data data/toy [--family opt|llama] [--steps N]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
import uuid
from pathlib import Path

import torch
from filelock import FileLock

from src.data.stories import read_split

# folder name (the real model's name) -> family; the family is a config choice, never read off a name.
FOLDERS = {"opt": "opt-6.7b", "llama": "Llama-2-7b-hf"}
SPECIALS = {  # the real tokenizers' special tokens
    "opt": {"bos_token": "</s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"},
    "llama": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"},
}
SIZES = {"hidden": 64, "layers": 2, "heads": 4, "ffn": 256, "positions": 512, "vocab": 600}
PRETRAIN = {"steps": 300, "batch_size": 16, "lr": 3e-3, "seed": 0}
RECORD = "pretrain.json"


def story_texts(data_root: Path, split: str) -> list[str]:
    """One text per story and caption kind: its captions joined by spaces."""
    _, stories = read_split(data_root, split)
    texts = []
    for story in stories:
        for captions in (story.captions, story.captions_coref):
            if captions is not None:
                texts.append(" ".join(captions))
    return texts


def build_tokenizer(family: str, texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIALS[family]
    special_list = list(dict.fromkeys([specials["unk_token"], specials["pad_token"], specials["bos_token"],
                                       specials["eos_token"]]))
    tok = Tokenizer(models.BPE(unk_token=specials["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_list,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos = specials["bos_token"]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=SIZES["positions"], **specials)


def build_model(family: str, tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    ids = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    s = SIZES
    if family == "opt":  # OPT-6.7b's layout: pre-LN, tied input/output embeddings, learned positions
        config = OPTConfig(hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                           ffn_dim=s["ffn"], max_position_embeddings=s["positions"], word_embed_proj_dim=s["hidden"],
                           do_layer_norm_before=True, dropout=0.0, attention_dropout=0.0, **ids)
        return OPTForCausalLM(config)
    # Llama-2-7b's layout: RMSNorm, rotary positions, SwiGLU, untied lm_head
    config = LlamaConfig(hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                         num_key_value_heads=s["heads"], intermediate_size=s["ffn"],
                         max_position_embeddings=s["positions"], tie_word_embeddings=False, **ids)
    return LlamaForCausalLM(config)


def _encode(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    return enc.input_ids, labels


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], batch_size: int = 32) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        ids, labels = _encode(tokenizer, texts[start:start + batch_size])
        n = int((labels[:, 1:] != -100).sum())
        total += float(model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss) * n
        count += n
    return math.exp(total / max(count, 1))


def pretrain(model, tokenizer, texts: list[str], steps: int, batch_size: int, lr: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    model.train()
    for _ in range(steps):
        pick = torch.randint(len(texts), (batch_size,), generator=generator).tolist()
        ids, labels = _encode(tokenizer, [texts[i] for i in pick])
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)


def build_tiny_llm(folder: Path, data_root: Path, family: str, steps: int = PRETRAIN["steps"]) -> dict:
    """Train the tokenizer, build and pre-train the model, save both into `folder`; returns the record."""
    started = time.perf_counter()
    train_texts, val_texts = story_texts(data_root, "train"), story_texts(data_root, "val")
    tokenizer = build_tokenizer(family, train_texts, SIZES["vocab"])
    model = build_model(family, tokenizer, PRETRAIN["seed"] + (1 if family == "opt" else 2))
    before = perplexity(model, tokenizer, val_texts)
    pretrain(model, tokenizer, train_texts, steps, PRETRAIN["batch_size"], PRETRAIN["lr"], PRETRAIN["seed"])
    after = perplexity(model, tokenizer, val_texts)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    record = {"built_by": "src.tools.tiny.llm", "family": family, "class": type(model).__name__,
              "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer),
              "data_root": str(data_root), "pretrain_steps": steps, **{k: v for k, v in PRETRAIN.items() if k != "steps"},
              "val_perplexity_before": round(before, 3), "val_perplexity_after": round(after, 3),
              "build_seconds": round(time.perf_counter() - started, 2)}
    (folder / RECORD).write_text(json.dumps(record, indent=2) + "\n")  # written last: marks a finished build
    return record


def is_complete(folder: Path) -> bool:
    return all((Path(folder) / name).is_file() for name in ("config.json", "model.safetensors",
                                                             "tokenizer.json", RECORD))


def ensure_tiny_llm(folder, data_root, family: str, steps: int = PRETRAIN["steps"]) -> Path:
    """Return `folder` if it holds a built tiny LLM, else build it there (atomically, under a lock)."""
    folder = Path(folder)
    if family not in FOLDERS:
        raise ValueError(f"tiny LLM family '{family}' is not one of {', '.join(FOLDERS)}")
    if is_complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f".{folder.name}.lock")):
        if is_complete(folder):
            return folder
        staging = folder.parent / f".{folder.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            staging.mkdir()
            record = build_tiny_llm(staging, Path(data_root), family, steps)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(staging, folder)
    print(f"tiny {family} LLM in {folder}: val perplexity {record['val_perplexity_before']} -> "
          f"{record['val_perplexity_after']} ({record['pretrain_steps']} steps, {record['build_seconds']} s)",
          flush=True)
    return folder


def ensure_tiny_llm_in_stack(llm: Path, stack: Path, data_root: Path) -> None:
    """Build `llm` if it is one of the tiny stack's LLM folders and is missing (any other folder is the
    user's: it is loaded as it is). The folder name says which tiny model to *build*; loading always
    takes the family from its config.json."""
    for family, name in FOLDERS.items():
        if Path(llm).resolve() == (Path(stack) / name).resolve():
            ensure_tiny_llm(llm, data_root, family)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Build the tiny OPT / Llama LLMs of the tiny stack.")
    parser.add_argument("--out", required=True, help="the tiny stack folder, e.g. pretrained/tiny")
    parser.add_argument("--data", required=True, help="the toy dataset whose captions pre-train them")
    parser.add_argument("--family", choices=sorted(FOLDERS), action="append", help="default: both")
    parser.add_argument("--steps", type=int, default=PRETRAIN["steps"])
    args = parser.parse_args(argv)
    for family in args.family or sorted(FOLDERS):
        path = ensure_tiny_llm(Path(args.out) / FOLDERS[family], args.data, family, args.steps)
        print(json.dumps(json.loads((path / RECORD).read_text())))


if __name__ == "__main__":
    main()
