"""Named views of a Buffer: the Python counterpart of Perl's View::PDL.

``buf.create_view(kind, *, view_name=None, **options)`` makes a zero-copy
view of the buffer's bytes with the view kind's ``create`` function and
stores it on the buffer under ``view_name`` (default ``"<kind>_default"``);
``get_view``, ``delete_view`` and ``clone_view`` find, drop and copy it.

Built-in kinds:

    numpy       numpy.ndarray; options dtype="uint8", shape=None, order="C",
                offset=0
    memoryview  memoryview;    options format="B", shape=None, offset=0
    ctypes      a ctypes object (from_buffer); options ctype=None (an array
                of c_uint8 over the rest of the buffer), offset=0

``register_view(kind, create, clone)`` adds a kind: ``create(buffer,
**options)`` returns a view, ``clone(view)`` an independent copy of it.

Making a view is a cold path, so this is Python.  The storage is in C
(src/views.c): release() must forget the stored views before it checks the
export count, and the garbage collector must see through NumPy arrays.
NumPy is imported only when a numpy view is made.
"""

import operator as _operator
import struct as _struct
import threading as _threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from ._core import MemManagerError


class UnknownViewKindError(MemManagerError, LookupError, ValueError):
    """No view kind is registered under that name."""


_Create = Callable[..., Any]
_Clone = Callable[[Any], Any]

_lock = _threading.Lock()
_kinds: Dict[str, Tuple[_Create, _Clone]] = {}
_BUILTIN_KINDS = ("numpy", "memoryview", "ctypes")


# ---------------------------------------------------------------------------
# Shared checks
# ---------------------------------------------------------------------------

def _check_offset(buffer: Any, offset: Any) -> int:
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"offset must be an int, not {type(offset).__name__}")
    # An exact int from here on: an int subclass's arithmetic is Python code.
    offset = _operator.index(offset)
    if not 0 <= offset <= len(buffer):
        raise ValueError(f"offset {offset} is outside the buffer of {len(buffer)} bytes")
    return offset


def _shape_tuple(shape: Any) -> Tuple[int, ...]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be an int or a sequence of ints, not "
                        f"{type(shape).__name__}") from None
    for dim in dims:
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"shape must hold ints, not {type(dim).__name__}")
    dims = tuple(_operator.index(dim) for dim in dims)   # exact ints
    if any(dim < 0 for dim in dims):
        raise ValueError(f"shape {dims} has a negative dimension")
    return dims


def _resolve_shape(shape: Any, itemsize: int, available: int, what: str) -> Tuple[int, ...]:
    """The shape to use: the given one, checked to fit, or all whole items."""
    if itemsize <= 0:
        raise ValueError(f"{what} has no size; it cannot view memory")
    if shape is None:
        count, rest = divmod(available, itemsize)
        if rest:
            raise ValueError(
                f"{available} bytes are not a whole number of {what} items "
                f"({itemsize} bytes each); give a shape")
        return (count,)
    dims = _shape_tuple(shape)
    needed = itemsize
    for dim in dims:
        needed *= dim
    if needed > available:
        raise ValueError(
            f"shape {dims} of {what} needs {needed} bytes; the buffer has "
            f"{available} from the offset")
    return dims


# ---------------------------------------------------------------------------
# The built-in kinds
# ---------------------------------------------------------------------------

def _numpy_create(buffer: Any, *, dtype: Any = "uint8", shape: Any = None,
                  order: str = "C", offset: int = 0) -> Any:
    import numpy

    dtype = numpy.dtype(dtype)
    if dtype.hasobject:
        raise TypeError(f"a view cannot hold Python objects (dtype {dtype})")
    offset = _check_offset(buffer, offset)
    dims = _resolve_shape(shape, dtype.itemsize, len(buffer) - offset, f"dtype {dtype}")
    if order not in ("C", "F"):
        raise ValueError(f"order must be 'C' or 'F', not {order!r}")
    count = 1
    for dim in dims:
        count *= dim
    # The array's base is an export of the buffer that only its death ends
    # (src/views.c, _ViewExport): numpy.frombuffer(buffer) would make the
    # base a memoryview, whose public release() ends the export under the
    # array; numpy.ndarray(buffer=...) would hold no export at all.
    flat = numpy.frombuffer(buffer._view_export(), dtype=dtype, count=count,
                            offset=offset)
    return flat if len(dims) == 1 else flat.reshape(dims, order=order)


def _numpy_clone(view: Any) -> Any:
    return view.copy(order="K")


def _memoryview_create(buffer: Any, *, format: str = "B", shape: Any = None,
                       offset: int = 0) -> memoryview:
    if not isinstance(format, str):
        raise TypeError(f"format must be a str, not {type(format).__name__}")
    try:
        itemsize = _struct.calcsize(format)
    except _struct.error as exc:
        raise ValueError(f"bad struct format {format!r}: {exc}") from None
    offset = _check_offset(buffer, offset)
    dims = _resolve_shape(shape, itemsize, len(buffer) - offset, f"format {format!r}")
    needed = itemsize
    for dim in dims:
        needed *= dim
    with buffer.region(offset, offset + needed) as raw:
        # The cast shares raw's export; closing raw leaves the cast alive.
        return raw.cast(format, dims)


