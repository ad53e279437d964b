"""The live-region registry, stats() and live_buffers(): DESIGN sections 5
and 10."""

import ctypes
import gc
import re
import sys

import pytest

import memmanager
from memmanager import Buffer

from conftest import live_addresses, live_entry

STAT_KEYS = {"live_buffers", "live_bytes", "peak_bytes", "allocations", "allocated_bytes"}


def registry_consistent():
    count = memmanager._core._registry_check()
    assert count == len(memmanager.live_buffers())
    assert count == memmanager.stats()["total"]["live_buffers"]
    return count


# --------------------------------------------------------------------------
# exception hierarchy (section 10)

def test_exception_hierarchy():
    assert issubclass(memmanager.MemManagerError, Exception)
    assert issubclass(memmanager.OverlapError, memmanager.MemManagerError)
    assert issubclass(memmanager.OverlapError, ValueError)
    assert issubclass(memmanager.UnknownAllocatorError, memmanager.MemManagerError)
    assert issubclass(memmanager.UnknownAllocatorError, LookupError)
    assert issubclass(memmanager.DeviceUnavailableError, memmanager.MemManagerError)
    assert issubclass(memmanager.DeviceUnavailableError, RuntimeError)
    assert not issubclass(memmanager.OverlapError, LookupError)
    assert not issubclass(memmanager.UnknownAllocatorError, ValueError)


# --------------------------------------------------------------------------
# live_buffers()

def test_live_buffers_entry(make_buffer):
    buf = make_buffer(16, 4, allocator="CMalloc")
    entries = memmanager.live_buffers()
    assert isinstance(entries, list)
    entry = live_entry(buf.identifier)
    assert entry is not None
    assert isinstance(entry, tuple)
    assert type(entry)._fields == ("identifier", "allocator", "address", "nbytes", "exports", "pinned")
    assert entry.identifier == buf.identifier
    assert entry.allocator == "CMalloc"
    assert entry.address == buf.address
    assert entry.nbytes == 64
    assert entry.exports == 0
    assert entry.pinned is False
    assert tuple(entry) == (buf.identifier, "CMalloc", buf.address, 64, 0, False)


def test_live_buffers_exports_and_pinned(make_buffer):
    buf = make_buffer(8, 1, delayed_gc=True)
    view = memoryview(buf)
    region = buf.region(2, 4)
    entry = live_entry(buf.identifier)
    assert entry.exports == 2
    assert entry.pinned is True
    assert entry.allocator == "PyAlloc"
    view.release()
    region.release()
    assert live_entry(buf.identifier).exports == 0


def test_live_buffers_is_a_snapshot(make_buffer):
    before = memmanager.live_buffers()
    buf = make_buffer(8, 1)
    assert buf.identifier not in {e.identifier for e in before}
    after = memmanager.live_buffers()
    assert buf.identifier in {e.identifier for e in after}
    buf.release()
    assert buf.identifier in {e.identifier for e in after}  # unchanged snapshot
    assert buf.identifier not in {e.identifier for e in memmanager.live_buffers()}


def test_live_buffers_ranges_disjoint(make_buffer):
    for n in (1, 3, 64, 100, 4096, 1 << 16):
        make_buffer(n, 1)
        make_buffer(n, 1, allocator="CMalloc")
    ranges = sorted((e.address, e.address + e.nbytes) for e in memmanager.live_buffers())
    for (s1, e1), (s2, e2) in zip(ranges, ranges[1:]):
        assert e1 <= s2
    registry_consistent()


def test_report_is_text(make_buffer):
    buf = make_buffer(8, 1, allocator="CMalloc")
    text = memmanager.report()
    assert isinstance(text, str)
    assert "CMalloc" in text


# --------------------------------------------------------------------------
# stats()

def check_stats_add_up(stats):
    assert "total" in stats
    names = [k for k in stats if k != "total"]
    for key, value in stats.items():
        assert STAT_KEYS <= set(value), key
        assert value["peak_bytes"] >= value["live_bytes"] >= 0
        assert value["live_buffers"] >= 0
    for field in ("live_buffers", "live_bytes", "allocations", "allocated_bytes"):
        assert stats["total"][field] == sum(stats[n][field] for n in names), field
    peaks = [stats[n]["peak_bytes"] for n in names]
    assert max(peaks, default=0) <= stats["total"]["peak_bytes"] <= sum(peaks)


def test_stats_add_up(make_buffer, arena):
    raw, base = arena
    make_buffer(10, 1)
    make_buffer(20, 2, allocator="CMalloc")
    borrowed = Buffer.consume(base, 64, 1, allocator="Borrowed", owner=raw)
    stats = memmanager.stats()
    assert {"total", "PyAlloc", "CMalloc", "Borrowed"} <= set(stats)
    check_stats_add_up(stats)
    borrowed.release()
    check_stats_add_up(memmanager.stats())


