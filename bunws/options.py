"""``WebSocketHandler``: the ``websocket`` block of ``Bun.serve``, validated up front.

Bun's option names become snake_case and Bun's defaults, ranges and clamping rules
are kept (docs/bun-behaviour.md §1). Invalid values raise at construction time, so a bad
configuration fails at ``serve()``, never on the first connection.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .errors import InvalidArgument, InvalidType
from .extensions import DeflateConfig

__all__ = ["WebSocketHandler", "ping_margin"]

_HANDLERS = ("open", "message", "close", "drain", "ping", "pong", "error")
_MAX_U32 = 2**32 - 1


def _int_option(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidType(f"{name} must be an int, got {type(value).__name__}")
    return value


def _bool_option(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidType(f"{name} must be a bool, got {type(value).__name__}")
    return value


def ping_margin(idle_timeout: int) -> int:
    """Seconds between the keep-alive ping and the timeout (uWS's rule, §8).

    Starts at 4 and doubles while ``idle - 2m >= 2m`` and ``m < 16``.
    """
    margin = 4
    while idle_timeout - 2 * margin >= 2 * margin and margin < 16:
        margin *= 2
    return margin


class WebSocketHandler:
    """Handlers and options for upgraded connections.

    Handlers (all optional; plain functions run inline, ``async def`` ones are
    scheduled as tasks and not awaited, as in Bun):

    * ``open(ws)``, ``message(ws, msg)`` (``str`` for text, bytes-like for binary),
      ``close(ws, code, reason)``, ``drain(ws)``, ``ping(ws, data)``, ``pong(ws, data)``,
      ``error(exc, ws)`` (error first, as in Bun 1.4).

    Options (Bun's defaults):

    * ``max_payload_length`` (16 MiB): negative clamps to 0, above 2**32-1 saturates.
    * ``backpressure_limit`` (16 MiB, 0 = no limit), ``close_on_backpressure_limit``.
    * ``idle_timeout`` (120 s, 0 = off, 1..7 -> 8, max 960), ``send_pings`` (True).
    * ``publish_to_self`` (False), ``per_message_deflate`` (False, True, or
      ``{"compress": mode, "decompress": mode}``).
    * ``max_fragments`` (bunws addition): data frames per message, default
      ``max(1024, max_payload_length // 256)``; more is answered with 1008.
    """

    __slots__ = (
        "open",
        "message",
        "close",
        "drain",
        "ping",
        "pong",
        "error",
        "async_handlers",
        "max_payload_length",
        "backpressure_limit",
        "close_on_backpressure_limit",
        "idle_timeout",
        "send_pings",
        "publish_to_self",
        "per_message_deflate",
        "deflate",
        "max_fragments",
    )

    def __init__(
        self,
        *,
        open: Callable[..., Any] | None = None,
        message: Callable[..., Any] | None = None,
        close: Callable[..., Any] | None = None,
        drain: Callable[..., Any] | None = None,
        ping: Callable[..., Any] | None = None,
        pong: Callable[..., Any] | None = None,
        error: Callable[..., Any] | None = None,
        max_payload_length: int = 16 * 1024 * 1024,
        backpressure_limit: int = 16 * 1024 * 1024,
        close_on_backpressure_limit: bool = False,
        idle_timeout: int = 120,
        send_pings: bool = True,
        publish_to_self: bool = False,
        per_message_deflate: Any = False,
        max_fragments: int | None = None,
    ) -> None:
        handlers = dict(
            open=open, message=message, close=close, drain=drain, ping=ping, pong=pong, error=error
        )
        self.async_handlers: frozenset[str] = frozenset()
        asyncs = set()
        for name in _HANDLERS:
            fn = handlers[name]
            if fn is not None and not callable(fn):
                raise InvalidType(f"expects a function for the '{name}' option")
            if fn is not None and inspect.iscoroutinefunction(fn):
                asyncs.add(name)
            setattr(self, name, fn)
        self.async_handlers = frozenset(asyncs)

        self.max_payload_length = min(
            max(_int_option("max_payload_length", max_payload_length), 0), _MAX_U32
        )
        self.backpressure_limit = max(_int_option("backpressure_limit", backpressure_limit), 0)
        self.close_on_backpressure_limit = _bool_option(
            "close_on_backpressure_limit", close_on_backpressure_limit
        )
        idle = _int_option("idle_timeout", idle_timeout)
        if idle > 960:
            raise InvalidArgument(f"idle_timeout must be 960 or less, got {idle}")
        if idle < 0:
            idle = 0
        elif 0 < idle < 8:
            idle = 8
        self.idle_timeout = idle
        self.send_pings = _bool_option("send_pings", send_pings)
        self.publish_to_self = _bool_option("publish_to_self", publish_to_self)
        self.per_message_deflate = per_message_deflate
        self.deflate: DeflateConfig | None = DeflateConfig.from_option(per_message_deflate)
        if max_fragments is None:
            max_fragments = max(1024, self.max_payload_length // 256)
        max_fragments = _int_option("max_fragments", max_fragments)
        if max_fragments < 1:
            raise InvalidArgument(f"max_fragments must be >= 1, got {max_fragments}")
        self.max_fragments = max_fragments

    def __repr__(self) -> str:
        handlers = [n for n in _HANDLERS if getattr(self, n) is not None]
        return f"<WebSocketHandler handlers={handlers} idle_timeout={self.idle_timeout}>"
