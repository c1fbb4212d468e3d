"""MkDocs hook: every public object the API reference renders must have a docstring.

mkdocstrings renders an undocumented function as a bare signature and says nothing. This
hook reads the ``::: identifier`` lines of every page, loads those objects the way the
python handler does (static analysis with griffe, ``.pyi`` stubs for the compiled
modules, nothing imported), and logs a warning for each public module, class, function,
method or property without a docstring; ``mkdocs build --strict`` turns the warnings into
a failed build. Attributes may go without one: their name, type and the class docstring
describe them.

``missing_docstrings`` is the checker itself, usable without MkDocs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import griffe

log = logging.getLogger("mkdocs.hooks.docstring_check")

# A mkdocstrings directive: ":::" then the object's dotted path, at the start of a line.
DIRECTIVE = re.compile(r"^:::\s*([A-Za-z_][\w.]*)\s*$", re.MULTILINE)

_identifiers: list[str] = []


def directives(markdown: str) -> list[str]:
    """The dotted paths named by ``::: path`` lines in ``markdown``."""
    return DIRECTIVE.findall(markdown)


def _needs_docstring(obj: Any) -> bool:
    # Properties are attributes in griffe's model but read like methods.
    return obj.is_module or obj.is_class or obj.is_function or "property" in obj.labels


def _public_members(obj: Any) -> Iterator[Any]:
    exported = {str(name) for name in obj.exports or ()} if obj.is_module else set()
    # A class page lists inherited members too (the site sets inherited_members).
    members = obj.all_members if obj.is_class else obj.members
    for name, member in members.items():
        if name.startswith("_"):
            continue
        if member.is_alias:
            # An import is rendered only when the module exports it, an inherited
            # member always; either way its target is what the page shows.
            if not (member.inherited or name in exported):
                continue
            try:
                member = member.final_target
            except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                continue
        if member.is_module:
            continue  # a submodule gets its own directive
        yield member


def _walk(obj: Any, seen: set[str]) -> Iterator[str]:
    if obj.path in seen:
        return
    seen.add(obj.path)
    if _needs_docstring(obj) and not (obj.docstring and obj.docstring.value.strip()):
        where = f"{obj.relative_filepath}:{obj.lineno}" if obj.lineno else str(obj.relative_filepath)
        yield f"{obj.path} ({where})"
    if obj.is_module or obj.is_class:
        for member in _public_members(obj):
            yield from _walk(member, seen)


def missing_docstrings(identifiers: Iterable[str], search_paths: Iterable[str | Path]) -> list[str]:
    """Public objects under ``identifiers`` (dotted paths) that have no docstring.

    Each entry is ``"dotted.path (file:line)"``. Packages are found on ``search_paths``
    and read statically: stubs win over compiled modules, and nothing is imported.
    """
    loader = griffe.GriffeLoader(
        search_paths=[str(path) for path in search_paths], allow_inspection=False
    )
    roots: dict[str, Any] = {}
    found: list[str] = []
    seen: set[str] = set()
    for identifier in identifiers:
        package, _, rest = identifier.partition(".")
        if package not in roots:
            roots[package] = loader.load(package)
            loader.resolve_aliases(implicit=False, external=False)
        obj = roots[package][rest] if rest else roots[package]
        found.extend(_walk(obj, seen))
    return found


# ---------------------------------------------------------------------- MkDocs events
def on_pre_build(config: Any) -> None:
    """A build starts (``mkdocs serve`` rebuilds too): forget the last one's directives."""
    _identifiers.clear()


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Collect the ``:::`` directives of each page."""
    _identifiers.extend(directives(markdown))
    return markdown


def on_post_build(config: Any) -> None:
    """Warn about every undocumented public object the reference renders."""
    if not _identifiers:
        return
    handler = config["plugins"]["mkdocstrings"].config["handlers"].get("python", {})
    base = Path(config["config_file_path"]).parent
    paths = [base / path for path in handler.get("paths", ["."])]
    for entry in missing_docstrings(dict.fromkeys(_identifiers), paths):
        log.warning("missing docstring: %s", entry)
