"""The docs stay true to the code and to themselves: the generated reference pages are what
ipv4proxy.reference renders now, and every relative link of README.md and docs/ points to
a file that exists and, with a #fragment, to a heading of it (GitHub's anchor rules)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from ipv4proxy.reference import PAGES, REGENERATE

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]

# [text](target) and [text](target "title"); images too. Inline code is removed first.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"`[^`]*`")


@pytest.mark.parametrize("relative", sorted(PAGES))
def test_generated_reference_page_is_current(relative: str) -> None:
    path = REPO_ROOT / relative
    assert path.exists(), f"{relative} is missing; generate it with {REGENERATE}"
    assert path.read_text(encoding="utf-8") == PAGES[relative](), (
        f"{relative} is stale (the code changed); regenerate it with {REGENERATE} "
        "from the repository root and commit it"
    )


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation except '-' and
    '_' dropped, each space a '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a file, with GitHub's -1, -2 ... for repeated headings."""
    seen: Counter[str] = Counter()
    result = set()
    for line in _prose(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        result.add(f"{base}-{seen[base]}" if seen[base] else base)
        seen[base] += 1
    return result


def links(path: Path) -> list[str]:
    found = []
    for line in _prose(path.read_text(encoding="utf-8")):
        found += LINK.findall(INLINE_CODE.sub("", line))
    return found


def test_slug_follows_github() -> None:
    assert slug("How a failed CONNECT is signalled") == "how-a-failed-connect-is-signalled"
    assert slug("What the deployment tests check (`tests/deploy/`)") == (
        "what-the-deployment-tests-check-testsdeploy"
    )
    assert slug("DNS mode: no proxy setting at all") == "dns-mode-no-proxy-setting-at-all"
    assert slug("Sidecar next to a gateway (Kubernetes >= 1.29)") == (
        "sidecar-next-to-a-gateway-kubernetes--129"
    )


def test_the_docs_have_links_to_check() -> None:
    # The checker must see the README's links to the docs pages, or it checks nothing.
    assert any(target.startswith("docs/") for target in links(REPO_ROOT / "README.md"))


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
            continue
        if fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: no heading #{fragment} in {linked.name}")
    assert not broken, "\n".join(broken)
