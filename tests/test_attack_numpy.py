"""Attacks on memmanager.numpy (NumPy's own arrays through memmanager
allocators: memmanager/numpy.py, src/interop/numpy_handler.c).

Each test is an attack: those that found a bug say what broke; the rest
held and stay as regression tests, each asserting what a break would
change.  Whatever could hang, crash or leave the process odd runs in a
child interpreter (run_child) with a timeout.
"""

import gc
import os
import pickle
import subprocess
import sys
import sysconfig
import textwrap
import threading
import tracemalloc
import uuid

import pytest

np = pytest.importorskip("numpy")

import memmanager  # noqa: E402
import memmanager.numpy as mn  # noqa: E402
from memmanager import Buffer, Limit, Log, Pool, _core  # noqa: E402

from test_plugins_c import canary, healthy  # noqa: E402,F401  (the C plug-in fixture)


def fresh(prefix="Np"):
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def register(impl, prefix="Np"):
    name = fresh(prefix)
    memmanager.register_allocator(name, impl)
    return name


def array_stats(name):
    return memmanager.numpy.stats().get(name, {"live_arrays": 0, "live_array_bytes": 0,
                                               "array_allocations": 0,
                                               "array_allocated_bytes": 0})


def run_child(code, env=None, timeout=120):
    """code in a fresh interpreter; (returncode, stdout + stderr)."""
    child_env = dict(os.environ)
    child_env.update(env or {})
    result = subprocess.run([sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=timeout, env=child_env)
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(autouse=True)
def _default_handler_after():
    """Every test leaves NumPy's default handler installed, and no block behind."""
    mn.set_allocator(None)
    yield
    mn.set_allocator(None)
    gc.collect()


# --------------------------------------------------------------------------
# Bugs found
# --------------------------------------------------------------------------

def test_python_code_inside_an_allocation_cannot_overfill_the_table():
    """BROKE: route_allocate reserved room in the block table before
    allocating and inserted after.  An allocation that runs Python code
    (a SharedMemory's first block asks memmanager._shm_tracker.command()
    for the tracker's command line) or releases the GIL lets other
    allocations take that room; 70 nested ones filled the 64-entry table
    and the next insert probed forever, with the GIL held (a hang)."""
    code = """
        import numpy as np, memmanager, memmanager.numpy as mn, memmanager._shm_tracker as t
        real = t.command
        keep, depth = [], [0]
        def command():
            depth[0] += 1
            if depth[0] <= 70:
                keep.append(np.empty(8))      # nested: same handler, same gap
            return real()
        t.command = command
        with mn.allocator("SharedMemory"):
            a = np.empty(8)
        assert memmanager._core._numpy_live_blocks() == len(keep) + 1 == 71, len(keep)
        a[:] = 1
        for k in keep:
            k[:] = 2
        del a, keep, k
        assert memmanager._core._numpy_live_blocks() == 0
        print("ok")
    """
    rc, out = run_child(code, env={"MEMMANAGER_SHM_TRACKER": "1"}, timeout=90)
    assert rc == 0 and "ok" in out, out


def test_resize_of_an_array_resized_during_its_own_resize():
    """BROKE: handler_realloc found the old block, allocated the new one
    and then copied from the old address without checking it was still
    the same block.  A SharedMemory block of 1 MiB or more is reserved
    without the GIL, and another thread resized the same array meanwhile
    (NumPy's own handler never lets that happen): the old block was
    unmapped by then, so the copy read unmapped memory (SIGSEGV), or
    another array's bytes, and the other thread's block leaked."""
    code = """
        import threading, warnings, numpy as np, memmanager, memmanager.numpy as mn
        warnings.simplefilter("error")
        with mn.allocator("SharedMemory"):
            a = np.ones(16)
        go, stop = threading.Event(), threading.Event()
        def other():
            go.wait()
            n = 0
            while not stop.is_set():
                n += 1
                a.resize(4096 + n % 2, refcheck=False)   # small: keeps the GIL
                # (No a[:] = 5 here: NumPy fills a large array without the
                # GIL, and a resize with refcheck=False frees the block it
                # fills under NumPy's own handler too.)
        t = threading.Thread(target=other)
        t.start()
        for i in range(40):
            go.set()
            try:
                a.resize(2 << 20, refcheck=False)         # 16 MiB: reserved without the GIL
            except MemoryError:
                pass
        stop.set()
        t.join()
        assert a.shape in ((4096,), (4097,), (2 << 20,)), a.shape
        assert memmanager._core._numpy_live_blocks() == 1
        del a
        assert memmanager._core._numpy_live_blocks() == 0
        print("ok")
    """
    rc, out = run_child(code, env={"MEMMANAGER_SHM_TRACKER": "1"}, timeout=120)
    assert rc == 0 and "ok" in out, out


def test_concurrent_resizes_never_move_another_arrays_block():
    """BROKE: realloc freed the old block through the allocator's general
    path, which releases the GIL for a block of 1 MiB or more; until
    NumPy stores the new address the array still points at the old one.
    A second thread resizing the same array then, after a third had
    mapped a new array at that address, moved the third thread's block:
    its array read unmapped or foreign bytes ("bad" below), NumPy's free
    of it was reported as foreign and a block leaked.  The old block is
    now freed with the GIL kept.  (A race: a broken build may pass by
    luck, a working one never fails.)"""
    code = """
        import threading, numpy as np, memmanager, memmanager.numpy as mn
        h = mn.handler("SharedMemory")
        memmanager._core._numpy_set_handler(h)
        a = np.ones(16)
        stop = threading.Event()
        bad = []
        def resizer(sizes):
            for i in range(300):
                try:
                    a.resize(sizes[i % 2], refcheck=False)
                except MemoryError:
                    pass
        def other(tag):
            memmanager._core._numpy_set_handler(h)
            while not stop.is_set():
                x = np.full(300_000, tag, np.int64)
                y = np.full(300_000, tag + 1, np.int64)
                if not ((x == tag).all() and (y == tag + 1).all()):
                    bad.append(tag)
                del x, y
        resizers = [threading.Thread(target=resizer, args=(s,))
                    for s in ([300_000, 400_000], [350_000, 450_000])]
        others = [threading.Thread(target=other, args=(t,)) for t in (7, 100)]
        for t in resizers + others:
            t.start()
        for t in resizers:
            t.join()
        stop.set()
        for t in others:
            t.join()
        assert not bad, bad
        assert memmanager._core._numpy_live_blocks() == 1
        del a
        assert memmanager._core._numpy_live_blocks() == 0
        print("ok")
    """
    rc, out = run_child(code, env={"MEMMANAGER_SHM_TRACKER": "1"}, timeout=300)
    assert rc == 0 and "ok" in out and "did not allocate" not in out, out


def test_a_path_like_is_read_once_when_the_handler_is_made(tmp_path):
    """BROKE: a MappedFile path given as an os.PathLike was kept, and
    MappedFile called its __fspath__ at every allocation, inside NumPy's:
    Python code there could allocate from the same handler (filling the
    table: a hang) or resize the array being allocated (a read of
    unmapped memory).  Now __fspath__ runs once, when the handler is
    made."""
    calls = []

    class Path:
        def __fspath__(self):
            calls.append(1)
            if len(calls) > 1:
                np.empty(8)   # must never run inside an allocation
            return str(tmp_path / f"f{len(calls)}")

    h = mn.allocator("MappedFile", path=Path(), mode="w+")
    assert len(calls) == 1
    with h:
        a = np.zeros(100)          # zeros: ones() would make a 0-d temporary too
    a.fill(1)
    assert len(calls) == 1 and (a == 1).all()
    assert os.path.getsize(tmp_path / "f1") >= a.nbytes
    with h:
        # one live array per path: the second is refused, nothing runs
        with pytest.raises(MemoryError):
            np.zeros(100)
    assert len(calls) == 1
    del a
    with h:
        b = np.zeros(10)           # the path is free again
    assert len(calls) == 1 and mn.allocator_of(b) == "MappedFile"
    del b


def test_a_path_like_that_fails_is_reported_when_the_handler_is_made():
    class Bad:
        def __fspath__(self):
            raise OSError("no path today")

    with pytest.raises(OSError, match="no path today"):
        mn.handler("MappedFile", path=Bad(), mode="w+")
    with pytest.raises(TypeError):
        mn.handler("MappedFile", path=12, mode="w+")


def test_a_long_allocator_name_is_refused_not_cut():
    """BROKE: the handler's name is "memmanager:" + the allocator's name in
    NumPy's 127 bytes; a longer name was cut, so allocator_of() returned
    another name, and a cut inside a UTF-8 character made NumPy's own
    get_handler_name(a) (and allocator_of) raise UnicodeDecodeError."""
    fits = register(Pool("CMalloc"), "N" * 105)         # 115 bytes: the most that fits
    assert len(fits) == 115
    with mn.allocator(fits):
        a = np.ones(3)
    assert mn.allocator_of(a) == fits
    del a
    for name in ("N" * 116, "\u00e9" * 60, "x" + "\u20ac" * 40):
        memmanager.register_allocator(name, Pool("CMalloc"))
        with pytest.raises(ValueError, match="shorter name"):
            mn.set_allocator(name)
        with pytest.raises(ValueError, match="shorter name"):
            mn.allocator(name)
        assert mn.get_allocator() is None
        assert array_stats(name)["array_allocations"] == 0


def test_a_multibyte_name_that_fits_reads_back():
    name = register(Pool("CMalloc"), "\u00e9" * 50)
    with mn.allocator(name):
        a = np.ones(3)
    assert mn.allocator_of(a) == name
    assert mn.get_allocator() is None


# --------------------------------------------------------------------------
# Attacks that held
# --------------------------------------------------------------------------

def test_pool_zeros_are_zero_after_recycling():
    name = register(Pool("CMalloc"))
    with mn.allocator(name):
        for size in (8, 1000, 4096, (1 << 20) + 8, 3 << 20):
            for _ in range(3):
                a = np.empty(size, np.uint8)
                a[:] = 0xAB
                del a
                z = np.zeros(size, np.uint8)
                assert not z.any()
                del z
    assert array_stats(name)["live_arrays"] == 0


@pytest.mark.parametrize("upstream", ["CMalloc", "PyAlloc", "Pool"])
def test_debug_guards_and_zeros_in_a_child(upstream):
    code = f"""
        import numpy as np, memmanager, memmanager.numpy as mn, warnings
        warnings.simplefilter("error")
        name = "{upstream}"
        if name == "Pool":
            memmanager.register_allocator("P", memmanager.Pool("CMalloc"))
            name = "P"
        with mn.allocator(name):
            for size in (1, 100, 5000, (1 << 20) + 1):
                a = np.empty(size, np.uint8); a[:] = 0xCD; del a
                z = np.zeros(size, np.uint8); assert not z.any(); del z
            a = np.arange(10.0)
            a.resize(100000, refcheck=False)
            assert (a[:10] == np.arange(10.0)).all() and not a[10:].any()
            a.resize(3, refcheck=False)
            s = np.fromiter(("x" * (i % 50) for i in range(3000)), dtype="U50")
            c = np.concatenate([np.array(["y" * i]) for i in range(40)])
        assert list(a) == [0.0, 1.0, 2.0] and len(s[-1]) == 2999 % 50 and c[-1] == "y" * 39
        del a, s, c
        assert memmanager._core._numpy_live_blocks() == 0
        print("ok")
    """
    rc, out = run_child(code, env={"MEMMANAGER_DEBUG": "1"})
    assert rc == 0 and "ok" in out, out


def test_limit_exceeded_inside_numpy_keeps_the_budget():
    name = register(Limit("CMalloc", 10_000))
    with mn.allocator(name):
        a = np.empty(500)                       # 4000 bytes
        with pytest.raises(MemoryError):
            np.empty(2000)                      # 16000: over
        b = np.empty(750)                       # 6000: exactly the rest
        with pytest.raises(MemoryError):
            np.empty(1)
        with pytest.raises(MemoryError):
            a.resize(600, refcheck=False)       # needs old + new at once
        assert a.shape == (500,)
        del a, b
        c = np.empty(1250)                      # the whole budget again
    assert array_stats(name)["live_array_bytes"] == 10_000
    del c
    assert array_stats(name)["live_arrays"] == 0


def test_arrays_go_back_to_their_allocator_after_reregistration(canary):
    first = canary.capsule()
    name = register(first, "Canary")
    before = canary.counters()
    with mn.allocator(name):
        arrays = [np.ones(n + 1) for n in range(50)]
        arrays[3].resize(10000, refcheck=False)
    assert canary.counters()["live_blocks"] == before["live_blocks"] + 50
    memmanager.register_allocator(name, Pool("PyAlloc"))     # the name now means another
    with mn.allocator(name):
        other = np.ones(10)
    assert canary.counters()["live_blocks"] == before["live_blocks"] + 50
    del arrays
    gc.collect()
    healthy(canary.counters(), before)
    del other


def test_c_plugin_sees_every_free_with_its_size(canary):
    name = register(canary.capsule(), "Canary")
    before = canary.counters()
    with mn.allocator(name):
        a = np.zeros((100, 100))
        b = a + 1
        a.resize((200, 200), refcheck=False)
        s = np.fromiter(range(100000), dtype=np.int64)
        c = np.concatenate([b, b])
    assert canary.counters()["live_blocks"] == before["live_blocks"] + 4
    del a, b, s, c
    healthy(canary.counters(), before)


def test_adaptor_object_dropped_while_arrays_live():
    name = fresh("Dropped")
    memmanager.register_allocator(name, Pool("CMalloc"))
    with mn.allocator(name):
        arrays = [np.full(1000, i) for i in range(20)]
    memmanager.register_allocator(name, Limit("PyAlloc", 100))   # last reference to the Pool
    gc.collect()
    assert all((a == i).all() for i, a in enumerate(arrays))
    del arrays
    assert array_stats(name)["live_arrays"] == 0


@pytest.mark.parametrize("wrap", ["plain", "Pool", "Limit", "Log"])
def test_python_plugin_refused_also_underneath(tmp_path, wrap):
    class Handle:
        def __init__(self, size):
            self.buf = bytearray(size)

    class Py:
        def malloc(self, num_items, item_size, init_byte, options):
            return Handle(num_items * item_size)

        def free(self, address):
            pass

        def get_buffer_address(self, handle):
            import ctypes
            return ctypes.addressof(ctypes.c_char.from_buffer(handle.buf))

    name = register(Py(), "Py")
    if wrap == "Pool":
        name = register(Pool(name))
    elif wrap == "Limit":
        name = register(Limit(name, 1 << 20))
    elif wrap == "Log":
        name = register(Log(name, str(tmp_path / "log")))
    with pytest.raises(ValueError, match="Python"):
        mn.set_allocator(name)
    assert mn.get_allocator() is None


@pytest.mark.parametrize("name, options", [
    ("Borrowed", {}), ("CudaDevice", {}), ("MappedFile", {"mode": "r+", "path": "x"}),
    ("SharedMemory", {"name": "mm_attack_np"}),
])
def test_unusable_allocators_refused(name, options):
    with pytest.raises((ValueError, TypeError)):
        mn.handler(name, **options)


def test_tracemalloc_sees_each_array_once_in_numpys_domain():
    pool_py = register(Pool("PyAlloc"))
    limit_py = register(Limit("PyAlloc", 1 << 30))
    pool_c = register(Pool("CMalloc"))
    domain = np.lib.tracemalloc_domain
    for name in ("PyAlloc", "CMalloc", "Aligned", "Mmap", pool_py, limit_py, pool_c):
        for size in (100, 1_000_000):
            tracemalloc.start()
            try:
                with mn.allocator(name):
                    a = np.ones(size, np.uint8)
                    a.resize(size * 2, refcheck=False)
                by_domain = {}
                for trace in tracemalloc.take_snapshot().traces._traces:
                    by_domain[trace[0]] = by_domain.get(trace[0], 0) + trace[1]
                big = {d: n for d, n in by_domain.items() if n >= size * 2}
                if name == pool_py:
                    big.pop(0, None)   # its chunks, traced by PyMem (test_attack_numpy2)
                assert big == {domain: size * 2} or (
                    size == 100 and by_domain.get(domain) == 200), (name, size, by_domain)
                assert by_domain.get(memmanager.TRACEMALLOC_DOMAIN, 0) == 0, (name, by_domain)
                del a
                after = tracemalloc.take_snapshot().traces._traces
                assert not [t for t in after if t[0] == domain and t[1] == size * 2]
            finally:
                tracemalloc.stop()


def test_statistics_scopes_around_arrays_and_frees_in_other_threads():
    name = register(Pool("CMalloc"))
    with memmanager.statistics() as outer:
        with mn.allocator(name):
            with memmanager.statistics() as inner:
                a = np.ones(1000)
            b = np.ones(500)
        # NumPy makes and frees small temporaries too (the 1 of ones())
        assert inner[name].live_buffers == 1 and inner[name].live_bytes == 8000
        done = []
        t = threading.Thread(target=lambda: done.append(a.sum()))
        t.start()
        t.join()
        holder = [a, b]
        del a, b
        t = threading.Thread(target=holder.clear)
        t.start()
        t.join()
        assert outer[name].allocations == outer[name].frees >= 2
        assert outer[name].live_bytes == 0 and outer[name].live_buffers == 0
        assert outer[name].allocated_bytes == outer[name].freed_bytes >= 12000
    assert inner[name].live_bytes == 8000   # frozen at exit


def test_threads_share_one_handler():
    name = register(Log(register(Pool("CMalloc")), os.devnull))
    h = mn.handler(name)
    errors = []

    def work(seed):
        try:
            _core._numpy_set_handler(h)
            rng = np.random.default_rng(seed)
            keep = []
            for i in range(400):
                n = int(rng.integers(1, 1 << int(rng.integers(1, 21))))
                a = np.zeros(n, np.uint8)
                assert not a.any()
                a[:] = seed
                keep.append(a)
                if len(keep) > 10:
                    gone = keep.pop(int(rng.integers(0, len(keep))))
                    assert (gone == seed).all()
                if i % 5 == 0:
                    a.resize(n * 2 + 1, refcheck=False)
                    assert (a[:n] == seed).all() and not a[n:].any()
                    a[:] = seed
        except BaseException as error:   # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    gc.collect()
    assert array_stats(name)["live_arrays"] <= 1   # NumPy's random module keeps one


def test_fork_with_live_arrays():
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    code = """
        import os, gc, numpy as np, memmanager, memmanager.numpy as mn
        memmanager.register_allocator("P", memmanager.Pool("CMalloc"))
        with mn.allocator("P"):
            arrays = [np.full(1000, i) for i in range(10)]
        pid = os.fork()
        if pid == 0:
            ok = all((a == i).all() for i, a in enumerate(arrays))
            del arrays
            with mn.allocator("P"):
                z = np.zeros(5000)
            ok = ok and not z.any() and memmanager._core._numpy_live_blocks() == 1
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        del arrays
        assert memmanager._core._numpy_live_blocks() == 0
        print("ok", os.waitstatus_to_exitcode(status))
    """
    rc, out = run_child(code)
    assert rc == 0 and "ok 0" in out, out


@pytest.mark.parametrize("kind", ["Pool", "Log", "Limit"])
@pytest.mark.parametrize("teardown", ["exit", "module-dropped"])
def test_shutdown_with_live_arrays(tmp_path, kind, teardown):
    code = f"""
        import sys, gc, numpy as np, memmanager, memmanager.numpy as mn
        from memmanager import Pool, Log, Limit
        impl = {{"Pool": lambda: Pool("CMalloc"), "Log": lambda: Log("CMalloc", {str(tmp_path / "log")!r}),
                 "Limit": lambda: Limit("Aligned", 1 << 30)}}["{kind}"]()
        memmanager.register_allocator("A", impl)
        del impl
        mn.set_allocator("A")
        keep = [np.ones(i * 100) for i in range(1, 30)]
        big = np.zeros(1 << 21)
        class Late:
            def __del__(self):
                x = np.ones(1000)
                x.resize(5000, refcheck=False)
        late = Late()
        cycle = [np.ones(10)]
        cycle.append(cycle)
        if "{teardown}" == "module-dropped":
            for m in [m for m in sys.modules if m.startswith("memmanager")]:
                del sys.modules[m]
            del memmanager, mn, Pool, Log, Limit
            gc.collect()
        print("ok")
    """
    rc, out = run_child(code, env={"PYTHONDEVMODE": "1"})
    assert rc == 0 and "ok" in out and "Warning" not in out, out


def test_hostile_bool_mid_parse():
    """__bool__ of an option that installs another handler and registers
    names: the handler made is the one asked for, and keeps working."""
    other = register(Pool("CMalloc"))

    class Evil:
        def __bool__(self):
            mn.set_allocator(other)
            memmanager.register_allocator(fresh("Mid"), Pool("PyAlloc"))
            gc.collect()
            return False

    with mn.allocator("Aligned", alignment=4096, hugepages=Evil()):
        a = np.ones(1000)
    assert mn.allocator_of(a) == "Aligned"
    assert a.ctypes.data % 4096 == 0
    assert mn.get_allocator() == other      # what __index__ set, put back by exit
    mn.set_allocator(None)
    del a

    class Fails:
        def __bool__(self):
            raise RuntimeError("no")

    with pytest.raises(RuntimeError, match="no"):
        mn.handler("Aligned", hugepages=Fails())


def test_options_dict_changed_later_changes_nothing():
    options = {"alignment": 4096}
    h = _core._numpy_handler("Aligned", options)
    options["alignment"] = 8
    options["bogus"] = 1
    _core._numpy_set_handler(h)
    a = np.ones(100)
    _core._numpy_set_handler(None)
    assert a.ctypes.data % 4096 == 0
    del a, h


@pytest.mark.parametrize("args, error", [
    ((1, None), TypeError), ((b"CMalloc", None), TypeError), ((None, None), TypeError),
    (("CMalloc", {1: 2}), TypeError), (("CMalloc", {"zzz": 1}), TypeError),
    (("CMalloc", []), TypeError), (("Nope" + uuid.uuid4().hex, None), memmanager.UnknownAllocatorError),
])
def test_private_handler_odd_arguments(args, error):
    with pytest.raises(error):
        _core._numpy_handler(*args)
    with pytest.raises(TypeError):
        _core._numpy_handler("CMalloc")


def test_private_set_and_query_odd_arguments():
    mn.get_allocator()   # bound
    default = _core._numpy_get_handler()
    for bad in (1, "mem_handler", object(), memmanager.TRACEMALLOC_DOMAIN):
        with pytest.raises(TypeError):
            _core._numpy_set_handler(bad)
        assert _core._numpy_handler_allocator(bad) is None
    assert _core._numpy_handler_allocator(default) is None
    h = _core._numpy_handler("CMalloc", None)
    assert _core._numpy_handler_allocator(h).name == "CMalloc"
    assert _core._numpy_set_handler(h) is default
    assert _core._numpy_set_handler(default) is h
    _core._numpy_bind()          # again: nothing changes
    assert _core._numpy_get_handler() is default


def test_allocator_context_misuse():
    a = mn.allocator("CMalloc")
    with pytest.raises(RuntimeError):
        a.__exit__(None, None, None)
    with a:
        with a:
            assert mn.get_allocator() == "CMalloc"
        assert mn.get_allocator() == "CMalloc"
    assert mn.get_allocator() is None


def test_pickle_getsizeof_consume_and_referents():
    name = register(Pool("CMalloc"))
    with mn.allocator(name):
        a = np.arange(1000.0)
        b = pickle.loads(pickle.dumps(a)).copy()
        state = a.__reduce__()[2]
    assert mn.allocator_of(b) == name and (a == b).all()
    c = np.empty(0)
    c.__setstate__(state)         # frees nothing of ours, allocates under the default
    assert (c == a).all()
    assert sys.getsizeof(a) >= a.nbytes
    buf = Buffer.consume(a, a.nbytes, 1, delayed_gc=False)   # adopts a's memory
    del a
    gc.collect()
    assert bytes(buf[8:16]) == np.float64(1.0).tobytes()
    assert array_stats(name)["live_arrays"] == 2           # a's data, kept by buf
    a = None
    h = mn.handler(name)
    assert gc.get_referents(h) == []
    del a, b, c, buf
    gc.collect()
    assert array_stats(name)["live_arrays"] == 0


def test_zero_size_and_overflowing_requests():
    name = register(Limit("CMalloc", 1 << 20))
    with mn.allocator(name):
        e = np.empty(0)
        z = np.zeros((0, 5))
        assert array_stats(name)["live_arrays"] == 2
        with pytest.raises((MemoryError, ValueError)):
            np.zeros(1 << 62, np.uint8)
        with pytest.raises((MemoryError, ValueError)):
            np.empty(1 << 62, np.uint8)
    del e, z
    assert array_stats(name)["live_arrays"] == 0


SUBINTERPRETER_CODE = """
import memmanager
C = memmanager._core
try:
    C._numpy_set_handler(C._numpy_handler("CMalloc", None))
    C._numpy_get_handler()
except Exception as e:
    print("refused", type(e).__name__)
"""


def test_subinterpreter_uses_do_not_crash():
    if sys.version_info >= (3, 13):
        pytest.skip("_xxsubinterpreters is gone")
    code = f"""
        import _xxsubinterpreters as si, numpy as np, memmanager, memmanager.numpy as mn
        mn.get_allocator()
        i = si.create()
        si.run_string(i, {SUBINTERPRETER_CODE!r})
        si.destroy(i)
        with mn.allocator("CMalloc"):
            a = np.ones(3)
        assert mn.allocator_of(a) == "CMalloc" and mn.get_allocator() is None
        print("ok")
    """
    rc, out = run_child(code)
    assert rc == 0 and "ok" in out, out
