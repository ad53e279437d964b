"""Resource adaptors (DESIGN section 12): what every adaptor shares --
registration, upstreams bound by name, upstream options, stats() and
report(), cycles and bad input -- and the Limit adaptor."""

import gc
import threading
import uuid
import weakref

import pytest

import memmanager
from memmanager import Buffer, Limit, LimitExceededError

from conftest import run_python


def fresh(prefix="Ad"):
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def register(adaptor, prefix="Ad"):
    name = fresh(prefix)
    memmanager.register_allocator(name, adaptor)
    return name


def counters(name):
    return memmanager.stats().get(name, {"live_buffers": 0, "live_bytes": 0,
                                         "allocations": 0})


class Recorder:
    """A Python plug-in allocator (the python kind) that records calls."""

    def __init__(self):
        import ctypes
        self.ctypes = ctypes
        self.live = {}
        self.mallocs = []
        self.fail = False
        self.during_malloc = None

    def malloc(self, num_items, item_size, init_byte, options):
        if self.during_malloc is not None:
            self.during_malloc()
        if self.fail:
            raise RuntimeError("the plug-in says no")
        block = (self.ctypes.c_char * (num_items * item_size))()
        self.mallocs.append((num_items, item_size, options))
        self.live[self.ctypes.addressof(block)] = block
        return block

    def get_buffer_address(self, handle):
        return self.ctypes.addressof(handle)

    def free(self, address):
        del self.live[address]


# ---------------------------------------------------------------------------
# Limit
# ---------------------------------------------------------------------------

def test_limit_counts_live_bytes_and_holds_exactly():
    limit = Limit("PyAlloc", 1000)
    name = register(limit)
    assert (limit.used, limit.max_bytes, limit.upstream) == (0, 1000, "PyAlloc")
    a = Buffer(600, 1, allocator=name)
    b = Buffer(100, 4, allocator=name)      # exactly to the byte
    assert limit.used == 1000
    before = memmanager.stats()
    with pytest.raises(LimitExceededError, match="1 more bytes"):
        Buffer(1, 1, allocator=name)
    assert memmanager.stats() == before     # nothing allocated
    assert limit.used == 1000
    del a
    assert limit.used == 400
    c = Buffer(600, 1, allocator=name)
    del b, c
    assert limit.used == 0


def test_limit_exceeded_is_a_memory_error():
    assert issubclass(LimitExceededError, MemoryError)
    assert issubclass(LimitExceededError, memmanager.MemManagerError)
    name = register(Limit("CMalloc", 10))
    with pytest.raises(MemoryError):
        Buffer(11, 1, allocator=name)


def test_limit_shows_in_stats_with_its_upstream():
    upstream_before = counters("CMalloc")
    limit = Limit("CMalloc", 1 << 20)
    name = register(limit)
    buf = Buffer(4096, 1, allocator=name)
    entry = memmanager.stats()[name]
    assert entry["live_bytes"] == 4096 and entry["live_buffers"] == 1
    assert (entry["upstream_blocks"], entry["upstream_bytes"]) == (1, 4096)
    # CMalloc counts its own buffers; the total counts each buffer once.
    assert counters("CMalloc")["live_bytes"] == upstream_before["live_bytes"]
    total = memmanager.stats()["total"]
    del buf
    assert memmanager.stats()["total"]["live_bytes"] == total["live_bytes"] - 4096
    assert memmanager.stats()[name]["upstream_bytes"] == 0
    rows = [row for row in memmanager.live_buffers() if row.allocator == name]
    assert rows == []


def test_live_buffers_and_report_name_the_adaptor():
    limit = Limit("PyAlloc", 1 << 20)
    name = register(limit)
    buf = Buffer(64, 1, allocator=name)
    rows = [row for row in memmanager.live_buffers() if row.address == buf.address]
    assert [row.allocator for row in rows] == [name]
    text = memmanager.report()
    line = next(l for l in text.splitlines() if l.startswith(name) and "Limit" in l)
    assert "PyAlloc" in line and "used=64" in line and "max_bytes=1048576" in line
    assert memmanager.allocators().count(name) == 1


def test_upstream_options_are_parsed_once_and_used():
    name = register(Limit("Aligned", 1 << 20, alignment=4096))
    for _ in range(3):
        assert Buffer(100, 1, allocator=name).address % 4096 == 0


def test_per_buffer_options_pass_to_the_upstream():
    name = register(Limit("Aligned", 1 << 20))
    assert Buffer(100, 1, allocator=name, alignment=1 << 16).address % (1 << 16) == 0
    with pytest.raises(TypeError, match="no option"):
        Buffer(100, 1, allocator=name, colour="red")


def test_per_buffer_options_refused_when_the_adaptor_has_some():
    name = register(Limit("Aligned", 1 << 20, alignment=4096))
    with pytest.raises(TypeError, match="per-buffer options"):
        Buffer(100, 1, allocator=name, alignment=64)


def test_limit_over_shared_memory_keeps_names():
    name = register(Limit("SharedMemory", 1 << 20))
    buf = Buffer(4096, 1, allocator=name)
    buf[0:5] = b"hello"
    assert buf.name is not None
    other = Buffer.attach(buf.name)
    assert bytes(other[0:5]) == b"hello"
    del other, buf


