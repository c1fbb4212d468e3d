"""The repository stands on its own: every reference to measured Bun behaviour points
at ``docs/bun-behaviour.md``, and every section it cites there exists.

Citations look like ``docs/bun-behaviour.md §5``, ``docs/bun-behaviour.md §6.1`` or a
list after one file name: ``docs/bun-behaviour.md §2 (statuses), §3 (drain), §6.1`` and
``docs/bun-behaviour.md §2-§4``. A ``§N`` cited inside the document itself must be one of
its sections too (RFC sections, written ``RFC 6455 §5.5.3``, are not its own).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = "docs/bun-behaviour.md"

# References to notes that live outside the repository. Spelt in pieces so that this
# file does not match itself.
OUTSIDE = [
    "BUN_" + "SEMANTICS",
    "RELIABILITY" + ".md",
    "../" + "shared",
    "/work/" + "shared",
]

SECTION = r"§\d+(?:\.\d+)*"
# The run of section numbers after the file name: "§2 (statuses), §3, §6.1", "§2-§4",
# "§5 and §14". Parenthesised notes may wrap onto the next comment line.
CITATION = re.compile(
    r"bun-behaviour\.md\s*"
    r"((?:" + SECTION + r"(?:\s*\([^()]*\))?(?:\s*(?:,|;|-|–|/|and|or)\s*(?=§))?)+)"
)
HEADING = re.compile(r"^#{2,6}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
RFC_SECTION = re.compile(r"RFC\s*\d+\s*(" + SECTION + r")")


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [name for name in out.decode().split("\0") if name]


def read_text(name: str) -> str | None:
    path = ROOT / name
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None  # deleted in the work tree, or a submodule
    if b"\0" in data[:8192]:
        return None  # binary
    return data.decode("utf-8", errors="replace")


def doc_sections() -> set[str]:
    text = (ROOT / DOC).read_text(encoding="utf-8")
    return set(HEADING.findall(text))


def cited_sections(text: str) -> list[str]:
    found = []
    for match in CITATION.finditer(text):
        found += re.findall(r"§(\d+(?:\.\d+)*)", match.group(1))
    return found


def test_doc_exists_with_the_reference_section_numbers() -> None:
    sections = doc_sections()
    expected = {str(n) for n in range(1, 15)} | {"6.1", "6.2"}
    assert expected <= sections, sorted(expected - sections, key=lambda s: [int(p) for p in s.split(".")])


def test_citation_parser_reads_lists_and_ranges() -> None:
    text = (
        "Reference: docs/bun-behaviour.md §2 (statuses), §3 (backpressure,\n"
        "drain), §6.1 (close); and docs/bun-behaviour.md §2-§4. RFC 6455 §5.2"
    )
    assert cited_sections(text) == ["2", "3", "6.1", "2", "4"]


def test_no_tracked_file_points_outside_the_repository() -> None:
    offenders = []
    for name in tracked_files():
        text = read_text(name)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            hits = [needle for needle in OUTSIDE if needle in line]
            if hits:
                offenders.append(f"{name}:{number}: {', '.join(hits)}")
    assert not offenders, "cite docs/bun-behaviour.md instead:\n" + "\n".join(offenders)


def test_every_citation_names_an_existing_section() -> None:
    sections = doc_sections()
    bad = []
    for name in tracked_files():
        text = read_text(name)
        if text is None:
            continue
        for number in cited_sections(text):
            if number not in sections:
                bad.append(f"{name}: §{number}")
    assert not bad, f"sections missing from {DOC}:\n" + "\n".join(bad)


def test_the_document_cites_only_its_own_sections_and_links_nothing_outside() -> None:
    text = (ROOT / DOC).read_text(encoding="utf-8")
    sections = doc_sections()
    rfc = {m.start(1) for m in RFC_SECTION.finditer(text)}
    own = [
        m.group(1)
        for m in re.finditer(r"§(\d+(?:\.\d+)*)", text)
        if m.start() not in rfc
    ]
    assert own, "the document cross-references its sections"
    missing = sorted(set(own) - sections)
    assert not missing, missing
    assert not re.search(r"https?://", text), "no links to anything outside the repository"
