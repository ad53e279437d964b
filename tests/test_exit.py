"""Interpreter exit: DESIGN section 6 and docs/api-decisions.md (lifetime).

Each test runs a fresh interpreter (sys.executable -c ...) from the
repository root, so it imports the same memmanager as the suite.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

import memmanager

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run(code, env_extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("MEMMANAGER_DEBUG", None)
    if env_extra:
        env.update(env_extra)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    return proc.returncode, proc.stdout.splitlines(), proc.stderr


def assert_no_crash(stderr):
    for marker in ("Fatal Python error", "Segmentation fault", "double free", "AddressSanitizer",
                   "corrupted", "Aborted"):
        assert marker not in stderr, stderr


@pytest.mark.parametrize("debug", ["0", "1"])
def test_pinned_stubs_run_after_user_code(debug):
    rc, out, err = run(
        """
        import atexit
        import memmanager

        def stub(info):
            print("stub", info["buffer_size"], flush=True)

        def user_exit():
            print("user atexit", flush=True)

        b = memmanager.Buffer(10, 1, delayed_gc=True, death_stub=stub)
        c = memmanager.Buffer(20, 1, delayed_gc=True, death_stub=stub, allocator="CMalloc")
        del b                                                 # only the pin keeps it
        atexit.register(user_exit)                            # registered after the import
        print("user done", flush=True)
        """,
        {"MEMMANAGER_DEBUG": debug},
    )
    assert rc == 0, err
    assert_no_crash(err)
    assert out[0] == "user done"
    assert out[1] == "user atexit"
    stubs = out[2:]
    assert sorted(stubs) == ["stub 10", "stub 20"]  # each exactly once, c although referenced
    assert "Traceback" not in err


def test_stub_reads_buffer_at_exit():
    rc, out, err = run(
        """
        import ctypes
        import memmanager

        def stub(info):
            print(ctypes.string_at(info["buffer_address"], info["buffer_size"]).decode(), flush=True)

        b = memmanager.Buffer(5, 1, delayed_gc=True, death_stub=stub)
        b[:] = b"hello"
        del b
        print("end", flush=True)
        """
    )
    assert rc == 0, err
    assert out == ["end", "hello"]


def test_exported_pinned_buffer_at_exit():
    rc, out, err = run(
        """
        import memmanager
        import numpy

        def stub(info):
            print("stub", info["buffer_size"], flush=True)

        b = memmanager.Buffer(16, 1, delayed_gc=True, death_stub=stub, init_value=1)
        view = memoryview(b)
        arr = numpy.asarray(b)
        region = b.region(2, 4)
        del b
        print("end", arr.sum(), flush=True)
        """
    )
    assert rc == 0, err
    assert_no_crash(err)
    assert out[0] == "end 16"
    assert out.count("stub 16") == 1
    assert "Traceback" not in err


def test_raising_stub_at_exit_keeps_exit_code():
    rc, out, err = run(
        """
        import memmanager

        def stub(info):
            raise RuntimeError("boom at exit")

        b = memmanager.Buffer(8, 1, delayed_gc=True, death_stub=stub)
        print("end", flush=True)
        """
    )
    assert rc == 0, err
    assert_no_crash(err)
    assert out == ["end"]
    assert "boom at exit" in err


def test_exit_code_preserved():
    rc, out, err = run(
        """
        import sys
        import memmanager

        def stub(info):
            print("stub", flush=True)

        b = memmanager.Buffer(8, 1, delayed_gc=True, death_stub=stub)
        sys.exit(3)
        """
    )
    assert rc == 3, err
    assert out == ["stub"]


def test_consumed_buffers_released_at_exit():
    rc, out, err = run(
        """
        import ctypes
        import memmanager

        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]

        def stub(info):
            print("stub", info["buffer_size"], flush=True)

        ba = bytearray(b"0123456789")
        a = memmanager.Buffer.consume(ba, 10, 1, death_stub=stub)       # pinned by default
        p = libc.malloc(16)
        c = memmanager.Buffer.consume(p, 16, 1, allocator="CMalloc", death_stub=stub)
        raw = ctypes.create_string_buffer(32)
        r = memmanager.Buffer.consume(ctypes.addressof(raw), 32, 1, allocator="Borrowed",
                                      owner=raw, death_stub=stub)
        del a, c, r
        print("end", flush=True)
        """
    )
    assert rc == 0, err
    assert_no_crash(err)
    assert out[0] == "end"
    assert sorted(out[1:]) == ["stub 10", "stub 16", "stub 32"]


def test_many_pinned_at_exit():
    rc, out, err = run(
        """
        import memmanager
        count = [0]

        def stub(info):
            count[0] += 1
            if count[0] == 2000:
                print("all stubs ran", flush=True)

        for i in range(2000):
            memmanager.Buffer(1 + i % 100, 1, delayed_gc=True, death_stub=stub)

        import atexit
        atexit.register(lambda: None)
        print(len(memmanager.get_delayed_gc_objects()), flush=True)
        """
    )
    assert rc == 0, err
    assert_no_crash(err)
    assert out == ["2000", "all stubs ran"]


# --------------------------------------------------------------------------
# buffers alive at exit in every way they can be (issue 8): pinned or not,
# exported through each exporter of surface.py, referenced from module
# globals and from cycles, with stubs that print, raise, or call back into
# memmanager; and a daemon thread still allocating.  None may crash or hang
# the exit.  Stubs write with os.write (bound early), which works even late
# in shutdown, and each writes its own tag: a tag seen twice is a stub run
# twice.

from surface import EXIT_EXPORTS, EXIT_PRELUDE, host_allocators  # noqa: E402

EXIT_TIMEOUT = 60
CRASH_MARKERS = ("Fatal Python error", "Segmentation fault", "double free", "AddressSanitizer",
                 "runtime error:", "corrupted", "Aborted", "free(): invalid")

STUB_HELPERS = """
import os, sys, gc, threading
import memmanager
from memmanager import Buffer

