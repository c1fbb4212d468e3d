"""The listening transport: asyncio's own, or aiofastnet's compiled one.

aiofastnet (the ``bunws[fast]`` extra, an aio-libs project) reimplements asyncio's
socket and TLS transports in Cython on the loop's reader and writer callbacks, on
stock asyncio and on uvloop alike. With it a read costs no Python frame before the
``message`` handler (bench/RESULTS.md, "Compiled read path"). The server uses it
when it is installed unless ``fast_transport=False``; everything above the
transport is the same either way. A TLS server keeps asyncio's transports: the
TLS handshake starts after the accept (so it counts as a pending handshake), and
aiofastnet's ``start_tls`` under that flow crashed the interpreter in the
project's TLS tests (aiofastnet 1.2.0).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Callable

from .errors import InvalidArgument, InvalidType

__all__ = ["fast_transport_available", "resolve", "create_server"]


def fast_transport_available() -> bool:
    """Whether aiofastnet can be imported."""
    try:
        import aiofastnet  # noqa: F401
    except ImportError:
        return False
    return True


def resolve(wanted: bool | None, *, tls: bool = False) -> bool:
    """``fast_transport=`` -> whether to use aiofastnet: ``None`` when installed
    (and the server is not TLS), ``True`` requires it (``InvalidArgument`` if
    missing or with TLS), ``False`` never."""
    if wanted is not None and not isinstance(wanted, bool):
        raise InvalidType(f"fast_transport must be None, True or False, got {type(wanted).__name__}")
    if wanted is False:
        return False
    if tls:
        if wanted:
            raise InvalidArgument("fast_transport=True is for plain TCP: a TLS server uses asyncio's transports")
        return False
    if fast_transport_available():
        return True
    if wanted:
        raise InvalidArgument("fast_transport=True needs aiofastnet: pip install 'bunws[fast]'")
    return False


def create_server(loop: asyncio.AbstractEventLoop, fast: bool) -> Callable[..., Any]:
    """``loop.create_server`` with the chosen transport (same arguments)."""
    if not fast:
        return loop.create_server
    import aiofastnet

    return functools.partial(aiofastnet.create_server, loop)


