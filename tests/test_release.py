"""Deterministic release: DESIGN section 2 (Deterministic release) and
docs/api-decisions.md (lifetime)."""

import gc
import weakref

import numpy as np
import pytest

import memmanager
from memmanager import Buffer

from conftest import live_addresses, live_entry

ALLOCATORS = ["PyAlloc", "CMalloc"]


def totals(allocator):
    stats = memmanager.stats()
    return stats["total"]["live_buffers"], stats["total"]["live_bytes"], stats[allocator]["live_bytes"]


@pytest.mark.parametrize("allocator", ALLOCATORS)
def test_release_frees_now(allocator):
    buf = Buffer(100, 3, allocator=allocator, init_value=1)
    addr = buf.address
    assert addr in live_addresses()
    live, nbytes, per_allocator = totals(allocator)
    assert buf.release() is None
    assert buf.released is True
    assert addr not in live_addresses()
    assert live_entry(buf.identifier) is None
    assert totals(allocator) == (live - 1, nbytes - 300, per_allocator - 300)
    assert memmanager._core._registry_check() == len(memmanager.live_buffers())


def test_release_is_idempotent():
    calls = []
    buf = Buffer(8, 1, death_stub=calls.append)
    buf.release()
    live = memmanager.stats()["total"]["live_buffers"]
    buf.release()
    buf.release()
    assert buf.released is True
    assert len(calls) == 1
    assert memmanager.stats()["total"]["live_buffers"] == live
    del buf
    gc.collect()
    assert len(calls) == 1
    assert memmanager.stats()["total"]["live_buffers"] == live


def test_release_runs_stub_once_before_free():
    seen = []

    def stub(info):
        seen.append((info["buffer_address"], info["buffer_address"] in live_addresses()))

    buf = Buffer(16, 1, death_stub=stub)
    addr = buf.address
    buf.release()
    assert seen == [(addr, True)]
    assert addr not in live_addresses()


@pytest.mark.parametrize("allocator", ALLOCATORS)
def test_release_unpins(allocator):
    buf = Buffer(32, 1, allocator=allocator, delayed_gc=True)
    ident, addr = buf.identifier, buf.address
    assert ident in memmanager.get_delayed_gc_objects()
    assert live_entry(ident).pinned is True
    buf.release()
    assert ident not in memmanager.get_delayed_gc_objects()
    assert addr not in live_addresses()
    # Nothing is left for collect_delayed to find.
    assert ident not in memmanager.collect_delayed([ident])


def test_release_pinned_then_drop_reference():
    buf = Buffer(32, 1, delayed_gc=True)
    ref = weakref.ref(buf)
    buf.release()
    del buf
    gc.collect()
    assert ref() is None  # the pin registry no longer holds it


def test_context_manager():
    calls = []
    with Buffer(16, 1, death_stub=calls.append) as buf:
        assert isinstance(buf, Buffer)
        assert buf.released is False
        buf[0] = 1
        addr = buf.address
        assert addr in live_addresses()
        assert calls == []
    assert buf.released is True
    assert addr not in live_addresses()
    assert len(calls) == 1


def test_context_manager_returns_self():
    buf = Buffer(4, 1)
    with buf as entered:
        assert entered is buf
    assert buf.released


def test_context_manager_on_exception():
    with pytest.raises(KeyError):
        with Buffer(16, 1, delayed_gc=True) as buf:
            ident = buf.identifier
            raise KeyError("inside")
    assert buf.released is True
    assert ident not in memmanager.get_delayed_gc_objects()


def test_context_manager_already_released():
    with Buffer(4, 1) as buf:
        buf.release()
    assert buf.released


@pytest.mark.parametrize("allocator", ALLOCATORS)
def test_release_with_exports_leaves_buffer_intact(allocator):
    calls = []
    buf = Buffer(16, 1, allocator=allocator, init_value=0x42, death_stub=calls.append, delayed_gc=True)
    addr, ident = buf.address, buf.identifier
    view = memoryview(buf)
    arr = np.frombuffer(buf, dtype=np.uint8)
    with pytest.raises(BufferError, match=r"^cannot release: the buffer has 2 live export\(s\)$"):
        buf.release()
    assert buf.released is False
    assert calls == []
    assert buf.address == addr
    assert bytes(buf) == b"\x42" * 16
    assert arr.tobytes() == b"\x42" * 16
    assert addr in live_addresses()
    assert ident in memmanager.get_delayed_gc_objects()  # still pinned
    assert buf.exports == 2
    view[0] = 1  # the memory is still valid and writable
    assert arr[0] == 1
    view.release()
    with pytest.raises(BufferError, match=r"^cannot release: the buffer has 1 live export\(s\)$"):
        buf.release()
    del arr
    buf.release()
    assert buf.released is True
    assert len(calls) == 1
    assert addr not in live_addresses()
    assert ident not in memmanager.get_delayed_gc_objects()


def test_release_frees_memory_for_reuse():
    # Releasing many buffers keeps the live byte count flat.
    base = memmanager.stats()["total"]["live_bytes"]
    for _ in range(200):
        Buffer(1 << 16, 1).release()
    assert memmanager.stats()["total"]["live_bytes"] == base


@pytest.mark.parametrize("allocator", ALLOCATORS)
def test_dropping_last_reference_frees(allocator):
    calls = []
    buf = Buffer(64, 1, allocator=allocator, death_stub=calls.append)
    addr = buf.address
    ref = weakref.ref(buf)
    del buf
    assert ref() is None  # no cycle: freed by reference counting alone
    assert addr not in live_addresses()
    assert len(calls) == 1


def test_release_subclass():
    class Sub(Buffer):
        pass

    buf = Sub(8, 1)
    addr = buf.address
    buf.release()
    assert buf.released
    assert addr not in live_addresses()


def test_release_takes_no_arguments():
    buf = Buffer(8, 1)
    with pytest.raises(TypeError):
        buf.release(1)
    assert buf.released is False
    buf.release()
