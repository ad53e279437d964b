"""NumPy's own arrays allocated through memmanager (DESIGN section 13,
memmanager.numpy): handlers over every C allocator, arrays that keep the
handler that made them, realloc and calloc, stats() and statistics(),
tracemalloc, sys.getsizeof, MEMMANAGER_DEBUG guards, and the refusals.

Every test puts back the NumPy handler it found (the autouse fixture), so
no test leaks its allocator into the next.
"""

import asyncio
import concurrent.futures
import contextvars
import gc
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import tracemalloc
import uuid

import pytest

np = pytest.importorskip("numpy")

import memmanager
import memmanager.numpy as mnp
from memmanager import Buffer

from test_plugins_c import canary  # noqa: F401  (the session fixture)


@pytest.fixture(autouse=True)
def _handler_put_back():
    mnp.get_allocator()   # binds NumPy
    before = memmanager._core._numpy_get_handler()
    yield
    memmanager._core._numpy_set_handler(before)


def unique(prefix):
    return "%s%s" % (prefix, uuid.uuid4().hex[:8])


def counters(name):
    entry = mnp.stats().get(name, {})
    return {key: entry.get(key, 0) for key in
            ("live_arrays", "live_array_bytes", "array_allocations", "array_allocated_bytes")}


def live_blocks():
    return memmanager._core._numpy_live_blocks()


# --------------------------------------------------------------------------
# Choosing the allocator

def test_with_block_arrays_come_from_the_allocator():
    before = counters("Aligned")
    with mnp.allocator("Aligned", alignment=4096) as chosen:
        assert mnp.get_allocator() == "Aligned"
        arrays = [np.zeros(n) for n in (1, 3, 1000, 70000)]
        product = arrays[2] + 1.0          # NumPy's own result arrays too
    assert mnp.get_allocator() is None
    assert chosen.name == "Aligned"
    for a in arrays + [product]:
        assert a.ctypes.data % 4096 == 0
        assert mnp.allocator_of(a) == "Aligned"
    after = counters("Aligned")
    assert after["live_arrays"] == before["live_arrays"] + 5
    assert after["live_array_bytes"] == before["live_array_bytes"] + 8 * (1 + 3 + 1000 + 70000 + 1000)
    outside = np.zeros(10)
    assert mnp.allocator_of(outside) is None
    assert np._core.multiarray.get_handler_name(outside) == "default_allocator"


def test_handler_name_is_shown_by_numpy():
    with mnp.allocator("CMalloc"):
        a = np.ones(8)
        assert np._core.multiarray.get_handler_name() == "memmanager:CMalloc"
    assert np._core.multiarray.get_handler_name(a) == "memmanager:CMalloc"
    assert np._core.multiarray.get_handler_version(a) == 1
    view = a[2:]
    assert mnp.allocator_of(view) is None             # a view owns no data
    assert mnp.allocator_of(view.base) == "CMalloc"


def test_set_allocator_and_back_to_default():
    mnp.set_allocator("CMalloc")
    assert mnp.get_allocator() == "CMalloc"
    a = np.arange(100)
    mnp.set_allocator(None)
    assert mnp.get_allocator() is None
    b = np.arange(100)
    assert mnp.allocator_of(a) == "CMalloc" and mnp.allocator_of(b) is None


def test_nested_and_reentered_blocks_restore_what_they_found():
    outer = mnp.allocator("CMalloc")
    inner = mnp.allocator("Aligned", alignment=256)
    with outer:
        with inner:
            assert mnp.get_allocator() == "Aligned"
            with outer:                       # the same object, entered again
                assert mnp.get_allocator() == "CMalloc"
            assert mnp.get_allocator() == "Aligned"
        assert mnp.get_allocator() == "CMalloc"
    assert mnp.get_allocator() is None
    with inner:                               # reusable
        assert mnp.get_allocator() == "Aligned"
    with pytest.raises(RuntimeError, match="exited more often"):
        inner.__exit__(None, None, None)


