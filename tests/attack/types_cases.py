"""Descriptor, constructor, copy and pickle misuse of every type the module
defines or hands out (tests/test_attack_types.py).

SAMPLES: one line per type: how to get an instance (State -> object).  The
types of memmanager._core are found by introspection and must each have a
sample (test_every_module_type_has_a_sample), and so must the type of every
descriptor in Buffer.__dict__ that the module defines.  ATTACKS: one line
per misuse; each gets (sample, State) and may raise anything but a
SystemError; none may crash.  Whatever an attack makes is then exercised
(EXERCISE: repr, every attribute, a call with a few argument sets), and the
process goes through the exit path.
"""

import copy
import gc
import pickle
from typing import Any, Callable, Dict, List

import memmanager
from memmanager import _core

from attack import checks, hostile
from attack.checks import Case

State = hostile.State
outcome = checks.call_outcome


def _allocator(s: State) -> Any:
    return [r for r in gc.get_referents(s.buf) if type(r) is _core.Allocator][0]


def _view_entry(s: State) -> Any:
    buf = s.new(16, 1)
    buf.create_view("numpy", view_name="n")
    # The views store is private: its entries, not the dict, are referents.
    return [r for r in gc.get_referents(buf) if type(r).__name__ == "_ViewEntry"][0]


def _device_view(s: State) -> Any:
    s.buf.device_movement("enter", "to")
    dv = s.buf.device_view()
    s.keep.append(dv)
    return dv


def _capsule(s: State) -> Any:
    capsule = s.buf.__dlpack__()
    s.keep.append(capsule)
    return capsule


def _descriptor(name: str) -> Callable[[State], Any]:
    return lambda s: memmanager.Buffer.__dict__[name]


SAMPLES: Dict[str, Callable[[State], Any]] = {
    "Buffer": lambda s: s.buf,
    "Buffer-pinned": lambda s: s.new(32, 1, delayed_gc=True, death_stub=lambda info: None),
    "Buffer-shm": lambda s: s.new(32, 1, allocator="SharedMemory"),
    "Buffer-released": lambda s: (s.buf.release(), s.buf)[1],
    "Allocator": _allocator,
    "DeviceView": _device_view,
    "ViewEntry": _view_entry,
    "capsule": _capsule,
    "LiveBuffer": lambda s: memmanager.live_buffers()[0],
    "MemManagerError": lambda s: _core.MemManagerError("x"),
    "OverlapError": lambda s: _core.OverlapError("x"),
    "Log": lambda s: _core.Log("PyAlloc", "/dev/null"),
    "Limit": lambda s: _core.Limit("PyAlloc", 1000),
    "Pool": lambda s: _core.Pool("PyAlloc"),
    "LimitExceededError": lambda s: _core.LimitExceededError("x"),
    "Statistics": lambda s: memmanager.statistics(),
    "Statistics-active": lambda s: memmanager.statistics().__enter__(),
    "AllocatorStatistics": lambda s: memmanager.statistics()["PyAlloc"],
}
# Every descriptor of Buffer (its own C ones, the Python methods installed
# on it): attacked one by one, so that one crashing descriptor does not
# hide another.
DESCRIPTORS = sorted(name for name, value in memmanager.Buffer.__dict__.items()
                     if hasattr(type(value), "__get__"))
for _name in DESCRIPTORS:
    SAMPLES["Buffer.__dict__[%s]" % _name] = _descriptor(_name)
DESCRIPTOR_ATTACKS = ("__get__", "wrong-self", "type()", "__new__", "copy/pickle")
CUDA_SAMPLES = {"DeviceView"}
# The module's types that SAMPLES covers, by the type's __name__.
SAMPLED_TYPES = {"Buffer", "Allocator", "DeviceView", "_ViewEntry", "cached_classmethod",
                 "MemManagerError", "OverlapError", "UnknownAllocatorError",
                 "DeviceUnavailableError", "PyCapsule", "LiveBuffer", "Log", "Limit",
                 "LimitExceededError", "Pool", "Statistics", "AllocatorStatistics"}


def module_type_names() -> List[str]:
    """Every type the module defines or returns, found by introspection."""
    names = {v.__name__ for v in vars(_core).values() if isinstance(v, type)}
    names |= {type(v).__name__ for v in memmanager.Buffer.__dict__.values()
              if type(v).__module__.startswith("memmanager")}
    names.add(type(memmanager.Buffer(1, 1).__dlpack__()).__name__)
    return sorted(names)


