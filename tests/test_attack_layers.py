"""Attacks on the restructured C core (issue 13): the Buffer methods
written in Python and their table, the exception kept by the paths that
run code while one propagates, Buffer.attach, the GPU attachment and the
consume paths.  Each test is the regression test of a problem found (the
docstring says which) or pins a behaviour the restructuring had to keep.
"""

import copy
import gc
import pickle
import sys

import pytest

import memmanager
from memmanager import Buffer, _core

from conftest import catch_unraisable

PYTHON_METHOD_NAMES = ("create_view", "get_view", "delete_view", "clone_view",
                       "view_names", "__reduce_ex__", "__copy__", "__deepcopy__")


def installed_table():
    return {**memmanager._views.python_methods(), **memmanager._pickle.python_methods()}


@pytest.fixture
def restore_table():
    yield
    _core._set_python_methods(installed_table())


# ---------------------------------------------------------------------------
# The table of Python-written methods
# ---------------------------------------------------------------------------

def test_python_method_table_is_out_of_reach():
    """The private copy _set_python_methods() kept was a dict untracked
    before it was filled: storing the first function tracked it again, so
    gc.get_objects() handed it out and Python code could rewrite the
    methods of the immutable type behind its back (and the collector saw
    each function visited twice, by the dict and by the module)."""
    gc.collect()
    functions = installed_table()
    assert not [obj for obj in gc.get_objects() if obj is not functions and
                isinstance(obj, dict) and set(obj) == set(PYTHON_METHOD_NAMES)]
    for function in functions.values():
        assert not [r for r in gc.get_referrers(function) if r is not functions and
                    isinstance(r, dict) and "__copy__" in r and "create_view" in r]
    # The module reports the functions themselves, once each.
    referents = gc.get_referents(_core)
    for name, function in functions.items():
        assert sum(r is function for r in referents) == 1, name


class HostileKey:
    """Equal in hash to a method name; once armed, its __eq__ runs
    action at each lookup of that name."""

    def __init__(self, name, action):
        self.name, self.action, self.armed = name, action, False

    def __hash__(self):
        return hash(self.name)

    def __eq__(self, other):
        return self.action() if self.armed else False


def test_table_lookup_error_propagates_and_changes_nothing(restore_table):
    b = Buffer(4, 1)
    b.create_view("memoryview", view_name="v")
    def boom():
        raise ZeroDivisionError("from a key's __eq__")

    key = HostileKey("view_names", boom)
    table = {key: None, **installed_table()}   # the key is met first
    key.armed = True
    with pytest.raises(ZeroDivisionError):
        _core._set_python_methods(table)
    assert b.view_names() == ["v"]


def test_table_emptied_by_a_key_during_the_lookups(restore_table):
    """A key's __eq__ clears the table between two lookups: the functions
    already found are held, the missing ones refuse the table whole."""
    key = HostileKey("get_view", lambda: table.clear() or False)
    table = {key: None, **installed_table()}
    key.armed = True
    with pytest.raises(TypeError, match="needs a callable"):
        _core._set_python_methods(table)
    gc.collect()
    b = Buffer(4, 1)
    assert b.view_names() == []


def test_table_replaced_while_a_method_runs(restore_table):
    seen = []

    def view_names(self):
        _core._set_python_methods(installed_table())
        del table["view_names"]   # nothing else holds this function now
        gc.collect()
        seen.append(self)
        return "replaced while running"

    table = installed_table()
    table["view_names"] = view_names
    _core._set_python_methods(table)
    del view_names
    b = Buffer(4, 1)
    assert b.view_names() == "replaced while running"
    assert b.view_names() == []
    assert seen == [b]