def tagged(tag, action=None, w=os.write):
    def stub(info):
        w(1, (tag + "\\n").encode())
        if action == "raise":
            raise RuntimeError("stub " + tag + " raising at exit")
        if action is not None and action != "raise":
            action(info)
    return stub
"""


def run_exit_scenario(code, expect_rc=0):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env.pop("MEMMANAGER_DEBUG", None)
    source = EXIT_PRELUDE + STUB_HELPERS + textwrap.dedent(code)
    try:
        proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", source], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the interpreter did not exit within {EXIT_TIMEOUT} s")
    for marker in CRASH_MARKERS:
        assert marker not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == expect_rc, proc.stderr[-3000:]
    tags = [line for line in proc.stdout.splitlines() if line.startswith("stub:")]
    assert len(tags) == len(set(tags)), f"a death stub ran twice: {tags}"
    return set(tags), proc.stdout.splitlines(), proc.stderr


@pytest.mark.parametrize("gpu", [False, True], ids=["no GPU", "GPU (fake driver)"])
@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "not pinned"])
@pytest.mark.parametrize("export", list(EXIT_EXPORTS))
def test_exported_buffer_alive_at_exit(export, pinned, gpu, request):
    if gpu:   # the child inherits MEMMANAGER_CUDA_LIBRARY: CudaHost, CudaManaged join in
        request.getfixturevalue("fake_cuda")
    code = f"""
    for allocator in {host_allocators()!r}:
        b = Buffer(16, 1, allocator=allocator, init_value=1, delayed_gc={pinned},
                   death_stub=tagged("stub:" + allocator))
        globals()["held_" + allocator] = {EXIT_EXPORTS[export].format(b="b")}
        del b
    print("end", flush=True)
    """
    tags, out, err = run_exit_scenario(code)
    assert out[0] == "end"
    if pinned:   # released by the exit hook: each stub ran, exactly once
        assert tags == {"stub:" + a for a in host_allocators()}


def test_buffers_in_module_globals_and_cycles_at_exit():
    code = """
    plain = Buffer(32, 1, death_stub=tagged("stub:global"))
    cmalloc = Buffer(32, 1, allocator="CMalloc", death_stub=tagged("stub:global-cmalloc"))
    loop = []
    loop.append(loop)
    loop.append(Buffer(32, 1, death_stub=tagged("stub:in-a-list-cycle")))
    box = {}
    box["self"] = Buffer(32, 1, death_stub=tagged("stub:refers-to-itself",
                                                 action=lambda info, box=box: box))
    class Holder:
        def __init__(self):
            self.me = self
            self.buf = Buffer(8, 1, allocator="CMalloc", delayed_gc=True,
                              death_stub=tagged("stub:holder-pinned"))
            self.view = memoryview(self.buf)
    holder = Holder()
    del box
    print("end", flush=True)
    """
    tags, out, err = run_exit_scenario(code)
    assert out[0] == "end"
    assert "stub:holder-pinned" in tags      # pinned: the exit hook runs it


def test_raising_stubs_at_every_stage_of_exit():
    code = """
    pinned = Buffer(8, 1, delayed_gc=True, death_stub=tagged("stub:pinned", "raise"))
    glob = Buffer(8, 1, death_stub=tagged("stub:global", "raise"))
    cycle = [Buffer(8, 1, allocator="CMalloc", death_stub=tagged("stub:cycle", "raise"))]
    cycle.append(cycle)
    exported = Buffer(8, 1, delayed_gc=True, death_stub=tagged("stub:exported", "raise"))
    view = exported.region(0, 4)
    del pinned, exported, cycle
    print("end", flush=True)
    """
    tags, out, err = run_exit_scenario(code)
    assert {"stub:pinned", "stub:exported"} <= tags
    assert "stub stub:pinned raising at exit" in err


def test_stubs_calling_memmanager_at_exit():
    code = """
    others = [Buffer(8, 1, delayed_gc=True) for _ in range(3)]

    def busy(info):
        memmanager.stats()
        memmanager.live_buffers()
        memmanager.report()
        memmanager.allocators()
        memmanager.get_delayed_gc_objects()
        memmanager.collect_delayed(others[:1])
        others[1].release()
        try:
            globals().setdefault("late", []).append(Buffer(16, 1, delayed_gc=True))
            Buffer(16, 1, allocator="CMalloc").release()
            Buffer.consume(bytearray(8), 8, 1)
        except RuntimeError:
            pass        # memmanager is shutting down: refused, not a crash

    a = Buffer(8, 1, delayed_gc=True, death_stub=tagged("stub:pinned-busy", busy))
    b = Buffer(8, 1, death_stub=tagged("stub:global-busy", busy))
    c = [Buffer(8, 1, death_stub=tagged("stub:cycle-busy", busy))]
    c.append(c)
    del a, c
    print("end", flush=True)
    """
    tags, out, err = run_exit_scenario(code)
    assert "stub:pinned-busy" in tags


def test_consumed_sources_alive_at_exit():
    code = """
    import mmap, ctypes
    m = mmap.mmap(-1, 4096)
    a = Buffer.consume(m, 4096, 1, death_stub=tagged("stub:mmap"))
    ba = bytearray(64)
    b = Buffer.consume(ba, 64, 1, delayed_gc=False, death_stub=tagged("stub:bytearray"))
    raw = ctypes.create_string_buffer(64)
    c = Buffer.consume(ctypes.addressof(raw), 64, 1, allocator="Borrowed", owner=raw,
                       death_stub=tagged("stub:borrowed"))
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    d = Buffer.consume([libc.malloc(64)], 64, 1, allocator="CMalloc", delayed_gc=False,
                       death_stub=tagged("stub:adopted"))
    view = memoryview(d)
    del a, c
    print("end", flush=True)
    """
    tags, out, err = run_exit_scenario(code)
    assert {"stub:mmap", "stub:borrowed"} <= tags


def test_stub_resurrecting_its_buffer_at_exit():
    code = """
    import weakref
    keep = []
    def resurrect(info):
        keep.append(refs[0]())
    b = Buffer(8, 1, death_stub=tagged("stub:resurrect", resurrect))
    refs = [weakref.ref(b)]
    p = Buffer(8, 1, delayed_gc=True, death_stub=tagged("stub:pinned-resurrect", resurrect))
    refs.append(weakref.ref(p))
    del p
    print("end", flush=True)
    """
    tags, out, err = run_exit_scenario(code)
    assert out[0] == "end"


def test_daemon_threads_still_working_at_exit():
    code = """
    import time
    started = threading.Barrier(3)

    def churn(allocator):
        started.wait()
        while True:
            b = Buffer(1 << 21, 1, allocator=allocator, init_value=7)
            b.extract_buffer_region()
            p = Buffer(64, 1, delayed_gc=True)
            memmanager.collect_delayed([p])
            b.release()

    for allocator in ("PyAlloc", "CMalloc"):
        threading.Thread(target=churn, args=(allocator,), daemon=True).start()
    pinned = Buffer(8, 1, delayed_gc=True, death_stub=tagged("stub:main"))
    started.wait()
    time.sleep(0.2)
    del pinned
    print("end", flush=True)
    """
    tags, out, err = run_exit_scenario(code)
    assert out[0] == "end" and "stub:main" in tags


def test_uncaught_exception_with_buffers_alive():
    code = """
    p = Buffer(8, 1, delayed_gc=True, death_stub=tagged("stub:pinned"))
    v = memoryview(Buffer(8, 1, delayed_gc=True, death_stub=tagged("stub:exported")))
    raise SystemError("the program fails")
    """
    tags, out, err = run_exit_scenario(code, expect_rc=1)
    assert tags == {"stub:pinned", "stub:exported"}
    assert "the program fails" in err