@pytest.mark.parametrize("allocator, other", [("CMalloc", "PyAlloc"), ("PyAlloc", "CMalloc")])
def test_stats_deltas(allocator, other, make_buffer):
    gc.collect()
    make_buffer(1, 1, allocator=other)  # both names are present in stats()
    before = memmanager.stats()
    buf = Buffer(25, 4, allocator=allocator)
    mid = memmanager.stats()
    assert mid[allocator]["live_buffers"] == before[allocator]["live_buffers"] + 1
    assert mid[allocator]["live_bytes"] == before[allocator]["live_bytes"] + 100
    assert mid[allocator]["allocations"] == before[allocator]["allocations"] + 1
    assert mid[allocator]["allocated_bytes"] == before[allocator]["allocated_bytes"] + 100
    assert mid[allocator]["peak_bytes"] >= before[allocator]["live_bytes"] + 100
    assert mid[other] == before[other]
    assert mid["total"]["live_bytes"] == before["total"]["live_bytes"] + 100
    buf.release()
    after = memmanager.stats()
    assert after[allocator]["live_buffers"] == before[allocator]["live_buffers"]
    assert after[allocator]["live_bytes"] == before[allocator]["live_bytes"]
    # allocations and allocated_bytes are cumulative; the peak does not drop.
    assert after[allocator]["allocations"] == mid[allocator]["allocations"]
    assert after[allocator]["allocated_bytes"] == mid[allocator]["allocated_bytes"]
    assert after[allocator]["peak_bytes"] == mid[allocator]["peak_bytes"]
    check_stats_add_up(after)


def test_stats_peak(make_buffer):
    base = memmanager.stats()["CMalloc"]["live_bytes"] if "CMalloc" in memmanager.stats() else 0
    big = Buffer(1 << 20, 1, allocator="CMalloc")
    also = Buffer(1 << 19, 1, allocator="CMalloc")
    peak = memmanager.stats()["CMalloc"]["peak_bytes"]
    assert peak >= base + (1 << 20) + (1 << 19)
    big.release()
    also.release()
    assert memmanager.stats()["CMalloc"]["peak_bytes"] == peak
    assert memmanager.stats()["total"]["peak_bytes"] >= peak


def test_stats_returns_fresh_dicts(make_buffer):
    make_buffer(1, 1)
    stats = memmanager.stats()
    stats["total"]["live_buffers"] = -5
    stats["PyAlloc"].clear()
    assert memmanager.stats()["total"]["live_buffers"] >= 1
    assert STAT_KEYS <= set(memmanager.stats()["PyAlloc"])


# --------------------------------------------------------------------------
# overlap (section 5): Borrowed buffers inside a private arena

def hex_numbers(text):
    return {int(h, 16) for h in re.findall(r"0[xX][0-9a-fA-F]+", text)}


@pytest.fixture
def existing(arena):
    """A Borrowed buffer over [base + 1024, base + 1088) inside the arena."""
    raw, base = arena
    buf = Buffer.consume(base + 1024, 64, 1, allocator="Borrowed", owner=raw)
    assert buf.address == base + 1024
    assert buf.allocator == "Borrowed"
    yield base + 1024, buf, raw
    buf.release()


OVERLAPPING = {
    "same": (0, 64),
    "inside": (8, 16),
    "first byte": (0, 1),
    "last byte": (63, 1),
    "straddles start": (-8, 16),
    "straddles end": (56, 16),
    "contains": (-8, 80),
    "contains, one byte each side": (-1, 66),
}


# Issue 12 (DESIGN section 5): non-owning regions may overlap each other,
# so the overlaps below are refused to an adoption (CMalloc), which may not
# overlap any live region; it is refused before anything is reallocated.
@pytest.mark.parametrize("name", list(OVERLAPPING))
def test_overlap_refused(name, existing, registry_unchanged):
    start, buf, raw = existing
    offset, length = OVERLAPPING[name]
    new_start = start + offset
    refcount = sys.getrefcount(raw)
    with registry_unchanged():
        with pytest.raises(memmanager.OverlapError) as info:
            Buffer.consume(new_start, length, 1, allocator="CMalloc")
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    numbers = hex_numbers(message)
    assert new_start in numbers, message
    assert start in numbers, message
    assert str(buf.identifier) in message or buf.identifier in numbers, message
    assert sys.getrefcount(raw) == refcount
    assert buf.released is False
    assert live_entry(buf.identifier).address == start


@pytest.mark.parametrize("offset, length", [(64, 8), (-8, 8), (64, 1), (-1, 1), (-1024, 1024), (64, 1024)])
def test_adjacent_allowed(offset, length, existing):
    start, buf, raw = existing
    neighbour = Buffer.consume(start + offset, length, 1, allocator="Borrowed", owner=raw)
    try:
        assert neighbour.address == start + offset
        assert neighbour.nbytes == length
        registry_consistent()
    finally:
        neighbour.release()


def test_overlap_with_allocated_buffer(make_buffer):
    buf = make_buffer(64, 1, allocator="CMalloc", init_value=3)
    for offset, length in [(0, 64), (10, 4), (63, 1)]:
        with pytest.raises(memmanager.OverlapError):
            Buffer.consume(buf.address + offset, length, 1, allocator="Borrowed")
    assert bytes(buf) == b"\x03" * 64
    registry_consistent()


