"""Seeing what memmanager holds (DESIGN sections 5 and 10): stats(),
live_buffers() and report() across every allocator, tracemalloc under
TRACEMALLOC_DOMAIN, and what MEMMANAGER_DEBUG=1 switches on (guard bytes
checked at free, registry checks, a line per plug-in)."""

import ctypes
import gc
import os
import subprocess
import sys
import textwrap
import tracemalloc
import uuid

import pytest
from hypothesis import settings, stateful
from hypothesis import strategies as st

import memmanager
from memmanager import Buffer

ALLOCATORS = ["PyAlloc", "CMalloc", "Aligned", "Mmap", "SharedMemory"]
COUNTERS = ("live_buffers", "live_bytes", "peak_bytes", "allocations", "allocated_bytes")


class Plugin:
    def __init__(self):
        self.blocks = {}

    def malloc(self, num_items, item_size, init_byte, options):
        block = ctypes.create_string_buffer(num_items * item_size)
        self.blocks[ctypes.addressof(block)] = block
        return block

    def get_buffer_address(self, handle):
        return ctypes.addressof(handle)

    def free(self, address):
        del self.blocks[address]


@pytest.fixture(scope="module")
def plugin_name():
    name = f"Obs{uuid.uuid4().hex[:8]}"
    memmanager.register_allocator(name, Plugin())
    return name


def test_stats_for_every_allocator(plugin_name):
    names = ALLOCATORS + [plugin_name]
    before = memmanager.stats()
    bufs = {name: [Buffer(100 * (i + 1), 1, allocator=name) for i in range(3)] for name in names}
    during = memmanager.stats()
    for name in names:
        old = before.get(name, dict.fromkeys(COUNTERS, 0))
        new = during[name]
        assert set(new) == set(COUNTERS)
        assert new["live_buffers"] == old["live_buffers"] + 3
        assert new["live_bytes"] == old["live_bytes"] + 600
        assert new["allocations"] == old["allocations"] + 3
        assert new["allocated_bytes"] == old["allocated_bytes"] + 600
        assert new["peak_bytes"] >= new["live_bytes"]
    total = during["total"]
    assert total["live_buffers"] == sum(during[n]["live_buffers"] for n in during if n != "total")
    assert total["live_bytes"] == sum(during[n]["live_bytes"] for n in during if n != "total")
    del bufs
    gc.collect()
    after = memmanager.stats()
    for name in names:
        assert after[name]["live_buffers"] == before.get(name, {"live_buffers": 0})["live_buffers"]
        assert after[name]["peak_bytes"] >= during[name]["live_bytes"]


def test_live_buffers_and_report(plugin_name, make_buffer):
    bufs = [make_buffer(64, 2, allocator=name) for name in ALLOCATORS + [plugin_name]]
    bufs[0].region(0, 4)  # a temporary export, gone at once
    pinned = make_buffer(8, 1, allocator="Mmap", delayed_gc=True)
    view = bufs[1].region(0, 8)
    rows = {row.identifier: row for row in memmanager.live_buffers()}
    for buf in bufs:
        row = rows[buf.identifier]
        assert (row.allocator, row.address, row.nbytes) == (buf.allocator, buf.address, 128)
    assert rows[bufs[1].identifier].exports == 1
    assert rows[pinned.identifier].pinned is True
    text = memmanager.report()
    for name in ALLOCATORS + [plugin_name, "total"]:
        assert name in text
    for buf in bufs:
        # identifiers are a counter now, printed in decimal (DESIGN 2)
        assert f"\n{buf.identifier} " in text and f"0x{buf.address:x}" in text
    lines = text.splitlines()
    header = lines[0]
    row_line = next(line for line in lines if f"0x{bufs[4].address:x}" in line)
    # columns line up however long the allocator names are
    assert row_line.index(f"0x{bufs[4].address:x}") == header.index("address")
    view.release()


@pytest.mark.parametrize("allocator", ["CMalloc", "Aligned", "Mmap", "SharedMemory", "plugin"])
def test_tracemalloc_domain(allocator, plugin_name):
    allocator = plugin_name if allocator == "plugin" else allocator
    ours = tracemalloc.DomainFilter(True, memmanager.TRACEMALLOC_DOMAIN)
    tracemalloc.start()
    try:
        buf = Buffer(54321, 1, allocator=allocator)
        traces = tracemalloc.take_snapshot().filter_traces([ours]).traces
        assert [t.size for t in traces if t.size == 54321] == [54321]
        assert any(t.domain == memmanager.TRACEMALLOC_DOMAIN for t in traces)
        buf.release()
        traces = tracemalloc.take_snapshot().filter_traces([ours]).traces
        assert 54321 not in [t.size for t in traces]
    finally:
        tracemalloc.stop()


def test_pyalloc_is_traced_by_python_not_our_domain():
    ours = tracemalloc.DomainFilter(True, memmanager.TRACEMALLOC_DOMAIN)
    tracemalloc.start()
    try:
        buf = Buffer(54321, 1)
        snapshot = tracemalloc.take_snapshot()
        assert 54321 not in [t.size for t in snapshot.filter_traces([ours]).traces]
        assert 54321 in [t.size for t in snapshot.traces]
        buf.release()
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------
# MEMMANAGER_DEBUG=1


