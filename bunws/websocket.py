"""``ServerWebSocket``: the write side of one upgraded connection.

It owns the outgoing byte queue (cork buffer and queued publishes share one
``bytearray`` so per-socket order always equals call order), the send-status rules
of Bun (docs/bun-behaviour.md §2-§4), the socket's compressor and its subscriptions.
The per-message methods (``send*``, ``ping``, ``pong``, ``cork``) are compiled in
:mod:`bunws._wscore` (the benchmark that justified it is cited there); the rest is
here. The read side and the lifecycle live in :mod:`bunws.protocol`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._frame import close_reason_bytes as cut_reason
from ._frame import encode_close
from ._wscore import WebSocketCore
from .errors import InvalidArgument, InvalidType

if TYPE_CHECKING:
    from .protocol import Connection
    from .server import Server

__all__ = ["ServerWebSocket", "SEND_DROPPED", "SEND_BACKPRESSURE"]

SEND_DROPPED = 0
SEND_BACKPRESSURE = -1

OP_PING = 9
OP_PONG = 10

# binary_type names (ours first, Bun's spellings as aliases) -> kind used by _wscore.
_BINARY_TYPES = {
    "bytes": 0,
    "nodebuffer": 0,
    "buffer": 0,
    "Buffer": 0,
    "bytearray": 1,
    "arraybuffer": 1,
    "ArrayBuffer": 1,
    "memoryview": 2,
    "uint8array": 2,
    "Uint8Array": 2,
}
_BINARY_NAMES = ("bytes", "bytearray", "memoryview")


def _payload(data: Any, what: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise InvalidType(f"{what} expects bytes-like data, got {type(data).__name__}")


def _check_compress(compress: Any) -> None:
    if not isinstance(compress, bool):
        raise InvalidType("publish expects compress to be a bool")


def _check_topic(topic: Any) -> None:
    if not isinstance(topic, str):
        raise InvalidType(f"topic must be a str, got {type(topic).__name__}")
    if not topic:
        raise InvalidArgument("topic must not be empty")


class ServerWebSocket(WebSocketCore):
    """An upgraded connection, as handed to the ``websocket`` handlers.

    Send methods (compiled, see :mod:`bunws._wscore`) return Bun's status: the
    payload byte count when the frame went to the kernel or the cork buffer, ``-1``
    (:data:`SEND_BACKPRESSURE`) when it was queued behind buffered bytes, ``0``
    (:data:`SEND_DROPPED`) when it was dropped (socket closed, or buffered amount
    already over ``backpressure_limit``) or the payload was empty (an empty frame is
    still sent).
    """

    __slots__ = (
        "_topics",
        "_remote_address",
        "_pending_pong",
        "subprotocol",
        "extensions",
    )

    def __init__(self, conn: Connection, server: Server, data: Any) -> None:
        handler = server._websocket
        self.data = data
        self._conn = conn
        self._server = server
        self._transport = conn.transport
        self._limit = handler.backpressure_limit
        self._close_on_limit = handler.close_on_backpressure_limit
        self._topics: set[str] | None = None
        self._remote_address = conn.remote_address
        self._pending_pong: bytes | None = None
        self.subprotocol: str | None = None
        self.extensions: str | None = None

    # ---------------------------------------------------------------- properties
    @property
    def ready_state(self) -> int:
        """1 while open, 3 once closed (0 and 2 never occur, as in Bun)."""
        return self._ready_state

    @property
    def remote_address(self) -> str | None:
        return self._remote_address

    @property
    def binary_type(self) -> str:
        """How binary messages, pings and pongs are handed over: ``"bytes"``
        (default), ``"bytearray"`` or ``"memoryview"`` (Bun's names are aliases)."""
        return _BINARY_NAMES[self._binary_kind]

    @binary_type.setter
    def binary_type(self, value: str) -> None:
        try:
            self._binary_kind = _BINARY_TYPES[value]
        except (KeyError, TypeError):
            raise InvalidArgument(
                f"binary_type must be one of 'bytes', 'bytearray', 'memoryview', got {value!r}"
            ) from None

    @property
    def buffered_amount(self) -> int:
        """Bytes of complete frames waiting in user space (not the cork buffer)."""
        if self._ready_state != 1:
            return 0
        pending = 0 if self._corked else len(self._out) + self._chunked
        return self._transport.get_write_buffer_size() + pending

    def get_buffered_amount(self) -> int:
        return self.buffered_amount

    @property
    def is_paused(self) -> bool:
        return self._paused

    @property
    def subscriptions(self) -> list[str]:
        """A fresh list of this socket's topics (order unspecified, as in Bun)."""
        return list(self._topics) if self._topics else []

    # ---------------------------------------------------------------- closing
    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a Close frame after everything queued, then end the connection.

        As in Bun, the code is not range-checked: its low 16 bits go on the wire,
        and codes whose low 16 bits are 0, 1005 or 1006 send an empty Close payload.
        The ``close`` handler runs synchronously inside this call.
        """
        if isinstance(code, bool) or not isinstance(code, int):
            raise InvalidType("close requires an int code")
        if reason is None:
            reason = ""
        if not isinstance(reason, str):
            raise InvalidType(f"close reason must be a str, got {type(reason).__name__}")
        if self._ready_state != 1:
            return
        cut = cut_reason(reason).decode("utf-8")
        self._conn.close_with_frame(encode_close(code & 0xFFFF, cut), code, cut)

    def terminate(self) -> None:
        """Close the TCP connection at once, without a Close frame (handler gets 1006)."""
        if self._ready_state == 1:
            self._conn.abort(1006, "")

    def pause(self) -> None:
        """Stop dispatching inbound messages (sends keep working)."""
        self._conn.pause()

    def resume(self) -> None:
        self._conn.resume()

    # ---------------------------------------------------------------- pub/sub
    def subscribe(self, topic: str) -> bool:
        _check_topic(topic)
        if self._ready_state != 1:
            return False
        if self._topics is None:
            self._topics = set()
        if topic not in self._topics:
            self._topics.add(topic)
            self._server._topics.add(topic, self)
        return True

    def unsubscribe(self, topic: str) -> bool:
        _check_topic(topic)
        if self._ready_state != 1 or not self._topics or topic not in self._topics:
            return False
        self._topics.discard(topic)
        self._server._topics.remove(topic, self)
        return True

    def is_subscribed(self, topic: str) -> bool:
        _check_topic(topic)
        return bool(self._topics) and topic in self._topics  # type: ignore[operator]

    def publish(
        self, topic: str, data: str | bytes | bytearray | memoryview, compress: bool = False
    ) -> int:
        """Publish to every subscriber of ``topic`` except this socket (unless
        ``publish_to_self``)."""
        _check_topic(topic)
        if compress is not False:
            _check_compress(compress)
        return self._server._publish(topic, data, compress, self._publish_exclude())

    def publish_text(self, topic: str, data: str, compress: bool = False) -> int:
        if type(data) is not str:
            raise InvalidType(f"publish_text expects a str, got {type(data).__name__}")
        if topic == "":
            return 0  # Bun returns 0 here instead of throwing (docs/bun-behaviour.md §5)
        _check_topic(topic)
        if compress is not False:
            _check_compress(compress)
        return self._server._publish(topic, data, compress, self._publish_exclude())

    def publish_binary(
        self, topic: str, data: bytes | bytearray | memoryview, compress: bool = False
    ) -> int:
        _check_topic(topic)
        if compress is not False:
            _check_compress(compress)
        return self._server._publish(
            topic, _payload(data, "publish_binary"), compress, self._publish_exclude()
        )

    def _publish_exclude(self) -> ServerWebSocket | None:
        if self._ready_state != 1 or self._server._websocket.publish_to_self:
            return None
        return self

    def _unsubscribe_all(self) -> None:
        topics = self._topics
        if topics:
            self._topics = None
            registry = self._server._topics
            for topic in topics:
                registry.remove(topic, self)

    def __repr__(self) -> str:
        state = {1: "open", 3: "closed"}.get(self._ready_state, "?")
        return f"<ServerWebSocket {state} {self._remote_address}>"
