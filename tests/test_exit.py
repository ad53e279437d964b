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
        c = memmanager.Buffer.consume(p, 16, 1, death_stub=stub)
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
