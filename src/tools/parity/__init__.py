"""Parity against the original code: `python -m src.tools.parity` (docs/fidelity.md).

Each original module is built at a tiny size from a local clone of its repository (never vendored), given
seeded random weights, saved exactly as the release saves it, converted with our converter and compared
with our module on identical inputs. `common.py` holds the table, the comparison and the clone import
shims; one module per system (`storygptv.py`, `seed_story.py`) lists its checks.
"""
