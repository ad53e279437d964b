"""Lifecycle attacks (issue 12): identifiers, death stubs and subclasses,
`with` and live exports, collect_delayed's argument, MEMMANAGER_DEBUG
guard sizes, the allocator-name table, exit.

Each test names the bug it guards against; every one of them failed or
crashed before its fix.
"""

import gc
import sys
import textwrap
import threading
import weakref

import pytest

import memmanager
from memmanager import Buffer

from conftest import SUBINTERPRETERS, live_entry, run_python



# --------------------------------------------------------------------------
# Identifiers are unique for the life of the process (DESIGN 2), not id()


def test_stale_identifier_does_not_unpin_a_buffer_at_the_same_address():
    """id() is reused: with identifiers that were id(), a stale identifier
    handed to collect_delayed unpinned (and so freed) whatever buffer now
    lives at the old object's address."""
    old = Buffer(64, 1, delayed_gc=True)
    stale, old_address = old.identifier, id(old)
    assert memmanager.collect_delayed([stale]) == [stale]
    del old
    gc.collect()
    reused = None
    keep = []
    for _ in range(1000):
        b = Buffer(64, 1, delayed_gc=True)
        if id(b) == old_address:
            reused = b
            break
        keep.append(b)
    if reused is None:   # ASan's quarantine, for one, delays reuse
        for b in keep:
            b.release()
        pytest.skip("the allocator did not reuse the object's memory")
    assert reused.identifier != stale
    assert memmanager.collect_delayed([stale]) == []
    assert reused.delayed_gc is True
    assert reused.identifier in memmanager.get_delayed_gc_objects()
    for b in keep + [reused]:
        b.release()


def test_identifiers_never_repeat_and_are_not_id():
    seen = set()
    for _ in range(2000):
        b = Buffer(8, 1)
        assert b.identifier not in seen
        seen.add(b.identifier)
        b.release()
    b = Buffer(8, 1)
    assert b.identifier != id(b)
    assert b.identifier == b.identifier   # stable
    b.release()
    assert b.identifier not in seen       # still readable after release


def test_identifier_is_the_same_everywhere():
    stub_info = {}
    b = Buffer(16, 2, allocator="CMalloc", delayed_gc=True,
               death_stub=lambda info: stub_info.update(info))
    ident = b.identifier
    assert ident in memmanager.get_delayed_gc_objects()
    entry = live_entry(ident)
    assert entry is not None and entry.address == b.address and entry.pinned is True
    assert str(ident) in memmanager.report()
    with pytest.raises(memmanager.OverlapError, match=r"identifier %d\b" % ident):
        Buffer.consume(b.address, 8, 1, allocator="CMalloc")
    b.release()
    assert stub_info["identifier"] == ident
    assert live_entry(ident) is None


def test_live_buffers_survive_finalizers_releasing_buffers():
    """live_buffers finds the buffer from its registry node: a finalizer
    run meanwhile (the collector is paused, but not for this test's own
    code) cannot make it read a freed object."""
    bufs = [Buffer(32, 1) for _ in range(50)]
    rows = memmanager.live_buffers()
    ids = {b.identifier for b in bufs}
    assert ids <= {row.identifier for row in rows}
    for b in bufs:
        b.release()
    assert not ids & {row.identifier for row in memmanager.live_buffers()}


