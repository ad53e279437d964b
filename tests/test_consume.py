"""Buffer.consume: DESIGN section 3 and docs/api-decisions.md (consume)."""

import ctypes
import gc
import mmap
import weakref

import cffi
import numpy as np
import pytest

import memmanager
from memmanager import Buffer

from conftest import live_addresses, live_entry


class UnfollowedArray(np.ndarray):
    """An exporter the registry does not follow to its Buffer (only
    numpy.ndarray itself, memoryviews, Buffers and stored views are)."""



def address_of(obj):
    """Address of the first byte of any buffer-protocol object."""
    return np.frombuffer(obj, dtype=np.uint8).__array_interface__["data"][0]


# --------------------------------------------------------------------------
# buffer-protocol sources: zero-copy

def test_bytearray_zero_copy():
    ba = bytearray(b"hello world!")
    buf = Buffer.consume(ba, 12, 1)
    assert buf.allocator == "PyAlloc"
    assert buf.address == address_of(ba)
    assert buf.nbytes == 12
    assert buf.readonly is False
    assert bytes(buf) == b"hello world!"
    buf[0] = ord("J")
    assert ba[0] == ord("J")
    ba[1] = ord("E")
    assert buf[1] == ord("E")
    with pytest.raises(BufferError):
        ba.extend(b"x")
    with pytest.raises(BufferError):
        ba.clear()
    assert len(ba) == 12
    buf.release()
    ba.extend(b"x")
    assert ba == bytearray(b"JEllo world!x")


def test_consume_prefix_and_items():
    ba = bytearray(range(32))
    buf = Buffer.consume(ba, 3, 4)
    assert (buf.num_items, buf.itemsize, buf.nbytes) == (3, 4, 12)
    assert bytes(buf) == bytes(range(12))
    assert buf.address == address_of(ba)
    buf.release()


def test_consume_delayed_gc_default_true():
    ba = bytearray(8)
    buf = Buffer.consume(ba, 8, 1)
    ident = buf.identifier
    assert buf.delayed_gc is True
    assert ident in memmanager.get_delayed_gc_objects()
    assert live_entry(ident).pinned is True
    ref = weakref.ref(buf)
    del buf
    gc.collect()
    assert ref() is not None  # the documented footgun
    with pytest.raises(BufferError):
        ba.append(1)  # still exported
    memmanager.collect_delayed([ident])
    gc.collect()
    assert ref() is None
    ba.append(1)


def test_consume_delayed_gc_false():
    ba = bytearray(8)
    buf = Buffer.consume(ba, 8, 1, delayed_gc=False)
    assert buf.identifier not in memmanager.get_delayed_gc_objects()
    del buf
    ba.append(1)  # freed by reference counting, export gone


def test_consume_keeps_source_alive():
    class Bytes(bytearray):
        pass

    src = Bytes(b"abcdef")
    ref = weakref.ref(src)
    buf = Buffer.consume(src, 6, 1, delayed_gc=False)
    del src
    gc.collect()
    assert ref() is not None
    assert bytes(buf) == b"abcdef"
    buf.release()
    gc.collect()
    assert ref() is None


def test_bytes_read_only():
    src = bytes(range(50, 70))
    buf = Buffer.consume(src, 20, 1)
    assert buf.readonly is True
    assert buf.allocator == "PyAlloc"
    assert buf.address == address_of(src)
    assert bytes(buf) == src
    with pytest.raises(TypeError):
        buf[0] = 1
    with pytest.raises(TypeError):
        buf[0:2] = b"xx"
    assert memoryview(buf).readonly is True
    assert buf.region(0, 4, readonly=True).tobytes() == src[:4]
    assert src == bytes(range(50, 70))
    buf.release()


def test_memoryview_source():
    ba = bytearray(range(20))
    view = memoryview(ba)[2:10]
    buf = Buffer.consume(view, 8, 1)
    assert buf.address == address_of(ba) + 2
    assert bytes(buf) == bytes(range(2, 10))
    buf[0] = 99
    assert ba[2] == 99
    with pytest.raises(BufferError):
        view.release()  # the buffer holds an export of the memoryview
    buf.release()
    view.release()


