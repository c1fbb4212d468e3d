"""The compiled per-message path of a WebSocket: the write side and dispatch.

Compiled because a benchmark showed it must be (bench/RESULTS.md, "Dispatch"): the
dispatch loop, ``send`` and fan-out are the per-message work. Closing,
subscriptions, pause/resume and timers stay readable Python (session.py,
websocket.py, pubsub.py).

* ``WebSocketCore``: the one owner of a socket's outgoing bytes: data frames with
  Bun's send statuses, control frames (the one-pending-pong rule), the Close frame,
  the cork, and the fill state of the transport;
* ``dispatch()``: delivers parsed events to a session inside one cork;
* ``fan_out()`` / ``flush_queued()``: frame-once publish and the end-of-tick write;
* ``SessionCore``: the read side of an upgraded connection as the transport's
  protocol (``get_buffer``/``buffer_updated`` -> parser -> ``dispatch``), the base
  of :class:`bunws.session.WebSocketSession`.

The transport's fill level comes from ``pause_writing``/``resume_writing``
(high-water mark 0) and is confirmed after every write by asking the transport
(``check_fill``), so a send asks for the buffer size again only while bytes are
actually waiting there.
"""

from cpython.bytearray cimport PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_GET_SIZE
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.unicode cimport PyUnicode_AsUTF8String
from libc.time cimport time_t

cdef extern from "<time.h>" nogil:
    ctypedef int clockid_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clk_id, timespec *tp)
    clockid_t CLOCK_MONOTONIC

from bunws._frame cimport (
    append_server_frame, server_frame,
    TEXT, BINARY, CLOSE, PING, PONG, PROTOCOL_ERROR,
)

import enum
import time

from bunws._frame import encode_close
from bunws.errors import InvalidArgument, InvalidType, WrongThreadError

# Bun's per-loop cork buffer is 16 KiB: past that the queue is written out even
# inside a handler, so backpressure becomes visible to the caller.
cdef Py_ssize_t CORK_FLUSH_THRESHOLD = 16 * 1024

# binary_type names (ours first, Bun's spellings as aliases) -> binary_kind.
BINARY_TYPES = {
    "bytes": 0, "nodebuffer": 0, "buffer": 0, "Buffer": 0,
    "bytearray": 1, "arraybuffer": 1, "ArrayBuffer": 1,
    "memoryview": 2, "uint8array": 2, "Uint8Array": 2,
}
cdef tuple BINARY_NAMES = ("bytes", "bytearray", "memoryview")
cdef bytes EMPTY_PING = b"\x89\x00"


cdef class Counters:
    """A server's traffic counters, kept in C integers so counting costs a few
    adds per message (bench/RESULTS.md, "Stats counters"). Every field is readable
    and writable from Python (``Server.stats()`` reads them; protocol.py adds HTTP
    bytes)."""

    def snapshot(self):
        """The counters as a dict of ints."""
        return {
            "messages_received": self.messages_received,
            "messages_sent": self.messages_sent,
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "sends_backpressured": self.sends_backpressured,
            "sends_dropped": self.sends_dropped,
            "drains": self.drains,
            "deliveries": self.deliveries,
        }


# Sockets attached without a server's counters (tests, a client) count here:
# one shared object rather than one more allocation per socket.
cdef Counters UNCOUNTED = Counters()


cdef inline bytearray out_of(WebSocketCore ws):
    """The socket's own outgoing buffer, made on first use: an idle socket holds
    none (flush hands the buffer to the transport and starts over from None)."""
    if ws.out is None:
        ws.out = bytearray()
    return ws.out


cdef inline Py_ssize_t out_size(WebSocketCore ws):
    return 0 if ws.out is None else PyByteArray_GET_SIZE(ws.out)


