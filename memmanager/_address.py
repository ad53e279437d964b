"""Turn foreign pointer objects into addresses for Buffer.consume().

The C core handles ints and one-element lists itself; for anything else
that is not an obvious Python buffer it asks `resolve`, which recognises
ctypes and cffi pointers.  Neither library is imported here: an object can
only be a ctypes or cffi pointer if that library is loaded already.
"""

import sys
from typing import Any, Callable, Optional, Tuple

Resolved = Optional[Tuple[int, Optional[Callable[[], None]]]]


def _ctypes_address(source: Any) -> Resolved:
    ctypes = sys.modules.get("ctypes")
    if ctypes is None:
        return None
    if isinstance(source, ctypes.c_void_p):
        def reset() -> None:
            source.value = None
        return source.value or 0, reset
    if isinstance(source, ctypes._Pointer):
        def reset() -> None:
            ctypes.memset(ctypes.addressof(source), 0, ctypes.sizeof(source))
        return ctypes.cast(source, ctypes.c_void_p).value or 0, reset
    return None


def _cffi_address(source: Any) -> Resolved:
    backend = sys.modules.get("_cffi_backend")
    if backend is None or not isinstance(source, backend._CDataBase):
        return None
    ffi = backend.FFI()
    if ffi.typeof(source).kind != "pointer":
        raise TypeError(
            "consume() takes a cffi pointer, not a cffi %s" % ffi.typeof(source).kind)
    return int(ffi.cast("uintptr_t", source)), None


def resolve(source: Any) -> Resolved:
    """Return (address, reset) for a ctypes or cffi pointer, else None.

    `reset` is a callable that sets a mutable holder to NULL once the
    memory has been adopted (None when the holder is immutable).
    """
    return _ctypes_address(source) or _cffi_address(source)
