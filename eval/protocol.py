"""Evaluation protocols: YAML files under configs/eval/ with a `base:` chain and key=value overrides.

The keys of configs/eval/base.yaml are the schema: a protocol or override naming any other key is an
error naming that key and the file (or the override) it came from.

    python -m eval.protocol configs/eval/toy_story.yaml [key=value ...] --generator-args

prints the src.generate_story options of the protocol's `story:` section (scripts/eval_seed_story.sh), so
a story generation and its scoring read one file and the same overrides.
"""
import argparse
import copy
import sys
from pathlib import Path

import yaml

from eval.stories_io import EvalInputError

KNOWN_METRICS = ("fid", "classifier", "clip", "caption", "judge")
STORY_MODES = ("story", "vis")
CONTEXT_MODES = ("dense", "window", "sink", "multimodal_sink")  # src.models.story_cache's (eval never imports it)


def _read_yaml(path):
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"protocol {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise EvalInputError(f"protocol {path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise EvalInputError(f"protocol {path}: top level must be a mapping")
    return data


def _merge(schema, base, update, where, prefix=""):
    """A copy of base with update merged in; every key of update must exist in schema."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        name = f"{prefix}{key}"
        if key not in schema:
            raise EvalInputError(f"{where}: unknown key '{name}' (known: {', '.join(sorted(schema))})")
        if isinstance(schema[key], dict):
            if not isinstance(value, dict):
                raise EvalInputError(f"{where}: key '{name}' must be a mapping")
            merged[key] = _merge(schema[key], merged.get(key, {}), value, where, prefix=f"{name}.")
        else:
            merged[key] = _typed(schema[key], value, name, where)
    return merged


def _typed(default, value, name, where):
    """value checked against the type of base.yaml's default (null defaults accept anything)."""
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise EvalInputError(f"{where}: key '{name}' must be true or false, not {value!r}")
        return value
    if isinstance(default, (int, float)):
        try:  # YAML 1.1 reads 3e-3 (no dot) as a string
            number = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or (isinstance(default, int) and number != int(number)):
            kind = "an integer" if isinstance(default, int) else "a number"
            raise EvalInputError(f"{where}: key '{name}' must be {kind}, not {value!r}")
        return int(number) if isinstance(default, int) else number
    if isinstance(default, list) and not isinstance(value, list):
        raise EvalInputError(f"{where}: key '{name}' must be a list, not {value!r}")
    return value


def _chain(path):
    """[base-most file, ..., path] following `base:` keys (relative to the file naming them)."""
    chain, seen = [], set()
    path = Path(path)
    while True:
        resolved = path.resolve()
        if resolved in seen:
            raise EvalInputError(f"protocol {path}: `base:` chain loops back to this file")
        seen.add(resolved)
        data = _read_yaml(path)
        chain.append((path, data))
        if not data.get("base"):
            return list(reversed(chain))
        path = path.parent / data["base"]


def _parse_override(text):
    if "=" not in text:
        raise EvalInputError(f"override {text!r}: expected key=value (e.g. fid.resize_to=64)")
    dotted, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw else None
    update = {}
    node = update
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return update


def load_protocol(path, overrides=()):
    """The protocol at path with its base chain and overrides applied, validated against base.yaml."""
    chain = _chain(path)
    _, root = chain[0]
    schema = {key: value for key, value in root.items() if key != "base"}
    protocol = {}
    for file_path, data in chain:
        data = {key: value for key, value in data.items() if key != "base"}
        protocol = _merge(schema, protocol, data, f"protocol {file_path}")
    for text in overrides:
        protocol = _merge(schema, protocol, _parse_override(text), f"override {text!r}")
    _validate(protocol, path)
    protocol["protocol_file"] = str(path)
    return protocol


def _validate(protocol, path):
    if not protocol.get("dataset"):
        raise EvalInputError(f"protocol {path}: key 'dataset' is not set (the dataset folder to score against)")
    for name in protocol["metrics"]:
        if name not in KNOWN_METRICS:
            raise EvalInputError(f"protocol {path}: key 'metrics': unknown metric {name!r} "
                                 f"(known: {', '.join(KNOWN_METRICS)})")
    if protocol["fid"]["features"] not in ("inception", "classifier"):
        raise EvalInputError(f"protocol {path}: key 'fid.features' must be inception or classifier, "
                             f"not {protocol['fid']['features']!r}")
    if protocol["classifier"]["arch"] not in ("inception_v3", "small_cnn"):
        raise EvalInputError(f"protocol {path}: key 'classifier.arch' must be inception_v3 or small_cnn, "
                             f"not {protocol['classifier']['arch']!r}")
    if protocol["device"] not in ("auto", "cpu", "cuda"):
        raise EvalInputError(f"protocol {path}: key 'device' must be auto, cpu or cuda")
    story = protocol["story"]
    for key, choices in (("mode", STORY_MODES), ("context", CONTEXT_MODES)):
        if story[key] not in choices:
            raise EvalInputError(f"protocol {path}: key 'story.{key}' must be one of {', '.join(choices)}, "
                                 f"not {story[key]!r}")
    for key, least in (("given_beats", 0), ("beats", 1), ("window_images", 1), ("max_text_tokens", 1)):
        if story[key] < least:
            raise EvalInputError(f"protocol {path}: key 'story.{key}' must be at least {least}, not {story[key]}")
    if story["sink_images"] is not None and (not isinstance(story["sink_images"], int) or story["sink_images"] < 0):
        raise EvalInputError(f"protocol {path}: key 'story.sink_images' must be null or an integer >= 0, "
                             f"not {story['sink_images']!r}")
    if story["num_stories"] is not None and (not isinstance(story["num_stories"], int) or story["num_stories"] < 1):
        raise EvalInputError(f"protocol {path}: key 'story.num_stories' must be null or a positive integer, "
                             f"not {story['num_stories']!r}")


def generator_args(protocol):
    """The src.generate_story options that draw the stories this protocol scores."""
    story = protocol["story"]
    args = ["--data-root", str(protocol["dataset"]), "--split", protocol["split"], "--seed", str(protocol["seed"]),
            "--mode", story["mode"], "--beats", str(story["beats"]), "--context", story["context"],
            "--window-images", str(story["window_images"]), "--temperature", str(story["temperature"]),
            "--top-p", str(story["top_p"]), "--max-text-tokens", str(story["max_text_tokens"])]
    args += ["--sink-images", "all" if story["sink_images"] is None else str(story["sink_images"])]
    if story["num_stories"] is not None:
        args += ["--num-stories", str(story["num_stories"])]
    return args


def resolve_device(name):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Check a protocol; print what a generator needs from it.")
    parser.add_argument("protocol", help="configs/eval/<dataset>.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value protocol overrides")
    parser.add_argument("--generator-args", action="store_true",
                        help="print src.generate_story's options from the `story:` section, one per line")
    parser.add_argument("--get", metavar="KEY", default=None,
                        help="print one top-level value of the resolved protocol (scripts/eval_storygptv.sh reads `split`)")
    args = parser.parse_args(argv)
    protocol = load_protocol(args.protocol, args.overrides)
    if "judge" in protocol["metrics"]:  # a judge without an endpoint or key fails now, not after generation
        from eval.judge import JudgeClient
        JudgeClient.from_protocol(protocol["judge"])
    if args.generator_args:  # one per line: scripts/eval_seed_story.sh reads them with mapfile
        print("\n".join(generator_args(protocol)))
    if args.get is not None:
        if args.get not in protocol:
            raise EvalInputError(f"protocol {args.protocol}: no key '{args.get}'")
        print(protocol[args.get])
    return 0


if __name__ == "__main__":
    from src.errors import run_entry
    sys.exit(run_entry(main))
