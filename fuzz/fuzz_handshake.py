"""Fuzz target: the HTTP/1.1 front and the upgrade path of a real ``bunws.protocol.Connection``.

    python fuzz/fuzz_handshake.py CORPUS_DIR -max_total_time=60     # atheris
    python fuzz/fuzz_handshake.py --replay crash-FILE               # re-run one input

Two servers are started once per process (``bunws.serve(..., port=0)`` in a
persistent event loop, never connected to): one with the defaults, one with tight
limits (head 300 B, 6 headers, body 64 B, deflate on, same-origin only). Every input
gets a fresh ``Connection`` on a stub transport (as bench/bench_dispatch.py does)
and is fed as raw bytes or as requests built from the input (upgrades with
trailing frames, pipelined GETs/HEADs, Content-Length and chunked POSTs, Expect,
HTTP/1.0, junk), split at fuzzer-chosen points, with loop iterations in between
so that async ``fetch`` calls finish at fuzzer-chosen moments. ``fetch`` upgrades
on ``/ws*`` (sync) and ``/aws*`` (async), answers, raises (sync and async), returns
``None`` or a wrong type on other paths.

Findings (AssertionError or any exception escaping the Connection):
  * an exception out of ``connection_made``/``data_received``/``eof_received``/
    ``pause_writing``/``resume_writing``/``connection_lost``;
  * a write after ``write_eof()`` or after ``abort()`` (asyncio raises / drops);
  * output that is not a sequence of ``HTTP/1.1 NNN`` responses with complete
    heads and bodies, or, after a ``101``, not a sequence of valid server frames
    (unmasked, known opcodes, minimal lengths, valid Close codes, nothing after Close);
  * an open handler call without exactly one close handler call by the end;
  * the server's bookkeeping not back to zero after ``connection_lost``
    (``_connections``, ``pending_websockets``, ``_http_connections``, topics, tasks).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fuzzlib import Reader, chunked, parse_http_output, parse_server_frames, run  # noqa: E402

if __name__ == "__main__":
    import atheris

    with atheris.instrument_imports(include=["bunws"]):
        import bunws  # noqa: F401
        import bunws.protocol  # noqa: F401

import bunws  # noqa: E402
from bunws.protocol import Connection  # noqa: E402

logging.getLogger("bunws").setLevel(logging.CRITICAL)  # fetch/handler errors are expected

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
MASK = b"\x37\xfa\x21\x3d"


# ------------------------------------------------------------------------ stub transport
class StubTransport:
    """Records writes; models asyncio's rules for writes after write_eof/abort."""

    def __init__(self, protocol: Connection, can_eof: bool) -> None:
        self.protocol = protocol
        self.out = bytearray()
        self.closing = False
        self.eof = False
        self.aborted = False
        self.lost = False
        self.can_eof = can_eof
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.eof, "write() after write_eof() (asyncio raises RuntimeError)"
        assert not self.aborted, "write() after abort()"
        if self.lost:
            return  # asyncio drops (and eventually logs) writes after connection_lost
        self.out += data

    def writelines(self, chunks: list[bytes | bytearray]) -> None:
        self.write(b"".join(chunks))  # as asyncio.WriteTransport.writelines does

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing or self.lost

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True
        self.aborted = True

    def can_write_eof(self) -> bool:
        return self.can_eof

    def write_eof(self) -> None:
        assert not self.aborted, "write_eof() after abort()"
        self.eof = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


