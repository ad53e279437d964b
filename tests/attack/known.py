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
