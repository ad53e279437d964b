"""Resource adaptors: create + destroy through a Pool against the peers
that make the same block without one.

    64 B    Pool over PyAlloc                 bytearray(64)
    4 KiB   Pool over Mmap                    numpy.empty(4096, "u1")
    64 MiB  a warm Pool over Mmap             pyarrow.allocate_buffer (jemalloc)

Buffer(64, 1) from PyAlloc itself is a row of the 64 B group too: most of
a small create + destroy is the Buffer object, not the allocator.  The
last group is the pool's cost with 10^3 .. 10^6 blocks of it live: O(1)
means the 10^6 row stays close to 10^3 (the registry's own O(log n) is in
it too, as every live block is a live buffer).

Every row of these groups calls its subject through one lambda written
as a user writes the call (`lambda: Buffer(64, 1, allocator="Big")`,
`lambda: bytearray(64)`): pytest-benchmark can only pass keywords as a
dict, and `f(*args, **kwargs)` builds a dict and a keyword tuple per call
(about 250 ns here), a cost of the harness that no program with the call
written out pays.  The lambda is one Python frame on both sides."""

import gc
import uuid

import pytest

import memmanager
from memmanager import Buffer

from support import hot, mark


def as_written(source, **names):
    """A function that makes the call `source` as written in code (its
    keywords a constant of the code object), with `names` in scope."""
    return eval(f"lambda: {source}", {"Buffer": Buffer, **names})


def pool_over(upstream, **options):
    name = f"BenchPool{uuid.uuid4().hex[:8]}"
    memmanager.register_allocator(name, memmanager.Pool(upstream, **options))
    return name


@pytest.fixture(scope="module")
def pools():
    """The pools, registered when this module runs, not when it is
    collected: the other modules list the registered allocators then, and
    a pool there would be a row of every allocator group.  Each pool has
    served its size once, so the rows time reuse."""
    names = {"64": pool_over("PyAlloc"), "4k": pool_over("Mmap"),
             "64m": pool_over("Mmap"), "scaling": pool_over("PyAlloc")}
    for key, size in (("64", 64), ("4k", 4096), ("64m", 64 << 20)):
        Buffer(size, 1, allocator=names[key]).release()
    return names


@pytest.mark.hotpath
def test_pool_64(benchmark, pools):
    mark(benchmark, "pool create+destroy 64B", "memmanager:Pool(PyAlloc)")
    benchmark(as_written(f"Buffer(64, 1, allocator={pools['64']!r})"))


def test_pyalloc_64(benchmark):
    mark(benchmark, "pool create+destroy 64B", "memmanager:PyAlloc")
    benchmark(as_written("Buffer(64, 1)"))


@pytest.mark.hotpath
def test_bytearray_64(benchmark):
    mark(benchmark, "pool create+destroy 64B", "bytearray")
    benchmark(as_written("bytearray(64)"))


@pytest.mark.hotpath
def test_pool_4k(benchmark, pools):
    mark(benchmark, "pool create+destroy 4KiB", "memmanager:Pool(Mmap)")
    benchmark(as_written(f"Buffer(4096, 1, allocator={pools['4k']!r})"))


@pytest.mark.hotpath
def test_numpy_4k(benchmark):
    numpy = pytest.importorskip("numpy")
    mark(benchmark, "pool create+destroy 4KiB", "numpy.empty")
    benchmark(as_written('numpy.empty(4096, "u1")', numpy=numpy))


@pytest.mark.hotpath
def test_pool_64m(benchmark, pools):
    mark(benchmark, "pool create+destroy 64MiB", "memmanager:Pool(Mmap) warm")
    benchmark(as_written(f"Buffer(64 << 20, 1, allocator={pools['64m']!r})"))


@pytest.mark.hotpath
def test_pyarrow_64m(benchmark):
    pyarrow = pytest.importorskip("pyarrow")
    mark(benchmark, "pool create+destroy 64MiB", "pyarrow.allocate_buffer")
    benchmark(as_written("pyarrow.allocate_buffer(64 << 20)", pyarrow=pyarrow))


LIVE = {"1e3": 10**3, "1e4": 10**4, "1e5": 10**5, "1e6": 10**6}


@pytest.fixture(scope="module",
                params=[pytest.param(n, marks=hot(n in ("1e3", "1e6"))) for n in LIVE])
def live_blocks(request, pools):
    gc.collect()
    gc.disable()          # no collections while the million objects are made
    try:
        keep = [Buffer(64, 1, allocator=pools["scaling"])
                for _ in range(LIVE[request.param])]
    finally:
        gc.enable()
    gc.freeze()
    yield request.param, pools["scaling"]
    gc.unfreeze()
    del keep
    gc.collect()


def test_pool_with_live(benchmark, live_blocks):
    live, name = live_blocks
    subject = "memmanager:Pool, 10^6 live" if live == "1e6" else f"Pool, {live} live"
    mark(benchmark, "pool scaling", subject)
    benchmark(as_written(f"Buffer(64, 1, allocator={name!r})"))
