"""Attacks on Buffer.consume() (issue 12): what DESIGN sections 3 and 5 now
promise, each checked the way it used to break.

- an address with no allocator= is a TypeError (it used to be realloc'd as
  if it came from malloc: abort on a ctypes array's address);
- memory a Python object owns (ffi.new, ffi.from_buffer, a ctypes pointer
  into a ctypes object) is refused to CMalloc, and a cffi pointer owned by
  ffi.gc is detached from its destructor (it used to be freed twice);
- the holder is zeroed last, after registration, and whatever Python code
  runs then (releasing the buffer, consuming again) finds a complete,
  registered buffer (a released buffer used to be registered at address 0,
  its freed node left in the registry);
- non-owning buffers may overlap each other, and an owned region while they
  hold an export of its Buffer (the same bytes could not be consumed twice);
- a zero-copy buffer in a reference cycle: the collector never clears the
  exporter it holds (a memoryview cleared first crashed CPython when the
  buffer gave its export back).
"""

import ctypes
import gc
import mmap
import subprocess
import sys
import textwrap
import weakref

import cffi
import numpy as np
import pytest

import memmanager
from memmanager import Buffer, OverlapError

from conftest import live_addresses, live_entry

LIBC = ctypes.CDLL(None)
LIBC.malloc.restype = ctypes.c_void_p
LIBC.malloc.argtypes = [ctypes.c_size_t]
LIBC.free.argtypes = [ctypes.c_void_p]

FFI = cffi.FFI()
FFI.cdef("void *malloc(size_t); void free(void *);")
C = FFI.dlopen(None)


def registry_consistent():
    count = memmanager._core._registry_check()
    assert count == len(memmanager.live_buffers())
    return count


def run_python(code, timeout=120):
    """Runs code in a fresh interpreter: a crash is a failed test, not a
    dead test run."""
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                           capture_output=True, text=True, timeout=timeout)
    assert child.returncode == 0, (child.returncode, child.stdout, child.stderr)
    return child.stdout


# --------------------------------------------------------------------------
# 1. an address needs allocator=

ADDRESS_HOLDERS = {
    "int": lambda a: a,
    "list": lambda a: [a],
    "c_void_p": ctypes.c_void_p,
    "ctypes pointer": lambda a: ctypes.cast(a, ctypes.POINTER(ctypes.c_char)),
    "cffi pointer": lambda a: FFI.cast("void *", a),
}


@pytest.mark.parametrize("wrap", list(ADDRESS_HOLDERS))
def test_address_without_allocator_is_type_error(wrap, registry_unchanged):
    address = LIBC.malloc(32)
    holder = ADDRESS_HOLDERS[wrap](address)
    try:
        with registry_unchanged():
            with pytest.raises(TypeError) as info:
                Buffer.consume(holder, 32, 1)
        assert "CMalloc" in str(info.value) and "Borrowed" in str(info.value)
        if wrap == "list":
            assert holder == [address]
        elif wrap == "c_void_p":
            assert holder.value == address
    finally:
        LIBC.free(address)


def test_ctypes_array_address_without_allocator():
    # The address of memory malloc never saw: realloc'ing it aborted.
    arena = ctypes.create_string_buffer(b"keep", 64)
    with pytest.raises(TypeError, match="CMalloc"):
        Buffer.consume(ctypes.addressof(arena), 64, 1)
    assert arena.value == b"keep"
    # Named, it is wrapped as it should be.
    buf = Buffer.consume(ctypes.addressof(arena), 64, 1, allocator="Borrowed",
                         owner=arena, delayed_gc=False)
    assert buf[:4] == b"keep"
    buf.release()


def test_explicit_cmalloc_still_adopts():
    holder = [LIBC.malloc(16)]
    buf = Buffer.consume(holder, 16, 1, allocator="CMalloc", delayed_gc=False)
    assert holder == [0] and buf.allocator == "CMalloc"
    buf.release()


# --------------------------------------------------------------------------
# 2. memory a Python object owns, and ffi.gc

