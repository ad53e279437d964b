"""Every public entry point of memmanager, one line each, for the
re-entrancy matrix (tests/test_attack_matrix.py).

    E(target, *params, setup=..., variant=...)

`target` names what is called: "buf.X" (a method or property of the
case's Buffer), "Buffer.X" (on the class), "mm.X" (memmanager.X),
"cuda.X", "np.X" (memmanager.numpy.X), "core.X" (memmanager._core.X), "dv.X" (a DeviceView on the fake
CUDA driver), "alloc.X" (an Allocator object), or a callable taking the
State.  Each param is P (positional) or K (keyword) with an argument
*type* (INT, STR, ...: which hostile kinds can reach its dunders) and the
good value (a constant or a function of the State).

A new entry point is one E(...) line here; a new public name that no line
(and no entry of NOT_CALLED) covers fails test_the_matrix_knows_every_public_name.
"""

import ctypes
import importlib
import pickle
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import memmanager
from memmanager import _core

# Argument types -> hostile kinds (tests/attack/hostile.py KINDS) that get
# past the type check of such an argument.
INT = ("index", "int_only", "int_sub", "getattr")
BOOL = ("boolish", "int_sub", "index")
STR = ("str_sub", "fspath", "index")
ALLOC = STR + ("hostile_plugin",)
VIEWKIND = STR + ("hostile_view_kind",)
MAP = ("mapping", "dict_sub", "getattr")
ITER = ("iterable", "sequence", "list_sub", "index", "getattr")
TUPLE = ("tuple_sub", "sequence", "iterable", "index")
SRC = ("buffer", "index", "address_list", "getattr", "void_p")
CALL = ("callable", "getattr")
STUB = ("hostile_stub", "callable", "getattr")
IMPL = ("hostile_impl", "getattr", "index")
ANY = ("getattr", "index", "str_sub")


class Param(NamedTuple):
    name: str
    kinds: Tuple[str, ...]
    good: Any
    keyword: bool


def P(name: str, kinds: Tuple[str, ...], good: Any) -> Param:
    return Param(name, kinds, good, False)


def K(name: str, kinds: Tuple[str, ...], good: Any) -> Param:
    return Param(name, kinds, good, True)


class Entry(NamedTuple):
    target: Any
    params: Tuple[Param, ...]
    setup: Optional[Callable[[Any], None]]
    variant: str
    cuda: bool
    expect: Optional[type]   # the exception the polite call must raise
    check: Optional[Callable[[Any, Any], None]]  # (state, result): documented result

    @property
    def name(self) -> str:
        base = self.target if isinstance(self.target, str) else self.target.__name__
        return base + ("[%s]" % self.variant if self.variant else "")


def E(target: Any, *params: Param, setup: Optional[Callable[[Any], None]] = None,
      variant: str = "", cuda: bool = False, expect: Optional[type] = None,
      check: Optional[Callable[[Any, Any], None]] = None) -> Entry:
    return Entry(target, params, setup, variant, cuda, expect, check)


# ---------------------------------------------------------------------------
# Setups: what the State needs before the call
# ---------------------------------------------------------------------------

def with_view(s: Any) -> None:
    s.buf.create_view("memoryview", view_name="v")
    s.buf.create_view("numpy", view_name="n")


def with_shm(s: Any) -> None:
    s.shm = s.new(64, 1, allocator="SharedMemory")


def with_source_buffer(s: Any) -> None:
    s.src = s.new(64, 1, init_value=1)


def with_malloc(s: Any) -> None:
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    s.block = libc.malloc(64)


def with_arena(s: Any) -> None:
    s.arena = ctypes.create_string_buffer(64)
    s.keep.append(s.arena)


def with_mapping(s: Any) -> None:
    s.buf.device_movement("enter", "to")


def with_device_view(s: Any) -> None:
    s.buf.device_movement("enter", "to")
    s.dv = s.buf.device_view()
    s.keep.append(s.dv)


def with_options(s: Any) -> None:
    s.options.update({"init_value": 0})


def pinned(s: Any) -> None:
    s.buf = s.new(64, 1, delayed_gc=True)


def exported(s: Any) -> None:
    s.export = memoryview(s.buf)


def consumed_once(s: Any) -> None:
    s.data = b"q" * 64
    s.adopt(memmanager.Buffer.consume(s.data, 64, 1))


def device_buffer(s: Any) -> None:
    s.buf = s.new(64, 1, allocator="CudaDevice")


