"""Hostile arguments: objects whose dunder methods run an action.

An *action* is what attacker code does when the C core calls back into
Python in the middle of an operation (ACTIONS, one line each).  A *kind*
is the shape of the hostile object, chosen to get past the argument's
type check so that the dunder really is reached (KINDS, one line each).
`hostile(kind, action, good, state)` makes one: it behaves like `good`
(the argument a well-behaved caller passes) except that each dunder first
runs the action (at most LIMIT times per object, so a loop that calls
__len__ forever still ends).

Adding an action or a kind is one entry below; the matrix picks it up.
"""

import ctypes
import gc
import sys
from typing import Any, Callable, Dict, List

import memmanager

LIMIT = 3


class AttackError(Exception):
    """What the `raise` action raises: any call may end in it."""


# ---------------------------------------------------------------------------
# The state a case attacks
# ---------------------------------------------------------------------------

class State:
    """What one case works on: the target buffer, every buffer it made (so
    the `release` action and the final checks reach them), the options
    mapping it passes, and whatever else an entry's setup prepared."""

    def __init__(self) -> None:
        self.bufs: List[Any] = []
        self.options: Dict[str, Any] = {}
        self.keep: List[Any] = []      # views, sources: dropped at cleanup
        self.mutables: List[Dict[Any, Any]] = [self.options]  # mutate_options
        self.buf = self.new(64, 1)

    def new(self, *args: Any, **kwargs: Any) -> Any:
        buf = memmanager.Buffer(*args, **kwargs)
        self.bufs.append(buf)
        return buf

    def adopt(self, obj: Any) -> Any:
        """Remember a buffer an entry point returned."""
        if isinstance(obj, memmanager.Buffer) and obj not in self.bufs:
            self.bufs.append(obj)
        return obj


# ---------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------

class PyPlug:
    """A well-behaved Python allocator plug-in (ctypes blocks).

    The handle is the ctypes block itself, so the buffer holds it (and an
    export of it): code that clears `blocks` through gc.get_referents
    cannot free memory a buffer still uses.  (A plug-in whose handle is a
    bare int address answers for that memory alone.)"""

    def __init__(self) -> None:
        self.blocks: Dict[int, Any] = {}

    def malloc(self, num_items: int, item_size: int, init_byte: Any, options: Any) -> Any:
        raw = ctypes.create_string_buffer(max(1, num_items * item_size))
        self.blocks[ctypes.addressof(raw)] = raw
        return raw

    def get_buffer_address(self, handle: Any) -> int:
        return ctypes.addressof(handle)

    def free(self, address: int) -> None:
        self.blocks.pop(address, None)

    def consume(self, source: Any, length: int, options: Any) -> Any:
        raw = ctypes.create_string_buffer(max(1, length))
        self.blocks[ctypes.addressof(raw)] = raw
        return raw


PLUG_NAME = "AttackPlug"
VIEW_KIND = "attackview"


def _view_create(buffer: Any, **options: Any) -> Any:
    return memoryview(buffer)


def _view_clone(view: Any) -> Any:
    return bytes(view)


def register_plugins() -> None:
    """(Re-)register the suite's allocator plug-in and view kind."""
    memmanager.register_allocator(PLUG_NAME, PyPlug())
    memmanager.register_view(VIEW_KIND, _view_create, _view_clone)


def _release(state: State) -> None:
    for buf in list(state.bufs):
        try:
            buf.release()
        except Exception:
            pass


def _release_everything(state: State) -> None:
    """Release every Buffer the collector can see, the one being built by
    the call in progress included (gc.get_objects() reaches it)."""
    for obj in gc.get_objects():
        if isinstance(obj, memmanager.Buffer):
            try:
                obj.release()
            except Exception:
                pass


def _collect(state: State) -> None:
    gc.collect()


def _reregister(state: State) -> None:
    register_plugins()
    memmanager.register_allocator(PLUG_NAME + "2", PyPlug())


def _mutate_options(state: State) -> None:
    for options in state.mutables:
        options.clear()
        options.update({"allocator": "CMalloc", "init_value": 300, "junk": object(),
                        "delayed_gc": state, "death_stub": 5, 7: "not a str key"})


def _unpin(state: State) -> None:
    memmanager.collect_delayed()


def _raise(state: State) -> None:
    raise AttackError("raised from a dunder in the middle of the call")


ACTIONS: Dict[str, Callable[[State], None]] = {
    "release": _release,
    "release_everything": _release_everything,
    "gc": _collect,
    "reregister": _reregister,
    "mutate_options": _mutate_options,
    "unpin": _unpin,
    "raise": _raise,
}


