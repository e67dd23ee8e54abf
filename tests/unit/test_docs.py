"""The documentation cannot rot silently: links resolve, and the Python examples of the pages a new
user copies from compile and import only names taskfleet really has."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
EXAMPLE_PAGES = [DOCS / "quickstart.md", DOCS / "workers.md"]

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _without_code(text: str) -> str:
    return _FENCE.sub("", text)


def relative_links(page: Path) -> list[str]:
    links = []
    for target in _LINK.findall(_without_code(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # URLs, mailto:, anchors within the page
        links.append(target)
    return links


def python_blocks(page: Path) -> list[tuple[int, str]]:
    text = page.read_text()
    blocks = []
    for match in _FENCE.finditer(text):
        if match.group(1).strip().lower() in ("python", "py"):
            line = text.count("\n", 0, match.start()) + 2
            blocks.append((line, match.group(2)))
    return blocks


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves_to_a_file(page):
    broken = [
        link for link in relative_links(page) if not (page.parent / link.split("#", 1)[0]).exists()
    ]
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.*)$", _without_code(page.read_text()), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_anchor_into_a_markdown_page_exists(page):
    broken = []
    for link in relative_links(page):
        path, _, anchor = link.partition("#")
        target = page.parent / path
        if anchor and target.suffix == ".md" and target.exists() and anchor not in anchors(target):
            broken.append(link)
    assert not broken, f"{page.relative_to(ROOT)}: links to missing headings {broken}"


@pytest.mark.parametrize("page", EXAMPLE_PAGES, ids=lambda p: p.name)
def test_the_examples_have_python_code(page):
    assert python_blocks(page), f"{page.name} has no python code blocks"


@pytest.mark.parametrize("page", EXAMPLE_PAGES, ids=lambda p: p.name)
def test_every_python_example_compiles(page):
    for line, code in python_blocks(page):
        try:
            compile(code, f"{page.name}:{line}", "exec")
        except SyntaxError as exc:
            pytest.fail(f"{page.name}, block at line {line}: {exc}")


@pytest.mark.parametrize("page", EXAMPLE_PAGES, ids=lambda p: p.name)
def test_names_imported_from_taskfleet_exist(page):
    missing = []
    for line, code in python_blocks(page):
        for node in ast.walk(ast.parse(code)):
            if (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").split(".")[0] == "taskfleet"
            ):
                module = importlib.import_module(node.module)  # type: ignore[arg-type]
                missing += [
                    f"{node.module}.{alias.name} (line {line})"
                    for alias in node.names
                    if not hasattr(module, alias.name)
                ]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "taskfleet":
                        importlib.import_module(alias.name)
    assert not missing, f"{page.name}: not in taskfleet: {missing}"


def test_the_link_checker_notices_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](page.md) [gone](missing.md#x) [web](https://example.com) [here](#top)\n"
        "```md\n[in code](nowhere.md)\n```\n"
    )
    assert relative_links(page) == ["page.md", "missing.md#x"]


SRC = ROOT / "src" / "taskfleet"


def test_the_code_cites_only_documents_in_the_repository():
    """Docstrings point at docs/ pages; nothing cites design notes that are not shipped, or a
    tracker's issue numbers."""
    outside = re.compile(r"DESIGN\.md|CONDUCTOR_PROTOCOL\.md|NATS_NOTES\.md|STYLE\.md|\bissue \d+")
    offenders = []
    for path in [
        *SRC.rglob("*.py"),
        *(ROOT / "scripts").iterdir(),
        *(ROOT / "tests").rglob("*.py"),
    ]:
        if path.is_file() and "_proto" not in path.parts:
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if outside.search(line) and path.name != "test_docs.py":
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    cited = set(
        re.findall(r"docs/([\w-]+\.md)", "\n".join(p.read_text() for p in SRC.rglob("*.py")))
    )
    missing = sorted(page for page in cited if not (DOCS / page).exists())
    assert not offenders and not missing, (offenders, missing)


def test_the_architecture_page_lists_every_private_module_and_no_other():
    """docs/architecture.md's module table is the map of the package: kept true to the tree."""
    table = (DOCS / "architecture.md").read_text().split("## Modules", 1)[1]
    named = set()
    for cell in re.findall(r"^\| ([^|]+) \|", table, re.MULTILINE):
        named.update(re.findall(r"`(_[\w/]+?)(?:\.py)?`", cell))
    modules = {p.stem for p in SRC.glob("_*.py") if p.stem != "__init__" and p.stem != "__main__"}
    packages = {
        p.name + "/"
        for p in SRC.glob("_*")
        if p.is_dir() and p.name not in ("_proto", "__pycache__")
    }
    named_modules = {n for n in named if not n.endswith("/")}
    named_packages = {n for n in named if n.endswith("/")}
    assert named_modules == modules, (
        sorted(modules - named_modules),
        sorted(named_modules - modules),
    )
    assert named_packages == packages, (
        sorted(packages - named_packages),
        sorted(named_packages - packages),
    )
