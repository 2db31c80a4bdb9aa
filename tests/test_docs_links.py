"""The docs hold together inside the repository: nothing points at a file a clone does not have
(the design notes and paper specs outside it), every relative link in README.md and docs/ leads
to a file (and a heading) that exists, and every module path the docs name is still there.

The last check is how a module move finds the pages that name the old path."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from dermbench.plugins import BUILTIN_METHODS

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()

#: references to files outside the repository: the design notes (DESIGN.md), the method specs
#: (METHODS.md) and the paper texts beside the checkout (../shared/, shared/papers, shared/METHODS)
OUTSIDE = re.compile(r"DESIGN\.md|METHODS\.md|\.\./shared/|\bshared/(?:papers|METHODS|DESIGN)")
#: the one reference to ../shared kept on purpose: where the licensed, never-committed metadata of
#: Fitzpatrick17k and ISIC 2019 lies on the maintainers' machine, read by an optional test that is
#: skipped without it (tests/test_committed_splits.py, datasets/splits/README.md); a data location,
#: like DERMBENCH_DATA, not a document the code relies on
DATA_LOCATION = "../shared/data"
SEARCHED = ["README.md", "CONTRIBUTING.md", "docs", "benchmark", "methods", "datasets", "tests"]
TEXT_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini", ".json"}

DOC_PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
#: a repository path to a module as the docs write it, in backticks or not (a link's target, after
#: "../", is the link check's)
MODULE_PATH = re.compile(r"(?<![\w/.-])((?:benchmark|methods|datasets|tests)/[\w./-]*?\.py)\b")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def _files() -> list[Path]:
    out = []
    for name in SEARCHED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        for file in candidates:
            if file.is_file() and file.suffix in TEXT_SUFFIXES and file.resolve() != THIS:
                if "__pycache__" not in file.parts:
                    out.append(file)
    return out


def test_nothing_points_at_files_outside_the_repository():
    found = []
    for file in _files():
        for number, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for match in OUTSIDE.finditer(line.replace(DATA_LOCATION, "")):
                found.append(f"{file.relative_to(ROOT)}:{number}: {match.group(0)}")
    assert not found, (
        "references to files outside the repository (cite the repository's docs):\n" + "\n".join(found)
    )


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\*|_(?=\W)|(?<=\W)_", "", heading.strip()).lower()
    text = unicodedata.normalize("NFC", text)
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+?)\s*#*$", text, re.M):
        base = _anchor(heading)
        count = seen.get(base, 0)
        anchors.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return anchors


def _links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return LINK.findall(text) + IMAGE.findall(text)


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(
                f"{target}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}"
            )
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_path_named_exists(page):
    missing = sorted(
        {p for p in MODULE_PATH.findall(page.read_text(encoding="utf-8")) if not (ROOT / p).is_file()}
    )
    assert not missing, f"{page.relative_to(ROOT)} names modules that are not there: {missing}"


def test_the_docs_index_lists_every_page():
    index = ROOT / "docs" / "README.md"
    linked = {(index.parent / target.partition("#")[0]).resolve() for target in _links(index)}
    pages = {p.resolve() for p in (ROOT / "docs").glob("*.md") if p != index}
    unlisted = sorted(p.name for p in pages - linked)
    assert not unlisted, f"docs/README.md does not list {unlisted}"


def test_readme_links_the_docs_index_and_every_method_page():
    targets = set(_links(ROOT / "README.md"))
    assert "docs/README.md" in targets
    unlinked = [m for m in BUILTIN_METHODS if f"docs/{m}.md" not in targets]
    assert not unlinked, f"README's table of methods lacks the pages of {unlinked}"


def _minimal_plugin(page: Path) -> str:
    text = page.read_text(encoding="utf-8").split("A complete minimal plugin, `groupbalanced.py`:", 1)[1]
    return text.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_plugin_guide_shows_readmes_tested_example():
    """tests/test_bad_inputs.py runs README's example; the guide's copy must be the same code."""
    assert _minimal_plugin(ROOT / "docs" / "plugins.md") == _minimal_plugin(ROOT / "README.md")
