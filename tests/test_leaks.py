"""Leak checks: reference counts of everything handed to memmanager, and
tracemalloc over many create/destroy cycles (DESIGN sections 5 and 10,
STYLE practice 12)."""

import ctypes
import gc
import sys
import tracemalloc
import weakref

import numpy as np
import pytest

import memmanager
from memmanager import Buffer

ROUNDS = 300


def swallow(exc, func, *args, **kwargs):
    try:
        func(*args, **kwargs)
    except exc:
        pass
    else:
        raise AssertionError(f"{func} did not raise {exc}")


def test_failed_constructions_keep_refcounts():
    stub = lambda info: None  # noqa: E731
    opts = {"allocator": "PyAlloc", "death_stub": stub}
    bad_init = bytearray(b"A")
    bad_alloc = "Nope" + str(len(opts))  # a fresh str object
    refs = lambda: (sys.getrefcount(stub), sys.getrefcount(opts), sys.getrefcount(bad_init),  # noqa: E731
                    sys.getrefcount(bad_alloc), sys.getrefcount(Buffer))
    before = refs()
    base_live = memmanager.stats()["total"]["live_buffers"]
    for _ in range(ROUNDS):
        swallow(ValueError, Buffer, 0, 1, opts, death_stub=stub)
        swallow(TypeError, Buffer, 1, 1, opts, init_value=bad_init)
        swallow(ValueError, Buffer, 1, 1, opts, init_value=256)
        swallow(memmanager.UnknownAllocatorError, Buffer, 1, 1, opts, allocator=bad_alloc)
        swallow(TypeError, Buffer, 1, 1, opts, alignmnet=bad_init)
        swallow(TypeError, Buffer, 1, 1, opts, death_stub=bad_init)
        swallow(OverflowError, Buffer, 2**32, 2**32, opts)
        swallow(MemoryError, Buffer, 2**40, 2**20, opts, death_stub=stub, delayed_gc=True)
        swallow(MemoryError, Buffer, 2**40, 2**20, opts, allocator="CMalloc", init_value="zero")
    gc.collect()
    assert refs() == before
    assert memmanager.stats()["total"]["live_buffers"] == base_live


@pytest.mark.parametrize("allocator", ["PyAlloc", "CMalloc"])
def test_create_release_keeps_refcounts(allocator):
    calls = []
    stub = calls.append
    opts = {"allocator": allocator, "init_value": "A"}
    refs = lambda: (sys.getrefcount(stub), sys.getrefcount(opts), sys.getrefcount(calls),  # noqa: E731
                    sys.getrefcount(Buffer))
    before = refs()
    base_live = memmanager.stats()["total"]["live_buffers"]
    for i in range(ROUNDS):
        buf = Buffer(16, 2, opts, death_stub=stub, delayed_gc=bool(i % 2))
        with buf.region(1, 3):
            pass
        buf.extract_buffer_region(0, 4)
        buf[0:2] = b"xy"
        buf.release()
        assert sys.getrefcount(buf) == 2
        del buf
    calls.clear()
    gc.collect()
    assert refs() == before
    assert memmanager.stats()["total"]["live_buffers"] == base_live


def test_dropped_buffers_keep_refcounts():
    stub = lambda info: None  # noqa: E731
    before = sys.getrefcount(stub), sys.getrefcount(Buffer)
    for i in range(ROUNDS):
        buf = Buffer(8, 1, death_stub=stub)
        arr = np.asarray(buf)
        view = memoryview(buf)
        del buf, arr, view
    ident_pinned = [Buffer(8, 1, delayed_gc=True, death_stub=stub).identifier for _ in range(ROUNDS)]
    memmanager.collect_delayed(ident_pinned)
    gc.collect()
    assert (sys.getrefcount(stub), sys.getrefcount(Buffer)) == before


def test_consume_keeps_source_refcounts(arena):
    raw, base = arena
    ba = bytearray(b"x" * 64)
    data = bytes(range(64))
    owner = object()
    before = sys.getrefcount(ba), sys.getrefcount(data), sys.getrefcount(owner), sys.getrefcount(raw)
    existing = Buffer.consume(base + 512, 64, 1, allocator="Borrowed", owner=raw)
    for _ in range(ROUNDS):
        Buffer.consume(ba, 64, 1, delayed_gc=False).release()
        Buffer.consume(data, 32, 2).release()
        Buffer.consume(ba, 16, 1, copy=True).release()
        Buffer.consume(base, 64, 1, allocator="Borrowed", owner=owner).release()
        b = Buffer.consume(ba, 8, 1, delayed_gc=False)
        del b
        swallow(ValueError, Buffer.consume, ba, 65, 1)
        swallow(memmanager.OverlapError, Buffer.consume, base + 520, 8, 1, allocator="Borrowed", owner=owner)
        swallow(ValueError, Buffer.consume, data, 0, 1)
    existing.release()
    del existing
    gc.collect()
    assert (sys.getrefcount(ba), sys.getrefcount(data), sys.getrefcount(owner), sys.getrefcount(raw)) == before
    ba.extend(b"!")  # no export of ba leaked
    assert len(ba) == 65


