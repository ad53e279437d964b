"""create + destroy at 64 B, 4 KiB, 1 MiB and 64 MiB: every allocator that
can allocate here against the peers that make a block of bytes."""

import ctypes

import pytest

from memmanager import Buffer

from support import allocating_allocators, hot, mark

SIZES = {"64B": 64, "4KiB": 4 << 10, "1MiB": 1 << 20, "64MiB": 64 << 20}

OURS = [pytest.param(allocator, size, id=f"{allocator}-{size}",
                     marks=hot(allocator == "PyAlloc" and size == "64B"))
        for allocator in allocating_allocators() for size in SIZES]


@pytest.mark.parametrize("allocator, size", OURS)
def test_memmanager(benchmark, allocator, size):
    mark(benchmark, f"create+destroy {size}", f"memmanager:{allocator}")
    if allocator == "PyAlloc":   # the default: Buffer(n, 1), as users write it
        benchmark(Buffer, SIZES[size], 1)
    else:
        benchmark(Buffer, SIZES[size], 1, allocator=allocator)


def _peers():
    """Each peer as (callable, arguments before the size, after it): called
    directly, with no Python frame in between, as memmanager is."""
    peers = {
        "bytearray": (bytearray, (), ()),
        "ctypes.create_string_buffer": (ctypes.create_string_buffer, (), ()),
    }
    try:
        import numpy
        peers["numpy.empty"] = (numpy.empty, (), ("u1",))
    except ImportError:
        pass
    try:
        import cffi
        peers["cffi ffi.new"] = (cffi.FFI().new, ("char[]",), ())
    except ImportError:
        pass
    try:
        import pyarrow
        peers["pyarrow.allocate_buffer"] = (pyarrow.allocate_buffer, (), ())
    except ImportError:
        pass
    return peers


PEERS = _peers()
PEER_CASES = [pytest.param(peer, size, id=f"{peer}-{size}",
                           marks=hot(peer in ("bytearray", "numpy.empty") and size == "64B"))
              for peer in PEERS for size in SIZES]


@pytest.mark.parametrize("peer, size", PEER_CASES)
def test_peer(benchmark, peer, size):
    mark(benchmark, f"create+destroy {size}", peer)
    function, before, after = PEERS[peer]
    benchmark(function, *before, SIZES[size], *after)