def _memoryview_clone(view: memoryview) -> memoryview:
    copy = memoryview(bytearray(view.tobytes()))
    return copy.cast(view.format, view.shape) if view.format != "B" or view.ndim != 1 else copy


def _ctypes_create(buffer: Any, *, ctype: Any = None, offset: int = 0) -> Any:
    import ctypes

    offset = _check_offset(buffer, offset)
    available = len(buffer) - offset
    if ctype is None:
        ctype = ctypes.c_uint8 * available
    if not (isinstance(ctype, type) and hasattr(ctype, "from_buffer")):
        raise TypeError(f"ctype must be a ctypes type, not {ctype!r}")
    if ctypes.sizeof(ctype) > available:
        raise ValueError(f"{ctype.__name__} needs {ctypes.sizeof(ctype)} bytes; "
                         f"the buffer has {available} from the offset")
    if buffer.readonly:
        raise TypeError("a ctypes view needs a writable buffer; this one is read-only")
    return ctype.from_buffer(buffer, offset)


def _ctypes_clone(view: Any) -> Any:
    return type(view).from_buffer_copy(view)


_kinds.update({
    "numpy": (_numpy_create, _numpy_clone),
    "memoryview": (_memoryview_create, _memoryview_clone),
    "ctypes": (_ctypes_create, _ctypes_clone),
})


# ---------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------

def register_view(kind: str, create: _Create, clone: _Clone) -> None:
    """Add a view kind: ``create(buffer, **options) -> view``; ``clone(view) -> copy``.

    The view should hold an export of the buffer (get it through the buffer
    protocol: memoryview(buffer), numpy.frombuffer, ...) so that it keeps
    the memory alive.  Registering a kind again replaces it; the built-in
    kinds cannot be replaced.
    """
    if not isinstance(kind, str):
        raise TypeError(f"a view kind must be a str, not {type(kind).__name__}")
    kind = str.__str__(kind)  # an exact str: no caller's __hash__ under _lock
    if not kind:
        raise ValueError("a view kind must not be empty")
    for what, func in (("create", create), ("clone", clone)):
        if not callable(func):
            raise TypeError(f"{what} must be callable, not {type(func).__name__}")
    if kind in _BUILTIN_KINDS:
        raise ValueError(f"the built-in view kind {kind!r} cannot be replaced")
    with _lock:
        _kinds[kind] = (create, clone)


def view_kinds() -> List[str]:
    """Names of the registered view kinds."""
    with _lock:
        return list(_kinds)


def _lookup(kind: Any) -> Tuple[_Create, _Clone]:
    if not isinstance(kind, str):
        raise TypeError(f"a view kind must be a str, not {type(kind).__name__}")
    kind = str.__str__(kind)  # an exact str: no caller's __hash__ under _lock
    with _lock:
        found = _kinds.get(kind)
    if found is None:
        raise UnknownViewKindError(
            f"View kind {kind} does not exist (registered: {', '.join(view_kinds())}).")
    return found


# ---------------------------------------------------------------------------
# The Buffer methods
# ---------------------------------------------------------------------------

def create_view(self: Any, kind: str, *, view_name: Optional[str] = None,
                **options: Any) -> Any:
    """Make a zero-copy view of kind, store it under view_name, return it.

    view_name defaults to "<kind>_default"; a view already stored under
    that name is replaced.  The view holds an export: the buffer cannot be
    released while the view is referenced outside the buffer.
    """
    create, _ = _lookup(kind)
    if view_name is None:
        view_name = f"{kind}_default"
    elif not isinstance(view_name, str):
        raise TypeError(f"view_name must be a str, not {type(view_name).__name__}")
    view = create(self, **options)
    self._store_view(view_name, kind, view)
    return view


def get_view(self: Any, name: str) -> Any:
    """The view stored under name (KeyError if there is none)."""
    return self._stored_view(name)[1]


def delete_view(self: Any, name: str) -> None:
    """Forget the view stored under name (KeyError if there is none).

    The view's export ends when no one else refers to the view.
    """
    self._forget_view(name)


def clone_view(self: Any, name: str) -> Any:
    """An independent copy of the view stored under name (not stored)."""
    kind, view = self._stored_view(name)
    with _lock:
        found = _kinds.get(kind)
    if found is None:  # cannot happen: kinds are never removed
        raise UnknownViewKindError(f"View kind {kind} does not exist.")
    return found[1](view)


def view_names(self: Any) -> List[str]:
    """Names of the views stored on this buffer, oldest first."""
    return self._view_names()


def python_methods() -> Dict[str, Callable[..., Any]]:
    """The Buffer methods written here, by name, for the C type to call
    (memmanager/__init__.py hands them to the core at import)."""
    return {function.__name__: function
            for function in (create_view, get_view, delete_view, clone_view, view_names)}
