# Declarations of the permessage-deflate codec (bunws/_deflate.pyx): the zlib C API
# we call and the Deflater/Inflater layouts, so that other modules may cimport them.

cdef extern from "zlib.h" nogil:
    ctypedef unsigned char Bytef
    ctypedef unsigned int uInt
    ctypedef unsigned long uLong
    ctypedef void *voidpf

    ctypedef struct z_stream:
        Bytef *next_in         # z_const is empty unless ZLIB_CONST is defined
        uInt avail_in
        uLong total_in
        Bytef *next_out
        uInt avail_out
        uLong total_out
        const char *msg
        voidpf opaque
        int data_type
        uLong adler

    ctypedef z_stream *z_streamp

    int Z_OK
    int Z_STREAM_END
    int Z_NEED_DICT
    int Z_ERRNO
    int Z_STREAM_ERROR
    int Z_DATA_ERROR
    int Z_MEM_ERROR
    int Z_BUF_ERROR
    int Z_NO_FLUSH
    int Z_SYNC_FLUSH
    int Z_FINISH
    int Z_DEFLATED
    int Z_DEFAULT_STRATEGY
    int Z_DEFAULT_COMPRESSION
    int Z_BEST_SPEED

    # The *2 entry points are macros that pass ZLIB_VERSION and sizeof(z_stream).
    int deflateInit2(z_streamp strm, int level, int method, int windowBits,
                     int memLevel, int strategy)
    int deflate(z_streamp strm, int flush)
    int deflateReset(z_streamp strm)
    int deflateEnd(z_streamp strm)
    uLong deflateBound(z_streamp strm, uLong sourceLen)
    int inflateInit2(z_streamp strm, int windowBits)
    int inflate(z_streamp strm, int flush)
    int inflateReset(z_streamp strm)
    int inflateEnd(z_streamp strm)


cdef class _ZStream:
    """One initialised zlib stream (deflate or inflate), freed with the object."""
    # config
    cdef bint is_deflate
    cdef int window_bits
    cdef int mem_level
    cdef int level
    # state
    cdef z_stream strm
    cdef bint ready        # the z_stream is initialised
    cdef bint dirty        # a call failed half way: reset before the next use
    cdef bint ended        # inflate: a BFINAL block ended the stream and no data followed yet

    cdef int init(self) except -1
    cdef int reset(self) except -1


cdef class Deflater:
    # config
    cdef readonly int window_bits
    cdef readonly int mem_level
    cdef readonly int level
    cdef readonly bint no_context_takeover
    # state
    cdef _ZStream zs       # own stream, allocated lazily (for a stateless_deflater(): the shared one)

    cdef bytes _compress(self, const unsigned char *data, Py_ssize_t n)


cdef class Inflater:
    # config
    cdef readonly int window_bits
    cdef readonly bint no_context_takeover
    # state
    cdef _ZStream zs       # own stream: for the whole life (takeover) or one fragmented message
    cdef bint in_message   # a non-final fragment has been fed
    cdef Py_ssize_t m_input  # compressed bytes fed for the current message
    cdef readonly bint failed

    cdef bytes _decompress(self, const unsigned char *data, Py_ssize_t n,
                           Py_ssize_t max_length, bint final)
