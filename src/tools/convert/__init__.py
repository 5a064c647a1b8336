"""Converters of released weights into this framework's layouts, one module per release
(`python -m src.tools.convert.<name> --help`); their fidelity to the original code: docs/fidelity.md."""