def shm_buffer(s: Any) -> None:
    s.buf = s.new(64, 1, allocator="SharedMemory")


_replay_log_path: List[str] = []


def with_log(s: Any) -> None:
    """A small Log file (one per process, removed at exit) in s.log_path."""
    if not _replay_log_path:
        import atexit
        import os
        import tempfile
        fd, path = tempfile.mkstemp(suffix=".log", prefix="mm_attack_")
        with os.fdopen(fd, "w") as f:
            f.write("# memmanager-log 1 time_ns pid tid event size address allocator\n"
                    "1 1 1 a 64 0x1000 X\n2 1 1 a 32 0x2000 X\n3 1 1 f 64 0x1000 X\n")
        atexit.register(os.unlink, path)
        _replay_log_path.append(path)
    s.log_path = _replay_log_path[0]


def with_file_path(s: Any) -> None:
    """A path for a MappedFile "w+" in a directory that goes at cleanup
    (the TemporaryDirectory dies with `keep`; mappings outlive the file)."""
    import os
    import tempfile
    s.directory = tempfile.TemporaryDirectory(prefix="mm_attack_")
    s.keep.append(s.directory)
    s.path = os.path.join(s.directory.name, "mapped.bin")


def mapped_file_buffer(s: Any) -> None:
    with_file_path(s)
    s.buf = s.new(64, 1, allocator="MappedFile", path=s.path, mode="w+")


def is_unpinned(s: Any, result: Any) -> None:
    if not s.buf.released:
        assert not s.buf.delayed_gc, "collect_delayed(buf) left the buffer pinned"


def exit_keeps_exception(s: Any, result: Any) -> None:
    assert not isinstance(result, BufferError), \
        "__exit__ replaced the exception leaving the block by %r" % (result,)


def not_cpu(s: Any, result: Any) -> None:
    if isinstance(result, tuple):
        assert result[0] != 1, "a CudaDevice buffer's __dlpack_device__ claims the CPU"


def same_shared_memory(s: Any, result: Any) -> None:
    if isinstance(result, memmanager.Buffer):
        assert result.allocator == "SharedMemory", \
            "a SharedMemory buffer unpickles as a private %s copy" % result.allocator


def _pickle_dumps(state: Any) -> Callable[..., Any]:
    return lambda protocol: pickle.dumps(state.buf, protocol)


def _pickle_roundtrip(state: Any) -> Callable[..., Any]:
    def roundtrip(protocol: Any) -> Any:
        return state.adopt(pickle.loads(pickle.dumps(state.buf, protocol)))
    return roundtrip


def _getitem_slice(state: Any) -> Callable[..., Any]:
    return lambda start, stop: state.buf[start:stop]


def _setitem_slice(state: Any) -> Callable[..., Any]:
    def setter(start: Any, stop: Any, value: Any) -> None:
        state.buf[start:stop] = value
    return setter


def _collect_one(state: Any) -> Callable[..., Any]:
    return lambda: memmanager.collect_delayed(state.buf)


_pickle_dumps.__name__ = "pickle.dumps"
_pickle_roundtrip.__name__ = "pickle.loads(dumps)"
_getitem_slice.__name__ = "buf[a:b]"
_setitem_slice.__name__ = "buf[a:b]="
_collect_one.__name__ = "mm.collect_delayed(buf)"

ID = lambda s: [s.buf.identifier]  # noqa: E731
STUB_OK = lambda s: (lambda info: None)  # noqa: E731

def _statistics_block(state: Any) -> Callable[..., Any]:
    """A with memmanager.statistics() block around a buffer of the State."""
    def block() -> Any:
        with memmanager.statistics() as scope:
            state.new(8, 1)
            scope.allocators
        return scope.allocations
    return block


_statistics_block.__name__ = "with mm.statistics()"


def _numpy_block(state: Any) -> Callable[..., Any]:
    """A with memmanager.numpy.allocator() block: NumPy arrays from a Pool
    while the State's buffers are made and dropped."""
    import numpy
    import memmanager.numpy

    def block() -> Any:
        with memmanager.numpy.allocator("CMalloc"):
            state.new(8, 1)
            arrays = [numpy.ones(n) for n in (1, 100, 5000)]
            arrays[1].resize(300, refcheck=False)
        return sum(float(a.sum()) for a in arrays)
    return block


_numpy_block.__name__ = "with mm.numpy.allocator()"