def test_read_only_memoryview_source():
    view = memoryview(bytearray(8)).toreadonly()
    buf = Buffer.consume(view, 8, 1)
    assert buf.readonly is True
    buf.release()


def test_non_contiguous_source_refused(registry_unchanged):
    ba = bytearray(range(20))
    with registry_unchanged():
        with pytest.raises((BufferError, ValueError, TypeError)):
            Buffer.consume(memoryview(ba)[::2], 10, 1)
    ba.append(0)


def test_mmap_source():
    m = mmap.mmap(-1, 4096)
    m[:5] = b"mmap!"
    buf = Buffer.consume(m, 4096, 1)
    assert buf.address == address_of(m)
    assert bytes(buf[:5]) == b"mmap!"
    buf[5] = ord("?")
    assert m[5] == ord("?")
    with pytest.raises(BufferError):
        m.close()
    assert not m.closed
    buf.release()
    m.close()
    assert m.closed


@pytest.mark.parametrize("dtype, n, s", [(np.uint8, 16, 1), (np.float64, 2, 8), (np.int32, 4, 4), (np.float64, 16, 8)])
def test_numpy_source(dtype, n, s):
    arr = np.arange(16, dtype=dtype)
    buf = Buffer.consume(arr, n, s)
    assert buf.address == arr.ctypes.data
    assert bytes(buf) == arr.tobytes()[: n * s]
    buf[0] = 0xFF
    assert arr.view(np.uint8)[0] == 0xFF
    arr.view(np.uint8)[1] = 0x7E
    assert buf[1] == 0x7E
    buf.release()


def test_numpy_read_only_source():
    arr = np.arange(8, dtype=np.uint8)
    arr.flags.writeable = False
    buf = Buffer.consume(arr, 8, 1)
    assert buf.readonly is True
    buf.release()


def test_consume_managed_buffer_zero_copy(make_buffer, registry_unchanged):
    # DESIGN section 5 (issue 12): a zero-copy consume of a Buffer, or of a
    # memoryview of one, holds an export of it, so it may overlap its region;
    # an exporter the registry cannot follow (here a NumPy array subclass) may not.
    other = make_buffer(16, 1, init_value=4)
    whole = Buffer.consume(other, 16, 1, delayed_gc=False)
    part = Buffer.consume(memoryview(other)[4:8], 4, 1, delayed_gc=False)
    assert whole.address == other.address and part.address == other.address + 4
    assert other.exports == 2
    with pytest.raises(BufferError):
        other.release()  # cannot be freed under them
    whole.release()
    part.release()
    with registry_unchanged():
        with pytest.raises(memmanager.OverlapError):
            Buffer.consume(np.asarray(other).view(UnfollowedArray), 16, 1)
    assert other.exports == 0  # the refused consume holds no export
    other.release()


def test_consume_managed_buffer_copy(make_buffer):
    other = make_buffer(16, 1, init_value=4)
    copy = Buffer.consume(other, 16, 1, copy=True)
    assert copy.address != other.address
    assert bytes(copy) == b"\x04" * 16
    copy[0] = 9
    assert other[0] == 4
    assert other.exports == 0
    copy.release()


def test_consume_consumed_source_twice():
    # DESIGN section 5 (issue 12): non-owning buffers may overlap each other.
    ba = bytearray(16)
    first = Buffer.consume(ba, 16, 1)
    second = Buffer.consume(ba, 8, 1)
    assert first.address == second.address
    first.release()
    second.release()


@pytest.mark.parametrize("make_source", [bytearray, bytes, lambda n: np.zeros(n, np.uint8),
                                         lambda n: memoryview(bytearray(n))])
def test_too_long_refused(make_source, registry_unchanged):
    src = make_source(10)
    with registry_unchanged():
        with pytest.raises(ValueError):
            Buffer.consume(src, 11, 1)
        with pytest.raises(ValueError):
            Buffer.consume(src, 3, 4)
    if isinstance(src, bytearray):
        src.append(1)  # no export leaked


