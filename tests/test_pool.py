"""The Pool adaptor (DESIGN section 12): reuse of freed blocks, size
classes and coalescing large blocks, release_free, maximum_size, the
upstream's alignment, pools over other adaptors and over Python plug-ins
(one calling back into the pool), init values on recycled blocks,
threads, many live blocks, guard bytes, and bad input."""

import ctypes
import gc
import sys
import threading
import uuid

import pytest

import memmanager
from memmanager import Buffer

from conftest import run_python

KiB, MiB = 1 << 10, 1 << 20


def fresh(prefix="Pool"):
    return f"{prefix}{uuid.uuid4().hex[:10]}"


POOLS = []


def register(adaptor, prefix="Pool"):
    name = fresh(prefix)
    memmanager.register_allocator(name, adaptor)
    if isinstance(adaptor, memmanager.Pool):
        POOLS.append(adaptor)
    return name


@pytest.fixture(autouse=True)
def idle_chunks_back():
    """Registered pools live on: after each test, what they hold idle goes
    back upstream, so that other tests' stats() see none of it."""
    yield
    gc.collect()
    while POOLS:
        POOLS.pop().release_free()


def held_by(name):
    """What the adaptor registered as name holds from its upstream, as
    stats() says (its entry's upstream_bytes)."""
    return memmanager.stats().get(name, {}).get("upstream_bytes", 0)


@pytest.fixture
def private_upstream():
    """A Limit over PyAlloc of its own, so that what it holds is the pool's
    chunks only."""
    return register(memmanager.Limit("PyAlloc", 1 << 40), "Up")


class Handle:
    def __init__(self, size):
        self.block = (ctypes.c_char * (size + 64))()
        start = ctypes.addressof(self.block)
        self.address = (start + 63) & ~63


class PyUpstream:
    """A Python plug-in upstream that records its calls."""

    def __init__(self):
        self.mallocs = []
        self.frees = []
        self.live = {}

    def malloc(self, num_items, item_size, init_byte, options):
        size = num_items * item_size
        self.mallocs.append(size)
        handle = Handle(size)
        self.live[handle.address] = handle
        return handle

    def get_buffer_address(self, handle):
        return handle.address

    def free(self, address):
        self.frees.append(address)
        del self.live[address]


# ---------------------------------------------------------------------------
# Reuse, classes, large blocks


def test_attributes_and_repr(private_upstream):
    pool = memmanager.Pool(private_upstream, maximum_size=8 * MiB)
    assert pool.upstream == private_upstream
    assert pool.initial_size == 0 and pool.maximum_size == 8 * MiB
    assert (pool.held_bytes, pool.used_bytes, pool.live_blocks) == (0, 0, 0)
    assert pool.alignment == 16
    assert repr(pool).startswith(f"<memmanager.Pool over {private_upstream!r}")
    assert memmanager.Pool("PyAlloc").maximum_size is None
    name = register(pool)
    buf = Buffer(100, 1, allocator=name)
    assert buf.allocator == name
    assert pool.used_bytes == 100 and pool.live_blocks == 1
    assert pool.held_bytes >= 1 * MiB
    assert "100 bytes in 1 blocks" in repr(pool)
    del buf
    assert pool.used_bytes == 0 and pool.live_blocks == 0


@pytest.mark.parametrize("size", [1, 16, 64, 100, 4 * KiB, 32 * KiB, 100 * KiB, 3 * MiB])
def test_same_block_back_after_free(size):
    name = register(memmanager.Pool("PyAlloc"))
    keep = Buffer(size, 1, allocator=name)   # a neighbour, so the block stays apart
    buf = Buffer(size, 1, allocator=name)
    address = buf.address
    del buf
    again = Buffer(size, 1, allocator=name)
    assert again.address == address
    assert keep.address != address


def test_small_classes_share_slabs():
    pool = memmanager.Pool("PyAlloc")
    name = register(pool)
    bufs = [Buffer(size, 1, allocator=name) for size in (8, 16, 24, 40, 64, 200, 5000)
            for _ in range(50)]
    held = pool.held_bytes
    assert held == 1 * MiB   # one chunk holds every slab
    addresses = sorted((b.address, b.nbytes) for b in bufs)
    for (a, n), (b, _) in zip(addresses, addresses[1:]):
        assert a + n <= b   # no two overlap
    assert all(b.address % 16 == 0 for b in bufs)


