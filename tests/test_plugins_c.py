"""Allocator plug-ins written in C (DESIGN section 4): the public header
memmanager/allocator.h under get_include(), and a test-only C extension
built against that header alone (tests/canary/canary_allocator.c), whose
allocator checks that every free comes back to it with the right size.

The canary is compiled once per session into a temporary directory with
the C compiler Python was built with (sysconfig), no setuptools involved.
"""

import gc
import importlib.util
import os
import shlex
import subprocess
import sys
import sysconfig
import threading
import uuid

import pytest

import memmanager
from memmanager import Buffer

CANARY_SOURCE = os.path.join(os.path.dirname(__file__), "canary", "canary_allocator.c")


def compiler():
    return shlex.split(sysconfig.get_config_var("CC") or "cc")


def build_plugin(source, module_name, out_dir):
    """A test-only C extension built from source against Python's headers
    and memmanager's, imported from out_dir."""
    target = out_dir / (module_name + sysconfig.get_config_var("EXT_SUFFIX"))
    command = compiler() + [
        "-shared", "-fPIC", "-O1", "-Wall", "-Wextra", "-Werror", "-std=c11",
        "-I", sysconfig.get_paths()["include"],
        "-I", memmanager.get_include(),
        source, "-o", str(target), "-lpthread",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr}"
    spec = importlib.util.spec_from_file_location(module_name, target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def canary(tmp_path_factory):
    """The _canary module: built here, imported from its temporary home."""
    return build_plugin(CANARY_SOURCE, "_canary", tmp_path_factory.mktemp("canary"))


@pytest.fixture
def canary_name(canary):
    name = f"Canary{uuid.uuid4().hex[:8]}"
    memmanager.register_allocator(name, canary.capsule())
    return name


def healthy(counters, before):
    """No bad free since `before`, and every block made since is freed."""
    assert counters["unknown_frees"] == before["unknown_frees"]
    assert counters["size_mismatches"] == before["size_mismatches"]
    assert counters["live_blocks"] == before["live_blocks"]
    assert counters["live_bytes"] == before["live_bytes"]


def test_header_is_under_get_include():
    header = os.path.join(memmanager.get_include(), "memmanager", "allocator.h")
    assert os.path.isfile(header)
    with open(header) as f:
        text = f.read()
    assert "MEMMANAGER_ALLOCATOR_ABI_VERSION" in text and "MEMMANAGER_ALLOCATOR_CAPSULE" in text


def test_header_stands_alone(tmp_path):
    """The header compiles in plain C99 without Python.h."""
    source = tmp_path / "uses_header.c"
    source.write_text(
        '#include "memmanager/allocator.h"\n'
        "#include <stddef.h>\n"
        "_Static_assert(offsetof(MemManagerAllocator, name) == 0, \"name first\");\n"
        "int size_is(void) { return (int)sizeof(MemManagerAllocator); }\n")
    result = subprocess.run(compiler() + ["-std=c99", "-Wall", "-Wextra", "-Werror", "-c",
                                          "-I", memmanager.get_include(), str(source),
                                          "-o", str(tmp_path / "uses_header.o")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("init_value", [None, 0, "zero", 7, "A", b"\xff"])
@pytest.mark.parametrize("size", [1, 64, 4095, 1 << 16, (1 << 20) + 3])
def test_every_free_comes_back_with_its_size(canary, canary_name, size, init_value):
    before = canary.counters()
    buf = Buffer(size, 1, allocator=canary_name, init_value=init_value)
    after_alloc = canary.counters()
    assert after_alloc["allocations"] == before["allocations"] + 1
    assert after_alloc["live_bytes"] == before["live_bytes"] + size
    if init_value is not None:
        expected = {0: 0, "zero": 0, 7: 7, "A": 65, b"\xff": 255}[init_value]
        assert buf[0] == expected and buf[size - 1] == expected
    buf.release()
    after = canary.counters()
    assert after["frees"] == before["frees"] + 1
    healthy(after, before)


def test_many_buffers_and_items(canary, canary_name):
    before = canary.counters()
    bufs = [Buffer(n + 1, 8, allocator=canary_name, init_value=n % 256) for n in range(300)]
    assert canary.counters()["live_blocks"] == before["live_blocks"] + 300
    assert all(b[0] == n % 256 for n, b in enumerate(bufs))
    del bufs
    gc.collect()
    healthy(canary.counters(), before)


def test_consume_adopts_through_realloc(canary, canary_name):
    before = canary.counters()
    address = canary.alloc_raw(100)
    holder = [address]
    buf = Buffer.consume(holder, 300, 1, allocator=canary_name, delayed_gc=False)
    assert holder == [0]
    assert canary.counters()["reallocs"] == before["reallocs"] + 1
    assert canary.counters()["live_bytes"] == before["live_bytes"] + 300
    buf[299] = 1
    buf.release()
    healthy(canary.counters(), before)


def test_pinned_and_stubbed_buffers_free_once(canary, canary_name):
    before = canary.counters()
    calls = []
    pinned = Buffer(32, 1, allocator=canary_name, delayed_gc=True, death_stub=calls.append)
    ident = pinned.identifier
    del pinned
    assert canary.counters()["live_blocks"] == before["live_blocks"] + 1
    memmanager.collect_delayed([ident])
    gc.collect()
    assert len(calls) == 1
    healthy(canary.counters(), before)


def test_threads(canary, canary_name):
    before = canary.counters()
    errors = []

    def work(seed):
        try:
            for i in range(200):
                size = 1 + (seed * 7919 + i * 104729) % ((2 << 20) if i % 50 == 0 else 5000)
                Buffer(size, 1, allocator=canary_name, init_value=i % 256).release()
        except Exception as exc:  # pragma: no cover (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    healthy(canary.counters(), before)


def test_options_refused(canary_name, registry_unchanged):
    with registry_unchanged():
        with pytest.raises(TypeError, match="alignment"):
            Buffer(10, 1, allocator=canary_name, alignment=64)


@pytest.mark.parametrize("variant, exc, words", [
    ("abi0", ValueError, "abi_version"),
    ("small", ValueError, "struct_size"),
    ("nofree", ValueError, "free"),
    ("nocalloc", ValueError, "calloc"),
    ("wrongname", TypeError, "memmanager.allocator"),
])
def test_broken_capsules_refused(canary, variant, exc, words):
    name = f"Bad{uuid.uuid4().hex[:8]}"
    with pytest.raises(exc, match=words):
        memmanager.register_allocator(name, canary.capsule(variant))
    assert name not in memmanager.allocators()


def test_later_abi_versions_accepted(canary):
    name = f"Future{uuid.uuid4().hex[:8]}"
    before = canary.counters()
    memmanager.register_allocator(name, canary.capsule("future"))
    Buffer(10, 10, allocator=name, init_value=0).release()
    healthy(canary.counters(), before)


def test_capsule_kept_alive_and_reregistration(canary):
    name = f"Canary{uuid.uuid4().hex[:8]}"
    before = canary.counters()
    memmanager.register_allocator(name, canary.capsule())
    old = Buffer(10, 1, allocator=name)
    memmanager.register_allocator(name, canary.capsule())   # the first capsule is dropped
    gc.collect()
    new = Buffer(10, 1, allocator=name)
    del old, new
    gc.collect()
    healthy(canary.counters(), before)


def test_tracemalloc_sees_capsule_memory(canary_name):
    import tracemalloc

    tracemalloc.start()
    try:
        buf = Buffer(4321, 1, allocator=canary_name)
        domain = tracemalloc.DomainFilter(True, memmanager.TRACEMALLOC_DOMAIN)
        sizes = [t.size for t in tracemalloc.take_snapshot().filter_traces([domain]).traces]
        assert 4321 in sizes
        buf.release()
    finally:
        tracemalloc.stop()


def test_canary_in_a_fresh_process(canary):
    """Exit with buffers still alive, one of them pinned: after the
    interpreter has finalised, the canary has seen every block freed."""
    code = f"""
import importlib.util, memmanager
spec = importlib.util.spec_from_file_location("_canary", {canary.__file__!r})
canary = importlib.util.module_from_spec(spec); spec.loader.exec_module(canary)
canary.report_at_exit()
memmanager.register_allocator("Canary", canary.capsule())
kept = memmanager.Buffer(100, 1, allocator="Canary")
pinned = memmanager.Buffer(200, 1, allocator="Canary", delayed_gc=True, init_value=1)
del pinned
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["live_blocks=0", "size_mismatches=0", "unknown_frees=0"]