cdef inline int queue_shared(WebSocketCore ws, object frame) except -1:
    """Queue ``frame`` (bytes shared with other receivers) after what ``ws`` holds.

    Published frames are queued by reference, not copied into each receiver's
    buffer: the copies were the cost of fan-out (bench/RESULTS.md, "fan-out by
    reference"). Each receiver's frames go to the transport in one writelines()
    at flush time (vectored where the transport supports it)."""
    if ws.shared_frames is None:
        ws.shared_frames = []
    if out_size(ws):
        ws.shared_frames.append(ws.out)
        ws.shared_bytes += PyByteArray_GET_SIZE(ws.out)
        ws.out = None
    ws.shared_frames.append(frame)
    ws.shared_bytes += PyBytes_GET_SIZE(frame)
    return 0


cpdef object as_bytes(object data, str what):
    """``bytes`` of a bytes-like argument; ``InvalidType`` for anything else."""
    if type(data) is bytes:
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise InvalidType(f"{what} expects bytes-like data, got {type(data).__name__}")


cdef inline bytes utf8(str text, str what):
    try:
        return PyUnicode_AsUTF8String(text)
    except UnicodeEncodeError as exc:
        # A lone surrogate cannot go on the wire as UTF-8: say so in bunws's terms
        # (Bun would silently send U+FFFD; a Python caller gets told).
        raise InvalidArgument(
            f"{what} expects text that is valid Unicode: {exc.reason} at index {exc.start}"
        ) from None


def encode_text(str text, str what="send"):
    """UTF-8 of ``text``; ``InvalidArgument`` (a ValueError) for lone surrogates."""
    return utf8(text, what)


cdef inline bint check_compress(object compress) except -1:
    if compress is False:
        return False
    if compress is True:
        return True
    raise InvalidType("send expects compress to be a bool")