def test_large_blocks_coalesce():
    pool = memmanager.Pool("PyAlloc", initial_size=8 * MiB)
    name = register(pool)
    a = Buffer(1 * MiB, 1, allocator=name)
    b = Buffer(1 * MiB, 1, allocator=name)
    c = Buffer(1 * MiB, 1, allocator=name)
    wall = Buffer(5 * MiB - 64 * KiB, 1, allocator=name)   # most of the rest
    held = pool.held_bytes
    assert held == 8 * MiB
    a_address = a.address
    del a, b
    merged = Buffer(2 * MiB, 1, allocator=name)   # only a and b together fit
    assert merged.address == a_address
    assert pool.held_bytes == held
    del merged, c, wall
    assert pool.live_blocks == 0
    whole = Buffer(8 * MiB, 1, allocator=name)   # everything merged again
    assert pool.held_bytes == held
    del whole


def test_release_free_gives_chunks_back(private_upstream):
    pool = memmanager.Pool(private_upstream)
    name = register(pool)
    smalls = [Buffer(64, 1, allocator=name) for _ in range(1000)]
    bigs = [Buffer(3 * MiB, 1, allocator=name) for _ in range(3)]
    held = pool.held_bytes
    assert held >= 9 * MiB
    assert held_by(private_upstream) == held
    assert pool.release_free() == 0   # nothing idle yet
    del bigs
    given = pool.release_free()
    assert given > 0 and pool.held_bytes == held - given
    assert held_by(private_upstream) == pool.held_bytes
    del smalls
    assert pool.release_free() == held - given
    assert pool.held_bytes == 0 and held_by(private_upstream) == 0
    again = Buffer(64, 1, allocator=name)   # and the pool goes on working
    assert pool.held_bytes > 0
    del again


def test_release_free_keeps_slabs_in_use():
    pool = memmanager.Pool("PyAlloc")
    name = register(pool)
    bufs = [Buffer(64, 1, allocator=name) for _ in range(5000)]
    keep = bufs[::1000]
    del bufs
    pool.release_free()
    assert pool.held_bytes > 0
    for kept in keep:
        kept[:] = b"x" * 64
    del kept
    new = [Buffer(64, 1, allocator=name) for _ in range(100)]
    mine = {(b.address, b.address + 64) for b in keep}
    assert all(not (s <= b.address < e) for b in new for s, e in mine)
    del keep, new
    pool.release_free()
    assert pool.held_bytes == 0


def test_dealloc_gives_everything_back(private_upstream):
    pool = memmanager.Pool(private_upstream, initial_size=2 * MiB)
    name = fresh()
    memmanager.register_allocator(name, pool)   # not kept in POOLS
    for size in (64, 5000, 3 * MiB):
        Buffer(size, 1, allocator=name)
    assert held_by(private_upstream) > 0
    memmanager.register_allocator(name, memmanager.Limit("PyAlloc", 1))  # drop the pool
    del pool
    gc.collect()
    assert held_by(private_upstream) == 0


# ---------------------------------------------------------------------------
# maximum_size, initial_size


def test_maximum_size_exact(private_upstream):
    pool = memmanager.Pool(private_upstream, maximum_size=4 * MiB)
    name = register(pool)
    bufs = [Buffer(1 * MiB, 1, allocator=name) for _ in range(4)]
    assert pool.held_bytes == 4 * MiB and pool.used_bytes == 4 * MiB
    before = held_by(private_upstream)
    with pytest.raises(MemoryError, match=r"16 bytes asked, 4194304 bytes held"):
        Buffer(16, 1, allocator=name)
    assert held_by(private_upstream) == before and pool.live_blocks == 4
    del bufs[0]
    bufs.append(Buffer(1 * MiB, 1, allocator=name))   # the freed one fits again
    with pytest.raises(MemoryError):
        Buffer(1, 1, allocator=name)


def test_maximum_size_caps_growth():
    pool = memmanager.Pool("PyAlloc", maximum_size=1 * MiB - 40)
    name = register(pool)
    small = Buffer(64, 1, allocator=name)     # grows by a capped chunk
    assert pool.held_bytes == 1 * MiB - 48    # a multiple of the alignment
    with pytest.raises(MemoryError, match="maximum_size"):
        Buffer(2 * MiB, 1, allocator=name)
    del small


