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

A SharedMemory buffer (created or attached) pickles by name instead
(DESIGN section 4): the pickle holds the name, num_items, item_size and
read-only-ness, and loading it attaches (`Buffer.attach`) to the same
memory, so a process pool's worker writes into the parent's buffer.
The pickle is only good while the creator's buffer lives: once it died
the name is unlinked, and loading raises FileNotFoundError.  The
attached buffer never unlinks the name and is not tracked.

`copy.copy` and `copy.deepcopy` make private PyAlloc copies of every
buffer, SharedMemory included (`__copy__`, `__deepcopy__`): a copy is a
copy, only a pickle travels by name.

`rebuild_buffer` and `attach_shared` are named in pickles: keep their
module and names.
"""

import pickle as _pickle
from typing import Any, Callable, Dict, Optional, Tuple

from ._core import Buffer as _Buffer, OverlapError


# Buffer.name's getter: the type's own, which a subclass cannot fake.
_shared_name: Any = _Buffer.name.__get__  # type: ignore[attr-defined]


def _by_value(self: Any, protocol: int) -> Tuple[Any, ...]:
    """(rebuild_buffer, args[, state]): the bytes travel."""
    if self.released:
        raise ValueError("buffer is released")
    if protocol >= 5:
        data: Any = _pickle.PickleBuffer(self)
    else:
        data = self[:]          # a bytes copy, pickled in-band
    args = (type(self), data, self.num_items, self.itemsize, self.readonly)
    return _with_state(self, rebuild_buffer, args)


def _with_state(self: Any, function: Any, args: Tuple[Any, ...]) -> Tuple[Any, ...]:
    state: Optional[dict] = getattr(self, "__dict__", None) or None
    if state is None:
        return (function, args)
    return (function, args, state)


def reduce_ex(self: Any, protocol: int) -> Tuple[Any, ...]:
    """Buffer.__reduce_ex__: (attach_shared, ...) for SharedMemory buffers,
    (rebuild_buffer, args[, state]) for the others."""
    if self.released:
        raise ValueError("buffer is released")
    name = _shared_name(self)
    if name is None:
        return _by_value(self, protocol)
    args = (type(self), name, self.num_items, self.itemsize, self.readonly)
    return _with_state(self, attach_shared, args)


def attach_shared(cls: Any, name: str, num_items: int, item_size: int,
                  readonly: bool) -> Any:
    """Attach to the shared memory a pickled SharedMemory buffer named."""
    try:
        return cls.attach(name, num_items, item_size, readonly=bool(readonly))
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            exc.errno, f"shared memory {name!r} is gone: the SharedMemory buffer "
            "that created it died before this pickle was loaded", name) from None


def _copy(self: Any, memo: Optional[dict] = None) -> Any:
    """__copy__ and __deepcopy__: a private copy, whatever the allocator."""
    reduction = _by_value(self, 4)
    clone = reduction[0](*reduction[1])
    if memo is not None:
        memo[id(self)] = clone
    if len(reduction) > 2:
        state = reduction[2]
        if memo is not None:
            import copy
            state = copy.deepcopy(state, memo)
        setstate = getattr(clone, "__setstate__", None)
        if setstate is not None:
            setstate(state)
        else:
            clone.__dict__.update(state)
    return clone


def _shallow_copy(self: Any) -> Any:
    """__copy__ takes no argument (a memo would make it a deep copy)."""
    return _copy(self)


def _deepcopy(self: Any, memo: dict) -> Any:
    return _copy(self, memo)


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


def python_methods() -> Dict[str, Callable[..., Any]]:
    """__reduce_ex__, __copy__ and __deepcopy__ by name, for the C type to
    call (memmanager/__init__.py hands them to the core at import)."""
    return {"__reduce_ex__": reduce_ex, "__copy__": _shallow_copy, "__deepcopy__": _deepcopy}