# --------------------------------------------------------------------------
# copy=True

def test_copy_zero_fills_tail():
    dirty = Buffer(64, 1, init_value=0xFF)
    dirty.release()
    src = bytearray(b"abc")
    buf = Buffer.consume(src, 64, 1, copy=True)
    assert buf.allocator == "PyAlloc"
    assert bytes(buf) == b"abc" + bytes(61)
    assert buf.address != address_of(src)
    buf[0] = ord("X")
    assert src == bytearray(b"abc")
    src.extend(b"def")  # no export held
    assert buf.readonly is False
    buf.release()


def test_copy_prefix():
    src = bytes(range(40))
    buf = Buffer.consume(src, 5, 4, copy=True)
    assert bytes(buf) == src[:20]
    assert buf.address != address_of(src)
    buf.release()


@pytest.mark.parametrize("size", [1, 100, 1 << 20])
def test_copy_sizes(size):
    src = bytes([7]) * min(size, 50)
    buf = Buffer.consume(src, size, 1, copy=True)
    assert bytes(buf) == src + bytes(size - len(src))
    buf.release()


def test_readonly_option():
    ba = bytearray(b"abcd")
    ro = Buffer.consume(ba, 4, 1, readonly=True)
    assert ro.readonly is True
    with pytest.raises(TypeError):
        ro[0] = 1
    ro.release()
    rw = Buffer.consume(ba, 4, 1, readonly=None)
    assert rw.readonly is False
    rw.release()
    rw = Buffer.consume(ba, 4, 1, readonly=False)
    assert rw.readonly is False
    rw.release()
    follows = Buffer.consume(bytes(ba), 4, 1, readonly=None)
    assert follows.readonly is True
    follows.release()


def test_readonly_false_on_read_only_source(registry_unchanged):
    with registry_unchanged():
        with pytest.raises(BufferError):
            Buffer.consume(bytes(bytearray(b"abcd")), 4, 1, readonly=False)


# --------------------------------------------------------------------------
# CMalloc: ownership of a malloc block

def malloc_filled(libc, size, byte):
    p = libc.malloc(size)
    assert p
    ctypes.memset(p, byte, size)
    return p


@pytest.mark.parametrize("grow", [16, 64, 1 << 16])
def test_cmalloc_int(libc, grow):
    p = malloc_filled(libc, 32, 0x33)
    buf = Buffer.consume(p, grow, 1, allocator="CMalloc")
    assert buf.allocator == "CMalloc"
    assert buf.nbytes == grow
    assert buf.delayed_gc is True
    assert bytes(buf)[: min(32, grow)] == b"\x33" * min(32, grow)  # realloc keeps the data
    assert buf.address in live_addresses()
    buf[grow - 1] = 1  # the whole block is usable
    addr = buf.address
    buf.release()
    assert addr not in live_addresses()


def test_cmalloc_c_void_p(libc):
    p = malloc_filled(libc, 16, 0x44)
    holder = ctypes.c_void_p(p)
    buf = Buffer.consume(holder, 16, 1, allocator="CMalloc")
    assert holder.value is None
    assert buf.allocator == "CMalloc"
    assert bytes(buf) == b"\x44" * 16
    buf.release()


def test_cmalloc_list(libc):
    p = malloc_filled(libc, 16, 0x45)
    holder = [p]
    buf = Buffer.consume(holder, 8, 2, allocator="CMalloc")
    assert holder == [0]
    assert buf.nbytes == 16
    assert bytes(buf) == b"\x45" * 16
    buf.release()


def test_cmalloc_ctypes_pointer(libc):
    p = malloc_filled(libc, 16, 0x46)
    ptr = ctypes.cast(p, ctypes.POINTER(ctypes.c_char))
    buf = Buffer.consume(ptr, 16, 1, allocator="CMalloc")
    assert buf.allocator == "CMalloc"
    assert bytes(buf) == b"\x46" * 16
    buf.release()


