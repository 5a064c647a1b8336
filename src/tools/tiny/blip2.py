"""A tiny BLIP-2 captioner for the toy stack, built offline into `pretrained/tiny/blip2/`.

    python -m src.tools.tiny.blip2 --out pretrained/tiny/blip2 [--data data/toy] [--seed 0]

Same component types and on-disk layout as Salesforce/blip2-opt-2.7b (pretrained/README.md,
"the tiny stack"): Blip2ForConditionalGeneration with an OPT language model, a Blip2Processor with a
BlipImageProcessor and an OPT-style byte-level BPE tokenizer (`</s>` as BOS/EOS, `<pad>`, `<image>`).
The tokenizer is trained here on the toy captions (or a built-in word list), so nothing is
downloaded. Weights are random: captions exercise the code path, they mean nothing.
"""
import argparse
import json
from pathlib import Path

import torch

IMAGE_SIZE = 64
NUM_QUERY_TOKENS = 8
BASE_CORPUS = [
    "a picture of a person standing on the beach",
    "two friends walk through the forest at night",
    "she looks at him in the city and they talk",
    "he runs, jumps and waves; it is a sunny day",
]


def _corpus(data_root):
    lines = list(BASE_CORPUS)
    if data_root is not None:
        for name in ("train.jsonl", "val.jsonl"):
            path = Path(data_root) / name
            if not path.is_file():
                raise FileNotFoundError(f"{path}: not found (tiny BLIP-2 trains its tokenizer on the toy captions)")
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    lines += json.loads(line)["captions"]
    return lines


def build_tokenizer(data_root=None, vocab_size=512):
    """An OPT-style byte-level BPE tokenizer trained on captions, with BLIP-2's `<image>` token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2TokenizerFast

    special = ["<s>", "<pad>", "</s>", "<unk>"]  # OPT's ids 0..3
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(_corpus(data_root), trainer=trainer)
    # OPT prepends </s> as BOS to every text
    backend.post_processor = processors.TemplateProcessing(single="</s> $A", pair="</s> $A </s> $B",
                                                            special_tokens=[("</s>", 2)])
    tokenizer = GPT2TokenizerFast(tokenizer_object=backend, bos_token="</s>", eos_token="</s>",
                                  unk_token="<unk>", pad_token="<pad>", add_bos_token=False)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    return tokenizer


def build_tiny_blip2(out_dir, data_root=None, seed=0):
    """Write a tiny Blip2ForConditionalGeneration + Blip2Processor to out_dir; returns out_dir."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(data_root)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=IMAGE_SIZE, patch_size=16),
        qformer_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            encoder_hidden_size=32, cross_attention_frequency=2, vocab_size=len(tokenizer)),
        text_config=dict(model_type="opt", hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2,
                         vocab_size=len(tokenizer), word_embed_proj_dim=32, max_position_embeddings=128,
                         bos_token_id=2, eos_token_id=2, pad_token_id=1),
        num_query_tokens=NUM_QUERY_TOKENS, image_token_index=image_token_id)
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    image_processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer,
                               num_query_tokens=NUM_QUERY_TOKENS)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def ensure_tiny_blip2(out_dir, data_root=None, seed=0):
    """The tiny BLIP-2 folder, built first when it holds no model yet."""
    out_dir = Path(out_dir)
    if not (out_dir / "config.json").is_file():
        build_tiny_blip2(out_dir, data_root, seed)
    return out_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build the tiny BLIP-2 captioner of the toy stack.")
    parser.add_argument("--out", required=True, help="folder to write, e.g. pretrained/tiny/blip2")
    parser.add_argument("--data", default=None, help="toy dataset whose captions train the tokenizer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(ensure_tiny_blip2(args.out, args.data, args.seed))


if __name__ == "__main__":
    main()
