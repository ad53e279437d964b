"""Turn foreign pointer objects into addresses for Buffer.consume().

The C core handles ints and one-element lists itself; for anything else
that is not an obvious Python buffer it asks `resolve`, which recognises
ctypes and cffi pointers.  Neither library is imported here: an object can
only be a ctypes or cffi pointer if that library is loaded already.

`resolve` returns ``(address, reset, not_ownable)``:

- `reset` is called once a CMalloc buffer has taken the block over (and
  only then: after the buffer is registered), so that the caller cannot
  free it again: a ``c_void_p`` or ctypes pointer is set to NULL, and a
  cffi pointer owned by ``ffi.gc`` is detached from its destructor
  (``ffi.gc(p, None)`` removes it in place, so cffi never frees it).
- `not_ownable` is None, or the reason why ownership of this memory cannot
  be taken (it belongs to a Python object: ``ffi.new``, ``ffi.from_buffer``,
  or a ctypes pointer that keeps a ctypes object alive).  CMalloc refuses
  such a source with that reason; Borrowed may still wrap it.
"""

import sys
from typing import Any, Callable, Optional, Tuple

Resolved = Optional[Tuple[int, Optional[Callable[[], None]], Optional[str]]]

# cffi's cdata types whose memory cffi itself allocated or borrowed: never
# from the C library's malloc, so realloc/free on it would corrupt the heap.
_CFFI_OWNING = {"__CDataOwn", "__CDataOwnGC", "__CDataFromBuf"}


def _ctypes_address(source: Any) -> Resolved:
    ctypes = sys.modules.get("ctypes")
    if ctypes is None:
        return None
    # The base classes' descriptors: a subclass may override `value` or
    # `_objects`, but not what the memory is.
    value = ctypes._SimpleCData.__dict__["value"]
    objects = ctypes._SimpleCData.__mro__[1].__dict__["_objects"]
    if isinstance(source, ctypes.c_void_p):
        def reset() -> None:
            value.__set__(source, None)
        kind = "c_void_p"
        address = value.__get__(source) or 0
    elif isinstance(source, ctypes._Pointer):
        def reset() -> None:
            ctypes.memset(ctypes.addressof(source), 0, ctypes.sizeof(source))
        kind = "pointer"
        # Read in place: ctypes.cast would add to source._objects.
        address = ctypes.c_void_p.from_address(ctypes.addressof(source)).value or 0
    else:
        return None
    # A ctypes pointer made from a ctypes object (ctypes.pointer(x),
    # ctypes.cast(array, ...)) keeps that object in _objects: when the
    # address lies in a kept object's memory, that memory is the object's,
    # not malloc's.  (A kept c_void_p, as ctypes.cast(c_void_p(p), ...)
    # keeps, is only the pointer's own storage.)
    not_ownable = None
    if address and _keeps_memory_at(ctypes, objects, objects.__get__(source), address):
        not_ownable = ("this ctypes %s points into memory owned by a ctypes "
                       "object it keeps alive" % kind)
    return address, reset, not_ownable


def _keeps_memory_at(ctypes: Any, objects: Any, kept: Any, address: int) -> bool:
    """Whether `kept` (a ctypes _objects value) holds memory at address.
    Anything that is neither a dict nor a ctypes object (bytes kept by a
    c_char_p, say) counts as holding it: its memory is a Python object's."""
    cdata = ctypes._SimpleCData.__mro__[1]
    seen = set()
    todo = [kept]
    while todo:
        kept = todo.pop()
        if kept is None or id(kept) in seen:
            continue
        seen.add(id(kept))
        if len(seen) > 10000:
            return True             # not a tree anyone builds: refuse
        if isinstance(kept, dict):
            todo.extend(list(kept.values()))
        elif not isinstance(kept, cdata):
            return True
        else:
            start = ctypes.addressof(kept)
            if start <= address < start + ctypes.sizeof(kept):
                return True
            todo.append(objects.__get__(kept))
    return False


def _cffi_address(source: Any) -> Resolved:
    backend = sys.modules.get("_cffi_backend")
    if backend is None or not isinstance(source, backend._CDataBase):
        return None
    ffi = backend.FFI()
    if ffi.typeof(source).kind != "pointer":
        raise TypeError(
            "consume() takes a cffi pointer, not a cffi %s" % ffi.typeof(source).kind)
    address = int(ffi.cast("uintptr_t", source))
    kind = type(source).__name__
    if kind in _CFFI_OWNING:
        return address, None, (
            "this cffi pointer owns its memory (ffi.new or ffi.from_buffer), "
            "which is not from malloc")
    if kind == "__CDataGCP":
        def detach() -> None:
            ffi.gc(source, None)   # in place: its destructor will not run
        return address, detach, None
    return address, None, None


def resolve(source: Any) -> Resolved:
    """Return (address, reset, not_ownable) for a ctypes or cffi pointer,
    else None (see the module's docstring)."""
    return _ctypes_address(source) or _cffi_address(source)