cdef class WebSocketCore:
    """Write-side state and the send methods of :class:`bunws.ServerWebSocket`.

    The methods without a Bun name (``attach`` ... ``mark_closed``) are the
    engine's interface for :mod:`bunws.session`; applications do not call them.
    """

    def __cinit__(self):
        self.ready_state = 1
        self.counters = UNCOUNTED

    def attach(self, transport, loop, Py_ssize_t limit, bint close_on_limit,
               on_over_limit, deflater=None, bint shared_deflate=False, counters=None):
        """Wire the socket to its transport and options (once, at upgrade);
        ``on_over_limit(ws)`` runs soon after close_on_backpressure_limit trips;
        ``counters``: the server's :class:`Counters` to count into."""
        if counters is not None:
            self.counters = <Counters?>counters
        self.transport = transport
        self.loop = loop
        self.loop_thread = PyThread_get_thread_ident()
        # asyncio's TLS transport pauses when size >= high (the TCP one when size > high):
        # 1 there keeps "paused" meaning "bytes are waiting" on both.
        self.high_water = 1 if transport.get_extra_info("ssl_object") is not None else 0
        self.limit = limit
        self.close_on_limit = close_on_limit
        self.on_over_limit = on_over_limit
        self.deflater = deflater
        self.shared_deflate = shared_deflate

    # ------------------------------------------------------------------ sending
    def send(self, data, compress=False):
        """Send ``str`` as a text frame, bytes-like as a binary frame.

        Returns the payload byte count, -1 when queued behind buffered bytes, or 0
        when dropped (closed, or over ``backpressure_limit``) or the payload is empty.
        """
        cdef bint z = check_compress(compress)
        if type(data) is str:
            return self.queue_frame(TEXT, utf8(data, "send"), z)
        if type(data) is bytes:
            return self.queue_frame(BINARY, data, z)
        if isinstance(data, (bytearray, memoryview)):
            return self.queue_frame(BINARY, bytes(data), z)
        # Bun String()s anything else; in Python a wrong type is a bug worth raising.
        raise InvalidType(f"send expects str or bytes-like data, got {type(data).__name__}")

    def send_text(self, data, compress=False):
        if type(data) is not str:
            raise InvalidType(f"send_text expects a str, got {type(data).__name__}")
        return self.queue_frame(TEXT, utf8(data, "send_text"), check_compress(compress))

    def send_binary(self, data, compress=False):
        cdef bint z = check_compress(compress)
        return self.queue_frame(BINARY, as_bytes(data, "send_binary"), z)

    def ping(self, data=b""):
        """Send a Ping (payload of at most 125 bytes)."""
        return self.send_control(PING, data, "ping")

    def pong(self, data=b""):
        """Send an unsolicited Pong (payload of at most 125 bytes)."""
        return self.send_control(PONG, data, "pong")

    cdef object send_control(self, int opcode, object data, str what):
        payload = utf8(data, what) if type(data) is str else as_bytes(data, what)
        if PyBytes_GET_SIZE(payload) > 125:
            raise InvalidArgument(
                f"The data size must not be greater than 125 bytes. "
                f"Received {PyBytes_GET_SIZE(payload)} bytes."
            )
        return self.queue_frame(opcode, payload, False)

    cdef Py_ssize_t queue_frame(self, int opcode, object payload, bint compress) except -2:
        """Queue one frame with Bun's status rules (docs/bun-behaviour.md §2, §3)."""
        if PyThread_get_thread_ident() != self.loop_thread:
            self.check_thread()
        if self.ready_state != 1 or self.limit_tripped:
            self.counters.sends_dropped += 1
            return 0
        cdef Py_ssize_t limit = self.limit
        if limit and self.buffered() > limit:
            self.over_limit()
            self.counters.sends_dropped += 1
            return 0
        cdef Py_ssize_t size = PyBytes_GET_SIZE(payload)
        cdef bint rsv1 = False
        if compress and size and opcode <= BINARY and self.deflater is not None:
            payload = self.deflater.compress(payload)
            rsv1 = True
        append_server_frame(out_of(self), opcode, payload, rsv1)
        if opcode <= BINARY:
            self.counters.messages_sent += 1
        if self.corked:
            if out_size(self) + self.shared_bytes > CORK_FLUSH_THRESHOLD:
                self.flush()
        else:
            self.flush()
        if self.write_paused:
            self.counters.sends_backpressured += 1
            return -1
        return size

    cdef Py_ssize_t buffered(self) except -1:
        """Bytes waiting in user space or the transport that count against the limit."""
        cdef Py_ssize_t n = 0
        if self.write_paused:
            n = self.transport.get_write_buffer_size()
        if not self.corked:
            n += out_size(self) + self.shared_bytes
        return n

    cpdef flush(self):
        """Hand the queued bytes to the transport in one write."""
        cdef bytearray out = self.out
        cdef Py_ssize_t size = out_size(self)
        cdef list shared_frames = self.shared_frames
        if shared_frames is not None:
            self.counters.bytes_sent += self.shared_bytes + size
            self.shared_frames = None
            self.shared_bytes = 0
            if size:
                self.out = None
                shared_frames.append(out)
            self.transport.writelines(shared_frames)
        elif size:
            # The buffer goes to the transport (which may keep a reference to it):
            # the next frame starts a fresh one.
            self.out = None
            self.counters.bytes_sent += size
            self.transport.write(out)
        else:
            return
        if not self.write_paused:
            self.check_fill()

    cdef int check_fill(self) except -1:
        """Ask the transport whether bytes are waiting, instead of trusting it to
        call ``pause_writing``: CPython 3.12.0-3.12.8 and 3.13.0-3.13.1 never do
        from ``writelines`` (fixed in 3.12.9 / 3.13.2)."""
        transport = self.transport
        if not transport.get_write_buffer_size():
            return 0
        self.write_paused = True
        if not transport.is_closing():
            # This re-runs the transport's own pause check: it now calls
            # pause_writing, and so resume_writing (drain) once it is empty.
            transport.set_write_buffer_limits(high=self.high_water, low=0)
        return 0

    cdef int over_limit(self) except -1:
        if self.close_on_limit and not self.limit_tripped:
            # Bun: no Close frame, buffered data discarded, close handler (1006, "")
            # right after the current handler returns; every later send is dropped.
            self.limit_tripped = True
            self.loop.call_soon(self.on_over_limit, self)
        return 0

    def cork(self, fn):
        """Run ``fn(ws)``; everything it sends leaves in one write afterwards.

        Returns ``fn``'s result and re-raises its exception; nested corks just run.
        """
        if not callable(fn):
            raise InvalidType("cork expects a callable")
        return self.run_corked(fn, self)

    cpdef check_thread(self):
        """Raise ``WrongThreadError`` unless called on the socket's event loop thread:
        the socket's state is the loop's alone (a thread would corrupt it)."""
        if PyThread_get_thread_ident() != self.loop_thread and self.loop is not None:
            raise WrongThreadError(
                "ServerWebSocket methods must be called on the event loop's thread; "
                "from another thread use server.publish_threadsafe() or "
                "loop.call_soon_threadsafe()")

    def run_corked(self, fn, *args):
        """The one cork helper: ``fn(*args)`` with every send it makes in one write."""
        if PyThread_get_thread_ident() != self.loop_thread:
            self.check_thread()
        self.corked += 1
        try:
            return fn(*args)
        finally:
            self.corked -= 1
            if not self.corked and self.ready_state == 1:
                self.flush()

    # ------------------------------------------------------------------ state
    @property
    def buffered_amount(self):
        """Bytes of complete frames waiting in user space (not the cork buffer)."""
        if self.ready_state != 1:
            return 0
        cdef Py_ssize_t pending = 0 if self.corked else out_size(self) + self.shared_bytes
        return self.transport.get_write_buffer_size() + pending

    def get_buffered_amount(self):
        return self.buffered_amount

    @property
    def binary_type(self):
        """How binary messages, pings and pongs are handed over: ``"bytes"``
        (default), ``"bytearray"`` or ``"memoryview"`` (Bun's names are aliases)."""
        return BINARY_NAMES[self.binary_kind]

    @binary_type.setter
    def binary_type(self, value):
        try:
            self.binary_kind = BINARY_TYPES[value]
        except (KeyError, TypeError):
            raise InvalidArgument(
                f"binary_type must be one of 'bytes', 'bytearray', 'memoryview', got {value!r}"
            ) from None

    cpdef object binary(self, object payload):
        """A received binary payload as ``binary_type`` says."""
        if self.binary_kind == 0:
            return payload
        return bytearray(payload) if self.binary_kind == 1 else memoryview(payload)

    # ------------------------------------------------------------------ engine interface
    def queue_pong(self, bytes payload):
        """Answer a Ping. RFC 6455 §5.5.3 lets us answer only the latest one: while
        the transport is full, at most one pong is kept back instead of one per ping."""
        if self.ready_state != 1:
            return
        if self.write_paused:
            self.pending_pong = payload
        else:
            append_server_frame(out_of(self), PONG, payload, False)
            if not self.corked:
                self.flush()

    def send_keepalive(self):
        """The idle timer's empty Ping (not subject to the backpressure limit)."""
        if self.ready_state == 1:
            out_of(self).extend(EMPTY_PING)
            if not self.corked:
                self.flush()

    def queue_close(self, code, str reason):
        """The Close frame, after everything queued (``code`` None: empty payload)."""
        out_of(self).extend(encode_close(code, reason))
        self.flush()

    def transport_paused(self):
        self.write_paused = True

    def transport_resumed(self):
        """The transport's buffer is empty again: send the pong kept back; returns
        whether ``drain`` is due."""
        self.write_paused = False
        if self.ready_state != 1:
            return False
        self.counters.drains += 1
        pong = self.pending_pong
        if pong is not None:
            self.pending_pong = None
            append_server_frame(out_of(self), PONG, pong, False)
            self.flush()
        return True

    def hold_inbound(self, bint held):
        """Mirror of ``pause()``/``resume()`` that ``dispatch`` checks per event."""
        self.is_paused = held

    def release(self):
        """The connection is gone: drop what ties the socket to its session and its
        compressor, so a closed socket the application still holds keeps nothing."""
        self.on_over_limit = None
        self.deflater = None

    def mark_closed(self):
        """Closed: drop everything queued; returns whether it was open."""
        if self.ready_state != 1:
            return False
        self.ready_state = 3
        self.out = None
        self.shared_frames = None
        self.shared_bytes = 0
        self.pending_pong = None
        return True