def run_debug(code, debug="1"):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    if debug is None:
        env.pop("MEMMANAGER_DEBUG", None)
    else:
        env["MEMMANAGER_DEBUG"] = debug
    return subprocess.run([sys.executable, "-W", "always::RuntimeWarning", "-c",
                           textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=60)


def test_debug_flag_is_read_at_import():
    for value, expected in (("1", "1"), ("0", "0"), ("", "0"), (None, "0")):
        result = run_debug("import memmanager; print(memmanager._core.DEBUG)", value)
        assert result.stdout.strip() == expected


@pytest.mark.parametrize("allocator", ["CMalloc", "Aligned", "Mmap"])
@pytest.mark.parametrize("where, words", [("after", "overrun"), ("before", "underrun")])
def test_guard_damage_is_reported_not_fatal(allocator, where, words):
    result = run_debug(f"""
        import ctypes, warnings, memmanager
        buf = memmanager.Buffer(100, 1, allocator={allocator!r}, init_value=1)
        target = buf.address + 100 if {where!r} == "after" else buf.address - 3
        ctypes.memset(target, 0x41, 2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            buf.release()
        print("warned:", [str(w.category.__name__) for w in caught])
        print("released:", buf.released, memmanager.stats()[{allocator!r}]["live_buffers"])
        memmanager.Buffer(100, 1, allocator={allocator!r}).release()   # still usable
    """)
    assert result.returncode == 0, result.stderr
    assert f"buffer {words}" in result.stderr
    assert allocator in result.stderr
    assert "warned: ['RuntimeWarning']" in result.stdout
    assert "released: True 0" in result.stdout


def test_guard_damage_in_dealloc_and_as_error():
    """Damage found while a buffer is dropped, or with warnings as errors,
    is still reported (stderr, and sys.unraisablehook) and never raises."""
    result = run_debug("""
        import ctypes, sys, warnings, memmanager
        seen = []
        sys.unraisablehook = lambda args: seen.append(args.exc_type.__name__)
        buf = memmanager.Buffer(10, 1, allocator="CMalloc")
        ctypes.memset(buf.address + 10, 0, 1)
        warnings.simplefilter("error")
        del buf
        print("after del", seen)
    """)
    assert result.returncode == 0, result.stderr
    assert "buffer overrun" in result.stderr
    assert "after del ['RuntimeWarning']" in result.stdout


def test_no_reports_without_damage():
    result = run_debug("""
        import memmanager
        for allocator in ("PyAlloc", "CMalloc", "Aligned", "Mmap", "SharedMemory"):
            for size in (1, 100, 4096, 200000, 5 << 20):
                for init in (None, 0, 7):
                    buf = memmanager.Buffer(size, 1, allocator=allocator, init_value=init)
                    buf[size - 1] = 9
                    buf[0] = 9
                    del buf
        aligned = memmanager.Buffer(10, 1, allocator="Aligned", alignment=4096)
        print(aligned.address % 4096, memmanager._core._registry_check())
    """)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.split()[0] == "0"


def test_consumed_cmalloc_blocks_have_no_guards():
    result = run_debug("""
        import ctypes, memmanager
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        holder = [libc.malloc(64)]
        buf = memmanager.Buffer.consume(holder, 64, 1, allocator="CMalloc", delayed_gc=False)
        buf[63] = 1
        buf.release()
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok" and result.stderr == ""


# --------------------------------------------------------------------------
# The counters stay consistent under any sequence of operations


class AllocatorMachine(stateful.RuleBasedStateMachine):
    """Random creation and release across allocators; after each step the
    registry's invariants hold and stats() agrees with live_buffers()."""

    def __init__(self):
        super().__init__()
        gc.collect()
        self.base = memmanager.stats()
        self.live = []

    def count(self, allocator):
        return self.base.get(allocator, {"live_buffers": 0})["live_buffers"]

    @stateful.rule(allocator=st.sampled_from(ALLOCATORS), size=st.integers(1, 70000),
                   init=st.none() | st.integers(0, 255),
                   alignment=st.sampled_from([None, 1, 64, 4096]))
    def create(self, allocator, size, init, alignment):
        options = {"alignment": alignment} if allocator == "Aligned" and alignment else {}
        buf = Buffer(size, 1, allocator=allocator, init_value=init, **options)
        if init is not None:
            assert buf[size - 1] == init
        self.live.append(buf)

    @stateful.precondition(lambda self: self.live)
    @stateful.rule(index=st.integers(0, 10**6), explicit=st.booleans())
    def release(self, index, explicit):
        buf = self.live.pop(index % len(self.live))
        if explicit:
            buf.release()

    @stateful.invariant()
    def consistent(self):
        assert memmanager._core._registry_check() >= 0
        stats = memmanager.stats()
        for allocator in ALLOCATORS:
            mine = sum(1 for b in self.live if b.allocator == allocator)
            assert stats.get(allocator, {"live_buffers": 0})["live_buffers"] == \
                self.count(allocator) + mine

    def teardown(self):
        self.live.clear()
        gc.collect()


AllocatorMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=30,
                                                       deadline=None)
TestAllocatorMachine = AllocatorMachine.TestCase
