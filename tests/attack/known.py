"""Attack cases that fail on today's main because of a known issue-12 bug
that another branch fixes: (fnmatch pattern of case names, reason).  Each
becomes pytest.mark.xfail(strict=False); delete the line once the fix is
merged.  Nothing else may be listed here: any other failure is a bug to
fix, not to mark.
"""

import fnmatch
from typing import Iterable, List

import pytest

KNOWN = [
    # reentry: views.c
    ("buf.create_view*:view_name=str_sub:release*",
     "issue 12: a str-subclass view name whose __hash__ releases the buffer frees the views dict"),
    ("buf._store_view:name=str_sub:release*",
     "issue 12: a str-subclass view name whose __hash__ releases the buffer frees the views dict"),
    ("buf-views:referent*:replace",
     "issue 12: the views dict from gc.get_referents(buf) holds junk: type confusion in views.c"),
    # reentry: memmanager/_views.py (found by this suite; same class, same owner)
    ("buf.create_view*:kind=str_sub:reregister",
     "issue 12: a view kind whose __hash__ calls register_view deadlocks on _views._lock"),
    # reentry: allocator.c lookup cache / allocator table type checks
    ("module:referent0:replace",
     "issue 12: the allocators dict from gc.get_referents(_core) holds junk: type confusion"),
    # reentry: cached_classmethod.c
    ("Buffer.__dict__[[]consume[]]:__get__",
     "issue 12: the cached classmethod binds any 'class' (__get__(None, 5))"),
    ("Buffer.__dict__[[]attach[]]:__get__",
     "issue 12: the cached classmethod binds any 'class' (__get__(None, 5))"),
    ("Buffer.__dict__[[]get_delayed_gc_objects[]]:__get__",
     "issue 12: the cached classmethod binds any 'class' (__get__(None, 5))"),
    # consume
    ("Buffer.consume[[]same-bytes-twice[]]:*",
     "issue 12: the same bytes cannot be consumed twice (OverlapError between non-owning buffers)"),
    ("Buffer.consume[[]*[]]:source=void_p:*",
     "issue 12: consume runs a ctypes holder's reset before registering (a region at address 0)"),
    ("Buffer.consume[[]address-without-allocator[]]:*",
     "issue 12: consume(int address) without allocator= assumes CMalloc and reallocs any int"),
    # lifecycle
    ("buf.__exit__[[]raising-exported[]]:*",
     "issue 12: __exit__ replaces the exception leaving the block by BufferError"),
    ("mm.collect_delayed(buf):*",
     "issue 12: collect_delayed(buf) reads the buffer's bytes as identifiers"),
    # dlpack
    ("buf.__dlpack_device__[[]CudaDevice[]]:*",
     "issue 12: a CudaDevice buffer's __dlpack_device__ claims CPU memory"),
    # shm
    ("pickle.loads(dumps)[[]SharedMemory[]]:*",
     "issue 12: a SharedMemory buffer unpickles as a private copy"),
    # consume: non-owning overlaps
    ("Buffer.consume[[]Buffer[]]:polite",
     "issue 12: zero-copy consume(buf) of a live Buffer is refused with OverlapError"),
]


def reason(name: str):
    for pattern, why in KNOWN:
        if fnmatch.fnmatchcase(name, pattern):
            return why
    return None


def params(names: Iterable[str]) -> List[object]:
    """pytest params for the case names, the known failures marked xfail."""
    out = []
    for name in names:
        why = reason(name)
        marks = [pytest.mark.xfail(strict=False, reason=why)] if why else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def split(names: Iterable[str], key) -> tuple:
    """(pytest params of the groups of names by key, with the names in each
    group that KNOWN does not list; pytest params of the KNOWN patterns,
    each xfail, with the names it matches).  One test per group and one per
    known bug keeps the item count (and pytest's per-test cost) low."""
    groups: dict = {}
    known: dict = {}
    for name in names:
        why = reason(name)
        if why is None:
            groups.setdefault(key(name), []).append(name)
        else:
            pattern = next(p for p, w in KNOWN if fnmatch.fnmatchcase(name, p))
            known.setdefault(pattern, []).append(name)
    group_params = [pytest.param(members, id=group) for group, members in groups.items()]
    known_params = [pytest.param(members, id=pattern,
                                 marks=pytest.mark.xfail(strict=False, reason=reason(members[0])))
                    for pattern, members in known.items()]
    return group_params, known_params