def test_exception_in_block_restores_handler():
    with pytest.raises(KeyError):
        with mnp.allocator("CMalloc"):
            raise KeyError("x")
    assert mnp.get_allocator() is None


@pytest.mark.parametrize("name, options", [
    ("PyAlloc", {}), ("CMalloc", {}), ("Aligned", {"alignment": 64}),
    ("Aligned", {"alignment": 1 << 16}), ("Mmap", {}), ("PyAlloc", {"hugepages": False}),
    ("SharedMemory", {}),
])
def test_every_c_kind_allocates_arrays(name, options):
    before = counters(name)
    blocks = live_blocks()
    with mnp.allocator(name, **options):
        arrays = [np.full(n, 7, dtype=np.int64) for n in (1, 100, 5000)]
        grown = np.concatenate(arrays)
    assert all(mnp.allocator_of(a) == name for a in arrays + [grown])
    assert grown.sum() == 7 * 5101
    if "alignment" in options:
        assert all(a.ctypes.data % options["alignment"] == 0 for a in arrays)
    assert counters(name)["live_arrays"] == before["live_arrays"] + 4
    assert live_blocks() == blocks + 4
    del arrays, grown
    assert counters(name)["live_arrays"] == before["live_arrays"]
    assert counters(name)["live_array_bytes"] == before["live_array_bytes"]
    assert live_blocks() == blocks


@pytest.mark.parametrize("adaptor", ["Pool", "Limit", "Log"])
@pytest.mark.parametrize("upstream", ["PyAlloc", "CMalloc", "Aligned", "Mmap"])
def test_adaptors_over_every_upstream(tmp_path, adaptor, upstream):
    name = unique(adaptor)
    if adaptor == "Pool":
        made = memmanager.Pool(upstream)
    elif adaptor == "Limit":
        made = memmanager.Limit(upstream, 1 << 24)
    else:
        made = memmanager.Log(upstream, str(tmp_path / "log"))
    memmanager.register_allocator(name, made)
    with mnp.allocator(name):
        a = np.arange(1000, dtype=np.float64)
        b = a * 2
    assert mnp.allocator_of(b) == name
    assert b[999] == 1998.0
    assert counters(name)["live_arrays"] == 2
    if adaptor == "Limit":
        assert made.used >= 16000
    del a, b
    assert counters(name)["live_arrays"] == 0
    if adaptor == "Limit":
        assert made.used == 0
    if adaptor == "Pool":
        assert made.live_blocks == 0
    if adaptor == "Log":
        made.flush()
        text = (tmp_path / "log").read_text().splitlines()
        allocations = sum(" a " in line for line in text)
        assert allocations >= 2                      # and NumPy's temporaries
        assert sum(" f " in line for line in text) == allocations


def test_pool_then_limit_then_aligned_composition():
    limit, pool = unique("Lim"), unique("Pool")
    memmanager.register_allocator(limit, memmanager.Limit("Aligned", 1 << 22, alignment=4096))
    memmanager.register_allocator(pool, memmanager.Pool(limit))
    with mnp.allocator(pool):
        arrays = [np.ones(512) for _ in range(50)]
    assert all(mnp.allocator_of(a) == pool for a in arrays)
    assert counters(pool)["live_arrays"] == 50


def test_c_plugin_gets_every_block_back_with_its_size(canary):  # noqa: F811
    name = unique("Canary")
    memmanager.register_allocator(name, canary.capsule())
    before = canary.counters()
    with mnp.allocator(name):
        arrays = [np.zeros(n, dtype=np.uint8) for n in (1, 64, 4095, 1 << 16)]
        resized = np.zeros(10)
        resized.resize(100_000, refcheck=False)
    assert canary.counters()["live_blocks"] == before["live_blocks"] + 5
    del arrays, resized
    after = canary.counters()
    assert after["unknown_frees"] == before["unknown_frees"]
    assert after["size_mismatches"] == before["size_mismatches"]
    assert after["live_blocks"] == before["live_blocks"]
    assert after["live_bytes"] == before["live_bytes"]