def dispatch(WebSocketCore ws, list events, object session, Py_ssize_t nbytes=0):
    """Deliver ``events`` (flat ``[opcode, payload, ...]``) to ``session``;
    ``nbytes``: the wire bytes they were parsed from, for the counters.

    Runs inside one cork, so all sends made by the handlers for one read batch leave
    in one write. Data messages go to ``session.message``; everything rarer goes to
    the session's methods (``on_ping``, ``on_pong``, ``on_close``,
    ``on_protocol_error``, ``handler_error``, ``spawn``, ``hold``).
    """
    cdef object message = session.message
    cdef bint async_message = session.async_message
    cdef Py_ssize_t n = len(events)
    cdef Py_ssize_t i = 0
    cdef int opcode
    cdef object payload, result
    cdef Counters counters = ws.counters
    counters.bytes_received += nbytes
    ws.corked += 1
    try:
        while i < n:
            if ws.ready_state != 1:
                break
            if ws.is_paused:
                session.hold(events[i:])
                break
            opcode = events[i]
            payload = events[i + 1]
            i += 2
            if opcode == TEXT or opcode == BINARY:
                counters.messages_received += 1
                if message is None:
                    continue
                if opcode == BINARY and ws.binary_kind:
                    payload = ws.binary(payload)
                try:
                    result = message(ws, payload)
                except Exception as exc:
                    session.handler_error(exc)
                    continue
                if async_message and result is not None:
                    session.spawn(result)
            elif opcode == PING:
                session.on_ping(payload)
            elif opcode == PONG:
                session.on_pong(payload)
            elif opcode == CLOSE:
                session.on_close(payload[0], payload[1])
                break
            elif opcode == PROTOCOL_ERROR:
                session.on_protocol_error(payload[0], payload[1])
                break
    finally:
        ws.corked -= 1
        if not ws.corked and ws.ready_state == 1:
            ws.flush()


