"""The buffer protocol: DESIGN section 2 (Buffer protocol).

Every PyBUF_* request is made directly through the C API
(ctypes.pythonapi.PyObject_GetBuffer), so the tests see exactly what a C
consumer sees.
"""

import ctypes
import gc
import hashlib

import cffi
import numpy as np
import pytest

from memmanager import Buffer

N = 48
DATA = bytes(range(7, 7 + N))


class Py_buffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.POINTER(ctypes.c_ssize_t)),
        ("strides", ctypes.POINTER(ctypes.c_ssize_t)),
        ("suboffsets", ctypes.POINTER(ctypes.c_ssize_t)),
        ("internal", ctypes.c_void_p),
    ]


PyObject_GetBuffer = ctypes.pythonapi.PyObject_GetBuffer
PyObject_GetBuffer.argtypes = [ctypes.py_object, ctypes.POINTER(Py_buffer), ctypes.c_int]
PyObject_GetBuffer.restype = ctypes.c_int
PyBuffer_Release = ctypes.pythonapi.PyBuffer_Release
PyBuffer_Release.argtypes = [ctypes.POINTER(Py_buffer)]
PyBuffer_Release.restype = None

SIMPLE = 0
WRITABLE = 0x0001
FORMAT = 0x0004
ND = 0x0008
STRIDES = 0x0010 | ND
C_CONTIGUOUS = 0x0020 | STRIDES
F_CONTIGUOUS = 0x0040 | STRIDES
ANY_CONTIGUOUS = 0x0080 | STRIDES
INDIRECT = 0x0100 | STRIDES

REQUESTS = {
    "SIMPLE": SIMPLE,
    "WRITABLE": WRITABLE,
    "FORMAT": FORMAT,
    "ND": ND,
    "STRIDES": STRIDES,
    "C_CONTIGUOUS": C_CONTIGUOUS,
    "F_CONTIGUOUS": F_CONTIGUOUS,
    "ANY_CONTIGUOUS": ANY_CONTIGUOUS,
    "INDIRECT": INDIRECT,
    "CONTIG": ND | WRITABLE,
    "CONTIG_RO": ND,
    "STRIDED": STRIDES | WRITABLE,
    "STRIDED_RO": STRIDES,
    "RECORDS": STRIDES | WRITABLE | FORMAT,
    "RECORDS_RO": STRIDES | FORMAT,
    "FULL": INDIRECT | WRITABLE | FORMAT,
    "FULL_RO": INDIRECT | FORMAT,
    "C_CONTIGUOUS|FORMAT|WRITABLE": C_CONTIGUOUS | FORMAT | WRITABLE,
    "F_CONTIGUOUS|FORMAT": F_CONTIGUOUS | FORMAT,
    "ANY_CONTIGUOUS|WRITABLE": ANY_CONTIGUOUS | WRITABLE,
    "FORMAT|WRITABLE": FORMAT | WRITABLE,
    "ND|FORMAT": ND | FORMAT,
}


