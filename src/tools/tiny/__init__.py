"""The tiny pretrained stack (pretrained/tiny): the real component types and on-disk layouts at toy widths,
built offline (stack.py: SD 1.5 folder, CLIP, BLIP-2; llm.py: tiny OPT and Llama; seed.py: SEED-Story's
SDXL-layout UNet and Qwen-ViT), so that one `from_pretrained` code path serves toy and real runs."""
