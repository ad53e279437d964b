"""The Log adaptor and replay() (DESIGN section 12): the lines a Log writes
over each kind of upstream, several threads and processes on one file,
write errors, fork; replay of such files against built-ins, adaptors and
Python plug-ins, its peak against stats() of the run that wrote the log,
and malformed files refused before anything is allocated."""

import ctypes
import errno
import gc
import os
import pathlib
import sys
import textwrap
import threading
import urllib.parse
import uuid

import pytest

import memmanager
from memmanager import Buffer

from conftest import catch_unraisable, run_python

DEBUG = bool(memmanager._core.DEBUG)   # guard bytes change sizes and addresses
HEADER = "# memmanager-log 1 "


def fresh_name(prefix="Log"):
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def registered_log(upstream, path, **options):
    name = fresh_name()
    log = memmanager.Log(upstream, path, **options)
    memmanager.register_allocator(name, log)
    return name, log


def read_events(path):
    """The event lines of a log file as tuples, the header checked."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert lines[0].startswith(HEADER)
    events = []
    for line in lines[1:]:
        if line.startswith("#"):
            continue
        time, pid, tid, event, size, address, name = line.split(" ")
        assert address.startswith("0x")
        events.append((int(time), int(pid), int(tid), event, int(size), int(address, 16),
                       urllib.parse.unquote(name)))
    return events


def check_block(event, block):
    """A line's size and address are the buffer's, block = (nbytes,
    address) (guard bytes included under MEMMANAGER_DEBUG)."""
    if DEBUG:
        assert event[4] >= block[0] and event[5] <= block[1]
    else:
        assert (event[4], event[5]) == block


class Handle:
    def __init__(self, size):
        self.block = (ctypes.c_char * max(size, 1))()
        self.address = ctypes.addressof(self.block)


class Counting:
    """A Python plug-in that counts its calls and can fail the n-th malloc."""

    def __init__(self, fail_at=None):
        self.mallocs = 0
        self.frees = 0
        self.live = {}
        self.fail_at = fail_at

    def malloc(self, num_items, item_size, init_byte, options):
        self.mallocs += 1
        if self.fail_at is not None and self.mallocs == self.fail_at:
            raise MemoryError("Counting: refused")
        handle = Handle(num_items * item_size)
        self.live[handle.address] = handle
        return handle

    def get_buffer_address(self, handle):
        return handle.address

    def free(self, address):
        self.frees += 1
        del self.live[address]


def write_log(path, events, header=True):
    """A log written by hand: events are (time, pid, event, size, address, name)."""
    with open(path, "w") as f:
        if header:
            f.write(HEADER + "time_ns pid tid event size address allocator\n")
        for time, pid, event, size, address, name in events:
            f.write(f"{time} {pid} {pid} {event} {size} {address:#x} {name}\n")


# ---------------------------------------------------------------------------
# The lines
# ---------------------------------------------------------------------------

UPSTREAMS = [("PyAlloc", {}), ("CMalloc", {}), ("Aligned", {"alignment": 4096}),
             ("SharedMemory", {})]


@pytest.mark.parametrize("upstream,options", UPSTREAMS, ids=[u for u, _ in UPSTREAMS])
def test_lines_of_each_upstream(tmp_path, upstream, options):
    path = tmp_path / "alloc.log"
    name, log = registered_log(upstream, path, **options)
    assert (log.upstream, log.path, log.events) == (upstream, str(path), 0)
    sizes = [1, 100, 4096, 100_000]
    buffers = [Buffer(n, 1, allocator=name) for n in sizes]
    blocks = [(buf.nbytes, buf.address) for buf in buffers]
    for buf in buffers:
        if upstream == "Aligned":
            assert buf.address % 4096 == 0
        if upstream == "SharedMemory":
            assert buf.name is not None     # the upstream's cookie passes through
    order = [2, 0, 3, 1]
    for i in order:
        buffers[i].release()
    assert log.events == 8
    log.flush()
    events = read_events(path)
    assert [e[3] for e in events] == ["a"] * 4 + ["f"] * 4
    for event, block in zip(events[:4], blocks):
        check_block(event, block)
    for event, i in zip(events[4:], order):
        assert (event[4], event[5]) == (events[i][4], events[i][5])
    assert {(e[1], e[2], e[6]) for e in events} == {
        (os.getpid(), threading.get_native_id(), name)}
    times = [e[0] for e in events]
    assert times == sorted(times)


def test_per_buffer_options_go_upstream(tmp_path):
    path = tmp_path / "aligned.log"
    name, log = registered_log("Aligned", path)
    buf = Buffer(10, 1, allocator=name, alignment=8192)
    assert buf.address % 8192 == 0
    buf.release()
    log.flush()
    assert [e[3] for e in read_events(path)] == ["a", "f"]


def test_options_given_at_creation_refuse_per_buffer_ones(tmp_path):
    name, log = registered_log("Aligned", tmp_path / "a.log", alignment=4096)
    with pytest.raises(TypeError, match="per-buffer options"):
        Buffer(10, 1, allocator=name, alignment=8192)
    assert log.events == 0


def test_a_name_with_spaces_and_percent_is_escaped(tmp_path):
    path = tmp_path / "names.log"
    log = memmanager.Log("PyAlloc", path)
    name = f"my log %{uuid.uuid4().hex[:6]} é"
    memmanager.register_allocator(name, log)
    Buffer(8, 1, allocator=name).release()
    log.flush()
    with open(path, encoding="utf-8") as f:
        line = f.read().splitlines()[1]
    assert len(line.split(" ")) == 7
    assert read_events(path)[0][6] == name


def test_one_log_under_two_names(tmp_path):
    path = tmp_path / "two.log"
    log = memmanager.Log("PyAlloc", path)
    first, second = fresh_name(), fresh_name()
    memmanager.register_allocator(first, log)
    memmanager.register_allocator(second, log)
    Buffer(8, 1, allocator=first).release()
    Buffer(8, 1, allocator=second).release()
    log.flush()
    assert [e[6] for e in read_events(path)] == [first, first, second, second]


def test_header_only_in_an_empty_file(tmp_path):
    path = tmp_path / "shared.log"
    first, log1 = registered_log("PyAlloc", path)
    Buffer(8, 1, allocator=first).release()
    log1.flush()
    second, log2 = registered_log("CMalloc", path)   # the file is not empty now
    Buffer(8, 1, allocator=second).release()
    log2.flush()
    with open(path) as f:
        lines = f.read().splitlines()
    assert sum(line.startswith("#") for line in lines) == 1
    assert [e[6] for e in read_events(path)] == [first, first, second, second]
    # An existing file keeps what it held.
    other = tmp_path / "other.log"
    other.write_text("# memmanager-log 1 written by hand\n")
    third, log3 = registered_log("PyAlloc", other)
    Buffer(8, 1, allocator=third).release()
    log3.flush()
    assert other.read_text().splitlines()[0] == "# memmanager-log 1 written by hand"
    assert len(read_events(other)) == 2


def test_two_logs_on_one_empty_file_replay(tmp_path):
    """Both see the file empty and both write the header: replay takes it."""
    path = tmp_path / "both.log"
    first, log1 = registered_log("PyAlloc", path)
    second, log2 = registered_log("CMalloc", path)
    a = Buffer(100, 1, allocator=first)
    b = Buffer(200, 1, allocator=second)
    a.release()
    b.release()
    log1.flush()
    log2.flush()
    result = memmanager.replay(path)
    assert (result.events, result.allocations, result.frees) == (4, 2, 2)
    assert result.peak_bytes == 300


def test_pathlike_and_bytes_paths(tmp_path):
    path = tmp_path / "p.log"
    log = memmanager.Log("PyAlloc", pathlib.Path(path))
    assert log.path == str(path)
    log_bytes = memmanager.Log("PyAlloc", os.fsencode(path))
    assert log_bytes.path == os.fsencode(path)
    assert repr(log).startswith("<memmanager.Log over 'PyAlloc' to ")


def test_allocation_failure_writes_no_line(tmp_path):
    limit = memmanager.Limit("PyAlloc", 1000)
    capped = fresh_name("Cap")
    memmanager.register_allocator(capped, limit)
    path = tmp_path / "limit.log"
    name, log = registered_log(capped, path)
    kept = Buffer(600, 1, allocator=name)
    with pytest.raises(memmanager.LimitExceededError):
        Buffer(600, 1, allocator=name)
    assert log.events == 1
    kept.release()
    log.flush()
    assert [e[3] for e in read_events(path)] == ["a", "f"]


def test_two_threads(tmp_path):
    path = tmp_path / "threads.log"
    name, log = registered_log("CMalloc", path)
    per_thread = 600
    ids = []
    start = threading.Barrier(2)

    def work():
        ids.append(threading.get_native_id())
        start.wait()
        for i in range(per_thread):
            Buffer(16 + i, 1, allocator=name).release()

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.flush()
    events = read_events(path)
    assert log.events == len(events) == 4 * per_thread
    for tid in ids:
        mine = [e for e in events if e[2] == tid]
        assert len(mine) == 2 * per_thread
        assert [e[3] for e in mine] == ["a", "f"] * per_thread
        assert [e[4] for e in mine[::2]] == [16 + i for i in range(per_thread)]
    times = [e[0] for e in events]
    assert times == sorted(times)      # one lock: the file is in time order
    result = memmanager.replay(path, "CMalloc")
    assert (result.allocations, result.frees, result.unfreed) == (
        2 * per_thread, 2 * per_thread, 0)


# ---------------------------------------------------------------------------
# Bad arguments, unopenable files
# ---------------------------------------------------------------------------


def test_unopenable_paths_raise_oserror_and_register_nothing(tmp_path):
    before = set(memmanager.allocators())
    with pytest.raises(IsADirectoryError) as info:
        memmanager.Log("PyAlloc", tmp_path)
    assert info.value.errno == errno.EISDIR and info.value.filename == str(tmp_path)
    missing = tmp_path / "no" / "such" / "dir.log"
    with pytest.raises(FileNotFoundError) as info:
        memmanager.Log("PyAlloc", missing)
    assert info.value.filename == str(missing)
    assert set(memmanager.allocators()) == before


def test_bad_arguments(tmp_path):
    path = tmp_path / "bad.log"
    with pytest.raises(TypeError, match="path"):
        memmanager.Log("PyAlloc")
    with pytest.raises(TypeError):
        memmanager.Log("PyAlloc", 3)
    with pytest.raises(TypeError, match="multiple values"):
        memmanager.Log("PyAlloc", path, path=path)
    with pytest.raises(TypeError, match="upstream and path"):
        memmanager.Log("PyAlloc", path, path)
    with pytest.raises(ValueError):
        memmanager.Log("PyAlloc", "nul\0byte.log")
    with pytest.raises(memmanager.UnknownAllocatorError):
        memmanager.Log(fresh_name("Nope"), path)
    with pytest.raises(ValueError, match="only adopts"):
        memmanager.Log("Borrowed", path)
    with pytest.raises(TypeError, match="takes no option"):
        memmanager.Log("CMalloc", path, alignment=64)
    assert not path.exists()          # the file is opened last


# ---------------------------------------------------------------------------
# Write errors, deallocation, exit, fork
# ---------------------------------------------------------------------------

needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"),
                                    reason="needs /dev/full")


@needs_dev_full
def test_write_errors_never_raise_in_a_free_and_the_next_flush_says_so():
    name, log = registered_log("PyAlloc", "/dev/full")
    for _ in range(3000):                  # more than the buffer holds
        Buffer(8, 1, allocator=name).release()
    assert log.events == 6000
    assert log.lost > 0                    # lines went, no exception came
    with pytest.raises(OSError) as info:
        log.flush()
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == "/dev/full"
    assert "could not be written" in str(info.value)
    assert log.lost == 6000 + 1            # every line, and the header
    log.flush()                            # told once


@needs_dev_full
def test_lines_lost_at_dealloc_go_to_unraisablehook():
    log = memmanager.Log("PyAlloc", "/dev/full")
    name = fresh_name()
    memmanager.register_allocator(name, log)
    Buffer(8, 1, allocator=name).release()
    memmanager.register_allocator(name, memmanager.Log("PyAlloc", os.devnull))
    with catch_unraisable() as seen:
        del log
        gc.collect()
    assert len(seen) == 1 and seen[0][0] is OSError
    assert seen[0][1].errno == errno.ENOSPC


def test_dealloc_flushes(tmp_path):
    path = tmp_path / "dealloc.log"
    log = memmanager.Log("PyAlloc", path)
    name = fresh_name()
    memmanager.register_allocator(name, log)
    buf = Buffer(64, 1, allocator=name)
    buf.release()
    memmanager.register_allocator(name, memmanager.Log("PyAlloc", os.devnull))
    assert len(path.read_text().splitlines()) == 1   # the header; lines buffered
    del log, buf
    gc.collect()
    assert len(read_events(path)) == 2


def test_exit_flushes_live_logs_and_the_parent_replays(tmp_path):
    """A child writes a log and exits without flush(); the parent replays
    it and finds the peak the child's stats() saw."""
    path = tmp_path / "child.log"
    code = f"""
        import memmanager, random
        log = memmanager.Log("CMalloc", {str(path)!r})
        memmanager.register_allocator("Logged", log)
        rng = random.Random(7)
        live = []
        for i in range(3000):
            if live and rng.random() < 0.45:
                live.pop(rng.randrange(len(live))).release()
            else:
                live.append(memmanager.Buffer(rng.randrange(1, 70000), 1,
                                              allocator="Logged"))
        for buf in live[::2]:
            buf.release()
        print(memmanager.stats()["Logged"]["peak_bytes"], log.events,
              sum(b.nbytes for b in live[1::2]))
        keep = live                       # alive at exit: freed or not, flushed
    """
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    peak, events, live_bytes = map(int, done.stdout.split())
    for allocator in ("PyAlloc", "CMalloc"):
        result = memmanager.replay(path, allocator)
        assert result.peak_bytes == peak
        # Every line up to the print, and the frees of the buffers still
        # alive then, made while the interpreter shut down.
        assert result.events >= events
        assert result.allocations == result.frees + result.unfreed
        assert result.unfreed_bytes <= live_bytes


