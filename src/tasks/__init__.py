"""Stages: one file per stage, each a `Task` (see base.py) registered here by name.

A config's `task:` key picks the class; the class's `ModelConfig` dataclass is the schema of the
config's `model:` section.
"""
from importlib import import_module

TASKS = {
    "ldm": "src.tasks.ldm:LDMTask",
    "char_ldm": "src.tasks.char_ldm:CharLDMTask",
    "align": "src.tasks.align:AlignTask",
    "detokenizer": "src.tasks.detokenizer:DetokenizerTask",
    "story_sft": "src.tasks.story_sft:StorySFTTask",
    "story_adapt": "src.tasks.story_adapt:StoryAdaptTask",
}


def get_task_class(name: str):
    if name not in TASKS:
        raise KeyError(f"key 'task': unknown task '{name}'; known tasks: {', '.join(sorted(TASKS))}")
    module_name, class_name = TASKS[name].split(":")
    return getattr(import_module(module_name), class_name)


def build_task(cfg):
    return get_task_class(cfg.task)(cfg)
