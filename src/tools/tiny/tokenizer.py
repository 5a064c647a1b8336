"""The real CLIP BPE tokenizer, built offline from the vocabulary file that open_clip ships.

SD 1.5 and CLIP ViT-L/14 share one tokenizer: OpenAI CLIP's byte-level BPE with 49408 tokens
(Radford et al. 2021, Sec. 2.4). open_clip ships its merges as `bpe_simple_vocab_16e6.txt.gz`; this
module derives `vocab.json` and `merges.txt` from it the way OpenAI CLIP builds its encoder, loads them
with transformers' CLIPTokenizer and saves the result, so tiny and real runs tokenize identically.
"""

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Dict, List, Tuple

from transformers import CLIPTokenizer

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
# OpenAI CLIP keeps the first 49152 - 256 - 2 merges of the file (the first line is a header).
NUM_MERGES = 49152 - 256 - 2
START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
CLIP_VOCAB_SIZE = 49408
CLIP_CONTEXT_LENGTH = 77


def open_clip_bpe_path() -> Path:
    """Where the installed open_clip package keeps its BPE merges (found without importing open_clip)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'open_clip' (open_clip_torch) is not installed; it ships the CLIP BPE file")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / BPE_FILE_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"{BPE_FILE_NAME} not found in open_clip's package folder(s) {list(spec.submodule_search_locations)}")


def bytes_to_unicode() -> Dict[int, str]:
    """OpenAI's reversible byte -> printable-character table used by byte-level BPE: printable
    Latin-1 bytes map to themselves, the other bytes to code points from 256 up, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table = {byte: chr(byte) for byte in printable}
    next_code_point = 256
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(next_code_point)
            next_code_point += 1
    # Order matters for the ids: printable bytes first, then the remapped ones (as in OpenAI CLIP).
    return {byte: table[byte] for byte in printable + [b for b in range(256) if b not in printable]}


def clip_vocab_and_merges(bpe_path: Path) -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    """Build CLIP's token -> id table and merge list from the gzipped BPE file."""
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(merge) != 2 for merge in merges):
        raise ValueError(f"{bpe_path}: expected {NUM_MERGES} two-symbol merges after the header line")
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    tokens += ["".join(merge) for merge in merges]
    tokens += [START_TOKEN, END_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(f"{bpe_path}: derived {len(vocab)} distinct tokens, CLIP has {CLIP_VOCAB_SIZE}")
    return vocab, merges


def build_clip_tokenizer(folder: Path, bpe_path: Path = None) -> CLIPTokenizer:
    """Save CLIP's tokenizer into `folder` and return it loaded back from there. The folder holds
    vocab.json and merges.txt (the layout of openai/clip-vit-large-patch14 and SD 1.5's tokenizer/)
    plus transformers' tokenizer.json and tokenizer_config.json."""
    folder = Path(folder)
    vocab, merges = clip_vocab_and_merges(bpe_path or open_clip_bpe_path())
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_CONTEXT_LENGTH)
    tokenizer.save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [f"{first} {second}" for first, second in merges]
    (folder / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(folder)
