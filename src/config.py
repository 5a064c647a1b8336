"""Run configuration: YAML files with a `base:` chain, command-line overrides, one schema.

`load_config("configs/char_ldm/toy.yaml", ["train.max_steps=100"])`:
  1. reads the file and, depth first, every file in its `base:` list (paths relative to the file that
     names them, or to the repository root), merging left to right, the file itself last; an entry
     `{data: configs/data/toy.yaml}` merges that file under the `data:` section;
  2. applies `key=value` overrides;
  3. checks every step against the schema below plus the task's own `ModelConfig`, so that an unknown
     key or a value of the wrong type fails before any model is built, naming the key and the file (or
     the override) that set it.

The resolved config (no `base:` left) is saved in the run folder by the engine; loading that file again
rebuilds the same run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration problem, with the file (or override) and key at fault in its message."""


# --------------------------------------------------------------------------------------------- schema
@dataclass
class ToyDataConfig:
    """Generator settings for the embedded toy dataset (src/data/toy.py)."""
    seed: int = 0
    num_train: int = 2000
    num_val: int = 200
    num_test: int = 200
    # > 0: StoryStream-shaped long stories of this many beats whose text follows the characters (SEED-Story
    # stage 2; src/data/toy_long.py), cut into stories of data.chunk_frames beats; num_* count long stories.
    story_frames: int = 0


@dataclass
class DataConfig:
    name: str = MISSING
    root: str = MISSING                  # dataset folder in the story format (docs/story_format.md)
    image_size: int = 64                 # training / sampling resolution (square)
    frames_per_story: int = 4
    characters: List[str] = field(default_factory=list)   # checked against meta.json when given
    genders: Dict[str, str] = field(default_factory=dict)  # name -> female|male|neutral (converters, pronouns)
    aliases: Dict[str, str] = field(default_factory=dict)  # spelling in the source -> canonical name
    frame_choice: str = "middle"         # converters: which frame of a multi-frame clip (middle|first|last|N)
    chunk_frames: int = 10               # converters: long stories (StoryStream) cut into stories of N frames
    caption_field: str = "captions"      # or "captions_coref"
    num_workers: int = 0                 # DataLoader workers per process
    toy: Optional[ToyDataConfig] = None  # set only for the toy dataset: it is generated on first use


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-2
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: str = "constant"           # constant | cosine | step (after warmup)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0            # cosine: decay to lr x min_lr_ratio at the last step (SEED-Story: 0.05)
    fused: bool = False                  # PyTorch's fused AdamW kernel (bench/README.md measures it)
    decay_every: int = 10000             # schedule step: lr x decay_factor every N steps after warmup
    decay_factor: float = 0.1


@dataclass
class TrainConfig:
    max_steps: int = 1000                # optimizer steps
    batch_size: int = 16                 # per process, per micro-batch
    grad_accum: int = 1
    grad_clip: float = 1.0               # max global grad norm; 0 disables
    mixed_precision: str = "no"          # no | fp16 | bf16
    seed: int = 0
    ema: bool = False
    ema_decay: float = 0.999
    log_every: int = 10
    sample_every: int = 0                # 0: only at the end
    checkpoint_every: int = 500
    keep_last: int = 3
    resume: Optional[str] = None         # "latest" or a checkpoint folder
    max_minutes: float = 0.0             # wall-clock budget; 0 = none. Stops with a final checkpoint.
    validate_every: int = 0              # task.validate() every N steps and at the end (0: never); the
                                         # weights scoring best on the task's best_metric go to <run>/best/


@dataclass
class SampleConfig:
    scheduler: str = "PNDMScheduler"     # any diffusers scheduler class, built from the pipeline's config
    num_inference_steps: int = 30
    guidance_scale: float = 5.0
    # Rescale the guided prediction's std to the text-conditioned one's (Lin et al. 2024, Sec. 3.4): keeps high
    # CFG from over-exposing when the schedule reaches zero terminal SNR. 0 disables.
    guidance_rescale: float = 0.0
    seed: int = 0
    split: str = "val"                   # split used for the periodic sample stories
    num_stories: int = 4                 # stories drawn in periodic samples
    batch_size: int = 16


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "storyviz"


@dataclass
class RunConfig:
    task: str = MISSING                  # a name in src.tasks.TASKS (schemas: src/tasks/model_configs.py)
    stage: str = MISSING                 # output folder: <output_root>/<stage>/<data.name>/<run_name>
    run_name: str = "default"
    output_root: str = "outputs"
    tiny_stack: Optional[str] = None     # if set, the tiny pretrained stack is built there on first use
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = None                    # replaced by the task's ModelConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


CHOICES = {
    "optim.schedule": ("constant", "cosine", "step"),
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "data.caption_field": ("captions", "captions_coref"),
}


