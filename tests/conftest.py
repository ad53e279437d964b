"""Shared fixtures for the memmanager test suite.

Every test runs with an autouse fixture that unpins whatever the test left
pinned (`memmanager.collect_delayed()`), so pinned buffers never leak from
one test into the next.  `make_buffer` creates buffers and releases them at
teardown; `registry_unchanged` asserts that a block of code (typically a
failed construction) registered and allocated nothing.
"""

import contextlib
import ctypes
import gc
import os

import pytest
from hypothesis import settings

import memmanager

# MEMMANAGER_TEST_SCALE=small runs the randomised, repeated and
# time-bounded tests smaller: `make valgrind` sets it (memcheck is ~30
# times slower), and so does the LeakSanitizer pass of `make asan`.
SCALE = os.environ.get("MEMMANAGER_TEST_SCALE", "full")
if SCALE not in ("full", "small"):
    raise RuntimeError(f"MEMMANAGER_TEST_SCALE must be 'full' or 'small', not {SCALE!r}")


def scaled(full, small):
    """The value for the current scale."""
    return full if SCALE == "full" else small


settings.register_profile("memmanager", database=None, deadline=None,
                          max_examples=scaled(60, 5))
settings.load_profile("memmanager")


def registry_snapshot():
    """Everything that must not move when an operation fails."""
    total = memmanager.stats()["total"]
    return {
        "live_buffers()": len(memmanager.live_buffers()),
        "stats.live_buffers": total["live_buffers"],
        "stats.live_bytes": total["live_bytes"],
        "stats.allocations": total["allocations"],
        "stats.allocated_bytes": total["allocated_bytes"],
        "delayed": list(memmanager.get_delayed_gc_objects()),
        "_registry_check": memmanager._core._registry_check(),
    }


def live_addresses():
    return {entry.address for entry in memmanager.live_buffers()}


def live_entry(identifier):
    """The live_buffers() entry with this identifier, or None."""
    for entry in memmanager.live_buffers():
        if entry.identifier == identifier:
            return entry
    return None


@pytest.fixture(autouse=True)
def _unpin_after_test():
    yield
    memmanager.collect_delayed()
    gc.collect()


@pytest.fixture
def make_buffer():
    """Factory for Buffers that are released at teardown."""
    created = []

    def make(*args, **kwargs):
        buf = memmanager.Buffer(*args, **kwargs)
        created.append(buf)
        return buf

    yield make
    for buf in created:
        with contextlib.suppress(BufferError):
            buf.release()


@pytest.fixture
def registry_unchanged():
    """Context-manager factory: the registry and stats are the same after."""

    @contextlib.contextmanager
    def check():
        gc.collect()
        before = registry_snapshot()
        yield
        gc.collect()
        assert registry_snapshot() == before

    return check


@pytest.fixture
def arena():
    """4 KiB of memory memmanager knows nothing about (a ctypes array).

    Borrowed buffers consumed inside it can only overlap each other, so the
    overlap tests are independent of where the allocator put other buffers.
    """
    raw = ctypes.create_string_buffer(4096)
    return raw, ctypes.addressof(raw)


@pytest.fixture
def libc():
    lib = ctypes.CDLL(None)
    lib.malloc.restype = ctypes.c_void_p
    lib.malloc.argtypes = [ctypes.c_size_t]
    lib.free.restype = None
    lib.free.argtypes = [ctypes.c_void_p]
    return lib


@contextlib.contextmanager
def catch_unraisable():
    """Records what reaches sys.unraisablehook inside the block.

    Installed inside the test body (not in a fixture) because some pytest
    versions replace sys.unraisablehook around the call phase.
    """
    import sys

    seen = []

    def hook(args):
        seen.append((args.exc_type, args.exc_value, args.object))

    previous = sys.unraisablehook
    sys.unraisablehook = hook
    try:
        yield seen
    finally:
        sys.unraisablehook = previous


# ---------------------------------------------------------------------------
# GPU: a fake CUDA driver (tests/fake_cuda.c), compiled once per session and
# loaded through MEMMANAGER_CUDA_LIBRARY, so the GPU code runs without a GPU.
# ---------------------------------------------------------------------------

import os
import shlex
import subprocess
import sysconfig
from pathlib import Path

FAKE_CUDA_SOURCE = Path(__file__).with_name("fake_cuda.c")
CUDA_LIBRARY_VARIABLE = "MEMMANAGER_CUDA_LIBRARY"