def test_limit_over_limit_counts_at_both():
    outer_name = fresh()
    inner = Limit("PyAlloc", 100)
    inner_name = register(inner)
    outer = Limit(inner_name, 1000)
    memmanager.register_allocator(outer_name, outer)
    a = Buffer(80, 1, allocator=outer_name)
    assert (outer.used, inner.used) == (80, 80)
    with pytest.raises(LimitExceededError, match=inner_name):
        Buffer(30, 1, allocator=outer_name)     # the inner one says no
    assert (outer.used, inner.used) == (80, 80)
    del a
    assert (outer.used, inner.used) == (0, 0)


def test_limit_init_values():
    name = register(Limit("CMalloc", 1 << 24))
    assert bytes(Buffer(64, 1, allocator=name, init_value=0)[:]) == bytes(64)
    assert bytes(Buffer(64, 1, allocator=name, init_value=7)[:]) == b"\x07" * 64
    big = Buffer(8 << 20, 1, allocator=name, init_value=0)
    assert big[len(big) - 1] == 0


def test_limit_threads_never_pass_the_budget():
    limit = Limit("PyAlloc", 64 * 10)
    name = register(limit)
    seen = []
    errors = []

    def work():
        held = []
        for i in range(2000):
            try:
                held.append(Buffer(64, 1, allocator=name))
            except LimitExceededError:
                pass
            seen.append(limit.used)
            if len(held) > 3 or i % 7 == 0:
                held.clear()
        held.clear()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert max(seen) <= 640
    assert limit.used == 0


# ---------------------------------------------------------------------------
# Binding, registration, cycles
# ---------------------------------------------------------------------------

def test_upstream_is_bound_when_the_adaptor_is_made():
    plug_a, plug_b = Recorder(), Recorder()
    upstream = register(plug_a, "Up")
    limit = Limit(upstream, 1 << 20)
    name = register(limit)
    memmanager.register_allocator(upstream, plug_b)   # replaces the name
    buf = Buffer(16, 1, allocator=name)
    assert len(plug_a.mallocs) == 1 and plug_b.mallocs == []
    del buf
    assert plug_a.live == {}


def test_buffers_keep_the_adaptor_and_upstream_alive():
    plugin = Recorder()
    upstream = register(plugin, "Up")
    name = register(Limit(upstream, 1 << 20))
    buf = Buffer(16, 1, allocator=name)
    memmanager.register_allocator(name, Limit("PyAlloc", 10))
    memmanager.register_allocator(upstream, Recorder())
    gc.collect()
    buf[0] = 1
    del buf
    assert plugin.live == {}


def test_one_adaptor_under_two_names_shares_its_budget():
    limit = Limit("PyAlloc", 100)
    first, second = register(limit), register(limit)
    a = Buffer(60, 1, allocator=first)
    with pytest.raises(LimitExceededError):
        Buffer(60, 1, allocator=second)
    assert memmanager.stats()[first]["live_bytes"] == 60
    del a


def test_a_cycle_is_refused_and_nothing_changes():
    a = fresh("A")
    memmanager.register_allocator(a, Limit("PyAlloc", 100))
    b = register(Limit(a, 100), "B")
    with pytest.raises(ValueError, match="cycle"):
        memmanager.register_allocator(a, Limit(b, 100))
    with pytest.raises(ValueError, match="cycle"):
        memmanager.register_allocator(a, Limit(a, 100))
    assert [row[2] for row in memmanager._core._adaptors() if row[0] == a] == ["PyAlloc"]
    assert [row[2] for row in memmanager._core._adaptors() if row[0] == b] == [a]


def test_builtin_names_cannot_be_replaced_by_adaptors():
    with pytest.raises(ValueError, match="built-in"):
        memmanager.register_allocator("PyAlloc", Limit("CMalloc", 100))
    assert "PyAlloc" not in [row[0] for row in memmanager._core._adaptors()]


@pytest.mark.parametrize("upstream, exc", [
    ("NoSuchAllocator", memmanager.UnknownAllocatorError),
    (42, TypeError),
    (None, TypeError),
    (b"PyAlloc", TypeError),
    ("Borrowed", ValueError),
])
def test_bad_upstreams(upstream, exc):
    before = memmanager.stats()
    with pytest.raises(exc):
        Limit(upstream, 100)
    assert memmanager.stats() == before


@pytest.mark.parametrize("max_bytes, exc", [
    (0, ValueError), (-1, ValueError), ("100", TypeError), (True, TypeError),
    (1.5, TypeError), (None, TypeError), (1 << 80, OverflowError),
])
def test_bad_max_bytes(max_bytes, exc):
    with pytest.raises(exc):
        Limit("PyAlloc", max_bytes)


