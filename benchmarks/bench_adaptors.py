"""Resource adaptors: create + destroy through a Pool against the peers
that make the same block without one.

    64 B    Pool over PyAlloc                 bytearray(64)
    4 KiB   Pool over Mmap                    numpy.empty(4096, "u1")
    64 MiB  a warm Pool over Mmap             pyarrow.allocate_buffer (jemalloc)

Buffer(64, 1) from PyAlloc itself is a row of the 64 B group too: most of
a small create + destroy is the Buffer object, not the allocator.  The
last group is the pool's cost with 10^3 .. 10^6 blocks of it live: O(1)
means the 10^6 row stays close to 10^3 (the registry's own O(log n) is in
it too, as every live block is a live buffer)."""

import gc
import uuid

import pytest

import memmanager
from memmanager import Buffer

from support import hot, mark


def pool_over(upstream, **options):
    name = f"BenchPool{uuid.uuid4().hex[:8]}"
    memmanager.register_allocator(name, memmanager.Pool(upstream, **options))
    return name


POOL_PYALLOC = pool_over("PyAlloc")
POOL_MMAP = pool_over("Mmap")
POOL_LARGE = pool_over("Mmap")
SCALING_POOL = pool_over("PyAlloc")

# Warm: each pool has served its size once, so the rows time reuse.
for _name, _size in ((POOL_PYALLOC, 64), (POOL_MMAP, 4096), (POOL_LARGE, 64 << 20)):
    Buffer(_size, 1, allocator=_name).release()


@pytest.mark.hotpath
def test_pool_64(benchmark):
    mark(benchmark, "pool create+destroy 64B", "memmanager:Pool(PyAlloc)")
    benchmark(Buffer, 64, 1, allocator=POOL_PYALLOC)


def test_pyalloc_64(benchmark):
    mark(benchmark, "pool create+destroy 64B", "memmanager:PyAlloc")
    benchmark(Buffer, 64, 1)


@pytest.mark.hotpath
def test_bytearray_64(benchmark):
    mark(benchmark, "pool create+destroy 64B", "bytearray")
    benchmark(bytearray, 64)


@pytest.mark.hotpath
def test_pool_4k(benchmark):
    mark(benchmark, "pool create+destroy 4KiB", "memmanager:Pool(Mmap)")
    benchmark(Buffer, 4096, 1, allocator=POOL_MMAP)


@pytest.mark.hotpath
def test_numpy_4k(benchmark):
    numpy = pytest.importorskip("numpy")
    mark(benchmark, "pool create+destroy 4KiB", "numpy.empty")
    benchmark(numpy.empty, 4096, "u1")


@pytest.mark.hotpath
def test_pool_64m(benchmark):
    mark(benchmark, "pool create+destroy 64MiB", "memmanager:Pool(Mmap) warm")
    benchmark(Buffer, 64 << 20, 1, allocator=POOL_LARGE)


@pytest.mark.hotpath
def test_pyarrow_64m(benchmark):
    pyarrow = pytest.importorskip("pyarrow")
    mark(benchmark, "pool create+destroy 64MiB", "pyarrow.allocate_buffer")
    benchmark(pyarrow.allocate_buffer, 64 << 20)


LIVE = {"1e3": 10**3, "1e4": 10**4, "1e5": 10**5, "1e6": 10**6}


@pytest.fixture(scope="module",
                params=[pytest.param(n, marks=hot(n in ("1e3", "1e6"))) for n in LIVE])
def live_blocks(request):
    gc.collect()
    gc.disable()          # no collections while the million objects are made
    try:
        keep = [Buffer(64, 1, allocator=SCALING_POOL) for _ in range(LIVE[request.param])]
    finally:
        gc.enable()
    gc.freeze()
    yield request.param
    gc.unfreeze()
    del keep
    gc.collect()


def test_pool_with_live(benchmark, live_blocks):
    subject = ("memmanager:Pool, 10^6 live" if live_blocks == "1e6"
               else f"Pool, {live_blocks} live")
    mark(benchmark, "pool scaling", subject)
    benchmark(Buffer, 64, 1, allocator=SCALING_POOL)
