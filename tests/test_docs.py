"""The documentation stands alone: every page it links and every `docs/*.md` a file names exists in the
repository."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAGES = sorted([REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("*/README.md")])
SOURCES = sorted(p for folder in ("src", "eval", "configs", "scripts", "tests", "bench", "docs")
                 for p in (REPO / folder).rglob("*") if p.suffix in (".py", ".md", ".yaml", ".sh"))


def test_the_method_and_architecture_pages_exist():
    for name in ("architecture.md", "storygpt_v.md", "seed_story.md", "char_ldm.md", "story_format.md"):
        assert (REPO / "docs" / name).is_file(), name


def test_every_markdown_link_resolves_inside_the_repository():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+://", target):
                continue
            path = (page.parent / target).resolve()
            if not path.exists() or REPO.resolve() not in path.parents:
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert broken == []


def test_every_named_docs_page_exists():
    missing = []
    for path in [*PAGES, *SOURCES]:
        for name in re.findall(r"\bdocs/([\w-]+\.md)", path.read_text(encoding="utf-8", errors="replace")):
            if not (REPO / "docs" / name).is_file():
                missing.append(f"{path.relative_to(REPO)}: docs/{name}")
    assert missing == []
