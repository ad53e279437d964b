"""The SharedMemory allocator and Buffer.attach (DESIGN section 4): names,
attaching in this and in another process, read-only attachment, who
unlinks, clean errors, and interoperation with multiprocessing."""

import ctypes
import gc
import os
import subprocess
import sys
import textwrap
import uuid
from multiprocessing import shared_memory

import pytest

import memmanager
from memmanager import Buffer

SHM_DIR = "/dev/shm"
needs_dev_shm = pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="needs /dev/shm")


def unique_name():
    return f"mmtest_{os.getpid()}_{uuid.uuid4().hex[:12]}"


def exists(name):
    return os.path.exists(os.path.join(SHM_DIR, name.lstrip("/")))


@pytest.fixture
def shm(make_buffer):
    """A fresh SharedMemory buffer of 4096 bytes holding 0, 1, 2, ..."""
    buf = make_buffer(4096, 1, allocator="SharedMemory")
    buf[:] = bytes(i % 256 for i in range(4096))
    return buf


def test_generated_name(shm):
    assert isinstance(shm.name, str) and shm.name
    assert "/" not in shm.name
    other = Buffer(16, 1, allocator="SharedMemory")
    assert other.name != shm.name


@needs_dev_shm
def test_given_name_and_unlink_at_death():
    name = unique_name()
    buf = Buffer(100, 1, allocator="SharedMemory", name=name, init_value=7)
    assert buf.name == name
    assert exists(name)
    buf.release()
    assert not exists(name)
    with pytest.raises(FileNotFoundError):
        Buffer.attach(name, 100, 1)


@needs_dev_shm
def test_unlinked_when_dropped():
    buf = Buffer(100, 1, allocator="SharedMemory")
    name = buf.name
    del buf
    gc.collect()
    assert not exists(name)


def test_leading_slash_name(make_buffer):
    name = "/" + unique_name()
    buf = make_buffer(10, 1, allocator="SharedMemory", name=name, init_value=3)
    assert buf.name == name
    view = Buffer.attach(name[1:], 10, 1)   # the same object
    assert view[9] == 3
    view.release()


def test_name_of_other_allocators(make_buffer):
    for allocator in ("PyAlloc", "CMalloc", "Aligned", "Mmap"):
        assert make_buffer(4, 1, allocator=allocator).name is None
    released = Buffer(4, 1, allocator="SharedMemory")
    released.release()
    with pytest.raises(ValueError, match="released"):
        released.name


def test_attach_in_this_process(shm):
    other = Buffer.attach(shm.name, 4096, 1)
    assert other.allocator == "SharedMemory"
    assert other.name == shm.name
    assert other.address != shm.address          # a second mapping
    assert other[:] == shm[:]
    other[0] = 200
    assert shm[0] == 200
    shm[1] = 201
    assert other[1] == 201
    other.release()
    assert shm[1] == 201                           # detaching unlinks nothing
    assert Buffer.attach(shm.name, 10, 1)[1] == 201


def test_attach_fewer_items(shm):
    part = Buffer.attach(shm.name, 100, 4)
    assert part.nbytes == 400 and part[399] == 399 % 256


def test_attach_sizes_from_the_object(shm):
    # DESIGN section 4 (changed): num_items=None, item_size=1 by default.
    whole = Buffer.attach(shm.name)
    assert (whole.num_items, whole.itemsize, whole.nbytes) == (4096, 1, 4096)
    assert whole[4095] == 4095 % 256
    words = Buffer.attach(shm.name, item_size=3)
    assert (words.num_items, words.itemsize) == (1365, 3)   # whole items only
    assert Buffer.attach(shm.name, 10).nbytes == 10


def test_attach_readonly(shm):
    ro = Buffer.attach(shm.name, 4096, 1, readonly=True)
    assert ro.readonly
    assert ro[5] == 5
    with pytest.raises(TypeError):
        ro[0] = 1
    assert memoryview(ro).readonly
    with pytest.raises(TypeError):
        memoryview(ro)[0] = 1
    with pytest.raises((TypeError, BufferError)):
        (ctypes.c_char * 4).from_buffer(ro)       # asks for a writable export
    shm[5] = 99
    assert ro[5] == 99