@pytest.fixture(params=["PyAlloc", "CMalloc"])
def buf(request, make_buffer):
    b = make_buffer(N // 4, 4, allocator=request.param)
    b[:] = DATA
    return b


@pytest.fixture
def ro_buf():
    source = bytes(bytearray(DATA))  # a fresh object, not the module constant
    b = Buffer.consume(source, N, 1)
    yield b
    b.release()


def check_view(view, target, flags, readonly):
    assert view.buf == target.address
    assert view.obj == id(target)
    assert view.len == N
    assert view.itemsize == 1
    assert view.readonly == int(readonly)
    assert view.ndim == 1
    assert ctypes.string_at(view.buf, view.len) == DATA
    if flags & FORMAT:
        assert view.format == b"B"
    else:
        assert view.format in (None, b"B")
    if (flags & ND) == ND:
        assert bool(view.shape)
        assert view.shape[0] == N
    else:
        assert not view.shape
    if (flags & STRIDES) == STRIDES:
        assert bool(view.strides)
        assert view.strides[0] == 1
    assert not view.suboffsets


@pytest.mark.parametrize("name", list(REQUESTS))
def test_every_request(buf, name):
    flags = REQUESTS[name]
    view = Py_buffer()
    assert PyObject_GetBuffer(buf, ctypes.byref(view), flags) == 0
    try:
        assert buf.exports == 1
        check_view(view, buf, flags, readonly=False)
        # Writable memory: a write through the view shows in the buffer.
        ctypes.memset(view.buf, 0xAB, 1)
        assert buf[0] == 0xAB
    finally:
        PyBuffer_Release(ctypes.byref(view))
    assert buf.exports == 0
    buf.release()
    assert buf.released


@pytest.mark.parametrize("name", list(REQUESTS))
def test_every_request_read_only(ro_buf, name):
    flags = REQUESTS[name]
    view = Py_buffer()
    if flags & WRITABLE:
        with pytest.raises(BufferError):
            PyObject_GetBuffer(ro_buf, ctypes.byref(view), flags)
        assert ro_buf.exports == 0
        return
    assert PyObject_GetBuffer(ro_buf, ctypes.byref(view), flags) == 0
    try:
        assert ro_buf.exports == 1
        check_view(view, ro_buf, flags, readonly=True)
    finally:
        PyBuffer_Release(ctypes.byref(view))
    assert ro_buf.exports == 0


def test_nested_requests_count(buf):
    views = [Py_buffer() for _ in range(5)]
    for i, view in enumerate(views):
        assert PyObject_GetBuffer(buf, ctypes.byref(view), REQUESTS["FULL_RO"]) == 0
        assert buf.exports == i + 1
    for i, view in enumerate(reversed(views)):
        PyBuffer_Release(ctypes.byref(view))
        assert buf.exports == len(views) - i - 1


def test_failed_request_is_not_counted(ro_buf):
    view = Py_buffer()
    for _ in range(3):
        with pytest.raises(BufferError):
            PyObject_GetBuffer(ro_buf, ctypes.byref(view), WRITABLE)
    assert ro_buf.exports == 0
    ro_buf.release()
    assert ro_buf.released


# --------------------------------------------------------------------------
# memoryview

def test_memoryview(buf):
    with memoryview(buf) as view:
        assert view.format == "B"
        assert view.itemsize == 1
        assert view.ndim == 1
        assert view.shape == (N,)
        assert view.strides == (1,)
        assert view.suboffsets == ()
        assert view.c_contiguous and view.f_contiguous and view.contiguous
        assert view.readonly is False
        assert view.nbytes == N
        assert view.obj is buf
        assert view.tobytes() == DATA
        view[3] = 1
        assert buf[3] == 1
        buf[4] = 2
        assert view[4] == 2
    assert buf.exports == 0


def test_memoryview_read_only(ro_buf):
    with memoryview(ro_buf) as view:
        assert view.readonly is True
        assert view.tobytes() == DATA
        with pytest.raises(TypeError):
            view[0] = 1
    assert bytes(ro_buf) == DATA


def test_memoryview_cast(buf):
    with memoryview(buf) as view, view.cast("I") as words:
        assert len(words) == N // 4
        words[0] = 0x01020304
        assert buf[0:4] == (0x01020304).to_bytes(4, "little" if np.little_endian else "big")
    assert buf.exports == 0


# --------------------------------------------------------------------------
# numpy

def test_numpy_asarray_aliases(buf):
    arr = np.asarray(buf)
    assert arr.dtype == np.uint8
    assert arr.shape == (N,)
    assert arr.flags.writeable
    assert arr.flags.c_contiguous
    assert arr.ctypes.data == buf.address
    assert buf.exports == 1
    arr[3] = 200
    assert buf[3] == 200
    buf[5] = 201
    assert arr[5] == 201
    del arr
    gc.collect()
    assert buf.exports == 0


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.uint32, np.float64])
def test_numpy_frombuffer_aliases(buf, dtype):
    arr = np.frombuffer(buf, dtype=dtype)
    assert arr.nbytes == N
    assert arr.ctypes.data == buf.address
    assert arr.flags.writeable
    assert arr.tobytes() == DATA
    arr[0] = 1
    assert buf[0:arr.itemsize] == np.array([1], dtype=dtype).tobytes()
    buf[:] = bytes(N)
    assert not arr.any()
    del arr
    assert buf.exports == 0


def test_numpy_offset_count(buf):
    arr = np.frombuffer(buf, dtype=np.uint8, count=4, offset=10)
    assert arr.ctypes.data == buf.address + 10
    assert arr.tobytes() == DATA[10:14]
    del arr
    assert buf.exports == 0


