"""The docs stay true: the README is a short front door that links every page, every relative link
points to a file, and the generated parts (the results page, the README's results table, the
methods table) are what tools/results_pages.py would write now."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from rosi.edit.methods import METHODS, methods_table

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _generator():
    spec = importlib.util.spec_from_file_location("results_pages", ROOT / "tools" / "results_pages.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


pages = _generator()


def _relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)  # code blocks hold no links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_readme_is_a_short_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; at most 250 (reference prose goes to docs/)"


def test_readme_links_every_docs_page():
    linked = {(README.parent / t.split("#")[0]).resolve() for t in _relative_links(README)}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md does not link docs/{', docs/'.join(missing)}"


@pytest.mark.parametrize("page", [README, ROOT / "CONTRIBUTING.md", *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_point_to_files(page):
    broken = [t for t in _relative_links(page) if not (page.parent / t.split("#")[0]).exists()]
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"


def test_generated_parts_are_current():
    stale = [str(path.relative_to(ROOT)) for path, text in pages.expected().items() if path.read_text(encoding="utf-8") != text]
    assert not stale, f"stale: {', '.join(stale)}; run `make docs`"


def test_method_page_holds_the_registry_table():
    assert methods_table() in (DOCS / "method.md").read_text(encoding="utf-8")
    page = (DOCS / "method.md").read_text(encoding="utf-8")
    missing = [name for name, m in METHODS.items() if m.searchable and f"## `{name}`" not in page]
    assert not missing, f"docs/method.md has no section for {missing}"


def test_readme_results_table_names_both_models_and_links_its_files():
    table = pages.headline_table()
    assert table in README.read_text(encoding="utf-8")
    assert "0.5B" in table and "1.5B" in table and "not measured" not in table
    for h in pages.HEADLINE:
        assert f"(benchmarks/results/{h.file})" in table