def test_cmalloc_cffi_pointer(libc):
    ffi = cffi.FFI()
    p = malloc_filled(libc, 24, 0x47)
    cdata = ffi.cast("void *", p)
    buf = Buffer.consume(cdata, 24, 1, allocator="CMalloc")
    assert buf.allocator == "CMalloc"
    assert bytes(buf) == b"\x47" * 24
    buf.release()


def test_cmalloc_explicit_allocator(libc):
    p = malloc_filled(libc, 8, 0x48)
    buf = Buffer.consume(p, 8, 1, allocator="CMalloc", delayed_gc=False)
    assert buf.allocator == "CMalloc"
    assert bytes(buf) == b"\x48" * 8
    del buf


def test_cmalloc_stub_sees_new_address(libc):
    seen = []
    p = malloc_filled(libc, 8, 0x49)
    buf = Buffer.consume(p, 1 << 16, 1, death_stub=lambda info: seen.append(info["buffer_address"]), allocator="CMalloc")
    addr = buf.address
    buf.release()
    assert seen == [addr]


def test_cmalloc_owned_freed_on_dealloc(libc):
    p = malloc_filled(libc, 32, 0)
    buf = Buffer.consume(p, 32, 1, delayed_gc=False, allocator="CMalloc")
    addr = buf.address
    del buf
    gc.collect()
    assert addr not in live_addresses()


# --------------------------------------------------------------------------
# Borrowed

def test_borrowed_keeps_owner_alive(arena):
    raw, base = arena
    raw[:8] = b"borrowed"

    class Owner:
        pass

    owner = Owner()
    owner.raw = raw
    ref = weakref.ref(owner)
    buf = Buffer.consume(base, 32, 1, allocator="Borrowed", owner=owner)
    assert buf.allocator == "Borrowed"
    assert buf.address == base
    assert bytes(buf[:8]) == b"borrowed"
    buf[0] = ord("B")
    assert raw[0] == b"B"
    del owner
    gc.collect()
    assert ref() is not None
    buf.release()
    gc.collect()
    assert ref() is None
    assert raw[:8] == b"Borrowed"  # never freed: still ours and readable


@pytest.mark.parametrize("wrap", [int, ctypes.c_void_p, lambda a: [a], lambda a: cffi.FFI().cast("void *", a)])
def test_borrowed_sources_not_zeroed(wrap, arena):
    raw, base = arena
    holder = wrap(base)
    buf = Buffer.consume(holder, 16, 1, allocator="Borrowed", owner=raw)
    assert buf.address == base
    buf.release()
    if isinstance(holder, ctypes.c_void_p):
        assert holder.value == base
    elif isinstance(holder, list):
        assert holder == [base]


def test_borrowed_without_owner(arena):
    raw, base = arena
    buf = Buffer.consume(base + 100, 10, 1, allocator="Borrowed", delayed_gc=False)
    assert buf.address == base + 100
    del buf
    assert base + 100 not in live_addresses()


def test_borrowed_never_frees_malloc_block(libc):
    # If Borrowed freed the block, the free below would be a double free.
    p = malloc_filled(libc, 64, 0x50)
    buf = Buffer.consume(p, 64, 1, allocator="Borrowed")
    assert buf.address == p
    buf.release()
    assert ctypes.string_at(p, 64) == b"\x50" * 64
    libc.free(p)


# --------------------------------------------------------------------------
# overlap is checked before ownership is taken

@pytest.mark.parametrize("wrap", [int, ctypes.c_void_p, lambda a: [a], lambda a: cffi.FFI().cast("void *", a)])
@pytest.mark.parametrize("length", [8, 64, 1 << 20])
def test_overlap_before_ownership(wrap, length, make_buffer, registry_unchanged):
    existing = make_buffer(64, 1, allocator="CMalloc", init_value=0x5C)
    addr = existing.address
    holder = wrap(addr)
    with registry_unchanged():
        with pytest.raises(memmanager.OverlapError):
            Buffer.consume(holder, length, 1, allocator="CMalloc")
    if isinstance(holder, ctypes.c_void_p):
        assert holder.value == addr
    elif isinstance(holder, list):
        assert holder == [addr]
    assert existing.address == addr
    assert existing.released is False
    assert bytes(existing) == b"\x5c" * 64
    assert live_entry(existing.identifier).address == addr


