# Declarations of the compiled client connection core (bunws/_client.pyx).

from bunws._frame cimport FrameParser

cdef class ClientCore:
    cdef object session
    cdef object loop
    cdef readonly object transport
    cdef FrameParser parser
    cdef object deflater
    cdef bytearray out
    cdef bint flush_scheduled
    cdef object messages
    cdef Py_ssize_t max_queue
    cdef Py_ssize_t write_limit
    cdef object recv_waiter
    cdef object drain_waiter
    cdef bytes keys
    cdef Py_ssize_t key_pos
    cdef readonly bint started
    cdef readonly bint stopped
    cdef readonly bint lost
    cdef readonly bint reading_paused
    cdef readonly bint write_paused

    cdef int feed(self, object data) except -1
    cdef int wake_receiver(self) except -1
    cdef int wake_senders(self) except -1
    cpdef object next_message(self)
    cdef bint queue_frame(self, int opcode, bytes payload, bint fin, bint rsv1) except -1
    cpdef flush(self)