def test_exit_flushes_a_log_that_is_never_deallocated(tmp_path):
    """Only the exit hook can write these lines: the Log is leaked."""
    path = tmp_path / "leaked.log"
    code = f"""
        import ctypes, memmanager
        log = memmanager.Log("PyAlloc", {str(path)!r})
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(log))
        memmanager.register_allocator("Leaked", log)
        memmanager.Buffer(123, 1, allocator="Leaked").release()
        print(log.events)
    """
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2"]
    assert [(e[3], e[4]) for e in read_events(path)] == [("a", 123), ("f", 123)]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_drops_the_parents_buffered_lines(tmp_path):
    path = tmp_path / "fork.log"
    name, log = registered_log("PyAlloc", path)
    Buffer(100, 1, allocator=name).release()      # buffered, not written
    pid = os.fork()
    if pid == 0:
        try:
            Buffer(200, 1, allocator=name).release()
            log.flush()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    log.flush()
    events = read_events(path)
    assert sorted((e[1], e[4]) for e in events) == sorted(
        [(os.getpid(), 100)] * 2 + [(pid, 200)] * 2)
    result = memmanager.replay(path)
    assert (result.allocations, result.peak_bytes) == (2, 200)


# ---------------------------------------------------------------------------
# replay
# ---------------------------------------------------------------------------


