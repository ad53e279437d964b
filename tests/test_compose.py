"""Every adaptor over every allocator (issue 14, item 5): Pool, Limit and
Log, alone and stacked, over each built-in host allocator, a Python
plug-in, a C plug-in, MappedFile and the fake GPU's allocators.  Each
composition makes buffers of three sizes, writes and reads them, shows
in stats() under every name of its chain, and leaves nothing behind."""

import gc
import uuid

import pytest

import memmanager
from memmanager import Buffer, Limit, Log, Pool

from test_adaptors import Recorder
from test_plugins_c import canary  # noqa: F401  (the C plug-in fixture)

SIZES = (64, 5000, 3 << 20)


def fresh(prefix):
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def build(chain, leaf, tmp_path, leaf_options):
    """Registers the adaptors of chain (outermost first) over leaf; the
    names, outermost first, and the adaptor objects."""
    names, adaptors = [], []
    upstream = leaf
    for depth, kind in enumerate(reversed(chain)):
        options = leaf_options if depth == 0 else {}
        if kind == "Pool":
            adaptor = Pool(upstream, **options)
        elif kind == "Limit":
            adaptor = Limit(upstream, 1 << 30, **options)
        else:
            adaptor = Log(upstream, str(tmp_path / f"{fresh('log')}.log"), **options)
        name = fresh(kind)
        memmanager.register_allocator(name, adaptor)
        names.insert(0, name)
        adaptors.insert(0, adaptor)
        upstream = name
    return names, adaptors


def live(name):
    return memmanager.stats().get(name, {}).get("live_bytes", 0)


def held(name):
    """What the adaptor registered as name holds from its upstream."""
    return memmanager.stats().get(name, {}).get("upstream_bytes", 0)


def release_pools(adaptors):
    for adaptor in adaptors:
        if isinstance(adaptor, Pool):
            adaptor.release_free()


CHAINS = [("Pool",), ("Limit",), ("Log",), ("Pool", "Limit"), ("Limit", "Pool"),
          ("Log", "Pool", "Limit"), ("Pool", "Pool")]
HOST_LEAVES = [("PyAlloc", {}), ("CMalloc", {}), ("Aligned", {"alignment": 4096}),
               ("Mmap", {}), ("Mmap", {"hugepages": True}), ("SharedMemory", {})]