def test_overlap_inside_before_ownership(make_buffer):
    existing = make_buffer(64, 1, allocator="CMalloc", init_value=1)
    holder = ctypes.c_void_p(existing.address + 16)
    with pytest.raises(memmanager.OverlapError):
        Buffer.consume(holder, 8, 1, allocator="CMalloc")
    assert holder.value == existing.address + 16
    assert bytes(existing) == b"\x01" * 64


# --------------------------------------------------------------------------
# bad sources and lengths

@pytest.mark.parametrize(
    "source, exc",
    [
        (None, TypeError),
        ("abc", TypeError),
        (1.5, TypeError),
        (object(), TypeError),
        (True, TypeError),
        (0, ValueError),
        (-1, ValueError),
        (-(2**70), ValueError),
        (ctypes.c_void_p(None), ValueError),
        ([0], ValueError),
        ([], ValueError),
        (["x"], TypeError),
        ([1.5], TypeError),
        ([None], TypeError),
    ],
)
def test_bad_sources(source, exc, registry_unchanged):
    with registry_unchanged():
        with pytest.raises(exc):
            Buffer.consume(source, 8, 1)
    if isinstance(source, ctypes.c_void_p):
        assert source.value is None


def test_list_of_wrong_length(libc, registry_unchanged):
    p = malloc_filled(libc, 8, 1)
    holder = [p, p]
    with registry_unchanged():
        with pytest.raises(ValueError):
            Buffer.consume(holder, 8, 1)
    assert holder == [p, p]
    libc.free(p)


@pytest.mark.parametrize(
    "n, s, exc",
    [(0, 1, ValueError), (1, 0, ValueError), (-1, 1, ValueError), (4, -2, ValueError),
     (True, 1, TypeError), (1.0, 1, TypeError), ("4", 1, TypeError), (None, 1, TypeError)],
)
def test_bad_lengths(n, s, exc, libc, arena, registry_unchanged):
    ba = bytearray(16)
    raw, base = arena
    p = malloc_filled(libc, 16, 2)
    holder = ctypes.c_void_p(p)
    with registry_unchanged():
        with pytest.raises(exc):
            Buffer.consume(ba, n, s)
        with pytest.raises(exc):
            Buffer.consume(holder, n, s, allocator="CMalloc")
        with pytest.raises(exc):
            Buffer.consume(base, n, s, allocator="Borrowed", owner=raw)
    assert holder.value == p  # ownership not taken
    ba.append(1)  # no export leaked
    libc.free(p)


def test_copy_with_address_source(libc, arena, registry_unchanged):
    raw, base = arena
    p = malloc_filled(libc, 16, 3)
    holder = ctypes.c_void_p(p)
    with registry_unchanged():
        with pytest.raises(ValueError):
            Buffer.consume(holder, 16, 1, copy=True, allocator="CMalloc")
        with pytest.raises(ValueError):
            Buffer.consume(base, 16, 1, allocator="Borrowed", copy=True)
    assert holder.value == p
    libc.free(p)


def test_consume_unknown_allocator(registry_unchanged):
    ba = bytearray(8)
    with registry_unchanged():
        with pytest.raises(memmanager.UnknownAllocatorError, match=r"^Allocator Nope does not exist\.$"):
            Buffer.consume(ba, 8, 1, allocator="Nope")
    ba.append(1)


def test_consume_bad_death_stub(registry_unchanged):
    ba = bytearray(8)
    with registry_unchanged():
        with pytest.raises(TypeError):
            Buffer.consume(ba, 8, 1, death_stub=42)
    ba.append(1)


def test_consume_options_mapping():
    ba = bytearray(8)
    opts = {"delayed_gc": False}
    buf = Buffer.consume(ba, 8, 1, opts)
    assert buf.delayed_gc is False
    assert opts == {"delayed_gc": False}
    buf.release()


# --------------------------------------------------------------------------
# reference cycles through the owner or the source are collected