def test_ffi_gc_pointer_is_detached_not_freed_twice():
    calls = []
    p = FFI.gc(C.malloc(64), calls.append)
    buf = Buffer.consume(p, 128, 1, allocator="CMalloc", delayed_gc=False)
    buf[:] = b"x" * 128        # the whole (reallocated) block is ours
    del p
    gc.collect()
    assert calls == [], "ffi.gc's destructor ran on a block CMalloc owns"
    buf.release()
    gc.collect()
    assert calls == []


def test_ffi_gc_pointer_freed_exactly_once_under_malloc_checks():
    # With the real free as destructor, a double free aborts the child.
    run_python("""
        import gc, os, cffi, memmanager
        ffi = cffi.FFI(); ffi.cdef("void *malloc(size_t); void free(void *);")
        C = ffi.dlopen(None)
        for i in range(200):
            p = ffi.gc(C.malloc(64), C.free)
            b = memmanager.Buffer.consume(p, 64 + i, 1, allocator="CMalloc",
                                          delayed_gc=False)
            del p
            gc.collect()
            b.release()
        print("ok")
    """)


def test_ffi_gc_refused_consume_keeps_destructor(make_buffer):
    calls = []
    existing = make_buffer(64, 1, allocator="CMalloc")
    p = FFI.gc(FFI.cast("void *", existing.address), calls.append)
    with pytest.raises(OverlapError):
        Buffer.consume(p, 64, 1, allocator="CMalloc")
    del p
    gc.collect()
    assert len(calls) == 1     # refused: cffi still owns it, nothing detached


@pytest.mark.parametrize("make", [
    lambda: FFI.new("char *"),
    lambda: FFI.new("struct { char c[64]; } *"),
    lambda: FFI.from_buffer("char *", bytearray(64)),
])
def test_cffi_owned_memory_refused_to_cmalloc(make, registry_unchanged):
    # Memory inside a Python object: realloc'ing it used to abort.
    p = make()
    with registry_unchanged():
        for allocator in ("CMalloc", None):
            with pytest.raises(TypeError, match="Borrowed"):
                Buffer.consume(p, 1, 1, allocator=allocator)
    buf = Buffer.consume(p, 1, 1, allocator="Borrowed", owner=p, delayed_gc=False)
    buf.release()


@pytest.mark.parametrize("make", [
    lambda a: ctypes.cast(a, ctypes.POINTER(ctypes.c_char)),
    lambda a: ctypes.cast(a, ctypes.c_void_p),
    lambda a: ctypes.pointer(a),
])
def test_ctypes_pointer_into_ctypes_object_refused(make, registry_unchanged):
    arena = ctypes.create_string_buffer(64)
    p = make(arena)
    with registry_unchanged():
        with pytest.raises(TypeError, match="ctypes object"):
            Buffer.consume(p, 64, 1, allocator="CMalloc")
    assert ctypes.cast(p, ctypes.c_void_p).value == ctypes.addressof(arena)


def test_ctypes_pointer_to_malloc_block_still_adopted():
    address = LIBC.malloc(16)
    for p in (ctypes.cast(address, ctypes.POINTER(ctypes.c_char)),
              ctypes.cast(ctypes.c_void_p(address), ctypes.POINTER(ctypes.c_char))):
        assert "ctypes object" not in str(memmanager._address.resolve(p)[2])
    p = ctypes.cast(ctypes.c_void_p(address), ctypes.POINTER(ctypes.c_char))
    buf = Buffer.consume(p, 16, 1, allocator="CMalloc", delayed_gc=False)
    assert not bool(p)         # emptied
    buf.release()


# --------------------------------------------------------------------------
# 3. the holder is zeroed last, and its Python code may do anything

def _new_cmalloc_buffers(known):
    return [o for o in gc.get_objects()
            if isinstance(o, Buffer) and id(o) not in known and not o.released
            and o.allocator == "CMalloc"]


