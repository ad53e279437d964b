"""Fixtures shared by the benchmark modules (collected by pytest only)."""

import ctypes
import gc

import pytest

import memmanager


def mark(benchmark, group, subject):
    """Name a benchmark's group and whose time it is."""
    benchmark.group = group
    benchmark.extra_info["subject"] = subject


@pytest.fixture(autouse=True)
def _quiet_gc():
    """Nothing pinned or garbage left over from one benchmark to the next."""
    yield
    memmanager.collect_delayed()
    gc.collect()


@pytest.fixture(scope="session")
def libc():
    lib = ctypes.CDLL(None)
    lib.malloc.restype = ctypes.c_void_p
    lib.malloc.argtypes = [ctypes.c_size_t]
    lib.calloc.restype = ctypes.c_void_p
    lib.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
    lib.free.argtypes = [ctypes.c_void_p]
    lib.memset.restype = ctypes.c_void_p
    lib.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    return lib


def allocating_allocators():
    """Registered allocators that can make memory on this machine."""
    names = []
    for name in memmanager.allocators():
        try:
            memmanager.Buffer(64, 1, allocator=name).release()
        except Exception:  # consume-only (Borrowed) or no device (Cuda*)
            continue
        names.append(name)
    return names
