"""Delayed GC (pinning): DESIGN section 6 and docs/api-decisions.md
(get_delayed_gc_objects, collect_delayed)."""

import gc
import weakref

import pytest

import memmanager
from memmanager import Buffer

from conftest import live_addresses, live_entry


def pinned_ids():
    return memmanager.get_delayed_gc_objects()


@pytest.mark.parametrize("allocator", ["PyAlloc", "CMalloc"])
def test_pinned_survives_dropping_references(allocator):
    calls = []
    buf = Buffer(64, 1, allocator=allocator, delayed_gc=True, init_value=9, death_stub=calls.append)
    ident, addr = buf.identifier, buf.address
    ref = weakref.ref(buf)
    assert buf.delayed_gc is True
    del buf
    gc.collect()
    assert ref() is not None
    assert ref().identifier == ident
    assert bytes(ref()) == b"\x09" * 64
    assert addr in live_addresses()
    assert live_entry(ident).pinned is True
    assert ident in pinned_ids()
    assert calls == []
    assert memmanager.collect_delayed([ident]) == [ident]
    gc.collect()
    assert ref() is None
    assert addr not in live_addresses()
    assert ident not in pinned_ids()
    assert len(calls) == 1


@pytest.mark.parametrize("truthy", [True, 1, "yes", [0]])
def test_truthy_pins(truthy, make_buffer):
    buf = make_buffer(4, 1, delayed_gc=truthy)
    assert buf.identifier in pinned_ids()
    assert buf.delayed_gc is True


@pytest.mark.parametrize("falsy", [False, 0, "", None, []])
def test_falsy_does_not_pin(falsy, make_buffer):
    buf = make_buffer(4, 1, delayed_gc=falsy)
    assert buf.identifier not in pinned_ids()
    assert buf.delayed_gc is False
    assert live_entry(buf.identifier).pinned is False


def test_pin_through_options_mapping():
    buf = Buffer(4, 1, {"delayed_gc": True})
    ident = buf.identifier
    ref = weakref.ref(buf)
    del buf
    gc.collect()
    assert ref() is not None
    assert ident in pinned_ids()


def test_get_delayed_gc_objects_forms(make_buffer):
    bufs = [make_buffer(4, 1, delayed_gc=True) for _ in range(3)]
    ids = [b.identifier for b in bufs]
    listed = memmanager.get_delayed_gc_objects()
    assert isinstance(listed, list)
    assert all(type(i) is int for i in listed)
    assert [i for i in listed if i in ids] == ids  # pin order
    assert Buffer.get_delayed_gc_objects() == listed
    assert bufs[0].get_delayed_gc_objects() == listed
    unpinned = make_buffer(4, 1)
    assert unpinned.get_delayed_gc_objects() == listed
    assert unpinned.identifier not in listed


def test_get_delayed_gc_objects_is_a_copy(make_buffer):
    buf = make_buffer(4, 1, delayed_gc=True)
    listed = memmanager.get_delayed_gc_objects()
    listed.clear()
    assert buf.identifier in memmanager.get_delayed_gc_objects()


def test_collect_all():
    bufs = [Buffer(8, 1, delayed_gc=True) for _ in range(4)]
    ids = [b.identifier for b in bufs]
    refs = [weakref.ref(b) for b in bufs]
    keep = bufs[1]
    del bufs
    unpinned = memmanager.collect_delayed()
    assert set(ids) <= set(unpinned)
    assert len(unpinned) == len(set(unpinned))
    assert pinned_ids() == []
    gc.collect()
    assert [r() is None for r in refs] == [True, False, True, True]
    # Unpinned but still referenced: alive and usable, no longer pinned.
    assert keep.released is False
    assert live_entry(keep.identifier).pinned is False
    assert keep.nbytes == 8


def test_collect_none_means_all():
    buf = Buffer(8, 1, delayed_gc=True)
    assert buf.identifier in memmanager.collect_delayed(None)
    assert pinned_ids() == []


def test_collect_given_identifiers():
    a, b, c = (Buffer(8, 1, delayed_gc=True) for _ in range(3))
    ids = [a.identifier, b.identifier, c.identifier]
    result = memmanager.collect_delayed([ids[0], ids[2]])
    assert sorted(result) == sorted([ids[0], ids[2]])
    assert ids[1] in pinned_ids()
    assert ids[0] not in pinned_ids()
    assert ids[2] not in pinned_ids()
    refs = [weakref.ref(x) for x in (a, b, c)]
    del a, b, c
    gc.collect()
    assert [r() is None for r in refs] == [True, False, True]