# ---------------------------------------------------------------------------
# Kinds of hostile objects
# ---------------------------------------------------------------------------

class Trigger:
    """Runs an action on a state at most LIMIT times (re-entrant calls
    while it runs do nothing)."""

    def __init__(self, action: str, state: State) -> None:
        self.action = ACTIONS[action]
        self.state = state
        self.count = 0
        self.busy = False

    def __call__(self) -> None:
        if self.busy or self.count >= LIMIT:
            return
        self.count += 1
        self.busy = True
        try:
            self.action(self.state)
        finally:
            self.busy = False


def _hooked(base: type, methods: Dict[str, Callable[..., Any]], name: str) -> type:
    """A class whose listed methods pull the trigger, then behave."""
    namespace: Dict[str, Any] = {}
    for meth, impl in methods.items():
        def hook(self: Any, *args: Any, _impl: Callable[..., Any] = impl, **kwargs: Any) -> Any:
            object.__getattribute__(self, "_trigger")()
            return _impl(self, *args, **kwargs)
        hook.__name__ = meth
        namespace[meth] = hook
    return type(name, (base,), namespace)


def _good(self: Any) -> Any:
    return object.__getattribute__(self, "_good")


# Plain objects: no base type, every behaviour through a dunder.
_IndexLike = _hooked(object, {
    "__index__": lambda s: int(_good(s)),
    "__int__": lambda s: int(_good(s)),
    "__float__": lambda s: float(_good(s)),
    "__hash__": lambda s: hash(_good(s)),
    "__eq__": lambda s, o: _good(s) == o,
    "__bool__": lambda s: bool(_good(s)),
    "__repr__": lambda s: repr(_good(s)),
    "__str__": lambda s: str(_good(s)),
}, "HostileIndex")

_IntOnly = _hooked(object, {
    "__int__": lambda s: int(_good(s)),
    "__float__": lambda s: float(_good(s)),
    "__repr__": lambda s: "HostileIntOnly",
    "__str__": lambda s: "HostileIntOnly",
    "__format__": lambda s, spec: "HostileIntOnly",
}, "HostileIntOnly")

_Boolish = _hooked(object, {
    "__bool__": lambda s: bool(_good(s)),
    "__len__": lambda s: int(bool(_good(s))),
    "__hash__": lambda s: hash(_good(s)),
    "__eq__": lambda s, o: _good(s) == o,
    "__repr__": lambda s: repr(_good(s)),
}, "HostileBool")

_FsPath = _hooked(object, {
    "__fspath__": lambda s: str(_good(s)),
    "__str__": lambda s: str(_good(s)),
    "__repr__": lambda s: repr(_good(s)),
    "__hash__": lambda s: hash(_good(s)),
    "__eq__": lambda s, o: _good(s) == o,
}, "HostileFsPath")

_GetAttr = _hooked(object, {
    "__getattr__": lambda s, name: _raise_attribute(name),
    "__repr__": lambda s: "HostileGetAttr",
    "__hash__": lambda s: 1,
    "__eq__": lambda s, o: False,
}, "HostileGetAttr")


def _raise_attribute(name: str) -> Any:
    raise AttributeError(name)


_Callable = _hooked(object, {
    "__call__": lambda s, *a, **k: _call_good(s, *a, **k),
    "__getattr__": lambda s, name: getattr(_good(s), name),
    "__repr__": lambda s: "HostileCallable",
}, "HostileCallable")


def _call_good(self: Any, *args: Any, **kwargs: Any) -> Any:
    good = _good(self)
    return good(*args, **kwargs) if callable(good) else None


_Mapping = _hooked(object, {
    "keys": lambda s: list(_good(s).keys()),
    "items": lambda s: list(_good(s).items()),
    "values": lambda s: list(_good(s).values()),
    "__getitem__": lambda s, k: _good(s)[k],
    "__len__": lambda s: len(_good(s)),
    "__iter__": lambda s: iter(list(_good(s))),
    "__contains__": lambda s, k: k in _good(s),
    "get": lambda s, k, d=None: _good(s).get(k, d),
    "__repr__": lambda s: "HostileMapping",
}, "HostileMapping")

_DictSub = _hooked(dict, {
    "keys": lambda s: list(dict.keys(s)),
    "items": lambda s: list(dict.items(s)),
    "values": lambda s: list(dict.values(s)),
    "__getitem__": lambda s, k: dict.__getitem__(s, k),
    "__len__": lambda s: dict.__len__(s),
    "__iter__": lambda s: iter(list(dict.keys(s))),
    "__contains__": lambda s, k: dict.__contains__(s, k),
    "get": lambda s, k, d=None: dict.get(s, k, d),
    "__eq__": lambda s, o: dict.__eq__(s, o),
    "__hash__": lambda s: 1,
}, "HostileDict")