def test_replay_of_a_log_over_a_limit_against_pyalloc_and_cmalloc(tmp_path):
    limit = memmanager.Limit("CMalloc", 1 << 20)
    capped = fresh_name("Cap")
    memmanager.register_allocator(capped, limit)
    path = tmp_path / "limit.log"
    name, log = registered_log(capped, path)
    a = Buffer(1000, 1, allocator=name)
    b = Buffer(5000, 1, allocator=name)
    a.release()
    c = Buffer(3000, 1, allocator=name)
    peak = memmanager.stats()[name]["peak_bytes"]
    b.release()
    c.release()
    log.flush()
    results = [memmanager.replay(path, allocator) for allocator in ("PyAlloc", "CMalloc")]
    for result in results:
        assert isinstance(result, memmanager.ReplayResult)
        assert (result.events, result.allocations, result.frees) == (6, 3, 3)
        assert (result.unfreed, result.unfreed_bytes) == (0, 0)
        assert result.seconds >= 0.0
    assert results[0].peak_bytes == results[1].peak_bytes == peak
    if not DEBUG:
        assert peak == 8000


def test_replay_against_adaptors(tmp_path):
    path = tmp_path / "x.log"
    write_log(path, [(1, 9, "a", 100, 0x1000, "X"), (2, 9, "a", 50, 0x2000, "X"),
                     (3, 9, "f", 100, 0x1000, "X")])
    limit = memmanager.Limit("CMalloc", 1 << 20)
    capped = fresh_name("Cap")
    memmanager.register_allocator(capped, limit)
    result = memmanager.replay(path, allocator=capped)
    assert (result.peak_bytes, result.unfreed, result.unfreed_bytes) == (150, 1, 50)
    assert limit.used == 0


