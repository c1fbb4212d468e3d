"""``Connection``: one TCP connection, from its first HTTP byte to its last frame.

It owns the transport events and the HTTP/1.1 life (httptools, keep-alive,
pipelining answered in order, limits, ``fetch``, TLS after the accept) and hands
an upgraded connection to its :class:`~bunws.session.WebSocketSession`, which owns
the WebSocket life (frames, handlers, the close handshake, WebSocket timers).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import httptools

from .body_stream import BodyStream
from .http import Headers, Request, Response, build_response, check_host, simple_response
from .session import SessionState

if TYPE_CHECKING:
    from .server import Server
    from .session import WebSocketSession

__all__ = ["Connection", "Phase", "WrittenAnswer"]

logger = logging.getLogger("bunws")


class Phase(enum.IntEnum):
    """The two lives of a connection, and its end."""

    HTTP = 0  # requests and answers; ends with an upgrade or the connection
    WEBSOCKET = 1  # the session owns the bytes (its own state: open/closing/closed)
    CLOSED = 3  # connection_lost ran


HTTP, WEBSOCKET, CLOSED = Phase.HTTP, Phase.WEBSOCKET, Phase.CLOSED

# What the server keeps for a client in the HTTP phase while it cannot answer yet
# (a running async fetch, a client that does not read): the client decides how much
# it sends, these decide how much is kept. Past them, reading pauses.
MAX_QUEUED_REQUESTS = 16  # parsed requests waiting behind a running fetch
PARSE_SLICE = 8 * 1024  # input parsed between two looks at that queue
HOLD_LIMIT = 256 * 1024  # bytes after an Upgrade head kept while fetch decides
HTTP_WRITE_LIMIT = 64 * 1024  # unsent response bytes before answering stops

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Connection(asyncio.BufferedProtocol):
    """asyncio protocol for one client connection (HTTP, then maybe WebSocket).

    A BufferedProtocol: the transport reads into the server's one receive buffer
    instead of allocating a fresh 256 KiB ``bytes`` per read and shrinking it
    (py-spy, 10 000 handshakes: that ``recv`` was 19.5 % of the server's time).
    Sharing one buffer is safe because every consumer copies what it keeps before
    ``buffer_updated`` returns (the frame parser, httptools, ``_early_bytes``,
    ``_unparsed``, ``_tls_early``), and the loop never reads for another connection
    while one's ``buffer_updated`` runs.

    HTTP phase: requests are parsed in slices into ``_queue`` and answered strictly
    in order, the server's own refusals (400/413/431) included. While the queue is
    full, an answer cannot be written, or an Upgrade request's fetch is deciding,
    the rest of the input waits (``_unparsed`` / ``_early_bytes``) and reading pauses.
    """

    # After the upgrade the session becomes the transport's protocol (its compiled
    # read path); an adapter that feeds the connection itself turns this off.
    session_reads_directly = True

    # Slots: thousands of idle connections are the normal case (see the RSS per
    # connection figure in bench/RESULTS.md).
    __slots__ = (
        "server", "clock", "transport", "remote_address", "phase",
        "_http", "_url", "_headers", "_head_bytes", "_silent_bytes", "_in_head",
        "_callbacks", "_body", "_queue", "_queued_body", "_unparsed", "_fetch_running",
        "_early_bytes", "_close_after", "_server_answer", "_write_blocked", "_reading_paused",
        "_peer_eof", "_continue_due", "_tls_pending", "_tls_early", "_unsent", "deadline",
        "session", "_waiters", "_stream", "__weakref__",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        # Timestamps come from the loop's clock, not the server's coarse tick, so a
        # timeout never fires early (the tick only decides how late it may be). One
        # bound method shared by all connections: each object a connection keeps
        # alive is scanned by every full GC pass (bench: conns scenario).
        self.clock = server.clock
        self.transport: Any = None
        self.remote_address: str | None = None
        self.phase = HTTP
        # HTTP phase
        self._http: httptools.HttpRequestParser | None = None  # None once refused or upgrading
        self._url = b""
        self._headers: list[tuple[str, str]] | None = None  # set per request head
        self._head_bytes = 0  # URL and header bytes of the current head (callbacks)
        self._silent_bytes = 0  # input fed since the last callback, inside one request
        self._in_head = False
        self._callbacks = 0  # httptools callbacks so far: did a slice complete anything?
        self._body: bytearray | None = None
        # Parsed requests as (request, keep-alive), or (status, False) for a refusal
        # the server answers itself; None once upgraded (one object fewer per socket).
        self._queue: deque[tuple[Request | int, bool]] | None = deque()
        self._queued_body = 0  # body bytes of the queued requests
        self._unparsed: bytearray | None = None  # input not parsed yet (queue full)
        self._fetch_running = False  # an async fetch() is running
        self._early_bytes: bytearray | None = None  # bytes after an Upgrade request's head
        self._close_after = False  # close once the queued responses are written
        self._server_answer: bytes | None = None  # server's own answer replacing fetch's (426/403/503)
        self._write_blocked = False  # HTTP answers wait in the transport (client not reading)
        self._reading_paused = False
        self._peer_eof = False  # the client shut down its side; answer what it is owed
        self._continue_due = False  # a 100 Continue waits for the answers before it
        self._tls_pending = False  # transport is still the raw TCP one, TLS handshaking
        self._tls_early: bytearray | None = None  # TLS bytes read before start_tls took over
        self._unsent = 0  # unsent answer bytes at the last tick: is the client reading?
        self.deadline = 0.0  # handshake / close-handshake deadline (loop time)
        # WebSocket phase
        self.session: WebSocketSession | None = None
        self._waiters: list[asyncio.Future[None]] | None = None  # wait_writable() callers
        self._stream: BodyStream | None = None  # the streamed body the parser is in

    # ================================================================ transport events
    def connection_made(self, transport: Any) -> None:
        """A connection was accepted: admit it or answer 503, and arm the handshake timer."""
        self.transport = transport
        server = self.server
        peer = transport.get_extra_info("peername")
        if peer:
            self.remote_address = peer[0] if isinstance(peer, tuple) else str(peer)
        self.deadline = self.clock() + server.handshake_timeout
        if not server.admit(self):
            # Closed one loop step later: a transport may still have start-up steps
            # queued (aiofastnet adds its reader after connection_made; closing
            # first would leave that reader on a closed, soon reused, fd number).
            if server.ssl is None:
                transport.write(simple_response(503))
                server.loop.call_soon(transport.close)
            else:
                server.loop.call_soon(transport.abort)  # before TLS a plaintext 503 would only be noise
            self.phase = CLOSED
            return
        self._http = httptools.HttpRequestParser(self)
        if server.ssl is not None:
            self._start_tls(transport)

    def _start_tls(self, raw: Any) -> None:
        """TLS runs after the accept, so the handshake counts as pending from the
        first byte (asyncio's own ``ssl=`` would hide it from the limits)."""
        server = self.server
        loop = server.loop
        self._tls_pending = True
        # Requests may be decrypted before start_tls() returns the TLS transport:
        # they wait here, since answers must not go to the raw one.
        self._unparsed = bytearray()
        # Stock asyncio honours this pause until start_tls resumes reading; uvloop
        # starts reading after connection_made anyway, so what it reads before
        # start_tls runs is kept and replayed into the TLS protocol (_replay_tls).
        raw.pause_reading()
        server.create_task(self._tls_handshake(raw))
        # Two hops: start_tls's first step queues the TLS protocol's connection_made;
        # the replay must come after it and before anything read later.
        loop.call_soon(loop.call_soon, self._replay_tls, raw)

    def _replay_tls(self, raw: Any) -> None:
        early, self._tls_early = self._tls_early, None
        proto = raw.get_protocol()
        if not early or proto is self or raw.is_closing():
            return
        view = memoryview(early)
        if hasattr(proto, "get_buffer"):
            while view:
                buf = proto.get_buffer(len(view))
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                proto.buffer_updated(n)
                view = view[n:]
        else:
            proto.data_received(bytes(view))

    async def _tls_handshake(self, raw: Any) -> None:
        server = self.server
        try:
            transport = await server.loop.start_tls(
                raw, self, server.ssl, server_side=True,
                ssl_handshake_timeout=server.handshake_timeout,
            )
        except Exception:  # handshake failed or timed out: asyncio has logged what matters
            raw.abort()
            self.connection_lost(None)  # not called by asyncio for a handshake that never completed
            return
        self._tls_pending = False
        if self.phase == CLOSED or transport is None:
            return
        self.transport = transport
        self._advance()

    def get_buffer(self, sizehint: int) -> memoryview:
        """The server's one receive buffer (buffered-protocol reads land there)."""
        return self.server.receive_buffer

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` arrived in the receive buffer."""
        self.data_received(self.server.receive_buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        """Bytes from the peer: HTTP to the parser, WebSocket frames to the session."""
        if self._tls_pending and self.transport.get_protocol() is self:
            if self._tls_early is None:
                self._tls_early = bytearray()
            self._tls_early += data  # still TLS records: for _replay_tls
            return
        if self.phase is WEBSOCKET:
            if self._early_bytes is not None:
                self._keep_early_bytes(data)  # behind the frames that came with the handshake
            else:
                self.session.data_received(data)  # type: ignore[union-attr]
        elif self.phase is HTTP:
            self.server.counters.bytes_received += len(data)
            self._http_data(data)

    def eof_received(self) -> bool | None:
        """The peer half-closed: in HTTP, still answer what it asked for."""
        if self._waiters is not None:
            self.server.loop.call_soon(self._wake_waiters)  # after _peer_eof is set below
        if self.phase is HTTP and not self._http_idle() and self.server.ssl is None:
            # A half-close still lets the client read the answers it is owed.
            self._peer_eof = True
            self._check_stream_end()
            return True
        if self.phase is WEBSOCKET and self._early_bytes is not None:
            self._peer_eof = True  # the frames already received are dispatched first
            if self.server.ssl is None:
                return True
            self._release_early_bytes()  # a TLS transport closes on EOF whatever we say
        # Returning a false value makes the transport close itself.
        return None

    def pause_writing(self) -> None:
        """The transport is full: stop producing answers (HTTP) or tell the session."""
        if self.phase is HTTP:
            self._write_blocked = True
            self.update_reading()
        elif self.session is not None:
            # High-water mark 0 (set at upgrade): the transport now holds unsent bytes.
            self.session.transport_paused()

    def resume_writing(self) -> None:
        """The transport drained: continue answering (HTTP) or tell the session."""
        if self._waiters is not None:
            self._wake_waiters()
        if self.phase is HTTP:
            if self._write_blocked:
                self._write_blocked = False
                self._advance()
        elif self.session is not None:
            self.session.transport_resumed()

    def connection_lost(self, exc: BaseException | None) -> None:
        """The connection is gone: release it and end its session."""
        # Idempotent: a failed TLS handshake reports itself here too.
        self.server.release(self, in_http=self.phase is HTTP)
        if self._waiters is not None:
            self._wake_waiters()
        session = self.session
        if session is not None:
            session.lost()
        if self._stream is not None:
            self._stream.client_gone()
            self._stream = None
        self.phase = CLOSED
        self._http = None
        self._queue = None
        self._unparsed = None
        self._early_bytes = None
        # Break the Connection <-> session <-> socket cycle so a closed connection is
        # freed by reference counting, not left for a full GC pass (the app may
        # still hold the socket: its methods then see a closed connection).
        self.session = None

    def shutdown(self, close_active: bool) -> None:
        """``Server.stop()``: idle HTTP connections close now; a busy one sends its
        answer with ``Connection: close`` (requests not yet answered get 503 while
        answers cannot be written); WebSockets get 1001."""
        if self.phase is HTTP:
            if self._tls_pending or self._http_idle():
                self._close_http()
        elif self.phase is WEBSOCKET and self.session is not None:
            self.session.shutdown(close_active)

    def abort(self) -> None:
        """End the TCP connection at once (``Server.stop`` once its wait is over)."""
        if self.transport is not None:
            self.transport.abort()

    # ================================================================ HTTP phase
    def _http_data(self, data: bytes | memoryview) -> None:
        if self._early_bytes is not None:
            # After an Upgrade request's head nothing is parsed as HTTP until fetch decides.
            self._keep_early_bytes(data)
        elif self._unparsed is not None:
            self._unparsed += data  # a read that was under way when reading paused
            self.update_reading()
        else:
            self._parse(data)
            self._advance()

    def _http_idle(self) -> bool:
        """Nothing is owed: no running fetch, no queued request, no waiting input."""
        return not self._fetch_running and not self._queue and self._unparsed is None and self._early_bytes is None

    def _queue_full(self) -> bool:
        queue = self._queue
        return queue is not None and (
            len(queue) >= MAX_QUEUED_REQUESTS or self._queued_body > self.server.max_body_size
        )

    def _parse(self, data: bytes | bytearray | memoryview) -> None:
        """Feed ``data`` to httptools in slices, answering as requests complete; stop
        (keeping the rest in ``_unparsed``) while the queue is full."""
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if self._http is None:
                if self._early_bytes is not None:
                    self._keep_early_bytes(view[pos:])
                return  # refused: what follows is never read
            if self._queue_full() or (self._stream is not None and self._stream.full):
                self._unparsed = bytearray(view[pos:])
                return
            chunk = view[pos : pos + PARSE_SLICE]
            upgrade_at = self._feed(chunk)
            if upgrade_at >= 0:
                self._early_bytes = bytearray()
                self._keep_early_bytes(view[pos + upgrade_at :])
                pos = end
            else:
                pos += len(chunk)
            self._answer_queued()

    def _feed(self, chunk: memoryview) -> int:
        """Parse one slice; returns where an Upgrade request's head ended, else -1."""
        parser = self._http
        assert parser is not None  # _parse checked
        callbacks = self._callbacks
        try:
            parser.feed_data(chunk)
        except httptools.HttpParserUpgrade as upgrade:
            self._http = None  # the bytes after it are not HTTP unless fetch says no
            return int(upgrade.args[0])
        except httptools.HttpParserCallbackError:
            self._refuse(400)  # no-op when a callback already refused the request
            return -1
        except httptools.HttpParserError:
            self._refuse(400)
            return -1
        if self._callbacks != callbacks:
            self._silent_bytes = 0
        elif self._headers is not None:
            # The whole slice went into one unfinished field of an open request (a
            # header or a trailer line that never ends, which httptools keeps until it
            # does): count it, so that is bounded by max_head_size too.
            self._silent_bytes += len(chunk)
            if self._silent_bytes > self.server.max_head_size:
                self._refuse(431)
        return -1

    def _refuse(self, status: int) -> None:
        """Queue the server's own refusal behind the answers still owed; parse no more.

        The queue entry is ``(status, head_only)``: a refused HEAD gets no body."""
        parser = self._http
        if parser is None or self._queue is None:
            return
        # The method is this request's once on_url ran (before that llhttp still
        # reports the previous request's).
        head_only = bool(self._url) and parser.get_method() == b"HEAD"
        self._http = None
        self._unparsed = None
        self._continue_due = False
        self._queue.append((status, head_only))

    # httptools callbacks ---------------------------------------------------------
    def on_message_begin(self) -> None:
        """Parser callback: a request starts."""
        self._url = b""
        self._headers = []
        self._body = None
        self._in_head = True
        self._head_bytes = 0
        self._callbacks += 1

    def on_url(self, url: bytes) -> None:
        """Parser callback: part of the request target (bounded by ``max_head_size``)."""
        self._callbacks += 1
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self.server.max_head_size:
            self._refuse(431)
            raise _Rejected

    def on_header(self, name: bytes, value: bytes) -> None:
        """Parser callback: one header line (bounded by ``max_head_size`` and ``max_headers``)."""
        self._callbacks += 1
        headers = self._headers
        assert headers is not None  # on_message_begin made it
        self._head_bytes += len(name) + len(value) + 4
        if len(headers) >= self.server.max_headers or self._head_bytes > self.server.max_head_size:
            self._refuse(431)
            raise _Rejected
        headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        """Parser callback: the head is complete; check it before the body."""
        self._callbacks += 1
        self._in_head = False
        parser, headers = self._http, self._headers
        assert parser is not None and headers is not None  # set by on_message_begin
        problem = check_host(headers, parser.get_http_version())
        if problem is not None:
            logger.debug("400 for %s: %s", self.remote_address, problem)
            self._refuse(400)
            raise _Rejected
        limit = self.server.max_body_size
        has_body = False  # neither header: no body (RFC 9112 §6.3), nothing to stream
        for name, value in headers:
            lower = name.lower()
            if lower == "content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = 0  # llhttp has already rejected a malformed length
                if length > limit:
                    self._refuse(413)
                    raise _Rejected
                has_body = has_body or length > 0
            elif lower == "transfer-encoding":
                has_body = True
            elif lower == "expect" and value.lower() == "100-continue":
                # The interim answer may not overtake the final answers before it.
                if self._queue or self._fetch_running:
                    self._continue_due = True
                else:
                    self.transport.write(_CONTINUE)
        if has_body:
            wants_stream = getattr(self.server.fetch, "streams_body", None)
            if wants_stream is not None:
                self._queue_streamed(parser, headers, wants_stream)

    def _queue_streamed(self, parser: Any, headers: list[tuple[str, str]], wants_stream: Any) -> None:
        """Queue the request now, its body to come through a ``BodyStream``, when
        ``fetch.streams_body(req)`` asks for it (its fetch starts in its turn)."""
        req = self._new_request(parser, headers, b"")
        if not wants_stream(req):
            return
        stream = BodyStream(self.server.loop, self._stream_drained)
        req.attach_body_stream(stream)
        assert self._queue is not None
        self._queue.append((req, parser.should_keep_alive()))
        self._stream = stream
        self.deadline = self.clock() + self.server.handshake_timeout  # for the body's next bytes

    def _new_request(self, parser: Any, headers: list[tuple[str, str]], body: bytes) -> Request:
        return Request(
            parser.get_method().decode("latin-1"),
            self._url.decode("latin-1"),
            Headers(headers),
            body,
            http_version=parser.get_http_version(),
            remote_address=self.remote_address,
            scheme=self.server.scheme,
            connection=self,
        )

    def _stream_drained(self) -> None:
        """The running fetch read its streamed body: parse what waited meanwhile."""
        if self.phase is not HTTP:
            return
        if self._unparsed is not None and not self._queue_full():
            data, self._unparsed = self._unparsed, None
            self._parse(data)
            self._check_stream_end()
        self.update_reading()

    def _check_stream_end(self) -> None:
        """A client that half-closed with all its input parsed sends no more body."""
        stream = self._stream
        if stream is not None and self._peer_eof and self._unparsed is None:
            stream.client_gone()
            self._stream = None

    def on_body(self, body: bytes) -> None:
        """Parser callback: part of the body (bounded by ``max_body_size``)."""
        self._callbacks += 1
        stream = self._stream
        if stream is not None:
            stream.feed(body)
            self.deadline = self.clock() + self.server.handshake_timeout
            if stream.received > self.server.max_body_size:
                self._stream = None
                if stream.discarding:
                    self._close_http()  # its answer is written: nothing more to say
                else:
                    stream.refuse_too_large()  # the fetch answers 413 if it still can
                    self._http = None
                    self._unparsed = None
                raise _Rejected
            return
        if self._body is None:
            self._body = bytearray()
        self._body += body
        if len(self._body) > self.server.max_body_size:
            self._refuse(413)
            raise _Rejected

    def on_message_complete(self) -> None:
        """Parser callback: a whole request; queue it for ``fetch`` in order."""
        self._callbacks += 1
        parser, headers, queue = self._http, self._headers, self._queue
        assert parser is not None and headers is not None and queue is not None
        stream = self._stream
        if stream is not None:
            stream.finish()  # queued when its head was parsed
            self._stream = None
        else:
            body = bytes(self._body) if self._body else b""
            queue.append((self._new_request(parser, headers, body), parser.should_keep_alive()))
            self._queued_body += len(body)
        self._continue_due = False  # the body came anyway: the final answer will do
        self._url = b""
        self._headers = None
        self._body = None

    # request processing -----------------------------------------------------------
    def _advance(self) -> None:
        """Answer what can be answered, then parse waiting input while there is room."""
        while self.phase == HTTP:
            self._answer_queued()
            if self.phase != HTTP or self._fetch_running or self._write_blocked:
                break
            if self._continue_due and not self._queue:
                self._continue_due = False
                self.transport.write(_CONTINUE)
            if self._unparsed is None:
                break
            data, self._unparsed = self._unparsed, None
            self._parse(data)
        if self.phase == HTTP and self._peer_eof:
            self._check_stream_end()
            if self._http_idle():
                self._close_http()
        self.update_reading()

    def _answer_queued(self) -> None:
        """Run ``fetch`` for queued requests, one at a time, in order."""
        queue = self._queue
        while queue and not self._fetch_running and not self._write_blocked and self.phase == HTTP:
            if self.transport.is_closing():
                # Aborted (a timeout) or closing: nothing more may be answered, so
                # nothing more may be run either.
                self._close_http()
                return
            item, keep_alive = queue.popleft()
            if type(item) is int:
                self._send_http(simple_response(item, head_only=keep_alive), close=True)
                return
            assert isinstance(item, Request)
            req = item
            if self._continue_due and req.body_stream is not None and req.body_stream is self._stream:
                self._continue_due = False  # its turn: now the client may send the body
                self.transport.write(_CONTINUE)
            self._queued_body -= req.body_size
            server = self.server
            server.recorder.http_requests += 1
            if server.stopping:
                self._send_http(simple_response(503, head_only=req.method == "HEAD"), close=True)
                return
            try:
                result = server.fetch(req, server)
            except Exception as exc:
                self._fetch_failed(req, exc)
                continue
            if type(result) is not Response and result is not None and (
                    asyncio.iscoroutine(result) or isinstance(result, asyncio.Future)):
                self._fetch_running = True
                server.create_task(self._await_fetch(req, result, keep_alive))
                return
            self._write_answer(req, result, keep_alive)

    async def _await_fetch(self, req: Request, pending: Any, keep_alive: bool) -> None:
        try:
            result = await pending
        except Exception as exc:
            self._fetch_running = False
            self._fetch_failed(req, exc)
        else:
            self._fetch_running = False
            self._write_answer(req, result, keep_alive)
        if self.phase == HTTP:
            self._advance()

    def _fetch_failed(self, req: Request, exc: Exception) -> None:
        logger.error("fetch() raised for %s %s", req.method, req.target, exc_info=exc)
        if req.upgraded:
            self._release_early_bytes()
        elif self.phase == HTTP:
            self._send_http(simple_response(500, head_only=req.method == "HEAD"), close=True)

    def _body_cut(self, req: Request) -> bool:
        """After ``req``'s answer: whether its streamed body ended early, so the
        connection must close. A body the fetch did not read is read on and
        dropped instead (bounded by ``max_body_size``), keeping the connection."""
        stream = req.body_stream
        if stream is None or stream.complete:
            return False
        if stream is self._stream and self._http is not None:
            stream.discard()
            return False
        return True

    def _write_answer(self, req: Request, result: Any, keep_alive: bool) -> None:
        if req.upgraded:
            self._release_early_bytes()
            return
        if self.phase != HTTP:
            return
        if self._body_cut(req):
            keep_alive = False
        if self._server_answer is not None:
            answer, self._server_answer = self._server_answer, None
            self._send_http(answer, close=True)
            return
        if type(result) is WrittenAnswer:
            self._answer_written(result.close or not keep_alive)
            return
        if not isinstance(result, Response):
            if result is None:
                logger.error(
                    "fetch() returned None for %s %s without upgrading", req.method, req.target
                )
            else:
                logger.error(
                    "fetch() must return a Response, got %s", type(result).__name__
                )
            self._send_http(simple_response(500, head_only=req.method == "HEAD"), close=True)
            return
        # The request that paused llhttp for an upgrade (the last one parsed) and was
        # not upgraded ends the connection: the bytes after it were never parsed.
        upgrade_declined = self._early_bytes is not None and not self._queue
        close = not keep_alive or upgrade_declined or self.server.stopping
        try:
            payload = build_response(result, keep_alive=not close, head_only=req.method == "HEAD")
        except Exception as exc:  # e.g. headers changed after the Response checked them
            logger.error("cannot send the Response for %s %s", req.method, req.target, exc_info=exc)
            payload, close = simple_response(500, head_only=req.method == "HEAD"), True
        self._send_http(payload, close=close)

    def _send_http(self, payload: bytes, close: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            self._close_http()  # nothing queued behind this answer may be run now
            return
        transport.write(payload)
        self.server.counters.bytes_sent += len(payload)
        self.deadline = self.clock() + self.server.handshake_timeout
        if close:
            self._close_http()
        elif transport.get_write_buffer_size() > HTTP_WRITE_LIMIT:
            # Asked, not trusted to be told: the client is not reading its answers.
            self._write_blocked = True

    # answers written by fetch itself (the ASGI bridge streams them) --------------
    def wait_writable(self) -> asyncio.Future[None]:
        """A future done once the transport asks for more bytes again or the
        connection is lost: a ``fetch`` writing its own answer (a streamed ASGI
        response) awaits it while ``transport.get_write_buffer_size()`` is high."""
        waiter = self.server.loop.create_future()
        if self.phase is CLOSED:
            waiter.set_result(None)
        else:
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
        return waiter

    @property
    def peer_closed(self) -> bool:
        """The client shut down its side (or the connection is gone): a ``fetch``
        waiting for more input from it (an ASGI app in ``receive``) gets none."""
        return self._peer_eof or self.phase is CLOSED

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def _answer_written(self, close: bool) -> None:
        """``fetch`` wrote its whole answer to the transport while it held the turn."""
        transport = self.transport
        # As in _write_answer: bytes after a declined Upgrade request were never parsed.
        upgrade_declined = self._early_bytes is not None and not self._queue
        if close or upgrade_declined or transport is None or transport.is_closing():
            self._close_http()
            return
        self.deadline = self.clock() + self.server.handshake_timeout
        if transport.get_write_buffer_size() > HTTP_WRITE_LIMIT:
            self._write_blocked = True

    def _close_http(self) -> None:
        """End the HTTP phase after what is written (FIN once flushed)."""
        self._close_after = True
        if self._queue is not None:
            self._queue.clear()
        self._http = None
        self._unparsed = None
        self._continue_due = False
        self.transport.close()

    def update_reading(self) -> None:
        """Pause reading exactly while some input must wait (one place decides):
        HTTP input the server cannot take yet, or a paused WebSocket session."""
        held = self._early_bytes
        session = self.session
        wanted = (
            (session is not None and session.paused and session.state is SessionState.OPEN)
            or self._unparsed is not None
            or self._write_blocked
            or (self._stream is not None and self._stream.full)
            or (held is not None and len(held) >= HOLD_LIMIT)
        )
        if wanted == self._reading_paused or self._tls_pending:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._reading_paused = wanted
        if wanted:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _keep_early_bytes(self, data: bytes | memoryview) -> None:
        held = self._early_bytes
        assert held is not None
        held += data
        if len(held) >= HOLD_LIMIT:
            self.update_reading()

    # ================================================================ upgrade
    def can_upgrade(self) -> bool:
        """Still in the HTTP phase with a usable transport, and nothing after the
        request was parsed as HTTP (llhttp pauses only when ``Connection: upgrade``
        is sent; without it, what followed would be lost)."""
        transport = self.transport
        if self.phase is not HTTP or transport is None or transport.is_closing():
            return False
        return self._early_bytes is not None or not (self._queue or self._unparsed)

    def replace_answer(self, answer: bytes) -> None:
        """The server answers the current request itself (426/403/503 from
        ``upgrade()``), whatever ``fetch`` returns."""
        self._server_answer = answer

    def upgrade(self, req: Request, response_head: bytes, session: WebSocketSession) -> None:
        """Switch to the WebSocket phase (called by ``Server.upgrade``)."""
        server = self.server
        req.mark_upgraded()
        self.transport.write(response_head)
        server.counters.bytes_sent += len(response_head)
        server.http_phase_ended()
        self.phase = WEBSOCKET
        self._http = None
        self._queue = None
        self._unparsed = None
        self._headers = None
        self.session = session
        # The 101 may have crossed the HTTP high-water mark (answers the client had
        # not read yet): that blocked the HTTP phase, and the session inherits it as
        # a full transport instead.
        self._write_blocked = False
        if self.transport.get_write_buffer_size():
            session.transport_paused()
        # High-water mark 0 (1 on TLS, whose transport pauses at size >= high):
        # asyncio calls resume_writing exactly when the buffer is empty again, which
        # is when Bun fires ``drain``.
        self.transport.set_write_buffer_limits(high=session.ws.high_water, low=0)
        self.update_reading()
        session.opened()
        if self._early_bytes is not None:
            # An async fetch may go on awaiting after upgrade(): the frames that came
            # with the handshake still go first, right after this loop iteration.
            server.loop.call_soon(self._release_early_bytes)
        else:
            self._hand_reads_to(session)

    def _hand_reads_to(self, session: WebSocketSession) -> None:
        """From now on reads go straight to the session's compiled read path."""
        if not self.session_reads_directly or self.phase is not WEBSOCKET:
            return
        set_protocol = getattr(self.transport, "set_protocol", None)
        if set_protocol is not None and not self.transport.is_closing():
            set_protocol(session)

    def _release_early_bytes(self) -> None:
        """Dispatch the frames that arrived with the handshake, before any read after."""
        held = self._early_bytes
        if held is None:
            return
        self._early_bytes = None
        self.update_reading()
        session = self.session
        if self.phase is not WEBSOCKET or session is None:
            return
        if held:
            session.data_received(held)
        if self._peer_eof and self.phase is WEBSOCKET:
            self.transport.close()  # the client had already shut down its side
        else:
            self._hand_reads_to(session)

    # ================================================================ timers
    def check_timers(self, now: float) -> float | None:
        """Called by the server tick: the HTTP deadlines here, the session's there.
        Returns when the tick must look next (None: not until something changes)."""
        if self.phase is WEBSOCKET:
            session = self.session
            return None if session is None else session.check_timers(now)
        if self.phase is HTTP:
            self._check_http_timers(now)
            # Every tick while in HTTP: it watches the client read its answers.
            # Admission bounds these connections (max_pending_handshakes).
            return now if self.phase is HTTP else None
        return None

    def _check_http_timers(self, now: float) -> None:
        """``handshake_timeout`` bounds each wait for the client: for its next request,
        and for it to read the answers it was sent (then the connection is aborted:
        a plain close would wait for the unread answers forever)."""
        transport = self.transport
        unsent = transport.get_write_buffer_size()
        if unsent and unsent < self._unsent:
            # A slow but steady reader: the wait is for it to read *something*.
            self.deadline = now + self.server.handshake_timeout
        self._unsent = unsent
        if self._write_blocked and unsent <= HTTP_WRITE_LIMIT // 4:
            self.resume_writing()  # a transport that never resumed us
        if now < self.deadline:
            return
        stream = self._stream
        if self._fetch_running and stream is not None and not self._queue and not stream.full:
            # The running fetch waits for a body the client stopped sending (it is
            # told http.disconnect); a full stream is the app's to read.
            stream.client_gone()
            self._stream = None
            transport.abort()
            return
        if self._fetch_running:
            # fetch is the application's to bound; an upgrade left deciding keeps the
            # client's early frames, so it gets one more timeout, then the connection ends
            if self._early_bytes is not None and now >= self.deadline + self.server.handshake_timeout:
                transport.abort()
            return
        if self._close_after or self._write_blocked or transport.get_write_buffer_size():
            transport.abort()
        else:
            self._close_http()


class WrittenAnswer:
    """What a ``fetch`` returns after writing its answer to ``req.connection.transport``
    itself, in its turn (the ASGI bridge streams responses this way); ``close`` ends
    the connection after it (an app that failed mid-answer, ``Connection: close``)."""

    __slots__ = ("close",)

    def __init__(self, close: bool) -> None:
        self.close = close


class _Rejected(Exception):
    """Raised inside an httptools callback to stop parsing a refused request."""