# --------------------------------------------------------------------------
# Each array keeps the handler that made it

def test_array_freed_under_another_handler_goes_back_to_its_own():
    first, second = unique("PoolA"), unique("PoolB")
    pool_a, pool_b = memmanager.Pool("CMalloc"), memmanager.Pool("CMalloc")
    memmanager.register_allocator(first, pool_a)
    memmanager.register_allocator(second, pool_b)
    with mnp.allocator(first):
        a = np.ones(1000)
    with mnp.allocator(second):
        b = np.ones(1000)
        assert pool_a.live_blocks == 1 and pool_b.live_blocks == 1
        del a                                  # freed while `second` is chosen
        assert pool_a.live_blocks == 0 and pool_b.live_blocks == 1
    del b
    assert pool_b.live_blocks == 0


def test_array_outlives_its_adaptor_registration_and_object():
    name = unique("Gone")
    pool = memmanager.Pool("CMalloc")
    memmanager.register_allocator(name, pool)
    with mnp.allocator(name):
        a = np.full(5000, 3.0)
    memmanager.register_allocator(name, memmanager.Pool("PyAlloc"))   # the name reused
    del pool
    gc.collect()
    assert a.sum() == 15000.0
    with mnp.allocator(name):
        b = np.ones(10)
    assert mnp.allocator_of(a) == mnp.allocator_of(b) == name
    del a, b
    gc.collect()
    assert counters(name)["live_arrays"] == 0


def test_handler_object_dropped_while_arrays_live():
    blocks = live_blocks()
    chosen = mnp.allocator("CMalloc")
    with chosen:
        a = np.ones(100)
    del chosen
    gc.collect()
    assert a.sum() == 100
    del a
    assert live_blocks() == blocks


# --------------------------------------------------------------------------
# realloc and calloc

def test_resize_keeps_the_data_and_the_counts():
    name = unique("Pool")
    memmanager.register_allocator(name, memmanager.Pool("CMalloc"))
    with mnp.allocator(name):
        a = np.arange(1000, dtype=np.int64)
        a.resize(300_000, refcheck=False)      # grows: a realloc
        assert (a[:1000] == np.arange(1000)).all() and a[1000:].sum() == 0
        a.resize(10, refcheck=False)           # shrinks
        assert list(a) == list(range(10))
    assert counters(name)["live_arrays"] == 1
    assert counters(name)["live_array_bytes"] == 80
    del a
    assert counters(name) == {"live_arrays": 0, "live_array_bytes": 0,
                              "array_allocations": counters(name)["array_allocations"],
                              "array_allocated_bytes": counters(name)["array_allocated_bytes"]}


def test_fromiter_and_string_arrays_grow_through_realloc():
    with mnp.allocator("CMalloc"):
        a = np.fromiter((i * i for i in range(50_000)), dtype=np.int64)
        s = np.array(["x" * n for n in range(200)])
        u = np.char.add(s, "tail")
    assert a[-1] == 49_999 ** 2
    assert u[199] == "x" * 199 + "tail"
    assert mnp.allocator_of(a) == "CMalloc"


def test_zeros_are_zero_even_from_recycled_pool_memory():
    name = unique("Pool")
    pool = memmanager.Pool("CMalloc")
    memmanager.register_allocator(name, pool)
    with mnp.allocator(name):
        for n in (64, 4096, 1 << 20):
            dirty = np.full(n, 0xFF, dtype=np.uint8)
            del dirty                                   # back in the pool
            clean = np.zeros(n, dtype=np.uint8)
            assert not clean.any(), n
    assert pool.live_blocks == 0 or pool.live_blocks == 1


