"""The listening transport: asyncio's own, or aiofastnet's compiled one.

aiofastnet (the ``bunws[fast]`` extra, an aio-libs project) reimplements asyncio's
socket and TLS transports in Cython on the loop's reader and writer callbacks, on
stock asyncio and on uvloop alike. With it a read costs no Python frame before the
``message`` handler (bench/RESULTS.md, "Compiled read path"). It is opt-in
(``fast_transport=True``) because each of its transports holds about 4.7 KiB more
than asyncio's (5.8 KiB against 1.1 KiB per connection, tracemalloc): the right
trade for a few busy connections, not for 100 000 idle ones. Everything above
the transport is the same either way. A TLS server keeps asyncio's transports: the
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


def resolve(wanted: bool, *, tls: bool = False) -> bool:
    """Check ``fast_transport=``: ``True`` needs aiofastnet installed and a plain
    TCP server (``InvalidArgument`` otherwise)."""
    if not isinstance(wanted, bool):
        raise InvalidType(f"fast_transport must be True or False, got {type(wanted).__name__}")
    if not wanted:
        return False
    if tls:
        raise InvalidArgument("fast_transport=True is for plain TCP: a TLS server uses asyncio's transports")
    if not fast_transport_available():
        raise InvalidArgument("fast_transport=True needs aiofastnet: pip install 'bunws[fast]'")
    return True


def create_server(loop: asyncio.AbstractEventLoop, fast: bool) -> Callable[..., Any]:
    """``loop.create_server`` with the chosen transport (same arguments)."""
    if not fast:
        return loop.create_server
    import aiofastnet

    return functools.partial(aiofastnet.create_server, loop)


