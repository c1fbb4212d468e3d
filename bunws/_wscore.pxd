# Layout of the compiled hot path of a ServerWebSocket (bunws/_wscore.pyx).
#
# Only the per-message work lives here: send statuses, the cork / publish queue,
# dispatch of parsed events to the message handler, and frame-once fan-out. Policy
# (closing, subscriptions, lifecycle) stays in Python (websocket.py, protocol.py).

cdef class WebSocketCore:
    # wiring (set by the Python layer)
    cdef public object data
    cdef public object _conn
    cdef public object _server
    cdef public object _transport
    cdef public object _deflater          # None, or a Deflater (shared or dedicated)
    # config
    cdef public Py_ssize_t _limit         # backpressure_limit, 0 = none
    cdef public bint _close_on_limit
    cdef public bint _shared_deflate      # _deflater is the process-wide stateless one
    # state
    cdef public bytearray _out            # cork buffer + queued publishes, in call order
    cdef public list _chunks              # None, or shared frames queued before _out
    cdef public Py_ssize_t _chunked       # bytes in _chunks
    cdef public int _corked               # cork depth
    cdef public int _ready_state          # 1 open, 3 closed
    cdef public bint _queued              # in the server's end-of-tick flush list
    cdef public bint _doomed              # close_on_backpressure_limit tripped
    cdef public bint _paused              # pause(): inbound events are held back
    cdef public bint _write_paused        # the transport holds unsent bytes
    cdef public int _binary_kind          # 0 bytes, 1 bytearray, 2 memoryview
    cdef object __weakref__

    cdef Py_ssize_t _send(self, int opcode, object payload, bint compress) except -2
    cdef object _send_control(self, int opcode, object data, str what)
    cdef Py_ssize_t _buffered(self) except -1
    cpdef _flush(self)
    cdef int _check_fill(self) except -1
    cpdef _over_limit(self)
