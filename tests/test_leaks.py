"""Leak checks: reference counts of everything handed to memmanager, and
tracemalloc over many create/destroy cycles (DESIGN sections 5 and 10,
STYLE practice 12).

The second half repeats every public operation, success and error paths,
many times (assert_no_growth): the reference counts of the objects
involved, tracemalloc's traced memory, stats() and the registry must not
grow.  The operations come from surface.py (every allocator, source kind
and exporter) and from the bad-input matrix of test_bad_input.py (every
error path), so a new allocator or exporter is checked without a line
here.  `make asan` runs this file again under LeakSanitizer, which reports
any block allocated from src/ that nothing references at exit.
"""

import contextlib
import ctypes
import gc
import sys
import tracemalloc
import weakref

import numpy as np
import pytest

import memmanager
from memmanager import Buffer

import surface
import test_bad_input
from conftest import scaled


class UnfollowedArray(np.ndarray):
    """An exporter the registry does not follow to its Buffer (only
    numpy.ndarray itself, memoryviews, Buffers and stored views are)."""


ROUNDS = scaled(300, 30)
LEAK_ROUNDS = scaled(120, 15)


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
    managed = Buffer(64, 1, delayed_gc=False)
    for _ in range(ROUNDS):
        Buffer.consume(ba, 64, 1, delayed_gc=False).release()
        Buffer.consume(data, 32, 2).release()
        Buffer.consume(ba, 16, 1, copy=True).release()
        Buffer.consume(base, 64, 1, allocator="Borrowed", owner=owner).release()
        b = Buffer.consume(ba, 8, 1, delayed_gc=False)
        del b
        swallow(ValueError, Buffer.consume, ba, 65, 1)
        # Issue 12: Borrowed regions may overlap each other; one over an
        # owned buffer (not its owner=) is refused, and so is an adoption.
        swallow(memmanager.OverlapError, Buffer.consume, managed.address + 8, 8, 1,
                allocator="Borrowed", owner=owner)
        swallow(memmanager.OverlapError, Buffer.consume, base + 520, 8, 1, allocator="CMalloc")
        swallow(ValueError, Buffer.consume, data, 0, 1)
    existing.release()
    managed.release()
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
            memmanager.Buffer.consume(libc.malloc(4096), 4096, 1, allocator="CMalloc").release()
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(500):
            holder = ctypes.c_void_p(libc.malloc(4096))
            memmanager.Buffer.consume(holder, 4096, 1, allocator="CMalloc").release()
            assert holder.value is None
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert end - start < 128 * 1024
    assert memmanager.stats()["total"]["live_buffers"] == base


# --------------------------------------------------------------------------
# every public operation, repeated

def counters():
    """What must come back to the same values after an operation."""
    stats = memmanager.stats()
    live = {name: (c["live_buffers"], c["live_bytes"]) for name, c in stats.items()}
    return live, memmanager._core._registry_check(), len(memmanager.get_delayed_gc_objects())


@contextlib.contextmanager
def quiet_unraisable():
    """Counts what reaches sys.unraisablehook, keeping no traceback."""
    seen = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda args: seen.append(args.exc_type)
    try:
        yield seen
    finally:
        sys.unraisablehook = previous


