"""Handing a buffer to C: ctypes and cffi recipes.

Real C library functions (memset, qsort) work on buffers through ctypes
and cffi, both through objects that hold an export and through the raw
address.  The Python blocks of docs/views.md (the recipes) run in
tests/test_docs.py, with those of every other page.
"""

import ctypes
import gc
import weakref

import cffi
import pytest

from memmanager import Buffer

@pytest.fixture(scope="module")
def libc():
    lib = ctypes.CDLL(None)
    lib.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    lib.memset.restype = ctypes.c_void_p
    return lib


@pytest.fixture(scope="module")
def cffi_libc():
    ffi = cffi.FFI()
    ffi.cdef("""
        void *memset(void *s, int c, size_t n);
        void qsort(void *base, size_t nmemb, size_t size,
                   int (*compar)(const void *, const void *));
    """)
    return ffi, ffi.dlopen(None)


COMPARE_INT32 = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


@COMPARE_INT32
def compare_int32(a, b):
    x = ctypes.c_int32.from_address(a).value
    y = ctypes.c_int32.from_address(b).value
    return (x > y) - (x < y)


# ---------------------------------------------------------------------------
# ctypes
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("allocator", ["PyAlloc", "CMalloc"])
def test_memset_through_the_raw_address(libc, allocator):
    buf = Buffer(64, 1, allocator=allocator, init_value=0)
    result = libc.memset(ctypes.c_void_p(buf.address), 0x5A, 40)
    assert result == buf.address
    assert buf[:] == b"\x5a" * 40 + b"\x00" * 24
    libc.memset(buf.address, 1, 1)           # a plain int works too
    assert buf[0] == 1
    buf.release()


def test_qsort_on_a_buffer(libc):
    values = [17, -4, 99, 0, -100, 3, 3, 8]
    buf = Buffer(len(values), 4)
    numbers = (ctypes.c_int32 * len(values)).from_buffer(buf)
    numbers[:] = values
    libc.qsort.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
                           COMPARE_INT32]
    libc.qsort.restype = None
    libc.qsort(ctypes.c_void_p(buf.address), len(values), 4, compare_int32)
    assert list(numbers) == sorted(values)
    assert buf[:4] == (-100).to_bytes(4, "little", signed=True)
    del numbers
    buf.release()


def test_from_buffer_holds_an_export_and_the_memory():
    buf = Buffer(16, 1, init_value=3)
    ref = weakref.ref(buf)
    array = (ctypes.c_char * 16).from_buffer(buf)
    assert ctypes.addressof(array) == buf.address and buf.exports == 1
    with pytest.raises(BufferError):
        buf.release()
    del buf
    gc.collect()
    assert ref() is not None
    array[0] = b"z"
    assert array.raw == b"z" + b"\x03" * 15
    del array
    gc.collect()
    assert ref() is None


def test_from_buffer_refuses_read_only_buffers():
    buf = Buffer.consume(b"constant", 8, 1, delayed_gc=False)
    with pytest.raises(TypeError):
        (ctypes.c_char * 8).from_buffer(buf)
    copy = (ctypes.c_char * 8).from_buffer_copy(buf)
    assert copy.raw == b"constant" and buf.exports == 0


# ---------------------------------------------------------------------------
# cffi
# ---------------------------------------------------------------------------

def test_cffi_from_buffer_memset_and_release(cffi_libc):
    ffi, lib = cffi_libc
    buf = Buffer(32, 1, init_value=0)
    raw = ffi.from_buffer(buf)
    assert int(ffi.cast("uintptr_t", raw)) == buf.address and buf.exports == 1
    lib.memset(raw, 0x33, 10)
    assert buf[:11] == b"\x33" * 10 + b"\x00"
    with pytest.raises(BufferError):
        buf.release()
    ffi.release(raw)
    assert buf.exports == 0
    buf.release()


def test_cffi_cast_of_the_address_and_qsort(cffi_libc):
    ffi, lib = cffi_libc
    values = [5.5, -1.0, 3.25, 0.0, 2.0]
    buf = Buffer(len(values), 8)
    doubles = ffi.cast("double *", buf.address)
    for i, value in enumerate(values):
        doubles[i] = value

    @ffi.callback("int(const void *, const void *)")
    def compare(a, b):
        x, y = ffi.cast("double *", a)[0], ffi.cast("double *", b)[0]
        return (x > y) - (x < y)

    lib.qsort(ffi.cast("void *", buf.address), len(values), 8, compare)
    assert list(doubles[0:len(values)]) == sorted(values)
    assert buf.exports == 0                  # a cast holds nothing
    buf.release()


def test_cffi_typed_from_buffer(cffi_libc):
    ffi, _ = cffi_libc
    buf = Buffer(4, 4, init_value=0)
    ints = ffi.from_buffer("int32_t[]", buf)
    assert len(ints) == 4
    ints[2] = -1
    assert buf[8:12] == b"\xff\xff\xff\xff"
    del ints
    gc.collect()
    assert buf.exports == 0
    buf.release()