def test_large_zeros_under_mmap_stay_lazy():
    rss_before = resident_kib()
    with mnp.allocator("Mmap"):
        a = np.zeros(1 << 28, dtype=np.uint8)          # 256 MiB, never touched
    assert a[123_456_789] == 0
    assert resident_kib() - rss_before < 64 * 1024
    del a


def resident_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------
# stats(), report(), statistics()

def test_stats_and_report_show_arrays_under_the_allocator_name():
    name = unique("Shown")
    memmanager.register_allocator(name, memmanager.Pool("CMalloc"))
    with mnp.allocator(name):
        a = np.empty(1000, dtype=np.uint8)
    s, arrays = memmanager.stats(), mnp.stats()
    assert arrays[name] == {"live_arrays": 1, "live_array_bytes": 1000,
                            "array_allocations": 1, "array_allocated_bytes": 1000}
    # stats() counts them as blocks in its five counters, and keeps its keys.
    assert set(s[name]) >= {"live_buffers", "live_bytes", "peak_bytes", "allocations",
                            "allocated_bytes"}
    assert "live_arrays" not in s[name]
    assert s[name]["live_buffers"] == 1 and s[name]["live_bytes"] == 1000
    assert s[name]["allocations"] == 1 and s[name]["allocated_bytes"] == 1000
    assert s[name]["peak_bytes"] == 1000
    assert arrays["total"]["live_arrays"] >= 1
    assert all(row.allocator != name for row in memmanager.live_buffers())   # not buffers
    memmanager._core._registry_check()
    text = memmanager.report()
    del a
    after = memmanager.stats()[name]
    assert after["live_buffers"] == 0 and after["live_bytes"] == 0
    assert mnp.stats()[name]["live_arrays"] == 0
    assert mnp.stats()[name]["array_allocations"] == 1
    row = [line for line in text.splitlines() if line.startswith(name)]
    assert any("1000" in line for line in row), text


def test_statistics_scope_counts_arrays():
    with memmanager.statistics() as scope:
        with mnp.allocator("CMalloc"):
            kept = np.empty(1000, dtype=np.uint8)
            dropped = np.empty(500, dtype=np.uint8)
            del dropped
        untouched = np.empty(7)                  # NumPy's default: not ours
    assert scope.allocations == 2 and scope.allocated_bytes == 1500
    assert scope.frees == 1 and scope.live_bytes == 1000
    assert scope["CMalloc"].allocations == 2
    del kept, untouched


def test_statistics_scope_of_another_thread_does_not_see_these():
    seen = []

    def other():
        with memmanager.statistics() as scope:
            threading.Event().wait(0.01)
        seen.append(scope.allocations)

    with mnp.allocator("CMalloc"):
        t = threading.Thread(target=other)
        t.start()
        a = np.empty(100)
        t.join()
    assert seen == [0]
    del a


# --------------------------------------------------------------------------
# tracemalloc, sys.getsizeof

@pytest.mark.parametrize("name", ["PyAlloc", "CMalloc", "Aligned", "Mmap"])
def test_tracemalloc_sees_each_array_once_in_numpys_domain(name):
    nbytes = 4 << 20
    tracemalloc.start()
    try:
        with mnp.allocator(name):
            before = tracemalloc.get_traced_memory()[0]
            a = np.ones(nbytes, dtype=np.uint8)
            grown = tracemalloc.get_traced_memory()[0] - before
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)])
        in_numpy = sum(t.size for t in snapshot.traces if t.size == nbytes)
    finally:
        tracemalloc.stop()
    assert nbytes <= grown < nbytes + (64 << 10)       # once, not twice
    assert in_numpy == nbytes
    del a


def test_getsizeof_counts_the_data():
    with mnp.allocator("CMalloc"):
        a = np.empty(10_000, dtype=np.uint8)
    assert sys.getsizeof(a) >= 10_000
    assert sys.getsizeof(a) == sys.getsizeof(np.empty(10_000, dtype=np.uint8))


# --------------------------------------------------------------------------
# Contexts and threads

