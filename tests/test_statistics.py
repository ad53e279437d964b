"""memmanager.statistics() (DESIGN section 12): scoped counters of the
buffers made inside a with block, per allocator, nestable, per thread or
context; and what hostile callers can do to a scope."""

import asyncio
import contextvars
import copy
import ctypes
import gc
import pickle
import sys
import threading
import uuid
import weakref

import pytest

import memmanager
from memmanager import AllocatorStatistics, Buffer, Statistics, statistics
from memmanager import _core

COUNTERS = ("allocations", "allocated_bytes", "frees", "freed_bytes",
            "live_buffers", "live_bytes", "peak_bytes")


def counts(s):
    return {name: getattr(s, name) for name in COUNTERS}


def expect(allocations=0, allocated_bytes=0, frees=0, freed_bytes=0,
           live_buffers=0, live_bytes=0, peak_bytes=0):
    return dict(allocations=allocations, allocated_bytes=allocated_bytes,
                frees=frees, freed_bytes=freed_bytes, live_buffers=live_buffers,
                live_bytes=live_bytes, peak_bytes=peak_bytes)


def token_of(s):
    tokens = [r for r in gc.get_referents(s) if isinstance(r, contextvars.Token)]
    assert len(tokens) == 1
    return tokens[0]


@pytest.fixture(autouse=True)
def _no_scope_left_active():
    gc.collect()
    before = _core._statistics_active_scopes()
    yield
    gc.collect()
    assert _core._statistics_active_scopes() == before


# --------------------------------------------------------------------------
# What is counted


def test_counts_inside_the_block():
    with statistics() as s:
        assert s.active
        a = Buffer(64, 1)
        b = Buffer(10, 4)
        assert counts(s) == expect(2, 104, 0, 0, 2, 104, 104)
        b.release()
        assert counts(s) == expect(2, 104, 1, 40, 1, 64, 104)
        del a
        assert counts(s) == expect(2, 104, 2, 104, 0, 0, 104)
    assert not s.active


def test_enter_returns_the_scope_and_statistics_makes_new_ones():
    s = statistics()
    assert type(s) is Statistics
    assert statistics() is not s
    with s as entered:
        assert entered is s


def test_nothing_counted_before_enter_or_after_exit():
    s = statistics()
    Buffer(8, 1)
    with s:
        Buffer(16, 1)
    Buffer(32, 1)
    assert counts(s) == expect(1, 16, 1, 16, 0, 0, 16)


def test_frozen_at_exit_freed_after():
    with statistics() as s:
        kept = Buffer(100, 1)
        Buffer(5, 1)
    at_exit = counts(s)
    assert at_exit == expect(2, 105, 1, 5, 1, 100, 105)
    kept.release()
    Buffer(1000, 1)
    assert counts(s) == at_exit


def test_peak_is_the_highest_live_bytes():
    with statistics() as s:
        a = Buffer(100, 1)
        b = Buffer(200, 1)
        a.release()
        b.release()
        c = Buffer(50, 1)
    assert s.peak_bytes == 300
    assert s.live_bytes == 50
    c.release()


def test_exception_in_block_goes_on_and_stops_counting():
    with pytest.raises(KeyError):
        with statistics() as s:
            Buffer(8, 1)
            raise KeyError("x")
    assert not s.active
    Buffer(8, 1)
    assert s.allocations == 1


def test_repr_shows_state_and_totals():
    s = statistics()
    assert "new" in repr(s) and "allocations=0" in repr(s)
    with s:
        b = Buffer(48, 1)
        assert repr(s).startswith("<memmanager.Statistics active:")
        assert "allocations=1" in repr(s) and "live_bytes=48" in repr(s)
    assert "exited" in repr(s) and "peak_bytes=48" in repr(s)
    b.release()


# --------------------------------------------------------------------------
# Per allocator


def test_per_allocator_counters():
    with statistics() as s:
        a = Buffer(10, 1)
        b = Buffer(20, 1, allocator="CMalloc")
        c = Buffer(30, 1, allocator="Aligned", alignment=64)
        b.release()
    assert set(s.allocators) == {"PyAlloc", "CMalloc", "Aligned"}
    assert s["PyAlloc"] == s.allocators["PyAlloc"]
    assert s["CMalloc"].allocations == 1
    assert s["CMalloc"].frees == 1 and s["CMalloc"].live_bytes == 0
    assert s["CMalloc"].peak_bytes == 20
    assert s["Aligned"].allocated_bytes == 30 and s["Aligned"].live_buffers == 1
    assert tuple(s["PyAlloc"]) == (1, 10, 0, 0, 1, 10, 10)
    a.release()
    c.release()


