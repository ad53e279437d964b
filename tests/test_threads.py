"""Threads and fork (DESIGN sections 5 and 10).

- A stress test: worker threads create, consume, export, write, copy and
  release buffers (their own and a shared pool's) for a bounded time, with
  a short switch interval so they interleave finely, while another thread
  takes the registry's lock without the GIL.  The registry, stats() and
  every death stub are checked at the end.
- Fork: a child must be able to allocate after os.fork(), even when
  another thread of the parent was inside the registry's lock at that
  moment.  The registry's pthread_atfork handlers make that true; without
  them the child inherits a held spinlock and hangs on its first
  allocation, which these tests see as a child that never exits.

The allocators, sources and exporters come from surface.py.
"""

import gc
import os
import random
import signal
import sys
import threading
import time
import traceback

import pytest

import memmanager
from memmanager import Buffer

import surface
from conftest import SUBINTERPRETERS, catch_unraisable, scaled

STRESS_SECONDS = scaled(2.0, 0.5)
WORKERS = 4
FORKS = scaled(40, 6)
CHILD_TIMEOUT = scaled(20.0, 120.0)
BIG = 1 << 20   # past the thresholds where fills, copies and frees drop the GIL


def registry_consistent():
    count = memmanager._core._registry_check()
    assert count == len(memmanager.live_buffers()) == memmanager.stats()["total"]["live_buffers"]
    return count


class Spinner(threading.Thread):
    """Hammers the registry's lock with the GIL released until stopped."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.rounds = 0

    def run(self):
        while not self.stop.is_set():
            memmanager._core._registry_spin(20000)
            self.rounds += 1

    def __enter__(self):
        self.start()
        while self.rounds == 0:
            time.sleep(0.001)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.join()


@pytest.fixture
def fine_switching():
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(previous)


# --------------------------------------------------------------------------
# the stress test

class Stubs:
    """Counts death-stub calls per buffer, from any thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = {}
        self.next_key = 0

    def new(self):
        with self.lock:
            self.next_key += 1
            key = self.next_key
            self.calls[key] = 0

        def stub(info):
            with self.lock:
                self.calls[key] += 1
            assert info["buffer_size"] > 0
        return stub


class Worker(threading.Thread):
    MAX_MINE = 24
    MAX_POOL = 12
    MIN_OPERATIONS = 60     # however slow the machine (valgrind)

    def __init__(self, seed, deadline, pool, pool_lock, stubs, errors):
        super().__init__()
        self.random = random.Random(seed)
        self.deadline = deadline
        self.pool, self.pool_lock = pool, pool_lock
        self.stubs = stubs
        self.errors = errors
        self.mine = []          # buffers only this thread touches
        self.exports = []       # (exporter, export) held by this thread
        self.adoptions = []     # sources to clean up once their buffers are gone
        self.operations = 0

    def run(self):
        ops = [self.create, self.create_big, self.consume, self.export, self.end_export,
               self.release_mine, self.share, self.release_shared, self.export_shared,
               self.copy_big, self.collect_mine, self.snapshot]
        try:
            while time.monotonic() < self.deadline or self.operations < self.MIN_OPERATIONS:
                self.random.choice(ops)()
                self.operations += 1
        except BaseException:
            self.errors.append(traceback.format_exc())
        finally:
            self.cleanup()

    def room(self):
        """Keeps the number of live buffers bounded."""
        while len(self.mine) >= self.MAX_MINE:
            while self.exports:
                self.end_export()
            self.release_mine()

    def create(self):
        self.room()
        name, options = self.random.choice(surface.ALLOCATOR_CHOICES)
        buf = Buffer(self.random.randint(1, 4096), 1, allocator=name, death_stub=self.stubs.new(),
                     delayed_gc=self.random.random() < 0.2, **options)
        self.mine.append(buf)

    def create_big(self):
        self.room()
        name, options = self.random.choice(surface.ALLOCATOR_CHOICES)
        self.mine.append(Buffer(BIG, 1, allocator=name, init_value=self.random.randint(1, 255),
                                death_stub=self.stubs.new(), **options))

    def consume(self):
        self.room()
        kind = self.random.choice(surface.SOURCES)
        nbytes = self.random.randint(2, 256)
        adoption = kind.prepare(nbytes, bytes(self.random.getrandbits(8) for _ in range(nbytes)))
        try:
            buf = Buffer.consume(adoption.source, nbytes, 1, delayed_gc=False,
                                 death_stub=self.stubs.new(), **adoption.kwargs)
        except BaseException:
            adoption.refused()
            raise
        adoption.adopted()
        assert buf.extract_buffer_region() == adoption.content, kind.name
        self.adoptions.append(adoption)
        self.mine.append(buf)

    def export(self, buf=None):
        buf = buf or (self.random.choice(self.mine) if self.mine else None)
        if buf is None or buf.released:
            return
        exporter = self.random.choice(surface.EXPORTERS)
        if exporter.needs_writable and buf.readonly:
            return
        self.exports.append((exporter, exporter.export(buf)))

    def end_export(self):
        if self.exports:
            exporter, export = self.exports.pop(self.random.randrange(len(self.exports)))
            exporter.end(export.handle)

    def release_mine(self):
        if not self.mine:
            return
        buf = self.mine.pop(self.random.randrange(len(self.mine)))
        try:
            buf.release()
        except BufferError:     # one of this thread's exports holds it
            assert buf.exports > 0
            self.mine.append(buf)

    def share(self):
        with self.pool_lock:
            if self.mine and len(self.pool) < self.MAX_POOL:
                self.pool.append(self.mine.pop())

    def pooled(self):
        with self.pool_lock:
            return self.random.choice(self.pool) if self.pool else None

    def release_shared(self):
        buf = self.pooled()
        if buf is None:
            return
        try:
            buf.release()       # another thread may hold an export
        except BufferError:
            return
        with self.pool_lock:
            if buf in self.pool:
                self.pool.remove(buf)

    def export_shared(self):
        buf = self.pooled()
        if buf is None:
            return
        try:
            self.export(buf)
        except ValueError as exc:     # released by another thread meanwhile
            assert "released" in str(exc)

    def copy_big(self):
        """A copy that drops the GIL, while others may try to release it."""
        with self.pool_lock:
            if len(self.pool) >= self.MAX_POOL:
                return
            buf = Buffer(BIG, 1, init_value=3, allocator="CMalloc", death_stub=self.stubs.new())
            self.pool.append(buf)
        try:
            data = buf.extract_buffer_region()
        except ValueError as exc:
            assert "released" in str(exc)
        else:
            assert data is not None and len(data) == BIG and data[::4096] == b"\x03" * 256

    def collect_mine(self):
        pinned = [b for b in self.mine if not b.released and b.delayed_gc]
        if pinned:
            memmanager.collect_delayed(pinned[:2])

    def snapshot(self):
        rows = memmanager.live_buffers()
        assert all(row.nbytes > 0 for row in rows)
        memmanager.stats()
        if self.random.random() < 0.05:
            gc.collect()

    def cleanup(self):
        while self.exports:
            self.end_export()
        for buf in self.mine:
            buf.release()
        self.mine.clear()