def test_initial_size_takes_one_chunk(private_upstream):
    pool = memmanager.Pool(private_upstream, initial_size=3 * MiB + 1)
    assert pool.initial_size == 3 * MiB + 16
    assert pool.held_bytes == 3 * MiB + 16 == held_by(private_upstream)
    name = register(pool)
    buf = Buffer(3 * MiB, 1, allocator=name)
    assert pool.held_bytes == 3 * MiB + 16   # served from it
    del buf


@pytest.mark.parametrize("kwargs, exc", [
    ({"initial_size": -1}, ValueError),
    ({"maximum_size": 0}, ValueError),
    ({"maximum_size": -5}, ValueError),
    ({"initial_size": 2 * MiB, "maximum_size": 1 * MiB}, ValueError),
    ({"initial_size": 1.5}, TypeError),
    ({"initial_size": "1"}, TypeError),
    ({"maximum_size": True}, TypeError),
    ({"maximum_size": 2.0}, TypeError),
    ({"initial_size": 1 << 80}, OverflowError),
    ({"alignment": 64}, TypeError),          # PyAlloc takes no option
])
def test_bad_sizes(kwargs, exc, private_upstream):
    with pytest.raises(exc):
        memmanager.Pool(private_upstream, **kwargs)
    assert held_by(private_upstream) == 0


def test_bad_arguments():
    with pytest.raises(TypeError, match="missing required argument 'upstream'"):
        memmanager.Pool()
    with pytest.raises(TypeError):
        memmanager.Pool("PyAlloc", 1 << 20)   # sizes are keywords
    with pytest.raises(TypeError, match="multiple values"):
        memmanager.Pool("PyAlloc", upstream="PyAlloc")
    with pytest.raises(TypeError):
        memmanager.Pool(b"PyAlloc")
    with pytest.raises(memmanager.UnknownAllocatorError):
        memmanager.Pool(fresh("Nope"))
    with pytest.raises(ValueError):
        memmanager.Pool("Borrowed")


def test_index_sizes():
    class Size:
        def __index__(self):
            return 2 * MiB
    pool = memmanager.Pool("PyAlloc", initial_size=Size(), maximum_size=Size())
    assert pool.held_bytes == pool.maximum_size == 2 * MiB


def test_per_buffer_options_refused():
    name = register(memmanager.Pool("Aligned", alignment=64))
    with pytest.raises(TypeError, match="per-buffer options"):
        Buffer(64, 1, allocator=name, alignment=128)


def test_huge_request_is_memory_error():
    name = register(memmanager.Pool("PyAlloc", maximum_size=1 << 40))
    with pytest.raises(MemoryError):
        Buffer(1 << 41, 1, allocator=name)


def test_upstream_failure_leaves_nothing(private_upstream):
    capped = register(memmanager.Limit("PyAlloc", 2 * MiB), "Cap")
    pool = memmanager.Pool(capped)
    name = register(pool)
    with pytest.raises(memmanager.LimitExceededError):
        Buffer(3 * MiB, 1, allocator=name)
    assert (pool.held_bytes, pool.used_bytes, pool.live_blocks) == (0, 0, 0)
    assert held_by(capped) == 0
    buf = Buffer(64, 1, allocator=name)
    del buf


# ---------------------------------------------------------------------------
# Alignment and stacking


def test_alignment_of_aligned_upstream():
    pool = memmanager.Pool("Aligned", alignment=4096)
    assert pool.alignment == 4096
    name = register(pool)
    bufs = [Buffer(size, 1, allocator=name) for size in (1, 64, 4097, 50000, 2 * MiB)]
    assert all(b.address % 4096 == 0 for b in bufs)
    starts = sorted(b.address for b in bufs)
    assert len(set(starts)) == len(starts)


def test_alignment_of_mmap_upstream():
    import mmap
    pool = memmanager.Pool("Mmap")
    assert pool.alignment == mmap.PAGESIZE
    name = register(pool)
    bufs = [Buffer(64, 1, allocator=name) for _ in range(100)]
    assert all(b.address % mmap.PAGESIZE == 0 for b in bufs)
    assert pool.held_bytes <= 2 * MiB


def test_pool_over_pool(private_upstream):
    inner = memmanager.Pool(private_upstream)
    inner_name = register(inner)
    outer = memmanager.Pool(inner_name)
    name = register(outer)
    bufs = [Buffer(size, 1, allocator=name) for size in (64, 5000, 3 * MiB)]
    assert inner.live_blocks >= 2   # outer chunks are inner blocks
    assert inner.used_bytes == outer.held_bytes
    assert held_by(name) == outer.held_bytes and held_by(inner_name) == inner.held_bytes
    del bufs
    outer.release_free()
    assert inner.live_blocks == 0 and outer.held_bytes == 0
    inner.release_free()
    assert held_by(private_upstream) == 0