@contextlib.contextmanager
def cuda_library(path):
    """Inside the block memmanager loads the CUDA driver from `path` (None:
    the default, libcuda.so.1); the driver is forgotten on entry and exit."""
    previous = os.environ.get(CUDA_LIBRARY_VARIABLE)
    if path is None:
        os.environ.pop(CUDA_LIBRARY_VARIABLE, None)
    else:
        os.environ[CUDA_LIBRARY_VARIABLE] = str(path)
    memmanager._core._cuda_reset()
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(CUDA_LIBRARY_VARIABLE, None)
        else:
            os.environ[CUDA_LIBRARY_VARIABLE] = previous
        memmanager._core._cuda_reset()


class FakeCuda:
    """ctypes handle on the fake driver's test hooks (same library instance
    as memmanager's: dlopen of one path gives one copy)."""

    def __init__(self, path):
        self.path = str(path)
        lib = ctypes.CDLL(self.path)
        lib.fake_get.restype = ctypes.c_long
        lib.fake_get.argtypes = [ctypes.c_char_p]
        lib.fake_set.restype = ctypes.c_int
        lib.fake_set.argtypes = [ctypes.c_char_p, ctypes.c_long]
        lib.fake_last_error.restype = ctypes.c_char_p
        lib.fake_last_error.argtypes = []
        for name in ("fake_read", "fake_write"):
            getattr(lib, name).restype = ctypes.c_int
            getattr(lib, name).argtypes = [ctypes.c_ulonglong, ctypes.c_void_p,
                                           ctypes.c_size_t]
        lib.fake_reset.restype = None
        self.lib = lib

    def get(self, name):
        value = self.lib.fake_get(name.encode())
        assert value != -1 or name == "ctx_depth", f"no fake counter {name!r}"
        return value

    def set(self, name, value):
        assert self.lib.fake_set(name.encode(), value) == 0, f"no fake setting {name!r}"

    def last_error(self):
        return self.lib.fake_last_error().decode()

    def reset(self):
        self.lib.fake_reset()

    def counters(self, *names):
        return {name: self.get(name) for name in names}

    def read(self, address, size):
        """What a kernel would read at a device address."""
        out = ctypes.create_string_buffer(size)
        assert self.lib.fake_read(address, out, size) == 0, "not device memory"
        return out.raw

    def write(self, address, data):
        """What a kernel would write at a device address."""
        data = bytes(data)
        assert self.lib.fake_write(address, data, len(data)) == 0, "not device memory"


def _compile_fake_cuda(target):
    compilers = [shlex.split(sysconfig.get_config_var("CC") or "cc"), ["cc"]]
    errors = []
    for cc in compilers:
        command = [*cc, "-shared", "-fPIC", "-O1", "-Wall", "-Wextra", "-Werror",
                   "-o", str(target), str(FAKE_CUDA_SOURCE), "-lpthread"]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True)
            return
        except (OSError, subprocess.CalledProcessError) as error:
            errors.append(f"{' '.join(command)}: {getattr(error, 'stderr', error)}")
    pytest.fail("cannot build the fake CUDA driver:\n" + "\n".join(errors))


@pytest.fixture(scope="session")
def fake_cuda_library(tmp_path_factory):
    target = tmp_path_factory.mktemp("fake_cuda") / "libfakecuda.so.1"
    _compile_fake_cuda(target)
    return target


LIVE_DEVICE_COUNTERS = ("device_live", "host_live", "managed_live")


@pytest.fixture
def fake_cuda(fake_cuda_library):
    """memmanager on the fake driver (2 devices).  At teardown: no device,
    pinned or managed block leaked, no driver misuse, contexts balanced.
    (Request it before make_buffer, whose buffers are released first.)"""
    fake = FakeCuda(fake_cuda_library)
    fake.reset()
    gc.collect()
    live_before = fake.counters(*LIVE_DEVICE_COUNTERS)
    with cuda_library(fake_cuda_library):
        yield fake
        memmanager.collect_delayed()
        gc.collect()
        assert fake.counters(*LIVE_DEVICE_COUNTERS) == live_before, "device memory leaked"
    gc.collect()
    assert fake.get("errors") == 0, fake.last_error()
    assert fake.get("ctx_depth") == 0


@pytest.fixture
def no_cuda(tmp_path):
    """memmanager with a driver library that cannot be loaded (no GPU)."""
    missing = tmp_path / "no-such-libcuda.so.1"
    with cuda_library(missing):
        yield str(missing)