def test_replay_reports_unfreed_and_orders_by_time(tmp_path):
    """Lines of two processes out of time order in the file: the peak is
    that of time order (150), not file order (100)."""
    path = tmp_path / "order.log"
    write_log(path, [(20, 2, "a", 50, 0x5000, "X"), (30, 2, "f", 50, 0x5000, "X"),
                     (10, 1, "a", 100, 0x5000, "X"), (40, 1, "f", 100, 0x5000, "X"),
                     (50, 1, "a", 7, 0x9000, "X")])
    result = memmanager.replay(str(path))
    assert result == memmanager.ReplayResult(5, 3, 2, result.seconds, 150, 1, 7)


def test_same_address_in_two_allocators_or_processes(tmp_path):
    path = tmp_path / "same.log"
    write_log(path, [(1, 1, "a", 10, 0x10, "A"), (2, 1, "a", 20, 0x10, "B"),
                     (3, 2, "a", 30, 0x10, "A"), (4, 1, "f", 10, 0x10, "A"),
                     (5, 2, "f", 30, 0x10, "A"), (6, 1, "f", 20, 0x10, "B")])
    result = memmanager.replay(path, "CMalloc")
    assert (result.allocations, result.frees, result.peak_bytes) == (3, 3, 60)


def test_replay_through_a_python_plugin(tmp_path):
    path = tmp_path / "plugin.log"
    write_log(path, [(i, 1, "a", 10 + i, 0x100 * (i + 1), "X") for i in range(50)] +
              [(100 + i, 1, "f", 10 + i, 0x100 * (i + 1), "X") for i in range(0, 50, 2)])
    plugin = Counting()
    name = fresh_name("Py")
    memmanager.register_allocator(name, plugin)
    result = memmanager.replay(path, name)
    assert (result.allocations, result.frees, result.unfreed) == (50, 25, 25)
    assert (plugin.mallocs, plugin.frees, plugin.live) == (50, 50, {})


