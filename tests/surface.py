"""The public surface of memmanager as plain lists, for the reliability
tests: the state machine (test_state_machine.py), the thread and fork tests
(test_threads.py), the leak tests (test_leaks.py) and the shutdown tests
(test_exit.py).

A new allocator, a new kind of consume() source or a new way of exporting a
buffer is one entry here, and every one of those tests picks it up:

- ALLOCATORS: allocator name -> the option sets Buffer() is tried with;
- INIT_VALUES: init_value forms and the byte each must give;
- SOURCES: how to prepare each kind of source consume() adopts, and what
  the adopted buffer must look like;
- EXPORTERS: each way of holding an export of a buffer (a memoryview, a
  NumPy array, ...), how to end it and how to write through it;
- EXIT_EXPORTS: the same exports as source text, for child interpreters.

Entries are cheap: the state machine runs them thousands of times.
"""

import ctypes
import mmap
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import cffi
import numpy as np

from memmanager import Buffer

FFI = cffi.FFI()

LIBC = ctypes.CDLL(None)
LIBC.malloc.restype = ctypes.c_void_p
LIBC.malloc.argtypes = [ctypes.c_size_t]
LIBC.free.restype = None
LIBC.free.argtypes = [ctypes.c_void_p]


# --------------------------------------------------------------------------
# Allocators and init values

ALLOCATORS: Dict[str, List[Dict[str, Any]]] = {
    "PyAlloc": [{}],
    "CMalloc": [{}],
    "Aligned": [{}, {"alignment": 4096}],
    "Mmap": [{}, {"populate": True}, {"shared": True}],
    "SharedMemory": [{}],
}


# Allocators that cannot allocate without options of their own: MappedFile
# needs a file (tests/test_mapped_file.py).
NEEDS_OPTIONS = {"MappedFile"}

# The allocators memmanager registers itself, as found when this module is
# first imported (at collection, before any test registers a plug-in or an
# adaptor: those, some of them misbehaving on purpose, are not the surface).
import memmanager as _memmanager  # noqa: E402
BUILT_IN = tuple(_memmanager.allocators())


def usable_allocators() -> List[str]:
    """Every built-in allocator that can make memory here (not Borrowed,
    which only adopts; not the Cuda* ones on a machine without a GPU; not
    those in NEEDS_OPTIONS)."""
    import memmanager
    names = []
    for name in BUILT_IN:
        if name in NEEDS_OPTIONS:
            continue
        try:
            Buffer(16, 1, allocator=name).release()
        except (ValueError, memmanager.DeviceUnavailableError):
            continue
        names.append(name)
    return names


def host_allocators() -> List[str]:
    """The usable allocators whose memory the host can read and write:
    all of them but CudaDevice, whose memory is on the GPU (it is usable,
    and so in this list's way, only where a GPU is)."""
    names = []
    for name in usable_allocators():
        buf = Buffer(16, 1, allocator=name)
        try:
            memoryview(buf).release()
        except BufferError:
            continue
        finally:
            buf.release()
        names.append(name)
    return names


ALLOCATOR_CHOICES: List[Tuple[str, Dict[str, Any]]] = [
    (name, options) for name, option_sets in ALLOCATORS.items() for options in option_sets
]

# (init_value, the byte every position must hold; None: unspecified)
INIT_VALUES: List[Tuple[Any, Optional[int]]] = [
    (None, None), ("zero", 0), ("ZERO", 0), (0, 0), (7, 7), (255, 255),
    ("A", 65), (b"\x10", 16), ("40", 40), ("\xe9", 0xE9),
]


# --------------------------------------------------------------------------
# consume() sources

class Adoption(NamedTuple):
    """One prepared consume() call and what the adopted buffer must be."""

    source: Any                    # the first argument of consume()
    kwargs: Dict[str, Any]         # extra keywords (allocator=, owner=, copy=)
    allocator: str                 # the allocator the buffer reports
    readonly: bool
    content: bytes                 # the buffer's bytes right after adoption
    address: Optional[int]         # where it must start (None: anywhere)
    keep: Any                      # what must outlive the buffer (an arena)
    refused: Callable[[], None]    # cleanup when consume() raised
    adopted: Callable[[], None]    # checks on the source after success
    closing: Callable[[], None]    # cleanup once the buffer is gone


def _nothing() -> None:
    pass


def _address_of(obj: Any) -> int:
    return int(np.frombuffer(obj, dtype=np.uint8).__array_interface__["data"][0])


