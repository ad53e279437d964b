"""SharedMemory against an attacker (issue 12; DESIGN section 4): a full
/dev/shm is a MemoryError, never a SIGBUS; names are unlinked when the
creator's buffer dies, at exit while exports live, and by the tracker
process when the creator is killed; attachers never unlink; a pickle
sends the name, so a pool worker writes into the parent's memory.

Most tests run a fresh interpreter, since what they check is what a
process leaves behind when it ends.
"""

import concurrent.futures
import copy
import multiprocessing
import os
import pathlib
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

import memmanager
from memmanager import Buffer

from conftest import SUBINTERPRETERS

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHM_DIR = "/dev/shm"

pytestmark = pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="needs /dev/shm")


def unique_name():
    return f"mmtest_{os.getpid()}_{uuid.uuid4().hex[:12]}"


def exists(name):
    return os.path.exists(os.path.join(SHM_DIR, name.lstrip("/")))


def child_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("MEMMANAGER_DEBUG", None)
    env.update(extra)
    return env


def run_python(code, *args, timeout=60, **env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          cwd=ROOT, env=child_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def wait_gone(names, seconds=15.0):
    """Waits (the tracker works asynchronously) until no name exists;
    returns those still there."""
    deadline = time.monotonic() + seconds
    left = [n for n in names if exists(n)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [n for n in left if exists(n)]
    return left


def remove(names):
    for name in names:
        try:
            os.unlink(os.path.join(SHM_DIR, name.lstrip("/")))
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------------------
# Bug 1: a full /dev/shm is a MemoryError, never a SIGBUS
# ---------------------------------------------------------------------------

FULL_SHM = """
    from memmanager import Buffer
    MiB = 1 << 20
    first = Buffer(5 * MiB, 1, allocator="SharedMemory")
    try:
        # Fits by the free-space count (nothing is used yet), not beside
        # the first once both are written: the pages must be reserved now.
        second = Buffer(5 * MiB, 1, allocator="SharedMemory")
    except MemoryError as exc:
        print("MemoryError", exc)
        second = None
    first[:] = b"\\x01" * (5 * MiB)
    if second is not None:
        second[:] = b"\\x02" * (5 * MiB)           # SIGBUS without reservation
        print("both written")
    third = Buffer(2 * MiB, 1, allocator="SharedMemory", init_value=3)
    third[:] = b"\\x04" * (2 * MiB)                # what is left is really there
    assert first[5 * MiB - 1] == 1 and third[0] == 4
    print("done")
"""


def run_in_private_tmpfs(code, size="8M"):
    """Runs code with a private tmpfs of `size` on /dev/shm, in a mount
    namespace of its own (nothing is mounted outside it; the mount goes
    with the namespace's last process).  Skips where that is not allowed."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare(1) for a private /dev/shm")
    script = ('mount -t tmpfs -o size="$1" memmanager-test /dev/shm || exit 77; '
              'shift; exec "$@"')
    result = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         size, sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    if result.returncode == 77 or (result.returncode != 0 and "unshare" in result.stderr
                                   and not result.stdout):
        pytest.skip(f"cannot mount a private tmpfs here: {result.stderr.strip()[:200]}")
    return result


def test_full_dev_shm_is_memory_error_not_sigbus():
    result = run_in_private_tmpfs(FULL_SHM)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("MemoryError") and "no room" in lines[0], lines
    assert lines[-1] == "done"


def test_reserved_pages_are_counted_at_creation():
    before = os.statvfs(SHM_DIR)
    buf = Buffer(8 << 20, 1, allocator="SharedMemory")
    try:
        after = os.statvfs(SHM_DIR)
        used = (before.f_bavail - after.f_bavail) * after.f_bsize
        # Other processes share /dev/shm: allow slack, but 8 MiB must show.
        assert used >= (6 << 20), used
        assert buf[0] == 0 and buf[(8 << 20) - 1] == 0     # reserved pages are zero
    finally:
        buf.release()


# ---------------------------------------------------------------------------
# Bug 2: the creator unlinks at exit even while exports live
# ---------------------------------------------------------------------------

EXIT_WITH_EXPORTS = """
    import gc, numpy, memmanager
    from memmanager import Buffer
    names = []
    def make(**kw):
        buf = Buffer(4096, 1, allocator="SharedMemory", **kw)
        names.append(buf.name)
        return buf
    view = memoryview(make())                       # an export in a global
    array = numpy.asarray(make())
    pinned = make(delayed_gc=True)
    pinned_view = pinned.region(0, 10)
    class Cycle:
        pass
    cycle = Cycle()
    cycle.me = cycle
    cycle.view = memoryview(make())
    region = make().region(1, 3)
    # Exports that are never given back at shutdown (numpy keeps DLPack
    # imports alive, a capsule nobody consumed stays): their buffers never
    # die, so only the exit hook unlinks their names.
    from_dlpack = numpy.from_dlpack(make())
    capsule = make().__dlpack__(max_version=(1, 0))
    print(" ".join(names), flush=True)
"""


def test_names_unlinked_at_exit_while_exports_live():
    # No tracker: this is the atexit hook's work alone.
    result = run_python(EXIT_WITH_EXPORTS, MEMMANAGER_SHM_TRACKER="0")
    assert result.returncode == 0, result.stderr
    names = result.stdout.split()
    assert len(names) == 7
    left = [n for n in names if exists(n)]
    remove(left)
    assert left == []


def test_exit_hook_unlinks_only_names_of_this_interpreter():
    result = run_python(SUBINTERPRETERS + textwrap.dedent("""
        import os
        from memmanager import Buffer
        main = Buffer(4096, 1, allocator="SharedMemory")
        main_view = memoryview(main)
        interp = new_interp()
        read, write = os.pipe()
        interpreters.run_string(interp, "\\n".join([
            "import os",
            "from memmanager import Buffer",
            "sub = Buffer(4096, 1, allocator='SharedMemory')",
            "sub_view = memoryview(sub)",
            # a reference nothing gives back: the buffer outlives its interpreter
            "import ctypes; ctypes.pythonapi.Py_IncRef(ctypes.py_object(sub))",
            f"os.write({write}, sub.name.encode())"]))
        os.close(write)
        sub_name = os.read(read, 300).decode()
        interpreters.destroy(interp)         # runs the subinterpreter's atexit
        print(sub_name, os.path.exists("/dev/shm/" + sub_name))
        print(main.name, os.path.exists("/dev/shm/" + main.name))
    """), MEMMANAGER_SHM_TRACKER="0")
    assert result.returncode == 0, result.stderr
    (sub_name, sub_after), (main_name, main_during) = (
        line.split() for line in result.stdout.splitlines())
    remove([sub_name, main_name])
    assert sub_after == "False"              # its own: unlinked at its end
    assert main_during == "True"             # the main interpreter's: untouched
    assert not exists(main_name)             # ... until the main one exits


def test_forked_child_exiting_normally_keeps_the_parents_names():
    result = run_python("""
        import os, sys
        from memmanager import Buffer
        buf = Buffer(4096, 1, allocator="SharedMemory")
        keep = memoryview(buf)
        pid = os.fork()
        if pid == 0:
            sys.exit(0)                      # atexit hooks run in the child
        os.waitpid(pid, 0)
        print(os.path.exists("/dev/shm/" + buf.name))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True"]


# ---------------------------------------------------------------------------
# Bug 3: a creator killed outright leaves nothing (the tracker)
# ---------------------------------------------------------------------------

KILLED_CREATOR = """
    import os, signal, sys
    from memmanager import Buffer
    bufs = [Buffer(4096, 1, allocator="SharedMemory"),
            Buffer(3 << 20, 1, allocator="SharedMemory", init_value=1),
            Buffer(10, 1, allocator="SharedMemory", name=sys.argv[1])]
    released = Buffer(10, 1, allocator="SharedMemory")
    released.release()                       # unlinked and forgotten already
    keep = [memoryview(b) for b in bufs]
    print(" ".join(b.name for b in bufs), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkilled_creator_leaves_nothing():
    given = unique_name()
    result = run_python(KILLED_CREATOR, given)
    assert result.returncode == -signal.SIGKILL, result.stderr
    names = result.stdout.split()
    assert len(names) == 3 and given in names
    left = wait_gone(names)
    remove(left)
    assert left == []


def test_without_the_tracker_a_killed_creator_leaves_its_names():
    # MEMMANAGER_SHM_TRACKER=0 is the documented way out, and what it costs.
    result = run_python(KILLED_CREATOR, unique_name(), MEMMANAGER_SHM_TRACKER="0")
    names = result.stdout.split()
    try:
        assert result.returncode == -signal.SIGKILL, result.stderr
        time.sleep(0.5)
        assert all(exists(n) for n in names)
    finally:
        remove(names)


def test_killed_forked_child_is_cleaned_while_its_parent_lives():
    result = run_python("""
        import os, signal, time
        from memmanager import Buffer
        parent_buf = Buffer(4096, 1, allocator="SharedMemory")   # starts the tracker
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            child_buf = Buffer(4096, 1, allocator="SharedMemory")  # the same tracker
            os.write(write, child_buf.name.encode())
            os.kill(os.getpid(), signal.SIGKILL)
        os.close(write)
        name = os.read(read, 300).decode()
        os.waitpid(pid, 0)
        deadline = time.monotonic() + 15
        while os.path.exists("/dev/shm/" + name) and time.monotonic() < deadline:
            time.sleep(0.05)
        print(name, os.path.exists("/dev/shm/" + name),
              os.path.exists("/dev/shm/" + parent_buf.name))
    """)
    assert result.returncode == 0, result.stderr
    name, child_left, parent_kept = result.stdout.split()
    remove([name])
    assert (child_left, parent_kept) == ("False", "True")


def test_killed_attacher_does_not_unlink(make_buffer):
    ours = make_buffer(4096, 1, allocator="SharedMemory", init_value=5)
    result = run_python("""
        import os, pickle, signal, sys
        from memmanager import Buffer
        own = Buffer(64, 1, allocator="SharedMemory")   # this process has a tracker
        attached = Buffer.attach(sys.argv[1])
        loaded = pickle.loads(bytes.fromhex(sys.argv[2]))
        attached[0] = 6
        print(own.name, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """, ours.name, pickle.dumps(ours).hex())
    assert result.returncode == -signal.SIGKILL, result.stderr
    own = result.stdout.strip()
    assert wait_gone([own]) == []            # the attacher's own name went
    time.sleep(0.2)
    assert exists(ours.name)                 # ours stays: attaching is not owning
    assert ours[0] == 6
    assert Buffer.attach(ours.name)[1] == 5


def tracker_pids(tag):
    """Pids of the trackers whose environment holds tag."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if b"_shm_tracker.py" in cmdline and tag.encode() in environ:
            pids.append(int(entry))
    return pids


def test_a_killed_tracker_is_replaced_and_learns_the_names():
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs /proc")
    tag = uuid.uuid4().hex
    result = run_python("""
        import os, signal, sys, time
        sys.path.insert(0, "tests")
        from test_attack_shm import tracker_pids
        from memmanager import Buffer
        tag = os.environ["MM_TEST_TAG"]
        first = Buffer(4096, 1, allocator="SharedMemory")
        [old] = tracker_pids(tag)
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while old in tracker_pids(tag) and time.monotonic() < deadline:
            time.sleep(0.02)
        second = Buffer(4096, 1, allocator="SharedMemory")   # finds it dead
        third = Buffer(4096, 1, allocator="SharedMemory")
        new = tracker_pids(tag)
        assert new and old not in new, (old, new)
        print(first.name, second.name, third.name, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """, MM_TEST_TAG=tag)
    assert result.returncode == -signal.SIGKILL, result.stderr
    names = result.stdout.split()
    assert len(names) == 3
    left = wait_gone(names)
    remove(left)
    assert left == []


def test_tracker_is_nobodys_child():
    # os.wait() in the creator must not find (or wait for) the tracker.
    result = run_python("""
        import os
        from memmanager import Buffer
        buf = Buffer(64, 1, allocator="SharedMemory")
        try:
            os.wait()
            print("a child")
        except ChildProcessError:
            print("no child")
    """, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no child"


def test_generated_prefix_from_the_environment():
    result = run_python("""
        from memmanager import Buffer
        print(Buffer(8, 1, allocator="SharedMemory").name)
    """, MEMMANAGER_SHM_PREFIX="mmprefix.x-")
    assert result.stdout.startswith("mmprefix.x-"), result.stderr
    for bad in ("a/b", "", "x" * 65, "sp ace"):
        result = run_python("""
            from memmanager import Buffer
            print(Buffer(8, 1, allocator="SharedMemory").name)
        """, MEMMANAGER_SHM_PREFIX=bad)
        assert result.stdout.startswith("mm_"), (bad, result.stdout, result.stderr)


# ---------------------------------------------------------------------------
# Bug 5: pickling sends the name; a pool worker writes into our memory
# ---------------------------------------------------------------------------

def worker_write(buf, start, data):
    assert buf.allocator == "SharedMemory"
    buf[start:start + len(data)] = data
    return buf.name, buf.nbytes


def worker_read(buf):
    return buf.readonly, buf[:8]


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_pool_worker_writes_into_the_parents_buffer(method, make_buffer):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method")
    buf = make_buffer(100, 2, allocator="SharedMemory", init_value=0)
    context = multiprocessing.get_context(method)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        name, nbytes = pool.submit(worker_write, buf, 10, b"worker").result(timeout=120)
        assert (name, nbytes) == (buf.name, 200)
        assert buf[10:16] == b"worker"                     # seen by the parent
        ro = Buffer.attach(buf.name, 4, 2, readonly=True)
        assert pool.submit(worker_read, ro).result(timeout=120) == (True, bytes(8))
        ro.release()
    # The workers have exited: attaching never unlinked the name.
    assert exists(buf.name)
    assert Buffer.attach(buf.name)[10:16] == b"worker"


def test_pickle_round_trip_attaches(make_buffer):
    class_name_check = make_buffer(16, 4, allocator="SharedMemory", init_value=9)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        clone = pickle.loads(pickle.dumps(class_name_check, protocol))
        assert clone.name == class_name_check.name
        assert (clone.num_items, clone.itemsize) == (16, 4)
        clone[0] = protocol
        assert class_name_check[0] == protocol               # the same memory
        again = pickle.loads(pickle.dumps(clone, protocol))  # an attached one too
        assert again.name == clone.name
        clone.release()
        again.release()
    assert exists(class_name_check.name)


def test_pickle_loaded_after_the_creator_died():
    buf = Buffer(64, 1, allocator="SharedMemory")
    data = pickle.dumps(buf)
    name = buf.name
    buf.release()
    with pytest.raises(FileNotFoundError, match="is gone") as info:
        pickle.loads(data)
    assert info.value.filename == name


def test_pickle_smaller_object_under_the_name_is_refused():
    name = unique_name()
    big = Buffer(4096, 1, allocator="SharedMemory", name=name)
    data = pickle.dumps(big)
    big.release()
    small = Buffer(100, 1, allocator="SharedMemory", name=name)   # reused name
    try:
        with pytest.raises(ValueError, match="100 bytes"):
            pickle.loads(data)
    finally:
        small.release()


class Tagged(Buffer):
    """A subclass with instance attributes (module level, so it pickles)."""


def test_subclass_and_readonly_travel_by_name(make_buffer):
    buf = Tagged(32, 1, allocator="SharedMemory", init_value=1)
    buf.tag = "hello"
    try:
        clone = pickle.loads(pickle.dumps(buf))
        assert type(clone) is Tagged and clone.tag == "hello"
        assert clone.name == buf.name
        ro = Buffer.attach(buf.name, readonly=True)
        ro_clone = pickle.loads(pickle.dumps(ro))
        assert ro_clone.readonly and ro_clone[0] == 1
        for b in (clone, ro, ro_clone):
            b.release()
    finally:
        buf.release()


class Lying(Buffer):
    """A subclass whose name property names a segment it does not have."""

    @property
    def name(self):
        return "not-this-one"


def test_a_subclass_cannot_fake_the_name():
    buf = Lying(8, 1, init_value=2)                  # a PyAlloc buffer
    clone = pickle.loads(pickle.dumps(buf))
    assert clone.allocator == "PyAlloc" and clone[:] == bytes([2] * 8)


def test_copy_is_a_private_copy(make_buffer):
    buf = make_buffer(16, 1, allocator="SharedMemory", init_value=4)
    tagged = Tagged(8, 1, allocator="SharedMemory", init_value=7)
    tagged.tag = ["deep"]
    try:
        for clone in (copy.copy(buf), copy.deepcopy(buf)):
            assert clone.allocator == "PyAlloc" and clone[:] == buf[:]
            clone[0] = 99
            assert buf[0] == 4
        shallow, deep = copy.copy(tagged), copy.deepcopy(tagged)
        assert type(deep) is Tagged and deep.tag == ["deep"]
        assert shallow.tag is tagged.tag and deep.tag is not tagged.tag
        assert deep.allocator == "PyAlloc"
    finally:
        tagged.release()


# ---------------------------------------------------------------------------
# Attach: sizes from the object, and what it checks
# ---------------------------------------------------------------------------

def test_attach_an_empty_object_is_refused():
    _posixshmem = pytest.importorskip("_posixshmem")
    name = unique_name()
    fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.close(fd)
    try:
        with pytest.raises(ValueError, match="0 bytes"):
            Buffer.attach(name)
        with pytest.raises(ValueError, match="0 bytes"):
            Buffer.attach(name, 1, 1)
    finally:
        _posixshmem.shm_unlink("/" + name)


def test_attach_checks_the_size_when_it_maps():
    # A segment another process truncated is refused at attach time; one
    # truncated after attaching would SIGBUS on access (inherent, documented).
    segment = Buffer(8192, 1, allocator="SharedMemory")
    try:
        fd = os.open(os.path.join(SHM_DIR, segment.name), os.O_RDWR)
        os.ftruncate(fd, 4096)
        os.close(fd)
        with pytest.raises(ValueError, match="4096 bytes, 8192"):
            Buffer.attach(segment.name, 8192, 1)
        assert Buffer.attach(segment.name).nbytes == 4096
    finally:
        segment.release()



# ---------------------------------------------------------------------------
# The tracker's command and bookkeeping
# ---------------------------------------------------------------------------

BAD_TRACKER_COMMAND = """
    import os
    import memmanager, memmanager._shm_tracker as tracker
    from memmanager import Buffer
    real = tracker.command
    before = len(os.listdir("/dev/shm"))
    for bad, error in ((lambda: "python", TypeError), (lambda: [], TypeError),
                       (lambda: [b"python"], TypeError), (lambda: [None], TypeError),
                       (lambda: ["/nonexistent/python"], OSError),
                       (lambda: ["/bin/true"], OSError)):   # never answers b"ok"
        tracker.command = bad
        try:
            Buffer(64, 1, allocator="SharedMemory")
        except error as exc:
            print(type(exc).__name__)
        else:
            raise AssertionError(bad)
    assert memmanager.stats()["total"]["live_buffers"] == 0
    assert len(os.listdir("/dev/shm")) <= before     # nothing was created
    tracker.command = real
    buf = Buffer(64, 1, allocator="SharedMemory")
    print("ok", buf.name)
"""


def test_bad_tracker_command_creates_nothing():
    result = run_python(BAD_TRACKER_COMMAND)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:-1] == ["TypeError"] * 4 + ["OSError"] * 2
    assert lines[-1].startswith("ok ")
    assert not exists(lines[-1].split()[1])


class FakePoller:
    def __init__(self):
        self.fds = set()

    def register(self, fd, _events):
        self.fds.add(fd)

    def unregister(self, fd):
        self.fds.discard(fd)


def pidfd_works():
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


@pytest.mark.skipif(not pidfd_works(), reason="no pidfd_open here (valgrind 3.19 "
                    "answers ENOSYS): the tracker then waits for the final EOF")
def test_tracker_bookkeeping(monkeypatch):
    from memmanager import _shm_tracker
    import select
    unlinked = []
    monkeypatch.setattr(_shm_tracker, "_unlink", unlinked.append)
    tracker = _shm_tracker.Tracker(FakePoller(), select)
    me = os.getpid()
    tracker.message(b"R/kept", me)
    tracker.message(b"R/released", me)
    tracker.message(b"U/released", me)
    tracker.message(b"Rno-slash", me)            # not a POSIX name: ignored
    tracker.message(b"X/unknown", me)
    tracker.message(b"R/\xff\xfe", me)           # not UTF-8: kept as it is
    tracker.message(b"U/never-registered", me)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tracker.message(b"R/of-the-dead", dead.pid)  # died before it was watched
    assert unlinked == ["/of-the-dead"]
    tracker.finish()
    assert sorted(unlinked) == sorted(["/of-the-dead", "/kept", "/\udcff\udcfe"])
    for fd in list(tracker.pidfds):
        os.close(fd)
