"""StoryViz evaluation package: scores a folder of generated stories against a dataset split.

Reads images and annotations from disk only; never imports src.models (docs/architecture.md, "Evaluation").
"""
