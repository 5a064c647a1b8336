"""The documentation matches the repository: README's map and docs/architecture.md's layout name the
modules that exist (and only those), every link reaches an existing file and heading inside the
repository, every script, config, module and source path a page names exists, and no page points outside
the project."""
from __future__ import annotations

import glob
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOT_IN_GIT = {"outputs/"}  # folders a map may name that a clean clone does not have
# YAML names a page may give bare that are not this repository's: a run folder's file, a user's story file
# in an error message, config names of SEED-Story's release (the paths its code wants and never shipped).
NOT_OURS = {"config.yaml", "story.yaml", "agent_7b_seed_story.yaml", "george_mid_long30_sft.yaml"}


def pages(repo: Path = REPO) -> list[Path]:
    return sorted([repo / "README.md", *repo.glob("docs/*.md"), *repo.glob("*/README.md")])


def name(page: Path, repo: Path) -> str:
    return page.relative_to(repo).as_posix()


# ---- Markdown -----------------------------------------------------------------------------------------
FENCE = re.compile(r"^(```|~~~)")


def prose(text: str) -> str:
    """The text outside fenced code blocks (code blocks keep their line count, as blank lines)."""
    out, inside = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            inside = not inside
            out.append("")
        else:
            out.append("" if inside else line)
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())  # a link: its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    for line in prose(page.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            found.add(base if count == 0 else f"{base}-{count}")
            seen[base] = count + 1
    return found


def fenced_blocks(text: str, section: str) -> list[list[str]]:
    """The fenced code blocks under the `## section` heading (up to the next heading of that level)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f"## {section}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    blocks, current = [], None
    for line in lines[start + 1:end]:
        if FENCE.match(line.strip()):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks


FILE_LIKE = re.compile(r"^[\w.-]+/?$")


def tree_paths(lines: list[str]) -> list[str]:
    """Paths of a tree drawn by indentation (two spaces a level, one entry a line: its name first; a folder
    ends with '/'). A line whose first word is neither a folder nor a file name continues the one above."""
    paths, stack = [], []
    for line in lines:
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        entry = line.split()[0]
        if not FILE_LIKE.match(entry) or not (entry.endswith("/") or "." in entry.strip(".")):
            continue
        if depth > len(stack):
            continue  # deeper than any folder above it: a continuation line
        stack = stack[:depth]
        paths.append("".join(stack) + entry)
        if entry.endswith("/"):
            stack.append(entry)
    return paths


# ---- what the repository holds ----------------------------------------------------------------------
def modules_of(folder: Path, repo: Path) -> set[str]:
    return {p.relative_to(repo).as_posix() for p in folder.glob("*.py") if p.name != "__init__.py"}


def packages_of(folder: Path, repo: Path) -> set[str]:
    return {p.relative_to(repo).as_posix() + "/" for p in folder.iterdir()
            if p.is_dir() and p.name != "__pycache__" and any(p.rglob("*.py"))}


def missing_tree_entries(paths: list[str], repo: Path) -> list[str]:
    return [p for p in paths if p not in NOT_IN_GIT and not (repo / p).exists()]


# ---- paths named in a page --------------------------------------------------------------------------
def expand(pattern: str) -> list[str]:
    """`a/{b,c}.yaml` -> a/b.yaml, a/c.yaml; placeholders (`<name>`, `$NAME`, `DATASET`) become globs."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match:
        return [p for alt in match.group(1).split(",")
                for p in expand(pattern[:match.start()] + alt + pattern[match.end():])]
    pattern = re.sub(r"<[^<>/]*>|\$\{?\w+\}?|\b[A-Z][A-Z0-9_]*[A-Z0-9]\b", "*", pattern)
    return [pattern]


def exists(pattern: str, repo: Path) -> bool:
    return all(glob.glob(str(repo / p)) for p in expand(pattern))


NAMED_PATH = re.compile(r"(?<![\w/.-])((?:scripts|configs|src|eval|bench|tests|examples)/"
                        r"[\w./{},*<>$-]*\.(?:sh|ya?ml|py))(?![\w/])")
MODULE = re.compile(r"python -m ((?:src|eval|bench)(?:\.\w+)+)")
BARE_YAML = re.compile(r"(?<![\w/.$<>{}-])([\w-]+\.yaml)\b")


