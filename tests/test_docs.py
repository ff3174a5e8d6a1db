"""The README and docs/: every link resolves inside the repository, and the test command is CI's."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

ROOT = Path(__file__).resolve().parents[1]
_MD = MarkdownIt("commonmark").enable("table")
_MD.validateLink = lambda url: True  # see file:, javascript: ... links too, to refuse them


def documents(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def slug(text: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _text(inline: Token) -> str:
    """The rendered text of a heading (code spans without their backticks, link texts)."""
    return "".join(c.content for c in inline.children or () if c.type in ("text", "code_inline"))


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (repeats get -1, -2, ...)."""
    tokens = _MD.parse(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out: set[str] = set()
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            base = slug(_text(tokens[i + 1]))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> Iterator[tuple[int, str]]:
    """(line, target) of every link and image in a Markdown file (code is not parsed for links)."""
    for token in _MD.parse(path.read_text(encoding="utf-8")):
        if token.type != "inline":
            continue
        line = token.map[0] + 1 if token.map else 0
        for child in token.children or ():
            if child.type == "link_open":
                yield line, str(child.attrs.get("href", ""))
            elif child.type == "image":
                yield line, str(child.attrs.get("src", ""))


def problems(root: Path) -> list[str]:
    """Every link of the README and docs/*.md that does not resolve inside `root`."""
    root = root.resolve()
    cache: dict[Path, set[str]] = {}
    out: list[str] = []
    for doc in documents(root):
        for line, href in links(doc):
            where = f"{doc.relative_to(root)}:{line}: {href!r}"
            why = _check(root, doc, href, cache)
            if why is not None:
                out.append(f"{where} {why}")
    return out


def _check(root: Path, doc: Path, href: str, cache: dict[Path, set[str]]) -> str | None:
    parts = urlsplit(href)
    if parts.scheme in ("http", "https"):
        return None if parts.netloc else "is not a complete URL"
    if parts.scheme or parts.netloc:
        return "points outside the repository (only http(s) URLs may)"
    if not parts.path and not parts.fragment:
        return "is empty"
    if parts.path.startswith("/"):
        return "is an absolute path: write it relative to the document"
    target = (doc.parent / unquote(parts.path)).resolve() if parts.path else doc
    if not target.is_relative_to(root):
        return "points outside the repository"
    if not target.exists():
        return f"names {target.relative_to(root)}, which does not exist"
    if parts.fragment:
        if target.suffix != ".md":
            return "has an anchor into a file that is not Markdown"
        if target not in cache:
            cache[target] = anchors(target)
        if unquote(parts.fragment) not in cache[target]:
            return f"has no heading #{parts.fragment} in {target.relative_to(root)}"
    return None


# --------------------------------------------------------------------------- the repository's docs


def test_every_link_resolves_inside_the_repository() -> None:
    assert documents(ROOT)[1:], "docs/ has no Markdown files"
    found = problems(ROOT)
    assert not found, "broken links:\n" + "\n".join(found)


def test_the_readme_links_every_docs_page() -> None:
    linked = {(ROOT / unquote(urlsplit(href).path)).resolve() for _, href in links(ROOT / "README.md")
              if not urlsplit(href).scheme}
    missing = [p.name for p in documents(ROOT)[1:] if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def _ci_test_command() -> str:
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = [line.strip() for line in script.splitlines()
                if "pytest" in line and not line.strip().startswith(("#", "echo"))]
    assert len(commands) == 1, f".ci/run should run pytest exactly once: {commands}"
    return commands[0]


def _readme_test_commands() -> list[str]:
    """The pytest lines of the code blocks under the README's "Test" heading."""
    tokens = _MD.parse((ROOT / "README.md").read_text(encoding="utf-8"))
    section: int | None = None  # the heading level of "Test" while inside it
    lines: list[str] = []
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            level = int(token.tag[1])
            if section is not None and level <= section:
                section = None
            if _text(tokens[i + 1]).strip() == "Test":
                section = level
        elif token.type == "fence" and section is not None:
            lines += [line.split("#", 1)[0].strip() for line in token.content.splitlines()]
    return [line for line in lines if "pytest" in line]


def test_the_readme_test_command_is_what_ci_runs() -> None:
    assert _ci_test_command() == "python -m pytest"
    assert _readme_test_commands() == [_ci_test_command()]


# --------------------------------------------------------------------------- the checker itself


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "agent.yaml").write_text("machines: {}\n")
    (tmp_path / "docs" / "guide.md").write_text(
        "# Guide\n\n## Commissioning a device: `probe`\n\n## Setup\n\n## Setup\n\n"
        "## \"Not increasing\" after an unknown outcome\n\n"
        "[back](../README.md) [self](#setup-1) [config](../config/agent.yaml)\n"
    )
    return tmp_path


def _readme(repo: Path, body: str) -> list[str]:
    (repo / "README.md").write_text(f"# Title\n\n{body}\n")
    return problems(repo)


def test_good_links_pass(repo: Path) -> None:
    body = ("[g](docs/guide.md) [p](docs/guide.md#commissioning-a-device-probe) "
            "[n](docs/guide.md#not-increasing-after-an-unknown-outcome) [s](docs/guide.md#setup-1) "
            "[t](#title) [w](https://example.com/x#y) [d](docs/) ![i](config/agent.yaml)\n\n"
            "`[not a link](nowhere.md)`\n\n```\n[not a link](nowhere.md)\n```")
    assert _readme(repo, body) == []


@pytest.mark.parametrize(("href", "why"), [
    ("docs/missing.md", "does not exist"),
    ("docs/guide.md#no-such-heading", "has no heading"),
    ("docs/guide.md#setup-2", "has no heading"),
    ("#nowhere", "has no heading"),
    ("../outside.md", "outside the repository"),
    ("/etc/passwd", "absolute path"),
    ("file:///etc/passwd", "outside the repository"),
    ("mailto:someone@example.com", "outside the repository"),
    ("config/agent.yaml#L1", "not Markdown"),
    ("https:///nohost", "not a complete URL"),
])
def test_broken_links_are_reported(repo: Path, href: str, why: str) -> None:
    found = _readme(repo, f"see [this]({href}) and ![img]({href})")
    assert len(found) == 2, found
    assert all(why in p and p.startswith("README.md:3:") for p in found), found


def test_a_broken_link_in_a_docs_page_is_reported(repo: Path) -> None:
    (repo / "docs" / "other.md").write_text("# Other\n\n[guide](guide.md#setup-3)\n")
    assert _readme(repo, "[o](docs/other.md)") == [
        "docs/other.md:3: 'guide.md#setup-3' has no heading #setup-3 in docs/guide.md"]
