"""Accessors, len() and repr(): DESIGN section 2 and docs/api-decisions.md
(lifetime)."""

import ctypes
import re

import pytest

import memmanager
from memmanager import Buffer

ALLOCATORS = ["PyAlloc", "CMalloc"]


@pytest.mark.parametrize("allocator", ALLOCATORS)
def test_address(allocator, make_buffer):
    buf = make_buffer(16, 2, allocator=allocator)
    addr = buf.get_buffer()
    assert type(addr) is int
    assert addr != 0
    assert buf.address == addr
    # The address is the buffer's memory: writing there shows through buf.
    ctypes.memset(addr, 0x3C, 32)
    assert bytes(buf) == b"\x3c" * 32
    buf[5] = 1
    assert ctypes.string_at(addr, 32) == b"\x3c" * 5 + b"\x01" + b"\x3c" * 26


def test_distinct_buffers_do_not_overlap(make_buffer):
    bufs = [make_buffer(n, 1) for n in (1, 7, 64, 1000, 4096)]
    ranges = sorted((b.address, b.address + b.nbytes) for b in bufs)
    for (s1, e1), (s2, e2) in zip(ranges, ranges[1:]):
        assert e1 <= s2


@pytest.mark.parametrize("allocator", ALLOCATORS)
@pytest.mark.parametrize("n, s", [(1, 1), (10, 4), (3, 1000), (1000, 3)])
def test_sizes(allocator, n, s, make_buffer):
    buf = make_buffer(n, s, allocator=allocator)
    assert buf.get_buffer_size() == buf.nbytes == n * s
    assert buf.get_element_size() == buf.itemsize == s
    assert buf.get_num_of_elements() == buf.num_items == n
    assert len(buf) == n * s
    for value in (buf.nbytes, buf.itemsize, buf.num_items, buf.get_buffer_size(),
                  buf.get_element_size(), buf.get_num_of_elements(), len(buf)):
        assert type(value) is int


def test_identifier(make_buffer):
    buf = make_buffer(4, 1)
    assert type(buf.identifier) is int
    assert buf.identifier > 0
    assert make_buffer(4, 1).identifier != buf.identifier   # never reused (DESIGN 2)


@pytest.mark.parametrize("allocator", ALLOCATORS)
def test_flags(allocator, make_buffer):
    buf = make_buffer(4, 1, allocator=allocator)
    assert buf.allocator == allocator
    assert buf.readonly is False
    assert buf.delayed_gc is False
    assert buf.released is False
    assert buf.exports == 0
    pinned = make_buffer(4, 1, allocator=allocator, delayed_gc=True)
    assert pinned.delayed_gc is True


def test_exports_counts(make_buffer):
    buf = make_buffer(8, 1)
    views = [memoryview(buf) for _ in range(3)]
    assert buf.exports == 3
    views.pop().release()
    assert buf.exports == 2
    views.clear()
    assert buf.exports == 0


def test_properties_are_read_only(make_buffer):
    buf = make_buffer(8, 1)
    for name in ("address", "nbytes", "itemsize", "num_items", "identifier",
                 "allocator", "readonly", "released", "exports"):
        with pytest.raises(AttributeError):
            setattr(buf, name, 1)
    assert buf.nbytes == 8
    assert buf.released is False


def test_sizes_are_kept_per_buffer(make_buffer):
    a = make_buffer(3, 5)
    b = make_buffer(7, 2)
    assert (a.num_items, a.itemsize, b.num_items, b.itemsize) == (3, 5, 7, 2)


# --------------------------------------------------------------------------
# repr

REPR = re.compile(
    r"^<(?P<type>[\w.]+) allocator='(?P<allocator>\w+)' address=(?P<address>0x[0-9a-fA-F]+) "
    r"nbytes=(?P<nbytes>\d+) state=(?P<state>\S+)>$"
)


def parse_repr(buf):
    match = REPR.match(repr(buf))
    assert match, repr(buf)
    return match


