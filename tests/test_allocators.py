"""The built-in allocators, Aligned and Mmap above all (DESIGN section 4):
every init_value form with every allocator, exactly one free, the options
and their validation, alignment, huge pages, pre-faulting and fork-shared
mappings.  SharedMemory has its own file, test_shared_memory.py."""

import gc
import mmap
import os
import sys
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

import memmanager
from memmanager import Buffer

ALL_BUILTINS = ["PyAlloc", "CMalloc", "Aligned", "Mmap", "SharedMemory"]
PAGE = mmap.PAGESIZE

# (init_value, the byte every position must hold; None: not checked)
INIT_FORMS = [
    (None, None), ("zero", 0), ("ZeRo", 0), (0, 0), (1, 1), (255, 255),
    (b"\x7f", 0x7F), ("40", 40), ("7", 7), ("0", 0), ("A", 65), ("\xe9", 0xE9),
]
# Small blocks, a block past Aligned's mapping threshold (128 KiB), and one
# past the huge-page threshold (4 MiB).
SIZES = [1, 100, 4096 + 3, (128 << 10) + 5, (4 << 20) + 1]


def resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def live(name):
    return memmanager.stats().get(name, {}).get("live_buffers", 0)


@pytest.mark.parametrize("allocator", ALL_BUILTINS)
@pytest.mark.parametrize("init_value, expected", INIT_FORMS)
def test_every_init_form(allocator, init_value, expected):
    for size in SIZES:
        buf = Buffer(size, 1, allocator=allocator, init_value=init_value)
        assert buf.allocator == allocator and buf.nbytes == size
        if expected is not None:
            data = bytes(memoryview(buf))
            assert data == bytes([expected]) * size, (allocator, init_value, size)
        buf[size - 1] = 3           # every byte is writable
        buf.release()


@pytest.mark.parametrize("allocator", ALL_BUILTINS)
def test_items_times_size(allocator, make_buffer):
    buf = make_buffer(1000, 24, allocator=allocator, init_value=9)
    assert (buf.num_items, buf.itemsize, buf.nbytes) == (1000, 24, 24000)
    assert buf.extract_buffer_region(23990, 23999) == b"\x09" * 10


@pytest.mark.parametrize("allocator", ALL_BUILTINS)
def test_listed_and_counted(allocator):
    assert allocator in memmanager.allocators()
    before = memmanager.stats().get(allocator, {"allocations": 0, "live_buffers": 0})
    bufs = [Buffer(10 + i, 3, allocator=allocator) for i in range(5)]
    after = memmanager.stats()[allocator]
    assert after["allocations"] == before["allocations"] + 5
    assert after["live_buffers"] == before["live_buffers"] + 5
    assert after["live_bytes"] >= sum(b.nbytes for b in bufs)
    rows = [r for r in memmanager.live_buffers() if r.allocator == allocator]
    assert {r.identifier for r in rows} >= {b.identifier for b in bufs}
    del bufs
    gc.collect()
    assert memmanager.stats()[allocator]["live_buffers"] == before["live_buffers"]
    assert memmanager._core._registry_check() >= 0


@pytest.mark.parametrize("allocator", ["CMalloc", "Aligned", "Mmap", "SharedMemory"])
def test_freed_exactly_once_and_traced(allocator):
    """Each block is reported to tracemalloc once, and untracked once."""
    domain = tracemalloc.DomainFilter(True, memmanager.TRACEMALLOC_DOMAIN)
    tracemalloc.start()
    try:
        buf = Buffer(12345, 1, allocator=allocator, init_value=1)
        traces = tracemalloc.take_snapshot().filter_traces([domain]).traces
        sizes = [t.size for t in traces]
        assert sizes.count(12345) == 1
        buf.release()
        buf.release()               # idempotent: nothing freed twice
        traces = tracemalloc.take_snapshot().filter_traces([domain]).traces
        assert 12345 not in [t.size for t in traces]
    finally:
        tracemalloc.stop()


HUGE_PAGE = 2 << 20


@pytest.mark.parametrize("allocator", ["PyAlloc", "CMalloc", "Aligned"])
@pytest.mark.parametrize("init_value", [None, 7])
def test_large_blocks_start_on_a_huge_page_boundary(allocator, init_value):
    """From 2 MiB on, the heap allocators' blocks start on a 2 MiB boundary,
    so every 2 MiB of them can be a huge page wherever malloc's mapping
    lands (memmanager.h)."""
    for size in (4 << 20, (9 << 20) + 3):
        buf = Buffer(size, 1, allocator=allocator, init_value=init_value)
        assert buf.address % HUGE_PAGE == 0
        if init_value is not None:
            assert buf[0] == buf[size - 1] == init_value
        buf[size - 1] = 1           # the whole block is there
        buf.release()
    small = Buffer((4 << 20) - 1, 1, allocator=allocator)
    small.release()