def test_collect_given_buffers():
    a, b, c = (Buffer(8, 1, delayed_gc=True) for _ in range(3))
    result = memmanager.collect_delayed([a, c])
    assert sorted(result) == sorted([a.identifier, c.identifier])
    assert pinned_ids() == [b.identifier]


@pytest.mark.parametrize("wrap", [list, tuple, set, iter, lambda xs: (x for x in xs), lambda xs: {x: 1 for x in xs}])
def test_collect_accepts_iterables(wrap):
    a = Buffer(8, 1, delayed_gc=True)
    assert memmanager.collect_delayed(wrap([a.identifier])) == [a.identifier]
    assert a.identifier not in pinned_ids()


def test_collect_mixed_ids_and_buffers():
    a, b = Buffer(8, 1, delayed_gc=True), Buffer(8, 1, delayed_gc=True)
    assert sorted(memmanager.collect_delayed([a, b.identifier])) == sorted([a.identifier, b.identifier])


def test_collect_skips_unknown():
    a = Buffer(8, 1, delayed_gc=True)
    plain = Buffer(8, 1)
    assert memmanager.collect_delayed([]) == []
    assert memmanager.collect_delayed([12345, -7, 0, 2**80]) == []
    assert memmanager.collect_delayed([plain]) == []
    assert memmanager.collect_delayed([plain.identifier, a.identifier, 99]) == [a.identifier]
    assert memmanager.collect_delayed([a]) == []  # already unpinned
    assert a.identifier not in pinned_ids()
    plain.release()
    a.release()


def test_collect_duplicates_once():
    a = Buffer(8, 1, delayed_gc=True)
    assert memmanager.collect_delayed([a, a.identifier, a]) == [a.identifier]


def test_collect_skips_released():
    a = Buffer(8, 1, delayed_gc=True)
    ident = a.identifier
    a.release()
    assert memmanager.collect_delayed([ident]) == []
    assert memmanager.collect_delayed([a]) == []


@pytest.mark.parametrize("bad", [5, 1.5, object(), [1.5], [None], ["x"], "abc", [b"x"], [[1]], True])
def test_collect_type_error_unpins_nothing(bad):
    a = Buffer(8, 1, delayed_gc=True)
    before = pinned_ids()
    with pytest.raises(TypeError):
        memmanager.collect_delayed(bad)
    assert pinned_ids() == before
    with pytest.raises(TypeError):
        memmanager.collect_delayed([a.identifier, 1.5])
    assert pinned_ids() == before
    with pytest.raises(TypeError):
        memmanager.collect_delayed([a, object()])
    assert a.identifier in pinned_ids()
    a.release()


def test_release_frees_pinned_at_once():
    calls = []
    a = Buffer(8, 1, delayed_gc=True, death_stub=calls.append)
    ident, addr = a.identifier, a.address
    a.release()
    assert addr not in live_addresses()
    assert ident not in pinned_ids()
    assert len(calls) == 1


def test_pinned_with_export_freed_after_view():
    a = Buffer(8, 1, delayed_gc=True, allocator="CMalloc")
    addr = a.address
    ref = weakref.ref(a)
    view = memoryview(a)
    del a
    assert memmanager.collect_delayed() != []
    gc.collect()
    assert ref() is not None  # the memoryview keeps it
    assert addr in live_addresses()
    view.release()
    del view
    gc.collect()
    assert ref() is None
    assert addr not in live_addresses()


def test_unpinned_buffer_can_be_released_normally():
    a = Buffer(8, 1, delayed_gc=True)
    memmanager.collect_delayed([a])
    addr = a.address
    a.release()
    assert addr not in live_addresses()


def test_pin_order_survives_unpins():
    bufs = [Buffer(4, 1, delayed_gc=True) for _ in range(5)]
    ids = [b.identifier for b in bufs]
    memmanager.collect_delayed([ids[1], ids[3]])
    assert [i for i in pinned_ids() if i in ids] == [ids[0], ids[2], ids[4]]
    late = Buffer(4, 1, delayed_gc=True)
    assert pinned_ids()[-1] == late.identifier