def _zero_copy(source: Any, content: bytes, readonly: bool, closing=_nothing) -> Adoption:
    return Adoption(source, {}, "PyAlloc", readonly, content, _address_of(source), source,
                    _nothing, _nothing, closing)


def _from_bytes(nbytes: int, pattern: bytes) -> Adoption:
    # One byte longer than needed: CPython shares its 1-byte bytes objects.
    # (Adopting them twice is allowed since issue 12; the longer pattern
    # keeps each adoption's address its own.)
    return _zero_copy(pattern + b"\x00", pattern, True)


def _from_bytearray(nbytes: int, pattern: bytes) -> Adoption:
    return _zero_copy(bytearray(pattern), pattern, False)


def _from_memoryview(nbytes: int, pattern: bytes) -> Adoption:
    backing = bytearray(b"\x00" + pattern + b"\x00")
    view = memoryview(backing)[1:-1]
    return Adoption(view, {}, "PyAlloc", False, pattern, _address_of(backing) + 1,
                    (backing, view), _nothing, _nothing, view.release)


def _from_readonly_memoryview(nbytes: int, pattern: bytes) -> Adoption:
    view = memoryview(pattern + b"\x00")
    return Adoption(view, {}, "PyAlloc", True, pattern, _address_of(view), view,
                    _nothing, _nothing, view.release)


def _from_mmap(nbytes: int, pattern: bytes) -> Adoption:
    mapping = mmap.mmap(-1, nbytes)
    mapping[:] = pattern
    return _zero_copy(mapping, pattern, False, closing=mapping.close)


def _from_numpy(nbytes: int, pattern: bytes) -> Adoption:
    return _zero_copy(np.frombuffer(bytearray(pattern), dtype=np.uint8), pattern, False)


def _copy_of_buffer(nbytes: int, pattern: bytes) -> Adoption:
    other = Buffer(nbytes, 1)
    other[:] = pattern
    return Adoption(other, {"copy": True}, "PyAlloc", False, pattern, None, None,
                    other.release, other.release, _nothing)


