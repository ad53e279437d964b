"""Pickling a Buffer: out-of-band with protocol 5, a copy otherwise.

    pickle.dumps(buf, protocol=5, buffer_callback=bufs.append)   # no copy
    pickle.dumps(buf)                                            # bytes inside

What travels is the bytes, num_items, item_size and whether the buffer is
read-only (plus the instance __dict__ of a subclass).  The allocator, the
death stub, pinning and the stored views stay behind: unpickling makes a
fresh, unpinned PyAlloc buffer.

With protocol 5 the bytes go as a pickle.PickleBuffer: handed to
buffer_callback (out-of-band, no copy) or, without one, written into the
pickle as bytes (read-only buffers) or a bytearray (writable ones).  On
loading, `rebuild_buffer` adopts that object zero-copy when it can (a
bytearray or out-of-band memory of the right kind), and copies otherwise:
when the memory is read-only but the buffer was writable, or when it is
managed already (loading in the process that still holds the original).

`rebuild_buffer` is named in every pickle: keep its module and name.
"""

import pickle as _pickle
from typing import Any, Optional, Tuple

from ._core import Buffer as _Buffer, OverlapError


def reduce_ex(self: Any, protocol: int) -> Tuple[Any, ...]:
    """Buffer.__reduce_ex__: (rebuild_buffer, args[, state])."""
    if self.released:
        raise ValueError("buffer is released")
    if protocol >= 5:
        data: Any = _pickle.PickleBuffer(self)
    else:
        data = self[:]          # a bytes copy, pickled in-band
    args = (type(self), data, self.num_items, self.itemsize, self.readonly)
    state: Optional[dict] = getattr(self, "__dict__", None) or None
    if state is None:
        return (rebuild_buffer, args)
    return (rebuild_buffer, args, state)


def rebuild_buffer(cls: Any, data: Any, num_items: int, item_size: int,
                   readonly: bool) -> Any:
    """Make a PyAlloc buffer of cls from data (the unpickling half)."""
    with memoryview(data) as raw:
        if raw.nbytes != num_items * item_size:
            raise ValueError(
                f"the pickled buffer has {raw.nbytes} bytes, "
                f"{num_items} x {item_size} are needed")
        # Memory a Buffer manages is copied: since issue 12 consume() may
        # wrap it (holding an export) instead of raising OverlapError, but a
        # clone must not alias the original.
        managed = isinstance(raw.obj, _Buffer)
        adoptable = raw.contiguous and (readonly or not raw.readonly) and not managed
    if adoptable:
        try:
            return cls.consume(data, num_items, item_size, delayed_gc=False,
                               readonly=readonly)
        except OverlapError:
            pass            # the memory is managed already: copy it
    return cls.consume(data, num_items, item_size, delayed_gc=False,
                       readonly=readonly, copy=True)


def install(buffer_type: type) -> None:
    """Attach __reduce_ex__ to the Buffer type (called at import)."""
    buffer_type.__reduce_ex__ = reduce_ex  # type: ignore[method-assign]
