"""A second round of attacks on memmanager.numpy (memmanager/numpy.py,
src/interop/numpy_handler.c), after tests/test_attack_numpy.py's.

Each test is an attack: those that found a bug say what broke; the rest
held and stay as regression tests, each asserting what a break would
change.  Whatever could hang, crash or leave the process odd runs in a
child interpreter (run_child) with a timeout.
"""

import gc
import io
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import tracemalloc

import pytest

np = pytest.importorskip("numpy")

import memmanager  # noqa: E402
import memmanager.numpy as mn  # noqa: E402
from memmanager import Buffer, Limit, Log, Pool, _core  # noqa: E402

from test_attack_numpy import array_stats, register  # noqa: E402
from test_plugins_c import build_plugin  # noqa: E402

FLAKY_SOURCE = os.path.join(os.path.dirname(__file__), "canary", "flaky_allocator.c")


def run_child(code, env=None, timeout=120):
    """code in a fresh interpreter; (returncode, stdout + stderr)."""
    child_env = dict(os.environ)
    child_env.update(env or {})
    result = subprocess.run([sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=timeout, env=child_env)
    return result.returncode, result.stdout + result.stderr


def traced_by_domain(minimum=0):
    """{domain: bytes} of tracemalloc's traces of at least `minimum` bytes."""
    out = {}
    for trace in tracemalloc.take_snapshot().traces._traces:
        if trace[1] >= minimum:
            out[trace[0]] = out.get(trace[0], 0) + trace[1]
    return out


@pytest.fixture(autouse=True)
def _default_handler_after():
    """Every test leaves NumPy's default handler installed."""
    mn.set_allocator(None)
    yield
    mn.set_allocator(None)


@pytest.fixture(scope="module")
def flaky(tmp_path_factory):
    """The _flaky plug-in (tests/canary/flaky_allocator.c), built here."""
    module = build_plugin(FLAKY_SOURCE, "_flaky", tmp_path_factory.mktemp("flaky"))
    yield module
    module.succeed(-1)


# ---------------------------------------------------------------------------
# tracemalloc
# ---------------------------------------------------------------------------

def test_a_pool_over_pyalloc_keeps_its_chunk_traced():
    """BROKE: route_allocate took every block of an allocator with
    uses_pymem out of Python's domain 0 (mm_pyalloc_untrace), a Pool over
    PyAlloc's included (a Pool inherits uses_pymem).  A Pool's blocks are
    pieces of its chunks, not PyMem blocks: the first array carved at a
    chunk's start untracked the whole chunk (1 MiB gone from tracemalloc,
    never traced again), and a block of 2 MiB or more had the 8 bytes
    before it (another block's data) read as a PyMem address to untrack."""
    tracemalloc.start()
    try:
        name = register(Pool("PyAlloc"))
        with mn.allocator(name):
            a = np.empty(100, np.uint8)
        held = traced_by_domain(1 << 20).get(0, 0)
        assert held >= 1 << 20, traced_by_domain(1 << 20)   # the chunk
        assert traced_by_domain().get(np.lib.tracemalloc_domain, 0) >= 100
        # A Buffer from the same kind of pool sees its chunk traced too.
        other = register(Pool("PyAlloc"))
        b = Buffer(100, 1, allocator=other)
        assert traced_by_domain(1 << 20).get(0, 0) >= held + (1 << 20)
        del a, b
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kind", ["Limit", "Log"])
def test_an_adaptor_over_pyalloc_under_debug_is_traced_once(kind):
    """BROKE: under MEMMANAGER_DEBUG=1 an adaptor over PyAlloc is guarded
    (PyAlloc itself is not: Python's debug hooks guard it), so its blocks
    carry guard bytes, and mm_pyalloc_untrace left every guarded block
    traced in domain 0: each array was traced twice, in domain 0 (its
    PyMem block, guards and a huge block's alignment padding included)
    and in NumPy's domain."""
    code = f"""
        import tracemalloc, numpy as np, memmanager, memmanager.numpy as mn
        impl = memmanager.{kind}("PyAlloc", {"1 << 30" if kind == "Limit" else "'/dev/null'"})
        memmanager.register_allocator("A", impl)
        tracemalloc.start()
        for n in (100_000, 3 << 20):
            with mn.allocator("A"):
                a = np.empty(n, np.uint8)
            d = {{}}
            for t in tracemalloc.take_snapshot().traces._traces:
                if t[1] >= n:
                    d[t[0]] = d.get(t[0], 0) + t[1]
            assert d == {{np.lib.tracemalloc_domain: n}}, (n, d)
            del a
        print("ok")
    """
    rc, out = run_child(code, env={"MEMMANAGER_DEBUG": "1"})
    assert rc == 0 and "ok" in out, out


def test_every_kind_is_traced_once_in_numpys_domain(tmp_path):
    """Held: no other kind or adaptor chain traces an array elsewhere."""
    names = [("CMalloc", {}), ("Aligned", {"alignment": 4096}), ("Mmap", {}),
             ("SharedMemory", {}), ("MappedFile", {"mode": "w+", "path": str(tmp_path / "f")})]
    for up in ("CMalloc", "Mmap", "PyAlloc"):
        # (a Pool over PyAlloc has its chunks traced in domain 0: the test above)
        names.append((register(Log(register(Limit(up, 1 << 30)), os.devnull)), {}))
        if up != "PyAlloc":
            pool = register(Pool(up))
            names += [(pool, {}), (register(Limit(pool, 1 << 30)), {})]
    domain = np.lib.tracemalloc_domain
    tracemalloc.start()
    try:
        for name, options in names:
            for n in (70_000, 3 << 20):
                with mn.allocator(name, **options):
                    a = np.zeros(n, np.uint8)
                big = traced_by_domain(n)
                assert big == {domain: n}, (name, n, big)
                del a
                assert domain not in traced_by_domain(n), (name, n)
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------------
# C plug-ins that fail, and NumPy's zeros through calloc
# ---------------------------------------------------------------------------

def test_a_plugin_whose_malloc_fails_leaves_nothing_behind(flaky):
    """Held: a NULL from the plug-in (the direct path below 1 MiB, the
    general one above) is NumPy's MemoryError; nothing is counted, a Limit
    over the plug-in gets its budget back, and a resize that fails keeps
    the old block and its bytes."""
    plugin = register(flaky.capsule(), "Flaky")
    limit = Limit(plugin, 1 << 30)
    over = register(limit)
    for name in (plugin, over):
        before = (array_stats(name), memmanager.stats().get(name), flaky.counters()["live_blocks"],
                  _core._numpy_live_blocks())
        with mn.allocator(name):
            for n in (10, 1000, (1 << 20) + 1, 3 << 20):
                flaky.succeed(0)
                for make in (np.empty, np.zeros, np.ones):
                    with pytest.raises(MemoryError):
                        make(n, np.uint8)
                flaky.succeed(-1)
                a = np.full(n, 7, np.uint8)
                flaky.succeed(0)
                with pytest.raises(MemoryError):
                    a.resize(n * 2, refcheck=False)
                flaky.succeed(-1)
                assert a.shape == (n,) and (a == 7).all()
                assert limit.used == (n if name == over else 0)
                del a
        assert (array_stats(name), memmanager.stats().get(name), flaky.counters()["live_blocks"],
                _core._numpy_live_blocks())[2:] == before[2:]
        assert array_stats(name)["live_arrays"] == before[0]["live_arrays"]
        assert limit.used == 0
    assert flaky.counters()["failures"] > 0


def test_numpy_zeros_reach_the_plugins_calloc(flaky):
    """Held: numpy.zeros (and empty of object dtype) come from the
    plug-in's calloc, at every size; numpy.empty from its malloc."""
    name = register(flaky.capsule(), "Flaky")
    with mn.allocator(name):
        for n in (1, 4096, (1 << 20) + 1, 5 << 20):
            c = flaky.counters()
            z = np.zeros(n, np.uint8)
            o = np.empty(n // 8 + 1, object)
            after = flaky.counters()
            assert after["callocs"] - c["callocs"] == 2 and after["mallocs"] == c["mallocs"], n
            e = np.empty(n, np.uint8)
            assert flaky.counters()["mallocs"] == after["mallocs"] + 1
            assert flaky.counters()["callocs"] == after["callocs"]
            assert not z.any() and all(x is None for x in o[:100])
            del z, o, e
    assert array_stats(name)["live_arrays"] == 0
    assert flaky.counters()["live_blocks"] == 0 and flaky.counters()["live_bytes"] == 0


# ---------------------------------------------------------------------------
# The context manager shared by threads and tasks
# ---------------------------------------------------------------------------

def test_one_allocator_object_entered_by_two_threads():
    """BROKE: allocator() kept the handlers its enters found on one list
    per object, shared by every thread: thread A (which had chosen
    Aligned) entered, thread B entered, A exited and got B's previous
    handler (NumPy's default), B exited and got A's (Aligned).  Both
    threads went on allocating from the wrong allocator.  A module-level
    `with budget:` used by worker threads does exactly this."""
    shared = mn.allocator("CMalloc")
    got = {}
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def first():
        mn.set_allocator("Aligned")
        with shared:
            a_in.set()
            b_in.wait(30)
            got["A inside"] = mn.allocator_of(np.ones(10))
        a_out.set()
        got["A"] = mn.get_allocator(), mn.allocator_of(np.ones(10))

    def second():
        a_in.wait(30)
        with shared:
            b_in.set()
            a_out.wait(30)
            got["B inside"] = mn.allocator_of(np.ones(10))
        got["B"] = mn.get_allocator(), mn.allocator_of(np.ones(10))

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {"A inside": "CMalloc", "B inside": "CMalloc",
                   "A": ("Aligned", "Aligned"), "B": (None, None)}


def test_one_allocator_object_entered_by_two_asyncio_tasks():
    """BROKE (as above): two tasks of one thread, each in its own context,
    interleaving their `with shared:` blocks at an await, each got the
    other's previous handler back."""
    import asyncio

    shared = mn.allocator("CMalloc")
    res = {}

    async def main():
        entered, second_in = asyncio.Event(), asyncio.Event()

        async def t1():
            mn.set_allocator("Aligned")
            with shared:
                entered.set()
                await second_in.wait()
            res["t1"] = mn.get_allocator()

        async def t2():
            await entered.wait()
            with shared:
                second_in.set()
                for _ in range(3):
                    await asyncio.sleep(0)
            res["t2"] = mn.get_allocator()

        await asyncio.gather(t1(), t2())
        res["main"] = mn.get_allocator()

    asyncio.run(main())
    assert res == {"t1": "Aligned", "t2": None, "main": None}


def test_allocator_objects_nest_and_interleave_in_one_context():
    """Held (and kept by the fix): in one context each exit puts back the
    handler its own enter found, for nested, re-entered and interleaved
    objects; an exit without an enter is refused; making many objects
    leaves nothing behind in the context."""
    import contextvars

    a, b = mn.allocator("CMalloc"), mn.allocator("Aligned")
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)       # a's enter found the default
    assert mn.get_allocator() is None
    b.__exit__(None, None, None)       # b's found CMalloc
    assert mn.get_allocator() == "CMalloc"
    mn.set_allocator(None)
    with a:
        with b:
            with a:
                assert mn.get_allocator() == "CMalloc"
            assert mn.get_allocator() == "Aligned"
        assert mn.get_allocator() == "CMalloc"
    assert mn.get_allocator() is None
    with pytest.raises(RuntimeError):
        b.__exit__(None, None, None)
    size = len(contextvars.copy_context())
    for _ in range(200):
        with mn.allocator("CMalloc"):
            pass
    assert len(contextvars.copy_context()) <= size + 1


# ---------------------------------------------------------------------------
# Held: GPU host memory, exit, finalizers, NumPy's reallocating functions
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["CudaHost", "CudaManaged"])
def test_cuda_host_memory_under_the_fake_driver(fake_cuda, kind):
    """Arrays from CudaHost / CudaManaged, directly and through a Pool,
    go back to the driver; a refused driver allocation is NumPy's
    MemoryError with nothing counted; arrays made before _cuda_reset()
    (a new driver table) still free through the old one."""
    live = "host_live" if kind == "CudaHost" else "managed_live"
    base = fake_cuda.get(live)
    pool = Pool(kind)
    for name in (kind, register(pool)):
        with mn.allocator(name):
            a = np.ones(1000)
            z = np.zeros(3 << 18)
            a.resize(5000, refcheck=False)
            assert (a[:1000] == 1).all() and not z.any()
            fake_cuda.set("fail_next_host_alloc" if kind == "CudaHost" else "fail_next_managed_alloc", 1)
            before = array_stats(name)["live_arrays"]
            with pytest.raises(MemoryError):
                np.ones(4 << 20)
            assert array_stats(name)["live_arrays"] == before
        del a, z
    with mn.allocator(kind):
        kept = np.full(100, 3.0)
    memmanager._core._cuda_reset()
    with mn.allocator(kind):
        other = np.ones(100)
    assert (kept == 3.0).all()
    del kept, other
    pool.release_free()
    gc.collect()
    assert fake_cuda.get(live) == base
    assert fake_cuda.get("errors") == 0, fake_cuda.last_error()


