"""Mutate whatever gc.get_referents() hands out, then drive the API.

ROOTS: each makes (State, object) for one thing an attacker can reach: a
buffer in each state, the module, its types, allocator objects, view
entries, DLPack capsules, device views (fake CUDA).  For every mutable
container (dict, list, set) among the root's referents (and the
referents' referents, two levels down), every MUTATION is applied, then
EXERCISE runs the API; any call may raise, none may crash.  One line adds
a root or a mutation.  Each case runs in its own child: a mutated module
table must not leak into the next case.
"""

import ctypes
import gc
import pickle
from typing import Any, Callable, Dict, List, Tuple

import numpy

import memmanager
from memmanager import _core

from attack import checks, hostile
from attack.checks import Case

State = hostile.State


def _fresh(s: State) -> Any:
    return s.buf


def _views(s: State) -> Any:
    s.buf.create_view("numpy", view_name="n")
    s.buf.create_view("memoryview", view_name="m")
    s.buf.create_view("ctypes", view_name="c")
    return s.buf


def _pinned(s: State) -> Any:
    return s.new(64, 1, delayed_gc=True)


def _stub(s: State) -> Any:
    return s.new(64, 1, death_stub=lambda info: None, delayed_gc=True)


def _consumed(make: Callable[[], Any]) -> Callable[[State], Any]:
    def root(s: State) -> Any:
        source = make()
        s.keep.append(source)
        return s.adopt(memmanager.Buffer.consume(source, 64, 1))
    return root


def _shm(s: State) -> Any:
    return s.new(64, 1, allocator="SharedMemory")


def _released(s: State) -> Any:
    buf = s.new(64, 1, delayed_gc=True, death_stub=lambda info: None)
    buf.create_view("numpy")
    buf.release()
    return buf


def _module(s: State) -> Any:
    s.new(32, 1, delayed_gc=True)       # the pinned table is not empty
    return _core


def _type(t: type) -> Callable[[State], Any]:
    return lambda s: t


def _allocator(name: str) -> Callable[[State], Any]:
    def root(s: State) -> Any:
        buf = s.new(64, 1, allocator=name)
        return [r for r in gc.get_referents(buf) if type(r) is _core.Allocator][0]
    return root


def _view_entry(s: State) -> Any:
    _views(s)
    # The views store is private: its entries, not the dict, are referents.
    entry = [r for r in gc.get_referents(s.buf) if type(r).__name__ == "_ViewEntry"][0]
    if not _VIEW_ENTRY_TYPE:
        _VIEW_ENTRY_TYPE.append(type(entry))
    return entry


def _capsule(s: State) -> Any:
    capsule = s.buf.__dlpack__()
    s.keep.append(capsule)
    return capsule


def _device_view(s: State) -> Any:
    s.buf.device_movement("enter", "to")
    dv = s.buf.device_view()
    s.keep.append(dv)
    return dv


def _device_buffer(s: State) -> Any:
    buf = s.new(64, 1, allocator="CudaManaged")
    buf.device_movement("enter", "to")
    return buf


ROOTS: Dict[str, Callable[[State], Any]] = {
    "buf-fresh": _fresh,
    "buf-views": _views,
    "buf-pinned": _pinned,
    "buf-death-stub": _stub,
    "buf-consumed-bytes": _consumed(lambda: b"y" * 64),
    "buf-consumed-bytearray": _consumed(lambda: bytearray(64)),
    "buf-consumed-memoryview": _consumed(lambda: memoryview(bytearray(64))),
    "buf-consumed-numpy": _consumed(lambda: numpy.zeros(64, "u1")),
    "buf-shm": _shm,
    "buf-released": _released,
    "buf-device-mapped": _device_buffer,
    "module": _module,
    "type-Buffer": _type(memmanager.Buffer),
    "type-Allocator": _type(_core.Allocator),
    "type-DeviceView": _type(_core.DeviceView),
    "type-cached_classmethod": _type(type(memmanager.Buffer.__dict__["consume"])),
    "type-ViewEntry": lambda s: type(_view_entry(s)),
    "allocator-PyAlloc": _allocator("PyAlloc"),
    "allocator-plugin": _allocator(hostile.PLUG_NAME),
    "view-entry": _view_entry,
    "capsule": _capsule,
    "device-view": _device_view,
}
CUDA_ROOTS = {"buf-device-mapped", "device-view"}


def _junk_values(s: State) -> List[Any]:
    other = s.new(16, 1)
    gone = memmanager.Buffer(8, 1)
    gone.release()
    return [object(), None, 7, -1, 2 ** 70, "junk", b"junk", other, gone, _core.Allocator,
            memmanager.Buffer, [], {}, lambda *a, **k: None]


def _mutate_junk(container: Any, s: State) -> None:
    junk = _junk_values(s)
    if isinstance(container, dict):
        for i, value in enumerate(junk):
            container[("junk", i)] = value
            container["junk%d" % i] = value
            container[10 ** 6 + i] = value
        container[s.buf.identifier + 1] = junk[0]
    elif isinstance(container, list):
        container.extend(junk)
    elif isinstance(container, set):
        container.update(j for j in junk if _hashable(j))


def _hashable(obj: Any) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


def _mutate_clear(container: Any, s: State) -> None:
    container.clear()