def _others(s: State) -> List[Any]:
    """Objects of the other types, for wrong-self and __class__ attacks."""
    return [s.new(16, 1), _allocator(s), _view_entry(s), 5, "x", object(), None, memmanager.Buffer,
            _core.Allocator, _core.DeviceView, type(memmanager.Buffer.__dict__["consume"])]


class _Sub(memmanager.Buffer):
    pass


class _SubDel(memmanager.Buffer):
    def __del__(self) -> None:
        gc.collect()


ARGS = [(), (1,), (16, 1), (b"x" * 16, 16, 1), ("name",), (None, None), (bytearray(8), 8, 1, {})]


def exercise(obj: Any, s: State) -> None:
    """Use whatever an attack produced as if it were a good object."""
    if isinstance(obj, BaseException) or obj is None:
        return
    outcome(lambda: repr(obj))
    outcome(lambda: hash(obj))
    for name in dir(type(obj)):
        if name in ("__del__", "__init_subclass__", "__subclasshook__", "__class__"):
            continue
        attr = outcome(lambda: getattr(obj, name))
        if callable(attr) and not isinstance(attr, type) and not name.startswith("__"):
            for args in ARGS[:3]:
                s.adopt(outcome(lambda: attr(*args)))
    if callable(obj) and not isinstance(obj, type):
        for args in ARGS:
            s.adopt(outcome(lambda: obj(*args)))


def _call_all(made: Any, s: State) -> None:
    if callable(made) and not isinstance(made, BaseException):
        for args in ARGS:
            s.adopt(outcome(lambda: made(*args)))


def a_type_call(x: Any, s: State) -> Any:
    for args in ARGS:
        exercise(s.adopt(outcome(lambda: type(x)(*args))), s)


def a_new(x: Any, s: State) -> Any:
    t = type(x)
    for args in ARGS[:4]:
        exercise(s.adopt(outcome(lambda: t.__new__(t, *args))), s)
    exercise(outcome(lambda: object.__new__(t)), s)
    for other in (memmanager.Buffer, _core.Allocator, _core.DeviceView, _Sub, int, type(x)):
        exercise(s.adopt(outcome(lambda: t.__new__(other))), s)
        exercise(s.adopt(outcome(lambda: t.__new__(other, 16, 1))), s)


def a_init(x: Any, s: State) -> Any:
    for args in ARGS:
        outcome(lambda: x.__init__(*args))
    for other in _others(s):
        outcome(lambda: type(x).__init__(other))
        outcome(lambda: type(x).__init__(other, 16, 1))
    exercise(x, s)


def a_setstate_reduce(x: Any, s: State) -> Any:
    for state in (None, {}, {"address": 5}, (1, 2), b"x", [x]):
        outcome(lambda: x.__setstate__(state))
    reduced = [outcome(lambda: x.__reduce__())]
    for protocol in range(6):
        reduced.append(outcome(lambda: x.__reduce_ex__(protocol)))
    for r in reduced:
        if isinstance(r, tuple) and r and callable(r[0]):
            args = r[1] if len(r) > 1 and isinstance(r[1], tuple) else ()
            made = s.adopt(outcome(lambda: r[0](*args)))
            exercise(made, s)
            if len(r) > 2 and r[2] is not None:
                outcome(lambda: made.__setstate__(r[2]))
    exercise(x, s)


def a_copy_pickle(x: Any, s: State) -> Any:
    exercise(s.adopt(outcome(lambda: copy.copy(x))), s)
    exercise(s.adopt(outcome(lambda: copy.deepcopy(x))), s)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = outcome(lambda: pickle.dumps(x, protocol))
        if isinstance(data, bytes):
            exercise(s.adopt(outcome(lambda: pickle.loads(data))), s)


def a_class_assign(x: Any, s: State) -> Any:
    for target in (_Sub, _SubDel, memmanager.Buffer, _core.Allocator, _core.DeviceView,
                   type(_view_entry(s)), object, type("Plain", (), {})):
        outcome(lambda: setattr(x, "__class__", target))
        exercise(x, s)
    for other in _others(s)[:3]:
        outcome(lambda: setattr(other, "__class__", type(x)))
        exercise(other, s)


