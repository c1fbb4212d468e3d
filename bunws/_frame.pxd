# Declarations of the RFC 6455 frame codec (bunws/_frame.pyx): the Opcode enum,
# the FrameParser layout and the C-level helpers other modules may cimport.

from libc.stdint cimport uint8_t, uint32_t, uint64_t

cpdef enum Opcode:
    PROTOCOL_ERROR = -1   # not on the wire: FrameParser.feed_events' last event on a peer error
    CONTINUATION = 0
    TEXT = 1
    BINARY = 2
    CLOSE = 8
    PING = 9
    PONG = 10


# Parser states (RFC 6455 §5.2): wait for the whole header, then the payload.
cdef enum ParserState:
    ST_HEADER = 0
    ST_PAYLOAD = 1
    ST_CLOSED = 2   # a Close frame was received: everything after it is ignored (§5.5.1)
    ST_FAILED = 3


# Where the payload of the current frame goes. The bytes objects and the message
# buffer grow as payload arrives, up to the length the header declared.
cdef enum Sink:
    SINK_BYTES = 0     # straight into the result bytes object (single-frame binary)
    SINK_MSG = 1       # into the growable message buffer (text, fragments)
    SINK_CTRL = 2      # into the 125-byte control buffer
    SINK_FRAME = 3     # into a per-frame bytes object handed to the inflater


cdef class FrameParser:
    # config
    cdef readonly bint server
    cdef readonly Py_ssize_t max_payload_length
    cdef readonly Py_ssize_t max_fragments
    cdef readonly object inflater
    cdef readonly bint validate_utf8

    # state
    cdef ParserState state
    cdef uint8_t hdr[14]          # partial header carried across feed() calls
    cdef Py_ssize_t hdr_len
    # current frame
    cdef uint8_t f_opcode
    cdef bint f_fin
    cdef bint f_masked
    cdef uint8_t mask[4]
    cdef Py_ssize_t f_len         # payload length from the header
    cdef Py_ssize_t f_done        # payload bytes received so far
    cdef Sink sink
    cdef uint8_t *f_dst           # where payload byte 0 goes
    cdef Py_ssize_t f_cap         # payload bytes f_dst has room for (grows up to f_len)
    cdef object f_obj             # bytes being filled (SINK_BYTES / SINK_FRAME)
    cdef uint8_t *ctrl            # control frame payload (CTRL_CAP bytes, made on first use)
    # current data message
    cdef bint m_open
    cdef uint8_t m_opcode
    cdef bint m_compressed
    cdef Py_ssize_t m_fragments
    cdef Py_ssize_t m_len         # bytes in msg (or inflated bytes produced)
    cdef uint32_t m_utf8          # incremental UTF-8 validator state
    cdef uint8_t *msg             # growable reassembly buffer
    cdef Py_ssize_t msg_cap
    cdef object m_inflated        # single inflater output kept to avoid a copy
    # failure
    cdef object error
    cdef readonly int close_code
    cdef readonly str reason

    cdef int _parse(self, const uint8_t *p, Py_ssize_t n, list out) except -1
    cdef int _header(self, const uint8_t *h, Py_ssize_t avail) except -1
    cdef int _start_control(self, bint rsv1) except -1
    cdef int _start_data(self, int op, bint rsv1, Py_ssize_t avail) except -1
    cdef int _grow_payload(self, Py_ssize_t need) except -1
    cdef int _frame_done(self, list out) except -1
    cdef int _emit_control(self, list out) except -1
    cdef int _emit_message(self, list out) except -1
    cdef int _inflate_frame(self) except -1
    cdef int _msg_reserve(self, Py_ssize_t extra) except -1
    cdef int _msg_append(self, const uint8_t *data, Py_ssize_t n) except -1
    cdef int _fail(self, int code, str reason) except -1
    cdef int _set_failed(self, object e) except -1
    cdef list _run(self, object data)


cdef Py_ssize_t frame_header(uint8_t *out, int opcode, Py_ssize_t length,
                             bint fin, bint rsv1, const uint8_t *mask) noexcept nogil
# The server's frames (unmasked, FIN), for bunws/_wscore.pyx's write path.
cdef int append_server_frame(bytearray out, int opcode, bytes payload, bint rsv1) except -1
cdef bytes server_frame(int opcode, bytes payload, bint rsv1)
# A client's frame (masked with the given key), for bunws/_client.pyx's write path.
cdef int append_masked_frame(bytearray out, int opcode, const uint8_t *data, Py_ssize_t n,
                             bint fin, bint rsv1, const uint8_t *mask) except -1