def exercise(names, adaptors, leaf, host=True):
    outer = names[0]
    leaf_before = live(leaf)
    buffers = [Buffer(size, 1, allocator=outer, init_value=size % 251) for size in SIZES]
    assert live(outer) == sum(SIZES)
    for name in names:              # the chunks or blocks each level holds
        assert held(name) >= sum(SIZES)
    assert live(leaf) == leaf_before    # the leaf counts its own buffers only
    if host:
        for buf, size in zip(buffers, SIZES):
            assert buf[0] == size % 251 and buf[size - 1] == size % 251
            buf[size // 2] = 7
            assert buf[size // 2] == 7
    rows = {row.address: row.allocator for row in memmanager.live_buffers()}
    assert all(rows[buf.address] == outer for buf in buffers)
    if host:
        del buf
    del buffers
    gc.collect()
    assert live(outer) == 0
    release_pools(adaptors)
    assert [held(name) for name in names] == [0] * len(names)
    assert live(leaf) == leaf_before


@pytest.mark.parametrize("chain", CHAINS, ids="-".join)
@pytest.mark.parametrize("leaf, options", HOST_LEAVES,
                         ids=[f"{l}{'+' if o else ''}" for l, o in HOST_LEAVES])
def test_over_host_allocators(chain, leaf, options, tmp_path):
    if leaf == "SharedMemory" and "Pool" in chain:
        # Pooled blocks would be unnamed pieces of named objects: refused,
        # whatever stands between the pool and SharedMemory.
        with pytest.raises(ValueError, match="SharedMemory"):
            build(chain, leaf, tmp_path, options)
        return
    names, adaptors = build(chain, leaf, tmp_path, options)
    exercise(names, adaptors, leaf)
    if leaf == "Aligned":
        for size in SIZES:
            assert Buffer(size, 1, allocator=names[0]).address % 4096 == 0


@pytest.mark.parametrize("chain", CHAINS, ids="-".join)
def test_over_a_python_plugin(chain, tmp_path):
    plugin = Recorder()
    leaf = fresh("Py")
    memmanager.register_allocator(leaf, plugin)
    names, adaptors = build(chain, leaf, tmp_path, {})
    exercise(names, adaptors, leaf)
    del adaptors
    gc.collect()
    if "Pool" not in chain:
        assert plugin.live == {}


@pytest.mark.parametrize("chain", CHAINS, ids="-".join)
def test_over_a_c_plugin(chain, canary, tmp_path):  # noqa: F811
    leaf = fresh("C")
    memmanager.register_allocator(leaf, canary.capsule())
    names, adaptors = build(chain, leaf, tmp_path, {})
    exercise(names, adaptors, leaf)


@pytest.mark.parametrize("chain", [("Limit",), ("Log",), ("Log", "Limit")], ids="-".join)
def test_over_mapped_files(chain, tmp_path):
    names, _ = build(chain, "MappedFile", tmp_path, {})
    path = tmp_path / "data.bin"
    with Buffer(4096, 1, allocator=names[0], path=str(path), mode="w+") as buf:
        buf[0:5] = b"hello"
        buf.flush()
        assert path.read_bytes()[:5] == b"hello"
    with Buffer(5, 1, allocator=names[0], path=str(path), mode="r") as view:
        assert bytes(view) == b"hello" and view.readonly


def test_pool_over_mapped_file_is_refused(tmp_path):
    path = tmp_path / "x.bin"
    with pytest.raises(ValueError, match="maps a file"):
        Pool("MappedFile", path=str(path), mode="w+")
    limit = fresh("L")
    memmanager.register_allocator(limit, Limit("MappedFile", 1 << 20, path=str(path), mode="w+"))
    with pytest.raises(ValueError, match="maps a file"):
        Pool(limit)
    assert not path.exists()


CUDA_CHAINS = [("Pool",), ("Limit",), ("Pool", "Limit"), ("Log", "Pool")]


@pytest.mark.parametrize("chain", CUDA_CHAINS, ids="-".join)
@pytest.mark.parametrize("leaf", ["CudaDevice", "CudaHost", "CudaManaged"])
def test_over_gpu_allocators(chain, leaf, fake_cuda, tmp_path):
    names, adaptors = build(chain, leaf, tmp_path, {})
    exercise(names, adaptors, leaf, host=leaf != "CudaDevice")
    if leaf == "CudaDevice":
        buf = Buffer(256, 1, allocator=names[0], init_value=3)
        assert fake_cuda.read(buf.address, 256) == b"\x03" * 256
        buf2 = Buffer(256, 1, allocator=names[0], init_value=0)
        assert fake_cuda.read(buf2.address, 256) == bytes(256)
        del buf, buf2
    release_pools(adaptors)


def test_stacked_adaptors_under_debug():
    from conftest import run_python
    result = run_python("""
        import ctypes, gc, warnings, memmanager
        from memmanager import Buffer, Pool, Limit
        assert memmanager._core.DEBUG
        memmanager.register_allocator("Capped", Limit("Aligned", 1 << 26, alignment=256))
        pool = Pool("Capped")
        memmanager.register_allocator("Big", pool)
        for size in (64, 5000, 3 << 20):
            buf = Buffer(size, 1, allocator="Big", init_value=1)
            assert buf.address % 256 == 0
            assert memmanager.stats()["Capped"]["upstream_bytes"] >= size
            ctypes.memset(buf.address + size, 0, 1)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                del buf
                gc.collect()
            assert any("overrun" in str(w.message) for w in caught), (size, caught)
        pool.release_free()
        assert memmanager.stats().get("Capped", {}).get("upstream_bytes", 0) == 0
        assert memmanager.stats().get("Aligned", {}).get("live_bytes", 0) == 0
        print("ok")
    """, env_extra={"MEMMANAGER_DEBUG": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