def close_sources(workers):
    for worker in workers:
        for adoption in worker.adoptions:
            adoption.closing()


def test_threads_stress(fine_switching):
    gc.collect()
    baseline = registry_consistent()
    pool, pool_lock, stubs, errors = [], threading.Lock(), Stubs(), []
    deadline = time.monotonic() + STRESS_SECONDS
    workers = [Worker(seed, deadline, pool, pool_lock, stubs, errors) for seed in range(WORKERS)]
    with catch_unraisable() as unraisable, Spinner() as spinner:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=STRESS_SECONDS + 120)
            assert not worker.is_alive(), "a worker thread hung"
    assert errors == [], errors[0]
    for buf in pool:
        buf.release()
    pool.clear()
    memmanager.collect_delayed()
    gc.collect()
    close_sources(workers)
    assert unraisable == []
    assert registry_consistent() == baseline
    assert stubs.calls and set(stubs.calls.values()) == {1}, \
        "a death stub ran twice, or a buffer was never freed"
    assert sum(w.operations for w in workers) >= Worker.MIN_OPERATIONS * WORKERS
    assert spinner.rounds > 0


GIL_ONLY_STRESS = """
import ctypes, random, sys, threading, time
import memmanager
from memmanager import Buffer

sys.setswitchinterval(1e-6)
deadline = time.monotonic() + {seconds}
errors, counts = [], []

def work(seed):
    rng, mine, n = random.Random(seed), [], 0
    owner = bytearray(4096)
    address = ctypes.addressof((ctypes.c_char * 4096).from_buffer(owner))
    try:
        while time.monotonic() < deadline:
            choice = rng.random()
            if choice < 0.4:
                mine.append(Buffer(rng.choice((64, 4096, 1 << 20)), 1, init_value=1,
                                   allocator=rng.choice(("PyAlloc", "CMalloc", "Aligned"))))
            elif choice < 0.6:       # each thread its own bytes: no overlap
                Buffer.consume(address, 64, 1, allocator="Borrowed",
                               owner=owner, delayed_gc=False).release()
            elif choice < 0.7:
                memmanager.live_buffers(); memmanager.stats()
            elif mine:
                mine.pop(rng.randrange(len(mine))).release()
            n += 1
    except Exception as error:
        errors.append(repr(error))
    for buf in mine:
        buf.release()
    counts.append(n)

threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
assert not memmanager._core._registry_locking(), "something took the GIL-free path"
assert errors == [], errors
assert memmanager._core._registry_check() == 0
print(sum(counts))
"""


