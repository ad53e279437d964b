"""Adopting foreign memory: an address and a buffer object, vs the peers
that wrap memory they do not own."""

import ctypes

import pytest

from memmanager import Buffer

from .conftest import mark


@pytest.fixture(scope="module")
def memory():
    owner = bytearray(4096)
    address = ctypes.addressof((ctypes.c_char * 4096).from_buffer(owner))
    return owner, address


def test_consume_address(benchmark, memory):
    owner, address = memory
    mark(benchmark, "wrap an address", "memmanager:consume(Borrowed)")
    benchmark(lambda: Buffer.consume(address, 64, 1, allocator="Borrowed",
                                     owner=owner, delayed_gc=False))


def test_from_address(benchmark, memory):
    _, address = memory
    char64 = ctypes.c_char * 64
    mark(benchmark, "wrap an address", "ctypes from_address")
    benchmark(lambda: char64.from_address(address))


def test_foreign_buffer(benchmark, memory):
    pyarrow = pytest.importorskip("pyarrow")
    owner, address = memory
    mark(benchmark, "wrap an address", "pyarrow.foreign_buffer")
    benchmark(lambda: pyarrow.foreign_buffer(address, 64, owner))


def test_consume_object(benchmark):
    ba = bytearray(64)
    mark(benchmark, "wrap a buffer object", "memmanager:consume(bytearray)")
    benchmark(lambda: Buffer.consume(ba, 64, 1, delayed_gc=False))


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
