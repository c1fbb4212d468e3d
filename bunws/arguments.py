"""Validation of the arguments applications pass to sockets and the server.

One place for the checks that several modules share, so every entry point raises
the same precise :class:`~bunws.InvalidType` / :class:`~bunws.InvalidArgument`.
"""

from __future__ import annotations

import math
from typing import Any

from ._wscore import as_bytes
from .errors import InvalidArgument, InvalidType

__all__ = [
    "as_bytes", "check_compress", "check_port", "check_topic", "positive_int", "positive_number",
]


def check_topic(topic: Any) -> None:
    """Raise unless ``topic`` is a non-empty ``str``."""
    if not isinstance(topic, str):
        raise InvalidType(f"topic must be a str, got {type(topic).__name__}")
    if not topic:
        raise InvalidArgument("topic must not be empty")


def check_compress(compress: Any) -> None:
    """Raise ``InvalidType`` unless ``compress`` is a ``bool``."""
    if not isinstance(compress, bool):
        raise InvalidType("publish expects compress to be a bool")


def positive_number(name: str, value: Any) -> float:
    """``value`` as a float when it is a finite number above 0; ``InvalidArgument`` otherwise."""
    # NaN compares false with everything: it would make every deadline fire at once
    # or never; infinity is no timeout at all.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise InvalidArgument(f"{name} must be a positive number, got {value!r}")
    return float(value)


def positive_int(name: str, value: Any, *, optional: bool = False) -> Any:
    """``value`` when it is an int of at least 1 (or ``None`` when ``optional``);
    ``InvalidArgument`` otherwise."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        qualifier = "None or " if optional else ""
        raise InvalidArgument(f"{name} must be {qualifier}a positive int, got {value!r}")
    return value


def check_port(port: Any) -> int:
    """``port`` when it is an int in 0..65535; ``InvalidArgument`` otherwise."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidArgument(f"port must be in 0..65535, got {port!r}")
    return port