def assert_no_growth(operation, watched=(), rounds=LEAK_ROUNDS, phases=3):
    """Runs operation() many times: the reference counts of `watched`,
    tracemalloc's traced memory, the live stats, the registry and the pins
    must not grow.

    Traced memory is measured over `phases` runs of `rounds` operations
    each, after a warm-up: a leak grows every phase by the same amount,
    while the noise of free lists and caches (which fill and drain as the
    collector runs) does not, so the smallest growth is what is judged."""
    gc.freeze()     # collections below walk only what the operation made
    try:
        for _ in range(rounds // 4 + 3):
            operation()
        gc.collect()
        refs = [sys.getrefcount(obj) for obj in watched]
        before = counters()
        growths = []
        tracemalloc.start()
        try:
            for _ in range(3):
                operation()
            for _ in range(phases):
                gc.collect()
                start = tracemalloc.get_traced_memory()[0]
                for _ in range(rounds):
                    operation()
                gc.collect()
                growths.append(tracemalloc.get_traced_memory()[0] - start)
        finally:
            tracemalloc.stop()
    finally:
        gc.unfreeze()
    assert [sys.getrefcount(obj) for obj in watched] == refs, "a reference leaked"
    assert counters() == before, "a buffer, a pin or a registry entry leaked"
    # A leak of one small object a round (>= 16 bytes) shows in every phase.
    assert min(growths) < max(1024, 8 * rounds), f"traced memory grew by {growths} bytes"


def op_create(name, options, init, pin, stub_kind, via_mapping):
    calls = []
    stub = {"none": None, "record": calls.append,
            "raise": lambda info: 1 / 0}[stub_kind]
    kwargs = dict(options, allocator=name, init_value=init, delayed_gc=pin, death_stub=stub)

    def operation():
        buf = Buffer(24, 2, kwargs) if via_mapping else Buffer(24, 2, **kwargs)
        buf[0] = 1
        buf.release()
        calls.clear()

    return operation, [kwargs, stub, Buffer] + list(options.values())


CREATE_CASES = {
    f"{name}{options or ''} init={init!r} pin={pin} stub={stub} mapping={mapping}":
        (name, options, init, pin, stub, mapping)
    for name, options in surface.ALLOCATOR_CHOICES
    for init, pin, stub, mapping in [(None, False, "none", False), ("zero", True, "record", True),
                                     (7, False, "raise", False), ("A", True, "raise", True),
                                     (b"\x01", False, "record", False)]
}


@pytest.mark.parametrize("case", list(CREATE_CASES))
def test_create_and_release_repeated(case):
    operation, watched = op_create(*CREATE_CASES[case])
    with quiet_unraisable() as seen:
        assert_no_growth(operation, watched)
    assert set(seen) <= {ZeroDivisionError}


@pytest.mark.parametrize("name, options", surface.ALLOCATOR_CHOICES)
def test_dealloc_paths_repeated(name, options):
    """The buffer dies with its last reference, through collect_delayed, and
    through the collector (a stub that refers to its own buffer)."""
    def stub(info):
        pass

    def operation():
        Buffer(32, 1, allocator=name, death_stub=stub, **options)
        pinned = Buffer(32, 1, allocator=name, delayed_gc=True, death_stub=stub, **options)
        memmanager.collect_delayed([pinned.identifier])
        del pinned
        box = {}
        box["buf"] = Buffer(32, 1, allocator=name, death_stub=lambda info: box, **options)

    assert_no_growth(operation, [stub, Buffer])


@pytest.mark.parametrize("kind", surface.SOURCES, ids=lambda k: k.name)
def test_consume_repeated(kind):
    def operation():
        adoption = kind.prepare(48, bytes(range(48)))
        buf = Buffer.consume(adoption.source, 12, 4, delayed_gc=False, **adoption.kwargs)
        adoption.adopted()
        buf.release()
        adoption.closing()

    assert_no_growth(operation, [Buffer])


@pytest.mark.parametrize("exporter", surface.EXPORTERS, ids=lambda e: e.name)
@pytest.mark.parametrize("name, options", surface.ALLOCATOR_CHOICES)
def test_export_repeated(exporter, name, options):
    buf = Buffer(64, 1, allocator=name, init_value=1, **options)

    def operation():
        export = exporter.export(buf)
        if exporter.write is not None:
            exporter.write(export.handle, 2)
        exporter.end(export.handle)
        del export
        with pytest.raises(BufferError):      # refused while exported
            held = exporter.export(buf)
            buf.release()
        del held

    assert_no_growth(operation, [buf])
    assert buf.exports == 0
    buf.release()


@pytest.mark.parametrize("name, options", surface.ALLOCATOR_CHOICES)
def test_methods_repeated(name, options):
    buf = Buffer(64, 1, allocator=name, init_value=3, **options)
    data = bytes(range(8))

    def operation():
        (buf.address, buf.nbytes, buf.itemsize, buf.num_items, buf.identifier, buf.allocator,
         buf.readonly, buf.delayed_gc, buf.released, buf.exports, len(buf), repr(buf),
         buf.get_buffer(), buf.get_buffer_size(), buf.get_element_size(),
         buf.get_num_of_elements())
        buf.extract_buffer_region(2, 9)
        buf.extract_buffer_region(5, 2)
        with buf.region(1, 9, readonly=True) as view:
            view.tobytes()
        buf[3] = buf[4]
        buf[8:16] = data
        buf[::8] = data
        buf[-3:]
        list(buf[10:14])
        bytes(buf)

    assert_no_growth(operation, [buf, data])
    buf.release()


def test_module_functions_repeated():
    bufs = [Buffer(8, 1, delayed_gc=True), Buffer(8, 1, allocator="CMalloc")]

    def operation():
        memmanager.stats()
        memmanager.live_buffers()
        memmanager.report()
        memmanager.allocators()
        memmanager.get_delayed_gc_objects()
        Buffer.get_delayed_gc_objects()
        memmanager.collect_delayed([12345])
        memmanager.get_include()

    assert_no_growth(operation, bufs)
    for buf in bufs:
        buf.release()


def test_context_manager_and_subclass_repeated():
    class Sub(Buffer):
        pass

    def operation():
        with Sub(16, 1) as buf:
            buf[0] = 1
        with Buffer(16, 1, allocator="CMalloc"):
            pass
        released = Buffer(4, 1)
        released.release()
        with pytest.raises(ValueError):
            with released:
                pass
        ref = weakref.ref(Sub(4, 1))
        assert ref() is None

    assert_no_growth(operation, [Sub, Buffer])


@pytest.mark.parametrize("how", ["zero-copy", "Borrowed", "adopt", "short source"])
def test_refused_consume_repeated(how):
    managed = Buffer(32, 1, init_value=5)
    holder = [managed.address]
    source = bytearray(8)

    def operation():
        with pytest.raises(ValueError):
            if how == "zero-copy":   # an exporter not followed to its Buffer
                Buffer.consume(np.asarray(managed).view(UnfollowedArray), 32, 1)
            elif how == "Borrowed":
                Buffer.consume(managed.address + 4, 8, 1, allocator="Borrowed", owner=source)
            elif how == "adopt":
                Buffer.consume(holder, 32, 1, allocator="CMalloc")
            else:
                Buffer.consume(source, 9, 1)

    assert_no_growth(operation, [managed, holder, source])
    assert holder == [managed.address] and managed.exports == 0
    source.append(1)        # no export of it was left behind
    managed.release()


def repeatable(case):
    return not (isinstance(case.expect, test_bad_input.Allowed) and case.expect.mutates)


@pytest.mark.parametrize("case", [c for c in test_bad_input.CASES if repeatable(c)],
                         ids=test_bad_input.case_id)
def test_bad_input_repeated(case):
    """Every row of the bad-input matrix, repeated: the error paths leak
    nothing."""
    block = surface.LIBC.malloc(16)
    try:
        with test_bad_input.buffer_in_state(case.column, "PyAlloc") as buf:
            namespace = {"buf": buf, "ALLOC": "PyAlloc", "block": block, "Buffer": Buffer,
                         "memmanager": memmanager, "ctypes": ctypes, "ffi": test_bad_input.FFI}

            def operation():
                if isinstance(case.expect, test_bad_input.Allowed):
                    test_bad_input.run_code(case.code, namespace)
                else:
                    with pytest.raises(case.expect):
                        test_bad_input.run_code(case.code, namespace)

            assert_no_growth(operation, [buf, Buffer])
            namespace.clear()
    finally:
        surface.LIBC.free(block)


@pytest.mark.parametrize("name, options", [
    ("CMalloc", {}), ("PyAlloc", {}), ("Aligned", {"alignment": 4096}), ("Mmap", {}),
    ("LeakPool", {}),
])
def test_numpy_handler_repeated(name, options):
    """Handlers made and dropped, arrays made, resized and freed, refused
    handlers: nothing of them stays (memmanager.numpy)."""
    import memmanager.numpy as mnp
    pool = memmanager.Pool("CMalloc")
    memmanager.register_allocator("LeakPool", pool)
    before_blocks = memmanager._core._numpy_live_blocks()
    options_dict = dict(options)

    def operation():
        with mnp.allocator(name, **options_dict):
            a = np.zeros(100)
            b = np.empty(3000, dtype=np.uint8)
            b.resize(70000, refcheck=False)
            c = a + 1.0
            del a, b, c
        for bad_name, bad in (("Borrowed", {}), ("NoSuchAllocator", {}), (name, {"bogus": 1})):
            with contextlib.suppress(ValueError, TypeError, memmanager.UnknownAllocatorError):
                mnp.handler(bad_name, **bad)

    assert_no_growth(operation, [pool, options_dict])
    assert memmanager._core._numpy_live_blocks() == before_blocks
