"""Every pointer into the documentation resolves. In code, tests, scripts and docs, a
``docs/X.md`` path names a file that exists, and a section named after it (``docs/X.md,
"Section"``, ``docs/X.md ("A", "B")``, also wrapped over comment lines) is a heading of that
file; ``README, "Section"`` a heading of README.md; a Markdown link in README.md or docs/ a file
that exists and, with ``#anchor``, one of its headings (a rendered report's links to figures
are left out: no test keeps the figures). Each check is shown failing on a pointer
made to miss."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("membench", "tests", "benchmarks", "scripts", "examples", "docs", "reports", ".github")
SUFFIXES = (".py", ".md", ".toml", ".yml", ".sh")

_QUOTED = r"(?:\"[^\"\n]{1,80}\"|'[^'\n]{1,80}')"
# A pointer: the document, then optionally the sections it names, quoted, after ", ", " (" or
# " " (several joined by "," or "and").
POINTER = re.compile(
    r"(?P<doc>docs/[\w.-]+\.md|(?<![\w/])README(?:\.md)?(?!\w))(?:#(?P<anchor>[\w-]+))?"
    r"(?:(?:,[ ]*|[ ]*\([ ]*|[ ])(?P<sections>"
    + _QUOTED
    + r"(?:[ ]*(?:,|and)[ ]*"
    + _QUOTED
    + r")*))?"
)
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def headings(text: str) -> list[str]:
    """The Markdown headings of ``text``, outside fenced code, without their ``#`` marks."""
    found, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            found.append(line.lstrip("#").strip())
    return found


def anchors(text: str) -> set[str]:
    """GitHub's anchors of the headings: lower case, punctuation dropped, spaces to hyphens,
    a repeated one numbered."""
    seen: dict[str, int] = {}
    result = set()
    for heading in headings(text):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def flattened(text: str) -> str:
    """``text`` with its lines joined, comment marks and indentation dropped, so a pointer
    wrapped over lines of a comment or docstring reads as one."""
    return re.sub(r"[ \t]*\n[ \t]*(?:#+[ \t]*)?", " ", text)


def pointer_problems(text: str, read) -> tuple[list[str], int]:
    """Pointers in ``text`` that do not resolve, and how many were checked; ``read(path)`` is the
    text of a repository file, or None where there is none."""
    problems, checked = [], 0
    for match in POINTER.finditer(flattened(text)):
        name = "README.md" if match["doc"].startswith("README") else match["doc"]
        if name == "README.md" and not (match["sections"] or match["anchor"]):
            continue  # "the README" in prose names no place in it
        checked += 1
        target = read(name)
        if target is None:
            problems.append(f"{name}: no such file")
            continue
        if match["anchor"] and match["anchor"] not in anchors(target):
            problems.append(f"{name}#{match['anchor']}: no such heading")
        for quoted in re.findall(_QUOTED, match["sections"] or ""):
            if quoted[1:-1] not in headings(target):
                problems.append(f"{name}, {quoted}: no such heading")
    return problems, checked


def link_problems(text: str, here: Path, read) -> tuple[list[str], int]:
    """Relative Markdown links in ``text`` (a file in folder ``here``, relative to the
    repository) that name no file, or no heading of it."""
    problems, checked = [], 0
    for match in LINK.finditer(text):
        target = match["target"]
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        name = (here / path).as_posix() if path else None
        checked += 1
        if name is not None and not (REPO / name).exists():
            problems.append(f"{here}: link to {target}: no such file")
            continue
        if anchor:
            linked = read(name) if name else text
            if linked is None or anchor not in anchors(linked):
                problems.append(f"{here}: link to {target}: no such heading")
    return problems, checked


def read_repository_file(name: str) -> str | None:
    path = REPO / name
    return path.read_text(encoding="utf-8") if path.is_file() else None


def repository_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "pyproject.toml"]
    for root in ROOTS:
        files += [p for p in sorted((REPO / root).rglob("*")) if p.suffix in SUFFIXES]
    return [p for p in files if p.is_file() and p != Path(__file__).resolve()]


