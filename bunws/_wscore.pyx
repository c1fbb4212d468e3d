"""The compiled per-message path of a ServerWebSocket.

Why this is compiled: ``bench/bench_dispatch.py`` (128 pipelined 16 B frames per
read, a plain Python ``message`` handler calling ``ws.send``) measured 588 ns per
message with the dispatch loop, ``send`` and fan-out written in Python; the same
path here runs in about a quarter of that (bench/RESULTS.md, "Dispatch": 532 vs
145 ns, both trees measured back to back). Everything
else about a socket (closing, subscriptions, pause/resume, timers) stays readable
Python in websocket.py and protocol.py.

What lives here:
* ``WebSocketCore``: the write side's state and ``send``/``send_text``/
  ``send_binary``/``ping``/``pong``/``cork`` with Bun's statuses (docs/bun-behaviour.md §2);
* ``dispatch()``: delivers parsed events to the handlers inside one cork;
* ``fan_out()`` / ``flush_queued()``: frame-once publish and the end-of-tick write.

The transport's fill level is tracked through the protocol's ``pause_writing`` /
``resume_writing`` (high-water mark 0), confirmed after every write by asking the
transport (``_check_fill``), so a send asks for the buffer size again only while
bytes are actually waiting there.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8String
from libc.stdint cimport uint8_t
from libc.string cimport memcpy

from bunws._frame cimport frame_header

from bunws.errors import InvalidArgument, InvalidType

# Bun's per-loop cork buffer is 16 KiB (uWS LoopData.h): past that the queue is
# written out even inside a handler, so backpressure becomes visible to the caller.
cdef Py_ssize_t CORK_FLUSH_THRESHOLD = 16 * 1024

# A published frame is queued by reference, not copied into each receiver's buffer.
# bench/run.py fan-out, 1 000 subscribers x 1 KiB: the copies filled a fresh 32 MB
# of buffers per batch (perf: memmove 20 %, page faults and brk 15 %) and ran at
# 0.6 M deliveries/s; by reference the frames are joined per receiver at write time
# in one cache-warm buffer (uvloop writes the list vectored, with no join at
# all): 3.35 M. Measured the same way, 64 B frames gain too (1.8x at
# W128), so there is no size threshold.

cdef enum:
    OP_TEXT = 1
    OP_BINARY = 2
    OP_CLOSE = 8
    OP_PING = 9
    OP_PONG = 10
    OP_ERROR = -1   # pseudo-opcode: a protocol error met while paused


cdef inline int append_frame(bytearray out, int opcode, object payload, bint rsv1) except -1:
    """Append an unmasked FIN frame carrying ``payload`` (bytes) to ``out``."""
    cdef uint8_t hdr[14]
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    cdef Py_ssize_t h = frame_header(hdr, opcode, n, True, rsv1, NULL)
    cdef Py_ssize_t old = PyByteArray_GET_SIZE(out)
    PyByteArray_Resize(out, old + h + n)
    cdef char *dst = PyByteArray_AS_STRING(out) + old
    memcpy(dst, hdr, h)
    memcpy(dst + h, PyBytes_AS_STRING(payload), n)
    return 0


cdef inline int queue_shared(WebSocketCore ws, object frame) except -1:
    """Queue ``frame`` (bytes shared with other receivers) after what ``ws`` holds."""
    if ws._chunks is None:
        ws._chunks = []
    if PyByteArray_GET_SIZE(ws._out):
        ws._chunks.append(ws._out)
        ws._chunked += PyByteArray_GET_SIZE(ws._out)
        ws._out = bytearray()
    ws._chunks.append(frame)
    ws._chunked += PyBytes_GET_SIZE(frame)
    return 0


cdef inline object as_bytes(object data, str what):
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


cdef object frame_bytes(int opcode, object payload, bint rsv1):
    """One unmasked FIN frame as ``bytes``, built in place: a publish copies its
    payload once, into the frame every receiver shares."""
    cdef uint8_t hdr[14]
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    cdef Py_ssize_t h = frame_header(hdr, opcode, n, True, rsv1, NULL)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, h + n)
    cdef char *dst = PyBytes_AS_STRING(out)
    memcpy(dst, hdr, h)
    memcpy(dst + h, PyBytes_AS_STRING(payload), n)
    return out


cdef class WebSocketCore:
    """Write-side state and the send methods of :class:`bunws.ServerWebSocket`."""

    def __cinit__(self):
        self._out = bytearray()
        self._ready_state = 1

    # ------------------------------------------------------------------ sending
    def send(self, data, compress=False):
        """Send ``str`` as a text frame, bytes-like as a binary frame.

        Returns the payload byte count, -1 when queued behind buffered bytes, or 0
        when dropped (closed, or over ``backpressure_limit``) or the payload is empty.
        """
        cdef bint z = check_compress(compress)
        if type(data) is str:
            return self._send(OP_TEXT, utf8(data, "send"), z)
        if type(data) is bytes:
            return self._send(OP_BINARY, data, z)
        if isinstance(data, (bytearray, memoryview)):
            return self._send(OP_BINARY, bytes(data), z)
        # Bun String()s anything else; in Python a wrong type is a bug worth raising.
        raise InvalidType(f"send expects str or bytes-like data, got {type(data).__name__}")

    def send_text(self, data, compress=False):
        if type(data) is not str:
            raise InvalidType(f"send_text expects a str, got {type(data).__name__}")
        return self._send(OP_TEXT, utf8(data, "send_text"), check_compress(compress))

    def send_binary(self, data, compress=False):
        cdef bint z = check_compress(compress)
        return self._send(OP_BINARY, as_bytes(data, "send_binary"), z)

    def ping(self, data=b""):
        """Send a Ping (payload of at most 125 bytes)."""
        return self._send_control(OP_PING, data, "ping")

    def pong(self, data=b""):
        """Send an unsolicited Pong (payload of at most 125 bytes)."""
        return self._send_control(OP_PONG, data, "pong")

    cdef object _send_control(self, int opcode, object data, str what):
        payload = utf8(data, what) if type(data) is str else as_bytes(data, what)
        if PyBytes_GET_SIZE(payload) > 125:
            raise InvalidArgument(
                f"The data size must not be greater than 125 bytes. "
                f"Received {PyBytes_GET_SIZE(payload)} bytes."
            )
        return self._send(opcode, payload, False)

    cdef Py_ssize_t _send(self, int opcode, object payload, bint compress) except -2:
        if self._ready_state != 1 or self._doomed:
            return 0
        cdef Py_ssize_t limit = self._limit
        if limit and self._buffered() > limit:
            self._over_limit()
            return 0
        cdef Py_ssize_t size = PyBytes_GET_SIZE(payload)
        cdef bint rsv1 = False
        if compress and size and opcode <= OP_BINARY and self._deflater is not None:
            payload = self._deflater.compress(payload)
            rsv1 = True
        append_frame(self._out, opcode, payload, rsv1)
        if self._corked:
            if PyByteArray_GET_SIZE(self._out) + self._chunked > CORK_FLUSH_THRESHOLD:
                self._flush()
        else:
            self._flush()
        if self._write_paused:
            return -1
        return size

    cdef Py_ssize_t _buffered(self) except -1:
        """Bytes waiting in user space that count against the limit."""
        cdef Py_ssize_t n = 0
        if self._write_paused:
            n = self._transport.get_write_buffer_size()
        if not self._corked:
            n += PyByteArray_GET_SIZE(self._out) + self._chunked
        return n

    cpdef _flush(self):
        """Hand the queued bytes to the transport in one write."""
        cdef bytearray out = self._out
        cdef list chunks = self._chunks
        if chunks is not None:
            self._chunks = None
            self._chunked = 0
            if PyByteArray_GET_SIZE(out):
                self._out = bytearray()
                chunks.append(out)
            self._transport.writelines(chunks)
        elif PyByteArray_GET_SIZE(out):
            # A fresh buffer rather than clearing in place: a transport may keep a
            # reference to what it was given.
            self._out = bytearray()
            self._transport.write(out)
        else:
            return
        if not self._write_paused:
            self._check_fill()

    cdef int _check_fill(self) except -1:
        """Ask the transport whether bytes are waiting, instead of trusting it to
        call ``pause_writing``: CPython 3.12.0-3.12.8 and 3.13.0-3.13.1 never do
        from ``writelines`` (fixed in 3.12.9 / 3.13.2)."""
        transport = self._transport
        if not transport.get_write_buffer_size():
            return 0
        self._write_paused = True
        if not transport.is_closing():
            # This re-runs the transport's own pause check: it now calls
            # pause_writing, and so resume_writing (drain) once it is empty.
            transport.set_write_buffer_limits(high=0)
        return 0

    def _discard(self):
        """Drop everything queued (the socket is closed)."""
        self._out = bytearray()
        self._chunks = None
        self._chunked = 0

    cpdef _over_limit(self):
        if self._close_on_limit and not self._doomed:
            # Bun: no Close frame, buffered data discarded, close handler (1006, "")
            # right after the current handler returns; every later send is dropped.
            self._doomed = True
            self._server._loop.call_soon(self._conn.abort, 1006, "")

    def cork(self, fn):
        """Run ``fn(ws)``; everything it sends leaves in one write afterwards.

        Returns ``fn``'s result and re-raises its exception; nested corks just run.
        """
        if not callable(fn):
            raise InvalidType("cork expects a callable")
        self._corked += 1
        try:
            return fn(self)
        finally:
            self._corked -= 1
            if not self._corked and self._ready_state == 1:
                self._flush()


def dispatch(object conn, WebSocketCore ws, list events, Py_ssize_t start, object handler):
    """Deliver ``events`` (flat ``[opcode, payload, ...]``) from ``start`` on.

    Runs inside one cork, so all sends made by the handlers for one read batch leave
    in one write. Rare events (ping, pong, close, errors, async handlers) call back
    into the Python ``Connection``.
    """
    cdef object message = handler.message
    cdef bint async_message = "message" in handler.async_handlers
    cdef Py_ssize_t n = len(events)
    cdef Py_ssize_t i = start
    cdef int opcode
    cdef object payload, result
    ws._corked += 1
    try:
        while i < n:
            if ws._ready_state != 1:
                break
            if ws._paused:
                conn._hold(events[i:])
                break
            opcode = events[i]
            payload = events[i + 1]
            i += 2
            if opcode == OP_TEXT or opcode == OP_BINARY:
                if message is None:
                    continue
                if opcode == OP_BINARY and ws._binary_kind:
                    payload = bytearray(payload) if ws._binary_kind == 1 else memoryview(payload)
                try:
                    result = message(ws, payload)
                except Exception as exc:
                    conn._handler_error(exc)
                    continue
                if async_message and result is not None:
                    conn._spawn(result)
            elif opcode == OP_PING:
                conn._on_ping(payload)
            elif opcode == OP_PONG:
                conn._on_pong(payload)
            elif opcode == OP_CLOSE:
                conn._peer_close(payload[0], payload[1])
                break
            elif opcode == OP_ERROR:
                conn._protocol_error(payload[0], payload[1])
                break
    finally:
        ws._corked -= 1
        if not ws._corked and ws._ready_state == 1:
            ws._flush()


def fan_out(dict receivers, int opcode, bytes payload, bint compress, object exclude,
            list flush_list):
    """Queue one published message for every receiver; return Bun's status (§5).

    The frame is built once; receivers sharing a stateless compressor share one
    compressed frame; a context-takeover compressor deflates for its own socket only.
    Returns the payload size if every receiver took it, -1 if any receiver now has
    bytes buffered, 0 if nobody received it or any receiver was over its limit.
    """
    cdef Py_ssize_t size = PyBytes_GET_SIZE(payload)
    cdef object frame = frame_bytes(opcode, payload, False)
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
        if ws._doomed:
            dropped = True
            continue
        buffered = ws._buffered()
        if ws._limit and buffered > ws._limit:
            ws._over_limit()
            dropped = True
            continue
        if compress and size and ws._deflater is not None:
            if ws._shared_deflate:
                # Sockets with the same stateless deflater share one compressed frame.
                if deflated is None:
                    deflated = {}
                zframe = deflated.get(ws._deflater)
                if zframe is None:
                    zframe = deflated[ws._deflater] = frame_bytes(
                        opcode, ws._deflater.compress(payload), True)
                queue_shared(ws, zframe)
            else:
                append_frame(ws._out, opcode, ws._deflater.compress(payload), True)
        else:
            queue_shared(ws, frame)
        if ws._write_paused:
            buffering = True
        if not ws._corked and not ws._queued:
            ws._queued = True
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
        ws._queued = False
        if ws._ready_state == 1 and not ws._corked:
            ws._flush()
