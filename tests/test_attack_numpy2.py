"""A second round of attacks on memmanager.numpy (memmanager/numpy.py,
src/interop/numpy_handler.c), after tests/test_attack_numpy.py's.

Each test is an attack: those that found a bug say what broke; the rest
held and stay as regression tests, each asserting what a break would
change.  Whatever could hang, crash or leave the process odd runs in a
child interpreter (run_child) with a timeout.
"""

import gc
import importlib.util
import io
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

from test_plugins_c import compiler  # noqa: E402

FLAKY_SOURCE = os.path.join(os.path.dirname(__file__), "canary", "flaky_allocator.c")


def fresh(prefix="Np"):
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def register(impl, prefix="Np"):
    name = fresh(prefix)
    memmanager.register_allocator(name, impl)
    return name


def array_stats(name):
    return mn.stats().get(name, {"live_arrays": 0, "live_array_bytes": 0,
                                 "array_allocations": 0, "array_allocated_bytes": 0})


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
    out_dir = tmp_path_factory.mktemp("flaky")
    target = out_dir / ("_flaky" + sysconfig.get_config_var("EXT_SUFFIX"))
    command = compiler() + [
        "-shared", "-fPIC", "-O1", "-Wall", "-Wextra", "-Werror", "-std=c11",
        "-I", sysconfig.get_paths()["include"], "-I", memmanager.get_include(),
        FLAKY_SOURCE, "-o", str(target),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr}"
    spec = importlib.util.spec_from_file_location("_flaky", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
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