def test_a_log_records_every_array_freed_at_exit(tmp_path):
    """Arrays NumPy frees during interpreter shutdown (globals, a cycle,
    one made by a finalizer, one by an atexit hook) each have their free
    line in the Log's file, with the size of their allocation."""
    path = tmp_path / "arrays.log"
    code = f"""
        import atexit, numpy as np, memmanager, memmanager.numpy as mn
        memmanager.register_allocator("P", memmanager.Pool("CMalloc"))
        memmanager.register_allocator("L", memmanager.Log("P", {str(path)!r}))
        mn.set_allocator("L")
        keep = [np.ones(i * 100 + 1) for i in range(50)]
        class Late:
            def __del__(self):
                global again
                again = np.ones(777)
        late = Late()
        cycle = [np.zeros(99)]
        cycle.append(cycle)
        big = np.empty(3 << 20, np.uint8)
        atexit.register(lambda: keep.append(np.ones(5)))
        print("ok")
    """
    rc, out = run_child(code)
    assert rc == 0 and "ok" in out, out
    live = {}
    events = 0
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue
        fields = line.split()
        events += 1
        if fields[3] == "a":
            assert fields[5] not in live
            live[fields[5]] = fields[4]
        else:
            assert live.pop(fields[5]) == fields[4], line
    assert events > 100 and not live, live