def test_live_buffers_of_a_subinterpreter_are_its_own():
    """The registry is process-wide; live_buffers() in a subinterpreter used
    to build rows from the main interpreter's Buffer objects."""
    try:
        import _interpreters  # noqa: F401
    except ImportError:
        pytest.importorskip("_xxsubinterpreters")
    inner = ("import memmanager\n"
             "theirs = memmanager.Buffer(8, 1)\n"
             "ids = [row.identifier for row in memmanager.live_buffers()]\n"
             "assert MINE not in ids, ids\n"
             "assert theirs.identifier in ids, ids\n"
             "memmanager.report()\n"
             "theirs.release()\n")
    proc = run_python(SUBINTERPRETERS + textwrap.dedent("""
        import memmanager
        mine = memmanager.Buffer(8, 1)
        interp = new_interp()
        interpreters.run_string(interp, INNER.replace("MINE", str(mine.identifier)))
        interpreters.destroy(interp)
        assert mine.identifier in [r.identifier for r in memmanager.live_buffers()]
        print("ok")
    """).replace("INNER", repr(inner)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"


# --------------------------------------------------------------------------
# A subclass's __del__ does not stop the death stub (DESIGN 10)


class WithDel(Buffer):
    deleted = []

    def __del__(self):
        type(self).deleted.append(self.identifier)


def test_subclass_del_and_stub_both_run_on_refcount_death():
    calls = []
    b = WithDel(8, 1, death_stub=lambda info: calls.append(info["identifier"]))
    ident = b.identifier
    WithDel.deleted.clear()
    del b
    assert calls == [ident]
    assert WithDel.deleted == [ident]
    assert live_entry(ident) is None


def test_subclass_del_and_stub_both_run_in_a_collected_cycle():
    """In a cycle the collector only calls the type's finalizer (the
    subclass's __del__); the stub used to be dropped by tp_clear."""
    calls = []
    b = WithDel(8, 1)

    def stub(info, b=b):   # refers to its own buffer: a cycle
        calls.append((info["identifier"], b.released, bytes(b[:2])))

    b.death_stub_ref = stub
    b[:2] = b"ok"
    ident = b.identifier
    # the stub goes in through the constructor only: make a second one
    c = WithDel(8, 1, death_stub=stub)
    c.self_ref = c
    c_ident = c.identifier
    WithDel.deleted.clear()
    del b, c, stub
    gc.collect()
    assert calls == [(c_ident, False, b"ok")]
    assert sorted(WithDel.deleted) == sorted([ident, c_ident])
    assert live_entry(c_ident) is None and live_entry(ident) is None


def test_grandchild_and_del_calling_super():
    class Child(WithDel):
        pass

    class Polite(Buffer):
        def __del__(self):
            calls.append("del")

    calls = []
    c = Child(8, 1, death_stub=lambda info: calls.append("stub"))
    del c
    assert calls == ["stub"]
    p = Polite(8, 1, death_stub=lambda info: calls.append("stub2"))
    del p
    assert calls == ["stub", "stub2", "del"]


def test_del_resurrecting_the_buffer():
    """__del__ keeps the buffer: the stub ran once (before __del__), the
    memory is still there, and the final death frees it without a second
    stub call."""
    calls, keep = [], []

    class Phoenix(Buffer):
        def __del__(self):
            keep.append(self)

    b = Phoenix(8, 1, death_stub=lambda info: calls.append(info["identifier"]))
    ident = b.identifier
    b[0] = 42
    del b
    assert calls == [ident]
    assert len(keep) == 1 and keep[0][0] == 42 and not keep[0].released
    keep.clear()
    gc.collect()
    assert calls == [ident]
    assert live_entry(ident) is None


def test_del_assigned_after_the_instance_was_made():
    """The finalizer slot is reset by assigning __del__ on the class: the
    stub then runs from dealloc (the stub_done fallback)."""
    calls = []

    class Late(Buffer):
        pass

    b = Late(8, 1, death_stub=lambda info: calls.append("stub"))
    Late.__del__ = lambda self: calls.append("del")
    del b
    assert sorted(calls) == ["del", "stub"]


def test_stub_resurrecting_from_the_dealloc_fallback():
    """A stub that finds its dying buffer (gc.get_objects) and keeps it:
    the object stays valid, its memory too; the next death frees it and
    does not call the stub again."""
    calls, keep = [], []

    class Late(Buffer):
        pass

    def stub(info):
        calls.append(info["identifier"])
        keep.extend(o for o in gc.get_objects() if type(o) is Late)

    b = Late(8, 1, death_stub=stub)
    Late.__del__ = lambda self: None
    ident = b.identifier
    del b
    assert calls == [ident]
    assert len(keep) == 1 and keep[0].identifier == ident
    assert keep[0].nbytes == 8 and not keep[0].released
    keep.clear()
    gc.collect()
    assert calls == [ident]
    assert live_entry(ident) is None


def test_stub_resurrecting_a_plain_buffer_through_a_weakref():
    calls, keep = [], []
    b = Buffer(8, 1)
    ref = weakref.ref(b)
    b2 = Buffer(8, 1, death_stub=lambda info: (calls.append(1), keep.append(ref2())))
    ref2 = weakref.ref(b2)
    del b2
    assert calls == [1] and len(keep) == 1 and keep[0] is not None
    assert not keep[0].released
    keep.clear()
    assert calls == [1]
    del b, ref


def test_stub_releasing_its_own_buffer():
    order = []
    holder = {}

    def stub(info):
        order.append("stub")
        holder["b"].release()     # release inside its own release
        order.append(holder["b"].released)

    b = Buffer(8, 1, delayed_gc=True, death_stub=stub)
    holder["b"] = b
    b.release()
    assert order == ["stub", True]
    assert b.released
    assert b.identifier not in memmanager.get_delayed_gc_objects()
    holder.clear()


def test_stub_releasing_its_own_buffer_in_a_cycle():
    order = []

    def make_cycle():
        box = []
        c = Buffer(8, 1, death_stub=lambda info: (order.append("stub"), box[0].release(),
                                                 order.append(box[0].released)))
        box.append(c)          # c -> stub -> box -> c
        return c.identifier

    ident = make_cycle()
    gc.collect()
    assert order == ["stub", True]
    assert live_entry(ident) is None


def test_raising_stub_still_frees():
    seen = []
    old = sys.unraisablehook
    sys.unraisablehook = lambda args: seen.append(args.exc_type)
    try:
        b = Buffer(8, 1, death_stub=lambda info: 1 / 0)
        ident = b.identifier
        del b
    finally:
        sys.unraisablehook = old
    assert seen == [ZeroDivisionError]
    assert live_entry(ident) is None


def test_weakref_callback_releasing_buffers_during_dealloc():
    other = Buffer(8, 1, delayed_gc=True)
    calls = []
    b = Buffer(8, 1, death_stub=lambda info: calls.append("stub"))
    r = weakref.ref(b, lambda ref: (calls.append("cb"), other.release(),
                                    memmanager.collect_delayed()))
    del b
    assert calls == ["stub", "cb"]
    assert other.released
    del r


# --------------------------------------------------------------------------
# with Buffer(...) and live exports (DESIGN 2)


def test_exit_keeps_the_users_exception_and_defers_the_release():
    calls = []
    with pytest.raises(KeyError) as info:
        with Buffer(8, 1, death_stub=lambda d: calls.append("stub")) as b:
            view = memoryview(b)
            raise KeyError("mine")
    assert info.value.args == ("mine",)
    if sys.version_info >= (3, 11):
        assert any("deferred" in note for note in info.value.__notes__)
    assert not b.released and calls == []
    ident = b.identifier
    view[0] = 7          # still usable: nothing was freed
    view.release()       # the last export: the release happens now
    assert b.released and calls == ["stub"]
    assert live_entry(ident) is None


def test_exit_without_exception_still_refuses():
    b = Buffer(8, 1)
    view = memoryview(b)
    with pytest.raises(BufferError):
        with b:
            pass
    view.release()
    assert not b.released      # not deferred: the block did not raise
    b.release()


def test_deferred_release_through_numpy_and_dlpack():
    np = pytest.importorskip("numpy")
    b = Buffer(16, 1, delayed_gc=True)
    with pytest.raises(ValueError):
        with b:
            arr = np.frombuffer(b, dtype=np.uint8)
            capsule = b.__dlpack__()
            raise ValueError("x")
    assert b.exports == 2 and not b.released
    del arr
    gc.collect()
    assert not b.released
    del capsule
    assert b.released
    assert b.identifier not in memmanager.get_delayed_gc_objects()


def test_deferred_release_when_the_stub_takes_a_new_export():
    held = []
    box = {}
    b = Buffer(8, 1, death_stub=lambda d: held.append(memoryview(box["b"])))
    box["b"] = b
    with pytest.raises(RuntimeError):
        with b:
            v = memoryview(b)
            raise RuntimeError
    v.release()                 # stub runs, takes a new export
    assert held and not b.released
    held[0].release()           # that was the last one
    assert b.released
    box.clear()


def test_exit_with_an_exception_whose_add_note_fails():
    class Rude(Exception):
        def add_note(self, note):
            raise TypeError("no notes here")

    b = Buffer(8, 1)
    with pytest.raises(Rude):
        with b:
            v = memoryview(b)
            raise Rude()
    del v
    assert b.released


def test_deferred_release_ended_inside_another_buffers_release():
    """The last export is a zero-copy consume's: it ends inside the
    consumer's release."""
    b = Buffer(8, 1)
    with pytest.raises(LookupError):
        with b:
            try:
                c = Buffer.consume(b, 8, 1, delayed_gc=False)
            except memmanager.OverlapError:
                pytest.skip("zero-copy consume of a Buffer overlaps it (before the consume fix)")
            raise LookupError
    assert not b.released
    c.release()
    assert b.released


def test_exit_called_by_hand_with_odd_arguments():
    b = Buffer(8, 1)
    v = memoryview(b)
    with pytest.raises(BufferError):
        b.__exit__(None, None, None)
    assert b.__exit__(ValueError, ValueError("x"), None) is False
    v.release()
    assert b.released


def test_deferred_release_finished_by_a_copy_without_the_gil():
    """A large extract_buffer_region copies without the GIL under an
    internal export; a release deferred meanwhile is finished when that
    export ends (it used to wait for the buffer's deallocation)."""
    for _ in range(20):
        b = Buffer(32 << 20, 1, init_value=1)
        done = threading.Event()

        def copy():
            try:
                b.extract_buffer_region(0, b.nbytes - 1)
            except ValueError:
                pass
            done.set()

        t = threading.Thread(target=copy)
        t.start()
        while not done.is_set() and b.exports == 0:
            pass
        deferred = False
        if b.exports > 0:
            assert b.__exit__(KeyError, KeyError("x"), None) is False
            deferred = not b.released
        t.join()
        if deferred:
            assert b.released
            return
        b.release()
    pytest.skip("never caught the copy in the act")


# --------------------------------------------------------------------------
# collect_delayed's argument (DESIGN 6)


def test_collect_delayed_one_buffer():
    """A Buffer used to be iterated: its bytes read as identifiers."""
    b = Buffer(8, 1, delayed_gc=True, init_value=0)
    assert memmanager.collect_delayed(b) == [b.identifier]
    assert not b.delayed_gc
    assert memmanager.collect_delayed(b) == []


def test_collect_delayed_buffer_bytes_are_never_identifiers():
    pinned = [Buffer(8, 1, delayed_gc=True) for _ in range(3)]
    ids = [p.identifier for p in pinned]
    small = [i for i in ids if i < 256]
    carrier = Buffer(max(len(small), 1), 1, delayed_gc=True)
    for k, i in enumerate(small):
        carrier[k] = i
    assert memmanager.collect_delayed(carrier) == [carrier.identifier]
    assert all(p.delayed_gc for p in pinned)
    for p in pinned:
        p.release()


@pytest.mark.parametrize("bad", [b"\x01\x02", bytearray(b"\x01"), memoryview(b"\x01"), "12",
                                 5, 3.0, object()])
def test_collect_delayed_refuses_non_collections(bad):
    b = Buffer(8, 1, delayed_gc=True)
    with pytest.raises(TypeError):
        memmanager.collect_delayed(bad)
    assert b.delayed_gc
    b.release()


def test_collect_delayed_accepts_index_objects():
    np = pytest.importorskip("numpy")
    b = Buffer(8, 1, delayed_gc=True)

    class Ix:
        def __index__(self):
            return b.identifier

    assert memmanager.collect_delayed([Ix()]) == [b.identifier]
    c = Buffer(8, 1, delayed_gc=True)
    assert memmanager.collect_delayed(np.array([c.identifier])) == [c.identifier]
    with pytest.raises(TypeError):
        memmanager.collect_delayed([True])


def test_collect_delayed_iterator_releases_and_collects_midway():
    a, b, c = (Buffer(8, 1, delayed_gc=True) for _ in range(3))
    ids = [a.identifier, b.identifier, c.identifier]
    refs = [weakref.ref(x) for x in (a, b, c)]

    def items():
        yield ids[0]
        a.release()
        memmanager.collect_delayed([ids[2]])
        yield ids[1]
        yield b
        gc.collect()
        yield ids[2]

    del c
    result = memmanager.collect_delayed(items())
    assert result == [ids[1]]
    del a, b
    gc.collect()
    assert all(r() is None for r in refs)


def test_collect_delayed_index_and_hash_release_midway():
    bufs = [Buffer(8, 1, delayed_gc=True) for _ in range(4)]
    ids = [x.identifier for x in bufs]

    class Evil(int):
        def __hash__(self):
            memmanager.collect_delayed()
            return 1

        def __eq__(self, other):
            bufs.clear()
            return False

    class EvilIndex:
        def __index__(self):
            for x in list(bufs):
                x.release()
            gc.collect()
            return ids[3]

    result = memmanager.collect_delayed([Evil(ids[0]), EvilIndex(), ids[1]])
    assert result == []     # the __index__ released them all first
    assert not set(ids) & set(memmanager.get_delayed_gc_objects())


def test_collect_delayed_iterator_raising_unpins_nothing():
    b = Buffer(8, 1, delayed_gc=True)

    def items():
        yield b.identifier
        raise OSError("boom")

    with pytest.raises(OSError):
        memmanager.collect_delayed(items())
    assert b.delayed_gc
    b.release()


def test_collect_delayed_stub_pins_and_collects_more():
    made = []

    def stub(info):
        made.append(Buffer(8, 1, delayed_gc=True))
        memmanager.collect_delayed()

    a = Buffer(8, 1, delayed_gc=True, death_stub=stub)
    ident = a.identifier
    del a
    assert memmanager.collect_delayed([ident, ident]) == [ident]
    assert made and made[0].delayed_gc is False   # the stub's own collect
    made.clear()


# --------------------------------------------------------------------------
# MEMMANAGER_DEBUG=1 guard bytes cost bytes, not the alignment's pages


def test_debug_guards_do_not_fill_the_alignment():
    """The front guard used to be memset over the whole alignment: a 1-byte
    buffer aligned to 1 GiB took 1 GiB of RSS under MEMMANAGER_DEBUG=1."""
    proc = run_python("""
        import ctypes, warnings, memmanager
        assert memmanager._core.DEBUG == 1
        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096
        before = rss()
        bufs = [memmanager.Buffer(1, 1, allocator="Aligned", alignment=2**25, init_value=init)
                for init in (None, 0, 7)]
        grown = rss() - before
        # before: the three front guards filled 3 * 32 MiB; now a few pages
        # (more under ASan, whose allocator and shadow memory add some)
        assert grown < 2**25, grown
        assert all(b.address % 2**25 == 0 for b in bufs)
        assert bufs[1][0] == 0 and bufs[2][0] == 7
        # damage right in front is still found
        ctypes.memset(bufs[0].address - 1, 0x41, 1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bufs[0].release()
        assert [w.category for w in caught] == [RuntimeWarning], caught
        assert "1 bytes before its start" in str(caught[0].message), caught[0].message
        for b in bufs:
            b.release()
        m = memmanager.Buffer(1, 1, allocator="Mmap", init_value=0)
        assert m[0] == 0
        m.release()
        print("ok")
    """, {"MEMMANAGER_DEBUG": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"


# --------------------------------------------------------------------------
# Allocator names are limited by memory alone (DESIGN 5)


def test_many_and_long_allocator_names():
    """The stats table had 256 fixed slots ("too many allocators" after
    about 250 names) and names were cut at 63 characters."""
    proc = run_python("""
        import memmanager

        class Plugin:
            def malloc(self, n, s, init, options):
                return bytearray(n * s or 1)
            def free(self, address):
                pass
            def get_buffer_address(self, handle):
                import ctypes
                return ctypes.addressof((ctypes.c_char * len(handle)).from_buffer(handle))

        names = [f"many{i}" for i in range(1200)]
        names += ["L" * 200, "L" * 201, "x" * 10000, "\\u00e9" * 100]
        for name in names:
            memmanager.register_allocator(name, Plugin())
        assert set(names) <= set(memmanager.allocators())
        for name in names[::97] + names[-4:]:
            memmanager.Buffer(8, 1, allocator=name).release()
        stats = memmanager.stats()
        for name in names[::97] + names[-4:]:
            assert stats[name]["allocations"] == 1, name
        assert "L" * 200 in stats and "L" * 201 in stats and stats["L" * 200] is not stats["L" * 201]
        assert "many5" not in stats            # registered, never used
        memmanager.register_allocator(names[0], Plugin())   # re-registering keeps the slot
        memmanager.Buffer(8, 1, allocator=names[0]).release()
        assert memmanager.stats()[names[0]]["allocations"] == 2
        memmanager.report()
        for bad in ("", "a\\0b"):
            try:
                memmanager.register_allocator(bad, Plugin())
            except ValueError:
                pass
            else:
                raise AssertionError(bad)
        print("ok")
    """, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"


# --------------------------------------------------------------------------
# Exit


def test_pinned_buffers_at_exit_run_their_stubs_even_when_pinning_more():
    proc = run_python("""
        import memmanager
        import sys
        def second(info):
            # from the exit hook, not from the module's teardown much later
            print("second stub", sys.is_finalizing(), flush=True)
        def first(info):
            print("first stub", flush=True)
            memmanager.Buffer(8, 1, delayed_gc=True, death_stub=second)
        a = memmanager.Buffer(8, 1, delayed_gc=True, death_stub=first)
        exported = memmanager.Buffer(8, 1, delayed_gc=True,
                                     death_stub=lambda i: print("exported stub", flush=True))
        view = memoryview(exported)
        raiser = memmanager.Buffer(8, 1, delayed_gc=True, death_stub=lambda i: 1 / 0)
        del a, exported, raiser
        print("end of user code", flush=True)
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.split()
    assert proc.stdout.splitlines()[0] == "end of user code"
    assert proc.stdout.count("first stub") == 1
    assert proc.stdout.count("second stub False") == 1, proc.stdout
    assert proc.stdout.count("exported stub") == 1
    assert "ZeroDivisionError" in proc.stderr
    del lines
