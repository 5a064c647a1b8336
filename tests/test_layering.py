"""The layering of docs/architecture.md, checked on the import statements of every file:
the engine never reaches into src/tools/ (the entries prepare assets), model code never imports
training machinery or config parsing, and eval/ never imports src.models."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

RULES = {
    "src/engine": ("src.tools", "src.train", "src.generate"),
    "src/models": ("accelerate", "deepspeed", "src.engine", "src.tasks", "src.config", "src.tools", "src.train"),
    "eval": ("src.models", "src.tasks", "src.engine"),
}


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` statement in the file names (function-level
    imports included). For `from src import tools` the names are joined: src.tools."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def violations(folder: str, forbidden: tuple[str, ...], repo: Path = REPO) -> list[str]:
    found = []
    for path in sorted((repo / folder).rglob("*.py")):
        for name in sorted(imported_modules(path)):
            if any(name == bad or name.startswith(bad + ".") for bad in forbidden):
                found.append(f"{path.relative_to(repo)} imports {name}")
    return found


@pytest.mark.parametrize("folder", sorted(RULES))
def test_layer_imports_only_what_it_may(folder):
    assert (REPO / folder).is_dir()
    assert violations(folder, RULES[folder]) == []


def test_the_check_sees_function_level_and_from_imports(tmp_path):
    bad = tmp_path / "src" / "engine"
    bad.mkdir(parents=True)
    (bad / "x.py").write_text("def f():\n    from src.tools.assets import ensure_assets\n"
                              "from src import tools\n")
    found = violations("src/engine", RULES["src/engine"], repo=tmp_path)
    assert found == ["src/engine/x.py imports src.tools", "src/engine/x.py imports src.tools.assets",
                     "src/engine/x.py imports src.tools.assets.ensure_assets"]