def test_pool_over_limit_over_aligned():
    limit = memmanager.Limit("Aligned", 4 * MiB, alignment=256)
    limit_name = register(limit, "Lim")
    pool = memmanager.Pool(limit_name)
    assert pool.alignment == 256
    name = register(pool)
    a = Buffer(100, 1, allocator=name)
    assert a.address % 256 == 0
    assert limit.used == pool.held_bytes == 1 * MiB
    big = Buffer(2 * MiB, 1, allocator=name)
    assert limit.used == pool.held_bytes == 3 * MiB
    with pytest.raises(memmanager.LimitExceededError):
        Buffer(2 * MiB, 1, allocator=name)
    assert pool.held_bytes == 3 * MiB
    del big
    Buffer(2 * MiB, 1, allocator=name)   # reused, nothing more asked
    assert limit.used == 3 * MiB


def test_limit_over_pool():
    pool = memmanager.Pool("PyAlloc")
    limited = register(memmanager.Limit(register(pool), 1000), "Lim")
    buf = Buffer(600, 1, allocator=limited)
    assert pool.live_blocks == 1
    with pytest.raises(memmanager.LimitExceededError):
        Buffer(600, 1, allocator=limited)
    del buf
    assert pool.live_blocks == 0


def test_shared_memory_upstream_refused():
    with pytest.raises(ValueError, match="SharedMemory"):
        memmanager.Pool("SharedMemory")
    through_limit = register(memmanager.Limit("SharedMemory", 1 << 30), "Lim")
    with pytest.raises(ValueError, match="SharedMemory"):
        memmanager.Pool(through_limit)


def test_cycle_refused():
    pool = memmanager.Pool("PyAlloc")
    name = register(pool)
    with pytest.raises(ValueError, match="cycle"):
        memmanager.register_allocator(name, memmanager.Pool(name))


# ---------------------------------------------------------------------------
# Python plug-in upstreams


def test_python_upstream():
    plugin = PyUpstream()
    up = register(plugin, "Py")
    pool = memmanager.Pool(up)
    name = register(pool)
    bufs = [Buffer(size, 1, allocator=name, init_value=3) for size in (64, 64, 9000, 2 * MiB)]
    assert all(bytes(b) == b"\x03" * b.nbytes for b in bufs)
    assert len(plugin.mallocs) == len(plugin.live) >= 1
    del bufs
    assert pool.release_free() == sum(plugin.mallocs)
    assert plugin.live == {} and len(plugin.frees) == len(plugin.mallocs)


def test_python_upstream_errors_propagate():
    class Failing(PyUpstream):
        def malloc(self, *args):
            raise KeyError("no memory today")
    pool = memmanager.Pool(register(Failing(), "Py"))
    name = register(pool)
    with pytest.raises(KeyError, match="no memory today"):
        Buffer(64, 1, allocator=name)
    assert (pool.held_bytes, pool.used_bytes, pool.live_blocks) == (0, 0, 0)


def test_python_upstream_calls_back_into_the_pool():
    """The plug-in's malloc allocates from the pool it serves: no lock is
    held across the call, and both blocks come out sound."""
    class Reentrant(PyUpstream):
        inner = []

        def malloc(self, num_items, item_size, init_byte, options):
            if self.pool_name is not None and not self.inner:
                self.inner.append(None)   # once
                self.inner[0] = Buffer(64, 1, allocator=self.pool_name, init_value=9)
                self.inner.append(repr(self.pool))
            return super().malloc(num_items, item_size, init_byte, options)

    plugin = Reentrant()
    plugin.pool_name = None
    pool = memmanager.Pool(register(plugin, "Py"))
    plugin.pool, plugin.pool_name = pool, register(pool)
    outer = Buffer(64, 1, allocator=plugin.pool_name, init_value=5)
    inner = plugin.inner[0]
    assert bytes(outer) == b"\x05" * 64 and bytes(inner) == b"\x09" * 64
    assert outer.address != inner.address
    assert pool.live_blocks == 2 and len(plugin.mallocs) == 2
    plugin.pool_name = None
    del outer, inner
    plugin.inner.clear()
    assert pool.release_free() == pool.release_free() + sum(plugin.mallocs)
    assert plugin.live == {}


