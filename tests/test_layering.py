"""The layering of docs/architecture.md, checked on the import graph of the package and eval/: every
`import` and `from ... import` (function-level ones included), followed transitively through our own
modules (importing a module also runs its parent packages' __init__). So a layer cannot reach a
forbidden one through a third module or an import hidden in a function.

The task registry (`src/tasks/__init__.py`) imports task modules by name on use, never by an import
statement; reaching the registry is not reaching a task.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENTRIES = ("src.train", "src.generate", "src.generate_story", "src.story", "src.studio")
TASK_MODULES = ("src.tasks.",)  # any task module; the registry `src.tasks` itself is allowed
TRAINING = ("accelerate", "deepspeed", "src.engine")

# layer (a module or a package) -> what nothing it reaches may be (a name or a prefix ending in ".")
RULES = {
    "src.models": (*TRAINING, "src.tasks", *TASK_MODULES, "src.config", "src.tools", "src.runs", "src.pipelines",
                   "src.assets", "src.data", *ENTRIES),
    "src.data": (*TRAINING, *TASK_MODULES, "src.tools", "src.runs", "src.pipelines", "src.assets", *ENTRIES),
    "src.config": ("torch", "diffusers", "transformers", *TASK_MODULES, "src.models", "src.engine",
                   "src.pipelines", "src.tools", "src.runs"),
    "src.runs": (*TRAINING, "src.tools", "src.assets", "src.pipelines", *ENTRIES),
    "src.pipelines": ("src.engine", "src.tools", "src.assets", *ENTRIES, "accelerate", "deepspeed"),
    "src.tasks": ("src.engine", "src.tools", "src.assets", *ENTRIES),
    "src.engine": ("src.tools", "src.assets", *ENTRIES),
    "eval": ("src.models", "src.tasks", "src.engine", "src.pipelines", "src.runs"),
}
# The config loader (and what loads configs) may reach one task module: the schemas (dataclasses only).
ALLOWED = {"src.config": ("src.tasks.model_configs",), "src.data": ("src.tasks.model_configs",)}


def module_name(path: Path, repo: Path = REPO) -> str:
    parts = list(path.relative_to(repo).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules(repo: Path = REPO) -> dict[str, Path]:
    return {module_name(p, repo): p for folder in ("src", "eval") for p in sorted((repo / folder).rglob("*.py"))}


def imported_names(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` statement in the file names (function-level imports
    included). For `from src import runs` both src and src.runs are named."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def reach(start: str, modules: dict[str, Path]) -> dict[str, str]:
    """{every name reachable from `start`: the module whose import statement named it}."""
    @lru_cache(maxsize=None)
    def direct(name: str) -> frozenset:
        return frozenset(imported_names(modules[name])) if name in modules else frozenset()

    seen, todo = {}, [start]
    while todo:
        current = todo.pop()
        for name in sorted(direct(current) | {p for p in parents(current) if p in modules}):
            if name not in seen:
                seen[name] = current
                todo.append(name)
    return seen


def matches(name: str, pattern: str) -> bool:
    return name.startswith(pattern) if pattern.endswith(".") else name == pattern or name.startswith(pattern + ".")


def violations(layer: str, forbidden: tuple, allowed: tuple = (), repo: Path = REPO) -> list[str]:
    modules = all_modules(repo)
    found = set()
    for module in (m for m in modules if m == layer or m.startswith(layer + ".")):
        for name, via in reach(module, modules).items():
            if name.startswith(layer + ".") or name == layer or any(name == a or name.startswith(a + ".")
                                                                    for a in allowed):
                continue
            if any(matches(name, bad) for bad in forbidden):
                found.add(f"{module} reaches {name} (imported by {via})")
    return sorted(found)


@pytest.mark.parametrize("layer", sorted(RULES))
def test_layer_reaches_only_what_it_may(layer):
    assert layer in all_modules()
    assert violations(layer, RULES[layer], ALLOWED.get(layer, ())) == []


def test_the_check_follows_function_level_imports_through_other_modules(tmp_path):
    (tmp_path / "src" / "engine").mkdir(parents=True)
    (tmp_path / "src" / "helpers").mkdir(parents=True)
    (tmp_path / "eval").mkdir()
    for folder in ("src", "src/engine", "src/helpers"):
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "eval" / "__init__.py").write_text("")
    (tmp_path / "src" / "engine" / "loop.py").write_text("def f():\n    from src.helpers import util\n")
    (tmp_path / "src" / "helpers" / "util.py").write_text("from src import assets\n")
    (tmp_path / "src" / "assets.py").write_text("")
    found = violations("src.engine", RULES["src.engine"], repo=tmp_path)
    assert found == ["src.engine.loop reaches src.assets (imported by src.helpers.util)"]
