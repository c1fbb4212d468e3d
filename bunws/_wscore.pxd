# The write side of one WebSocket, compiled (bunws/_wscore.pyx).
#
# Pipeline of one connection after the upgrade:
#   transport bytes -> _frame.FrameParser.feed_events -> dispatch() -> handlers
#   handlers -> WebSocketCore.send*/ping/pong -> out (+ shared_frames) -> flush -> transport
#   Server.publish -> pubsub.PubSub -> fan_out() (queue by reference) -> flush_queued()
#
# WebSocketCore is the only owner of its buffers: every frame of a socket (data,
# control, Close, published) goes through its methods, so per-socket order equals
# call order. Only `data` and `transport` are writable from Python; the rest is
# private or readonly.

cdef class Counters:
    # One per Server, shared by its sockets: C integer adds on the hot paths
    # (queue_frame, flush, dispatch, fan_out), read by Server.stats().
    cdef public long long messages_received   # data messages parsed (text/binary)
    cdef public long long messages_sent       # data messages queued to sockets (sends + deliveries)
    cdef public long long bytes_received      # wire bytes read (HTTP phase included)
    cdef public long long bytes_sent          # wire bytes written (HTTP phase included)
    cdef public long long sends_backpressured # sends that returned -1
    cdef public long long sends_dropped       # sends dropped: closed, or over backpressure_limit
    cdef public long long drains              # transport buffers that emptied again
    cdef public long long deliveries          # frames queued to receivers by publishes


cdef class WebSocketCore:
    cdef public object data               # the application's per-socket value
    # wiring (set once by attach)
    cdef public object transport         # what the socket writes to (tests may wrap it)
    cdef object loop
    cdef unsigned long loop_thread        # the thread that runs loop: the only one that may send
    cdef readonly int high_water          # the transport's high-water mark: 0, or 1 on TLS
    cdef object on_over_limit             # on_over_limit(ws), soon, when close_on_backpressure_limit trips
    cdef readonly object deflater         # None, or a Deflater (shared or dedicated)
    cdef Py_ssize_t limit                 # backpressure_limit, 0 = none
    cdef bint close_on_limit
    cdef bint shared_deflate              # deflater is a process-wide stateless one
    # outgoing queue
    cdef bytearray out                    # cork buffer + own frames, in call order
    cdef list shared_frames               # None, or frames shared with other sockets, queued before out
    cdef Py_ssize_t shared_bytes          # bytes in shared_frames
    cdef int corked                       # cork depth
    cdef bint queued                      # in the pub/sub end-of-tick flush list
    cdef object pending_pong              # the one pong kept back while the transport is full
    # state
    cdef readonly int ready_state         # 1 open, 3 closed (as Bun reports it)
    cdef readonly bint is_paused          # pause(): inbound events are held back
    cdef readonly bint write_paused       # bytes are waiting in the transport
    cdef bint limit_tripped               # close_on_backpressure_limit tripped
    cdef int binary_kind                  # 0 bytes, 1 bytearray, 2 memoryview
    cdef readonly Counters counters       # the server's counters (a private one if none given)
    cdef object __weakref__

    cdef Py_ssize_t queue_frame(self, int opcode, object payload, bint compress) except -2
    cdef object send_control(self, int opcode, object data, str what)
    cdef Py_ssize_t buffered(self) except -1
    cdef int check_fill(self) except -1
    cdef int over_limit(self) except -1
    cpdef flush(self)
    cpdef check_thread(self)
    cpdef object binary(self, object payload)


cdef class SessionCore:
    # The hot fields of bunws.session.WebSocketSession (its base): read per read.
    cdef public WebSocketCore ws          # the socket (write side)
    cdef public object parser             # the FrameParser, None once reading is over
    cdef public object receive_buffer     # the server's one receive buffer
    cdef public object state              # a SessionState member
    cdef public object backlog            # None, or the events held while paused
    cdef public double last_inbound       # loop time of the last read (idle timeout)
    cdef public double deadline           # close-handshake deadline (loop time)
    cdef public bint ping_sent            # the idle ping is out, no read since
    cdef public bint paused               # ws.pause(): reading stopped, events held
    cdef public object message            # the message handler, resolved once
    cdef public bint async_message        # ... and whether it is async
    cdef object clock                     # None: the stock loop's clock, read in C

    cpdef double now(self) except? -1.0
