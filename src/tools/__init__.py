"""One-off utilities: the tiny pretrained stack (tiny_stack.py), target caching, weight conversion.

Kept import-free so that `import src.tools.<tool>` loads only what that tool needs.
"""
