"""Attacks on the restructured C core (issue 13): the Buffer methods
written in Python and their table, the exception kept by the paths that
run code while one propagates, Buffer.attach, the GPU attachment and the
consume paths.  Each test is the regression test of a problem found (the
docstring says which) or pins a behaviour the restructuring had to keep.
"""

import copy
import gc
import pickle

import pytest

import memmanager
from memmanager import Buffer, _core

from conftest import catch_unraisable, run_python

PYTHON_METHOD_NAMES = ("create_view", "get_view", "delete_view", "clone_view",
                       "view_names", "__reduce_ex__", "__copy__", "__deepcopy__")


def installed_table():
    return {**memmanager._views.python_methods(), **memmanager._pickle.python_methods()}


@pytest.fixture
def restore_table():
    yield
    _core._set_python_methods(installed_table())


class RetiredPlugin:
    def malloc(self, num_items, item_size, init_byte, options):
        raise ValueError("a retired test allocator")

    def get_buffer_address(self, handle):
        raise ValueError("a retired test allocator")

    def free(self, address):
        pass


@pytest.fixture
def plugin_name(request):
    """A fresh allocator name, re-registered at teardown with a plug-in that
    refuses to allocate: a plug-in stays registered for the life of the
    process, and later tests that enumerate the allocators (test_exit runs
    them in a child, which has no such plug-in) skip it."""
    name = "Layers_" + "".join(c for c in request.node.name if c.isalnum())[:40]
    yield name
    memmanager.register_allocator(name, RetiredPlugin())


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


# ---------------------------------------------------------------------------
# Code that runs while an exception propagates keeps it (src/core/compat.h)
# ---------------------------------------------------------------------------


class Outer(Exception):
    pass


def raising(exc):
    def stub(*args):
        raise exc
    return stub


class GetattrRaises:
    def __init__(self, exc):
        self.exc = exc

    def __getattr__(self, name):
        raise self.exc


def die_while_raising(make, lazy=False):
    """What make() returns dies in C with an exception set: the argument
    of a call that fails is dropped by the interpreter after the call
    returned its error (no frame holds it, so no traceback keeps it).
    lazy: the error is set by C code (on 3.11 not yet an instance).
    Returns (the exception raised, the exception caught)."""
    held = [make()]
    raised = None if lazy else Outer("outer")
    try:
        if lazy:
            abs(held.pop())     # TypeError, set by PyErr_Format
        else:
            getattr(GetattrRaises(raised), "name", held.pop())
    except (Outer, TypeError) as caught:
        return raised, caught
    raise AssertionError("nothing was raised")


def check_kept(raised, caught, unraisable, stub_types):
    if raised is not None:
        assert caught is raised
    else:
        assert type(caught) is TypeError and "bad operand type for abs()" in str(caught)
    assert caught.__context__ is None and caught.__cause__ is None
    assert caught.__traceback__.tb_frame.f_code.co_name == "die_while_raising"
    assert [t for t, _, _ in unraisable] == stub_types


STUB_ERRORS = [ZeroDivisionError("stub"), KeyboardInterrupt(), SystemExit(3),
               MemoryError()]


@pytest.mark.parametrize("lazy", [False, True], ids=["raised", "lazy"])
@pytest.mark.parametrize("stub_error", STUB_ERRORS, ids=lambda e: type(e).__name__)
def test_death_stub_during_unwinding(stub_error, lazy):
    with catch_unraisable() as unraisable:
        raised, caught = die_while_raising(
            lambda: Buffer(8, 1, death_stub=raising(stub_error)), lazy)
    check_kept(raised, caught, unraisable, [type(stub_error)])


@pytest.mark.parametrize("stub_error", STUB_ERRORS, ids=lambda e: type(e).__name__)
def test_subclass_del_and_stub_during_unwinding(stub_error):
    class Sub(Buffer):
        def __del__(self):
            raise RuntimeError("__del__")

    with catch_unraisable() as unraisable:
        raised, caught = die_while_raising(lambda: Sub(8, 1, death_stub=raising(stub_error)))
    check_kept(raised, caught, unraisable, [type(stub_error), RuntimeError])