def test_object_array_items_that_allocate_and_switch_handlers_while_freed():
    """An object array's items whose __del__ switches the handler, makes
    and resizes arrays and collects, while the array is resized, copied
    and freed: every block goes back to its own allocator, the counts and
    the Limit come back to zero."""
    pool = register(Pool("CMalloc"))
    limit = Limit(pool, 1 << 28)
    capped = register(limit)
    kept = []

    class Item:
        def __del__(self):
            previous = mn.get_allocator()
            mn.set_allocator(capped)
            kept.append([np.ones(i + 1) for i in range(20)])
            grown = np.ones(10)
            grown.resize(100_000, refcheck=False)
            mn.set_allocator(previous)
            gc.collect()

    with mn.allocator(pool):
        o = np.empty(300, dtype=object)
        o[:] = [Item() for _ in range(300)]
        o.resize(1000, refcheck=False)
        copy = o[::2].copy()
        structured = np.zeros(50, dtype=[("a", "i4"), ("b", "O"), ("c", "f8", (3,))])
        structured["b"] = [Item() for _ in range(50)]
    del o, copy, structured
    gc.collect()
    assert len(kept) == 350 and limit.used > 0
    kept.clear()
    gc.collect()
    assert limit.used == 0
    assert array_stats(capped)["live_arrays"] == 0 and array_stats(pool)["live_arrays"] == 0