def test_unknown_or_unused_name_gives_zeros():
    with statistics() as s:
        Buffer(8, 1)
    assert tuple(s["Mmap"]) == (0,) * 7
    assert tuple(s["no such allocator"]) == (0,) * 7
    assert "Mmap" not in s.allocators


def test_subscript_needs_a_str():
    s = statistics()
    with pytest.raises(TypeError, match="str"):
        s[0]
    with pytest.raises(TypeError):
        s[b"PyAlloc"]

    class Name(str):
        def __eq__(self, other):
            raise AssertionError("not called")
        __hash__ = str.__hash__

    with s:
        Buffer(8, 1)
    assert s[Name("PyAlloc")].allocations == 1


def test_allocator_statistics_are_read_only_and_picklable():
    with statistics() as s:
        Buffer(8, 1)
    entry = s["PyAlloc"]
    assert type(entry) is AllocatorStatistics
    with pytest.raises(AttributeError):
        entry.allocations = 5
    assert pickle.loads(pickle.dumps(entry)) == entry
    # the dict is a fresh copy each time
    s.allocators.clear()
    assert "PyAlloc" in s.allocators


def test_python_plugin_counted_under_its_name():
    class Plugin:
        def __init__(self):
            self.blocks = {}

        def malloc(self, num_items, item_size, init_byte, options):
            block = (ctypes.c_char * (num_items * item_size))()
            self.blocks[ctypes.addressof(block)] = block
            return block

        def get_buffer_address(self, handle):
            return ctypes.addressof(handle)

        def free(self, address):
            self.blocks.pop(address)

    name = "Stats" + uuid.uuid4().hex[:8]
    memmanager.register_allocator(name, Plugin())
    with statistics() as s:
        Buffer(12, 2, allocator=name)
    assert s[name].allocations == 1 and s[name].freed_bytes == 24


# --------------------------------------------------------------------------
# Which buffers: owned memory only


def test_consume_copy_and_addresses_counted_zero_copy_not(libc):
    source = bytearray(b"x" * 32)
    with statistics() as s:
        view = Buffer.consume(source, 32, 1)                 # zero-copy: not owned
        borrowed = Buffer.consume(view.address, 8, 1, allocator="Borrowed",
                                  owner=view)                # owns nothing
        copied = Buffer.consume(source, 40, 1, copy=True)    # a new block
        address = libc.malloc(24)
        adopted = Buffer.consume(address, 24, 1, allocator="CMalloc")
        assert s.allocations == 2
        assert s.allocated_bytes == 64
        assert set(s.allocators) == {"PyAlloc", "CMalloc"}
        borrowed.release()
        view.release()
        assert s.frees == 0
        copied.release()
        adopted.release()
    assert counts(s) == expect(2, 64, 2, 64, 0, 0, 64)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/dev/shm")
def test_attach_counted():
    owner = Buffer(4096, 1, allocator="SharedMemory")
    with statistics() as s:
        other = Buffer.attach(owner.name, 100, 1)
        assert s["SharedMemory"].allocations == 1
        assert s.live_bytes == 100
        other.release()
    assert s.frees == 1
    owner.release()


def test_subclass_buffers_counted():
    class Sub(Buffer):
        pass

    with statistics() as s:
        Sub(6, 2, allocator="CMalloc")
    assert s["CMalloc"].allocated_bytes == 12 and s.frees == 1


def test_refused_construction_counts_nothing():
    with statistics() as s:
        with pytest.raises(ValueError):
            Buffer(8, 1, allocator="Borrowed")
        with pytest.raises(memmanager.OverlapError):
            owner = Buffer(16, 1, allocator="CMalloc")
            Buffer.consume(owner.address, 16, 1, allocator="CMalloc")
        assert counts(s) == expect(1, 16, 0, 0, 1, 16, 16)
        owner.release()


# --------------------------------------------------------------------------
# Nesting


