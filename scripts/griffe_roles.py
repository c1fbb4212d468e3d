"""Griffe extension for the docs build: Sphinx roles in docstrings become code spans.

bunws's docstrings name other objects the Sphinx way (``:class:`Server```,
``:meth:`~bunws.Server.stop```), which reads well in ``help()``. Markdown has no such
roles, so mkdocstrings would print them literally; this extension rewrites each one to
an inline code span of the name (the last part when it starts with ``~``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|mod|data|exc|obj|const):`(~?)([^`]+)`")


def strip_roles(text: str) -> str:
    """``text`` with every Sphinx cross-reference role replaced by a code span."""

    def code(match: re.Match[str]) -> str:
        tilde, target = match.groups()
        return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"

    return ROLE.sub(code, text)


class SphinxRoles(griffe.Extension):
    """Rewrite the roles of every docstring griffe loads."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        """Called for each object griffe creates, stubs and source alike."""
        if obj.docstring is not None:
            obj.docstring.value = strip_roles(obj.docstring.value)
