"""The compiled per-message path of the WebSocket client (bunws/client.py).

Compiled for the same reason as the server's core (bench/RESULTS.md, "Client
echo"): per message the client parses, queues, masks and writes, and in Python
that bookkeeping costs more than the codec. ``ClientCore`` is the asyncio
Protocol of one client connection after (and during) the opening handshake:

* read side: bytes -> ``FrameParser(server=False)`` -> a bounded queue of
  messages that ``recv`` pops (reading pauses when it holds ``max_queue``);
* write side: frames masked with a fresh key each (keys come from one
  ``os.urandom`` call per 1024 frames) into one buffer written once per loop
  iteration, or at once past 16 KiB; ``write_paused`` tells ``send`` to wait.

Everything rarer (the handshake's bytes, Ping/Pong/Close, errors, the end of the
connection) is handed to the session object, ``bunws.client.ClientConnection``.
"""

import os
from collections import deque

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_GET_SIZE
from libc.stdint cimport uint8_t

from bunws._frame cimport (
    FrameParser, append_masked_frame,
    TEXT, BINARY, CLOSE, PING, PONG, PROTOCOL_ERROR,
)

# 4 bytes per frame: one system call gives the keys of 1024 frames.
cdef Py_ssize_t KEY_BATCH = 4096
# Past this many queued bytes the buffer is written at once, not at the end of
# the loop iteration, so one burst of sends cannot grow it without bound.
cdef Py_ssize_t FLUSH_THRESHOLD = 16 * 1024