def test_inner_counts_in_outer_too():
    with statistics() as outer:
        Buffer(1, 1)
        with statistics() as inner:
            kept = Buffer(10, 1)
            Buffer(20, 1)
        Buffer(100, 1)
        assert counts(inner) == expect(2, 30, 1, 20, 1, 10, 30)
        kept.release()        # inner has ended: only outer counts the free
        assert counts(outer) == expect(4, 131, 4, 131, 0, 0, 110)   # kept + 100
    assert counts(inner) == expect(2, 30, 1, 20, 1, 10, 30)


def test_three_levels_and_siblings():
    with statistics() as a:
        with statistics() as b:
            with statistics() as c:
                Buffer(1, 1)
            with statistics() as d:
                Buffer(2, 1)
                Buffer(4, 1)
    assert [x.allocations for x in (a, b, c, d)] == [3, 3, 1, 2]
    assert [x.allocated_bytes for x in (a, b, c, d)] == [7, 7, 1, 6]


def test_exit_out_of_order_is_refused_and_harmless():
    outer = statistics().__enter__()
    inner = statistics().__enter__()
    with pytest.raises(RuntimeError, match="innermost"):
        outer.__exit__(None, None, None)
    assert outer.active and inner.active
    Buffer(8, 1)
    assert outer.allocations == inner.allocations == 1
    inner.__exit__(None, None, None)
    outer.__exit__(None, None, None)
    assert not outer.active and not inner.active
    Buffer(8, 1)
    assert outer.allocations == 1


def test_chain_left_active_in_a_dead_context_is_collected():
    def build():
        for _ in range(10_000):
            statistics().__enter__()
        Buffer(8, 1)

    ctx = contextvars.copy_context()
    ctx.run(build)
    del ctx
    gc.collect()   # the fixture checks every scope ended