def test_numpys_reallocating_functions_under_limit_over_pool_over_aligned():
    """fromiter without count, loadtxt and genfromtxt from a StringIO,
    np.char, unique, ufunc.at, append, structured dtypes: all under a
    Limit over a Pool over Aligned, which gets its budget back."""
    pool = register(Pool("Aligned"))
    limit = Limit(pool, 1 << 30)
    name = register(limit)
    np.unique(np.arange(10))   # NumPy caches two small arrays on first use
    for _ in range(2):
        with mn.allocator(name):
            f = np.fromiter((i for i in range(100_000)), dtype=np.int64)
            t = np.loadtxt(io.StringIO("\n".join("%d %d" % (i, i) for i in range(20_000))))
            g = np.genfromtxt(io.StringIO("\n".join("%d,%d" % (i, i) for i in range(5000))),
                              delimiter=",")
            c = np.char.add(np.array(["a" * 10] * 1000), "bbbb")
            u = np.unique(np.arange(10_000) % 37)
            z = np.zeros(100)
            np.add.at(z, np.arange(1000) % 100, 1.0)
            ap = np.append(np.arange(10), np.arange(1000))
            st = np.zeros(100, dtype=[("a", "i4"), ("b", "f8", (3,))])
            st["b"] = 2.5
        assert f.sum() == sum(range(100_000)) and t.shape == (20_000, 2) and g.shape == (5000, 2)
        assert c[0] == "a" * 10 + "bbbb" and len(u) == 37 and (z == 10).all() and len(ap) == 1010
        assert {mn.allocator_of(x) for x in (f, t, g, c, u, z, ap, st)} == {name}
        assert limit.used == array_stats(name)["live_array_bytes"] > 0
        del f, t, g, c, u, z, ap, st
        gc.collect()
        assert limit.used == 0 and array_stats(name)["live_arrays"] == 0