cdef class ClientCore:
    """The asyncio Protocol of one client connection.

    Args:
        session: receives ``connection_made(transport)``,
            ``handshake_data(data)`` (until :meth:`start` is called),
            ``on_pong(payload)``, ``on_close(code, reason)``,
            ``on_protocol_error(code, reason)``, ``eof_received()`` and
            ``connection_lost(exc)``.
        loop: the event loop the connection runs on.
        write_limit: high-water mark of the transport's buffer, in bytes.
        max_queue: most received messages kept before reading pauses (0: no bound).
    """

    def __init__(self, session, loop, Py_ssize_t write_limit, Py_ssize_t max_queue):
        self.session = session
        self.loop = loop
        self.write_limit = write_limit
        self.max_queue = max_queue
        self.out = bytearray()
        self.messages = deque()
        self.keys = b""

    # ------------------------------------------------------------ asyncio Protocol
    def connection_made(self, transport):
        """asyncio: the socket is connected (TLS included)."""
        self.transport = transport
        transport.set_write_buffer_limits(high=self.write_limit, low=self.write_limit // 4)
        self.session.connection_made(transport)

    def data_received(self, data):
        """asyncio: bytes arrived."""
        if self.started:
            self.feed(data)
        else:
            self.session.handshake_data(data)

    def eof_received(self):
        """asyncio: the server shut its side down; the transport then closes."""
        self.session.eof_received()
        return None

    def connection_lost(self, exc):
        """asyncio: the connection is gone; wake every waiter."""
        self.lost = True
        self.stopped = True
        self.write_paused = False
        self.out = bytearray()
        self.wake_receiver()
        self.wake_senders()
        self.session.connection_lost(exc)

    def pause_writing(self):
        """asyncio: the transport's buffer passed ``write_limit``."""
        self.write_paused = True

    def resume_writing(self):
        """asyncio: the transport's buffer fell under ``write_limit // 4``."""
        self.write_paused = False
        self.wake_senders()

    # ------------------------------------------------------------ engine interface
    def start(self, FrameParser parser, deflater, bytes leftover):
        """The handshake succeeded: parse frames from now on, starting with the
        bytes that followed the response headers."""
        self.parser = parser
        self.deflater = deflater
        self.started = True
        if leftover:
            self.feed(leftover)

    cdef int feed(self, object data) except -1:
        cdef list events = self.parser.feed_events(data)
        cdef Py_ssize_t i = 0, n = len(events)
        cdef int opcode
        cdef object messages = self.messages
        while i < n:
            opcode = events[i]
            payload = events[i + 1]
            i += 2
            if opcode == TEXT or opcode == BINARY:
                messages.append(payload)
            elif opcode == PING:
                if not self.stopped:
                    self.queue_frame(PONG, payload, True, False)
            elif opcode == PONG:
                self.session.on_pong(payload)
            elif opcode == CLOSE:
                self.stopped = True
                self.session.on_close(payload[0], payload[1])
            elif opcode == PROTOCOL_ERROR:
                self.stopped = True
                self.session.on_protocol_error(payload[0], payload[1])
        if self.recv_waiter is not None and (messages or self.stopped):
            self.wake_receiver()
        if self.max_queue and len(messages) >= self.max_queue and not self.reading_paused:
            self.reading_paused = True
            if not self.lost:
                self.transport.pause_reading()
        return 0

    cdef int wake_receiver(self) except -1:
        waiter = self.recv_waiter
        if waiter is not None:
            self.recv_waiter = None
            if not waiter.done():
                waiter.set_result(None)
        return 0

    cdef int wake_senders(self) except -1:
        waiter = self.drain_waiter
        if waiter is not None:
            self.drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)
        return 0

    cpdef object next_message(self):
        """The oldest received message, or None when none is queued."""
        cdef object messages = self.messages
        if not messages:
            return None
        message = messages.popleft()
        if self.reading_paused and len(messages) <= self.max_queue // 4:
            self.reading_paused = False
            if not self.lost:
                self.transport.resume_reading()
        return message

    def message_waiter(self):
        """A future resolved when a message is queued or the stream ends; None if
        another ``recv`` is already waiting."""
        if self.recv_waiter is not None:
            return None
        self.recv_waiter = self.loop.create_future()
        return self.recv_waiter

    def drain_waiter_future(self):
        """A future resolved when the transport's buffer drained (or the
        connection is gone)."""
        if self.drain_waiter is None:
            self.drain_waiter = self.loop.create_future()
        return self.drain_waiter

    @property
    def queued_messages(self):
        """Received messages waiting for ``recv``."""
        return len(self.messages)

    @property
    def buffered_amount(self):
        """Bytes of frames not yet handed to the kernel."""
        if self.lost:
            return 0
        return PyByteArray_GET_SIZE(self.out) + self.transport.get_write_buffer_size()

    def send_message(self, int opcode, bytes payload):
        """Queue one whole data message (compressed when deflate was agreed);
        returns whether the caller must wait for the buffer to drain."""
        cdef bint rsv1 = False
        if self.deflater is not None:
            payload = self.deflater.compress(payload)
            rsv1 = True
        return self.queue_frame(opcode, payload, True, rsv1)

    def send_frame(self, int opcode, bytes payload, bint fin):
        """Queue one uncompressed frame (a fragment or a control frame); returns
        whether the caller must wait for the buffer to drain."""
        return self.queue_frame(opcode, payload, fin, False)

    cdef bint queue_frame(self, int opcode, bytes payload, bint fin, bint rsv1) except -1:
        cdef const uint8_t *key
        if self.lost:
            return False
        if self.key_pos + 4 > PyBytes_GET_SIZE(self.keys):
            self.keys = os.urandom(KEY_BATCH)
            self.key_pos = 0
        key = <const uint8_t *>PyBytes_AS_STRING(self.keys) + self.key_pos
        self.key_pos += 4
        append_masked_frame(self.out, opcode, <const uint8_t *>PyBytes_AS_STRING(payload),
                            PyBytes_GET_SIZE(payload), fin, rsv1, key)
        if PyByteArray_GET_SIZE(self.out) >= FLUSH_THRESHOLD or not self.messages:
            # Past the threshold, or nothing received is waiting to be handled (so no
            # reply to it will follow in this iteration): write now, saving a loop
            # iteration of latency; otherwise one write at the end of the iteration.
            self.flush()
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)
        return self.write_paused

    cpdef flush(self):
        """Hand the queued frames to the transport in one write."""
        cdef bytearray out = self.out
        self.flush_scheduled = False
        if not PyByteArray_GET_SIZE(out) or self.lost:
            return
        # A fresh buffer: the transport may keep a reference to what it was given.
        self.out = bytearray()
        self.transport.write(out)
        if not self.write_paused and self.transport.get_write_buffer_size() > self.write_limit:
            # The transport pauses us from write(); this covers one that does not.
            self.write_paused = True
