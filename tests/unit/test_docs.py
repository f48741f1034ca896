"""The documentation in the repository: README.md and docs/*.md.

* docs/configuration.md's settings reference is what ``docs/gen_configuration.py``
  makes from the pydantic models today (a setting added, renamed or re-documented
  without regenerating fails here);
* every relative link (and ``#anchor``) in README.md and docs/*.md resolves to a file
  of the repository (and a heading in it), and the README links every page of docs/;
* nothing points users at ``../shared``, which a user's clone does not have.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_configuration", ROOT / "docs" / "gen_configuration.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_reference_is_current():
    gen = _load_generator()
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert gen.current(text) == gen.render(), (
        "docs/configuration.md is stale: run `python docs/gen_configuration.py` and commit the result")


# ---------------------------------------------------------------- links
_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, inline code removed."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, _INLINE_CODE.sub("", line)))
    return out


def links(text: str) -> list[tuple[int, str]]:
    """(line, target) of every inline link, image and reference definition outside code."""
    found = []
    for n, line in _prose_lines(text):
        found += [(n, m.group(1)) for m in _LINK.finditer(line)]
        if m := _REF_DEF.match(line):
            found.append((n, m.group(1)))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: links and markup dropped, lower case, punctuation
    removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a Markdown page (repeated headings get -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced or not (m := _HEADING.match(line)):
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def test_slug_follows_github():
    assert slug("The App, passed down") == "the-app-passed-down"
    assert slug("`[[followup.rules]]`") == "followuprules"
    assert slug("Slow handlers, off the poll thread") == "slow-handlers-off-the-poll-thread"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    text = page.read_text(encoding="utf-8")
    broken = []
    for line, target in links(text):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(ROOT)}:{line}: {target}"
        if not dest.is_relative_to(ROOT):
            broken.append(f"{where} points outside the repository")
        elif not dest.exists():
            broken.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            broken.append(f"{where}: no heading with that anchor in {dest.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)


def test_readme_links_every_page_of_docs():
    targets = {t.partition("#")[0] for _, t in links((ROOT / "README.md").read_text(encoding="utf-8"))}
    missing = [p.name for p in DOCS if f"docs/{p.name}" not in targets]
    assert not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_points_at_shared(page: Path):
    text = page.read_text(encoding="utf-8")
    assert "../shared" not in text, f"{page.relative_to(ROOT)} mentions ../shared, which users' clones do not have"
