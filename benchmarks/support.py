"""What the bench_*.py modules share: naming a benchmark's row, the hot
path marker, the allocators that can allocate here, and libc through ctypes.

Every benchmark belongs to a *group* (one operation at one size) and has a
*subject*: ``memmanager:<what>`` for ours, anything else for a peer.  The
report (report.py) divides each of ours by each peer of its group.
"""

import ctypes
import ctypes.util

import pytest

import memmanager

OURS = "memmanager:"


def mark(benchmark, group, subject, only=None):
    """Name a benchmark's group and whose time it is.  `only`, for a peer,
    names the ones of ours it is compared with (default: all of them)."""
    benchmark.group = group
    benchmark.extra_info["subject"] = subject
    if only is not None:
        benchmark.extra_info["only"] = list(only)


def hot(condition=True):
    """Marks for pytest.param: `hotpath` when `condition` holds."""
    return [pytest.mark.hotpath] if condition else []


def allocating_allocators():
    """Registered allocators that can make memory on this machine, the
    default (PyAlloc) first."""
    names = []
    for name in memmanager.allocators():
        try:
            memmanager.Buffer(64, 1, allocator=name).release()
        except Exception:  # consume-only (Borrowed) or no device (Cuda*)
            continue
        names.append(name)
    return names


def load_libc():
    lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    lib.malloc.restype = ctypes.c_void_p
    lib.malloc.argtypes = [ctypes.c_size_t]
    lib.calloc.restype = ctypes.c_void_p
    lib.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
    lib.free.restype = None
    lib.free.argtypes = [ctypes.c_void_p]
    lib.memset.restype = ctypes.c_void_p
    lib.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    lib.posix_memalign.restype = ctypes.c_int
    lib.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t,
                                   ctypes.c_size_t]
    lib.mmap.restype = ctypes.c_void_p
    lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                         ctypes.c_int, ctypes.c_long]
    lib.munmap.restype = ctypes.c_int
    lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return lib