# ------------------------------------------------------------------------ the app
class App:
    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.close_codes: list[int] = []

    # fetch ----------------------------------------------------------------------
    def fetch(self, req: bunws.Request, server: bunws.Server):  # noqa: ANN201
        path = req.path
        if path.startswith("/ws"):
            headers = {"X-Fuzz": "1", "Set-Cookie": "a=b"} if "h" in path else None
            if server.upgrade(req, data={"path": path}, headers=headers):
                if "twice" in path:
                    assert not server.upgrade(req), "a request upgraded twice"
                return None
            return bunws.Response("no upgrade", status=400)
        if path.startswith("/aws"):
            return self._async_upgrade(req, server)
        if path == "/raise":
            raise RuntimeError("fetch raised")
        if path == "/araise":
            return self._async_raise()
        if path == "/none":
            return None
        if path == "/wrong":
            return 42
        if path == "/body":
            return self._echo_body(req)
        if path == "/json":
            return bunws.Response.json({"q": req.query, "m": req.method}, status=201)
        if path == "/204":
            return bunws.Response(None, status=204)
        return bunws.Response("ok", headers=[("X-Path", "p")])

    async def _async_upgrade(self, req: bunws.Request, server: bunws.Server):  # noqa: ANN202
        await asyncio.sleep(0)
        if server.upgrade(req, data={"path": req.path}):
            return None
        return bunws.Response("no upgrade", status=400)

    async def _async_raise(self) -> None:
        await asyncio.sleep(0)
        raise ValueError("async fetch raised")

    async def _echo_body(self, req: bunws.Request) -> bunws.Response:
        body = await req.body()
        return bunws.Response(b"echo:" + body)

    # websocket --------------------------------------------------------------------
    def open(self, ws: bunws.ServerWebSocket) -> None:
        self.opened += 1
        ws.subscribe("fuzz")
        if "hello" in ws.data["path"]:
            ws.send("hello")
        if "bye" in ws.data["path"]:
            ws.close(4000, "bye")

    def message(self, ws: bunws.ServerWebSocket, msg: str | bytes) -> None:
        raw = msg.encode("utf-8", "surrogatepass") if isinstance(msg, str) else bytes(msg)
        if raw.startswith(b"close"):
            ws.close(4001, "asked")
        elif raw.startswith(b"raise"):
            raise RuntimeError("message raised")  # -> 1011
        elif raw.startswith(b"term"):
            ws.terminate()
        elif raw.startswith(b"pub"):
            ws.publish("fuzz", raw)
            ws.send(msg, compress=True)
        else:
            ws.send(msg, compress=True)

    def close(self, ws: bunws.ServerWebSocket, code: int, reason: str) -> None:
        assert ws.subscriptions == [], "subscriptions left when close runs"
        self.closed += 1
        self.close_codes.append(code)


APP = App()
_loop: asyncio.AbstractEventLoop | None = None
_servers: list[bunws.Server] = []


def _setup() -> None:
    global _loop
    if _loop is not None:
        return
    _loop = asyncio.new_event_loop()
    handler = bunws.WebSocketHandler(open=APP.open, message=APP.message, close=APP.close)
    tight = bunws.WebSocketHandler(
        open=APP.open, message=APP.message, close=APP.close, per_message_deflate=True,
        max_payload_length=200, max_fragments=3,
    )
    _servers.append(_loop.run_until_complete(bunws.serve(APP.fetch, handler, port=0)))
    _servers.append(_loop.run_until_complete(bunws.serve(
        APP.fetch, tight, port=0, max_head_size=300, max_headers=6, max_body_size=64,
        allowed_origins="same-origin",
    )))


def _spin(n: int) -> None:
    assert _loop is not None
    for _ in range(n):
        _loop.run_until_complete(asyncio.sleep(0))


# ------------------------------------------------------------------------ inputs
PATHS = ("/ws", "/wsh", "/ws-hello", "/ws-bye", "/ws-twice", "/aws", "/aws-hello", "/raise",
         "/araise", "/none", "/wrong", "/body", "/json?a=1&a=2&b", "/204", "/", "/x%00y",
         "/ws?x=%ff", "http://h/ws", "*")


WS_PATHS = ("/ws", "/wsh", "/ws-hello", "/ws-bye", "/ws-twice", "/aws", "/aws-hello")


def _mask(payload: bytes) -> bytes:
    return bytes(b ^ MASK[i & 3] for i, b in enumerate(payload))