class _Iterator:
    def __init__(self, items: List[Any], trigger: Trigger) -> None:
        self.items = list(items)
        self.trigger = trigger

    def __iter__(self) -> "_Iterator":
        return self

    def __next__(self) -> Any:
        self.trigger()
        if not self.items:
            raise StopIteration
        return self.items.pop(0)

    def __length_hint__(self) -> int:
        self.trigger()
        return len(self.items)


_Iterable = _hooked(object, {
    "__iter__": lambda s: _Iterator(list(_good(s)), object.__getattribute__(s, "_trigger")),
    "__len__": lambda s: len(_good(s)),
    "__repr__": lambda s: "HostileIterable",
}, "HostileIterable")

_Sequence = _hooked(object, {
    "__getitem__": lambda s, i: list(_good(s))[i],
    "__len__": lambda s: len(_good(s)),
    "__repr__": lambda s: "HostileSequence",
}, "HostileSequence")

_ListSub = _hooked(list, {
    "__getitem__": lambda s, i: list.__getitem__(s, i),
    "__len__": lambda s: list.__len__(s),
    "__iter__": lambda s: list.__iter__(s),
    "__eq__": lambda s, o: list.__eq__(s, o),
    "__index__": lambda s: 0,
}, "HostileList")

_TupleSub = _hooked(tuple, {
    "__getitem__": lambda s, i: tuple.__getitem__(s, i),
    "__len__": lambda s: tuple.__len__(s),
    "__iter__": lambda s: tuple.__iter__(s),
    "__eq__": lambda s, o: tuple.__eq__(s, o),
    "__hash__": lambda s: tuple.__hash__(s),
}, "HostileTuple")

_StrSub = _hooked(str, {
    "__hash__": lambda s: str.__hash__(s),
    "__eq__": lambda s, o: str.__eq__(s, o),
    "__ne__": lambda s, o: str.__ne__(s, o),
    "__str__": lambda s: str.__str__(s),
    "__repr__": lambda s: str.__repr__(s),
    "__len__": lambda s: str.__len__(s),
    "__getitem__": lambda s, i: str.__getitem__(s, i),
    "__iter__": lambda s: str.__iter__(s),
    "__format__": lambda s, spec: str.__format__(s, spec),
    "lower": lambda s: str.lower(s),
    "encode": lambda s, *a: str.encode(s, *a),
    "isdigit": lambda s: str.isdigit(s),
}, "HostileStr")

_IntSub = _hooked(int, {
    "__index__": lambda s: int.__index__(s),
    "__int__": lambda s: int.__int__(s),
    "__hash__": lambda s: int.__hash__(s),
    "__eq__": lambda s, o: int.__eq__(s, o),
    "__bool__": lambda s: int.__bool__(s),
    "__repr__": lambda s: int.__repr__(s),
    "__format__": lambda s, spec: int.__format__(s, spec),
    "__lt__": lambda s, o: int.__lt__(s, o),
}, "HostileInt")

_BUFFER_METHODS: Dict[str, Callable[..., Any]] = {
    "__len__": lambda s: bytearray.__len__(s),
    "__index__": lambda s: 0,
    "__eq__": lambda s, o: bytearray.__eq__(s, o),
    "__hash__": lambda s: 1,
    "__getitem__": lambda s, i: bytearray.__getitem__(s, i),
}
if sys.version_info >= (3, 12):  # a Python-level buffer export
    _BUFFER_METHODS["__buffer__"] = lambda s, flags: bytearray.__buffer__(s, flags)
    _BUFFER_METHODS["__release_buffer__"] = lambda s, view: bytearray.__release_buffer__(s, view)
_BufferSub = _hooked(bytearray, _BUFFER_METHODS, "HostileBuffer")


class _VoidP(ctypes.c_void_p):
    """A ctypes holder whose value (read for the address, set to NULL by
    consume's reset) runs the action."""

    @property  # type: ignore[override]
    def value(self) -> Any:
        self._trigger()
        return ctypes.c_void_p.value.__get__(self)

    @value.setter
    def value(self, new: Any) -> None:
        self._trigger()
        ctypes.c_void_p.value.__set__(self, new)


def _void_p(good: Any, trigger: Trigger) -> Any:
    address = good.value if isinstance(good, ctypes.c_void_p) else good
    holder = _VoidP(address if isinstance(address, int) else None)
    holder._trigger = trigger
    return holder