def _short_copy(nbytes: int, pattern: bytes) -> Adoption:
    half = pattern[: nbytes // 2]
    content = half + bytes(nbytes - len(half))  # copy=True zero-fills the tail
    return Adoption(bytes(half), {"copy": True}, "PyAlloc", False, content, None, None,
                    _nothing, _nothing, _nothing)


def _malloced(nbytes: int, pattern: bytes) -> int:
    address = LIBC.malloc(nbytes)
    assert address, "libc malloc failed"
    ctypes.memmove(address, pattern, nbytes)
    return address


def _adopt_address(holder: Any, address: int, pattern: bytes,
                   emptied: Callable[[], bool]) -> Adoption:
    def refused() -> None:
        assert not emptied(), "a refused consume() emptied the holder"
        LIBC.free(address)

    def adopted() -> None:
        assert emptied(), "the holder still holds the adopted address"

    # An address needs allocator= (issue 12: none is assumed for an int).
    return Adoption(holder, {"allocator": "CMalloc"}, "CMalloc", False, pattern, None, None,
                    refused, adopted, _nothing)


def _from_int(nbytes: int, pattern: bytes) -> Adoption:
    address = _malloced(nbytes, pattern)
    return _adopt_address(address, address, pattern, lambda: False)._replace(
        adopted=_nothing)


def _from_list(nbytes: int, pattern: bytes) -> Adoption:
    address = _malloced(nbytes, pattern)
    holder = [address]
    return _adopt_address(holder, address, pattern, lambda: holder == [0])


def _from_c_void_p(nbytes: int, pattern: bytes) -> Adoption:
    address = _malloced(nbytes, pattern)
    holder = ctypes.c_void_p(address)
    return _adopt_address(holder, address, pattern, lambda: holder.value is None)


def _from_ctypes_pointer(nbytes: int, pattern: bytes) -> Adoption:
    address = _malloced(nbytes, pattern)
    holder = ctypes.cast(address, ctypes.POINTER(ctypes.c_ubyte))
    return _adopt_address(holder, address, pattern, lambda: not bool(holder))


def _from_cffi_pointer(nbytes: int, pattern: bytes) -> Adoption:
    address = _malloced(nbytes, pattern)
    holder = FFI.cast("void *", address)
    return _adopt_address(holder, address, pattern, lambda: False)._replace(adopted=_nothing)


def _borrowed(nbytes: int, pattern: bytes) -> Adoption:
    arena = ctypes.create_string_buffer(pattern, nbytes)
    address = ctypes.addressof(arena)
    return Adoption(address, {"allocator": "Borrowed", "owner": arena}, "Borrowed", False,
                    pattern, address, arena, _nothing, _nothing, _nothing)


class SourceKind(NamedTuple):
    name: str
    prepare: Callable[[int, bytes], Adoption]   # (nbytes, pattern) -> Adoption


SOURCES: List[SourceKind] = [
    SourceKind("bytes", _from_bytes),
    SourceKind("bytearray", _from_bytearray),
    SourceKind("memoryview", _from_memoryview),
    SourceKind("read-only memoryview", _from_readonly_memoryview),
    SourceKind("mmap", _from_mmap),
    SourceKind("numpy array", _from_numpy),
    SourceKind("Buffer, copy=True", _copy_of_buffer),
    SourceKind("short bytes, copy=True", _short_copy),
    SourceKind("int address", _from_int),
    SourceKind("one-element list", _from_list),
    SourceKind("ctypes.c_void_p", _from_c_void_p),
    SourceKind("ctypes pointer", _from_ctypes_pointer),
    SourceKind("cffi pointer", _from_cffi_pointer),
    SourceKind("Borrowed address", _borrowed),
]


# --------------------------------------------------------------------------
# Exports

class Export(NamedTuple):
    """A live export: the object holding it and the buffer offset of its
    first byte."""

    handle: Any
    offset: int


class Exporter(NamedTuple):
    name: str
    export: Callable[[Any], Export]          # Buffer -> a new export
    end: Callable[[Any], None]               # ends it (the caller then drops it)
    write: Optional[Callable[[Any, int], None]]  # writes a byte at the first position
    needs_writable: bool                     # refused on a read-only buffer


def _write_item(handle: Any, value: int) -> None:
    handle[0] = value


def _write_char(handle: Any, value: int) -> None:
    handle[0] = bytes([value])


def _release(handle: Any) -> None:
    handle.release()


def _ctypes_export(buf: Any) -> Export:
    return Export((ctypes.c_char * len(buf)).from_buffer(buf), 0)


def _cffi_export(buf: Any) -> Export:
    return Export(FFI.from_buffer(buf, require_writable=not buf.readonly), 0)


def _write_cffi(handle: Any, value: int) -> None:
    handle[0] = bytes([value])


EXPORTERS: List[Exporter] = [
    Exporter("memoryview", lambda b: Export(memoryview(b), 0), _release, _write_item, False),
    Exporter("region", lambda b: Export(b.region(len(b) // 2), len(b) // 2), _release,
             _write_item, False),
    Exporter("read-only region", lambda b: Export(b.region(0, len(b), readonly=True), 0),
             _release, None, False),
    Exporter("numpy.asarray", lambda b: Export(np.asarray(b), 0), lambda h: None,
             _write_item, False),
    Exporter("numpy.frombuffer", lambda b: Export(np.frombuffer(b, dtype=np.uint8), 0),
             lambda h: None, _write_item, False),
    Exporter("ctypes from_buffer", _ctypes_export, lambda h: None, _write_char, True),
    Exporter("cffi from_buffer", _cffi_export, FFI.release, _write_cffi, False),
    Exporter("numpy.from_dlpack", lambda b: Export(np.from_dlpack(b), 0), lambda h: None,
             _write_item, False),
    Exporter("unconsumed DLPack capsule",
             lambda b: Export(b.__dlpack__(max_version=(1, 0)), 0), lambda h: None,
             None, False),
]


def writable_export(exporter: Exporter, handle: Any, buf_readonly: bool) -> bool:
    """Whether writing through this export is allowed and safe."""
    if exporter.write is None or buf_readonly:
        return False
    if isinstance(handle, memoryview):
        return not handle.readonly
    if isinstance(handle, np.ndarray):
        return bool(handle.flags.writeable)
    return True


# The exports above as source text over a buffer named {b}, for child
# interpreters (test_exit.py); each needs numpy, ctypes and ffi imported.
EXIT_EXPORTS: Dict[str, str] = {
    "memoryview": "memoryview({b})",
    "region": "{b}.region(1, 3)",
    "numpy.asarray": "numpy.asarray({b})",
    "ctypes from_buffer": "(ctypes.c_char * len({b})).from_buffer({b})",
    "cffi from_buffer": "ffi.from_buffer({b})",
    "numpy.from_dlpack": "numpy.from_dlpack({b})",
    "unconsumed DLPack capsule": "{b}.__dlpack__(max_version=(1, 0))",
}
EXIT_PRELUDE = "import ctypes, cffi, numpy\nffi = cffi.FFI()\n"
