"""permessage-deflate codec (RFC 7692) on zlib's C API: ``Deflater`` and ``Inflater``.

Sans-I/O: bytes in, bytes out. No per-message Python zlib objects.

Memory model (docs/bun-behaviour.md §10, §14):

* Without context takeover nothing is kept per object while idle. Every
  ``Deflater(no_context_takeover=True)`` with the same (window_bits, mem_level,
  level) compresses through the stream of one module-level object,
  ``stateless_deflater(...)`` (Bun's "shared compressor"; negotiation hands that
  object itself to every such connection, so a publish compresses once); every ``Inflater(no_context_takeover=True)`` inflates single-frame
  messages through one module-level 15-bit z_stream, and holds a private z_stream
  only while a fragmented message is in progress.
* With context takeover the object owns its z_stream, allocated on first use.

The shared streams rely on the GIL: no call releases it, so two calls can never
interleave on one stream.

Deflate bombs (docs/bun-behaviour.md §14): ``Inflater.decompress`` inflates in
steps of at most 64 KiB of output and raises ``MessageTooBig`` as soon as the
output of the call exceeds ``max_length``; it never holds more than
``max_length + 1`` inflated bytes.

After ``Inflater.decompress`` raises, that Inflater is dead (every later call
raises ``ProtocolError(1007)``): the connection is being closed anyway, and a
stream with a half-inflated message cannot be trusted. A ``Deflater`` that
failed half way (only ``MemoryError`` can do that) resets its stream, which is
always safe for a compressor: the peer merely sees no back-references.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.string cimport memset, memcmp

from bunws.errors import InvalidArgument, InvalidType, MessageTooBig, ProtocolError

cdef extern from "Python.h":
    # Raw-pointer variants: the output buffer is a bytes object that zlib writes
    # into and that is resized in place, so its reference is managed by hand.
    PyObject *_new_bytes "PyBytes_FromStringAndSize"(const char *s, Py_ssize_t n) except NULL
    char *_bytes_data "PyBytes_AS_STRING"(PyObject *o)
    int _PyBytes_Resize(PyObject **string, Py_ssize_t newsize) except -1
    void Py_XDECREF(PyObject *o)
    void Py_DECREF(PyObject *o)
    const Py_ssize_t PY_SSIZE_T_MAX


__all__ = ["Deflater", "Inflater", "DEFAULT_LEVEL", "shared_deflater_count", "stateless_deflater"]

# The codec's own default is zlib's (level 6, what Bun's engine uses); the server's
# default (extensions.COMPRESSION_LEVEL, 1) is chosen for CPU instead, per connection.
DEFAULT_LEVEL = -1

cdef enum:
    # Inflate output step: bounds the work done between two budget checks.
    INFLATE_STEP = 65536
    # zlib counts in uInt; bigger buffers are fed in slices of this size.
    Z_CHUNK = 1073741824

# RFC 7692 §7.2.2: the receiver appends 00 00 ff ff to the payload of a message.
cdef const unsigned char *TAIL = b"\x00\x00\xff\xff"

cdef str INVALID_DATA = "Received invalid compressed data"


cdef int _check_int(str name, object value, int lo, int hi) except? -1:
    if type(value) is bool or not isinstance(value, int):
        raise InvalidType(f"{name} must be an int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise InvalidArgument(f"{name} must be between {lo} and {hi}, got {value}")
    return value


cdef class _ZStream:
    """One zlib stream; ``init`` before use, freed by the destructor."""

    def __cinit__(self, bint is_deflate, int window_bits, int mem_level=8, int level=-1):
        memset(&self.strm, 0, sizeof(z_stream))
        self.is_deflate = is_deflate
        # zlib refuses raw deflate with an 8-bit window and inflating a 9-bit
        # stream with 8; RFC 7692 peers using zlib produce 9 for 8 (zlib manual,
        # deflateInit2), so 8 is treated as 9 on both sides.
        self.window_bits = 9 if window_bits == 8 else window_bits
        self.mem_level = mem_level
        self.level = level
        self.ready = False
        self.dirty = False
        self.ended = False

    cdef int init(self) except -1:
        cdef int ret
        if self.ready:
            if self.dirty:
                self.reset()
            return 0
        if self.is_deflate:
            ret = deflateInit2(&self.strm, self.level, Z_DEFLATED, -self.window_bits,
                               self.mem_level, Z_DEFAULT_STRATEGY)
        else:
            ret = inflateInit2(&self.strm, -self.window_bits)
        if ret == Z_MEM_ERROR:
            raise MemoryError()
        if ret != Z_OK:
            raise InvalidArgument(f"zlib rejected the stream parameters (error {ret})")
        self.ready = True
        self.dirty = False
        return 0

    cdef int reset(self) except -1:
        if self.ready:
            if self.is_deflate:
                deflateReset(&self.strm)
            else:
                inflateReset(&self.strm)
        self.dirty = False
        self.ended = False
        return 0

    def __dealloc__(self):
        if self.ready:
            if self.is_deflate:
                deflateEnd(&self.strm)
            else:
                inflateEnd(&self.strm)
            self.ready = False


# The one cache of stateless compressors (see the module docstring):
# (window_bits, mem_level, level) -> the Deflater whose stream they all use.
cdef dict _stateless_deflaters = {}
cdef _ZStream _shared_inflater = None


def stateless_deflater(window_bits=15, mem_level=8, level=DEFAULT_LEVEL):
    """The module-level ``Deflater(no_context_takeover=True)`` for these parameters."""
    key = (window_bits, mem_level, level)
    deflater = _stateless_deflaters.get(key)
    if deflater is None:
        deflater = _stateless_deflaters[key] = Deflater(
            window_bits, mem_level, level, no_context_takeover=True)
    return deflater


cdef _ZStream _stateless_stream(Deflater d):
    cdef Deflater owner = stateless_deflater(d.window_bits, d.mem_level, d.level)
    if owner.zs is None:
        owner.zs = _ZStream(True, d.window_bits, d.mem_level, d.level)
    return owner.zs


cdef _ZStream _get_shared_inflater():
    global _shared_inflater
    if _shared_inflater is None:
        # A 15-bit window inflates data compressed with any smaller window.
        _shared_inflater = _ZStream(False, 15)
    return _shared_inflater


def shared_deflater_count():
    """Number of module-level shared compressor streams created so far (for tests)."""
    return sum(1 for d in _stateless_deflaters.values() if (<Deflater>d).zs is not None)


cdef class Deflater:
    """Compress whole messages for RSV1 frames (RFC 7692 §7.2.1).

    Args:
        window_bits: LZ77 window, 8..15 (8 is compressed with 9, as zlib does).
        mem_level: zlib memLevel, 1..9 (Bun's dedicated sizes use 1..8).
        level: -1 (zlib default, 6: what uWebSockets uses) or 0..9.
        no_context_takeover: reset after every message; the object then holds no
            zlib state and shares one module-level stream with every other
            Deflater of the same parameters (Bun's shared compressor).

    Raises:
        InvalidType: a parameter is not an int.
        InvalidArgument: a parameter is out of range.
    """

    def __init__(self, window_bits=15, mem_level=8, level=DEFAULT_LEVEL,
                 no_context_takeover=False):
        self.window_bits = _check_int("window_bits", window_bits, 8, 15)
        self.mem_level = _check_int("mem_level", mem_level, 1, 9)
        self.level = _check_int("level", level, -1, 9)
        self.no_context_takeover = bool(no_context_takeover)
        self.zs = None

    @property
    def holds_zlib_state(self):
        """True when this object owns an allocated per-connection z_stream (a
        stateless one never does: its stream is the module's)."""
        return not self.no_context_takeover and self.zs is not None and self.zs.ready

    def compress(self, data):
        """Compress one whole message.

        Args:
            data: bytes-like or str (encoded as UTF-8).

        Returns:
            The raw deflate data flushed with Z_SYNC_FLUSH, minus the trailing
            ``00 00 ff ff`` (RFC 7692 §7.2.1). An empty message gives ``b"\\x00"``
            (an empty stored block, RFC 7692 §7.2.3.6).

        Raises:
            InvalidType: ``data`` is neither a buffer nor a str.
        """
        cdef Py_buffer view
        cdef Py_ssize_t n
        cdef const char *s
        if type(data) is bytes:
            return self._compress(<const unsigned char *>PyBytes_AS_STRING(data),
                                  PyBytes_GET_SIZE(data))
        if isinstance(data, str):
            s = PyUnicode_AsUTF8AndSize(data, &n)
            return self._compress(<const unsigned char *>s, n)
        try:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        except TypeError:
            raise InvalidType(
                f"data must be bytes, bytearray, memoryview or str, got {type(data).__name__}"
            ) from None
        try:
            return self._compress(<const unsigned char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef bytes _compress(self, const unsigned char *data, Py_ssize_t n):
        cdef _ZStream zs
        cdef z_stream *strm
        cdef Py_ssize_t remaining = n, produced = 0, cap, given
        cdef PyObject *buf = NULL
        cdef int ret
        cdef unsigned long bound
        if n == 0:
            # Nothing to flush: zlib would answer Z_BUF_ERROR after a previous
            # Z_SYNC_FLUSH. An empty stored block never changes the window.
            return b"\x00"
        if self.no_context_takeover:
            zs = _stateless_stream(self)
        else:
            if self.zs is None:
                self.zs = _ZStream(True, self.window_bits, self.mem_level, self.level)
            zs = self.zs
        zs.init()
        strm = &zs.strm
        zs.dirty = True
        # deflateBound covers Z_FINISH; a sync flush adds at most an empty stored
        # block (5 bytes) plus a partial byte, hence the slack. The loop still
        # grows the buffer should zlib ever need more.
        bound = deflateBound(strm, <uLong>(n if n < Z_CHUNK else Z_CHUNK))
        cap = <Py_ssize_t>bound + 16
        if n > Z_CHUNK:
            cap += n - Z_CHUNK
        buf = _new_bytes(NULL, cap)
        try:
            strm.avail_in = 0
            while True:
                if strm.avail_in == 0 and remaining > 0:
                    given = remaining if remaining < Z_CHUNK else Z_CHUNK
                    strm.next_in = <Bytef *>(data + (n - remaining))
                    strm.avail_in = <uInt>given
                    remaining -= given
                if produced == cap:
                    cap += cap // 2 + 64
                    _PyBytes_Resize(&buf, cap)
                given = cap - produced
                if given > Z_CHUNK:
                    given = Z_CHUNK
                strm.next_out = <Bytef *>_bytes_data(buf) + produced
                strm.avail_out = <uInt>given
                ret = deflate(strm, Z_SYNC_FLUSH)
                produced += given - strm.avail_out
                if ret != Z_OK and ret != Z_BUF_ERROR:
                    raise MemoryError(f"zlib deflate failed (error {ret})")
                if strm.avail_in == 0 and remaining == 0 and strm.avail_out != 0:
                    break
            strm.next_in = NULL
            strm.next_out = NULL
            if self.no_context_takeover:
                deflateReset(strm)
            zs.dirty = False
            # The sync flush always ends with an empty stored block: 00 00 ff ff.
            if produced >= 4 and memcmp(_bytes_data(buf) + produced - 4, TAIL, 4) == 0:
                produced -= 4
            _PyBytes_Resize(&buf, produced)
            out = <bytes>buf
        finally:
            Py_XDECREF(buf)
        return out

    def __repr__(self):
        return (f"Deflater(window_bits={self.window_bits}, mem_level={self.mem_level}, "
                f"level={self.level}, no_context_takeover={self.no_context_takeover})")


cdef class Inflater:
    """Inflate RSV1 messages (RFC 7692 §7.2.2), fragment by fragment.

    Args:
        window_bits: the peer's LZ77 window, 8..15 (8 is inflated with 9).
        no_context_takeover: reset after every message and keep no zlib state
            while idle.

    Raises:
        InvalidType: a parameter is not an int.
        InvalidArgument: ``window_bits`` is out of range.
    """

    def __init__(self, window_bits=15, no_context_takeover=False):
        self.window_bits = _check_int("window_bits", window_bits, 8, 15)
        self.no_context_takeover = bool(no_context_takeover)
        self.zs = None
        self.in_message = False
        self.failed = False

    @property
    def holds_zlib_state(self):
        """True when this object owns an allocated z_stream."""
        return self.zs is not None and self.zs.ready

    def decompress(self, data, Py_ssize_t max_length, bint final):
        """Inflate one fragment of a compressed message.

        Args:
            data: the fragment's payload (bytes-like).
            max_length: the remaining budget of the message; the output of this
                call may not exceed it (negative counts as 0).
            final: this is the last fragment: append ``00 00 ff ff`` and end the
                message.

        Returns:
            The bytes inflated from this fragment (possibly empty).

        Raises:
            MessageTooBig: the output would exceed ``max_length`` (1009).
            ProtocolError: undecodable data, or the Inflater already failed (1007).
            InvalidType: ``data`` is not a buffer.
        """
        cdef Py_buffer view
        if type(data) is bytes:
            return self._decompress(<const unsigned char *>PyBytes_AS_STRING(data),
                                    PyBytes_GET_SIZE(data), max_length, final)
        if isinstance(data, str):
            raise InvalidType("data must be bytes, bytearray or memoryview, got str")
        try:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        except TypeError:
            raise InvalidType(
                f"data must be bytes, bytearray or memoryview, got {type(data).__name__}"
            ) from None
        try:
            return self._decompress(<const unsigned char *>view.buf, view.len,
                                    max_length, final)
        finally:
            PyBuffer_Release(&view)

    cdef bytes _decompress(self, const unsigned char *data, Py_ssize_t n,
                           Py_ssize_t max_length, bint final):
        cdef _ZStream zs
        cdef bint shared = False
        if self.failed:
            raise ProtocolError(1007, INVALID_DATA)
        if max_length < 0:
            max_length = 0
        if not self.in_message:
            self.m_input = 0
        self.m_input += n
        if self.m_input == 0:
            # A message with no compressed bytes at all is empty. Feeding the RFC 7692
            # tail alone would leave zlib inside a stored-block header and corrupt the
            # next message of a context-takeover stream (found by
            # test_empty_rsv1_payload_keeps_context_in_sync).
            self.in_message = not final
            return b""
        if not self.no_context_takeover or self.in_message or not final:
            # Dedicated stream: for the connection (takeover) or for this
            # fragmented message only.
            if self.zs is None:
                self.zs = _ZStream(False, self.window_bits)
            zs = self.zs
        else:
            zs = _get_shared_inflater()
            shared = True
        try:
            zs.init()
            zs.dirty = True
            out = _inflate(zs, data, n, max_length, final)
            zs.dirty = False
        except BaseException:
            self.failed = True
            self.in_message = False
            if shared:
                zs.reset()
            else:
                self.zs = None
            raise
        if final:
            self.in_message = False
            if self.no_context_takeover:
                if shared:
                    zs.reset()
                else:
                    self.zs = None      # frees the private stream of this message
        else:
            self.in_message = True
        return out

    def __repr__(self):
        return (f"Inflater(window_bits={self.window_bits}, "
                f"no_context_takeover={self.no_context_takeover})")


cdef bytes _inflate(_ZStream zs, const unsigned char *data, Py_ssize_t n,
                    Py_ssize_t max_length, bint final):
    """Inflate ``data`` (+ the RFC 7692 tail when ``final``) within ``max_length``."""
    cdef z_stream *strm = &zs.strm
    cdef Py_ssize_t limit, cap, produced = 0, remaining = n, given, step
    cdef bint tail_pending = final
    cdef PyObject *buf = NULL
    cdef int ret
    # One byte past the budget is enough to know the budget is exceeded.
    limit = max_length + 1 if max_length < PY_SSIZE_T_MAX else max_length
    cap = 4 * n + 256
    if cap > INFLATE_STEP or cap < 0:
        cap = INFLATE_STEP
    if cap > limit:
        cap = limit
    buf = _new_bytes(NULL, cap)
    strm.avail_in = 0
    try:
        while True:
            if strm.avail_in == 0:
                if remaining > 0:
                    given = remaining if remaining < Z_CHUNK else Z_CHUNK
                    strm.next_in = <Bytef *>(data + (n - remaining))
                    strm.avail_in = <uInt>given
                    remaining -= given
                elif tail_pending:
                    tail_pending = False
                    if zs.ended:
                        # The message was a complete stream (BFINAL): the tail
                        # would open a stored block that never ends.
                        break
                    strm.next_in = <Bytef *>TAIL
                    strm.avail_in = 4
            if produced == cap:
                if cap >= limit:
                    raise MessageTooBig()
                cap = cap * 2 if cap < limit // 2 else limit
                _PyBytes_Resize(&buf, cap)
            step = cap - produced
            if step > INFLATE_STEP:
                step = INFLATE_STEP
            strm.next_out = <Bytef *>_bytes_data(buf) + produced
            strm.avail_out = <uInt>step
            given = strm.avail_in
            ret = inflate(strm, Z_SYNC_FLUSH)
            if strm.avail_in != given:
                zs.ended = False    # the fresh stream got data: the tail is needed again
            produced += step - strm.avail_out
            if produced > max_length:
                raise MessageTooBig()
            if ret == Z_STREAM_END:
                # A complete stream ending in a BFINAL block (accepted, like Bun):
                # start a fresh stream for whatever follows, the tail included.
                inflateReset(strm)
                zs.ended = True
                if strm.avail_in == 0 and remaining == 0 and not tail_pending:
                    break
            elif ret == Z_OK or ret == Z_BUF_ERROR:
                if strm.avail_in == 0 and strm.avail_out != 0:
                    if remaining == 0 and not tail_pending:
                        break
                elif ret == Z_BUF_ERROR and strm.avail_out != 0:
                    raise ProtocolError(1007, INVALID_DATA)
            elif ret == Z_MEM_ERROR:
                raise MemoryError()
            else:
                raise ProtocolError(1007, INVALID_DATA)
        if produced != cap:
            _PyBytes_Resize(&buf, produced)
        out = <bytes>buf
    finally:
        strm.next_in = NULL
        strm.next_out = NULL
        strm.avail_in = 0
        Py_XDECREF(buf)
    return out