def a_subclass(x: Any, s: State) -> Any:
    t = type(x)
    namespaces = [
        {},
        {"__slots__": ()},
        {"__init__": lambda self, *a, **k: None},
        {"__del__": lambda self: gc.collect()},
        {"__new__": lambda cls, *a, **k: object.__new__(cls)},
        {"__new__": lambda cls, *a, **k: memmanager.Buffer(8, 1)},
        {"__eq__": lambda self, o: gc.collect() or True, "__hash__": lambda self: 1},
    ]
    for namespace in namespaces:
        sub = outcome(lambda: type("Sub" + t.__name__, (t,), dict(namespace)))
        if isinstance(sub, type):
            for args in ARGS:
                exercise(s.adopt(outcome(lambda: sub(*args))), s)
            for name in ("consume", "attach", "get_delayed_gc_objects"):
                method = getattr(sub, name, None)
                _call_all(method, s)


def a_setattr(x: Any, s: State) -> Any:
    for name in ("foo", "address", "nbytes", "released", "_views", "__dict__", "name", "kind",
                 "buffer", "__cuda_array_interface__"):
        outcome(lambda: setattr(x, name, 5))
        outcome(lambda: delattr(x, name))
        outcome(lambda: setattr(type(x), name, 5))
    exercise(x, s)
    exercise(s.new(16, 1), s)


def a_descriptor_get(x: Any, s: State) -> Any:
    if hasattr(type(x), "__get__"):      # a descriptor sample: itself
        descriptors = [x]
    elif isinstance(x, memmanager.Buffer):  # Buffer's: one sample each
        descriptors = []
    else:
        descriptors = [d for d in vars(type(x)).values() if hasattr(type(d), "__get__")]
    for d in descriptors:
        for owner in (5, None, memmanager.Buffer, _Sub, _core.Allocator, _core.DeviceView, int,
                      type(memmanager.Buffer.__dict__["consume"])):
            _call_all(outcome(lambda: d.__get__(None, owner)), s)
        for obj in _others(s) + [x]:
            _call_all(outcome(lambda: d.__get__(obj)), s)
            _call_all(outcome(lambda: d.__get__(obj, type(obj))), s)
            for setter in ("__set__", "__delete__"):
                method = getattr(d, setter, None)
                if method is not None:
                    outcome(lambda: method(obj, 5) if setter == "__set__" else method(obj))
    exercise(s.new(16, 1), s)


def a_wrong_self(x: Any, s: State) -> Any:
    if hasattr(type(x), "__get__"):      # a descriptor sample: itself
        items = [("self", x)]
    elif isinstance(x, memmanager.Buffer):
        items = []
    else:
        items = list(vars(type(x)).items())
    for name, d in items:
        if not callable(d) or isinstance(d, type):
            continue
        for other in _others(s):
            for args in ARGS[:4]:
                s.adopt(outcome(lambda: d(other, *args)))
    exercise(x, s)


ATTACKS: Dict[str, Callable[[Any, State], Any]] = {
    "type()": a_type_call,
    "__new__": a_new,
    "__init__": a_init,
    "__setstate__/__reduce__": a_setstate_reduce,
    "copy/pickle": a_copy_pickle,
    "__class__=": a_class_assign,
    "subclass": a_subclass,
    "setattr": a_setattr,
    "__get__": a_descriptor_get,
    "wrong-self": a_wrong_self,
}


def _type_case(sample: str, attack: str) -> None:
    state = State()
    obj = SAMPLES[sample](state)
    ATTACKS[attack](obj, state)
    obj = None
    gc.collect()
    memmanager.collect_delayed()
    for buf in state.bufs:
        outcome(lambda: buf.release())
    state.keep.clear()
    gc.collect()
    outcome(lambda: memmanager.stats())
    outcome(lambda: memmanager.live_buffers())


def cases() -> List[Case]:
    result = []
    for sample in SAMPLES:
        for attack in ATTACKS:
            if sample.startswith("Buffer.__dict__") and attack not in DESCRIPTOR_ATTACKS:
                continue
            name = "%s:%s" % (sample, attack)
            result.append(Case(name, name, lambda s=sample, a=attack: _type_case(s, a)))
    return result