def test_threads_stress_on_the_gil_alone():
    """The registry skips its lock until something uses it without the GIL
    (the tests above do, through _registry_spin, and that lasts for the
    process): a fresh process checks that the GIL alone keeps four busy
    threads out of each other's way."""
    import subprocess
    code = GIL_ONLY_STRESS.format(seconds=STRESS_SECONDS)
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code],
                          capture_output=True, text=True, timeout=STRESS_SECONDS + 120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) > 1000, proc.stdout


SUBINTERPRETER_IMPORT = SUBINTERPRETERS + """
import memmanager
assert not memmanager._core._registry_locking()
interp = new_interp()
interpreters.run_string(interp, "import memmanager; memmanager.Buffer(8, 1).release()")
assert memmanager._core._registry_locking(), "a subinterpreter left the lock off"
memmanager.Buffer(8, 1).release()
interpreters.destroy(interp)
"""


def test_a_subinterpreter_turns_the_registry_lock_on():
    """The registry is process-wide; a subinterpreter may have a GIL of its
    own, so importing memmanager there makes every caller take the lock."""
    import subprocess
    try:
        import _interpreters  # noqa: F401
    except ImportError:
        pytest.importorskip("_xxsubinterpreters")
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", SUBINTERPRETER_IMPORT],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_release_races_a_copy_without_the_gil(fine_switching):
    """While one thread copies a big buffer without the GIL, another's
    release() is refused (the copy holds an internal export): the memory is
    never freed under the copy.  (Without that hold, the 8 MiB block, an
    mmap of glibc's, is unmapped mid-copy and the copier crashes.)"""
    buf = Buffer(8 * BIG, 1, init_value=9, allocator="CMalloc")
    copies, copied, stop = [], threading.Event(), threading.Event()

    def copier():
        while not stop.is_set():
            try:
                data = buf.extract_buffer_region()
            except ValueError:          # released between two copies
                return
            copies.append(data[::BIG] == b"\x09" * 8 and len(data) == 8 * BIG)
            copied.set()

    thread = threading.Thread(target=copier)
    thread.start()
    refused = 0
    try:
        copied.wait()
        deadline = time.monotonic() + STRESS_SECONDS / 2
        while time.monotonic() < deadline:
            try:
                buf.release()
                break           # between two copies: allowed
            except BufferError:
                refused += 1
    finally:
        stop.set()
        thread.join()
    buf.release()
    assert buf.released
    assert copies and all(copies)
    assert refused > 0, "release() never met a copy in progress"


# --------------------------------------------------------------------------
# fork

def wait_for_child(pid, timeout=CHILD_TIMEOUT):
    """The child's exit status; kills it and fails when it hangs."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("a forked child hung: it inherited a held registry lock")
        time.sleep(0.002)


def fork_and_run(child_body):
    """Runs child_body() in a forked child; its exit code (0: it returned)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child_body()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return wait_for_child(pid)


def allocate_in_child():
    for name, options in surface.ALLOCATOR_CHOICES:
        buf = Buffer(64, 1, allocator=name, init_value=5, **options)
        assert buf.extract_buffer_region(0, 3) == b"\x05" * 4
        buf.release()
    assert memmanager._core._registry_check() == len(memmanager.live_buffers())


def test_fork_while_another_thread_holds_the_registry_lock():
    with Spinner():
        codes = [fork_and_run(allocate_in_child) for _ in range(FORKS)]
    assert codes == [0] * FORKS


def test_fork_while_threads_create_and_destroy():
    stop = threading.Event()
    errors = []

    def churn(seed):
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                name, options = rng.choice(surface.ALLOCATOR_CHOICES)
                bufs = [Buffer(rng.randint(1, 512), 1, allocator=name, **options) for _ in range(8)]
                for buf in bufs:
                    buf.release()
        except BaseException:
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=churn, args=(seed,)) for seed in range(2)]
    for thread in threads:
        thread.start()
    try:
        with Spinner():
            codes = [fork_and_run(allocate_in_child) for _ in range(FORKS)]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert codes == [0] * FORKS
    registry_consistent()


def test_child_owns_its_copy_of_the_parents_buffers():
    parent = Buffer(32, 1, init_value=1, allocator="CMalloc")
    pinned = Buffer(16, 1, init_value=2, delayed_gc=True)

    def child():
        assert parent.extract_buffer_region() == b"\x01" * 32
        parent[0] = 99                         # the child's copy only
        parent.release()
        assert memmanager.collect_delayed([pinned]) == [pinned.identifier]
        pinned.release()
        allocate_in_child()

    assert fork_and_run(child) == 0
    assert parent.extract_buffer_region() == b"\x01" * 32
    assert pinned.delayed_gc and not parent.released
    registry_consistent()
    parent.release()
    pinned.release()