class ReleasingVoidP(ctypes.c_void_p):
    """Its `value` setter (which the old reset called) releases the buffer
    that was just made; the base class's setter is the only one run now."""

    known = set()
    released = []

    @property
    def value(self):
        return ctypes.c_void_p.value.__get__(self)

    @value.setter
    def value(self, new):
        for buf in _new_cmalloc_buffers(self.known):
            buf.release()
            self.released.append(buf)
        ctypes.c_void_p.value.__set__(self, new)


def test_holder_subclass_cannot_release_before_registration():
    ReleasingVoidP.known = {id(o) for o in gc.get_objects() if isinstance(o, Buffer)}
    ReleasingVoidP.released = []
    holder = ReleasingVoidP(LIBC.malloc(32))
    buf = Buffer.consume(holder, 32, 1, allocator="CMalloc", delayed_gc=False)
    assert ctypes.c_void_p.value.__get__(holder) is None
    registry_consistent()
    if not buf.released:
        assert live_entry(buf.identifier).address == buf.address
    assert 0 not in live_addresses()
    buf.release()
    registry_consistent()


class Reentrant:
    """A destructor object for ffi.gc.  Detaching drops cffi's reference to
    it, so its __del__ runs inside consume(), after registration: it
    consumes the new buffer's block again and releases the new buffer."""

    def __init__(self, pointer_box, known):
        self.box = pointer_box
        self.known = known
        self.log = []

    def __call__(self, cdata):
        self.log.append("destructor ran")   # must never happen

    def __del__(self):
        # The block as it is now (realloc may have moved it: the cffi
        # pointer, immutable, still holds the old address, as an int would).
        for buf in _new_cmalloc_buffers(self.known):
            try:
                Buffer.consume(buf.address, 16, 1, allocator="CMalloc", delayed_gc=False)
                self.log.append("consumed twice")
            except OverlapError:
                self.log.append("overlap")
            except BaseException as exc:   # anything else is a finding
                self.log.append(repr(exc))
            self.log.append("released")
            buf.release()


def test_reset_code_reenters_and_releases():
    known = {id(o) for o in gc.get_objects() if isinstance(o, Buffer)}
    box = []
    destructor = Reentrant(box, known)
    log = destructor.log
    p = FFI.gc(C.malloc(16), destructor)
    box.append(p)
    del destructor
    buf = Buffer.consume(p, 16, 1, allocator="CMalloc", delayed_gc=False)
    box.clear()
    del p
    gc.collect()
    assert log == ["overlap", "released"], log
    assert buf.released
    registry_consistent()
    assert 0 not in live_addresses()


def test_finalizer_replacing_list_item_is_not_zeroed():
    # A collection started inside consume() (allocating its object) runs a
    # finalizer that puts another address in the holder: that one is not
    # the block adopted, so it stays.
    other = LIBC.malloc(8)
    inside = []
    try:
        for extra in range(16):
            block = LIBC.malloc(64)
            holder = [block]
            state = {"inside": False, "ran inside": False}

            class Swap:
                def __init__(self):
                    self.me = self

                def __del__(self, holder=holder, state=state):
                    holder[0] = other
                    state["ran inside"] = state["inside"]

            gc.collect()
            gc.disable()
            Swap()
            gc.set_threshold(gc.get_count()[0] + extra)
            gc.enable()
            state["inside"] = True
            try:
                buf = Buffer.consume(holder, 64, 1, allocator="CMalloc", delayed_gc=False)
            finally:
                state["inside"] = False
                gc.set_threshold(700)
            if state["ran inside"]:
                inside.append(extra)
                assert holder == [other], "the holder's new address was dropped"
            gc.collect()
            buf.release()
        registry_consistent()
    finally:
        LIBC.free(other)
    assert inside, "the finalizer never ran inside consume()"


# --------------------------------------------------------------------------
# 4. non-owning buffers may overlap

