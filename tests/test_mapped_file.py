"""The MappedFile allocator (DESIGN section 12, "A file-backed
allocator"): a Buffer whose memory is a file mapped MAP_SHARED, with
mode "r+" / "r" / "w+", any offset, flush() and msync at release; every
error raised before anything is opened or mapped, no descriptor leaked,
no file created by a call that fails on its options."""

import copy
import errno
import os
import pathlib
import pickle

import pytest

import memmanager
from memmanager import Buffer

from conftest import run_python
from page_maps import HAS_NUMA_MAPS, HAS_SMAPS, PAGE, advised, numa_policy, open_fds

GiB = 1 << 30


def mapped(path, num_items, item_size=1, **options):
    return Buffer(num_items, item_size, allocator="MappedFile", path=path, **options)


@pytest.fixture
def data_file(tmp_path):
    """A 3-page file of known bytes."""
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * (3 * PAGE // 256))
    return path


@pytest.fixture
def nothing_leaks(registry_unchanged):
    """Context manager: no buffer, registry entry or descriptor is left."""
    import contextlib

    @contextlib.contextmanager
    def check():
        fds = open_fds()
        with registry_unchanged():
            yield
        assert open_fds() == fds

    return check


# --------------------------------------------------------------------------
# Modes


def test_create_makes_a_zero_file_of_offset_plus_nbytes(tmp_path):
    path = tmp_path / "new.bin"
    with mapped(path, 10, 4, mode="w+", offset=100) as buf:
        assert buf.nbytes == 40 and not buf.readonly
        assert buf.allocator == "MappedFile"
        assert bytes(buf) == bytes(40)
        assert path.stat().st_size == 140
        buf[0] = 1
        buf[39] = 2
    assert path.read_bytes() == bytes(100) + b"\x01" + bytes(38) + b"\x02"


def test_create_truncates_an_existing_file(data_file):
    with mapped(data_file, 5, mode="w+") as buf:
        assert bytes(buf) == bytes(5)
    assert data_file.read_bytes() == bytes(5)


def test_read_write_is_the_default_and_changes_the_file_in_place(data_file):
    before = data_file.read_bytes()
    with mapped(data_file, 4, offset=10) as buf:
        assert bytes(buf) == before[10:14]
        buf[0:4] = b"abcd"
    after = data_file.read_bytes()
    assert len(after) == len(before)          # never grown
    assert after == before[:10] + b"abcd" + before[14:]


def test_write_flush_and_read_in_a_child(tmp_path):
    """Written in this process, flushed while the buffer lives: a child
    sees the bytes, through the file and through a MappedFile of its own."""
    path = tmp_path / "shared.bin"
    buf = mapped(path, 3 * PAGE, mode="w+")
    buf[0:5] = b"hello"
    buf[3 * PAGE - 1] = 0x7E
    assert buf.flush() is None
    done = run_python(f"""
        from memmanager import Buffer
        with open({str(path)!r}, "rb") as f:
            data = f.read()
        print(data[:5].decode(), data[-1])
        other = Buffer(5, 1, allocator="MappedFile", path={str(path)!r}, mode="r")
        print(bytes(other).decode())
        other.release()
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["hello", "126", "hello"]
    # and what the child could write, this process sees (MAP_SHARED)
    done = run_python(f"""
        from memmanager import Buffer
        other = Buffer(5, 1, allocator="MappedFile", path={str(path)!r})
        other[0:5] = b"HELLO"
        other.release()
    """)
    assert done.returncode == 0, done.stderr
    assert bytes(buf[0:5]) == b"HELLO"
    buf.release()


def test_persists_after_release(tmp_path):
    path = tmp_path / "persist.bin"
    buf = mapped(path, 1000, mode="w+")
    buf[500] = 55
    buf.release()
    with open(path, "rb") as f:
        assert f.read()[500] == 55
    with mapped(path, 1000) as again:
        assert again[500] == 55


def test_two_buffers_on_one_file_share_its_bytes(data_file):
    with mapped(data_file, 10) as one, mapped(data_file, 10, offset=5) as two:
        one[7] = 0xEE
        assert two[2] == 0xEE


def test_read_only(data_file):
    before = data_file.read_bytes()
    with mapped(data_file, 100, mode="r", offset=1) as buf:
        assert buf.readonly
        assert bytes(buf) == before[1:101]
        with pytest.raises(TypeError, match="read-only"):
            buf[0] = 1
        with memoryview(buf) as view:
            assert view.readonly
            with pytest.raises(TypeError):
                view[0] = 1
        import ctypes
        with pytest.raises((TypeError, BufferError)):
            (ctypes.c_char * 100).from_buffer(buf)
        with buf.region(0, 10) as part:
            assert part.readonly
        buf.flush()                           # nothing to write; no error
    assert data_file.read_bytes() == before


def test_read_only_file_permission(tmp_path):
    """mode='r' opens O_RDONLY: a file without write permission maps."""
    path = tmp_path / "ro.bin"
    path.write_bytes(b"xyz")
    path.chmod(0o444)
    with mapped(path, 3, mode="r") as buf:
        assert bytes(buf) == b"xyz"


@pytest.mark.parametrize("offset", [0, 1, 7, PAGE - 1, PAGE, PAGE + 1, 2 * PAGE + 123])
def test_offset_anywhere(data_file, offset):
    content = data_file.read_bytes()
    length = min(1000, len(content) - offset)
    with mapped(data_file, length, offset=offset) as buf:
        assert buf.address % PAGE == offset % PAGE
        assert bytes(buf) == content[offset:offset + length]
        buf[0] = 0xAA
        buf[length - 1] = 0xBB
    content = data_file.read_bytes()
    assert content[offset] == 0xAA and content[offset + length - 1] == 0xBB


def test_path_forms(data_file):
    for path in (str(data_file), pathlib.Path(data_file), os.fsencode(data_file)):
        with mapped(path, 4) as buf:
            assert bytes(buf) == bytes(range(4))

    class Custom:
        def __fspath__(self):
            return str(data_file)

    with mapped(Custom(), 4) as buf:
        assert bytes(buf) == bytes(range(4))


def test_item_size_and_the_file(tmp_path):
    path = tmp_path / "items.bin"
    with mapped(path, 3, 8, mode="w+") as buf:
        assert (buf.num_items, buf.itemsize, buf.nbytes) == (3, 8, 24)
    assert path.stat().st_size == 24


# --------------------------------------------------------------------------
# init_value


def test_init_value_zero_on_a_new_file_is_free(tmp_path):
    path = tmp_path / "sparse.bin"
    with mapped(path, 64 << 20, mode="w+", init_value=0) as buf:
        assert buf[0] == buf[(64 << 20) - 1] == 0
        buf.flush()
        assert path.stat().st_blocks * 512 < 1 << 20   # nothing was written


def test_init_value_byte_on_a_new_file_fills_it(tmp_path):
    path = tmp_path / "filled.bin"
    with mapped(path, 5000, mode="w+", init_value=7):
        pass
    assert path.read_bytes() == b"\x07" * 5000


@pytest.mark.parametrize("mode", ["r+", "r"])
@pytest.mark.parametrize("init_value", [0, 7, "zero"])
def test_init_value_refused_on_an_existing_file(data_file, mode, init_value, nothing_leaks):
    before = data_file.read_bytes()
    with nothing_leaks():
        with pytest.raises(ValueError, match="init_value with mode='%s'" % mode.replace("+", r"\+")):
            mapped(data_file, 10, mode=mode, init_value=init_value)
    assert data_file.read_bytes() == before


# --------------------------------------------------------------------------
# Bigger than memory


def test_a_sparse_file_bigger_than_memory(tmp_path):
    """64 GiB (or twice the memory, on a machine with more) on a machine
    with less: only the pages written take room."""
    with open("/proc/meminfo") as meminfo:
        total = int(meminfo.readline().split()[1]) * 1024
    size = max(64 * GiB, -(-2 * total // GiB) * GiB)
    assert total < size, "the point is a file bigger than memory"
    probe = tmp_path / "probe.bin"
    try:
        with open(probe, "wb") as f:
            f.truncate(size)
    except OSError as exc:
        pytest.skip(f"the file system of {tmp_path} refuses a {size}-byte file: {exc}")
    sparse = probe.stat().st_blocks * 512 < 1 << 20
    probe.unlink()
    if not sparse:
        pytest.skip(f"the file system of {tmp_path} does not make sparse files")
    path = tmp_path / "huge.bin"
    try:
        buf = mapped(path, size, mode="w+")
    except OSError as exc:
        if "vgpreload" not in os.environ.get("LD_PRELOAD", ""):
            raise
        pytest.skip(f"valgrind's address space cannot hold a {size}-byte mapping: {exc}")
    with buf:
        assert buf.nbytes == size
        buf[0] = 1
        buf[32 * GiB] = 2
        buf[size - 1] = 3
        buf.flush()
        assert path.stat().st_size == size
        assert path.stat().st_blocks * 512 < 16 << 20
    with open(path, "rb") as f:
        assert f.read(1) == b"\x01"
        f.seek(32 * GiB)
        assert f.read(1) == b"\x02"
        f.seek(size - 1)
        assert f.read(1) == b"\x03"
    with mapped(path, 2, offset=32 * GiB - 1, mode="r") as buf:
        assert bytes(buf) == b"\x00\x02"
    assert path.stat().st_blocks * 512 < 16 << 20


# --------------------------------------------------------------------------
# Errors, before anything is opened or mapped


def test_path_is_required(nothing_leaks):
    with nothing_leaks():
        for options in ({}, {"path": None}, {"mode": "w+"}):
            with pytest.raises(TypeError, match="needs path="):
                Buffer(10, 1, allocator="MappedFile", **options)


@pytest.mark.parametrize("path, error", [(3, TypeError), (["x"], TypeError),
                                         ("a\0b", ValueError)])
def test_bad_path(path, error, nothing_leaks):
    with nothing_leaks():
        with pytest.raises(error):
            mapped(path, 10, mode="w+")


def test_missing_file(tmp_path, nothing_leaks):
    path = tmp_path / "missing.bin"
    for mode in ("r+", "r"):
        with nothing_leaks():
            with pytest.raises(FileNotFoundError) as info:
                mapped(path, 10, mode=mode)
        assert info.value.errno == errno.ENOENT
        assert info.value.filename == path            # the object as given
    with nothing_leaks():
        with pytest.raises(FileNotFoundError):
            mapped(tmp_path / "no" / "dir.bin", 10, mode="w+")
    assert not path.exists()


@pytest.mark.parametrize("mode", ["r+", "r", "w+"])
def test_directory(tmp_path, mode, nothing_leaks):
    with nothing_leaks():
        with pytest.raises(IsADirectoryError) as info:
            mapped(tmp_path, 10, mode=mode)
    assert info.value.errno == errno.EISDIR
    assert info.value.filename == tmp_path


def test_permission_denied(tmp_path):
    """In a child that is not root (root opens any file): PermissionError,
    with errno and the filename."""
    path = tmp_path / "secret.bin"
    path.write_bytes(b"x" * 10)
    path.chmod(0o600)
    done = run_python(f"""
        import os
        from memmanager import Buffer
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)
        def next_fd():
            fd = os.open("/dev/null", os.O_RDONLY)
            os.close(fd)
            return fd
        fd = next_fd()
        for mode in ("r+", "r", "w+"):
            try:
                Buffer(10, 1, allocator="MappedFile", path={str(path)!r}, mode=mode)
            except PermissionError as exc:
                assert exc.errno == 13 and exc.filename == {str(path)!r}, exc
            else:
                raise AssertionError("opened " + mode)
        assert next_fd() == fd              # none left open
        print("ok")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert path.read_bytes() == b"x" * 10


def test_not_a_regular_file(nothing_leaks):
    with nothing_leaks():
        with pytest.raises(ValueError, match="regular files"):
            mapped("/dev/null", 10, mode="r")


def test_fifo_is_refused_without_waiting(tmp_path, nothing_leaks):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with nothing_leaks():
        for mode in ("r", "r+", "w+"):
            with pytest.raises(ValueError, match="regular files"):
                mapped(fifo, 10, mode=mode)


@pytest.mark.parametrize("mode, error", [("rw", ValueError), ("a", ValueError), ("R", ValueError),
                                         ("", ValueError), (3, TypeError), (b"r", TypeError)])
def test_bad_mode(tmp_path, mode, error, nothing_leaks):
    path = tmp_path / "never.bin"
    with nothing_leaks():
        with pytest.raises(error, match="mode"):
            mapped(path, 10, mode=mode)
    assert not path.exists()


@pytest.mark.parametrize("offset, error, message", [
    (-1, ValueError, ">= 0"), (-(1 << 70), ValueError, ">= 0"),
    (1 << 63, ValueError, "largest file size"), ((1 << 63) - 5, ValueError, "largest file size"),
    (True, TypeError, "bool"), (1.0, TypeError, "float"), ("0", TypeError, "str"),
])
def test_bad_offset(tmp_path, offset, error, message, nothing_leaks):
    path = tmp_path / "never.bin"
    with nothing_leaks():
        with pytest.raises(error, match=message):
            mapped(path, 10, mode="w+", offset=offset)
    assert not path.exists()


@pytest.mark.parametrize("mode", ["r+", "r"])
def test_file_too_short(data_file, mode, nothing_leaks):
    size = data_file.stat().st_size
    for num_items, offset in ((size + 1, 0), (1, size), (PAGE, size - PAGE + 1)):
        with nothing_leaks():
            with pytest.raises(ValueError, match="holds %d bytes" % size):
                mapped(data_file, num_items, mode=mode, offset=offset)
    assert data_file.stat().st_size == size             # never grown
    with mapped(data_file, 1, mode=mode, offset=size - 1) as buf:   # the last byte fits
        assert buf[0] == (size - 1) % 256


@pytest.mark.parametrize("options", [
    {"offset": -1}, {"mode": "x"}, {"numa_node": 10 ** 6}, {"numa_node": "0"},
    {"foo": 1}, {"alignment": 64}, {"init_value": "bad"},
])
def test_failed_create_makes_no_file(tmp_path, options, nothing_leaks):
    path = tmp_path / "never.bin"
    options = {"mode": "w+", **options}
    with nothing_leaks():
        with pytest.raises((TypeError, ValueError)):
            mapped(path, 10, **options)
    assert not path.exists()


def test_failed_create_bool_makes_no_file(tmp_path, nothing_leaks):
    class Bad:
        def __bool__(self):
            raise RuntimeError("no truth")

    path = tmp_path / "never.bin"
    with nothing_leaks():
        with pytest.raises(RuntimeError, match="no truth"):
            mapped(path, 10, mode="w+", hugepages=Bad())
    assert not path.exists()


def test_fspath_that_raises(nothing_leaks):
    class Bad:
        def __fspath__(self):
            raise RuntimeError("no path")

    with nothing_leaks():
        with pytest.raises(RuntimeError, match="no path"):
            mapped(Bad(), 10, mode="w+")


def test_no_descriptor_is_kept(data_file):
    fds = open_fds()
    buffers = [mapped(data_file, 10, offset=i) for i in range(20)]
    assert open_fds() == fds                  # closed right after mmap
    for buf in buffers:
        buf.release()
    assert open_fds() == fds


def test_consume_is_refused(data_file):
    import ctypes
    memory = ctypes.create_string_buffer(16)
    with pytest.raises(TypeError, match="MappedFile"):
        Buffer.consume(b"abc", 3, 1, allocator="MappedFile")
    with pytest.raises(TypeError, match="MappedFile cannot adopt"):
        Buffer.consume(ctypes.addressof(memory), 16, 1, allocator="MappedFile")


# --------------------------------------------------------------------------
# flush()


def test_flush_on_other_allocators_does_nothing(make_buffer):
    for allocator in ("PyAlloc", "CMalloc", "Aligned", "Mmap", "SharedMemory"):
        assert make_buffer(10, 1, allocator=allocator).flush() is None
    assert Buffer.consume(bytearray(4), 4, 1).flush() is None


def test_flush_on_a_released_buffer(data_file):
    buf = mapped(data_file, 10)
    buf.release()
    with pytest.raises(ValueError, match="released"):
        buf.flush()
    plain = Buffer(10, 1)
    plain.release()
    with pytest.raises(ValueError, match="released"):
        plain.flush()


def test_flush_while_exported_and_then_release(data_file):
    buf = mapped(data_file, 2 << 20 if data_file.stat().st_size >= 2 << 20 else 100)
    with memoryview(buf) as view:
        view[0] = 9
        buf.flush()
        assert buf.exports == 1
    buf.release()
    assert data_file.read_bytes()[0] == 9


def test_flush_of_a_large_mapping(tmp_path):
    """From 1 MiB on msync runs without the GIL; the buffer stays usable."""
    path = tmp_path / "large.bin"
    with mapped(path, 8 << 20, mode="w+") as buf:
        buf[(8 << 20) - 1] = 1
        buf.flush()
        assert buf.exports == 0
        assert buf[(8 << 20) - 1] == 1


def test_copies_are_private(data_file):
    with mapped(data_file, 10, mode="r") as buf:
        for clone in (copy.copy(buf), copy.deepcopy(buf), pickle.loads(pickle.dumps(buf))):
            assert bytes(clone) == bytes(buf)
            assert clone.allocator != "MappedFile"
            clone.release()


# --------------------------------------------------------------------------
# hugepages= and numa_node=


@pytest.mark.skipif(not HAS_SMAPS, reason="needs Linux /proc/self/smaps")
def test_hugepages(tmp_path):
    path = tmp_path / "hp.bin"
    with mapped(path, 8 << 20, mode="w+", hugepages=True) as buf:
        assert advised(buf.address)
    for hugepages in (False, None):
        with mapped(path, 8 << 20, mode="w+", hugepages=hugepages) as buf:
            assert not advised(buf.address)            # the page cache decides


@pytest.mark.skipif(not HAS_NUMA_MAPS, reason="needs /proc/self/numa_maps")
def test_numa_node(tmp_path, data_file):
    path = tmp_path / "numa.bin"
    with mapped(path, 1 << 20, mode="w+", numa_node=0) as buf:
        assert numa_policy(buf.address) == "prefer:0"
        buf[0] = 1
    with mapped(data_file, 10, mode="r", offset=PAGE + 1, numa_node=0, hugepages=True) as buf:
        assert numa_policy(buf.address) == "prefer:0"
        assert buf[0] == (PAGE + 1) % 256
    with mapped(data_file, 10) as buf:
        assert numa_policy(buf.address) == "default"


def test_numa_node_not_there(tmp_path, nothing_leaks):
    path = tmp_path / "never.bin"
    with nothing_leaks():
        with pytest.raises(ValueError, match="numa_node=1000000"):
            mapped(path, 10, mode="w+", numa_node=10 ** 6)
    assert not path.exists()


# --------------------------------------------------------------------------
# MEMMANAGER_DEBUG: no guard bytes on a file


def test_not_guarded_under_debug(tmp_path):
    path = tmp_path / "debug.bin"
    done = run_python(f"""
        import memmanager
        from memmanager import Buffer
        assert memmanager._core.DEBUG == 1
        path = {str(path)!r}
        buf = Buffer(100, 1, allocator="MappedFile", path=path, mode="w+", offset=5)
        assert buf.address % {PAGE} == 5
        buf[0] = 1
        buf[99] = 2
        buf.release()
        data = open(path, "rb").read()
        assert data == bytes(5) + b"\\x01" + bytes(98) + b"\\x02", data
        with Buffer(100, 1, allocator="MappedFile", path=path, mode="r") as ro:
            assert ro[5] == 1
        print("ok")
    """, env_extra={"MEMMANAGER_DEBUG": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert "memmanager:" not in done.stderr


def test_listed_and_counted(data_file):
    assert "MappedFile" in memmanager.allocators()
    before = memmanager.stats().get("MappedFile", {}).get("live_buffers", 0)
    with mapped(data_file, 10) as buf:
        assert memmanager.stats()["MappedFile"]["live_buffers"] == before + 1
        assert any(entry.identifier == buf.identifier for entry in memmanager.live_buffers())


def test_cycles_keep_refcounts_and_descriptors(data_file):
    import sys
    path = str(data_file)
    options = {"allocator": "MappedFile", "path": path, "mode": "r+", "offset": 3}
    refs = lambda: (sys.getrefcount(path), sys.getrefcount(options))  # noqa: E731
    before, fds = refs(), open_fds()
    for i in range(300):
        buf = Buffer(100, 1, options)
        buf[0] = i % 256
        if i % 3 == 0:
            buf.flush()
        buf.release()
        try:
            Buffer(100, 1, options, init_value=1)
        except ValueError:
            pass
    assert refs() == before
    assert open_fds() == fds
    assert data_file.read_bytes()[3] == 299 % 256


# ---------------------------------------------------------------------------
# A file a live buffer maps is never truncated by memmanager
# ---------------------------------------------------------------------------

def test_w_plus_on_a_mapped_file_is_refused(tmp_path):
    path = tmp_path / "live.bin"
    first = Buffer(3 * 4096, 1, allocator="MappedFile", path=str(path), mode="w+")
    first[3 * 4096 - 1] = 9
    with pytest.raises(ValueError, match="mapped by a live buffer"):
        Buffer(16, 1, allocator="MappedFile", path=str(path), mode="w+")
    assert path.stat().st_size == 3 * 4096          # not truncated
    assert first[3 * 4096 - 1] == 9                 # still there, no SIGBUS
    other = Buffer(4096, 1, allocator="MappedFile", path=str(path), mode="r+")
    del first
    with pytest.raises(ValueError, match="mapped by a live buffer"):
        Buffer(16, 1, allocator="MappedFile", path=str(path), mode="w+")
    del other
    fresh = Buffer(16, 1, allocator="MappedFile", path=str(path), mode="w+")
    assert path.stat().st_size == 16 and bytes(fresh[:]) == bytes(16)


def test_w_plus_through_a_hard_link_is_refused(tmp_path):
    path, link = tmp_path / "a.bin", tmp_path / "b.bin"
    live = Buffer(8192, 1, allocator="MappedFile", path=str(path), mode="w+")
    os.link(path, link)
    with pytest.raises(ValueError, match="mapped by a live buffer"):
        Buffer(16, 1, allocator="MappedFile", path=str(link), mode="w+")
    live[8191] = 1
    del live


def test_w_plus_keeps_no_old_bytes(tmp_path):
    path = tmp_path / "old.bin"
    path.write_bytes(b"\xff" * 100)
    buf = Buffer(50, 1, allocator="MappedFile", path=str(path), mode="w+")
    assert bytes(buf[:]) == bytes(50)


def test_a_failed_w_plus_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "keep.bin"
    path.write_bytes(b"keep me")
    with pytest.raises((OSError, ValueError, MemoryError)):
        Buffer(16, 1, allocator="MappedFile", path=str(path), mode="w+", offset=2 ** 62)
    assert path.read_bytes() == b"keep me"