def _client_frame(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = bytes((b0, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + MASK + _mask(payload)


def _frames(r: Reader) -> bytes:
    out = []
    for _ in range(r.int_in(0, 4)):
        kind = r.byte() % 8
        if kind == 0:
            out.append(_client_frame(1, r.pick((b"hi", b"close", b"raise", b"term", b"pub x", b"\xff"))))
        elif kind == 1:
            out.append(_client_frame(2, r.sized(300)))
        elif kind == 2:
            out.append(_client_frame(9, r.sized(125)))
        elif kind == 3:
            out.append(_client_frame(8, r.pick((b"", b"\x03\xe8", b"\x03\xe8bye", b"\x03\xed", b"x"))))
        elif kind == 4:  # fragments
            out.append(_client_frame(1, b"fr", fin=False) + _client_frame(0, b"ag", fin=r.boolean()))
        elif kind == 5:  # deflated "hello" (valid only with deflate)
            out.append(_client_frame(1, bytes.fromhex("f248cdc9c90700"), rsv1=True))
        elif kind == 6:
            out.append(r.sized(20))  # junk
        else:
            out.append(_client_frame(r.byte() & 0x0F, r.sized(10), fin=r.boolean()))
    return b"".join(out)


def _request(r: Reader) -> bytes:
    kind = r.byte() % 10
    path = r.pick(PATHS)
    version = "HTTP/1.0" if r.chance(15) else "HTTP/1.1"
    if kind < 4:  # an upgrade request
        if r.chance(200):
            path = r.pick(WS_PATHS)
        lines = [f"GET {path} {version}", "Host: 127.0.0.1"]
        if r.chance(240):
            lines.append(r.pick(("Upgrade: websocket", "Upgrade: WebSocket", "Upgrade: h2c", "Upgrade:")))
        if r.chance(240):
            lines.append(r.pick(("Connection: Upgrade", "Connection: keep-alive, Upgrade", "Connection: close")))
        if r.chance(240):
            key = KEY if r.chance(200) else r.pick((KEY[:-2], base64.b64encode(bytes(15)).decode() + "AAAA", "!" * 24, ""))
            lines.append(f"Sec-WebSocket-Key: {key}")
        if r.chance(240):
            lines.append(f"Sec-WebSocket-Version: {'13' if r.chance(200) else r.pick(('8', '', '13, 8'))}")
        if r.chance(60):
            lines.append("Sec-WebSocket-Extensions: " + r.pick((
                "permessage-deflate", "permessage-deflate; client_max_window_bits",
                "permessage-deflate; server_max_window_bits=9, permessage-deflate", "x, y;;=")))
        if r.chance(40):
            lines.append("Sec-WebSocket-Protocol: " + r.pick(("chat", "a, b", ",", "")))
        if r.chance(40):
            lines.append("Origin: " + r.pick(("http://127.0.0.1", "http://evil", "null")))
        if r.chance(20):
            lines.append("Content-Length: " + r.pick(("0", "3", "99999999")))
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        return head + (_frames(r) if r.chance(180) else b"")
    if kind < 6:  # GET/HEAD, maybe keep-alive
        method = r.pick(("GET", "HEAD", "DELETE", "OPTIONS"))
        extra = r.pick(("", "Connection: close\r\n", "Connection: keep-alive\r\n", "Expect: 100-continue\r\n"))
        return f"{method} {path} {version}\r\nHost: h\r\n{extra}\r\n".encode()
    if kind < 8:  # POST with a body
        body = r.sized(100)
        if r.boolean():
            head = f"POST /body {version}\r\nHost: h\r\nContent-Length: {len(body)}\r\n"
            if r.chance(40):
                head += "Expect: 100-continue\r\n"
            return head.encode() + b"\r\n" + body
        chunks = b""
        for part in chunked(body, r, 40):
            chunks += f"{len(part):x}\r\n".encode() + part + b"\r\n"
        trailer = r.pick((b"0\r\n\r\n", b"0\r\nX-T: 1\r\n\r\n", b"zz\r\n", b"5\r\nab"))
        return b"POST /body HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + trailer
    if kind == 8:  # a long or wide head (431 on the tight server)
        n = r.int_in(1, 30)
        return (f"GET {path} HTTP/1.1\r\n" + "".join(f"X-H{i}: {'v' * r.int_in(0, 40)}\r\n" for i in range(n)) + "\r\n").encode()
    return r.sized(64)  # junk


def _stream(r: Reader) -> bytes:
    if r.chance(40):  # raw bytes, length-prefixed
        return r.take(r.uint(2))
    parts = [_request(r) for _ in range(r.int_in(1, 4))]
    data = b"".join(parts)
    if data and r.chance(30):  # flip one byte
        i = r.int_in(0, len(data) - 1)
        data = data[:i] + bytes((data[i] ^ (r.byte() or 1),)) + data[i + 1:]
    return data


# ------------------------------------------------------------------------ the target
def test_one_input(data: bytes) -> None:
    _setup()
    r = Reader(data)
    server = _servers[r.byte() & 1]
    opened0, closed0 = APP.opened, APP.closed
    conn = Connection(server)
    transport = StubTransport(conn, can_eof=r.boolean())
    conn.connection_made(transport)

    stream = _stream(r)
    for piece in chunked(stream, r, r.pick((1, 5, 64, 4096))):
        if transport.closing:
            break  # a closed transport delivers nothing more
        conn.data_received(piece)
        _spin(r.int_in(0, 2))
        if conn.session is not None and r.chance(20):
            conn.pause_writing()
            conn.resume_writing()
    if r.chance(40) and not transport.closing:
        if not conn.eof_received():  # asyncio closes the transport on a false answer
            transport.close()
    _spin(4 if r.chance(220) else r.int_in(0, 2))  # exhausted input: let fetch finish
    transport.lost = True
    conn.connection_lost(None if r.boolean() else ConnectionResetError("reset"))
    for _ in range(20):  # let async fetch calls end
        if not server._tasks:
            break
        _spin(1)
    assert not server._tasks, "fetch/handler tasks still pending"

    # ---- oracles
    assert conn not in server._connections and not server._connections, "connection leaked"
    assert server.pending_websockets == 0, server.pending_websockets
    assert server._http_connections == 0, server._http_connections
    assert len(server.pubsub) == 0, server.pubsub.topics()
    assert APP.opened - opened0 == APP.closed - closed0, ("open/close calls", APP.opened - opened0, APP.closed - closed0)
    assert APP.opened - opened0 <= 1
    responses, frames = parse_http_output(bytes(transport.out))
    statuses = [s for s, _ in responses]
    assert statuses.count(101) <= 1
    if 101 in statuses:
        assert APP.opened - opened0 == 1, "101 written without open()"
        head = responses[-1][1]
        assert head.get("upgrade", "").lower() == "websocket", head
        parse_server_frames(frames, rsv1_ok="sec-websocket-extensions" in head)
    else:
        assert APP.opened == opened0, "open() ran without a 101"
        assert not frames
    for status in statuses:
        assert status in (100, 101, 200, 201, 204, 400, 403, 404, 413, 426, 431, 500, 503), status


def shutdown() -> None:
    """Stop the servers and close the loop (the smoke test calls this at the end)."""
    global _loop
    if _loop is None:
        return
    for server in _servers:
        _loop.run_until_complete(server.stop(True))
    _servers.clear()
    _loop.close()
    _loop = None


def seeds() -> list[bytes]:
    """Byte strings that steer the structured mode to classic requests."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from rawclient import RawClient

    out = []
    # Raw mode (first structured choice < 40/256) with real requests as payload.
    raw = [
        RawClient.handshake_request("/ws", key=KEY),
        RawClient.handshake_request("/ws-hello", key=KEY) + _client_frame(1, b"hi") + _client_frame(8, b"\x03\xe8"),
        RawClient.handshake_request("/aws", key=KEY, extensions="permessage-deflate") + _client_frame(1, b"pub x"),
        RawClient.handshake_request("/ws", key=KEY, version="8"),
        b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /json HTTP/1.1\r\nHost: h\r\n\r\nHEAD / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /body HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"POST /body HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /raise HTTP/1.1\r\n\r\n",
        b"GET /araise HTTP/1.1\r\n\r\nGET /none HTTP/1.1\r\n\r\n",
    ]
    for server in (0, 1):
        for req in raw:
            # server, can_eof, raw mode (0 < 40), length, request, then chunk/spin choices
            out.append(bytes((server, 1, 0)) + len(req).to_bytes(2, "big") + req)
    # Structured mode: a few byte patterns.
    out.append(bytes((0, 0, 200, 1, 0, 0)) + bytes(range(64)))
    out.append(bytes((1, 1, 255, 3, 10, 0)) + bytes(range(255, 0, -3)))
    return out


if __name__ == "__main__":
    run(test_one_input, seeds)