def test_same_bytes_consumed_twice():
    data = b"the same bytes!!"
    a = Buffer.consume(data, 16, 1, delayed_gc=False)
    b = Buffer.consume(data, 8, 2, delayed_gc=False)
    c = Buffer.consume(memoryview(data)[4:], 12, 1, delayed_gc=False)
    assert a.address == b.address == c.address - 4
    registry_consistent()
    assert sum(e.address == a.address for e in memmanager.live_buffers()) == 2
    a.release()
    assert bytes(b) == data and bytes(c) == data[4:]
    registry_consistent()
    b.release()
    c.release()
    registry_consistent()


def test_borrowed_regions_overlap_each_other():
    arena = ctypes.create_string_buffer(256)
    base = ctypes.addressof(arena)
    bufs = [Buffer.consume(base + i, 64, 1, allocator="Borrowed", owner=arena,
                           delayed_gc=False) for i in range(0, 128, 8)]
    bufs += [Buffer.consume(base, 256, 1, allocator="Borrowed", delayed_gc=False)
             for _ in range(3)]
    registry_consistent()
    # An adoption may overlap none of them (refused before any realloc).
    for start, length in [(0, 1), (100, 8), (255, 1), (-8, 16)]:
        with pytest.raises(OverlapError):
            Buffer.consume(base + start, length, 1, allocator="CMalloc")
    for buf in bufs[::3] + bufs[1::3] + bufs[2::3]:
        buf.release()
        registry_consistent()


def test_adoption_of_zero_copy_memory_refused(registry_unchanged):
    # Without the check, CMalloc would realloc a pointer into a bytes object.
    data = bytes(range(64)) * 2
    view = Buffer.consume(data, 128, 1, delayed_gc=False)
    with registry_unchanged():
        with pytest.raises(OverlapError):
            Buffer.consume(view.address + 32, 16, 1, allocator="CMalloc")
    view.release()


def test_zero_copy_of_a_buffer_holds_its_export(make_buffer):
    owner = make_buffer(64, 1, init_value=7)
    whole = Buffer.consume(owner, 64, 1, delayed_gc=False)
    part = Buffer.consume(memoryview(owner)[8:40], 32, 1, delayed_gc=False)
    nested = Buffer.consume(whole, 16, 1, delayed_gc=False)
    nested_view = Buffer.consume(memoryview(part)[1:3], 2, 1, delayed_gc=False)
    registry_consistent()
    with pytest.raises(BufferError):
        owner.release()
    assert not owner.released
    for b in (nested_view, nested, part, whole):
        b.release()
    owner.release()
    registry_consistent()


def test_borrowed_with_owner_buffer_takes_an_export(make_buffer):
    owner = make_buffer(64, 1, init_value=9)
    wrapped = Buffer.consume(owner.address + 16, 16, 1, allocator="Borrowed",
                             owner=owner, delayed_gc=False)
    assert owner.exports == 1
    with pytest.raises(BufferError):
        owner.release()      # cannot be freed under the Borrowed buffer
    assert bytes(wrapped) == b"\x09" * 16
    ref = weakref.ref(owner)
    wrapped.release()
    assert owner.exports == 0
    assert ref() is owner
    owner.release()
    registry_consistent()


def test_borrowed_overlapping_an_owned_buffer_needs_its_export(make_buffer, registry_unchanged):
    owner = make_buffer(64, 1)
    other = make_buffer(64, 1)
    with registry_unchanged():
        for kwargs in ({}, {"owner": other}, {"owner": bytearray(64)}):
            with pytest.raises(OverlapError):
                Buffer.consume(owner.address, 64, 1, allocator="Borrowed", **kwargs)
            with pytest.raises(OverlapError):
                Buffer.consume(owner.address + 60, 8, 1, allocator="Borrowed", **kwargs)
    assert owner.exports == 0 and other.exports == 0
    with pytest.raises(ValueError, match="released"):
        gone = Buffer(8, 1)
        gone.release()
        Buffer.consume(owner.address, 8, 1, allocator="Borrowed", owner=gone)


def test_owned_allocations_never_overlap_each_other(make_buffer):
    bufs = [make_buffer(1 + i % 64, 1, allocator=("PyAlloc", "CMalloc")[i % 2])
            for i in range(500)]
    spans = sorted((b.address, b.address + b.nbytes) for b in bufs)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    registry_consistent()