def test_numpy_array_copy(buf):
    arr = np.array(buf)
    assert arr.ctypes.data != buf.address
    assert arr.tobytes() == DATA
    assert buf.exports == 0
    arr[0] = 0
    assert buf[0] == DATA[0]


def test_numpy_read_only(ro_buf):
    arr = np.frombuffer(ro_buf, dtype=np.uint8)
    assert not arr.flags.writeable
    assert arr.ctypes.data == ro_buf.address
    with pytest.raises(ValueError):
        arr[0] = 1
    with pytest.raises(ValueError):
        arr.flags.writeable = True
    arr2 = np.asarray(ro_buf)
    assert not arr2.flags.writeable
    assert ro_buf.exports == 2
    del arr, arr2
    assert ro_buf.exports == 0
    assert bytes(ro_buf) == DATA


# --------------------------------------------------------------------------
# ctypes and cffi

def test_ctypes_from_buffer(buf):
    arr = (ctypes.c_char * N).from_buffer(buf)
    assert ctypes.addressof(arr) == buf.address
    assert arr.raw == DATA
    assert buf.exports == 1
    arr[0] = b"z"
    assert buf[0] == ord("z")
    buf[1] = ord("y")
    assert arr[1] == b"y"
    del arr
    gc.collect()
    assert buf.exports == 0


def test_ctypes_from_buffer_offset(buf):
    arr = (ctypes.c_uint8 * 4).from_buffer(buf, 8)
    assert ctypes.addressof(arr) == buf.address + 8
    assert bytes(arr) == DATA[8:12]
    del arr
    gc.collect()
    assert buf.exports == 0


def test_ctypes_from_buffer_read_only(ro_buf):
    with pytest.raises((TypeError, BufferError)):
        (ctypes.c_char * N).from_buffer(ro_buf)
    assert ro_buf.exports == 0
    copied = (ctypes.c_char * N).from_buffer_copy(ro_buf)
    assert copied.raw == DATA
    assert ro_buf.exports == 0


def test_cffi_from_buffer(buf):
    ffi = cffi.FFI()
    ptr = ffi.from_buffer(buf)
    assert int(ffi.cast("uintptr_t", ptr)) == buf.address
    assert len(ptr) == N
    assert buf.exports == 1
    ptr[0] = b"q"
    assert buf[0] == ord("q")
    buf[2] = 0
    assert ptr[2] == b"\x00"
    ffi.release(ptr)
    assert buf.exports == 0


def test_cffi_typed_from_buffer(buf):
    ffi = cffi.FFI()
    ptr = ffi.from_buffer("uint32_t[]", buf)
    assert len(ptr) == N // 4
    assert int(ffi.cast("uintptr_t", ptr)) == buf.address
    ptr[1] = 0xFFFFFFFF
    assert buf[4:8] == b"\xff" * 4
    del ptr
    gc.collect()
    assert buf.exports == 0


def test_cffi_require_writable(ro_buf):
    ffi = cffi.FFI()
    with pytest.raises((TypeError, BufferError)):
        ffi.from_buffer(ro_buf, require_writable=True)
    assert ro_buf.exports == 0
    ptr = ffi.from_buffer(ro_buf)
    assert ffi.buffer(ptr)[:] == DATA
    ffi.release(ptr)
    assert ro_buf.exports == 0


# --------------------------------------------------------------------------
# consumers that copy or read

def test_copying_consumers(buf):
    assert bytes(buf) == DATA
    assert bytearray(buf) == DATA
    assert hashlib.sha256(buf).digest() == hashlib.sha256(DATA).digest()
    assert b"".join([buf, buf]) == DATA * 2
    assert buf.exports == 0


def test_exports_every_kind_together(buf):
    ffi = cffi.FFI()
    holders = [memoryview(buf), np.asarray(buf), np.frombuffer(buf, np.uint8),
               (ctypes.c_char * N).from_buffer(buf), ffi.from_buffer(buf), buf.region(1, 2)]
    assert buf.exports == len(holders)
    with pytest.raises(BufferError, match=rf"\b{len(holders)} live export"):
        buf.release()
    while holders:
        holders.pop()
        gc.collect()
        assert buf.exports == len(holders)
    buf.release()
    assert buf.released
