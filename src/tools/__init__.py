"""Offline utilities, by kind (never imported by the engine, the tasks or the pipelines):

  tiny/          the tiny pretrained stack: same component types and folder layouts as the real weights,
                 built offline on first use (entries call it through src/assets.py)
  convert/       released weights -> ours (StoryGPT-V's stages 1 and 2, Qwen-VL's ViT, SEED-Story's
                 de-tokenizer and agent, LAVIS BLIP-2)
  parity/        our modules against the original code, imported from a user's clone (docs/fidelity.md)
  align_targets.py  StoryGPT-V stage 2's alignment targets (scripts/align_targets.sh)
  shape_check.py    a recipe built at real size on the meta device, one step (docs/shape_check.md)

Kept import-free so that `import src.tools.<tool>` loads only what that tool needs.
"""