def test_limit_arguments():
    assert Limit(upstream="PyAlloc", max_bytes=5).max_bytes == 5
    with pytest.raises(TypeError, match="missing required argument 'max_bytes'"):
        Limit("PyAlloc")
    with pytest.raises(TypeError, match="missing required argument 'upstream'"):
        Limit()
    with pytest.raises(TypeError, match="multiple values"):
        Limit("PyAlloc", 5, max_bytes=6)
    with pytest.raises(TypeError, match="multiple values"):
        Limit("PyAlloc", 5, max_bytes=5)     # the same object twice
    with pytest.raises(TypeError, match="multiple values"):
        Limit("PyAlloc", 5, upstream="PyAlloc")
    with pytest.raises(TypeError, match="positional"):
        Limit("PyAlloc", 5, 6)


@pytest.mark.parametrize("options, exc", [
    ({"alignment": 3}, ValueError),
    ({"colour": "red"}, TypeError),
])
def test_bad_upstream_options(options, exc):
    with pytest.raises(exc):
        Limit("Aligned", 100, **options)


def test_options_of_an_upstream_that_takes_none():
    with pytest.raises(TypeError, match="no option"):
        Limit("CMalloc", 100, alignment=64)


def test_index_that_reregisters_the_upstream_name():
    plug_a, plug_b = Recorder(), Recorder()
    upstream = register(plug_a, "Up")

    class Sneaky:
        def __index__(self):
            memmanager.register_allocator(upstream, plug_b)
            return 100

    limit = Limit(upstream, Sneaky())
    name = register(limit)
    Buffer(8, 1, allocator=name)
    assert plug_b.mallocs and not plug_a.mallocs   # bound after __index__


def test_upstream_failure_gives_the_budget_back():
    plugin = Recorder()
    limit = Limit(register(plugin, "Up"), 1000)
    name = register(limit)
    plugin.fail = True
    with pytest.raises(RuntimeError, match="says no"):
        Buffer(100, 1, allocator=name)
    assert limit.used == 0
    plugin.fail = False
    assert Buffer(1000, 1, allocator=name).nbytes == 1000


def test_upstream_that_allocates_through_the_limit_while_asked():
    plugin = Recorder()
    limit = Limit(register(plugin, "Up"), 1000)
    name = register(limit)
    inner = []

    def reenter():
        plugin.during_malloc = None
        inner.append(Buffer(300, 1, allocator=name))

    plugin.during_malloc = reenter
    outer = Buffer(600, 1, allocator=name)
    assert limit.used == 900
    with pytest.raises(LimitExceededError):
        Buffer(101, 1, allocator=name)
    del outer, inner[:]
    assert limit.used == 0 and plugin.live == {}


def test_private_options_are_not_reachable_and_cycles_are_collected():
    class Tag:
        pass

    plugin = Recorder()
    upstream = register(plugin, "Up")
    tag = Tag()
    limit = Limit(upstream, 100, tag=tag)
    assert not any(isinstance(r, dict) for r in gc.get_referents(limit))
    assert tag in gc.get_referents(limit)
    tag.limit = limit
    ref = weakref.ref(tag)
    del tag, limit
    gc.collect()
    assert ref() is None


def test_plugin_upstream_sees_the_adaptors_options():
    plugin = Recorder()
    name = register(Limit(register(plugin, "Up"), 100, colour="red"))
    Buffer(10, 1, allocator=name)
    assert plugin.mallocs[-1][2] == {"colour": "red"}


def test_adaptor_types_are_final():
    for kind in (memmanager.Limit, memmanager.Pool, memmanager.Log):
        with pytest.raises(TypeError):
            type("Sub", (kind,), {})
    with pytest.raises(TypeError):
        memmanager.Limit.extra = 1


def test_limit_under_debug_guards_blocks():
    result = run_python("""
        import warnings, memmanager
        from memmanager import Buffer, Limit
        assert memmanager._core.DEBUG
        limit = Limit("PyAlloc", 1 << 20)
        memmanager.register_allocator("Capped", limit)
        buf = Buffer(64, 1, allocator="Capped", init_value=0)
        assert limit.used > 64            # the guard bytes count too
        import ctypes
        ctypes.memset(buf.address + 64, 0, 1)   # one byte past the end
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del buf
        assert any("overrun" in str(w.message) for w in caught), caught
        assert limit.used == 0
        print("ok")
    """, env_extra={"MEMMANAGER_DEBUG": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_limit_over_device_memory(fake_cuda):
    limit = Limit("CudaDevice", 1 << 20)
    name = register(limit)
    zeroed = Buffer(256, 1, allocator=name, init_value=0)
    filled = Buffer(256, 1, allocator=name, init_value=7)
    assert fake_cuda.read(zeroed.address, 256) == bytes(256)
    assert fake_cuda.read(filled.address, 256) == b"\x07" * 256
    with pytest.raises(Exception):
        bytes(filled[0:4])                 # the host cannot read device memory
    assert limit.used == 512
    with pytest.raises(LimitExceededError):
        Buffer(1 << 20, 1, allocator=name)
    del zeroed, filled
    assert limit.used == 0


def test_limit_over_device_memory_without_a_driver(no_cuda):
    name = register(Limit("CudaDevice", 1 << 20))
    with pytest.raises(memmanager.DeviceUnavailableError):
        Buffer(256, 1, allocator=name)