def test_large_pyalloc_blocks_go_back_to_pymem():
    """PyAlloc's large blocks carry PyMem's own pointer below them; freeing
    by size gives PyMem back exactly what it handed out, zeroed or not."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for init_value in (None, 0, 7):
            buffers = [Buffer(size, 1, init_value=init_value)
                       for size in ((4 << 20) - 1, 4 << 20, 5 << 20)]
            assert tracemalloc.get_traced_memory()[0] - before >= 3 * (4 << 20)
            for buf in buffers:
                buf.release()
            assert tracemalloc.get_traced_memory()[0] - before < 64 << 10
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("allocator", ["Aligned", "Mmap", "SharedMemory"])
def test_zero_fill_is_lazy(allocator):
    """init_value=0 gets the kernel's zero pages: no pass over the memory."""
    size = 256 << 20
    gc.collect()
    before = resident_bytes()
    buf = Buffer(size, 1, allocator=allocator, init_value=0)
    grown = resident_bytes() - before
    assert buf[size // 2] == 0 and buf[size - 1] == 0
    buf.release()
    assert grown < size // 4, f"{allocator} touched {grown} bytes of a zero-filled block"


@pytest.mark.parametrize("allocator", ["Aligned", "Mmap", "SharedMemory"])
def test_cannot_adopt(allocator, libc):
    address = libc.malloc(64)
    try:
        with pytest.raises(TypeError, match="cannot adopt"):
            Buffer.consume(address, 64, 1, allocator=allocator)
        with pytest.raises(TypeError):
            Buffer.consume(bytearray(64), 64, 1, allocator=allocator)
    finally:
        libc.free(address)


@pytest.mark.parametrize("allocator", ["PyAlloc", "CMalloc", "Aligned", "Mmap", "SharedMemory"])
def test_failed_allocation(allocator, registry_unchanged):
    with registry_unchanged():
        with pytest.raises(MemoryError):
            Buffer(2**40, 2**20, allocator=allocator, init_value=1)


# --------------------------------------------------------------------------
# Aligned


@pytest.mark.parametrize("alignment", [1, 2, 4, 8, 16, 32, 64, 128, 4096, 1 << 16, 1 << 21])
@pytest.mark.parametrize("init_value", [None, 0, 5])
def test_alignment_honoured(alignment, init_value):
    for size in (1, 63, 1000, 300 << 10):
        buf = Buffer(size, 1, allocator="Aligned", alignment=alignment, init_value=init_value)
        assert buf.address % alignment == 0
        if init_value is not None:
            assert buf[0] == init_value and buf[size - 1] == init_value
        buf.release()


def test_default_alignment_is_64():
    bufs = [Buffer(n, 1, allocator="Aligned") for n in (1, 3, 65, 1000)]
    assert all(b.address % 64 == 0 for b in bufs)
    bufs += [Buffer(3, 1, allocator="Aligned", alignment=None),
             Buffer(3, 1, {"allocator": "Aligned", "alignment": 64})]
    assert all(b.address % 64 == 0 for b in bufs)


@pytest.mark.parametrize("alignment", [0, 3, 6, 48, -64, 1 << 31, 2**64, True, 64.0, "64",
                                       b"64", [64]])
def test_bad_alignment(alignment, registry_unchanged):
    with registry_unchanged():
        with pytest.raises(ValueError, match="alignment"):
            Buffer(10, 1, allocator="Aligned", alignment=alignment)


@given(exponent=st.integers(0, 20), size=st.integers(1, 1 << 18), fill=st.none() | st.integers(0, 255))
def test_alignment_property(exponent, size, fill):
    with Buffer(size, 1, allocator="Aligned", alignment=1 << exponent, init_value=fill) as buf:
        assert buf.address % (1 << exponent) == 0
        if fill is not None:
            assert buf[size // 2] == fill


@pytest.mark.parametrize("allocator, option", [("Aligned", "alignmnet"), ("Aligned", "huge_pages"),
                                               ("Mmap", "alignment"), ("Mmap", "huge_pages"),
                                               ("SharedMemory", "nmae")])
def test_unknown_option_named(allocator, option, registry_unchanged):
    with registry_unchanged():
        with pytest.raises(TypeError, match=option):
            Buffer(10, 1, allocator=allocator, **{option: 1})


# --------------------------------------------------------------------------
# Mmap


@pytest.mark.parametrize("options", [{}, {"hugepages": True}, {"hugepages": False},
                                     {"populate": True}, {"shared": True},
                                     {"hugepages": True, "populate": True, "shared": True}])
@pytest.mark.parametrize("size", [1, PAGE, 3 * PAGE + 1, (4 << 20) + 7])
def test_mmap_options(options, size):
    for init_value in (None, 0, 0xAB):
        buf = Buffer(size, 1, allocator="Mmap", init_value=init_value, **options)
        assert buf.address % PAGE == 0
        if init_value is not None:
            assert buf[0] == init_value and buf[size - 1] == init_value
        buf[size // 2] = 1
        buf.release()


def smaps_field(address, field):
    """A field of the /proc/self/smaps entry of the mapping holding address."""
    current = None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                start, end = (int(x, 16) for x in head.split("-"))
                current = start <= address < end
            elif current and line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
    return None


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc/self/smaps")
def test_mmap_hugepage_advice_is_on_this_mapping_only():
    advised = Buffer(8 << 20, 1, allocator="Mmap", hugepages=True)
    plain = Buffer(8 << 20, 1, allocator="Mmap", hugepages=False)
    assert "hg" in (smaps_field(advised.address, "VmFlags") or "").split()
    assert "hg" not in (smaps_field(plain.address, "VmFlags") or "").split()


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc/self/smaps")
@pytest.mark.parametrize("allocator", ["PyAlloc", "CMalloc", "Aligned"])
def test_large_fill_advises_huge_pages_to_the_blocks_end(allocator):
    """A large byte-filled block from malloc asks for huge pages up to the
    end of its last page, partial or not (as NumPy does): without the last
    page the 2 MiB extent that ends there cannot be a huge page."""
    buf = Buffer((8 << 20) + 100, 1, allocator=allocator, init_value=1)
    try:
        first_whole_page = (buf.address + PAGE - 1) // PAGE * PAGE
        last_byte = buf.address + buf.nbytes - 1
        for address in (first_whole_page, last_byte):
            assert "hg" in (smaps_field(address, "VmFlags") or "").split(), hex(address)
    finally:
        buf.release()


def test_mmap_populate_faults_pages_in():
    size = 32 << 20
    gc.collect()
    before = resident_bytes()
    lazy = Buffer(size, 1, allocator="Mmap", hugepages=False)
    lazy_growth = resident_bytes() - before
    populated = Buffer(size, 1, allocator="Mmap", hugepages=False, populate=True)
    populated_growth = resident_bytes() - before - lazy_growth
    assert lazy_growth < size // 4
    assert populated_growth >= size * 3 // 4
    populated.release()
    lazy.release()


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc/self/smaps")
def test_mmap_shared_flag():
    shared = Buffer(PAGE, 1, allocator="Mmap", shared=True)
    private = Buffer(PAGE, 1, allocator="Mmap")
    assert "sh" in smaps_field(shared.address, "VmFlags").split()
    assert "sh" not in smaps_field(private.address, "VmFlags").split()


def write_in_child(buf, value):
    """Forks; the child writes value into buf[0] and exits."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            buf[0] = value
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_mmap_shared_survives_fork():
    shared = Buffer(PAGE, 1, allocator="Mmap", shared=True, init_value=0)
    private = Buffer(PAGE, 1, allocator="Mmap", init_value=0)
    write_in_child(shared, 42)
    write_in_child(private, 42)
    assert shared[0] == 42
    assert private[0] == 0


def test_mmap_flags_are_truthiness(make_buffer):
    buf = make_buffer(10, 1, allocator="Mmap", hugepages=0, populate=1, shared=None)
    assert buf.nbytes == 10

    class Bad:
        def __bool__(self):
            raise RuntimeError("no truth")

    with pytest.raises(RuntimeError, match="no truth"):
        Buffer(10, 1, allocator="Mmap", populate=Bad())


# --------------------------------------------------------------------------
# Builtins keep refusing options; nothing leaks across many cycles


@pytest.mark.parametrize("allocator", ["PyAlloc", "CMalloc"])
def test_option_free_allocators_refuse_options(allocator, registry_unchanged):
    """They take hugepages= only (tests/test_page_options.py)."""
    for option in ("alignment", "numa_node", "name"):
        with registry_unchanged():
            with pytest.raises(TypeError, match=option):
                Buffer(10, 1, allocator=allocator, **{option: 64})


@pytest.mark.parametrize("allocator", ["Aligned", "Mmap", "SharedMemory"])
def test_cycles_keep_refcounts(allocator):
    stub_calls = []
    stub = stub_calls.append
    opts = {"allocator": allocator}
    refs = lambda: (sys.getrefcount(stub), sys.getrefcount(opts), sys.getrefcount(Buffer))  # noqa: E731
    before = refs()
    base = live(allocator)
    for i in range(200):
        buf = Buffer(64 + i, 1, opts, init_value=i % 3, death_stub=stub)
        with buf.region(0, 4):
            pass
        buf.release()
        with pytest.raises(ValueError):
            Buffer(1, 1, opts, init_value=300)
    del buf
    stub_calls.clear()
    gc.collect()
    assert refs() == before
    assert live(allocator) == base