def test_many_overlapping_shared_regions_stay_consistent():
    # The interval tree under churn: insert/remove in random order, and the
    # overlap query for adoptions must see every one of them.
    import random
    rng = random.Random(12)
    arena = ctypes.create_string_buffer(1 << 14)
    base = ctypes.addressof(arena)
    live = []
    for step in range(3000):
        if live and rng.random() < 0.45:
            live.pop(rng.randrange(len(live))).release()
        else:
            start = rng.randrange(0, 1 << 14)
            length = rng.randrange(1, min(512, (1 << 14) - start) + 1)
            live.append(Buffer.consume(base + start, length, 1, allocator="Borrowed",
                                       delayed_gc=False))
        if step % 500 == 0:
            registry_consistent()
            covered = set()
            for b in live:
                covered.update(range(b.address - base, b.address - base + b.nbytes))
            # Only covered bytes are probed: an uncovered one would really be
            # realloc'd (it is arena memory, not malloc's).
            for probe in rng.sample(sorted(covered), min(64, len(covered))):
                with pytest.raises(OverlapError):
                    Buffer.consume(base + probe, 1, 1, allocator="CMalloc")
    for b in live:
        b.release()
    registry_consistent()


# --------------------------------------------------------------------------
# 5. the collector and the exports

GC_SCENARIOS = """
import gc, mmap, weakref
import numpy as np
import memmanager
from memmanager import Buffer

keep = []          # what the sources view, alive: only the sources are garbage
def kept(x):
    keep.append(x)
    return x

FACTORIES = {
    "memoryview(bytearray)": lambda: memoryview(kept(bytearray(64))),
    "memoryview slice": lambda: memoryview(kept(bytearray(64)))[8:40],
    "fresh memoryview(bytearray)": lambda: memoryview(bytearray(64)),
    "memoryview(bytes)": lambda: memoryview(b"x" * 64),
    "memoryview(Buffer)": lambda: memoryview(Buffer(64, 1, delayed_gc=False)),
    "memoryview(numpy)": lambda: memoryview(np.zeros(64, np.uint8)),
    "memoryview(mmap)": lambda: memoryview(mmap.mmap(-1, 4096)),
    "numpy": lambda: np.zeros(64, np.uint8),
    "bytearray": lambda: bytearray(64),
    "mmap": lambda: mmap.mmap(-1, 4096),
    "Buffer": lambda: Buffer(64, 1, delayed_gc=False),
    "Buffer.region()": lambda: Buffer(64, 1, delayed_gc=False).region(4, 20),
    "consumed Buffer": lambda: Buffer.consume(bytearray(64), 64, 1, delayed_gc=False),
}

for name, make in FACTORIES.items():
    for shape in ("list", "stub", "dict"):
        for _ in range(3):
            box = {}
            source = make()
            b = Buffer.consume(source, 16, 1, delayed_gc=False,
                               death_stub=(lambda info, box=box: box) if shape == "stub" else None)
            ref = weakref.ref(b)
            if shape == "list":
                cycle = [b, source]
                cycle.append(cycle)
                del cycle
            elif shape == "stub":
                box["b"] = b
                box["source"] = source
            else:
                box["cycle"] = [b, source, box]
            del b, source, box
            gc.collect()
            gc.collect()
            assert ref() is None, (name, shape, "not collected")
            assert memmanager._core._registry_check() == len(memmanager.live_buffers())
for x in keep:
    if isinstance(x, bytearray):
        x.append(1)                # every export was given back
print("ok")
"""


def test_zero_copy_in_cycles_collected_without_crash():
    assert run_python(GC_SCENARIOS).strip() == "ok"


def test_memoryview_in_cycle_in_process():
    ba = bytearray(64)
    for _ in range(5):
        mv = memoryview(ba)
        b = Buffer.consume(mv, 64, 1, delayed_gc=False)
        ref = weakref.ref(b)
        cycle = [b, mv]
        cycle.append(cycle)
        del b, mv, cycle
        gc.collect()
        assert ref() is None
    ba.append(1)               # every export was given back