def fan_out(dict receivers, int opcode, bytes payload, bint compress, object exclude,
            list flush_list):
    """Queue one published message for every receiver; return Bun's status
    (docs/bun-behaviour.md §5).

    The frame is built once; receivers sharing a stateless compressor share one
    compressed frame; a context-takeover compressor deflates for its own socket only.
    Returns the payload size if every receiver took it, -1 if any receiver now has
    bytes buffered, 0 if nobody received it or any receiver was over its limit.
    """
    cdef Py_ssize_t size = PyBytes_GET_SIZE(payload)
    cdef object frame = server_frame(opcode, payload, False)
    cdef dict deflated = None   # stateless deflater -> its compressed frame
    cdef object zframe
    cdef Py_ssize_t count = 0, buffered
    cdef bint dropped = False, buffering = False
    cdef WebSocketCore ws
    for obj in receivers:
        if obj is exclude:
            continue
        ws = <WebSocketCore>obj
        count += 1
        if ws.limit_tripped:
            dropped = True
            continue
        buffered = ws.buffered()
        if ws.limit and buffered > ws.limit:
            ws.over_limit()
            dropped = True
            continue
        if compress and size and ws.deflater is not None:
            if ws.shared_deflate:
                # Sockets with the same stateless deflater share one compressed frame.
                if deflated is None:
                    deflated = {}
                zframe = deflated.get(ws.deflater)
                if zframe is None:
                    zframe = deflated[ws.deflater] = server_frame(
                        opcode, ws.deflater.compress(payload), True)
                queue_shared(ws, zframe)
            else:
                append_server_frame(out_of(ws), opcode, ws.deflater.compress(payload), True)
        else:
            queue_shared(ws, frame)
        ws.counters.deliveries += 1
        ws.counters.messages_sent += 1
        if ws.corked and out_size(ws) + ws.shared_bytes > CORK_FLUSH_THRESHOLD:
            ws.flush()  # a socket publishing to itself inside its handler: Bun's 16 KiB rule
        if ws.write_paused:
            buffering = True
        if not ws.corked and not ws.queued:
            ws.queued = True
            flush_list.append(ws)
    if not count or dropped:
        return 0
    if buffering:
        return -1
    return size