# ---------------------------------------------------------------------------------------------- loading
def read_yaml(path: Path) -> dict:
    """A YAML file that must hold a mapping; any problem is a ConfigError naming the file."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys, got {type(data).__name__}")
    return data


def _resolve_base(name: str, including: Path) -> Path:
    for candidate in (including.parent / name, REPO_ROOT / name, Path(name)):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{including}: key 'base': file '{name}' not found (looked next to the file and "
                      f"under {REPO_ROOT})")


def _layers(path: Path, seen: tuple = ()) -> list[tuple[str, dict]]:
    """The (source, values) layers of one file in merge order: its bases first, itself last."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: key 'base': circular base chain {' -> '.join(map(str, seen + (path,)))}")
    data = read_yaml(path)
    bases = data.pop("base", None) or []
    if isinstance(bases, (str, dict)):
        bases = [bases]
    layers = []
    for base in bases:
        # "file.yaml" merges at the top level; {section: file.yaml} merges that file under `section`
        # (so configs/data/toy.yaml can be shared as the `data:` of every recipe).
        if isinstance(base, dict) and len(base) == 1 and all(isinstance(v, str) for v in base.values()):
            (section, name), = base.items()
            layers += [(src, {section: values})
                       for src, values in _layers(_resolve_base(name, path), seen + (path,))]
        elif isinstance(base, str):
            layers += _layers(_resolve_base(base, path), seen + (path,))
        else:
            raise ConfigError(f"{path}: key 'base': entries are file paths or {{section: file path}}, "
                              f"got {base!r}")
    return layers + [(str(path), data)]


def _parse_overrides(overrides: list[str]) -> list[tuple[str, dict]]:
    """`a.b=value` -> {"a": {"b": value}}. Scalars stay strings and the schema converts them to the
    field's type, so `train.mixed_precision=no` stays "no" (YAML would read it as false); lists and
    mappings (`optim.betas=[0.9,0.99]`) are read as YAML, and null/~ is None."""
    layers = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{item}': expected key=value (e.g. train.max_steps=100)")
        value: Any = raw
        if raw.strip()[:1] in ("[", "{"):
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError as err:
                raise ConfigError(f"override '{item}': not a valid YAML list or mapping: {err}") from None
        elif raw.strip() in ("null", "~"):
            value = None
        elif len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            value = raw[1:-1]  # a quoted string: `run_name='my run'`
        for part in reversed(key.split(".")):
            value = {part: value}
        layers.append((f"command-line override '{item}'", value))
    return layers


def _task_model_config(task_name: str):
    from src.tasks.model_configs import MODEL_CONFIGS  # dataclasses only: no torch, no diffusers

    if task_name not in MODEL_CONFIGS:
        raise ConfigError(f"key 'task': unknown task '{task_name}'; known tasks: {', '.join(sorted(MODEL_CONFIGS))}")
    return MODEL_CONFIGS[task_name]


def merge_onto_schema(schema: DictConfig, source: str, values) -> DictConfig:
    """`values` merged onto a structured (dataclass) config; an unknown key or a wrong type is a
    ConfigError naming `source` (a file, an override) and the dotted key. Used by every schema-checked
    YAML in the project (run configs, configs/pretrained/tiny.yaml, configs/data/*.yaml)."""
    try:
        return OmegaConf.merge(schema, values)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        reason = str(err).splitlines()[0]
        if "Key" in type(err).__name__ or "not in struct" in reason.lower():
            reason = "unknown key (not in the schema; check the spelling)"
        raise ConfigError(f"{source}: key '{key}': {reason}") from None


def _check_choices(cfg: DictConfig) -> None:
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"key '{key}': '{value}' is not one of {', '.join(allowed)}")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"required key(s) never set: {', '.join(missing)}")
    ratio = OmegaConf.select(cfg, "optim.min_lr_ratio")
    if not 0 <= ratio < 1 or (ratio > 0 and OmegaConf.select(cfg, "optim.schedule") != "cosine"):
        raise ConfigError(f"key 'optim.min_lr_ratio': {ratio} needs 0 <= ratio < 1 and optim.schedule=cosine")
    positive = ["train.max_steps", "train.batch_size", "train.grad_accum", "data.image_size"]
    for key in positive:
        if OmegaConf.select(cfg, key) <= 0:
            raise ConfigError(f"key '{key}': must be positive, got {OmegaConf.select(cfg, key)}")


def load_config(path: str | Path, overrides: Optional[list[str]] = None) -> DictConfig:
    """Load, merge and validate a run config; see the module docstring."""
    layers = _layers(Path(path)) + _parse_overrides(list(overrides or []))
    task_name = None
    for _, values in layers:
        task_name = values.get("task", task_name)
    if task_name is None:
        raise ConfigError(f"{path}: key 'task' is not set in the file or its base chain")
    schema = OmegaConf.structured(RunConfig)  # dataclass nodes are closed: unknown keys are errors
    schema.model = OmegaConf.structured(_task_model_config(str(task_name)))
    cfg = schema
    for source, values in layers:
        cfg = merge_onto_schema(cfg, source, values)
    _check_choices(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def save_config(cfg: DictConfig, path: str | Path) -> None:
    Path(path).write_text(OmegaConf.to_yaml(cfg, resolve=True))


def to_dict(node: Any) -> Any:
    """A plain-Python copy of a config node (for logging or hashing)."""
    if dataclasses.is_dataclass(node):
        return dataclasses.asdict(node)
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