def test_a_failing_allocation_frees_everything_and_propagates(tmp_path):
    path = tmp_path / "fail.log"
    write_log(path, [(i, 1, "a", 10, 0x100 * (i + 1), "X") for i in range(20)])
    plugin = Counting(fail_at=15)
    name = fresh_name("Py")
    memmanager.register_allocator(name, plugin)
    with pytest.raises(MemoryError, match="Counting: refused"):
        memmanager.replay(path, name)
    assert (plugin.mallocs, plugin.frees, plugin.live) == (15, 14, {})


def test_a_limit_too_small_propagates_and_nothing_stays(tmp_path):
    path = tmp_path / "big.log"
    write_log(path, [(i, 1, "a", 4096, 0x10000 * (i + 1), "X") for i in range(10)])
    upstream_before = memmanager.stats().get("CMalloc", {}).get("live_bytes", 0)
    limit = memmanager.Limit("CMalloc", 5 * 4096)
    capped = fresh_name("Cap")
    memmanager.register_allocator(capped, limit)
    with pytest.raises(memmanager.LimitExceededError):
        memmanager.replay(path, capped)
    assert limit.used == 0
    assert memmanager.stats().get("CMalloc", {}).get("live_bytes", 0) == upstream_before
    assert memmanager.stats().get(capped, {}).get("upstream_bytes", 0) == 0


def test_unknown_allocator(tmp_path):
    path = tmp_path / "u.log"
    write_log(path, [(1, 1, "a", 10, 0x10, "X")])
    with pytest.raises(memmanager.UnknownAllocatorError):
        memmanager.replay(path, fresh_name("Nope"))
    with pytest.raises(memmanager.UnknownAllocatorError):     # before any reading
        memmanager.replay(tmp_path / "missing.log", fresh_name("Nope"))
    with pytest.raises(TypeError):
        memmanager.replay(path, 3)


