"""Zero-filled and byte-filled 64 MiB blocks: every allocator against
numpy.zeros / numpy.full and C calloc / malloc + memset (through ctypes)."""

import pytest

from memmanager import Buffer

from support import allocating_allocators, hot, mark

N = 64 << 20

ALLOCATORS = [pytest.param(allocator, marks=hot(allocator == "PyAlloc"))
              for allocator in allocating_allocators()]


@pytest.mark.parametrize("allocator", ALLOCATORS)
def test_zero_memmanager(benchmark, allocator):
    mark(benchmark, "zero-filled 64MiB", f"memmanager:{allocator}")
    benchmark(Buffer, N, 1, allocator=allocator, init_value=0)


@pytest.mark.parametrize("allocator", ALLOCATORS)
def test_fill_memmanager(benchmark, allocator):
    mark(benchmark, "byte-filled 64MiB", f"memmanager:{allocator}")
    benchmark(Buffer, N, 1, allocator=allocator, init_value=7)


@pytest.mark.hotpath
def test_zero_numpy(benchmark):
    numpy = pytest.importorskip("numpy")
    mark(benchmark, "zero-filled 64MiB", "numpy.zeros")
    benchmark(numpy.zeros, N, "u1")


@pytest.mark.hotpath
def test_fill_numpy(benchmark):
    numpy = pytest.importorskip("numpy")
    mark(benchmark, "byte-filled 64MiB", "numpy.full")
    benchmark(numpy.full, N, 7, "u1")


def test_zero_calloc(benchmark, libc):
    mark(benchmark, "zero-filled 64MiB", "C calloc+free")

    def calloc_free():
        libc.free(libc.calloc(N, 1))
    benchmark(calloc_free)


def test_fill_memset(benchmark, libc):
    mark(benchmark, "byte-filled 64MiB", "C malloc+memset+free")

    def malloc_memset_free():
        p = libc.malloc(N)
        libc.memset(p, 7, N)
        libc.free(p)
    benchmark(malloc_memset_free)
