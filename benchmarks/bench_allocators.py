"""The allocators against the system calls they wrap: create + destroy of
64 B, 64 KiB and 64 MiB through Aligned and Mmap (uninitialised) against
posix_memalign + free and mmap + munmap called through ctypes.

The bar is the system call's cost plus a constant.  The constant shows in
the small rows (a Python object, the registry, tracemalloc's hook); at
64 MiB both sides are the system calls.  (The fills of every allocator
are in bench_fill.py.)"""

import ctypes
import mmap

import pytest

from memmanager import Buffer

from support import mark

SIZES = {"64B": 64, "64KiB": 64 << 10, "64MiB": 64 << 20}
PROT = mmap.PROT_READ | mmap.PROT_WRITE
FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("allocator", ["Aligned", "Mmap"])
def test_memmanager(benchmark, allocator, size):
    mark(benchmark, f"system call {size}", f"memmanager:{allocator}")
    benchmark(Buffer, SIZES[size], 1, allocator=allocator)


@pytest.mark.parametrize("size", SIZES)
def test_posix_memalign(benchmark, libc, size):
    mark(benchmark, f"system call {size}", "posix_memalign+free", only=["Aligned"])
    n, pointer, memalign, free = SIZES[size], ctypes.c_void_p(), libc.posix_memalign, libc.free
    where = ctypes.byref(pointer)

    def memalign_free():
        memalign(where, 64, n)
        free(pointer)
    benchmark(memalign_free)


@pytest.mark.parametrize("size", SIZES)
def test_mmap(benchmark, libc, size):
    mark(benchmark, f"system call {size}", "mmap+munmap", only=["Mmap"])
    n, map_, unmap = SIZES[size], libc.mmap, libc.munmap
    benchmark(lambda: unmap(map_(None, n, PROT, FLAGS, -1, 0), n))
