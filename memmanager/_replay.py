"""memmanager.replay(): a Log's file played against one allocator.

The work is C (src/adaptors/replay.c); this names its result.
"""

import os
from typing import NamedTuple, Union

from . import _core


class ReplayResult(NamedTuple):
    """What replay() did: the events played (allocations + frees), the
    seconds the loop over them took, the largest sum of live requested
    bytes during it, and the blocks the log never freed (freed by replay
    after the timing)."""

    events: int
    allocations: int
    frees: int
    seconds: float
    peak_bytes: int
    unfreed: int
    unfreed_bytes: int


def replay(path: Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"],
           allocator: str = "PyAlloc") -> ReplayResult:
    """Play the allocations and frees a Log wrote to path against the
    allocator registered under that name, and time them.

    The whole file is read and checked first: a malformed line, a free
    with no live allocation before it, an empty file are ValueError
    naming the line, and nothing is allocated.  Each allocation asks for
    uninitialised memory of the logged size; each free frees the block
    its logged address maps to.  If an allocation fails, every block
    replayed so far is freed and the exception propagates.
    """
    return ReplayResult(*_core._replay(path, allocator))
