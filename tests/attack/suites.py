"""The attack suites as lists of cases: build("matrix" | "referents" | "types").

Building a suite makes no buffer: the pytest process builds it to name its
tests, the fork server builds the same list to run it.
"""

import importlib
import inspect
import types
from typing import Any, Callable, Dict, List, Tuple

import memmanager
from memmanager import _core

from attack import checks, entries, hostile
from attack.checks import Case

# Accessors that still answer after release() (DESIGN section 2: released,
# identifier and repr; release() is idempotent; the rest do not read the
# buffer's memory).
ANSWER_AFTER_RELEASE = {
    "released", "identifier", "__repr__", "release", "__del__", "__sizeof__",
    "get_delayed_gc_objects", "device_mappings", "view_names", "_view_names", "exports",
    "__exit__",
}

_PROPERTY_TYPES = (property, types.GetSetDescriptorType, types.MemberDescriptorType)


def _on(obj: Any, attr: str) -> Callable[..., Any]:
    if isinstance(inspect.getattr_static(obj, attr, None), _PROPERTY_TYPES):
        return lambda: getattr(obj, attr)
    return getattr(obj, attr)


def _allocator_object(state: Any) -> Any:
    import gc

    for ref in gc.get_referents(state.buf):
        if type(ref) is _core.Allocator:
            return ref
    raise AssertionError("no Allocator among the buffer's referents")


def resolve(target: Any, state: Any) -> Callable[..., Any]:
    if not isinstance(target, str):
        return target(state)
    where, _, attr = target.partition(".")
    if where == "buf":
        return _on(state.buf, attr)
    if where == "dv":
        return _on(state.dv, attr)
    if where == "alloc":
        return _on(_allocator_object(state), attr)
    if where == "Buffer":
        return getattr(memmanager.Buffer, attr)
    if where == "mm":
        return getattr(memmanager, attr)
    if where == "cuda":
        return getattr(memmanager.cuda, attr)
    if where == "np":
        return getattr(importlib.import_module("memmanager.numpy"), attr)
    if where == "core":
        return getattr(_core, attr)
    raise ValueError(target)


def _good(value: Any, state: Any) -> Any:
    return value(state) if callable(value) and not isinstance(value, type) else value


def _uses_options(entry: entries.Entry) -> bool:
    return any(p.kinds is entries.MAP for p in entry.params)


def _arguments(entry: entries.Entry, position: int, kind: str, action: str,
               state: Any) -> Tuple[List[Any], Dict[str, Any]]:
    args: List[Any] = []
    kwargs: Dict[str, Any] = {}
    for index, param in enumerate(entry.params):
        value = _good(param.good, state)
        if index == position:
            value = hostile.hostile(kind, action, value, state)
        if param.keyword:
            kwargs[param.name] = value
        else:
            args.append(value)
    return args, kwargs


def _matrix_case(entry: entries.Entry, position: int, kind: str, action: str) -> None:
    state = hostile.State()
    if entry.setup is not None:
        entry.setup(state)
    call = resolve(entry.target, state)
    args, kwargs = _arguments(entry, position, kind, action, state)
    if position == -1 and action != "none":  # the action runs just before
        try:
            hostile.ACTIONS[action](state)
        except hostile.AttackError:
            pass
    result = checks.call_outcome(lambda: call(*args, **kwargs))
    args = kwargs = call = None  # type: ignore[assignment]
    state.adopt(result)
    checks.check_result(result)
    if action == "none":
        if entry.expect is not None:
            assert isinstance(result, entry.expect), \
                "the polite call must raise %s, not give %r" % (entry.expect.__name__, result)
        else:
            assert not isinstance(result, BaseException), \
                "the polite call failed: %s: %s" % (type(result).__name__, result)
    if entry.check is not None:
        entry.check(state, result)
    attr = entry.target.partition(".")[2] if isinstance(entry.target, str) else ""
    if (position == -1 and action == "release" and isinstance(entry.target, str)
            and entry.target.startswith("buf.") and state.buf.released
            and attr not in ANSWER_AFTER_RELEASE):
        assert isinstance(result, ValueError), \
            "%s answered %r after release (must be ValueError)" % (attr, result)
    for buf in state.bufs:
        checks.check_buffer(buf)
    checks.check_registry()
    holder = [result]
    del result
    checks.cleanup(state, holder)


def matrix_cases() -> List[Case]:
    cases: List[Case] = []
    for entry in entries.ENTRIES:
        base = entry.name
        cases.append(Case(base + ":polite", base,
                          lambda e=entry: _matrix_case(e, -1, "", "none")))
        if not entry.params:
            for action in hostile.ACTIONS:
                if action == "mutate_options":
                    continue
                cases.append(Case("%s:before=%s" % (base, action), base,
                                  lambda e=entry, a=action: _matrix_case(e, -1, "", a)))
            continue
        for position, param in enumerate(entry.params):
            for kind in param.kinds:
                group = "%s:%s=%s" % (base, param.name, kind)
                fork_group = "%s:%s" % (base, param.name)
                for action in hostile.ACTIONS:
                    if action == "mutate_options" and not (
                            _uses_options(entry) or kind in ("mapping", "dict_sub")):
                        continue
                    cases.append(Case("%s:%s" % (group, action), fork_group,
                                      lambda e=entry, p=position, k=kind, a=action:
                                      _matrix_case(e, p, k, a)))
    return cases


def _segfault() -> None:
    import ctypes
    ctypes.string_at(0)


def _hang() -> None:
    import time
    time.sleep(120)


def _wrong() -> None:
    raise AssertionError("a wrong result")


def _exit_crash() -> None:
    """Pins a buffer whose death stub crashes: the exit path runs it."""
    memmanager.Buffer(8, 1, delayed_gc=True, death_stub=lambda info: _segfault())


def selftest_cases() -> List[Case]:
    """The runner's own test: each must be reported as it is."""
    return [Case("pass", "g", lambda: None), Case("segfault", "g", _segfault),
            Case("after-segfault", "g", lambda: None), Case("abort", "h", lambda: __import__("os").abort()),
            Case("hang", "h", _hang), Case("wrong", "h", _wrong), Case("last", "h", lambda: None),
            Case("exit-crash", "e", _exit_crash), Case("exit-fine", "e", lambda: None)]


def _suite(name: str) -> Callable[[], List[Case]]:
    if name == "matrix":
        return matrix_cases
    if name == "referents":
        from attack import referents
        return referents.cases
    if name == "types":
        from attack import types_cases
        return types_cases.cases
    if name == "selftest":
        return selftest_cases
    raise ValueError("no attack suite %r" % name)


def build(name: str) -> List[Case]:
    cases = _suite(name)()
    names = [case.name for case in cases]
    assert len(set(names)) == len(names), "duplicate case names"
    return cases


def prepare_process() -> None:
    """Once per fork-server process, before any case: the suite's plug-in
    and view kind exist."""
    hostile.register_plugins()
