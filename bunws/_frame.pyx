"""RFC 6455 frame codec: a Sans-I/O parser (``FrameParser``) and frame encoders.

The parser owns the whole read side of RFC 6455 §5: header decoding, unmasking,
fragment reassembly, control frames interleaved in fragmented messages, RSV1 with
an inflater hook (RFC 7692), UTF-8 validation, size and fragment limits, and the
close payload rules. Errors carry Bun's close code and reason string. No sockets,
loops, loggers or handlers live here.

Every payload is unmasked exactly once into memory that the caller then owns:
single-frame binary messages straight into the result ``bytes``; text and
fragmented messages into one growable reassembly buffer, then copied into the
final ``bytes``/``str``. Nothing handed out is a view into a reused buffer.

Memory follows the payload that arrived, not the length a header declares, so a
peer cannot reserve max_payload_length with a 14-byte header: a frame gets its
whole length up front only when that is at most 64 KiB or already in the input;
otherwise room for twice what arrived (at least 64 KiB), regrown (by realloc)
to twice what arrived whenever that room is full.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyObject_CheckBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE, _PyBytes_Resize
from cpython.bytearray cimport PyByteArray_Resize, PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.object cimport PyObject
from cpython.ref cimport Py_XINCREF, Py_XDECREF
from libc.string cimport memcpy
from libc.stdint cimport uint8_t, uint32_t, uint64_t

from bunws.errors import InvalidArgument, InvalidType, MessageTooBig, ProtocolError

cdef extern from *:
    """
    #include <string.h>
    #include <stdint.h>

    /* XOR `n` bytes of `src` with the 4-byte `mask` into `dst` (dst may equal src).
       `phase` is the payload offset of src[0], so chunked payloads keep the mask
       aligned (RFC 6455 §5.3: octet i uses mask[i % 4]). Unaligned 8-byte loads go
       through memcpy, which gcc/clang turn into plain moves and vectorise at -O3. */
    static void bunws_unmask(uint8_t *dst, const uint8_t *src, Py_ssize_t n,
                             const uint8_t *mask, Py_ssize_t phase) {
        uint8_t m[8];
        uint64_t m64, a, b, c, d;
        Py_ssize_t i = 0;
        int j;
        for (j = 0; j < 8; j++) m[j] = mask[(phase + j) & 3];
        memcpy(&m64, m, 8);
        for (; i + 32 <= n; i += 32) {
            memcpy(&a, src + i, 8); memcpy(&b, src + i + 8, 8);
            memcpy(&c, src + i + 16, 8); memcpy(&d, src + i + 24, 8);
            a ^= m64; b ^= m64; c ^= m64; d ^= m64;
            memcpy(dst + i, &a, 8); memcpy(dst + i + 8, &b, 8);
            memcpy(dst + i + 16, &c, 8); memcpy(dst + i + 24, &d, 8);
        }
        for (; i + 8 <= n; i += 8) {
            memcpy(&a, src + i, 8);
            a ^= m64;
            memcpy(dst + i, &a, 8);
        }
        for (; i < n; i++) dst[i] = src[i] ^ m[i & 7];
    }

    /* Incremental strict UTF-8 (RFC 3629) validator.
       States: 0 = between code points, 1..3 = expecting 1..3 continuation bytes
       (any of 80..BF), 4 = after E0 (A0..BF next), 5 = after ED (80..9F next:
       no surrogates), 6 = after F0 (90..BF next: no overlong), 7 = after F4
       (80..8F next: <= U+10FFFF), 8 = rejected (sticky).
       Byte classes: 0 = 00..7F, 1 = 80..8F, 2 = 90..9F, 3 = A0..BF,
       4 = C0 C1 F5..FF (never valid), 5 = C2..DF, 6 = E0, 7 = E1..EC EE EF,
       8 = ED, 9 = F0, 10 = F1..F3, 11 = F4. */
    #define BUNWS_UTF8_REJECT 8
    static uint8_t bunws_utf8_class[256];
    static uint8_t bunws_utf8_next[9 * 12];

    static void bunws_utf8_init(void) {
        int i, s;
        for (i = 0x00; i <= 0x7F; i++) bunws_utf8_class[i] = 0;
        for (i = 0x80; i <= 0x8F; i++) bunws_utf8_class[i] = 1;
        for (i = 0x90; i <= 0x9F; i++) bunws_utf8_class[i] = 2;
        for (i = 0xA0; i <= 0xBF; i++) bunws_utf8_class[i] = 3;
        for (i = 0xC0; i <= 0xC1; i++) bunws_utf8_class[i] = 4;
        for (i = 0xC2; i <= 0xDF; i++) bunws_utf8_class[i] = 5;
        bunws_utf8_class[0xE0] = 6;
        for (i = 0xE1; i <= 0xEF; i++) bunws_utf8_class[i] = 7;
        bunws_utf8_class[0xED] = 8;
        bunws_utf8_class[0xF0] = 9;
        for (i = 0xF1; i <= 0xF3; i++) bunws_utf8_class[i] = 10;
        bunws_utf8_class[0xF4] = 11;
        for (i = 0xF5; i <= 0xFF; i++) bunws_utf8_class[i] = 4;
        for (s = 0; s < 9 * 12; s++) bunws_utf8_next[s] = BUNWS_UTF8_REJECT;
        /* state 0: lead bytes */
        bunws_utf8_next[0 * 12 + 0] = 0;
        bunws_utf8_next[0 * 12 + 5] = 1;
        bunws_utf8_next[0 * 12 + 6] = 4;
        bunws_utf8_next[0 * 12 + 7] = 2;
        bunws_utf8_next[0 * 12 + 8] = 5;
        bunws_utf8_next[0 * 12 + 9] = 6;
        bunws_utf8_next[0 * 12 + 10] = 3;
        bunws_utf8_next[0 * 12 + 11] = 7;
        /* states 1..3: any continuation byte brings us one step closer to 0 */
        for (s = 1; s <= 3; s++)
            for (i = 1; i <= 3; i++) bunws_utf8_next[s * 12 + i] = (uint8_t)(s - 1);
        bunws_utf8_next[4 * 12 + 3] = 1;                                  /* E0 A0..BF */
        bunws_utf8_next[5 * 12 + 1] = 1; bunws_utf8_next[5 * 12 + 2] = 1; /* ED 80..9F */
        bunws_utf8_next[6 * 12 + 2] = 2; bunws_utf8_next[6 * 12 + 3] = 2; /* F0 90..BF */
        bunws_utf8_next[7 * 12 + 1] = 2;                                  /* F4 80..8F */
    }

    static uint32_t bunws_utf8_feed(uint32_t st, const uint8_t *s, Py_ssize_t n) {
        Py_ssize_t i = 0;
        uint64_t a, b;
        uint8_t c, c1;
        /* finish a code point left open by the previous chunk */
        while (st != 0) {
            if (st == BUNWS_UTF8_REJECT || i >= n) return st;
            st = bunws_utf8_next[st * 12 + bunws_utf8_class[s[i++]]];
        }
        /* Main loop: at least 4 bytes left, so any sequence starting at i is
           wholly in the buffer and needs no bounds checks. */
        while (i + 4 <= n) {
            c = s[i];
            if (c < 0x80) {
                /* skip an ASCII run 16 bytes at a time; tried only after an ASCII
                   byte so that non-ASCII text does not pay for failed checks */
                i++;
                while (i + 16 <= n) {
                    memcpy(&a, s + i, 8); memcpy(&b, s + i + 8, 8);
                    if (((a | b) & 0x8080808080808080ULL) != 0) break;
                    i += 16;
                }
                continue;
            }
            c1 = s[i + 1];
            if ((c1 & 0xC0) != 0x80) return BUNWS_UTF8_REJECT;
            if ((uint8_t)(c - 0xC2) <= 0xDF - 0xC2) {
                i += 2;
            } else if ((uint8_t)(c - 0xE0) <= 0x0F) {
                if ((s[i + 2] & 0xC0) != 0x80) return BUNWS_UTF8_REJECT;
                if (c == 0xE0 && c1 < 0xA0) return BUNWS_UTF8_REJECT;  /* overlong */
                if (c == 0xED && c1 > 0x9F) return BUNWS_UTF8_REJECT;  /* surrogate */
                i += 3;
            } else if ((uint8_t)(c - 0xF0) <= 0x04) {
                if ((s[i + 2] & 0xC0) != 0x80 || (s[i + 3] & 0xC0) != 0x80) return BUNWS_UTF8_REJECT;
                if (c == 0xF0 && c1 < 0x90) return BUNWS_UTF8_REJECT;  /* overlong */
                if (c == 0xF4 && c1 > 0x8F) return BUNWS_UTF8_REJECT;  /* > U+10FFFF */
                i += 4;
            } else {
                return BUNWS_UTF8_REJECT;  /* 80..C1, F5..FF cannot start a sequence */
            }
        }
        /* The last < 4 bytes (possibly a sequence cut by the end of the chunk)
           go through the DFA, which keeps the state for the next chunk. */
        while (i < n) {
            st = bunws_utf8_next[st * 12 + bunws_utf8_class[s[i++]]];
            if (st == BUNWS_UTF8_REJECT) return st;
        }
        return st;
    }

    /* Write a frame header; returns its size (2..14). */
    static Py_ssize_t bunws_frame_header(uint8_t *out, int opcode, Py_ssize_t length,
                                         int fin, int rsv1, const uint8_t *mask) {
        Py_ssize_t h = 2;
        uint64_t l = (uint64_t)length;
        int k;
        out[0] = (uint8_t)((fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | (opcode & 0x0F));
        if (l < 126) {
            out[1] = (uint8_t)l;
        } else if (l <= 0xFFFF) {
            out[1] = 126; out[2] = (uint8_t)(l >> 8); out[3] = (uint8_t)l; h = 4;
        } else {
            out[1] = 127;
            for (k = 0; k < 8; k++) out[2 + k] = (uint8_t)(l >> (56 - 8 * k));
            h = 10;
        }
        if (mask != NULL) {
            out[1] |= 0x80;
            memcpy(out + h, mask, 4);
            h += 4;
        }
        return h;
    }

    /* Decode UTF-8; on invalid data return a new reference to None instead of
       raising, so the hot path needs no try/except. */
    static PyObject *bunws_decode_utf8(const char *s, Py_ssize_t n, const char *errors) {
        PyObject *r = PyUnicode_DecodeUTF8(s, n, errors);
        if (r == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            Py_INCREF(Py_None);
            return Py_None;
        }
        return r;
    }
    """
    void bunws_unmask(uint8_t *dst, const uint8_t *src, Py_ssize_t n,
                      const uint8_t *mask, Py_ssize_t phase) nogil
    void bunws_utf8_init()
    uint32_t bunws_utf8_feed(uint32_t st, const uint8_t *s, Py_ssize_t n) nogil
    Py_ssize_t bunws_frame_header(uint8_t *out, int opcode, Py_ssize_t length,
                                  int fin, int rsv1, const uint8_t *mask) nogil
    object bunws_decode_utf8(const char *s, Py_ssize_t n, const char *errors)
    const uint32_t BUNWS_UTF8_REJECT

bunws_utf8_init()

# Bun's reason strings.
cdef str R_MASK = "Received an incorrectly masked frame"
cdef str R_RSV1 = "Received unexpected RSV1 bit"
cdef str R_RSV23 = "Received unexpected RSV2 or RSV3 bit"
cdef str R_OPCODE = "Received invalid opcode"
cdef str R_CTRL_BIG = "Received too big control frame"
cdef str R_CTRL_FRAG = "Received fragmented control frame"
cdef str R_CONT = "Received continuation frame outside a fragmented message"
cdef str R_NEW = "Received new message inside a fragmented message"
cdef str R_CLOSE_PAYLOAD = "Received invalid close payload"
cdef str R_CLOSE_CODE = "Received invalid close code"
cdef str R_UTF8 = "Received invalid UTF-8"
cdef str R_FRAGMENTS = "Received too many fragments"
# Not in Bun's table: a 64-bit length with the most significant bit set (RFC 6455 §5.2).
cdef str R_LENGTH = "Received invalid frame length"

# The reassembly buffer is released after a message larger than this, so an idle
# connection does not keep a max_payload_length-sized buffer alive.
cdef Py_ssize_t KEEP_MSG_BUFFER = 65536
# A control frame's payload is at most 125 bytes (RFC 6455 §5.5).
cdef Py_ssize_t CTRL_CAP = 128
# A frame longer than this that has not fully arrived starts with room for twice
# what arrived (at least this much) and grows as more comes.
cdef Py_ssize_t GROW_CHUNK = 65536

_OPCODE_MEMBERS = {int(m): m for m in globals()["Opcode"]}


cdef inline Py_ssize_t header_size(uint8_t b1) noexcept nogil:
    cdef uint8_t l = b1 & 0x7F
    cdef Py_ssize_t size = 2
    if l == 126:
        size = 4
    elif l == 127:
        size = 10
    if b1 & 0x80:
        size += 4
    return size


cdef inline Py_ssize_t first_reserve(Py_ssize_t length, Py_ssize_t avail) noexcept nogil:
    # The whole payload when it is small or already in the input (filled with no
    # regrowth); otherwise room for twice what arrived, so a header claims little.
    if length <= GROW_CHUNK or length <= avail:
        return length
    return min(length, max(GROW_CHUNK, 2 * avail))


cdef inline const char *utf8_errors(bint strict) noexcept:
    # NULL = strict decoding (PyUnicode_DecodeUTF8 is as strict as RFC 3629)
    if strict:
        return NULL
    return "replace"


cdef inline bint valid_close_code(int code) noexcept nogil:
    # RFC 6455 §7.4: 1004-1006 and 1015 are never sent; 1016-2999 are unassigned.
    return (1000 <= code <= 1003) or (1007 <= code <= 1014) or (3000 <= code <= 4999)


cdef inline bint is_valid_opcode(int op) noexcept nogil:
    return op <= 2 or 8 <= op <= 10


cdef Py_ssize_t frame_header(uint8_t *out, int opcode, Py_ssize_t length,
                             bint fin, bint rsv1, const uint8_t *mask) noexcept nogil:
    return bunws_frame_header(out, opcode, length, fin, rsv1, mask)


cdef class FrameParser:
    """Incremental RFC 6455 parser: bytes in, complete events out.

    Args:
        server: ``True`` parses frames sent by a client (they must be masked);
            ``False`` parses frames sent by a server (they must not be masked).
        max_payload_length: largest data message accepted, in bytes (single frame,
            fragmented total, or inflated size); ``0`` rejects every non-empty
            message. Control frames are not subject to it.
        max_fragments: most data frames per message (empty ones count);
            ``-1`` means ``max(1024, max_payload_length // 256)``.
        inflater: ``None`` (RSV1 is a protocol error) or an object with
            ``decompress(data, max_length, final) -> bytes`` used for messages whose
            first frame has RSV1 set (RFC 7692).
        validate_utf8: check text messages and close reasons (strict RFC 3629);
            when false, invalid sequences are decoded with ``errors="replace"``.

    Events are ``(opcode, payload)``: TEXT -> ``str``; BINARY, PING, PONG ->
    ``bytes``; CLOSE -> ``(code, reason)`` (``(1005, "")`` for an empty payload).
    Only whole messages are emitted; control frames received between fragments come
    out in arrival order. After a CLOSE event the rest of the input is ignored.

    Error rule: when the input breaks the protocol, the parser becomes failed
    (``failed``, ``close_code``, ``reason`` are set) and stays failed. If the
    ``feed``/``feed_flat`` call that hit the error had already completed events,
    it returns them *without raising*: the caller must check ``failed`` after
    handling them. If it had completed none, it raises the error
    (``ProtocolError`` or ``MessageTooBig``). Every later call raises it again.
    """

    def __cinit__(self):
        self.msg = NULL
        self.msg_cap = 0
        self.reason = ""

    def __init__(self, *, server=True, max_payload_length=16 * 1024 * 1024,
                 max_fragments=-1, inflater=None, validate_utf8=True):
        if not isinstance(max_payload_length, int):
            raise InvalidType(
                f"max_payload_length must be an int, got {type(max_payload_length).__name__}")
        if not isinstance(max_fragments, int):
            raise InvalidType(
                f"max_fragments must be an int, got {type(max_fragments).__name__}")
        if max_payload_length < 0 or max_payload_length > 0x7FFFFFFFFFFFFFFF:
            raise InvalidArgument(
                f"max_payload_length must be >= 0 and < 2**63, got {max_payload_length}")
        if max_fragments == -1:
            max_fragments = max(1024, max_payload_length // 256)
        elif max_fragments < 1 or max_fragments > 0x7FFFFFFFFFFFFFFF:
            raise InvalidArgument(f"max_fragments must be >= 1 or -1, got {max_fragments}")
        if inflater is not None and not callable(getattr(inflater, "decompress", None)):
            raise InvalidType(
                f"inflater must have a decompress(data, max_length, final) method, "
                f"got {type(inflater).__name__}")
        self.server = bool(server)
        self.max_payload_length = max_payload_length
        self.max_fragments = max_fragments
        self.inflater = inflater
        self.validate_utf8 = bool(validate_utf8)

    def __dealloc__(self):
        if self.msg != NULL:
            PyMem_Free(self.msg)
            self.msg = NULL
        if self.ctrl != NULL:
            PyMem_Free(self.ctrl)
            self.ctrl = NULL

    @property
    def failed(self):
        """True once a protocol error was found; the parser then stays failed."""
        return self.state == ST_FAILED

    @property
    def closed(self):
        """True once a CLOSE event was emitted; later input is ignored."""
        return self.state == ST_CLOSED

    @property
    def buffer_capacity(self):
        """Bytes reserved for the message being received: the reassembly buffer plus
        the payload object of the frame being filled."""
        cdef Py_ssize_t n = self.msg_cap
        if self.f_obj is not None:
            n += PyBytes_GET_SIZE(self.f_obj)
        return n

    def feed(self, data):
        """Parse ``data`` and return the completed events as ``(Opcode, payload)`` pairs.

        See the class docstring for the error rule.
        """
        cdef list flat = self._run(data)
        cdef list out = []
        cdef Py_ssize_t i
        for i in range(0, len(flat), 2):
            out.append((_OPCODE_MEMBERS[flat[i]], flat[i + 1]))
        return out

    def feed_flat(self, data):
        """Parse ``data`` and return ``[opcode0, payload0, opcode1, payload1, ...]``.

        The hot path of the server: opcodes are plain ints and no tuple is built
        per event. Same error rule as ``feed``.
        """
        return self._run(data)

    def feed_events(self, data):
        """The server's read path: ``feed_flat`` with one error channel.

        A peer's protocol error never raises here: it is the last event,
        ``(PROTOCOL_ERROR, (close_code, reason))``, after the events completed before
        it. ``InvalidType`` (not bytes-like data) still raises: that is the caller's bug.
        """
        cdef list out
        if self.state == ST_FAILED:
            return [PROTOCOL_ERROR, (self.close_code, self.reason)]
        try:
            out = self._run(data)
        except InvalidType:
            raise
        except Exception:
            return [PROTOCOL_ERROR, (self.close_code, self.reason)]
        if self.state == ST_FAILED:
            out.append(PROTOCOL_ERROR)
            out.append((self.close_code, self.reason))
        return out

    cdef list _run(self, object data):
        cdef list out = []
        cdef Py_buffer view
        if self.state == ST_FAILED:
            raise self.error.with_traceback(None)
        if type(data) is bytes:
            try:
                self._parse(<const uint8_t *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), out)
            except BaseException as e:
                self._set_failed(e)
                if out:
                    return out
                raise
            return out
        if not PyObject_CheckBuffer(data):
            raise InvalidType(f"data must be a bytes-like object, got {type(data).__name__}")
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._parse(<const uint8_t *>view.buf, view.len, out)
        except BaseException as e:
            self._set_failed(e)
            if out:
                return out
            raise
        finally:
            PyBuffer_Release(&view)
        return out

    cdef int _set_failed(self, object e) except -1:
        self.state = ST_FAILED
        self.error = e
        if isinstance(e, ProtocolError):
            self.close_code = e.close_code
            self.reason = e.reason
        else:
            # Not the peer's fault (e.g. an inflater bug or MemoryError).
            self.close_code = 1011
            self.reason = ""
        self.f_obj = None
        self.m_inflated = None
        if self.msg != NULL:
            PyMem_Free(self.msg)
            self.msg = NULL
            self.msg_cap = 0
        return 0

    cdef int _fail(self, int code, str reason) except -1:
        if code == 1009:
            raise MessageTooBig(reason)
        raise ProtocolError(code, reason)

    cdef int _parse(self, const uint8_t *p, Py_ssize_t n, list out) except -1:
        cdef Py_ssize_t pos = 0, need, k, avail
        while pos < n:
            if self.state == ST_HEADER:
                if self.hdr_len == 0:
                    avail = n - pos
                    if avail >= 2:
                        need = header_size(p[pos + 1])
                        if avail >= need:
                            # fast path: the whole header is in this chunk
                            self._header(p + pos, avail - need)
                            pos += need
                            if self.f_len == 0:
                                self._frame_done(out)
                            continue
                    # avail < header size <= 14: keep it for the next call
                    memcpy(self.hdr, p + pos, avail)
                    self.hdr_len = avail
                    return 0
                if self.hdr_len == 1:
                    self.hdr[1] = p[pos]
                    self.hdr_len = 2
                    pos += 1
                need = header_size(self.hdr[1])
                k = min(need - self.hdr_len, n - pos)
                memcpy(self.hdr + self.hdr_len, p + pos, k)
                self.hdr_len += k
                pos += k
                if self.hdr_len < need:
                    return 0
                self.hdr_len = 0
                self._header(self.hdr, n - pos)
                if self.f_len == 0:
                    self._frame_done(out)
            elif self.state == ST_PAYLOAD:
                k = min(self.f_len - self.f_done, n - pos)
                if self.f_done + k > self.f_cap:
                    self._grow_payload(self.f_done + k)
                if self.f_masked:
                    bunws_unmask(self.f_dst + self.f_done, p + pos, k, self.mask, self.f_done & 3)
                else:
                    memcpy(self.f_dst + self.f_done, p + pos, k)
                self.f_done += k
                pos += k
                if self.f_done == self.f_len:
                    self._frame_done(out)
            else:
                # ST_CLOSED: nothing after a Close frame is processed (RFC 6455 §5.5.1)
                return 0
        return 0

    cdef int _header(self, const uint8_t *h, Py_ssize_t avail) except -1:
        """Decode and check one complete header; set up where the payload goes.

        ``avail`` is how many payload bytes follow the header in the current input.
        """
        cdef uint8_t b0 = h[0], b1 = h[1]
        cdef int op = b0 & 0x0F
        cdef bint masked = (b1 & 0x80) != 0
        cdef uint64_t length = b1 & 0x7F
        cdef Py_ssize_t off = 2
        cdef int k
        if b0 & 0x30:
            return self._fail(1002, R_RSV23)
        if not is_valid_opcode(op):
            return self._fail(1002, R_OPCODE)
        if masked != self.server:
            return self._fail(1002, R_MASK)
        if length == 126:
            length = (<uint64_t>h[2] << 8) | h[3]
            off = 4
        elif length == 127:
            length = 0
            for k in range(8):
                length = (length << 8) | h[2 + k]
            off = 10
            if length >> 63:
                return self._fail(1002, R_LENGTH)
        if masked:
            memcpy(self.mask, h + off, 4)
        self.f_opcode = op
        self.f_fin = (b0 & 0x80) != 0
        self.f_masked = masked
        self.f_len = <Py_ssize_t>length
        self.f_done = 0
        if op >= 8:
            self._start_control((b0 & 0x40) != 0)
        else:
            self._start_data(op, (b0 & 0x40) != 0, avail)
        self.state = ST_PAYLOAD
        return 0

    cdef int _start_control(self, bint rsv1) except -1:
        """A control frame (RFC 6455 §5.5): small, whole, never compressed."""
        if rsv1:
            return self._fail(1002, R_RSV1)
        if self.f_len > 125:
            return self._fail(1002, R_CTRL_BIG)
        if not self.f_fin:
            return self._fail(1002, R_CTRL_FRAG)
        if self.ctrl == NULL:
            # Made on the first control frame: most idle sockets never see one.
            self.ctrl = <uint8_t *>PyMem_Malloc(CTRL_CAP)
            if self.ctrl == NULL:
                raise MemoryError()
        self.sink = SINK_CTRL
        self.f_dst = self.ctrl
        self.f_cap = self.f_len
        return 0

    cdef int _start_data(self, int op, bint rsv1, Py_ssize_t avail) except -1:
        """A data frame: message bookkeeping, limits, then where its payload goes."""
        cdef Py_ssize_t L = self.f_len
        if op == 0:
            if not self.m_open:
                return self._fail(1002, R_CONT)
            if rsv1:
                return self._fail(1002, R_RSV1)
        else:
            if self.m_open:
                return self._fail(1002, R_NEW)
            if rsv1 and self.inflater is None:
                return self._fail(1002, R_RSV1)
            self.m_open = True
            self.m_opcode = op
            self.m_compressed = rsv1
            self.m_fragments = 0
            self.m_len = 0
            self.m_utf8 = 0
        self.m_fragments += 1
        if self.m_fragments > self.max_fragments:
            return self._fail(1008, R_FRAGMENTS)
        if self.m_compressed:
            # The inflated total is checked against the remaining budget by the
            # inflater; the compressed frame itself is checked here, from the header.
            if L > self.max_payload_length:
                raise MessageTooBig()
            self.sink = SINK_FRAME
            start_frame_object(self, first_reserve(L, avail))
        else:
            if L > self.max_payload_length - self.m_len:
                raise MessageTooBig()
            if self.f_fin and op == BINARY:
                # single-frame binary message: unmask straight into the result
                self.sink = SINK_BYTES
                start_frame_object(self, first_reserve(L, avail))
            else:
                self._msg_reserve(first_reserve(L, avail))
                self.sink = SINK_MSG
                self.f_dst = self.msg + self.m_len
                self.f_cap = self.msg_cap - self.m_len
        return 0

    cdef int _grow_payload(self, Py_ssize_t need) except -1:
        """Make room for ``need`` payload bytes of the current frame (more than it
        has): room for twice that, so the copies realloc makes cost amortised O(1)
        per byte and the reservation stays within twice what arrived; never past
        the frame's declared length."""
        cdef Py_ssize_t cap = 2 * need
        cdef PyObject *raw
        if cap > self.f_len:
            cap = self.f_len
        if self.sink == SINK_MSG:
            self._msg_reserve(cap)
            self.f_dst = self.msg + self.m_len
            self.f_cap = self.msg_cap - self.m_len
            return 0
        # SINK_BYTES / SINK_FRAME: _PyBytes_Resize needs the only reference to the
        # object, so f_obj lends it for the call (on failure the object is freed).
        raw = <PyObject *>self.f_obj
        Py_XINCREF(raw)
        self.f_obj = None
        _PyBytes_Resize(&raw, cap)
        self.f_obj = <object>raw
        Py_XDECREF(raw)
        self.f_dst = <uint8_t *>PyBytes_AS_STRING(self.f_obj)
        self.f_cap = cap
        return 0

    cdef int _frame_done(self, list out) except -1:
        cdef Sink sink = self.sink
        cdef object payload
        self.state = ST_HEADER
        if sink == SINK_BYTES:
            payload = self.f_obj
            self.f_obj = None
            self.m_open = False
            out.append(<int>BINARY)
            out.append(payload)
            return 0
        if sink == SINK_CTRL:
            return self._emit_control(out)
        if sink == SINK_FRAME:
            self._inflate_frame()
        else:
            if self.m_opcode == TEXT and self.validate_utf8 and not self.f_fin:
                # fail fast at the first fragment that makes the prefix invalid;
                # the final fragment is checked by the decoder in _emit_message
                self.m_utf8 = bunws_utf8_feed(self.m_utf8, self.msg + self.m_len, self.f_len)
                if self.m_utf8 == BUNWS_UTF8_REJECT:
                    return self._fail(1007, R_UTF8)
            self.m_len += self.f_len
        if self.f_fin:
            return self._emit_message(out)
        return 0

    cdef int _inflate_frame(self) except -1:
        cdef Py_ssize_t budget = self.max_payload_length - self.m_len
        cdef object data = self.f_obj
        cdef object res
        cdef Py_ssize_t n
        self.f_obj = None
        res = self.inflater.decompress(data, budget, bool(self.f_fin))
        if type(res) is not bytes:
            res = bytes(res)
        n = PyBytes_GET_SIZE(res)
        if n > budget:
            raise MessageTooBig()
        if self.m_opcode == TEXT and self.validate_utf8 and not self.f_fin:
            self.m_utf8 = bunws_utf8_feed(self.m_utf8, <const uint8_t *>PyBytes_AS_STRING(res), n)
            if self.m_utf8 == BUNWS_UTF8_REJECT:
                return self._fail(1007, R_UTF8)
        if self.m_len == 0 and self.m_inflated is None:
            # keep the first output as is: a single-frame message needs no copy
            self.m_inflated = res
            self.m_len = n
            return 0
        if self.m_inflated is not None:
            data = self.m_inflated
            self.m_inflated = None
            self.m_len = 0
            self._msg_append(<const uint8_t *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        self._msg_append(<const uint8_t *>PyBytes_AS_STRING(res), n)
        return 0

    cdef int _emit_message(self, list out) except -1:
        cdef int op = self.m_opcode
        cdef object payload
        cdef const char *ptr
        cdef Py_ssize_t n = self.m_len
        if self.m_inflated is not None:
            ptr = PyBytes_AS_STRING(self.m_inflated)
        else:
            ptr = <const char *>self.msg
        if op == TEXT:
            payload = bunws_decode_utf8(ptr, n, utf8_errors(self.validate_utf8))
            if payload is None:
                return self._fail(1007, R_UTF8)
        elif self.m_inflated is not None:
            payload = self.m_inflated
        else:
            payload = PyBytes_FromStringAndSize(ptr, n)
        self.m_inflated = None
        self.m_open = False
        self.m_len = 0
        self.m_fragments = 0
        self.m_utf8 = 0
        if self.msg_cap > KEEP_MSG_BUFFER:
            PyMem_Free(self.msg)
            self.msg = NULL
            self.msg_cap = 0
        out.append(op)
        out.append(payload)
        return 0

    cdef int _emit_control(self, list out) except -1:
        cdef int op = self.f_opcode
        cdef Py_ssize_t n = self.f_len
        cdef int code
        cdef object reason
        if op != CLOSE:
            out.append(op)
            out.append(PyBytes_FromStringAndSize(<const char *>self.ctrl, n))
            return 0
        if n == 0:
            code = 1005
            reason = ""
        elif n == 1:
            return self._fail(1002, R_CLOSE_PAYLOAD)
        else:
            code = (self.ctrl[0] << 8) | self.ctrl[1]
            if not valid_close_code(code):
                return self._fail(1002, R_CLOSE_CODE)
            reason = bunws_decode_utf8(<const char *>self.ctrl + 2, n - 2,
                                       utf8_errors(self.validate_utf8))
            if reason is None:
                return self._fail(1007, R_UTF8)
        self.state = ST_CLOSED
        self.m_inflated = None
        self.f_obj = None
        out.append(CLOSE)
        out.append((code, reason))
        return 0

    cdef int _msg_reserve(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t need = self.m_len + extra
        cdef Py_ssize_t cap
        cdef uint8_t *buf
        if need <= self.msg_cap and self.msg != NULL:
            return 0
        cap = self.msg_cap * 2
        if cap < need:
            cap = need
        if cap < 256:
            cap = 256
        buf = <uint8_t *>PyMem_Realloc(self.msg, cap)
        if buf == NULL:
            raise MemoryError()
        self.msg = buf
        self.msg_cap = cap
        return 0

    cdef int _msg_append(self, const uint8_t *data, Py_ssize_t n) except -1:
        self._msg_reserve(n)
        memcpy(self.msg + self.m_len, data, n)
        self.m_len += n
        return 0


cdef inline int start_frame_object(FrameParser p, Py_ssize_t size) except -1:
    # The payload goes into a new bytes object (SINK_BYTES, SINK_FRAME) of `size`
    # bytes; _grow_payload enlarges it if the frame is longer.
    p.f_obj = PyBytes_FromStringAndSize(NULL, size)
    p.f_dst = <uint8_t *>PyBytes_AS_STRING(p.f_obj)
    p.f_cap = size
    return 0


# ---------------------------------------------------------------------------
# Encoders and helpers


cdef int check_opcode(object opcode) except -1:
    if not isinstance(opcode, int):
        raise InvalidType(f"opcode must be an int, got {type(opcode).__name__}")
    if not (0 <= opcode <= 15) or not is_valid_opcode(opcode):
        raise InvalidArgument(f"opcode must be one of 0, 1, 2, 8, 9, 10, got {opcode}")
    return <int>opcode


cdef object as_payload(object payload):
    """str -> UTF-8 bytes; other objects are returned as is for the buffer protocol."""
    if isinstance(payload, str):
        return (<str>payload).encode("utf-8")
    if not PyObject_CheckBuffer(payload):
        raise InvalidType(f"payload must be bytes-like or str, got {type(payload).__name__}")
    return payload


cdef int get_mask(object mask, uint8_t *out) except -1:
    cdef Py_buffer mv
    if not PyObject_CheckBuffer(mask) or isinstance(mask, str):
        raise InvalidType(f"mask must be bytes-like, got {type(mask).__name__}")
    PyObject_GetBuffer(mask, &mv, PyBUF_SIMPLE)
    try:
        if mv.len != 4:
            raise InvalidArgument(f"mask must be 4 bytes, got {mv.len}")
        memcpy(out, mv.buf, 4)
    finally:
        PyBuffer_Release(&mv)
    return 0


def encode_frame(opcode, payload, *, fin=True, rsv1=False, mask=None):
    """Build one frame.

    Args:
        opcode: an ``Opcode`` (0, 1, 2, 8, 9 or 10).
        payload: bytes-like, or ``str`` (encoded as UTF-8).
        fin: the FIN bit; control frames must have it.
        rsv1: the RSV1 bit (set by permessage-deflate on a message's first frame).
        mask: ``None`` for a server frame (unmasked), or 4 bytes for a client frame.

    Returns:
        The frame as ``bytes``.

    Raises:
        InvalidType: wrong argument type.
        InvalidArgument: invalid opcode, mask not 4 bytes, control payload over 125
            bytes or a fragmented control frame.
    """
    cdef int op = check_opcode(opcode)
    cdef uint8_t mkey[4]
    cdef const uint8_t *mptr = NULL
    cdef Py_buffer pv
    cdef Py_ssize_t h
    cdef uint8_t *dst
    cdef object res
    if mask is not None:
        get_mask(mask, mkey)
        mptr = mkey
    payload = as_payload(payload)
    PyObject_GetBuffer(payload, &pv, PyBUF_SIMPLE)
    try:
        if op >= 8:
            if pv.len > 125:
                raise InvalidArgument(f"control frame payload must be <= 125 bytes, got {pv.len}")
            if not fin:
                raise InvalidArgument("control frames must not be fragmented (fin=False)")
        res = PyBytes_FromStringAndSize(NULL, 14 + pv.len)
        dst = <uint8_t *>PyBytes_AS_STRING(res)
        h = bunws_frame_header(dst, op, pv.len, bool(fin), bool(rsv1), mptr)
        if mptr != NULL:
            bunws_unmask(dst + h, <const uint8_t *>pv.buf, pv.len, mptr, 0)
        else:
            memcpy(dst + h, pv.buf, pv.len)
    finally:
        PyBuffer_Release(&pv)
    if h == 14:
        return res
    return res[:h + pv.len]


cdef bytes reason_bytes(str reason):
    cdef bytes b
    cdef Py_ssize_t cut
    try:
        b = reason.encode("utf-8")
    except UnicodeEncodeError:
        # lone surrogates become U+FFFD, as a JavaScript string would
        b = reason.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")
    if len(b) > 123:
        cut = 123
        while cut > 0 and (b[cut] & 0xC0) == 0x80:
            cut -= 1
        b = b[:cut]
    return b


def close_reason_bytes(reason):
    """The Close payload's reason as sent: UTF-8 of ``reason`` (lone surrogates as
    U+FFFD) cut to at most 123 bytes at a character boundary."""
    if not isinstance(reason, str):
        raise InvalidType(f"close reason must be a str, got {type(reason).__name__}")
    return reason_bytes(reason)


cdef bytes close_payload(object code, object reason):
    cdef int c
    if code is None:
        return b""
    if isinstance(code, float):
        code = int(code) if code == code and code not in (float("inf"), float("-inf")) else 0
    if not isinstance(code, int):
        raise InvalidType(f"close code must be an int or None, got {type(code).__name__}")
    c = code & 0xFFFF
    if c == 0 or c == 1005 or c == 1006:
        return b""
    if not isinstance(reason, str):
        raise InvalidType(f"close reason must be a str, got {type(reason).__name__}")
    return bytes((c >> 8, c & 0xFF)) + reason_bytes(reason)


def encode_close(code=1000, reason=""):
    """Build a server Close frame the way Bun's ``ws.close(code, reason)`` does.

    Args:
        code: ``None`` or an int; only its low 16 bits are sent. ``None`` or a code
            whose low 16 bits are 0, 1005 or 1006 gives an empty payload.
        reason: cut to at most 123 UTF-8 bytes at a character boundary.

    Returns:
        The unmasked Close frame as ``bytes``.

    Raises:
        InvalidType: code not an int/None, or reason not a str.
    """
    cdef bytes p = close_payload(code, reason)
    return encode_frame(CLOSE, p)


cdef int append_server_frame(bytearray out, int opcode, bytes payload, bint rsv1) except -1:
    """Append one unmasked FIN frame carrying ``payload`` to ``out`` (cork buffers:
    no intermediate ``bytes``). The caller has checked opcode and size."""
    cdef uint8_t hdr[14]
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    cdef Py_ssize_t h = bunws_frame_header(hdr, opcode, n, True, rsv1, NULL)
    cdef Py_ssize_t old = PyByteArray_GET_SIZE(out)
    PyByteArray_Resize(out, old + h + n)
    cdef char *dst = PyByteArray_AS_STRING(out) + old
    memcpy(dst, hdr, h)
    memcpy(dst + h, PyBytes_AS_STRING(payload), n)
    return 0


cdef bytes server_frame(int opcode, bytes payload, bint rsv1):
    """One unmasked FIN frame as ``bytes``, built in place: a publish copies its
    payload once, into the frame every receiver shares."""
    cdef uint8_t hdr[14]
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    cdef Py_ssize_t h = bunws_frame_header(hdr, opcode, n, True, rsv1, NULL)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, h + n)
    cdef char *dst = PyBytes_AS_STRING(out)
    memcpy(dst, hdr, h)
    memcpy(dst + h, PyBytes_AS_STRING(payload), n)
    return out


cdef int append_masked_frame(bytearray out, int opcode, const uint8_t *data, Py_ssize_t n,
                             bint fin, bint rsv1, const uint8_t *mask) except -1:
    """Append one masked frame (a client's, RFC 6455 §5.3) to ``out``: the header,
    then the payload XOR the mask in the same pass that copies it. The caller has
    checked opcode and size and chose a fresh ``mask``."""
    cdef uint8_t hdr[14]
    cdef Py_ssize_t h = bunws_frame_header(hdr, opcode, n, fin, rsv1, mask)
    cdef Py_ssize_t old = PyByteArray_GET_SIZE(out)
    PyByteArray_Resize(out, old + h + n)
    cdef uint8_t *dst = <uint8_t *>PyByteArray_AS_STRING(out) + old
    memcpy(dst, hdr, h)
    bunws_unmask(dst + h, data, n, mask, 0)
    return 0


def apply_mask(data, mask):
    """Return ``data`` XOR-ed with the repeating 4-byte ``mask`` (RFC 6455 §5.3).

    Raises:
        InvalidType: data or mask not bytes-like.
        InvalidArgument: mask not 4 bytes.
    """
    cdef uint8_t mkey[4]
    cdef Py_buffer pv
    cdef object res
    get_mask(mask, mkey)
    if type(data) is bytes:
        res = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(data))
        bunws_unmask(<uint8_t *>PyBytes_AS_STRING(res), <const uint8_t *>PyBytes_AS_STRING(data),
                     PyBytes_GET_SIZE(data), mkey, 0)
        return res
    if isinstance(data, str) or not PyObject_CheckBuffer(data):
        raise InvalidType(f"data must be bytes-like, got {type(data).__name__}")
    PyObject_GetBuffer(data, &pv, PyBUF_SIMPLE)
    try:
        res = PyBytes_FromStringAndSize(NULL, pv.len)
        bunws_unmask(<uint8_t *>PyBytes_AS_STRING(res), <const uint8_t *>pv.buf, pv.len, mkey, 0)
    finally:
        PyBuffer_Release(&pv)
    return res


def validate_utf8(data):
    """Return True if ``data`` is strict UTF-8 (RFC 3629: no surrogates, no overlongs,
    nothing above U+10FFFF), i.e. exactly when ``bytes(data).decode('utf-8')`` succeeds.

    Raises:
        InvalidType: data not bytes-like.
    """
    cdef Py_buffer pv
    cdef uint32_t st
    if type(data) is bytes:
        st = bunws_utf8_feed(0, <const uint8_t *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        return st == 0
    if isinstance(data, str) or not PyObject_CheckBuffer(data):
        raise InvalidType(f"data must be bytes-like, got {type(data).__name__}")
    PyObject_GetBuffer(data, &pv, PyBUF_SIMPLE)
    try:
        st = bunws_utf8_feed(0, <const uint8_t *>pv.buf, pv.len)
    finally:
        PyBuffer_Release(&pv)
    return st == 0