class FailingFree:
    """A plug-in whose free() raises what it is given."""

    def __init__(self, error):
        self.error = error
        self.blocks = {}

    def malloc(self, num_items, item_size, init_byte, options):
        import ctypes
        block = (ctypes.c_char * (num_items * item_size))()
        if init_byte is not None:
            ctypes.memset(block, init_byte, num_items * item_size)
        self.blocks[ctypes.addressof(block)] = block
        return block

    def get_buffer_address(self, handle):
        import ctypes
        return ctypes.addressof(handle)

    def free(self, address):
        self.blocks.pop(address)
        raise self.error


@pytest.mark.parametrize("lazy", [False, True], ids=["raised", "lazy"])
@pytest.mark.parametrize("free_error", STUB_ERRORS, ids=lambda e: type(e).__name__)
def test_plugin_free_during_unwinding(free_error, lazy, plugin_name):
    plugin = FailingFree(free_error)
    name = plugin_name
    memmanager.register_allocator(name, plugin)
    with catch_unraisable() as unraisable:
        raised, caught = die_while_raising(
            lambda: Buffer(8, 1, allocator=name, init_value=3), lazy)
    check_kept(raised, caught, unraisable, [type(free_error)])
    assert plugin.blocks == {}


@pytest.mark.parametrize("lazy", [False, True], ids=["raised", "lazy"])
def test_dlpack_capsule_dies_during_unwinding(lazy):
    """The capsule is the last holder of the buffer: its destructor drops
    the owner, whose death stub raises."""
    def make():
        buf = Buffer(8, 1, death_stub=raising(KeyboardInterrupt()))
        return buf.__dlpack__()

    with catch_unraisable() as unraisable:
        raised, caught = die_while_raising(make, lazy)
    check_kept(raised, caught, unraisable, [KeyboardInterrupt])