def test_borrowed_owner_released_with_buffer(arena):
    raw, base = arena

    class Owner:
        pass

    owner = Owner()
    ref = weakref.ref(owner)
    buf = Buffer.consume(base, 16, 1, allocator="Borrowed", owner=owner, delayed_gc=False)
    del owner
    gc.collect()
    assert ref() is not None
    del buf
    gc.collect()
    assert ref() is None


def test_buffers_die_without_gc():
    """No hidden cycles: plain buffers are freed by reference counting."""
    gc.disable()
    try:
        refs = []
        for allocator in ("PyAlloc", "CMalloc"):
            buf = Buffer(8, 1, allocator=allocator, death_stub=lambda info: None)
            with memoryview(buf):
                pass
            refs.append(weakref.ref(buf))
            del buf
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()


def cycle(allocator, size):
    buf = Buffer(size, 1, allocator=allocator, init_value=1, death_stub=lambda info: None)
    with buf.region(0, size // 2) as view:
        view[0] = 2
    arr = np.frombuffer(buf, dtype=np.uint8)
    assert arr[0] == 2
    del arr
    buf.extract_buffer_region()
    pinned = Buffer(size, 1, allocator=allocator, delayed_gc=True)
    memmanager.collect_delayed([pinned])
    buf.release()
    del buf, pinned


@pytest.mark.parametrize("allocator", ["PyAlloc", "CMalloc"])
def test_tracemalloc_flat(allocator):
    size = 4096
    for _ in range(50):
        cycle(allocator, size)
    gc.collect()
    tracemalloc.start()
    try:
        for _ in range(50):
            cycle(allocator, size)
        gc.collect()
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(2000):
            cycle(allocator, size)
        gc.collect()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 2000 cycles allocate 16 MiB; leaking even one small object per cycle
    # (a Buffer, an info dict) would show.
    assert end - start < 64 * 1024, end - start


def domain_total(domain):
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, domain)])
    return sum(trace.size for trace in snapshot.traces)


def test_tracemalloc_domain_sees_allocations():
    domain = memmanager.TRACEMALLOC_DOMAIN
    assert isinstance(domain, int)
    size = 1 << 20
    tracemalloc.start()
    try:
        before_total = domain_total(domain)
        buf = Buffer(size, 1, allocator="CMalloc")
        during_total = domain_total(domain)
        addr = buf.address
        buf.release()
        after_total = domain_total(domain)
    finally:
        tracemalloc.stop()
    assert during_total - before_total >= size
    assert after_total == before_total
    assert addr != 0


def test_pyalloc_traced_by_python():
    size = 1 << 20
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        buf = Buffer(size, 1)  # PyAlloc: Python's own allocator
        mid, _ = tracemalloc.get_traced_memory()
        buf.release()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert mid - start >= size
    assert end - start < size // 2


def test_stats_back_to_baseline():
    gc.collect()
    base = memmanager.stats()["total"]
    bufs = [Buffer(100, 1, allocator=("PyAlloc", "CMalloc")[i % 2], delayed_gc=bool(i % 3 == 0))
            for i in range(300)]
    assert memmanager.stats()["total"]["live_buffers"] == base["live_buffers"] + 300
    del bufs
    memmanager.collect_delayed()
    gc.collect()
    now = memmanager.stats()["total"]
    assert now["live_buffers"] == base["live_buffers"]
    assert now["live_bytes"] == base["live_bytes"]
    assert now["allocations"] == base["allocations"] + 300
    assert memmanager._core._registry_check() == len(memmanager.live_buffers())


def test_libc_consume_cycles_do_not_leak(libc):
    base = memmanager.stats()["total"]["live_buffers"]
    tracemalloc.start()
    try:
        for _ in range(20):
            memmanager.Buffer.consume(libc.malloc(4096), 4096, 1).release()
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(500):
            holder = ctypes.c_void_p(libc.malloc(4096))
            memmanager.Buffer.consume(holder, 4096, 1).release()
            assert holder.value is None
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert end - start < 128 * 1024
    assert memmanager.stats()["total"]["live_buffers"] == base