def _numpy_set_and_reset(state: Any) -> Callable[..., Any]:
    """set_allocator(name), an array, then NumPy's default again."""
    import numpy
    import memmanager.numpy

    def call(name: Any) -> Any:
        try:
            memmanager.numpy.set_allocator(name)
            return memmanager.numpy.allocator_of(numpy.zeros(10))
        finally:
            memmanager.numpy.set_allocator(None)
    return call


_numpy_set_and_reset.__name__ = "mm.numpy.set_allocator()"


def _an_array(state: Any) -> Any:
    import numpy
    import memmanager.numpy
    with memmanager.numpy.allocator("CMalloc"):
        return numpy.arange(10)


def _current_handler(state: Any) -> Any:
    import memmanager.numpy
    memmanager.numpy.get_allocator()   # binds NumPy
    return _core._numpy_get_handler()

ENTRIES: List[Entry] = [
    # --- construction ------------------------------------------------------
    E("mm.Buffer", P("num_items", INT, 16), P("item_size", INT, 4), P("options", MAP, lambda s: s.options),
      K("allocator", ALLOC, "PyAlloc"), K("init_value", INT + ("str_sub", "fspath"), 0), K("delayed_gc", BOOL, True),
      K("death_stub", STUB, STUB_OK), setup=with_options),
    E("mm.Buffer", P("num_items", INT, 16), P("item_size", INT, 4), K("allocator", ALLOC, "Aligned"),
      K("alignment", INT, 64), K("init_value", STR, "7"), variant="Aligned"),
    E("mm.Buffer", P("num_items", INT, 16), P("item_size", INT, 4), K("allocator", ALLOC, "Mmap"),
      K("hugepages", BOOL, False), K("populate", BOOL, True), K("shared", BOOL, True), variant="Mmap"),
    E("mm.Buffer", P("num_items", INT, 16), P("item_size", INT, 4), K("allocator", ALLOC, "SharedMemory"),
      K("name", STR, lambda s: "attack_%d" % id(s)), variant="SharedMemory"),
    E("mm.Buffer", P("num_items", INT, 16), P("item_size", INT, 4), K("allocator", ALLOC, "Aligned"),
      K("hugepages", BOOL, True), K("numa_node", INT, 0), variant="Aligned-numa"),
    E("mm.Buffer", P("num_items", INT, 16), P("item_size", INT, 4), K("allocator", ALLOC, "MappedFile"),
      K("path", STR, lambda s: s.path), K("mode", STR, "w+"), K("offset", INT, 3),
      K("hugepages", BOOL, True), K("numa_node", INT, 0), K("init_value", INT, 0),
      setup=with_file_path, variant="MappedFile"),
    E("mm.Buffer", P("num_items", INT, 16), P("item_size", INT, 2), K("allocator", ALLOC, "AttackPlug"),
      K("init_value", INT, 3), K("extra", ANY, 1), variant="plugin"),
    E("mm.Buffer", P("num_items", INT, 16), P("item_size", INT, 2), K("allocator", ALLOC, "CudaManaged"), K("init_value", INT, 0),
      variant="CudaManaged", cuda=True),
    E("Buffer.consume", P("source", SRC, lambda s: bytearray(64)), P("num_items", INT, 64),
      P("item_size", INT, 1), P("options", MAP, lambda s: s.options), K("delayed_gc", BOOL, True),
      K("death_stub", STUB, STUB_OK), K("copy", BOOL, False), K("readonly", BOOL, False)),
    E("Buffer.consume", P("source", SRC, lambda s: s.src), P("num_items", INT, 32), P("item_size", INT, 2),
      K("delayed_gc", BOOL, False), setup=with_source_buffer, variant="Buffer"),
    E("Buffer.consume", P("source", SRC, b"x" * 64), P("num_items", INT, 64), P("item_size", INT, 1),
      K("copy", BOOL, True), variant="bytes-copy"),
    E("Buffer.consume", P("source", SRC, lambda s: ctypes.addressof(s.arena)), P("num_items", INT, 64),
      P("item_size", INT, 1), K("allocator", ALLOC, "Borrowed"), K("owner", ANY, lambda s: s.arena),
      setup=with_arena, variant="Borrowed"),
    E("Buffer.consume", P("source", SRC, lambda s: s.block), P("num_items", INT, 64), P("item_size", INT, 1),
      K("allocator", ALLOC, "CMalloc"), setup=with_malloc, variant="CMalloc"),
    E("Buffer.consume", P("source", SRC, lambda s: bytearray(64)), P("num_items", INT, 64),
      P("item_size", INT, 1), K("allocator", ALLOC, "AttackPlug"), variant="plugin"),
    E("Buffer.attach", P("name", STR, lambda s: s.shm.name), P("num_items", INT, 64),
      P("item_size", INT, 1), K("readonly", BOOL, True), setup=with_shm),
    E("Buffer.consume", P("source", SRC, lambda s: s.data), P("num_items", INT, 64), P("item_size", INT, 1),
      setup=consumed_once, variant="same-bytes-twice"),
    E("Buffer.consume", P("source", SRC, lambda s: ctypes.addressof(s.arena)), P("num_items", INT, 64),
      P("item_size", INT, 1), setup=with_arena, variant="address-without-allocator", expect=TypeError),
    E("Buffer.consume", P("source", SRC, lambda s: ctypes.c_void_p(s.block)), P("num_items", INT, 64),
      P("item_size", INT, 1), K("allocator", ALLOC, "CMalloc"), setup=with_malloc, variant="c_void_p"),
    E("Buffer.get_delayed_gc_objects"),
    E("buf.get_delayed_gc_objects"),
    # --- accessors -----------------------------------------------------------
    *[E("buf." + name) for name in (
        "get_buffer", "get_buffer_size", "get_element_size", "get_num_of_elements", "address",
        "nbytes", "itemsize", "num_items", "identifier", "allocator", "readonly", "delayed_gc",
        "released", "exports", "name", "__len__", "__repr__", "__sizeof__", "__dlpack_device__",
        "device_mappings", "view_names", "_view_names", "release", "__enter__", "__del__",
        "flush")],
    E("buf.flush", setup=mapped_file_buffer, variant="MappedFile"),
    E("buf.name", setup=lambda s: setattr(s, "buf", s.new(64, 1, allocator="SharedMemory")),
      variant="SharedMemory"),
    E("buf.extract_buffer_region", P("start", INT, 2), P("end", INT, 9)),
    E("buf.region", P("start", INT, 2), P("stop", INT, 9), K("readonly", BOOL, True)),
    E("buf.__getitem__", P("key", INT, 3)),
    E("buf.__setitem__", P("key", INT, 3), P("value", INT, 7)),
    E("buf.__delitem__", P("key", INT, 3), expect=TypeError),
    E(_getitem_slice, P("start", INT, 2), P("stop", INT, 6)),
    E(_setitem_slice, P("start", INT, 2), P("stop", INT, 6), P("value", SRC, b"abcd")),
    E("buf.__exit__", P("exc_type", ANY, None), P("exc", ANY, None), P("tb", ANY, None)),
    E("buf.__exit__", P("exc_type", ANY, ValueError), P("exc", ANY, lambda s: ValueError("x")),
      P("tb", ANY, None), setup=with_view, variant="raising"),
    E("buf.__exit__", P("exc_type", ANY, ValueError), P("exc", ANY, lambda s: ValueError("x")),
      P("tb", ANY, None), setup=exported, variant="raising-exported", check=exit_keeps_exception),
    E("buf.__dlpack_device__", setup=device_buffer, variant="CudaDevice", cuda=True, check=not_cpu),
    E(_pickle_roundtrip, P("protocol", INT, 5), setup=shm_buffer, variant="SharedMemory",
      check=same_shared_memory),
    E("buf.__reduce_ex__", P("protocol", INT, 5)),
    E("buf.__copy__"),
    E("buf.__deepcopy__", P("memo", ANY, lambda s: {})),
    E("buf._view_export"),
    E("buf.__copy__", setup=shm_buffer, variant="SharedMemory"),
    E(_pickle_dumps, P("protocol", INT, 5)),
    E(_pickle_roundtrip, P("protocol", INT, 2)),
    E("buf.__dlpack__", K("stream", ANY, None), K("max_version", TUPLE, (1, 0)),
      K("dl_device", TUPLE, (1, 0)), K("copy", BOOL, False)),
    # --- views -------------------------------------------------------------
    E("buf.create_view", P("kind", VIEWKIND, "numpy"), K("view_name", STR, "x"), K("dtype", ANY, "uint8"),
      K("shape", TUPLE, (8,)), K("order", STR, "C"), K("offset", INT, 8)),
    E("buf.create_view", P("kind", VIEWKIND, "memoryview"), K("view_name", STR, "v"),
      K("format", STR, "B"), K("shape", TUPLE, (8,)), K("offset", INT, 0), setup=with_view,
      variant="memoryview-replace"),
    E("buf.create_view", P("kind", VIEWKIND, "ctypes"), K("ctype", ANY, ctypes.c_uint8 * 8),
      K("offset", INT, 4), variant="ctypes"),
    E("buf.get_view", P("name", STR, "v"), setup=with_view),
    E("buf.delete_view", P("name", STR, "v"), setup=with_view),
    E("buf.clone_view", P("name", STR, "n"), setup=with_view),
    E("buf.view_names", setup=with_view, variant="with-views"),
    E("buf._store_view", P("name", STR, "v"), P("kind", STR, "memoryview"),
      P("view", ANY, lambda s: s.buf.region(0, 8)), setup=with_view),
    E("buf._stored_view", P("name", STR, "v"), setup=with_view),
    E("buf._forget_view", P("name", STR, "v"), setup=with_view),
    E("buf.release", setup=with_view, variant="with-views"),
    # --- GPU (the fake driver) ---------------------------------------------
    E("buf.device_movement", P("action", STR, "enter"), P("direction", STR, "to"),
      K("device", STR, "NVIDIA_GPU"), K("device_id", INT, 0), K("start", INT, 0), K("end", INT, 32),
      cuda=True),
    E("buf.device_movement", P("action", STR, "exit"), P("direction", STR, "from"),
      K("device_id", INT, 0), setup=with_mapping, variant="exit", cuda=True),
    E("buf.device_view", P("device_id", INT, 0), setup=with_mapping, cuda=True),
    E("buf.device_mappings", setup=with_mapping, variant="mapped", cuda=True),
    E("dv.__dlpack__", K("stream", ANY, None), K("max_version", TUPLE, (1, 0)),
      K("dl_device", TUPLE, (2, 0)), K("copy", BOOL, False), setup=with_device_view, cuda=True),
    *[E("dv." + name, setup=with_device_view, cuda=True) for name in (
        "__dlpack_device__", "__cuda_array_interface__", "address", "nbytes", "device_id",
        "readonly", "buffer", "__repr__")],
    # --- the module ----------------------------------------------------------
    *[E("mm." + name) for name in (
        "stats", "live_buffers", "report", "allocators", "get_delayed_gc_objects", "get_include",
        "view_kinds", "statistics")],
    E(_statistics_block),
    E("mm.collect_delayed", P("identifiers", ITER, ID)),
    E("mm.collect_delayed", variant="all"),
    E(_collect_one, setup=pinned, check=is_unpinned),
    E("mm.register_allocator", P("name", STR, "AttackPlug"), P("impl", IMPL, lambda s: _plug())),
    E("mm.register_view", P("kind", STR, "attackview"), P("create", CALL, lambda s: _view_create),
      P("clone", CALL, lambda s: _view_clone)),
    E("mm.replay", P("path", STR, lambda s: s.log_path), K("allocator", ALLOC, "AttackPlug"),
      setup=with_log),
    E("mm.Log", P("upstream", ALLOC, "PyAlloc"), P("path", STR, lambda s: s.log_path),
      setup=with_log),
    E("mm.Limit", P("upstream", ALLOC, "PyAlloc"), P("max_bytes", INT, 1000)),
    E("mm.Pool", P("upstream", ALLOC, "PyAlloc"), K("initial_size", INT, 4096),
      K("maximum_size", INT, 1 << 20)),
    E("core._adaptors"),
    E(_numpy_block),
    E(_numpy_set_and_reset, P("name", ALLOC, "CMalloc")),
    E("np.allocator", P("name", ALLOC, "CMalloc")),
    E("np.allocator", P("name", ALLOC, "Aligned"), K("alignment", INT, 64), variant="Aligned"),
    E("np.handler", P("name", ALLOC, "Aligned"), K("alignment", INT, 64)),
    E("np.get_allocator"),
    E("np.allocator_of", P("array", ANY, _an_array)),
    E("core._numpy_bind"),
    E("core._numpy_handler", P("name", ALLOC, "Aligned"), P("options", MAP, {"alignment": 64})),
    E("core._numpy_set_handler", P("handler", ANY, _current_handler)),
    E("core._numpy_get_handler", setup=lambda s: _current_handler(s)),
    E("core._numpy_handler_allocator", P("handler", ANY, _current_handler)),
    E("core._numpy_live_blocks"),
    E("core._numpy_stats"),
    E("np.stats"),
    E("mm.use", K("allocators", ITER, ["PyAlloc", "AttackPlug"]), K("devices", ITER, ["NVIDIA_GPU"]),
      K("views", ITER, ["numpy", "attackview"])),
    *[E("cuda." + name, cuda=True) for name in (
        "is_available", "device_count", "unavailable_reason", "driver_version")],
    *[E("core." + name) for name in (
        "_live_buffers", "_registry_check", "_registry_locking", "_cuda_probe", "allocators",
        "stats", "get_delayed_gc_objects", "statistics", "_statistics_active_scopes")],
    E("core._cuda_reset", setup=with_mapping, cuda=True),
    E("core._shm_unlink_at_exit", setup=shm_buffer),
    E("core._release_pinned_at_exit", setup=lambda s: s.new(8, 1, delayed_gc=True)),
    E("core.collect_delayed", P("identifiers", ITER, ID)),
    E("core._registry_spin", P("iterations", INT, 10)),
    E("core._replay", P("path", STR, lambda s: s.log_path), P("allocator", ALLOC, "CMalloc"),
      setup=with_log),
    E("core._register_allocator", P("name", STR, "AttackPlug"), P("impl", IMPL, lambda s: _plug())),
    E("core._set_address_resolver", P("resolver", CALL, lambda s: memmanager._address.resolve)),
    E("core._set_python_methods", P("table", MAP, lambda s: {
        **memmanager._views.python_methods(), **memmanager._pickle.python_methods()})),
    *[E("alloc." + name) for name in ("name", "kind", "__repr__")],
]