def test_guard_report_during_unwinding():
    """MEMMANAGER_DEBUG=1: damaged guard bytes found while an exception
    propagates, with the warning made an error: the report goes to the
    unraisable hook and the exception comes out as it went in."""
    proc = run_python("""
        import ctypes, sys, warnings, memmanager
        assert memmanager._core.DEBUG == 1
        seen = []
        sys.unraisablehook = lambda args: seen.append(args.exc_type)
        warnings.simplefilter("error")
        class Outer(Exception):
            pass
        class GetattrRaises:
            def __getattr__(self, name):
                raise raised
        raised = Outer("outer")
        held = [memmanager.Buffer(16, 1, allocator="CMalloc", init_value=1)]
        ctypes.memset(held[0].address + 16, 0x41, 1)
        try:
            getattr(GetattrRaises(), "name", held.pop())   # dies with Outer set
        except Outer as exc:
            assert exc is raised and exc.__context__ is None, exc.__context__
        assert seen == [RuntimeWarning], seen
        print("ok")
    """, {"MEMMANAGER_DEBUG": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"


def test_copy_takes_no_argument():
    """Buffer.__copy__ ($self, /) forwarded to the function __deepcopy__
    shares, whose optional memo made b.__copy__(memo) a deep copy of a
    subclass's state (and b.__copy__(1) an error about item assignment)."""
    class Sub(Buffer):
        pass

    b = Sub(4, 1, init_value=5)
    b.state = [[1]]
    with pytest.raises(TypeError):
        b.__copy__({})
    shallow, deep = copy.copy(b), copy.deepcopy(b)
    assert shallow.state is b.state
    assert deep.state == b.state and deep.state is not b.state
    assert bytes(shallow) == bytes(deep) == b"\x05" * 4


# ---------------------------------------------------------------------------
# The GPU state hangs on the buffer as an attachment (src/cuda/device.c)
# ---------------------------------------------------------------------------

import weakref


@pytest.mark.parametrize("then", ["nothing", "release", "exit", "view"])
def test_death_stub_maps_the_dying_buffer(fake_cuda, then):
    """The stub runs with the memory still there; one that finds the
    buffer (a weak reference still answers) and maps it again, or
    releases it from inside its own death, leaves no device memory."""
    live = fake_cuda.get("device_live")
    seen = []

    def stub(info):
        buf = ref()
        if buf is None:
            seen.append("gone")
            return
        buf.device_movement("enter", "to", device_id=1)
        seen.append(sorted(buf.device_mappings()))
        if then == "release":
            buf.release()
            seen.append(buf.released)
        elif then == "exit":
            buf.device_movement("exit", "from", device_id=1)
        elif then == "view":
            view = buf.device_view(1)
            seen.append(view.__cuda_array_interface__["shape"])
            del view

    buf = Buffer(64, 1, init_value=2, death_stub=stub)
    buf.device_movement("enter", "to", device_id=0)
    ref = weakref.ref(buf)
    del buf
    gc.collect()
    assert ref() is None
    assert seen[0] == [0, 1]
    if then == "release":
        assert seen[1] is True
    assert fake_cuda.get("device_live") == live


def test_release_while_viewed_then_dealloc(fake_cuda):
    live = fake_cuda.get("device_live")
    buf = Buffer(64, 1, init_value=1)
    buf.device_movement("enter", "to", device_id=0)
    view = buf.device_view(0)
    with pytest.raises(BufferError):
        buf.release()
    with pytest.raises(BufferError):
        buf.device_movement("exit", "release", device_id=0)
    assert buf.device_mappings()[0]["views"] == 1
    del buf                    # the view holds it
    gc.collect()
    assert fake_cuda.get("device_live") == live + 1
    del view
    gc.collect()
    assert fake_cuda.get("device_live") == live


# ---------------------------------------------------------------------------
# Python plug-ins: the GIL stays held around every call, and the init byte
# is the plug-in's to write (the flags moved to the kind's registration)
# ---------------------------------------------------------------------------

class GilChecking:
    """Records, at each call, whether this thread holds the GIL, and
    fills with init_byte + 1 so that a fill by memmanager would show."""

    def __init__(self):
        import ctypes
        self.ctypes = ctypes
        self.held = []
        self.blocks = {}

    def _gil(self):
        self.held.append(bool(self.ctypes.pythonapi.PyGILState_Check()))

    def malloc(self, num_items, item_size, init_byte, options):
        self._gil()
        size = num_items * item_size
        block = (self.ctypes.c_char * size)()
        if init_byte is not None:
            self.ctypes.memset(block, (init_byte + 1) % 256, size)
        self.blocks[self.ctypes.addressof(block)] = block
        return block

    def get_buffer_address(self, handle):
        self._gil()
        return self.ctypes.addressof(handle)

    def consume(self, source, length, options):
        self._gil()
        block = (self.ctypes.c_char * length)()
        self.ctypes.memmove(block, bytes(source)[:length], length)
        self.blocks[self.ctypes.addressof(block)] = block
        return block

    def free(self, address):
        self._gil()
        self.blocks.pop(address)


@pytest.mark.parametrize("init_value", [None, 0, 7])
def test_big_plugin_buffers_keep_the_gil_and_the_plugins_fill(init_value, plugin_name):
    plugin = GilChecking()
    name = plugin_name
    memmanager.register_allocator(name, plugin)
    size = 4 << 20          # above every size memmanager drops the GIL for
    buf = Buffer(size, 1, allocator=name, init_value=init_value)
    if init_value is not None:
        expected = bytes([init_value + 1]) * 4
        assert bytes(buf[:4]) == expected and bytes(buf[size - 4:]) == expected
    buf.release()
    adopted = Buffer.consume(bytes(size), size, 1, allocator=name)
    adopted.release()
    assert plugin.blocks == {}
    assert len(plugin.held) >= 6 and all(plugin.held), plugin.held


# ---------------------------------------------------------------------------
# consume(): every path registers its region (owned, or shared for the
# buffers that free nothing), with C assertions on under make asan
# ---------------------------------------------------------------------------

class SubBuffer(Buffer):
    pass


def test_every_consume_path_registers_and_leaves(libc, plugin_name):
    plugin = GilChecking()
    memmanager.register_allocator(plugin_name, plugin)
    before = _core._registry_check()
    block = libc.malloc(64)
    arena = bytearray(b"\x01" * 64)
    made = [
        SubBuffer.consume(block, 64, 1, allocator="Borrowed", delayed_gc=False),
        SubBuffer.consume(block, 32, 1, allocator="Borrowed", delayed_gc=False),  # shared
        SubBuffer.consume(arena, 64, 1, delayed_gc=False),                 # zero-copy
        SubBuffer.consume(arena, 64, 1, delayed_gc=False, copy=True),      # a copy
        SubBuffer.consume(bytes(64), 64, 1, allocator=plugin_name, delayed_gc=False),
    ]
    with pytest.raises(memmanager.OverlapError):    # owned over shared: refused
        Buffer.consume([block], 64, 1, allocator="CMalloc", delayed_gc=False)
    assert all(type(b) is SubBuffer for b in made)
    assert _core._registry_check() == before + len(made)
    assert made[0].address == made[1].address == block
    assert made[2].address != made[3].address
    for b in made:
        b.release()
    assert _core._registry_check() == before
    holder = [block]
    owned = SubBuffer.consume(holder, 64, 1, allocator="CMalloc", delayed_gc=False)
    assert holder == [0] and _core._registry_check() == before + 1
    owned.release()            # CMalloc frees the block (it may have moved it)
    assert _core._registry_check() == before
    assert plugin.blocks == {}


# ---------------------------------------------------------------------------
# The forwarders: arguments, subclasses, reload
# ---------------------------------------------------------------------------

def test_forwarders_pass_arguments_through():
    b = SubBuffer(8, 1, init_value=1)
    view = b.create_view("memoryview", view_name="m")
    assert b.get_view(name="m") is view
    assert b.view_names() == ["m"]
    assert bytes(b.clone_view(name="m")) == b"\x01" * 8
    with pytest.raises(TypeError):
        b.view_names(1)
    with pytest.raises(TypeError):
        b.get_view("m", "extra")
    with pytest.raises(TypeError):
        b.get_view(nom="m")
    with pytest.raises(TypeError):
        Buffer.get_view(object(), "m")
    with pytest.raises(TypeError):
        Buffer.view_names()
    b.delete_view(name="m")
    with pytest.raises(KeyError):
        b.get_view("m")
    del view
    b.release()


def test_subclass_pickles_and_copies_as_itself():
    b = SubBuffer(8, 1, init_value=3)
    b.note = "kept"
    shared = SubBuffer(8, 1, allocator="SharedMemory", init_value=4)
    shared.note = "shared"
    for clone in (pickle.loads(pickle.dumps(b)), pickle.loads(pickle.dumps(b, protocol=5)),
                  copy.copy(b), copy.deepcopy(b)):
        assert type(clone) is SubBuffer and clone.note == "kept"
        assert bytes(clone) == b"\x03" * 8 and clone.address != b.address
    attached = pickle.loads(pickle.dumps(shared))
    assert type(attached) is SubBuffer and attached.note == "shared"
    assert attached.name == shared.name and bytes(attached) == b"\x04" * 8
    attached[0] = 9
    assert shared[0] == 9
    attached.release()
    shared.release()


def test_reload_installs_the_methods_again():
    proc = run_python("""
        import gc, importlib, pickle, memmanager
        b = memmanager.Buffer(4, 1, init_value=2)
        b.create_view("memoryview", view_name="v")
        importlib.reload(memmanager)
        gc.collect()
        assert memmanager.Buffer is b.__class__
        assert b.view_names() == ["v"]
        assert bytes(pickle.loads(pickle.dumps(b))) == b"\\x02" * 4
        names = {"create_view", "get_view", "delete_view", "clone_view", "view_names",
                 "__reduce_ex__", "__copy__", "__deepcopy__"}
        assert not [o for o in gc.get_objects() if isinstance(o, dict) and set(o) == names]
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"