def test_every_pointer_into_the_docs_resolves():
    problems, pointers, links = [], 0, 0
    for path in repository_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        found, checked = pointer_problems(text, read_repository_file)
        problems += [f"{path.relative_to(REPO)}: {p}" for p in found]
        pointers += checked
        # Links of the written docs; a rendered report links figures no test keeps.
        if path.suffix == ".md" and path.relative_to(REPO).parts[0] not in ("reports", "tests"):
            here = path.parent.relative_to(REPO)
            found, checked = link_problems(text, here, read_repository_file)
            problems += found
            links += checked
    assert problems == []
    assert pointers > 100 and links > 50  # the scan sees the pointers it is meant to check


DOCS = {
    "docs/runners.md": "# Method runners\n\n## Standard tooling\n\n```\n# not a heading\n```\n",
    "README.md": "# membench\n\n## Write your own runner\n",
}


def read_fixture(name: str) -> str | None:
    return DOCS.get(name)


def test_each_pointer_check_fails_on_a_pointer_made_to_miss():
    def problems(text: str) -> list[str]:
        return pointer_problems(text, read_fixture)[0]

    assert problems('see docs/runners.md, "Standard tooling".') == []
    assert problems('# wrapped (docs/runners.md, "Standard\n    # tooling"): ok') == []
    assert problems("""README, "Write your own runner"; README ("Write your own runner")""") == []
    assert problems('see docs/runners.md, "Standard toolin".') == [
        'docs/runners.md, "Standard toolin": no such heading'
    ]
    assert problems('(docs/runners.md, "Standard\n    # toolin")') == [
        'docs/runners.md, "Standard toolin": no such heading'
    ]
    assert problems('docs/runners.md ("Standard tooling", "Training recipe")') == [
        'docs/runners.md, "Training recipe": no such heading'
    ]
    assert problems("docs/runners.md#standard-toolin") == [
        "docs/runners.md#standard-toolin: no such heading"
    ]
    assert problems("see docs/nowhere.md") == ["docs/nowhere.md: no such file"]
    assert problems('README, "Write a runner"') == ['README.md, "Write a runner": no such heading']
    assert problems('docs/runners.md, "not a heading"') != []  # a fenced line is no heading


def test_each_link_check_fails_on_a_link_made_to_miss():
    def problems(text: str) -> list[str]:
        return link_problems(text, Path("docs"), read_repository_file)[0]

    assert problems("[a](runners.md#standard-tooling) [b](../README.md) [c](https://x.org)") == []
    assert problems("## Here\n\n[a](#here)") == []
    assert problems("[a](runners.md#standard-toolin)") == [
        "docs: link to runners.md#standard-toolin: no such heading"
    ]
    assert problems("[a](nowhere.md)") == ["docs: link to nowhere.md: no such file"]
    assert problems("## Here\n\n[a](#there)") == ["docs: link to #there: no such heading"]


# A placeholder left where a measured table or figure belongs: a line that is one ALL_CAPS word.
PLACEHOLDER = re.compile(r"[ \t]*[A-Z][A-Z0-9_]{5,}[ \t]*")
# Placeholders whose measurement is still to be made, each named so the suite says where; an
# entry whose line has been filled fails too, so the list cannot go stale.
PENDING: set[tuple[str, str]] = set()


def placeholders(docs: dict[str, str]) -> set[tuple[str, str]]:
    """(file, line) of every line of ``docs`` (name -> text) that is a bare placeholder."""
    return {
        (name, line.strip())
        for name, text in docs.items()
        for line in text.splitlines()
        if PLACEHOLDER.fullmatch(line)
    }


def written_docs() -> dict[str, str]:
    paths = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return {str(p.relative_to(REPO)): p.read_text(encoding="utf-8") for p in paths}


def test_no_doc_line_is_a_bare_placeholder():
    found = placeholders(written_docs())
    assert found - PENDING == set()
    assert PENDING - found == set()  # filled: drop it from PENDING


def test_the_placeholder_check_fails_on_a_doc_with_one():
    docs = written_docs()
    docs["docs/sequence-models.md"] += "\nFITS_TABLE\n"
    assert ("docs/sequence-models.md", "FITS_TABLE") in placeholders(docs) - PENDING
    # prose, code and short capitals are no placeholders
    assert placeholders({"x.md": "The `FITS_TABLE` here.\nCUDA\nA_B=1\nNVML is\n"}) == set()