def test_new_thread_starts_with_numpys_default():
    names = []
    with mnp.allocator("CMalloc"):
        t = threading.Thread(target=lambda: names.append(mnp.get_allocator()))
        t.start()
        t.join()
    assert names == [None]


def test_thread_pool_initializer_installs_it_in_each_worker():
    with concurrent.futures.ThreadPoolExecutor(
            2, initializer=mnp.set_allocator, initargs=("CMalloc",)) as pool:
        made = list(pool.map(lambda n: mnp.allocator_of(np.ones(n)), range(1, 9)))
    assert made == ["CMalloc"] * 8


def test_copied_contexts_and_tasks_inherit_it():
    with mnp.allocator("CMalloc"):
        context = contextvars.copy_context()

        async def task():
            return mnp.allocator_of(np.ones(3))

        in_task = asyncio.run(task())
    assert in_task == "CMalloc"
    assert context.run(mnp.get_allocator) == "CMalloc"
    assert mnp.get_allocator() is None


def test_threads_make_and_free_arrays_concurrently():
    name = unique("Pool")
    pool = memmanager.Pool("CMalloc")
    memmanager.register_allocator(name, pool)
    errors = []

    def work(seed):
        try:
            mnp.set_allocator(name)
            kept = []
            for i in range(300):
                kept.append(np.full((seed + i) % 97 + 1, seed, dtype=np.int32))
                if len(kept) > 20:
                    kept.pop(0)
                big = np.zeros(1 << 20, dtype=np.uint8)   # its free lets the GIL go
                assert not big.any()
            assert all((a == seed).all() for a in kept)
        except Exception as error:   # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert counters(name)["live_arrays"] == 0
    assert pool.live_blocks == 0


def test_pickled_array_round_trips_into_the_current_allocator():
    with mnp.allocator("CMalloc"):
        a = np.arange(100)
    with mnp.allocator("Aligned", alignment=4096):
        b = pickle.loads(pickle.dumps(a))
    assert (a == b).all()
    assert mnp.allocator_of(b) == "Aligned"


def test_consume_of_a_handler_array_is_zero_copy():
    with mnp.allocator("CMalloc"):
        a = np.arange(16, dtype=np.uint8)
    buf = Buffer.consume(a, 16, 1)
    assert buf.address == a.ctypes.data
    assert buf[5] == 5
    buf.release()


# --------------------------------------------------------------------------
# A memory cap for NumPy work