def test_threads_share_a_limit_over_a_pool_over_aligned():
    """Eight threads make, fill, check, resize and drop arrays through one
    handler over Limit(Pool(Aligned)) with a small budget that refuses some
    of them: no byte is another array's, and the budget ends at zero."""
    pool = register(Pool("Aligned"))
    limit = Limit(pool, 32 << 20)
    name = register(limit)
    h = mn.handler(name)
    errors = []

    def work(seed):
        try:
            _core._numpy_set_handler(h)
            rng = np.random.default_rng(seed)
            keep = []
            for i in range(200):
                n = int(rng.integers(1, 1 << int(rng.integers(1, 19))))
                try:
                    a = np.full(n, seed, np.uint8)
                except MemoryError:
                    continue
                keep.append(a)
                if len(keep) > 8:
                    assert (keep.pop(0) == seed).all()
                if i % 7 == 0:
                    try:
                        a.resize(n * 3, refcheck=False)
                    except MemoryError:
                        pass
                    assert (a[:n] == seed).all()
                    a[:] = seed
            assert all((k == seed).all() for k in keep)
            _core._numpy_set_handler(None)
        except BaseException as error:   # reported below
            errors.append(repr(error))

    np.random.default_rng(0)   # NumPy's random module keeps one small array
    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gc.collect()
    assert not errors
    assert limit.used == array_stats(name)["live_array_bytes"] <= 64


def test_pickle_out_of_band_and_frombuffer_count_once():
    """A protocol 5 pickle's out-of-band buffer and numpy.frombuffer over
    a memmanager Buffer make arrays that own nothing: no block is made
    for them and nothing is counted twice."""
    name = register(Pool("CMalloc"))
    with mn.allocator(name):
        a = np.arange(1000.0)
        arrays = array_stats(name)["live_arrays"]
        buffers = []
        data = pickle.dumps(a, protocol=5, buffer_callback=buffers.append)
        b = pickle.loads(data, buffers=buffers)
        assert np.shares_memory(a, b) and mn.allocator_of(b) is None
        buf = Buffer(8000, 1, allocator=name)
        before = memmanager.stats()[name]
        f = np.frombuffer(buf, dtype=np.float64)
        f[:] = 3.0
        assert mn.allocator_of(f) is None
        assert array_stats(name)["live_arrays"] == arrays
        after = memmanager.stats()[name]
        assert (after["live_buffers"], after["live_bytes"]) == (before["live_buffers"],
                                                                before["live_bytes"])
        assert after["live_bytes"] == 8000 + array_stats(name)["live_array_bytes"]
    del a, b, f, buf, buffers
    gc.collect()
    assert array_stats(name)["live_arrays"] == 0