def module_exists(module: str, repo: Path) -> bool:
    path = repo / Path(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()


# A path right after the name of an original repository is that repository's, not ours ("SEED-Story
# src/data/story_telling.py", docs/fidelity.md's tables), and is not looked for here.
ORIGINAL_PATH = re.compile(r"\b(?:SEED-Story|SEED-X|StoryGPT-V|ViStoryBench|FastComposer|GILL)[ :]+`?[\w./-]+")


def missing_paths(page: Path, repo: Path) -> list[str]:
    text = ORIGINAL_PATH.sub("", page.read_text(encoding="utf-8"))
    found = [f"{name(page, repo)}: {p}" for p in sorted(set(NAMED_PATH.findall(text))) if not exists(p, repo)]
    found += [f"{name(page, repo)}: python -m {m}" for m in sorted(set(MODULE.findall(text)))
              if not module_exists(m, repo)]
    yaml_names = {p.name for p in repo.rglob("*.yaml") if ".venv" not in p.parts}
    found += [f"{name(page, repo)}: {n}" for n in sorted(set(BARE_YAML.findall(text)))
              if n not in yaml_names and n not in NOT_OURS]
    return found


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def broken_links(page: Path, repo: Path) -> list[str]:
    broken = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page.resolve()
        if not path.exists() or repo.resolve() not in path.parents:
            broken.append(f"{name(page, repo)}: {target}: no such file in the repository")
        elif anchor and (path.suffix != ".md" or anchor not in anchors(path)):
            broken.append(f"{name(page, repo)}: {target}: no heading '#{anchor}' there")
    return broken


# ---- the tests ----------------------------------------------------------------------------------------
def test_readme_map_names_every_task_pipeline_and_top_level_module():
    tree = [p for block in fenced_blocks((REPO / "README.md").read_text(encoding="utf-8"), "Map")
            for p in tree_paths(block)]
    src = REPO / "src"
    wanted = (modules_of(src, REPO) | packages_of(src, REPO) | modules_of(src / "tasks", REPO)
              | modules_of(src / "pipelines", REPO))
    assert sorted(wanted - set(tree)) == []
    assert missing_tree_entries(tree, REPO) == []


def test_architecture_layout_names_every_module_of_src():
    tree = [p for block in fenced_blocks((REPO / "docs/architecture.md").read_text(encoding="utf-8"), "Layout")
            for p in tree_paths(block)]
    wanted = {p.relative_to(REPO).as_posix() for p in (REPO / "src").rglob("*.py")
              if p.name != "__init__.py" and "__pycache__" not in p.parts}
    assert sorted(wanted - set(tree)) == []
    assert missing_tree_entries(tree, REPO) == []


def test_every_markdown_link_resolves_to_a_file_and_heading_in_the_repository():
    assert [b for page in pages() for b in broken_links(page, REPO)] == []


def test_every_script_config_module_and_source_path_a_page_names_exists():
    assert [m for page in pages() for m in missing_paths(page, REPO)] == []


def test_readme_links_every_docs_page():
    linked = {(REPO / target.partition("#")[0]).resolve()
              for target in LINK.findall(prose((REPO / "README.md").read_text(encoding="utf-8")))}
    assert sorted(p.name for p in (REPO / "docs").glob("*.md") if p.resolve() not in linked) == []


def test_no_page_points_outside_the_project():
    assert [name(p, REPO) for p in pages() if re.search(r"\.\./shared|/work/", p.read_text(encoding="utf-8"))] == []


def test_the_checks_catch_what_they_look_for(tmp_path):
    """A small repository with one mistake of each kind: every check reports it."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "scripts").mkdir()
    (tmp_path / "configs" / "char_ldm").mkdir(parents=True)
    (tmp_path / "scripts" / "train_char_ldm.sh").write_text("")
    (tmp_path / "configs" / "char_ldm" / "toy.yaml").write_text("")
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Run folders\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# T\n\n[ok](docs/a.md#run-folders) [gone](docs/b.md) [bad anchor](docs/a.md#runs) [self](#t)\n"
        "`bash scripts/train_char_ldm.sh toy` `bash scripts/train_ldm.sh` `configs/char_ldm/{toy,pororo}.yaml`\n"
        "`configs/char_ldm/<dataset>.yaml` `configs/align/DATASET.yaml` `python -m src.tools.tiny_stack`\n"
        "`sft_toy.yaml` `config.yaml`\n\n```\n[in code](docs/none.md)\n```\n")
    assert broken_links(page, tmp_path) == ["README.md: docs/b.md: no such file in the repository",
                                            "README.md: docs/a.md#runs: no heading '#runs' there"]
    assert missing_paths(page, tmp_path) == ["README.md: configs/align/DATASET.yaml",
                                             "README.md: configs/char_ldm/{toy,pororo}.yaml",
                                             "README.md: scripts/train_ldm.sh",
                                             "README.md: python -m src.tools.tiny_stack",
                                             "README.md: sft_toy.yaml"]
    assert tree_paths(["src/", "  tasks/", "    base.py    the contract", "                wrapped words",
                       "  runs.py", "eval.sh"]) == ["src/", "src/tasks/", "src/tasks/base.py", "src/runs.py", "eval.sh"]
    assert slug("Stage 2: the MLLM (`story_sft`)") == "stage-2-the-mllm-story_sft"
    assert slug("The demo's report") == "the-demos-report"