def test_limit_caps_numpy():
    name = unique("Cap")
    limit = memmanager.Limit("CMalloc", 1 << 20)
    memmanager.register_allocator(name, limit)
    with mnp.allocator(name):
        small = np.ones(1000)
        # NumPy raises its own MemoryError in place of LimitExceededError.
        with pytest.raises(MemoryError, match="Unable to allocate"):
            np.empty(2 << 20, dtype=np.uint8)
        with pytest.raises(MemoryError):
            small + np.ones((1 << 20) // 8)
    assert limit.used == 8000
    del small
    assert limit.used == 0


# --------------------------------------------------------------------------
# Refusals: clear errors, nothing installed

class PythonPlugin:
    def __init__(self):
        self.blocks = {}

    def malloc(self, num_items, item_size, init_byte, options):
        import ctypes
        block = ctypes.create_string_buffer(max(num_items * item_size, 1))
        self.blocks[ctypes.addressof(block)] = block
        return ctypes.addressof(block)

    def free(self, address):
        self.blocks.pop(address, None)

    def get_buffer_address(self, handle):
        return handle


def test_refusals_leave_the_handler_alone(tmp_path):
    plugin = unique("Py")
    memmanager.register_allocator(plugin, PythonPlugin())
    over_plugin = unique("PoolPy")
    memmanager.register_allocator(over_plugin, memmanager.Limit(plugin, 1 << 20))
    path = tmp_path / "data"
    path.write_bytes(b"\0" * 4096)
    cases = [
        (("NoSuchAllocator",), {}, memmanager.UnknownAllocatorError, "does not exist"),
        (("Borrowed",), {}, ValueError, "adopt"),
        ((plugin,), {}, ValueError, "written in Python"),
        ((over_plugin,), {}, ValueError, "built on an allocator written in Python"),
        (("CudaDevice",), {}, ValueError, "GPU"),
        (("MappedFile",), {"path": str(path), "mode": "r+"}, ValueError, "w\\+"),
        (("MappedFile",), {"path": str(path), "mode": "r"}, ValueError, "read-only"),
        (("SharedMemory",), {"name": "mm_numpy_test"}, ValueError, "same shared memory name"),
        (("Aligned",), {"alignment": 3}, ValueError, "power of two"),
        (("CMalloc",), {"colour": "red"}, TypeError, "colour"),
        ((5,), {}, TypeError, "str"),
        ((None,), {}, TypeError, "None"),
    ]
    mnp.set_allocator("PyAlloc")
    for args, options, exc, words in cases:
        with pytest.raises(exc, match=words):
            mnp.allocator(*args, **options)
        if args != (None,):                      # set_allocator(None): the default
            with pytest.raises(exc, match=words):
                mnp.set_allocator(*args, **options)
        assert mnp.get_allocator() == "PyAlloc", args


def test_mapped_file_in_w_plus_mode_makes_one_array(tmp_path):
    path = tmp_path / "array.bin"
    with mnp.allocator("MappedFile", path=str(path), mode="w+"):
        a = np.zeros(4096, dtype=np.uint8)
    a[:5] = [1, 2, 3, 4, 5]
    assert mnp.allocator_of(a) == "MappedFile"
    del a
    assert path.read_bytes()[:5] == bytes([1, 2, 3, 4, 5])


def test_handler_capsule_is_numpys_kind():
    capsule = mnp.handler("CMalloc")
    assert type(capsule).__name__ == "PyCapsule"
    assert memmanager._core._numpy_handler_allocator(capsule).name == "CMalloc"
    assert memmanager._core._numpy_handler_allocator(object()) is None
    with pytest.raises(TypeError):
        memmanager._core._numpy_set_handler(object())
    with pytest.raises(TypeError):
        memmanager._core._numpy_handler("CMalloc", [("a", 1)])


def test_options_dict_is_copied():
    options = {"alignment": 4096}
    chosen = mnp.allocator("Aligned", **options)
    options["alignment"] = 3
    with chosen:
        a = np.ones(10)
    assert a.ctypes.data % 4096 == 0


# --------------------------------------------------------------------------
# In a fresh interpreter

def run_python(code, **env):
    environment = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, env=environment, timeout=120)


def test_importing_memmanager_numpy_does_not_import_numpy():
    result = run_python("""
        import sys, memmanager, memmanager.numpy
        print("numpy" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_debug_guards_catch_an_overrun_of_an_array():
    result = run_python("""
        import warnings, numpy as np, memmanager.numpy as mnp
        from numpy.lib.stride_tricks import as_strided
        with mnp.allocator("CMalloc"):
            a = np.zeros(100, dtype=np.uint8)
        as_strided(a, shape=(110,))[105] = 7        # past the end
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del a
        print([str(w.message) for w in caught])
    """, MEMMANAGER_DEBUG="1")
    assert result.returncode == 0, result.stderr
    assert "guard" in result.stdout, result.stdout + result.stderr


def test_arrays_alive_at_exit_are_fine():
    result = run_python("""
        import numpy as np, memmanager, memmanager.numpy as mnp
        memmanager.register_allocator("ExitPool", memmanager.Pool("CMalloc"))
        mnp.set_allocator("ExitPool")
        kept = [np.ones(n) for n in range(1, 200)]
        class Late:
            def __del__(self):
                np.ones(10)          # allocates during shutdown
        late = Late()
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert "Traceback" not in result.stderr
