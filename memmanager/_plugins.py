"""Plug-ins: register_allocator(), and use(), which finds installed plug-ins
through entry points and loads them only when asked.

    memmanager.use(allocators=["Arena"], devices=[...], views=[...])

is the Python form of the Perl ``use Task::MemManager Allocator => [...],
Device => [...], View => [...]``.  A package offers a plug-in by declaring
an entry point::

    [project.entry-points."memmanager.allocators"]
    Arena = "arena_pkg:allocator"

The entry point's name is the allocator's name.  What it points to is one
of: a Python plug-in object (with malloc, free, get_buffer_address and
optionally consume), a PyCapsule holding a C MemManagerAllocator, or a
callable taking no arguments that returns one of those two.  Nothing is
imported until use() names the plug-in; names already registered (the
built-ins, or a plug-in loaded before) are left as they are.

Device and view plug-ins (groups ``memmanager.devices`` and
``memmanager.views``) point to a callable taking no arguments that
registers whatever the plug-in provides (for a view kind, by calling
``memmanager.register_view``); use() calls it once.

This is a cold path, in Python on purpose.  With MEMMANAGER_DEBUG=1 every
plug-in registered or loaded writes one line on stderr.
"""

import sys as _sys
import types as _types
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Union

from . import _core

if TYPE_CHECKING:  # importlib.metadata is imported by use() only: it is slow
    import importlib.metadata as _metadata

ALLOCATOR_GROUP = "memmanager.allocators"
DEVICE_GROUP = "memmanager.devices"
VIEW_GROUP = "memmanager.views"

#: Devices and view kinds that need no plug-in.
BUILTIN_DEVICES = frozenset({"NVIDIA_GPU"})
BUILTIN_VIEWS = frozenset({"numpy", "memoryview", "ctypes"})

_REQUIRED = ("malloc", "free", "get_buffer_address")

# Device and view plug-ins loaded so far: name -> what the entry point gave.
_loaded: Dict[str, Dict[str, Any]] = {DEVICE_GROUP: {}, VIEW_GROUP: {}}

Names = Union[str, Iterable[str], None]


def _debug_line(text: str) -> None:
    if _core.DEBUG:
        print(f"memmanager: {text}", file=_sys.stderr, flush=True)


def _is_capsule(obj: Any) -> bool:
    return type(obj).__name__ == "PyCapsule"


def _describe(impl: Any) -> str:
    if isinstance(impl, _types.ModuleType):
        return f"module {impl.__name__}"
    if isinstance(impl, type):
        return f"class {impl.__module__}.{impl.__qualname__}"
    kind = type(impl)
    return f"{kind.__module__}.{kind.__qualname__} object"


def _register(name: str, impl: Any, origin: str) -> None:
    allocator = _core._register_allocator(name, impl)
    _debug_line(f"loaded allocator plug-in {name!r} ({allocator.kind} kind) from {origin}")


def register_allocator(name: str, impl: Any) -> None:
    """Register a plug-in allocator under name.

    impl is either a Python object (module, class or instance) with
    ``malloc(num_items, item_size, init_byte, options) -> handle``,
    ``free(address)``, ``get_buffer_address(handle) -> int`` and optionally
    ``consume(source, length, options) -> handle``; or a PyCapsule named
    ``"memmanager.allocator"`` holding a C ``MemManagerAllocator`` (see
    ``memmanager/allocator.h`` under ``get_include()``).

    An object missing a method is refused with a TypeError naming every
    missing one; a capsule with the wrong name, ABI version, struct size or
    a NULL function is refused too, and nothing is registered.  The
    built-in names cannot be replaced (ValueError); a plug-in name can:
    buffers made before keep freeing through the allocator that made them.
    """
    origin = "a capsule" if _is_capsule(impl) else _describe(impl)
    _register(name, impl, origin)


def _as_names(names: Names, what: str) -> List[str]:
    if names is None:
        return []
    if isinstance(names, str):
        return [names]
    try:
        result = list(names)
    except TypeError:
        raise TypeError(f"use({what}=...) takes a name or an iterable of names, "
                        f"not {type(names).__name__}") from None
    for name in result:
        if not isinstance(name, str):
            raise TypeError(f"use({what}=...) takes names (str), not {type(name).__name__}")
    return result


def _entry_point(group: str, name: str) -> "Optional[_metadata.EntryPoint]":
    import importlib.metadata

    found = list(importlib.metadata.entry_points(group=group).select(name=name))
    return found[0] if found else None


def _origin(entry_point: "_metadata.EntryPoint") -> str:
    dist = getattr(entry_point, "dist", None)
    where = f" in {dist.name} {dist.version}" if dist is not None else ""
    return f"entry point {entry_point.group}:{entry_point.name} = {entry_point.value}{where}"


def _allocator_impl(obj: Any) -> Any:
    """The plug-in object or capsule an allocator entry point stands for."""
    if _is_capsule(obj) or all(hasattr(obj, method) for method in _REQUIRED):
        return obj
    if callable(obj):
        return obj()
    return obj   # register_allocator names what is missing


def _plan_allocators(names: List[str]) -> "List[_metadata.EntryPoint]":
    registered = set(_core.allocators())
    plan = []
    for name in names:
        if name in registered:
            continue
        entry_point = _entry_point(ALLOCATOR_GROUP, name)
        if entry_point is None:
            raise _core.UnknownAllocatorError(f"Allocator {name} does not exist.")
        plan.append(entry_point)
    return plan


def _plan_hooks(group: str, names: List[str], builtin: frozenset,
                what: str) -> "List[_metadata.EntryPoint]":
    plan = []
    for name in names:
        if name in builtin or name in _loaded[group]:
            continue
        entry_point = _entry_point(group, name)
        if entry_point is None:
            raise LookupError(f"{what} {name} does not exist "
                              f"(no entry point {name!r} in the group {group!r}).")
        plan.append(entry_point)
    return plan


def use(allocators: Names = None, devices: Names = None, views: Names = None) -> None:
    """Load the named plug-ins from the installed packages' entry points.

    The Python form of Perl's ``use Task::MemManager Allocator => [...],
    Device => [...], View => [...]``.  Each argument is a name or a list of
    names.  Built-in names and plug-ins loaded before are left alone; the
    others are looked up in the entry-point groups ``memmanager.allocators``,
    ``memmanager.devices`` and ``memmanager.views``.  Every name is looked
    up before anything is loaded: an unknown allocator raises
    UnknownAllocatorError, an unknown device or view LookupError, and then
    nothing was loaded.
    """
    allocator_plan = _plan_allocators(_as_names(allocators, "allocators"))
    device_plan = _plan_hooks(DEVICE_GROUP, _as_names(devices, "devices"),
                              BUILTIN_DEVICES, "Device")
    # A view kind registered with register_view() counts as loaded.
    from ._views import view_kinds
    view_plan = _plan_hooks(VIEW_GROUP, _as_names(views, "views"),
                            BUILTIN_VIEWS | frozenset(view_kinds()), "View")
    for entry_point in allocator_plan:
        _register(entry_point.name, _allocator_impl(entry_point.load()), _origin(entry_point))
    for group, plan in ((DEVICE_GROUP, device_plan), (VIEW_GROUP, view_plan)):
        for entry_point in plan:
            hook = entry_point.load()
            if callable(hook):
                hook()
            _loaded[group][entry_point.name] = hook
            _debug_line(f"loaded {group.split('.')[1][:-1]} plug-in "
                        f"{entry_point.name!r} from {_origin(entry_point)}")
