"""Validation of the arguments applications pass to sockets and the server.

One place for the checks that several modules share, so every entry point raises
the same precise :class:`~bunws.InvalidType` / :class:`~bunws.InvalidArgument`.
"""

from __future__ import annotations

from typing import Any

from ._wscore import as_bytes
from .errors import InvalidArgument, InvalidType

__all__ = ["as_bytes", "check_compress", "check_topic"]


def check_topic(topic: Any) -> None:
    if not isinstance(topic, str):
        raise InvalidType(f"topic must be a str, got {type(topic).__name__}")
    if not topic:
        raise InvalidArgument("topic must not be empty")


def check_compress(compress: Any) -> None:
    if not isinstance(compress, bool):
        raise InvalidType("publish expects compress to be a bool")