def test_cycle_through_a_buffer_source_is_collected():
    # A Buffer exporter is shown to the collector (its tp_clear keeps the
    # memory), so a cycle through it back to the consumer is collected.
    box = {}
    owner = Buffer(32, 1, delayed_gc=False, death_stub=lambda info, box=box: box)
    consumer = Buffer.consume(owner, 32, 1, delayed_gc=False)
    box["consumer"] = consumer          # consumer -> owner -> stub -> box -> consumer
    owner_ref, consumer_ref = weakref.ref(owner), weakref.ref(consumer)
    del owner, consumer, box
    gc.collect()
    gc.collect()
    assert consumer_ref() is None and owner_ref() is None
    registry_consistent()


def test_bytearray_subclass_cycle_collected():
    class Source(bytearray):
        pass

    src = Source(b"cycle!")
    src.buf = Buffer.consume(src, 6, 1, delayed_gc=False)
    ref = weakref.ref(src)
    del src
    gc.collect()
    assert ref() is None


@pytest.mark.skipif(sys.version_info < (3, 12), reason="__buffer__ is 3.12+")
def test_python_buffer_class_in_cycle():
    run_python("""
        import gc, weakref
        from memmanager import Buffer
        class Exporter:
            def __init__(self):
                self.data = bytearray(32)
            def __buffer__(self, flags):
                return memoryview(self.data)
        for _ in range(5):
            e = Exporter()
            e.buf = Buffer.consume(e, 32, 1, delayed_gc=False)
            cycle = [e]; cycle.append(cycle)
            del e, cycle
            gc.collect()
        print("ok")
    """)


# --------------------------------------------------------------------------
# 6. Python code in the middle of consume()

def test_copy_flag_bool_releases_the_source():
    src = Buffer(16, 1, init_value=1, delayed_gc=False)

    class Evil:
        def __bool__(self):
            src.release()
            return False

    before = len(memmanager.live_buffers())
    with pytest.raises(ValueError, match="released"):
        Buffer.consume(src, 16, 1, copy=Evil())
    assert len(memmanager.live_buffers()) == before - 1    # src, and nothing new
    registry_consistent()


def test_size_index_replaces_the_holder_item():
    first, second = LIBC.malloc(16), LIBC.malloc(16)
    holder = [first]

    class Size:
        def __index__(self):
            holder[0] = second       # before the holder is read: adopted
            return 16

    buf = Buffer.consume(holder, Size(), 1, allocator="CMalloc", delayed_gc=False)
    assert holder == [0]
    assert buf.nbytes == 16
    buf.release()
    LIBC.free(first)
    registry_consistent()


def test_plugin_consume_reentering_consume():
    address = LIBC.malloc(32)
    inner = []
    freed = []

    class Plugin:
        # Consume only, like Borrowed: it stays registered for the rest of
        # the run, and surface.usable_allocators() skips on ValueError.
        def malloc(self, n, s, init, options):
            raise ValueError("ReentrantConsume only adopts")

        def free(self, address):
            freed.append(address)
            LIBC.free(address)

        def get_buffer_address(self, handle):
            return handle

        def consume(self, source, length, options):
            # Inside the plug-in: wrap the block (Borrowed) and try to take
            # it over (CMalloc) before the plug-in hands it back.
            inner.append(Buffer.consume(source, length, 1, allocator="Borrowed",
                                        delayed_gc=False))
            try:
                Buffer.consume(source, length, 1, allocator="CMalloc")
            except OverlapError:
                inner.append("overlap")
            return source

    memmanager.register_allocator("ReentrantConsume", Plugin())
    outer = Buffer.consume(address, 32, 1, allocator="ReentrantConsume", delayed_gc=False)
    assert inner[1] == "overlap" and inner[0].address == outer.address == address
    registry_consistent()
    outer.release()
    assert freed == [address]
    inner[0].release()
    assert freed == [address]
    registry_consistent()