GOOD = HEADER + "time_ns pid tid event size address allocator\n1 1 1 a 10 0x10 X\n"
MALFORMED = {
    "empty": ("", "empty"),
    "no header": ("1 1 1 a 10 0x10 X\n", "line 1: not a memmanager log"),
    "version 2": ("# memmanager-log 2 x\n", "line 1: format version 2"),
    "no version": ("# memmanager-log x\n", "line 1: the header has no format version"),
    "truncated": (GOOD + "2 1 1 f 10 0x1", "line 3: the line is truncated"),
    "bad size": (GOOD + "2 1 1 a ten 0x20 X\n", "line 3: bad size 'ten'"),
    "negative size": (GOOD + "2 1 1 a -1 0x20 X\n", "line 3: bad size"),
    "huge size": (GOOD + "2 1 1 a 99999999999999999999 0x20 X\n", "line 3: bad size"),
    "bad time": (GOOD + "2x 1 1 a 1 0x20 X\n", "line 3: bad time"),
    "bad event": (GOOD + "2 1 1 x 1 0x20 X\n", "line 3: bad event 'x'"),
    "bad address": (GOOD + "2 1 1 a 1 0xzz X\n", "line 3: bad address '0xzz'"),
    "address without 0x": (GOOD + "2 1 1 a 1 20 X\n", "line 3: bad address"),
    "fewer fields": (GOOD + "2 1 1 a 1 0x20\n", "line 3: fewer fields"),
    "more fields": (GOOD + "2 1 1 a 1 0x20 X Y\n", "line 3: more fields"),
    "two spaces": (GOOD + "2 1 1  a 1 0x20 X\n", "line 3: fewer fields"),
    "free before alloc": (GOOD + "2 1 1 f 10 0x20 X\n", "line 3: free of 0x20"),
    "free of another allocator": (GOOD + "2 1 1 f 10 0x10 Y\n", "line 3: free of 0x10"),
    "double free": (GOOD + "2 1 1 f 10 0x10 X\n3 1 1 f 10 0x10 X\n", "line 4: free of 0x10"),
    "live twice": (GOOD + "2 1 1 a 10 0x10 X\n", "line 3: allocation at 0x10, which is "
                   "still live \\(allocated at line 2\\)"),
    "free of another size": (GOOD + "2 1 1 f 11 0x10 X\n", "line 3: free of 11 bytes"),
    "NUL byte": (GOOD + "2 1 1 a 10 0x20 X\0\n", "line 3: the line holds a NUL"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_files_allocate_nothing(tmp_path, case):
    content, message = MALFORMED[case]
    path = tmp_path / "bad.log"
    path.write_bytes(content.encode())
    plugin = Counting()
    name = fresh_name("Py")
    memmanager.register_allocator(name, plugin)
    for allocator in (name, "CMalloc"):
        stats_before = memmanager.stats()
        with pytest.raises(ValueError, match=message) as info:
            memmanager.replay(path, allocator)
        assert str(path) in str(info.value)
        assert memmanager.stats() == stats_before
    assert plugin.mallocs == 0


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        memmanager.replay(tmp_path / "missing.log")
    assert info.value.filename == str(tmp_path / "missing.log")
    with pytest.raises(IsADirectoryError) as info:
        memmanager.replay(tmp_path)
    assert info.value.filename == str(tmp_path)


def test_header_comments_and_blank_lines_are_accepted(tmp_path):
    path = tmp_path / "c.log"
    path.write_text(GOOD + "\n# a comment\n" + HEADER + "again\n2 1 1 f 10 0x10 X\n")
    result = memmanager.replay(path)
    assert (result.events, result.peak_bytes, result.unfreed) == (2, 10, 0)


def test_a_header_only_log(tmp_path):
    path = tmp_path / "h.log"
    path.write_text(HEADER + "\n")
    result = memmanager.replay(path)
    assert result[:3] == (0, 0, 0) and result[4:] == (0, 0, 0)


def test_replay_module_function_signature():
    text = textwrap.dedent(memmanager.replay.__doc__ or "")
    assert "ValueError" in text
    assert sys.modules["memmanager"].ReplayResult._fields == (
        "events", "allocations", "frees", "seconds", "peak_bytes", "unfreed",
        "unfreed_bytes")