def test_python_upstream_releasing_from_free():
    """The upstream's free() calls release_free() on the pool that is
    giving chunks back to it."""
    class Nested(PyUpstream):
        def free(self, address):
            super().free(address)
            self.pool.release_free()

    plugin = Nested()
    pool = memmanager.Pool(register(plugin, "Py"))
    plugin.pool = pool
    name = register(pool)
    bufs = [Buffer(3 * MiB, 1, allocator=name) for _ in range(3)]
    del bufs
    assert pool.release_free() > 0
    assert plugin.live == {} and pool.held_bytes == 0


def test_gc_sees_chunk_handles():
    """The handles of chunks held are referents of the pool, for the
    collector."""
    plugin = PyUpstream()
    pool = memmanager.Pool(register(plugin, "Py"), initial_size=MiB)
    handles = list(plugin.live.values())
    assert len(handles) == 1
    assert handles[0] in gc.get_referents(pool)


# ---------------------------------------------------------------------------
# Contents


@pytest.mark.parametrize("size", [64, 3000, 200 * KiB, 2 * MiB])
def test_init_values_on_recycled_blocks(size):
    name = register(memmanager.Pool("PyAlloc"))
    dirty = Buffer(size, 1, allocator=name, init_value=0xAB)
    address = dirty.address
    del dirty
    zeroed = Buffer(size, 1, allocator=name, init_value=0)
    assert zeroed.address == address and bytes(zeroed) == bytes(size)
    zeroed[:] = b"\xcd" * size
    del zeroed
    sevens = Buffer(size, 1, allocator=name, init_value=7)
    assert sevens.address == address and bytes(sevens) == b"\x07" * size


def test_many_live_blocks():
    pool = memmanager.Pool("PyAlloc")
    name = register(pool)
    bufs = [Buffer(64, 1, allocator=name) for _ in range(100_000)]
    assert pool.live_blocks == 100_000 and pool.used_bytes == 6_400_000
    assert pool.held_bytes < 16 * MiB
    assert len({b.address for b in bufs}) == 100_000
    del bufs[::2]
    more = [Buffer(64, 1, allocator=name) for _ in range(50_000)]
    assert pool.live_blocks == 100_000
    del bufs, more
    assert pool.release_free() > 0 and pool.held_bytes == 0


def test_threads():
    pool = memmanager.Pool("PyAlloc")
    name = register(pool)
    errors = []

    def work(seed):
        try:
            held = []
            for i in range(3000):
                size = (64, 700, 5000, 40000, 300000, 2 * MiB)[(i + seed) % 6]
                value = 0 if i % 3 == 0 else seed   # zeroing 2 MiB drops the GIL
                buf = Buffer(size, 1, allocator=name, init_value=value)
                buf[0] = buf[-1] = seed
                held.append(buf)
                if len(held) > 20:
                    old = held.pop(seed % 20)
                    if old[0] != seed or old[-1] != seed:
                        errors.append("damaged")
                if i % 500 == 0:
                    pool.release_free()
        except Exception as exc:   # pragma: no cover - reported below
            errors.append(exc)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        threads = [threading.Thread(target=work, args=(s,)) for s in range(1, 7)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(switch)
    assert errors == []
    assert pool.live_blocks == 0 and pool.used_bytes == 0
    pool.release_free()
    assert pool.held_bytes == 0


# ---------------------------------------------------------------------------
# MEMMANAGER_DEBUG


def test_guard_bytes_around_pooled_blocks():
    proc = run_python("""
        import ctypes, sys, warnings, memmanager
        assert memmanager._core.DEBUG == 1
        pool = memmanager.Pool("CMalloc")
        memmanager.register_allocator("G", pool)
        seen = []
        sys.unraisablehook = lambda args: seen.append(str(args.exc_value))
        warnings.simplefilter("error")
        for size in (64, 100000):
            a = memmanager.Buffer(size, 1, allocator="G", init_value=0)
            b = memmanager.Buffer(size, 1, allocator="G")
            assert bytes(a) == bytes(size)
            ctypes.memset(b.address + size, 0x41, 1)
            del a, b
        print(len(seen), "|".join(seen))
    """, {"MEMMANAGER_DEBUG": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, _, text = proc.stdout.strip().partition(" ")
    assert count == "2", proc.stdout
    assert "buffer overrun" in text and "allocator G" in text