def test_borrowed_owner_cycle_collected(arena):
    raw, base = arena

    class Owner:
        pass

    owner = Owner()
    owner.raw = raw
    owner.buf = Buffer.consume(base, 16, 1, allocator="Borrowed", owner=owner, delayed_gc=False)
    ref, buf_ref = weakref.ref(owner), weakref.ref(owner.buf)
    del owner
    gc.collect()
    assert ref() is None
    assert buf_ref() is None
    assert base not in live_addresses()


def test_source_cycle_collected():
    class Source(bytearray):
        pass

    src = Source(b"cycle!")
    src.buf = Buffer.consume(src, 6, 1, delayed_gc=False)
    addr = src.buf.address
    ref = weakref.ref(src)
    del src
    gc.collect()
    assert ref() is None
    assert addr not in live_addresses()


def test_consume_released_buffer(registry_unchanged):
    other = Buffer(8, 1)
    other.release()
    with registry_unchanged():
        with pytest.raises(ValueError, match="buffer is released"):
            Buffer.consume(other, 8, 1, copy=True)


# --------------------------------------------------------------------------
# a malloc'd block adopted by CMalloc is freed exactly once

FREED_ONCE_SCRIPT = r"""
import ctypes, gc, sys
import memmanager

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
        "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.mallinfo2.restype = Mallinfo2

def cycle(i):
    holder = ctypes.c_void_p(libc.malloc(4096))
    buf = memmanager.Buffer.consume(holder, 4096 + (i % 3) * 1024, 1, delayed_gc=(i % 2 == 0), allocator="CMalloc")
    assert holder.value is None
    if i % 4 == 0:
        buf.release()
    del buf
    memmanager.collect_delayed()

for i in range(200):  # warm up the allocator's caches
    cycle(i)
gc.collect()
before = libc.mallinfo2().uordblks
for i in range(20000):
    cycle(i)
gc.collect()
grown = libc.mallinfo2().uordblks - before
# 20,000 leaked blocks would be over 80 MB; allow a little allocator slack.
print("grown", grown)
sys.exit(0 if grown < (1 << 20) else 3)
"""


def test_cmalloc_block_freed_exactly_once():
    """No leak (heap in use does not grow) and no double free (glibc's
    checks, made strict with MALLOC_CHECK_=3, abort the child on one)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, MALLOC_CHECK_="3", MALLOC_PERTURB_="165")
    child = subprocess.run([sys.executable, "-c", FREED_ONCE_SCRIPT], env=env,
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stdout + child.stderr


# --------------------------------------------------------------------------
# regression: the overlap check and the adoption must see the same registry
# (issue 8).  consume() checked for overlap, then allocated its Buffer
# object, which could start a collection whose finalizer registered the
# same block; the block was then realloc'ed (and freed when registration
# failed) under the other buffer, and the holder emptied though the
# consume raised.

def test_consume_rechecks_nothing_between_check_and_adoption(libc):
    block = libc.malloc(64)
    intruders = []

    class Intruder:
        def __init__(self):
            self.me = self          # a cycle: only the collector frees it

        def __del__(self):
            intruders.append(Buffer.consume(block, 64, 1, allocator="Borrowed",
                                            delayed_gc=False))

    adopted = None
    try:
        for extra in range(16):     # where, in the call, the collection starts
            holder = [block]
            gc.collect()
            gc.disable()
            Intruder()
            gc.set_threshold(gc.get_count()[0] + extra)
            gc.enable()
            try:
                adopted = Buffer.consume(holder, 64, 1, delayed_gc=False, allocator="CMalloc")
            except memmanager.OverlapError:
                assert holder == [block], "a refused consume took the block"
                assert len(intruders) == 1 and not intruders[0].released
            finally:
                gc.set_threshold(700)
            if adopted is not None:
                break
            for intruder in intruders:
                intruder.release()
            intruders.clear()
        assert adopted is not None, "the finalizer always ran first"
        assert holder == [0] and intruders == []
    finally:
        gc.set_threshold(700)
        gc.enable()
        for intruder in intruders:
            intruder.release()
    adopted.release()   # frees the block: it was ours