def test_long_chain_deallocated_without_deep_recursion():
    # Only the innermost scope is held: dropping it frees 300000 parents,
    # one inside the other's dealloc (a crash without the trashcan).
    from conftest import run_python

    result = run_python("""
        import memmanager
        scopes = [memmanager.statistics().__enter__() for _ in range(300_000)]
        for s in reversed(scopes):
            s.__exit__(None, None, None)
        innermost = scopes[-1]
        scopes.clear()
        del innermost
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --------------------------------------------------------------------------
# Threads and contexts


def test_thread_started_inside_does_not_count():
    if getattr(sys.flags, "thread_inherit_context", 0):
        pytest.skip("threads inherit the context on this build")
    done = []
    with statistics() as s:
        t = threading.Thread(target=lambda: done.append(Buffer(64, 1)))
        t.start()
        t.join()
    assert done and s.allocations == 0
    del done[:]
    assert s.frees == 0


def test_each_thread_has_its_own_scope():
    ready = threading.Barrier(2)
    results = {}

    def worker(n):
        with statistics() as s:
            ready.wait()
            for _ in range(n):
                Buffer(n, 1)
            ready.wait()
        results[n] = s

    threads = [threading.Thread(target=worker, args=(n,)) for n in (3, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[3].allocations == 3 and results[3].allocated_bytes == 9
    assert results[5].allocations == 5 and results[5].allocated_bytes == 25


def test_enter_in_another_thread_counts_there():
    s = statistics()
    entered, go_on = threading.Event(), threading.Event()
    failures = []

    def worker():
        s.__enter__()
        Buffer(7, 1)
        entered.set()
        go_on.wait()
        s.__exit__(None, None, None)

    t = threading.Thread(target=worker)
    t.start()
    entered.wait()
    Buffer(1000, 1)                        # the main thread: not counted
    try:
        s.__exit__(None, None, None)       # not this thread's scope
    except RuntimeError as exc:
        failures.append(exc)
    with pytest.raises(RuntimeError):
        s.__enter__()
    go_on.set()
    t.join()
    assert len(failures) == 1
    assert s.allocations == 1 and s.allocated_bytes == 7 and not s.active


def test_free_counted_whichever_thread_frees():
    with statistics() as s:
        box = [Buffer(32, 1)]
        t = threading.Thread(target=box.clear)    # the last reference goes there
        t.start()
        t.join()
        assert s.frees == 1 and s.live_bytes == 0


def test_asyncio_task_made_inside_counts():
    async def child(n):
        await asyncio.sleep(0)
        return Buffer(n, 1)

    async def main():
        with statistics() as s:
            kept = await asyncio.gather(child(3), child(4))
        return s, kept

    s, kept = asyncio.run(main())
    assert s.allocations == 2 and s.allocated_bytes == 7
    assert s.live_buffers == 2


def test_asyncio_tasks_with_their_own_scopes_stay_apart():
    async def task(n):
        with statistics() as s:
            for _ in range(n):
                Buffer(1, 1)
                await asyncio.sleep(0)
        return s

    async def main():
        with statistics() as outer:
            scopes = await asyncio.gather(task(2), task(3), task(4))
        return outer, scopes

    outer, scopes = asyncio.run(main())
    assert [s.allocations for s in scopes] == [2, 3, 4]
    assert outer.allocations == 9


def test_to_thread_copies_the_context():
    async def main():
        with statistics() as s:
            await asyncio.to_thread(lambda: Buffer(5, 1))
        return s

    assert asyncio.run(main()).allocated_bytes == 5


def test_exit_from_a_task_or_a_copied_context_refused():
    async def main():
        with statistics() as s:
            async def hostile():
                with pytest.raises(RuntimeError, match="another context"):
                    s.__exit__(None, None, None)
            await asyncio.create_task(hostile())
            assert s.active
            Buffer(3, 1)
        return s

    s = asyncio.run(main())
    assert s.allocations == 1 and not s.active

    with statistics() as t:
        with pytest.raises(RuntimeError, match="another context"):
            contextvars.copy_context().run(t.__exit__, None, None, None)
        assert t.active


def test_scope_outlives_its_task_and_its_parent():
    # A task made inside outer enters inner; outer exits meanwhile.
    async def main():
        outer = statistics().__enter__()
        proceed = asyncio.Event()

        async def child():
            with statistics() as inner:
                Buffer(1, 1)
                await proceed.wait()
                Buffer(2, 1)     # outer has ended: only inner counts
            return inner

        task = asyncio.create_task(child())
        await asyncio.sleep(0)
        outer.__exit__(None, None, None)
        proceed.set()
        return outer, await task

    outer, inner = asyncio.run(main())
    assert outer.allocations == 1 and inner.allocations == 2


# --------------------------------------------------------------------------
# Hostile callers


def test_enter_twice_and_reenter_refused():
    s = statistics()
    with s:
        with pytest.raises(RuntimeError, match="active already"):
            s.__enter__()
        with pytest.raises(RuntimeError):
            with s:
                pass
        assert s.active
    with pytest.raises(RuntimeError, match="ended"):
        s.__enter__()
    assert not s.active


def test_exit_without_enter_or_twice_refused():
    s = statistics()
    with pytest.raises(RuntimeError, match="never entered"):
        s.__exit__(None, None, None)
    with pytest.raises(RuntimeError):
        s.__exit__()
    s.__enter__()
    assert s.__exit__(1, "junk", object()) is False
    with pytest.raises(RuntimeError, match="ended"):
        s.__exit__(None, None, None)


def test_exit_with_too_many_arguments():
    with statistics() as s:
        with pytest.raises(TypeError):
            s.__exit__(1, 2, 3, 4)
        assert s.active


def test_not_instantiable_not_subclassable():
    with pytest.raises(TypeError):
        Statistics()
    with pytest.raises(TypeError):
        class Sub(Statistics):
            pass
    with pytest.raises(TypeError):
        Statistics.allocations = 1
    s = statistics()
    with pytest.raises(AttributeError):
        s.allocations = 5
    with pytest.raises(AttributeError):
        s.anything = 5


def test_pickle_and_copy_refused():
    s = statistics()
    with s:
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            with pytest.raises(TypeError, match="pickle"):
                pickle.dumps(s, protocol)
        with pytest.raises(TypeError):
            copy.copy(s)
        with pytest.raises(TypeError):
            copy.deepcopy(s)
        assert s.active


def test_gc_sees_the_references():
    outer = statistics()
    with outer:
        with statistics() as s:
            assert gc.is_tracked(s)
            referents = gc.get_referents(s)
            assert outer in referents and Statistics in referents
            assert any(isinstance(r, contextvars.Token) for r in referents)
            buf = Buffer(8, 1)
            assert s in gc.get_referents(buf)
    # exited: the token is gone, the parent stays
    assert not any(isinstance(r, contextvars.Token) for r in gc.get_referents(s))
    assert outer in gc.get_referents(s)
    buf.release()
    assert s not in gc.get_referents(buf)


def test_context_variable_tampered_with():
    # The variable is reachable through the token: storing something else
    # in it, or resetting it behind the scope's back, breaks nothing.
    def run():
        s = statistics().__enter__()
        var = token_of(s).var
        junk = var.set(object())
        Buffer(8, 1)                           # not a scope there: nothing counted
        with pytest.raises(RuntimeError, match="innermost"):
            s.__exit__(None, None, None)
        with statistics() as inner:            # a junk parent is no parent
            Buffer(4, 1)
        assert inner.allocations == 1
        var.reset(junk)
        Buffer(2, 1)
        s.__exit__(None, None, None)
        return s

    s = contextvars.copy_context().run(run)
    assert s.allocations == 1 and s.allocated_bytes == 2


def test_collected_while_active_with_its_buffer():
    # buffer -> scope -> token -> context -> buffer (a user variable):
    # the collector takes the whole cycle, and ends the scope.
    holder = contextvars.ContextVar("holder")

    def run():
        s = statistics().__enter__()
        buf = Buffer(8, 1)
        holder.set(buf)
        return weakref.ref(buf)

    ctx = contextvars.copy_context()
    before = _core._statistics_active_scopes()
    buf_ref = ctx.run(run)
    assert _core._statistics_active_scopes() == before + 1
    del ctx
    assert buf_ref() is not None     # only the collector can take the cycle
    gc.collect()
    assert buf_ref() is None
    assert _core._statistics_active_scopes() == before


def test_last_reference_dropped_in_release():
    with statistics() as s:
        buf = Buffer(8, 1)
    del s
    buf.release()    # the scope is deallocated inside the release


def test_scope_dealloc_inside_release_runs_python_code_safely():
    # The buffer holds the last reference to an active scope whose token
    # holds the last reference to a context, whose values have __del__.
    seen = []

    class Noisy:
        def __del__(self):
            seen.append(Buffer(3, 1))          # runs inside buf's release
            with statistics() as again:
                Buffer(1, 1)
            seen.append(again.allocations)

    user = contextvars.ContextVar("user")

    def run():
        s = statistics().__enter__()
        buf = Buffer(8, 1)
        token = token_of(s)
        token.var.reset(token)                 # the context forgets the scope
        user.set(Noisy())
        return buf

    buf = contextvars.copy_context().run(run)
    assert not seen
    buf.release()
    assert len(seen) == 2 and seen[1] == 1
    with pytest.raises(ValueError, match="released"):
        buf[0]


def test_plugin_exits_the_scope_mid_construction_and_mid_release():
    scope = []

    class Plugin:
        def __init__(self):
            self.blocks = {}

        def malloc(self, num_items, item_size, init_byte, options):
            if options.get("exit_scope"):
                scope[0].__exit__(None, None, None)
            block = (ctypes.c_char * (num_items * item_size))()
            self.blocks[ctypes.addressof(block)] = block
            return block

        def get_buffer_address(self, handle):
            return ctypes.addressof(handle)

        def free(self, address):
            self.blocks.pop(address)
            if scope[0].active:
                scope[0].__exit__(None, None, None)

    name = "Stats" + uuid.uuid4().hex[:8]
    memmanager.register_allocator(name, Plugin())
    s = statistics().__enter__()
    scope.append(s)
    Buffer(4, 1, allocator=name, exit_scope=True)   # ended before it is registered
    assert s.allocations == 0 and not s.active

    s = statistics().__enter__()
    scope[0] = s
    buf = Buffer(4, 1, allocator=name)
    buf.release()                                    # the free ends the scope first
    assert counts(s) == expect(1, 4, 0, 0, 1, 4, 4)


def test_death_stub_allocating_during_release():
    made = []
    with statistics() as s:
        buf = Buffer(8, 1, death_stub=lambda info: made.append(Buffer(2, 1)))
        buf.release()
        assert counts(s) == expect(2, 10, 1, 8, 1, 2, 10)
    made.clear()
    assert s.frees == 1


def test_statistics_in_a_subinterpreter():
    from conftest import SUBINTERPRETERS, run_python

    result = run_python(SUBINTERPRETERS + """
import memmanager
interp = new_interp()
interpreters.run_string(interp, '''
import memmanager
with memmanager.statistics() as s:
    memmanager.Buffer(16, 1)
assert s.allocations == 1, s
''')
with memmanager.statistics() as s:
    interpreters.run_string(interp, 'import memmanager; memmanager.Buffer(8, 1)')
    memmanager.Buffer(4, 1)
assert s.allocations == 1 and s.allocated_bytes == 4, s
interpreters.destroy(interp)
print("ok")
""")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