def test_collections_inside_allocations_with_python_code_in_the_allocator():
    """gc callbacks (which run inside any allocation of a tracked object,
    and so inside SharedMemory's, which runs Python code) make, resize,
    check and free arrays of the same handler while the main loop does:
    the table stays whole.  (A callback must not switch the handler:
    ContextVar.set nested inside ContextVar.set crashes CPython 3.11
    itself, memmanager or not.)"""
    code = """
        import gc, random, numpy as np, memmanager, memmanager.numpy as mn
        rnd = random.Random(1)
        side, depth = [], [0]
        def callback(phase, info):
            if phase != "start" or depth[0]:
                return
            depth[0] += 1
            try:
                side.append(np.full(rnd.randrange(1, 5000), 3, np.uint8))
                if len(side) > 5:
                    assert (side.pop(rnd.randrange(len(side))) == 3).all()
                if side and rnd.random() < .3:
                    side[-1].resize(rnd.randrange(1, 9000), refcheck=False)
                    side[-1][:] = 3
            finally:
                depth[0] -= 1
        gc.callbacks.append(callback)
        gc.set_threshold(1, 1, 1)
        keep = []
        with mn.allocator("SharedMemory"):
            for i in range(100):
                a = np.full(rnd.randrange(1, 3000), i % 200, np.uint8)
                keep.append((a, i % 200))
                if i % 3 == 0:
                    try:
                        a.resize(a.size * 2, refcheck=False)
                        a[:] = i % 200
                    except (MemoryError, RuntimeError):
                        pass
                if len(keep) > 10:
                    x, v = keep.pop(0)
                    assert (x == v).all()
        gc.callbacks.remove(callback)
        gc.set_threshold(700, 10, 10)
        del keep, side, a, x
        gc.collect()
        assert memmanager._core._numpy_live_blocks() == 0, memmanager._core._numpy_live_blocks()
        print("ok")
    """
    rc, out = run_child(code, timeout=300)
    assert rc == 0 and "ok" in out, out


def test_fork_while_another_thread_allocates_through_log_limit_pool(tmp_path):
    """Held: children forked while a thread resizes arrays through
    Log(Limit(Pool(CMalloc))) read the parent's arrays, free them and
    make zeroed ones; the parent's budget and table end empty."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    code = f"""
        import os, threading, warnings, numpy as np, memmanager, memmanager.numpy as mn
        warnings.simplefilter("ignore", DeprecationWarning)   # fork with a thread
        memmanager.register_allocator("P", memmanager.Pool("CMalloc"))
        limit = memmanager.Limit("P", 1 << 28)
        memmanager.register_allocator("L", limit)
        memmanager.register_allocator("G", memmanager.Log("L", {str(tmp_path / "fork.log")!r}))
        h = mn.handler("G")
        stop = threading.Event()
        def spin():
            memmanager._core._numpy_set_handler(h)
            while not stop.is_set():
                a = np.ones(1000)
                a.resize(20000, refcheck=False)
                del a
        t = threading.Thread(target=spin)
        t.start()
        mn.set_allocator("G")
        arrays = [np.full(1000, i) for i in range(10)]
        pids = []
        for k in range(4):
            pid = os.fork()
            if pid == 0:
                ok = all((a == i).all() for i, a in enumerate(arrays))
                del arrays
                z = [np.zeros(5000) for _ in range(20)]
                ok = ok and not any(x.any() for x in z)
                del z
                os._exit(0 if ok and limit.used < 1 << 20 else 3)
            pids.append(pid)
        stop.set()
        t.join()
        codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
        del arrays
        assert codes == [0] * 4, codes
        assert limit.used == 0 and memmanager._core._numpy_live_blocks() == 0
        print("ok")
    """
    rc, out = run_child(code)
    assert rc == 0 and "ok" in out, out
