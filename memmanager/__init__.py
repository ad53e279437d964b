"""memmanager: a memory manager for low-level code.

Buffers from pluggable allocators, adoption of memory that C code handed
you, zero-copy regions, pinning against garbage collection, death stubs,
a process-wide registry of live regions, named views (NumPy, memoryview,
ctypes), DLPack export and pickling.  A Python re-creation of the
Perl module Task::MemManager; the C core lives in memmanager._core.
"""

import atexit as _atexit
import os as _os
from typing import List as _List
from typing import NamedTuple as _NamedTuple

from . import _address
from . import _core
from . import _pickle
from . import _views
from . import cuda
from ._plugins import register_allocator, use
from ._replay import ReplayResult, replay
from ._core import (
    TRACEMALLOC_DOMAIN,
    AllocatorStatistics,
    Buffer,
    DeviceUnavailableError,
    DeviceView,
    LimitExceededError,
    Limit,
    Log,
    MemManagerError,
    Pool,
    OverlapError,
    Statistics,
    UnknownAllocatorError,
    allocators,
    collect_delayed,
    get_delayed_gc_objects,
    statistics,
    stats,
)
from ._views import UnknownViewKindError, register_view, view_kinds

__version__ = "0.1.0"

__all__ = [
    "AllocatorStatistics",
    "Buffer",
    "DeviceUnavailableError",
    "DeviceView",
    "Limit",
    "LimitExceededError",
    "LiveBuffer",
    "Log",
    "MemManagerError",
    "OverlapError",
    "Pool",
    "Statistics",
    "TRACEMALLOC_DOMAIN",
    "UnknownAllocatorError",
    "UnknownViewKindError",
    "__version__",
    "allocators",
    "collect_delayed",
    "cuda",
    "get_delayed_gc_objects",
    "get_include",
    "live_buffers",
    "register_allocator",
    "register_view",
    "replay",
    "ReplayResult",
    "report",
    "statistics",
    "stats",
    "use",
    "view_kinds",
]

class LiveBuffer(_NamedTuple):
    """One row of live_buffers(): a live buffer at the time of the call."""

    identifier: int
    allocator: str
    address: int
    nbytes: int
    exports: int
    pinned: bool


def live_buffers() -> _List[LiveBuffer]:
    """A snapshot of every live buffer, in address order, as LiveBuffer rows."""
    return [LiveBuffer(*row) for row in _core._live_buffers()]


def report() -> str:
    """live_buffers() and stats() as a human-readable table (a str), then
    the NumPy arrays allocated through memmanager.numpy, if any, and the
    registered adaptors (Pool, Limit, Log) with their upstreams."""
    rows = live_buffers()
    counters = stats()
    width = max([9] + [len(row.allocator) for row in rows] + [len(name) for name in counters])
    lines = ["%-18s %-*s %-18s %12s %7s %6s" % (
        "identifier", width, "allocator", "address", "nbytes", "exports", "pinned")]
    for row in rows:
        lines.append("%-18d %-*s 0x%-16x %12d %7d %6s" % (
            row.identifier, width, row.allocator, row.address, row.nbytes,
            row.exports, "yes" if row.pinned else "no"))
    lines.append("")
    lines.append("%-*s %12s %14s %14s %12s %16s" % (
        width, "allocator", "live_buffers", "live_bytes", "peak_bytes",
        "allocations", "allocated_bytes"))
    for name in sorted(counters, key=lambda n: (n == "total", n)):
        c = counters[name]
        lines.append("%-*s %12d %14d %14d %12d %16d" % (
            width, name, c["live_buffers"], c["live_bytes"], c["peak_bytes"],
            c["allocations"], c["allocated_bytes"]))
    array_counters = _core._numpy_stats()
    arrays = [name for name in array_counters if name != "total"]
    if arrays:
        lines.append("")
        lines.append("%-*s %12s %16s %17s %21s" % (
            width, "numpy", "live_arrays", "live_array_bytes", "array_allocations",
            "array_allocated_bytes"))
        for name in sorted(arrays) + ["total"]:
            c = array_counters[name]
            lines.append("%-*s %12d %16d %17d %21d" % (
                width, name, c["live_arrays"], c["live_array_bytes"],
                c["array_allocations"], c["array_allocated_bytes"]))
    adaptors = _core._adaptors()
    if adaptors:
        lines.append("")
        lines.append("%-*s %-6s %-*s %s" % (width, "adaptor", "kind", width, "upstream", "state"))
        for name, kind, upstream, adaptor in adaptors:
            state = " ".join("%s=%s" % (field, getattr(adaptor, field))
                             for field in _ADAPTOR_FIELDS.get(kind, ()))
            lines.append("%-*s %-6s %-*s %s" % (width, name, kind, width, upstream, state))
    return "\n".join(lines)


# What report() shows of each kind of adaptor.
_ADAPTOR_FIELDS = {
    "Limit": ("used", "max_bytes"),
    "Pool": ("held_bytes", "used_bytes", "live_blocks", "maximum_size"),
    "Log": ("events", "path"),
}


def get_include() -> str:
    """The directory holding memmanager/allocator.h, for C extensions."""
    return _os.path.join(_os.path.dirname(__file__), "include")


_core._set_address_resolver(_address.resolve)
# Views (create_view, ...) and pickling are written in Python; the C type
# (immutable, like every type of the module) calls them through this table.
_core._set_python_methods({**_views.python_methods(), **_pickle.python_methods()})
# Registered at first import, so they run after the atexit hooks of user
# code imported later (atexit is last-in, first-out): first the pinned
# buffers are released, then the SharedMemory names this interpreter made
# are unlinked, even those whose buffers exports keep alive (the memory
# stays mapped; only the names go).
_atexit.register(_core._shm_unlink_at_exit)
_atexit.register(_core._release_pinned_at_exit)
