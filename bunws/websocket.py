"""``ServerWebSocket``: the write side of one upgraded connection.

It owns the outgoing byte queue (cork buffer and queued publishes share one
``bytearray`` so per-socket order always equals call order), the send-status rules
of Bun (BUN_SEMANTICS.md §2-§4), the socket's compressor and its subscriptions.
The read side and the lifecycle live in :mod:`bunws.protocol`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._frame import append_frame, encode_close
from .errors import InvalidArgument, InvalidType

if TYPE_CHECKING:
    from .protocol import Connection
    from .server import Server

__all__ = ["ServerWebSocket", "SEND_DROPPED", "SEND_BACKPRESSURE"]

SEND_DROPPED = 0
SEND_BACKPRESSURE = -1

OP_TEXT = 1
OP_BINARY = 2
OP_PING = 9
OP_PONG = 10

# Bun's per-loop cork buffer is 16 KiB (uWS LoopData.h): past that the queue is
# written out even inside a handler, so backpressure becomes visible to the caller.
CORK_FLUSH_THRESHOLD = 16 * 1024

_BINARY_TYPES = {
    "bytes": "bytes",
    "nodebuffer": "bytes",
    "buffer": "bytes",
    "Buffer": "bytes",
    "bytearray": "bytearray",
    "arraybuffer": "bytearray",
    "ArrayBuffer": "bytearray",
    "memoryview": "memoryview",
    "uint8array": "memoryview",
    "Uint8Array": "memoryview",
}

T = TypeVar("T")


def _payload(data: Any, what: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise InvalidType(f"{what} expects bytes-like data, got {type(data).__name__}")


def _check_compress(compress: Any) -> None:
    if not isinstance(compress, bool):
        raise InvalidType("send expects compress to be a bool")


def _check_topic(topic: Any) -> None:
    if not isinstance(topic, str):
        raise InvalidType(f"topic must be a str, got {type(topic).__name__}")
    if not topic:
        raise InvalidArgument("topic must not be empty")


def cut_reason(reason: str) -> bytes:
    """UTF-8 bytes of ``reason`` cut to at most 123 bytes on a character boundary."""
    raw = reason.encode("utf-8")
    if len(raw) <= 123:
        return raw
    return raw[:123].decode("utf-8", errors="ignore").encode("utf-8")


class ServerWebSocket:
    """An upgraded connection, as handed to the ``websocket`` handlers.

    Send methods return Bun's status: the payload byte count when the frame went to
    the kernel or the cork buffer, ``-1`` (:data:`SEND_BACKPRESSURE`) when it was
    queued behind buffered bytes, ``0`` (:data:`SEND_DROPPED`) when it was dropped
    (socket closed, or buffered amount already over ``backpressure_limit``) or the
    payload was empty (an empty frame is still sent).
    """

    __slots__ = (
        "data",
        "_conn",
        "_server",
        "_transport",
        "_out",
        "_corked",
        "_queued",
        "_ready_state",
        "_doomed",
        "_topics",
        "_binary_type",
        "_limit",
        "_close_on_limit",
        "_deflater",
        "_shared_deflate",
        "_remote_address",
        "_pending_pong",
        "subprotocol",
        "extensions",
        "__weakref__",
    )

    def __init__(self, conn: Connection, server: Server, data: Any) -> None:
        handler = server._websocket
        self.data = data
        self._conn = conn
        self._server = server
        self._transport = conn.transport
        self._out = bytearray()
        self._corked = 0
        self._queued = False  # in the server's end-of-tick flush list
        self._ready_state = 1
        self._doomed = False  # close_on_backpressure_limit tripped
        self._topics: set[str] | None = None
        self._binary_type = "bytes"
        self._limit = handler.backpressure_limit
        self._close_on_limit = handler.close_on_backpressure_limit
        self._deflater = None
        self._shared_deflate = False
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
        return self._binary_type

    @binary_type.setter
    def binary_type(self, value: str) -> None:
        try:
            self._binary_type = _BINARY_TYPES[value]
        except (KeyError, TypeError):
            raise InvalidArgument(
                f"binary_type must be one of 'bytes', 'bytearray', 'memoryview', got {value!r}"
            ) from None

    @property
    def buffered_amount(self) -> int:
        """Bytes of complete frames waiting in user space (not the cork buffer)."""
        if self._ready_state != 1:
            return 0
        pending = 0 if self._corked else len(self._out)
        return self._transport.get_write_buffer_size() + pending

    def get_buffered_amount(self) -> int:
        return self.buffered_amount

    @property
    def is_paused(self) -> bool:
        return self._conn.paused

    @property
    def subscriptions(self) -> list[str]:
        """A fresh list of this socket's topics (order unspecified, as in Bun)."""
        return list(self._topics) if self._topics else []

    # ---------------------------------------------------------------- sending
    def send(self, data: str | bytes | bytearray | memoryview, compress: bool = False) -> int:
        """Send ``str`` as a text frame, bytes-like as a binary frame."""
        if compress is not False:
            _check_compress(compress)
        if type(data) is str:
            return self._send(OP_TEXT, data.encode(), compress)
        if isinstance(data, (bytes, bytearray, memoryview)):
            return self._send(OP_BINARY, bytes(data) if type(data) is not bytes else data, compress)
        # Bun String()s anything else; in Python a wrong type is a bug worth raising.
        raise InvalidType(f"send expects str or bytes-like data, got {type(data).__name__}")

    def send_text(self, data: str, compress: bool = False) -> int:
        if type(data) is not str:
            raise InvalidType(f"send_text expects a str, got {type(data).__name__}")
        if compress is not False:
            _check_compress(compress)
        return self._send(OP_TEXT, data.encode(), compress)

    def send_binary(self, data: bytes | bytearray | memoryview, compress: bool = False) -> int:
        if compress is not False:
            _check_compress(compress)
        return self._send(OP_BINARY, _payload(data, "send_binary"), compress)

    def ping(self, data: str | bytes | bytearray | memoryview = b"") -> int:
        return self._send_control(OP_PING, data, "ping")

    def pong(self, data: str | bytes | bytearray | memoryview = b"") -> int:
        return self._send_control(OP_PONG, data, "pong")

    def _send_control(self, opcode: int, data: Any, what: str) -> int:
        payload = data.encode() if isinstance(data, str) else _payload(data, what)
        if len(payload) > 125:
            raise InvalidArgument(
                f"The data size must not be greater than 125 bytes. Received {len(payload)} bytes."
            )
        return self._send(opcode, payload, False)

    def _send(self, opcode: int, payload: bytes, compress: bool) -> int:
        if self._ready_state != 1 or self._doomed:
            return SEND_DROPPED
        transport = self._transport
        limit = self._limit
        if limit:
            buffered = transport.get_write_buffer_size()
            if not self._corked:
                buffered += len(self._out)
            if buffered > limit:
                self._over_limit()
                return SEND_DROPPED
        size = len(payload)
        rsv1 = False
        if compress and size and self._deflater is not None and opcode <= OP_BINARY:
            payload = self._deflater.compress(payload)
            rsv1 = True
        out = self._out
        append_frame(out, opcode, payload, rsv1)
        if self._corked:
            if len(out) > CORK_FLUSH_THRESHOLD:
                self._flush()
        else:
            self._flush()
        if transport.get_write_buffer_size():
            return SEND_BACKPRESSURE
        return size

    def _flush(self) -> None:
        """Hand the queued bytes to the transport in one write."""
        out = self._out
        if out:
            # A fresh buffer rather than clearing in place: a transport may keep a
            # reference to what it was given.
            self._out = bytearray()
            self._transport.write(out)

    def _over_limit(self) -> None:
        if self._close_on_limit and not self._doomed:
            # Bun: no Close frame, buffered data discarded, close handler (1006, "")
            # right after the current handler returns; every later send is dropped.
            self._doomed = True
            self._server._loop.call_soon(self._conn.abort, 1006, "")

    def cork(self, fn: Callable[[ServerWebSocket], T]) -> T:
        """Run ``fn(ws)``; everything it sends leaves in one write afterwards."""
        if not callable(fn):
            raise InvalidType("cork expects a callable")
        self._corked += 1
        try:
            return fn(self)
        finally:
            self._corked -= 1
            if not self._corked and self._ready_state == 1:
                self._flush()

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
        raw_reason = cut_reason(reason)
        self._conn.close_with_frame(
            encode_close(code & 0xFFFF, raw_reason.decode("utf-8")), code, raw_reason.decode()
        )

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
            return 0  # Bun returns 0 here instead of throwing (BUN_SEMANTICS.md §5)
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
