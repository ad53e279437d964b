"""Second round of attacks on the resource adaptors and what came with
them (issue 14): MappedFile's table of mapped files, the keyword-name
cache, adaptors over MappedFile made without options, Pool under
MEMMANAGER_DEBUG with device memory, replay and Log.  Each test is one
way in that once crashed, hung or gave a wrong answer, or that was tried
and held; the crashy ones run in a child, so the suite survives a
regression.  (tests/test_attack_adaptors.py holds the first round.)
"""

import os
import sys

import pytest

import memmanager
from memmanager import Buffer

from conftest import run_python

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="POSIX shared memory under /dev/shm, mmap")


def child_ok(code, env_extra=None, timeout=60):
    result = run_python(code, env_extra=env_extra, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok"), result.stdout[-2000:]


# ---------------------------------------------------------------------------
# A SharedMemory object is a file under /dev/shm that MappedFile's path=
# can name.  Its mappings were not in MappedFile's table, so mode 'w+'
# truncated the object under a live SharedMemory buffer (created or
# attached): the next touch of the buffer was a SIGBUS.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("holder", ["creator", "attached"])
def test_w_plus_cannot_truncate_a_live_shared_memory_object(holder):
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    child_ok(f"""
        import os, memmanager
        from memmanager import Buffer
        shm = Buffer(1 << 16, 1, allocator="SharedMemory", init_value=1)
        path = "/dev/shm/" + shm.name
        assert os.path.exists(path)
        keep = shm
        if {holder!r} == "attached":
            keep = Buffer.attach(shm.name)     # a second mapping, counted too
        try:
            Buffer(16, 1, allocator="MappedFile", path=path, mode="w+")
        except ValueError as error:
            assert "mapped by a live buffer" in str(error), error
        else:
            raise AssertionError("'w+' truncated a live shared memory object")
        assert os.path.getsize(path) == 1 << 16
        assert bytes(keep[60000:60004]) == b"\\x01" * 4     # was a SIGBUS
        # 'r+' on it is fine: the same bytes, no truncation.
        with Buffer(4, 1, allocator="MappedFile", path=path) as alias:
            alias[0] = 9
        assert keep[0] == 9
        print("ok")
    """)


def test_an_attached_shared_memory_buffer_alone_is_protected():
    """The creator's buffer released (the name unlinked) is no way in:
    the object has no path any more.  With the name kept (the creator in
    a child process), the attached buffer alone protects it."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    child_ok("""
        import gc, os, memmanager
        from memmanager import Buffer
        shm = Buffer(1 << 16, 1, allocator="SharedMemory", init_value=2)
        name = shm.name
        att = Buffer.attach(name)
        path = "/dev/shm/" + name
        # A hard link keeps a path to the object once the creator unlinks it.
        link = path + "_link"
        os.link(path, link)
        del shm
        gc.collect()
        try:
            try:
                Buffer(16, 1, allocator="MappedFile", path=link, mode="w+")
            except ValueError as error:
                assert "mapped by a live buffer" in str(error), error
            else:
                raise AssertionError("'w+' truncated an attached object")
            assert bytes(att[-4:]) == b"\\x02" * 4
            del att
            gc.collect()
            # Nobody maps it now: 'w+' is allowed again.
            Buffer(16, 1, allocator="MappedFile", path=link, mode="w+").release()
            assert os.path.getsize(link) == 16
        finally:
            os.unlink(link)
        print("ok")
    """)


# ---------------------------------------------------------------------------
# Tried and held.
# ---------------------------------------------------------------------------

def test_keyword_name_cache_tells_equal_names_apart_from_the_same_ones():
    """The cache matches a new kwnames tuple by the identity of its strs:
    equal strs made at run time, str subclasses and a name that is an
    allocator option in one call and a constructor option in none mix
    freely, each call answered by its own names."""
    class Name(str):
        def __hash__(self):
            return str.__hash__(self)

    made = "".join(["alloc", "ator"])
    for _ in range(3):
        with Buffer(8, 1, **{made: "PyAlloc", "init_value": 5}) as buf:
            assert buf.allocator == "PyAlloc" and bytes(buf) == b"\x05" * 8
        with Buffer(8, 1, **{Name("allocator"): "CMalloc", "init_value": 6}) as buf:
            assert buf.allocator == "CMalloc" and bytes(buf) == b"\x06" * 8
        with pytest.raises(TypeError):          # now an unknown option of PyAlloc's
            Buffer(8, 1, **{"".join(["alloc", "atorx"]): "PyAlloc"})
        with Buffer(8, 1, allocator="PyAlloc", init_value=7) as buf:
            assert bytes(buf) == b"\x07" * 8


def test_fork_while_another_thread_maps_a_file(tmp_path):
    """The table's lock is taken around fork(): a child forked while a
    thread holds it (from the open to the mmap) can map files itself."""
    data = tmp_path / "data.bin"
    data.write_bytes(b"q" * (1 << 20))
    child_ok(f"""
        import os, threading
        from memmanager import Buffer
        stop = False
        def mapper():
            while not stop:
                Buffer(1 << 20, 1, allocator="MappedFile", path={str(data)!r}).release()
        t = threading.Thread(target=mapper)
        t.start()
        try:
            for i in range(20):
                pid = os.fork()
                if pid == 0:
                    code = 3
                    try:
                        Buffer(16, 1, allocator="MappedFile",
                               path={str(tmp_path)!r} + f"/c{{i}}", mode="w+").release()
                        code = 0
                    finally:
                        os._exit(code)
                _, status = os.waitpid(pid, 0)
                assert status == 0, status
        finally:
            stop = True
            t.join()
        print("ok")
    """, timeout=60)