def _mutate_replace(container: Any, s: State) -> None:
    junk = _junk_values(s)
    if isinstance(container, dict):
        for i, key in enumerate(list(container)):
            container[key] = junk[i % len(junk)]
    elif isinstance(container, list):
        for i in range(len(container)):
            container[i] = junk[i % len(junk)]
    elif isinstance(container, set):
        container.clear()
        container.update(j for j in junk if _hashable(j))


def _mutate_rotate(container: Any, s: State) -> None:
    """Values of the right type in the wrong place."""
    if isinstance(container, dict):
        keys = list(container)
        values = [container[k] for k in keys]
        for key, value in zip(keys, values[1:] + values[:1]):
            container[key] = value
    elif isinstance(container, list):
        container.reverse()


MUTATIONS: Dict[str, Callable[[Any, State], None]] = {
    "junk": _mutate_junk,
    "clear": _mutate_clear,
    "replace": _mutate_replace,
    "rotate": _mutate_rotate,
}


def containers(root: Any) -> List[Tuple[str, Any]]:
    """(path, container) for the mutable containers two levels down.
    Module dicts of other modules and type dicts of CPython's types are
    left out: breaking them is breaking Python, not memmanager."""
    found: List[Tuple[str, Any]] = []
    seen = set()

    def visit(obj: Any, path: str, depth: int) -> None:
        for i, ref in enumerate(gc.get_referents(obj)):
            if id(ref) in seen:
                continue
            seen.add(id(ref))
            here = "%s/%d:%s" % (path, i, type(ref).__name__)
            if isinstance(ref, (dict, list, set)):
                if isinstance(ref, dict) and ("__builtins__" in ref and ref is not vars(_core)):
                    continue
                found.append((here, ref))
            if depth < 2 and not isinstance(ref, (type, type(_core))) and not callable(ref):
                visit(ref, here, depth + 1)

    visit(root, "", 1)
    return found


_TYPES = (memmanager.Buffer, _core.Allocator, _core.DeviceView,
          type(memmanager.Buffer.__dict__["consume"]))


def _type_modified() -> None:
    """After a type's dict was changed behind CPython's back, tell it (so
    that what breaks is memmanager, not CPython's attribute cache)."""
    for t in _TYPES + tuple(_VIEW_ENTRY_TYPE):
        ctypes.pythonapi.PyType_Modified(ctypes.py_object(t))


_VIEW_ENTRY_TYPE: List[type] = []


def exercise(s: State) -> None:
    """Drive the API; every call may raise, none may crash."""
    outcome = checks.call_outcome
    made: List[Any] = []

    def keep(result: Any) -> None:
        if isinstance(result, memmanager.Buffer):
            made.append(result)

    for kwargs in ({}, {"allocator": "CMalloc"}, {"allocator": "CMalloc"}, {"allocator": hostile.PLUG_NAME},
                   {"delayed_gc": True, "death_stub": lambda info: None}, {"allocator": "SharedMemory"}):
        keep(outcome(lambda: memmanager.Buffer(32, 2, **kwargs)))
    keep(outcome(lambda: memmanager.Buffer.consume(b"z" * 32, 32, 1)))
    for name in ("stats", "live_buffers", "report", "allocators", "get_delayed_gc_objects",
                 "_registry_check"):
        outcome(lambda: getattr(memmanager if hasattr(memmanager, name) else _core, name)())
    for buf in list(s.bufs) + made:
        outcome(lambda: buf.create_view("numpy", view_name="e"))
        outcome(lambda: buf.get_view("e"))
        outcome(lambda: buf.get_view("n"))
        outcome(lambda: buf.clone_view("e"))
        outcome(lambda: buf.view_names())
        outcome(lambda: buf.delete_view("e"))
        outcome(lambda: buf.delete_view("n"))
        outcome(lambda: buf[0])
        outcome(lambda: repr(buf))
        outcome(lambda: pickle.loads(pickle.dumps(buf, 5)))
        outcome(lambda: buf.__dlpack__())
    outcome(lambda: memmanager.collect_delayed([b.identifier for b in s.bufs]))
    gc.collect()
    outcome(lambda: memmanager.collect_delayed())
    for buf in list(s.bufs) + made:
        outcome(lambda: buf.release())
    made.clear()
    gc.collect()
    outcome(lambda: memmanager.stats())
    outcome(lambda: memmanager.live_buffers())


def _referent_case(root_name: str, index: int, mutation: str) -> None:
    state = State()
    root = ROOTS[root_name](state)
    found = containers(root)
    if index >= len(found):
        return                      # the root has fewer containers today
    _, container = found[index]
    root = found = None
    MUTATIONS[mutation](container, state)
    container = None
    _type_modified()
    exercise(state)
    state.keep.clear()


# How many of a root's containers are tried (found by introspection at run
# time; a case whose index is past the root's containers passes).
MAX_CONTAINERS = {"module": 5}
DEFAULT_CONTAINERS = 2


def cases() -> List[Case]:
    result: List[Case] = []
    for root_name in ROOTS:
        for index in range(MAX_CONTAINERS.get(root_name, DEFAULT_CONTAINERS)):
            for mutation in MUTATIONS:
                name = "%s:referent%d:%s" % (root_name, index, mutation)
                result.append(Case(name, name, lambda r=root_name, i=index, m=mutation:
                                   _referent_case(r, i, m)))
    return result