@pytest.mark.parametrize("allocator", ALLOCATORS)
def test_repr_live(allocator, make_buffer):
    buf = make_buffer(16, 4, allocator=allocator)
    m = parse_repr(buf)
    assert m["type"] == "memmanager.Buffer"
    assert m["allocator"] == allocator
    assert int(m["address"], 16) == buf.address
    assert int(m["nbytes"]) == 64
    assert m["state"] == "live"


def test_repr_pinned(make_buffer):
    buf = make_buffer(8, 1, delayed_gc=True)
    assert parse_repr(buf)["state"] == "pinned"


def test_repr_exported(make_buffer):
    buf = make_buffer(8, 1)
    v1 = memoryview(buf)
    assert parse_repr(buf)["state"] == "exported(1)"
    v2 = buf.region(1, 3)
    assert parse_repr(buf)["state"] == "exported(2)"
    v1.release()
    assert parse_repr(buf)["state"] == "exported(1)"
    v2.release()
    assert parse_repr(buf)["state"] == "live"


def test_repr_released():
    buf = Buffer(8, 1, allocator="CMalloc")
    buf.release()
    text = repr(buf)
    assert "state=released" in text
    assert "allocator='CMalloc'" in text
    assert text.startswith("<memmanager.Buffer")


def test_repr_subclass(make_buffer):
    class Special(Buffer):
        pass

    buf = Special(8, 1)
    try:
        m = parse_repr(buf)
        assert m["type"].split(".")[-1] == "Special"
        assert int(m["nbytes"]) == 8
    finally:
        buf.release()


# --------------------------------------------------------------------------
# after release

RELEASED_ACCESS = {
    "get_buffer()": lambda b: b.get_buffer(),
    "address": lambda b: b.address,
    "get_buffer_size()": lambda b: b.get_buffer_size(),
    "nbytes": lambda b: b.nbytes,
    "get_element_size()": lambda b: b.get_element_size(),
    "itemsize": lambda b: b.itemsize,
    "get_num_of_elements()": lambda b: b.get_num_of_elements(),
    "num_items": lambda b: b.num_items,
    "allocator": lambda b: b.allocator,
    "readonly": lambda b: b.readonly,
    "delayed_gc": lambda b: b.delayed_gc,
    "exports": lambda b: b.exports,
    "len()": len,
    "buf[0]": lambda b: b[0],
    "buf[-1]": lambda b: b[-1],
    "buf[0:2]": lambda b: b[0:2],
    "buf[0] = 1": lambda b: b.__setitem__(0, 1),
    "buf[0:2] = ...": lambda b: b.__setitem__(slice(0, 2), b"ab"),
    "region()": lambda b: b.region(),
    "region(0, 1)": lambda b: b.region(0, 1),
    "extract_buffer_region()": lambda b: b.extract_buffer_region(),
    "extract_buffer_region(0, 1)": lambda b: b.extract_buffer_region(0, 1),
    "memoryview()": memoryview,
    "bytes()": bytes,
    "list()": list,
}


@pytest.mark.parametrize("allocator", ALLOCATORS)
@pytest.mark.parametrize("name", list(RELEASED_ACCESS))
def test_accessors_after_release(allocator, name):
    buf = Buffer(8, 1, allocator=allocator)
    ident = buf.identifier
    buf.release()
    with pytest.raises(ValueError, match=r"^buffer is released$"):
        RELEASED_ACCESS[name](buf)
    assert buf.released is True
    assert buf.identifier == ident
    assert "released" in repr(buf)


def test_numpy_after_release():
    import numpy as np

    buf = Buffer(8, 1)
    buf.release()
    with pytest.raises(ValueError, match="buffer is released"):
        np.frombuffer(buf, dtype=np.uint8)


def test_release_of_pinned_then_accessors():
    buf = Buffer(8, 1, delayed_gc=True)
    buf.release()
    assert buf.released is True
    with pytest.raises(ValueError, match=r"^buffer is released$"):
        buf.delayed_gc