def _plain(cls: type) -> Callable[[Any, Trigger], Any]:
    def make(good: Any, trigger: Trigger) -> Any:
        obj = cls()
        object.__setattr__(obj, "_good", good)
        object.__setattr__(obj, "_trigger", trigger)
        return obj
    return make


def _based(cls: type, convert: Callable[[Any], Any]) -> Callable[[Any, Trigger], Any]:
    def make(good: Any, trigger: Trigger) -> Any:
        obj = cls(convert(good))
        obj._good = good
        obj._trigger = trigger
        return obj
    return make


def _one_element_list(good: Any, trigger: Trigger) -> Any:
    return [_plain(_IndexLike)(good, trigger)]


def _as_int(good: Any) -> int:
    if isinstance(good, (bool, int)):
        return int(good)
    try:
        return len(good)
    except TypeError:
        return 1


def _as_seq(good: Any) -> List[Any]:
    if isinstance(good, (list, tuple)):
        return list(good)
    if isinstance(good, dict):
        return list(good)
    return [good]


def _as_str(good: Any) -> str:
    return good if isinstance(good, str) else str(good)


def _as_bytes(good: Any) -> bytearray:
    try:
        return bytearray(memoryview(good).cast("B"))
    except TypeError:
        return bytearray(64)


#: kind -> make(good, trigger).  `good` is what a polite caller passes.
KINDS: Dict[str, Callable[[Any, Trigger], Any]] = {
    "index": _plain(_IndexLike),
    "int_only": _plain(_IntOnly),
    "int_sub": _based(_IntSub, _as_int),
    "boolish": _plain(_Boolish),
    "str_sub": _based(_StrSub, _as_str),
    "fspath": _plain(_FsPath),
    "getattr": _plain(_GetAttr),
    "callable": _plain(_Callable),
    "mapping": _plain(_Mapping),
    "dict_sub": _based(_DictSub, lambda g: dict(g) if isinstance(g, dict) else {}),
    "iterable": _plain(_Iterable),
    "sequence": _plain(_Sequence),
    "list_sub": _based(_ListSub, _as_seq),
    "tuple_sub": _based(_TupleSub, _as_seq),
    "buffer": _based(_BufferSub, _as_bytes),
    "address_list": _one_element_list,
    "void_p": _void_p,
}


_serial = [0]


def _fresh(prefix: str) -> str:
    _serial[0] += 1
    return f"{prefix}{_serial[0]}"


def _trap_methods(cls: type, names: List[str]) -> type:
    """A subclass of cls whose listed methods pull self.trigger first."""
    namespace: Dict[str, Any] = {}
    for meth in names:
        base = getattr(cls, meth)

        def hook(self: Any, *args: Any, _base: Any = base, **kwargs: Any) -> Any:
            self.trigger()
            return _base(self, *args, **kwargs)
        namespace[meth] = hook
    return type("Hostile" + cls.__name__, (cls,), namespace)


_HostilePlug = _trap_methods(PyPlug, ["malloc", "free", "get_buffer_address", "consume"])


def _hostile_plugin_object(good: Any, trigger: Trigger) -> Any:
    plug = _HostilePlug()
    plug.trigger = trigger
    return plug


def _hostile_plugin_name(good: Any, trigger: Trigger) -> str:
    """Registers a plug-in whose every method runs the action; its name."""
    name = _fresh("AttackHostilePlug")
    memmanager.register_allocator(name, _hostile_plugin_object(good, trigger))
    return name


def _hostile_view_kind(good: Any, trigger: Trigger) -> str:
    """Registers a view kind whose create and clone run the action."""
    def create(buffer: Any, **options: Any) -> Any:
        trigger()
        return memoryview(buffer)

    def clone(view: Any) -> Any:
        trigger()
        return bytes(view)
    name = _fresh("attackhostileview")
    memmanager.register_view(name, create, clone)
    return name


def _hostile_stub(good: Any, trigger: Trigger) -> Any:
    def stub(info: Any) -> None:
        trigger()
    return stub


KINDS.update({
    "hostile_plugin": _hostile_plugin_name,
    "hostile_impl": _hostile_plugin_object,
    "hostile_view_kind": _hostile_view_kind,
    "hostile_stub": _hostile_stub,
})


def hostile(kind: str, action: str, good: Any, state: State) -> Any:
    trigger = Trigger(action, state)
    obj = KINDS[kind](good, trigger)
    state.keep.append(trigger)
    if isinstance(obj, dict):
        state.mutables.append(obj)
    return obj