def test_attach_errors(shm, registry_unchanged):
    with registry_unchanged():
        with pytest.raises(FileNotFoundError):
            Buffer.attach(unique_name(), 10, 1)
        with pytest.raises(ValueError, match="4096 bytes"):
            Buffer.attach(shm.name, 4097, 1)
        with pytest.raises(ValueError):
            Buffer.attach(shm.name, 0, 1)
        with pytest.raises(TypeError):
            Buffer.attach(shm.name, 1.0, 1)
        with pytest.raises(TypeError):
            Buffer.attach()                             # the name is required
        with pytest.raises(TypeError):
            Buffer.attach(shm.name, 10, None)           # item_size is an int
        with pytest.raises(ValueError, match="4096 bytes, 4097"):
            Buffer.attach(shm.name, None, 4097)         # not one item of that size
        with pytest.raises(TypeError):
            Buffer.attach(shm.name, 10, 1, True)        # readonly is keyword-only
        with pytest.raises(TypeError):
            Buffer.attach(shm.name, 10, 1, death_stub=print)
        with pytest.raises(TypeError):
            Buffer.attach(5, 10, 1)
        for bad in ("", "a/b", "/", "x" * 300, "nul\0"):
            with pytest.raises(ValueError):
                Buffer.attach(bad, 10, 1)


@pytest.mark.parametrize("bad", ["", "a/b", "//x", "x" * 300, "a\0b"])
def test_bad_names(bad, registry_unchanged):
    with registry_unchanged():
        with pytest.raises(ValueError, match="name"):
            Buffer(10, 1, allocator="SharedMemory", name=bad)
    with pytest.raises(TypeError):
        Buffer(10, 1, allocator="SharedMemory", name=b"bytes")


def test_existing_name_refused(shm, registry_unchanged):
    with registry_unchanged():
        with pytest.raises(FileExistsError):
            Buffer(10, 1, allocator="SharedMemory", name=shm.name)
    assert shm[3] == 3                                  # untouched, still there
    assert Buffer.attach(shm.name, 4096, 1)[3] == 3


@needs_dev_shm
def test_failed_allocation_leaves_no_object(registry_unchanged):
    name = unique_name()
    with registry_unchanged():
        with pytest.raises(MemoryError):
            Buffer(2**40, 2**20, allocator="SharedMemory", name=name, init_value=1)
    assert not exists(name)


def run_python(code, *args):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, env=env, timeout=60)


def test_attach_in_another_process(shm):
    result = run_python("""
        import sys
        from memmanager import Buffer
        buf = Buffer.attach(sys.argv[1], 4096, 1)
        print(buf[10], buf[4095])
        buf[0:5] = b"child"
        buf.release()
    """, shm.name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["10", str(4095 % 256)]
    assert shm[0:5] == b"child"
    assert Buffer.attach(shm.name, 5, 1)[:] == b"child"   # the child did not unlink


def test_another_process_creates():
    result = run_python("""
        import sys
        from memmanager import Buffer
        buf = Buffer(64, 1, allocator="SharedMemory", init_value="Z")
        print(buf.name)
    """)
    # The child has exited: its buffer died with it, and unlinked the name.
    assert result.returncode == 0, result.stderr
    name = result.stdout.strip()
    with pytest.raises(FileNotFoundError):
        Buffer.attach(name, 64, 1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_does_not_unlink(shm):
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child drops its copy of the creator)
        code = 1
        try:
            shm.release()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert Buffer.attach(shm.name, 10, 1)[7] == 7


def test_interoperates_with_multiprocessing():
    segment = shared_memory.SharedMemory(create=True, size=256)
    try:
        segment.buf[:4] = b"mpmp"
        buf = Buffer.attach(segment.name, 256, 1)
        assert buf[0:4] == b"mpmp"
        buf[4:6] = b"mm"
        assert bytes(segment.buf[4:6]) == b"mm"
        buf.release()
    finally:
        segment.close()
        segment.unlink()


def test_stats_and_report(shm):
    assert memmanager.stats()["SharedMemory"]["live_buffers"] >= 1
    assert "SharedMemory" in memmanager.report()
    rows = [r for r in memmanager.live_buffers() if r.identifier == shm.identifier]
    assert rows and rows[0].allocator == "SharedMemory" and rows[0].nbytes == 4096
