"""Stages: one file per stage, each a `Task` (see base.py) registered here by name.

A config's `task:` key picks the class; src/tasks/model_configs.py holds the schema of each task's
`model:` section. Task modules are imported by name on first use, so importing this registry (the
config loader, src/runs.py) pulls in neither torch nor diffusers.

StoryGPT-V's baseline LDM is the `char_ldm` task with `model.character_conditioning: false`: the same
recipe, run by the plain text-conditioned LDMTask (src/tasks/ldm.py), of which CharLDMTask is a subclass.
"""
from importlib import import_module

TASKS = {
    "char_ldm": "src.tasks.char_ldm:CharLDMTask",
    "align": "src.tasks.align:AlignTask",
    "detokenizer": "src.tasks.detokenizer:DetokenizerTask",
    "story_sft": "src.tasks.story_sft:StorySFTTask",
    "story_adapt": "src.tasks.story_adapt:StoryAdaptTask",
}
BASELINE = "src.tasks.ldm:LDMTask"  # char_ldm with model.character_conditioning: false


def _load(path: str):
    module_name, class_name = path.split(":")
    return getattr(import_module(module_name), class_name)


def get_task_class(name: str):
    if name not in TASKS:
        raise KeyError(f"key 'task': unknown task '{name}'; known tasks: {', '.join(sorted(TASKS))}")
    return _load(TASKS[name])


def task_class_for(cfg):
    """The class that runs `cfg`: its task's, or the plain LDM for char_ldm without character conditioning."""
    if cfg.task == "char_ldm" and not cfg.model.character_conditioning:
        return _load(BASELINE)
    return get_task_class(cfg.task)


def build_task(cfg):
    return task_class_for(cfg)(cfg)