def flush_queued(list pending):
    """End of tick: one write per receiver for everything published to it."""
    cdef WebSocketCore ws
    for obj in pending:
        ws = <WebSocketCore>obj
        ws.queued = False
        if ws.ready_state == 1 and not ws.corked:
            ws.flush()


class SessionState(enum.IntEnum):
    """Where the close handshake is (``ws.ready_state`` reports Bun's 1 or 3)."""

    OPEN = 1  # frames flow both ways
    CLOSING = 2  # our Close frame is out, or we answered the peer's: TCP ends next
    CLOSED = 3  # the TCP connection is gone


cdef object STATE_OPEN = SessionState.OPEN
cdef object STATE_CLOSING = SessionState.CLOSING


cdef inline double monotonic_now():
    """``time.monotonic()`` (the stock loop's ``time()``) without a Python call."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef class SessionCore:
    """The read side of one upgraded connection, compiled because every read of
    every socket runs it (bench/RESULTS.md, "Compiled read path"): once the 101 is
    out, the session is the transport's protocol, so a read goes
    ``get_buffer`` -> ``recv_into`` -> ``buffer_updated`` -> parser -> ``dispatch``
    with no Python frame before the ``message`` handler.

    The rest of the session (closing, timers, flow control, handlers) is Python, in
    :class:`bunws.session.WebSocketSession`, which subclasses this.
    """

    def setup(self, WebSocketCore ws, parser, receive_buffer, clock, message, bint async_message):
        """Wire the read path (once, by the session's constructor). ``clock`` is
        the server's: on the stock loop ``time.monotonic``, which is read in C."""
        self.ws = ws
        self.parser = parser
        self.receive_buffer = receive_buffer
        self.state = STATE_OPEN
        if clock is time.monotonic:
            clock = None
        self.clock = clock
        self.message = message
        self.async_message = async_message
        self.last_inbound = self.now()

    cpdef double now(self) except? -1.0:
        """The loop's clock (what the server's timer tick compares with)."""
        if self.clock is None:
            return monotonic_now()
        return self.clock()

    def get_buffer(self, sizehint):
        """The server's one receive buffer (every consumer copies what it keeps)."""
        return self.receive_buffer

    def buffer_updated(self, Py_ssize_t nbytes):
        """``nbytes`` arrived in the receive buffer."""
        self.data_received(self.receive_buffer[:nbytes])

    def data_received(self, data):
        """Bytes from the peer: parse the frames and dispatch them (or hold them
        while paused); after our Close, only the peer's Close matters."""
        self.last_inbound = self.now()
        self.ping_sent = False
        state = self.state
        if state is STATE_OPEN:
            events = self.parser.feed_events(data)
            if self.backlog is not None:
                # Paused: keep parsing (bounded by the limits) but hold the events.
                self.backlog += events
                self.ws.counters.bytes_received += len(data)
            else:
                dispatch(self.ws, events, self, len(data))
        elif state is STATE_CLOSING:
            self.closing_data(data)  # the subclass's: after our Close
