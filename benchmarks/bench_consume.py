"""Adopting foreign memory: an address, a block from malloc and a buffer
object, against the peers that wrap memory they do not own."""

import ctypes

import pytest

from memmanager import Buffer

from support import mark


@pytest.fixture(scope="module")
def memory():
    owner = bytearray(4096)
    address = ctypes.addressof((ctypes.c_char * 4096).from_buffer(owner))
    return owner, address


CHAR64 = ctypes.c_char * 64


@pytest.mark.hotpath
def test_consume_address(benchmark, memory):
    owner, address = memory
    mark(benchmark, "wrap an address", "memmanager:consume(Borrowed)")
    benchmark(lambda: Buffer.consume(address, 64, 1, allocator="Borrowed",
                                     owner=owner, delayed_gc=False))


@pytest.mark.hotpath
def test_from_address(benchmark, memory):
    _, address = memory
    mark(benchmark, "wrap an address", "ctypes from_address")
    benchmark(lambda: CHAR64.from_address(address))


@pytest.mark.hotpath
def test_foreign_buffer(benchmark, memory):
    pyarrow = pytest.importorskip("pyarrow")
    owner, address = memory
    mark(benchmark, "wrap an address", "pyarrow.foreign_buffer")
    benchmark(lambda: pyarrow.foreign_buffer(address, 64, owner))


def test_consume_malloc(benchmark, libc):
    """Taking over a malloc'd block: memmanager frees it when the buffer
    dies; the peer frees it by hand."""
    malloc = libc.malloc
    mark(benchmark, "adopt a malloc'd block", "memmanager:malloc+consume(CMalloc)")
    benchmark(lambda: Buffer.consume(malloc(64), 64, 1, allocator="CMalloc",
                                     delayed_gc=False))


def test_malloc_from_address(benchmark, libc):
    malloc, free = libc.malloc, libc.free

    def wrap_and_free():
        address = malloc(64)
        CHAR64.from_address(address)
        free(address)
    mark(benchmark, "adopt a malloc'd block", "malloc+ctypes from_address+free")
    benchmark(wrap_and_free)


def test_consume_object(benchmark):
    ba = bytearray(64)
    mark(benchmark, "wrap a buffer object", "memmanager:consume(bytearray)")
    benchmark(lambda: Buffer.consume(ba, 64, 1, delayed_gc=False))


def test_memoryview(benchmark):
    ba = bytearray(64)
    mark(benchmark, "wrap a buffer object", "memoryview(ba)")
    benchmark(lambda: memoryview(ba))


def test_numpy_frombuffer(benchmark):
    numpy = pytest.importorskip("numpy")
    ba = bytearray(64)
    mark(benchmark, "wrap a buffer object", "numpy.frombuffer")
    benchmark(lambda: numpy.frombuffer(ba, "u1"))


def test_ffi_from_buffer(benchmark):
    cffi = pytest.importorskip("cffi")
    ffi = cffi.FFI()
    ba = bytearray(64)
    mark(benchmark, "wrap a buffer object", "cffi ffi.from_buffer")
    benchmark(lambda: ffi.from_buffer(ba))
