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