def test_overlap_with_multibyte_items(existing):
    start, buf, raw = existing
    # 8 items of 8 bytes starting 64 bytes before: ends exactly at start -> fine.
    ok = Buffer.consume(start - 64, 8, 8, allocator="Borrowed", owner=raw)
    ok.release()
    # 9 items of 8 bytes reach 8 bytes into the existing region.
    with pytest.raises(memmanager.OverlapError):
        Buffer.consume(start - 64, 9, 8, allocator="CMalloc")


def test_region_leaves_registry_when_freed(existing):
    start, buf, raw = existing
    buf.release()
    assert start not in live_addresses()
    again = Buffer.consume(start + 8, 16, 1, allocator="Borrowed", owner=raw)
    assert again.address == start + 8
    again.release()


def test_region_leaves_registry_on_dealloc(arena):
    raw, base = arena
    buf = Buffer.consume(base, 32, 1, allocator="Borrowed", owner=raw, delayed_gc=False)
    del buf
    gc.collect()
    assert base not in live_addresses()
    again = Buffer.consume(base, 32, 1, allocator="Borrowed", owner=raw, delayed_gc=False)
    again.release()


def test_pinned_region_stays_until_collected(arena):
    raw, base = arena
    buf = Buffer.consume(base, 32, 1, allocator="Borrowed", owner=raw)  # delayed_gc=True by default
    ident = buf.identifier
    del buf
    gc.collect()
    with pytest.raises(memmanager.OverlapError):
        Buffer.consume(base + 4, 4, 1, allocator="CMalloc")
    assert memmanager.collect_delayed([ident]) == [ident]
    gc.collect()
    again = Buffer.consume(base + 4, 4, 1, allocator="Borrowed", owner=raw)
    again.release()


def test_registry_check_after_operations(make_buffer, arena):
    raw, base = arena
    registry_consistent()
    bufs = [make_buffer(n, 1, allocator=a) for n in (1, 17, 256) for a in ("PyAlloc", "CMalloc")]
    registry_consistent()
    borrowed = [Buffer.consume(base + 100 * i, 50, 1, allocator="Borrowed", owner=raw) for i in range(10)]
    registry_consistent()
    with pytest.raises(memmanager.OverlapError):
        Buffer.consume(base + 40, 20, 1, allocator="CMalloc")
    registry_consistent()
    for b in borrowed[::2] + bufs[1::2]:
        b.release()
    registry_consistent()
    for b in borrowed[1::2]:
        b.release()
    del bufs
    registry_consistent()


def test_many_buffers(arena):
    count = registry_consistent()
    bufs = [Buffer(1 + i % 50, 1, allocator=("PyAlloc", "CMalloc")[i % 2]) for i in range(2000)]
    assert registry_consistent() == count + 2000
    for b in bufs[::3]:
        b.release()
    assert registry_consistent() == count + 2000 - len(bufs[::3])
    del bufs
    gc.collect()
    assert registry_consistent() == count


def test_threads_keep_registry_consistent():
    import threading

    count = registry_consistent()
    errors = []
    barrier = threading.Barrier(4)

    def work(seed):
        try:
            barrier.wait()
            mine = []
            for i in range(1500):
                size = 1 + (i * 7 + seed) % 4000
                mine.append(Buffer(size, 1, allocator=("PyAlloc", "CMalloc")[(i + seed) % 2],
                                   delayed_gc=(i % 5 == 0)))
                if i % 3 == 0:
                    mine.pop(0).release()
            for buf in mine:
                buf.release()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    gc.collect()
    assert registry_consistent() == count


# --------------------------------------------------------------------------
# regression: a collection during live_buffers() (issue 8).  The snapshot
# held raw pointers to the buffers; the allocations that build its rows
# could start a collection that freed buffers in garbage cycles, and the
# rows were then read from freed memory (a crash from pure Python).  Child
# interpreter: the failure mode is a crash.

LIVE_BUFFERS_DURING_COLLECTION = """
import gc
import memmanager
from memmanager import Buffer

def garbage_cycle():
    holder = []
    holder.append(Buffer(32, 1, death_stub=lambda info, holder=holder: None))

for extra in range(16):                 # where, in the call, the collection starts
    gc.collect()
    gc.disable()
    for _ in range(20):
        garbage_cycle()
    gc.set_threshold(gc.get_count()[0] + extra)
    gc.enable()
    rows = memmanager.live_buffers()
    text = memmanager.report()
    gc.set_threshold(700)
    assert all(r.allocator == "PyAlloc" and r.nbytes == 32 for r in rows), rows
    assert memmanager._core._registry_check() == len(memmanager.live_buffers())
print("ok")
"""


def test_live_buffers_survives_a_collection_it_starts():
    import os
    import pathlib
    import subprocess

    root = pathlib.Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-c", LIVE_BUFFERS_DURING_COLLECTION], cwd=root,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stdout.strip() == "ok"
