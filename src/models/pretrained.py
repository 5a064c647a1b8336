"""One way to load a pretrained part, so that the shape check builds exactly what training builds.

Every task loads its pretrained models and tokenizers through `load_pretrained(cls, path, subfolder)`.
Normally that is just `cls.from_pretrained(path, subfolder=...)`. Inside `config_only()` (entered by
src/tools/shape_check.py, never by training) it reads only the folder's config file and builds the same
class with `from_config` on the meta device: no weight is read or allocated, so a 7B model costs nothing,
and a folder that holds only `config.json` files (tests/assets/config_only/) is enough. Every module a
task creates itself inside the context (a fuse, a mapper) lands on the meta device too.

`config_only(device)` does the same on a real device: the models get their classes' random initial
weights there (benchmarks of real-size steps).

Tokenizers have no config-only form (their vocabulary is a data file), so inside `config_only()` a
tokenizer is a `ShapeOnlyTokenizer`: token ids of the right shape, read from the folder's
`tokenizer_config.json` (`model_max_length`). Outside the context nothing changes: the real tokenizer
loads from its files or fails naming them.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import re
from pathlib import Path
from typing import Optional

import torch
from transformers import AutoTokenizer, BatchEncoding, PreTrainedTokenizerBase

_CONFIG_ONLY = contextvars.ContextVar("storyviz_config_only", default=False)


@contextlib.contextmanager
def config_only(device="meta"):
    """Inside: `load_pretrained` builds from config files alone, and every new tensor is on `device`: the
    meta device (the shape check), or a real one, where the models get random weights (bench/real_step.py
    times real-size steps without downloading weights)."""
    token = _CONFIG_ONLY.set(True)
    try:
        with torch.device(device):
            yield
    finally:
        _CONFIG_ONLY.reset(token)


def is_config_only() -> bool:
    return _CONFIG_ONLY.get()


def _is_tokenizer(cls) -> bool:
    return cls is AutoTokenizer or (isinstance(cls, type) and issubclass(cls, PreTrainedTokenizerBase))


def load_pretrained(cls, path: str, subfolder: Optional[str] = None, **kwargs):
    """`cls.from_pretrained(path, subfolder=..., **kwargs)`; inside `config_only()`, the same class built
    from `path/subfolder/config.json` on the meta device (a tokenizer: a ShapeOnlyTokenizer). `cls` is a
    diffusers model, a transformers model or Auto class, or a tokenizer class. In config-only mode a
    `dtype` / `torch_dtype` keyword casts the model; keywords about reading weight files (variant,
    use_safetensors, ...) have nothing to act on."""
    folder = Path(path) / (subfolder or "")
    if subfolder:
        kwargs["subfolder"] = subfolder
    if not is_config_only():
        if _is_tokenizer(cls):
            return _checked_tokenizer(cls.from_pretrained(path, **kwargs), folder)
        return cls.from_pretrained(path, **kwargs)
    if _is_tokenizer(cls):
        return ShapeOnlyTokenizer.from_folder(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: not found; the shape check builds {cls.__name__} from this "
                                f"config file alone (weights are not needed)")
    where = {"subfolder": subfolder} if subfolder else {}
    if hasattr(cls, "load_config"):  # diffusers ModelMixin
        model = cls.from_config(cls.load_config(path, **where))
    elif hasattr(cls, "_from_config"):  # a transformers model class
        model = cls._from_config(cls.config_class.from_pretrained(path, **where))
    else:  # a transformers Auto class (AutoModelForCausalLM, ...): the family comes from the config
        from transformers import AutoConfig

        model = cls.from_config(AutoConfig.from_pretrained(path, **where))
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
    return model.to(dtype) if dtype is not None else model


def _checked_tokenizer(tokenizer, folder: Path):
    """transformers 5 builds a tokenizer with an empty vocabulary, silently, from a folder that has a
    tokenizer_config.json but none of its vocabulary files: refuse that instead of training on it."""
    names = sorted(getattr(type(tokenizer), "vocab_files_names", {}).values())
    if folder.is_dir() and names and not any((folder / name).is_file() for name in names):
        raise FileNotFoundError(f"{folder}: no tokenizer vocabulary (expected one of {', '.join(names)})")
    return tokenizer


class ShapeOnlyTokenizer:
    """Stands in for a tokenizer in config-only mode: `tok(texts, padding="max_length", ...)` gives
    `input_ids` [N, model_max_length] (all zeros; only shapes matter on the meta device). Anything else a
    real tokenizer does (splitting words, finding names) is an error that says why."""

    def __init__(self, model_max_length: int, source: str):
        self.model_max_length = model_max_length
        self.source = source

    @classmethod
    def from_folder(cls, folder: Path) -> "ShapeOnlyTokenizer":
        config_file = folder / "tokenizer_config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file}: not found; the shape check reads the token length "
                                    f"(model_max_length) from it")
        length = json.loads(config_file.read_text()).get("model_max_length")
        if not isinstance(length, int) or not 0 < length < 1_000_000:
            raise ValueError(f"{config_file}: key 'model_max_length': expected a token length, got {length!r}")
        return cls(length, str(config_file))

    def __call__(self, texts, padding="max_length", max_length: Optional[int] = None, truncation: bool = True,
                 return_tensors: str = "pt", **unused) -> BatchEncoding:
        if padding != "max_length" or return_tensors != "pt":
            raise ValueError(f"{self.source}: the shape-only tokenizer pads to max_length and returns "
                             f"tensors, asked for padding={padding!r}, return_tensors={return_tensors!r}")
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = torch.zeros(len(texts), max_length or self.model_max_length, dtype=torch.long, device="cpu")
        return BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})

    def __getattr__(self, name):
        raise AttributeError(f"{self.source}: the shape-only tokenizer (config-only mode) has no '{name}'; "
                             f"a task's example_batch() must not need real tokenization")


class ShapeOnlyLLMTokenizer:
    """Stands in for an LLM's tokenizer in config-only mode, read from the LLM folder's config.json
    (`vocab_size`, `bos_token_id`, `eos_token_id`): its length, the special ids, added tokens (they extend
    the length, as in a real tokenizer) and `tok(text, add_special_tokens=False).input_ids`, one id per
    UTF-8 byte of the text between added tokens and an added token's own id. A byte-fallback BPE (Llama's)
    never gives more tokens than bytes, so a sequence built from these ids is at least as long as the real
    one: the largest case, as every other data-dependent step of the shape check. The ids are all `unk`
    (0): only their number matters."""

    def __init__(self, vocab_size: int, bos_token_id: Optional[int], eos_token_id: Optional[int], source: str):
        self.vocab_size, self.bos_token_id, self.eos_token_id = vocab_size, bos_token_id, eos_token_id
        self.source = source
        self.added: list[str] = []

    @classmethod
    def from_folder(cls, folder: Path) -> "ShapeOnlyLLMTokenizer":
        config_file = Path(folder) / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file}: not found; the shape check reads the vocabulary size and "
                                    f"the special token ids of the LLM from it")
        config = json.loads(config_file.read_text())
        config = config.get("text_config", config)  # a multimodal config keeps the LM's under text_config
        if not isinstance(config.get("vocab_size"), int):
            raise ValueError(f"{config_file}: key 'vocab_size': expected the LLM's vocabulary size")
        return cls(config["vocab_size"], config.get("bos_token_id"), config.get("eos_token_id"), str(config_file))

    def __len__(self) -> int:
        return self.vocab_size + len(self.added)

    def add_special_tokens(self, tokens: dict) -> int:
        new = [t for t in tokens.get("additional_special_tokens", []) if t not in self.added]
        self.added += new
        return len(new)

    def __call__(self, text: str, add_special_tokens: bool = False, **unused) -> BatchEncoding:
        if not isinstance(text, str) or add_special_tokens:
            raise ValueError(f"{self.source}: the shape-only LLM tokenizer (config-only mode) encodes one "
                             f"string without special tokens")
        ids: list[int] = []
        if self.added:  # added tokens are whole tokens, as in a real tokenizer; the text between them bytes
            pieces = re.split("(" + "|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True)) + ")", text)
        else:
            pieces = [text]
        for piece in pieces:
            if piece in self.added:
                ids.append(self.vocab_size + self.added.index(piece))
            else:
                ids += [0] * len(piece.encode("utf-8"))
        return BatchEncoding({"input_ids": ids})

    def __getattr__(self, name):
        raise AttributeError(f"{self.source}: the shape-only LLM tokenizer (config-only mode) has no '{name}'; "
                             f"a task's example_batch() must not need real tokenization")