def _plug() -> Any:
    from attack.hostile import PyPlug
    return PyPlug()


def _view_create(buffer: Any, **options: Any) -> Any:
    return memoryview(buffer)


def _view_clone(view: Any) -> Any:
    return bytes(view)


# Public names the matrix does not call: types and exceptions (attacked by
# tests/test_attack_types.py), constants, and construction dunders.
NOT_CALLED = {
    "mm.DeviceUnavailableError", "mm.DeviceView", "mm.LiveBuffer", "mm.MemManagerError",
    "mm.OverlapError", "mm.ReplayResult", "mm.LimitExceededError", "core.LimitExceededError", "mm.TRACEMALLOC_DOMAIN", "mm.UnknownAllocatorError",
    "mm.UnknownViewKindError", "mm.__version__", "mm.cuda",
    "mm.Statistics", "mm.AllocatorStatistics", "core.Statistics", "core.AllocatorStatistics",
    "cuda.DeviceUnavailableError", "cuda.DeviceView",
    "core.Allocator", "core.Buffer", "core.DEBUG", "core.AUTO_HUGEPAGES", "core.DeviceUnavailableError",
    "core.DeviceView", "core.MemManagerError", "core.OverlapError", "core.TRACEMALLOC_DOMAIN",
    "core.UnknownAllocatorError",
    # the adaptor types: the same objects as mm.Limit, mm.Pool, mm.Log
    "core.Limit", "core.Pool", "core.Log",
    "buf.__new__", "buf.__doc__", "buf.__module__", "buf.consume", "buf.attach",
    # DeviceView / Allocator: made by the module only (test_attack_types.py)
    "dv.__new__", "dv.__doc__", "dv.__module__", "alloc.__doc__", "alloc.__new__", "alloc.__module__",
    # called by the "mm.numpy.set_allocator()" entry, which puts NumPy's
    # default handler back after each call
    "np.set_allocator",
}


def public_names() -> List[str]:
    """Every name the matrix must know, found by introspection."""
    names = ["mm." + n for n in memmanager.__all__]
    names += ["mm.%s" % n for n in dir(memmanager)
              if not n.startswith("_") and not isinstance(getattr(memmanager, n), type(memmanager))]
    names += ["cuda." + n for n in memmanager.cuda.__all__]
    numpy_module = importlib.import_module("memmanager.numpy")
    names += ["np." + n for n in numpy_module.__all__]
    names += ["core." + n for n in dir(_core) if not (n.startswith("__") and n.endswith("__"))]
    names += ["buf." + n for n in memmanager.Buffer.__dict__]
    names += ["dv." + n for n in _core.DeviceView.__dict__]
    names += ["alloc." + n for n in _core.Allocator.__dict__]
    return sorted(set(names))


def known_names() -> set:
    known = set(NOT_CALLED)
    for entry in ENTRIES:
        if isinstance(entry.target, str):
            known.add(entry.target)
            if entry.target.startswith("Buffer."):
                known.add("buf." + entry.target[len("Buffer."):])
            if entry.target == "mm.Buffer":
                known.add("mm.Buffer")
    return known
