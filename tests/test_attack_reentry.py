"""Attacks on the C core from Python code that runs in the middle of it.

Issue 12, classes 1-4 (DESIGN section 10, the re-entrancy rule):

1. Python code running inside a C operation: a view name whose __hash__
   or __eq__ releases the buffer, an option whose __bool__ empties what the
   options were read from, an __index__ that releases the buffer.
2. Internals reachable from Python: the views, pinned and allocators dicts
   handed out by gc.get_referents() and gc.get_objects().
3. Descriptors: the cached class methods bound to anything.
4. Borrowed links someone else frees: ndarray.__setstate__ on a NumPy view,
   memoryview.release() on its base.

Whatever would crash the interpreter without its fix runs in a child
process (with a timeout), so that a regression shows as a failed test and
not as a dead pytest.
"""

import gc
import subprocess
import sys
import textwrap
import weakref

import pytest

import memmanager
from memmanager import Buffer

numpy = pytest.importorskip("numpy")


def run_isolated(*parts, timeout=120):
    """Run the parts of a script (each dedented) in a fresh interpreter; it
    must exit 0 and print OK."""
    code = "\n".join(textwrap.dedent(part) for part in parts)
    child = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code],
                           capture_output=True, text=True, timeout=timeout)
    assert child.returncode == 0 and child.stdout.rstrip().endswith("OK"), (
        f"exit {child.returncode}\nstdout:\n{child.stdout}\nstderr:\n{child.stderr}")
    return child.stdout


class BlockPlugin:
    """A Python plug-in over bytearrays (received: the options of each call)."""

    def __init__(self):
        self.blocks, self.received = {}, []

    def malloc(self, num_items, item_size, init_byte, options):
        import ctypes
        self.received.append(options)
        block = bytearray(num_items * item_size)
        holder = (ctypes.c_char * len(block)).from_buffer(block)
        handle = ctypes.addressof(holder)
        self.blocks[handle] = (block, holder)
        return handle

    def free(self, address):
        self.blocks.pop(address)

    def get_buffer_address(self, handle):
        return handle


class RetiredPlugin(BlockPlugin):
    def malloc(self, num_items, item_size, init_byte, options):
        raise ValueError("a retired test allocator")


@pytest.fixture
def plugin_name(request):
    """A fresh allocator name, re-registered at teardown with a plug-in that
    refuses to allocate (so later tests enumerating allocators skip it)."""
    name = "attack_reentry_" + request.node.name[5:40]
    yield name
    memmanager.register_allocator(name, RetiredPlugin())


PRELUDE = """
import gc, weakref
import memmanager
from memmanager import Buffer
"""


# ---------------------------------------------------------------------------
# 1. Python code in the middle of a C operation
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dunder", ["__hash__", "__eq__"])
@pytest.mark.parametrize("operation", ["create_view", "get_view", "delete_view",
                                       "clone_view", "replace"])
def test_view_name_that_releases_the_buffer(operation, dunder):
    """The name's __hash__/__eq__ would release the buffer (and free the
    views dict) inside the dict operation; names are copied to exact str,
    so the caller's dunders never run inside it."""
    run_isolated(PRELUDE, f"""
    buf = Buffer(64, 1, init_value=3)
    calls = []

    class Name(str):
        def {dunder}(self, *other):
            calls.append(1)
            try:
                buf.release()
            except BufferError:
                pass
            gc.collect()
            return str.{dunder}(self, *other)

    name = Name("v")
    operation = {operation!r}
    if operation == "create_view":
        buf.create_view("memoryview", view_name=name)
        assert buf.view_names() == ["v"]
        assert type(buf.view_names()[0]) is str
    else:
        buf.create_view("memoryview", view_name="v")
        if operation == "get_view":
            assert bytes(buf.get_view(name)) == bytes([3]) * 64
        elif operation == "delete_view":
            buf.delete_view(name)
            assert buf.view_names() == []
        elif operation == "clone_view":
            assert bytes(buf.clone_view(name)) == bytes([3]) * 64
        else:
            buf.create_view("numpy", view_name=name)
            assert buf.get_view("v").sum() == 3 * 64
    assert not buf.released
    buf.release()
    assert buf.released
    print("OK")
    """)


def test_view_replaced_by_a_destructor_that_releases():
    """Replacing a stored view drops the old one, whose destructor may run
    any Python code: it runs only once the dict is consistent."""
    run_isolated(PRELUDE, """
    class Dies:
        def __init__(self, buffer):
            self.buffer = memoryview(buffer)   # an export, as views hold
        def __del__(self):
            self.buffer.release()
            for obj in gc.get_objects():     # the dict must not be found
                if isinstance(obj, dict) and any(
                        type(v).__name__ == "_ViewEntry" for v in obj.values()):
                    obj.clear()
                    obj["v"] = 5
            try:
                buf.release()
            except BufferError:
                pass

    memmanager.register_view("test_attack_dies", Dies, lambda view: view)
    buf = Buffer(16, 1)
    buf.create_view("test_attack_dies", view_name="v")
    for kind in ("test_attack_dies", "memoryview"):      # each replaces: __del__
        try:
            buf.create_view(kind, view_name="v")
        except ValueError:
            assert buf.released      # the destructor released it: refused
    gc.collect()
    assert buf.released or buf.view_names() == ["v"]
    if not buf.released:
        buf.get_view("v")
        buf.delete_view("v")
        buf.release()
    print("OK")
    """)


def test_store_view_on_a_buffer_released_meanwhile():
    """_store_view looks at the buffer only after its allocations (which may
    run the collector and with it Python code)."""
    buf = Buffer(8, 1)
    buf.release()
    with pytest.raises(ValueError, match="released"):
        buf._store_view("x", "memoryview", memoryview(b"x"))
    with pytest.raises(TypeError):
        buf._store_view(1, "memoryview", None)
    with pytest.raises(TypeError):
        buf._stored_view(b"x")


MAPPING_EMPTIED = """
import collections.abc

stubs = []

class Options(collections.abc.Mapping):
    '''A mapping whose items() makes fresh values: only the pairs hold them.'''
    def __init__(self, *names):
        self.names = names
    def _pairs(self):
        fresh = {"death_stub": (lambda info: stubs.append(info["buffer_size"])),
                 "init_value": "".join(["1", "7"]),
                 "owner": bytearray(3)}
        return [(name, fresh[name]) for name in self.names]
    def __getitem__(self, key):
        return dict(self._pairs())[key]
    def __iter__(self):
        return iter(self.names)
    def __len__(self):
        return len(self.names)
    def items(self):
        return self._pairs()

class Empties:
    '''delayed_gc's __bool__ empties every list of option pairs it finds.'''
    def __bool__(self):
        for obj in gc.get_objects():
            if (isinstance(obj, list) and obj and isinstance(obj[0], tuple)
                    and obj[0] and obj[0][0] == "death_stub"):
                obj.clear()
        gc.collect()
        [object() for _ in range(1000)]
        return False
"""


def test_options_mapping_emptied_by_a_flag():
    """The options were borrowed from the list of pairs; a __bool__ that
    finds the list (gc.get_objects) and empties it freed the death stub the
    buffer then kept.  The options hold their own references now."""
    run_isolated(PRELUDE, MAPPING_EMPTIED, """
    for _ in range(3):
        buf = Buffer(8, 1, Options("death_stub", "init_value"), delayed_gc=Empties())
        assert bytes(buf) == bytes([17]) * 8
        buf.release()
    del buf
    gc.collect()
    assert stubs == [8, 8, 8], stubs
    source = bytearray(8)
    for options in (Options("death_stub"), Options("death_stub", "owner")):
        try:
            buf = Buffer.consume(source, 8, 1, options, delayed_gc=Empties())
        except (TypeError, ValueError):
            continue       # owner= needs Borrowed: refused, nothing kept
        buf.release()
    assert stubs == [8, 8, 8, 8], stubs
    print("OK")
    """)


def test_extra_options_are_private(plugin_name):
    """The dict of allocator options is not in gc.get_objects() while the
    constructor's flags run Python code: kinds borrow values from it
    (SharedMemory's name=), and plug-ins are handed a copy."""
    marker = ["a tracked option value"]
    seen = []
    plugin = BlockPlugin()

    class Looks:
        def __bool__(self):
            seen.extend(obj for obj in gc.get_objects()
                        if isinstance(obj, dict)
                        and any(value is marker for value in obj.values()))
            return False

    memmanager.register_allocator(plugin_name, plugin)
    buf = Buffer(8, 1, allocator=plugin_name, tag=marker, delayed_gc=Looks())
    assert seen == []
    assert plugin.received == [{"tag": marker}]
    plugin.received[0].clear()    # the plug-in's own copy
    buf.release()


class ReleasingIndex:
    def __init__(self, value, buffer=None):
        self.value, self.buffer = value, buffer

    def __index__(self):
        if self.buffer is not None:
            self.buffer.release()
        return self.value


@pytest.mark.parametrize("attack", [
    "buf[ReleasingIndex(0, buf)] = 1",
    "buf[0] = ReleasingIndex(1, buf)",
    "buf[ReleasingIndex(0, buf)]",
    "buf[ReleasingIndex(0, buf):4]",
    "buf[0:ReleasingIndex(4, buf)] = b'abcd'",
    "buf[0:8:ReleasingIndex(2, buf)] = b'abcd'",
    "buf[::ReleasingIndex(2, buf)]",
    "buf.region(ReleasingIndex(0, buf), 4)",
    "buf.region(0, ReleasingIndex(4, buf))",
    "buf.extract_buffer_region(ReleasingIndex(0, buf), 4)",
    "buf.extract_buffer_region(0, ReleasingIndex(4, buf))",
])
def test_index_that_releases_the_buffer(attack):
    """Every conversion runs before the buffer is looked at."""
    buf = Buffer(1 << 20, 1)   # a large block: unmapped when freed
    with pytest.raises(ValueError, match="released"):
        exec(attack, {"buf": buf, "ReleasingIndex": ReleasingIndex})
    assert buf.released


# ---------------------------------------------------------------------------
# 2. Internals reachable from Python
# ---------------------------------------------------------------------------

def _dicts_among(objects):
    return [obj for obj in objects if isinstance(obj, dict)]


def test_module_tables_are_out_of_reach():
    """gc.get_referents(_core) handed out the allocators and pinned dicts;
    the module now reports their values and the dicts stay untracked."""
    pinned = Buffer(8, 1, delayed_gc=True)
    try:
        referents = gc.get_referents(memmanager._core)
        assert not [d for d in _dicts_among(referents)
                    if "PyAlloc" in d or pinned in d.values()]
        assert not [d for d in _dicts_among(gc.get_objects())
                    if "PyAlloc" in d and all(type(v).__name__ == "Allocator"
                                              for v in d.values())]
        # What the module reports instead: the allocators and the buffer.
        assert pinned in referents
        assert any(type(obj).__name__ == "Allocator" for obj in referents)
    finally:
        pinned.release()


def test_buffer_views_dict_is_out_of_reach():
    buf = Buffer(8, 1)
    buf.create_view("memoryview")
    buf.create_view("numpy")
    referents = gc.get_referents(buf)
    assert _dicts_among(referents) == []
    assert [type(o).__name__ for o in referents].count("_ViewEntry") == 2
    assert not [d for d in _dicts_among(gc.get_objects())
                if any(type(v).__name__ == "_ViewEntry" for v in d.values())]
    del referents
    buf.release()


def test_mutating_everything_gc_hands_out():
    """Store a foreign object in every dict reachable from the module and a
    buffer (there should be none), then use every table."""
    run_isolated(PRELUDE, """
    pinned = Buffer(8, 1, delayed_gc=True)
    buf = Buffer(8, 1, allocator="CMalloc")
    buf.create_view("memoryview", view_name="v")
    found = 0
    for owner in (memmanager._core, buf, pinned):
        for obj in gc.get_referents(owner):
            if isinstance(obj, dict) and obj is not getattr(owner, "__dict__", None):
                found += 1
                for key in list(obj):
                    obj[key] = 5
                obj["v"] = 5
                obj["CMalloc"] = 5
    tables = ("Allocator", "Buffer", "_ViewEntry")
    for obj in gc.get_objects():
        if (isinstance(obj, dict) and obj and obj is not globals()
                and all(type(v).__name__ in tables for v in obj.values())):
            found += 1
            for key in list(obj):
                obj[key] = 5
    Buffer(4, 1, allocator="CMalloc").release()
    Buffer(4, 1, allocator="Aligned").release()
    Buffer(4, 1).release()
    buf.get_view("v")
    buf.delete_view("v")
    buf.release()
    assert pinned.identifier in memmanager.get_delayed_gc_objects()
    memmanager.collect_delayed()
    pinned.release()
    gc.collect()
    print("found", found)
    print("OK")
    """)


def test_allocator_lookup_cache_survives_reregistration(plugin_name):
    """The cache holds the allocator it names; re-registering drops it."""
    name = plugin_name
    first, second = BlockPlugin(), BlockPlugin()
    memmanager.register_allocator(name, first)
    Buffer(8, 1, allocator=name).release()      # cached
    memmanager.register_allocator(name, second)
    del first
    gc.collect()
    buf = Buffer(8, 1, allocator=name)
    assert len(second.blocks) == 1
    buf.release()
    assert second.blocks == {}


# ---------------------------------------------------------------------------
# 3. Descriptors
# ---------------------------------------------------------------------------

CLASS_METHODS = ["get_delayed_gc_objects", "consume", "attach"]


@pytest.mark.parametrize("name", CLASS_METHODS)
def test_cached_classmethod_refuses_foreign_classes(name):
    """__get__ with a non-type or a type that is not Buffer or a subclass
    (another type of the module built a Buffer through the wrong layout)
    is a TypeError, in a child so that a regression cannot kill pytest."""
    run_isolated(PRELUDE, f"""
    descriptor = Buffer.__dict__[{name!r}]
    bad = [(None, 5), (None, int), (None, memmanager._core.Allocator),
           (None, type(descriptor)), (5, None), (5, int), (None, object),
           (Buffer(1, 1), int)]
    for obj, cls in bad:
        try:
            bound = descriptor.__get__(obj, cls)
        except TypeError:
            continue
        raise AssertionError(f"bound to {{obj!r}}, {{cls!r}}: {{bound!r}}")
    try:
        descriptor.__get__(None, None)
    except TypeError:
        pass
    else:
        raise AssertionError("bound to (None, None)")
    try:
        descriptor()
    except TypeError:
        pass
    else:
        raise AssertionError("the descriptor itself is callable")

    class Sub(Buffer):
        pass

    assert descriptor.__get__(None, Buffer) is getattr(Buffer, {name!r})
    assert descriptor.__get__(Buffer(1, 1)) is getattr(Buffer, {name!r})
    assert descriptor.__get__(None, Sub).__self__ is Sub
    assert descriptor.__get__(Sub(1, 1)).__self__ is Sub
    assert isinstance(descriptor.__doc__, str)
    print("OK")
    """)


def test_consume_bound_to_another_type_of_the_module():
    """The heap overflow of the issue: consume() bound to Allocator built a
    Buffer with Allocator's tp_alloc."""
    run_isolated(PRELUDE, """
    consume = Buffer.__dict__["consume"]
    for cls in (memmanager._core.Allocator, memmanager.DeviceView, type(consume)):
        try:
            consume.__get__(None, cls)(b"x" * 64, 64, 1)
        except TypeError:
            pass
        else:
            raise AssertionError(cls)
    print("OK")
    """)


def test_view_export_type_cannot_be_misused():
    buf = Buffer(8, 1)
    view = buf.create_view("numpy")
    export = view.base
    cls = type(export)
    assert cls.__name__ == "_ViewExport"
    for attempt in (lambda: cls(), lambda: cls.__new__(cls),
                    lambda: object.__new__(cls)):
        with pytest.raises(TypeError):
            attempt()
    with pytest.raises(TypeError):
        export.__class__ = type("Other", (), {})
    with pytest.raises(TypeError):
        import pickle
        pickle.dumps(export)
    assert not hasattr(export, "release")
    buf.delete_view("numpy_default")
    del view, export
    buf.release()


# ---------------------------------------------------------------------------
# 4. Borrowed links that someone else frees
# ---------------------------------------------------------------------------

def _state_of_an_owning_array(nbytes):
    return numpy.zeros(nbytes, numpy.uint8).__reduce__()[2]


def test_setstate_on_a_numpy_view_keeps_what_is_still_referenced():
    """After ndarray.__setstate__ the view no longer refers to its base; an
    entry that still reported the chain's reference made the collector free
    a buffer whose export was still held (the base, kept by the user)."""
    buf = Buffer(16, 1, init_value=5)
    ref = weakref.ref(buf)
    view = buf.create_view("numpy")
    base = view.base                       # the export, held by the test
    view.__setstate__(_state_of_an_owning_array(16))
    del view, buf
    gc.collect()
    assert ref() is not None               # `base` holds an export
    assert bytes(memoryview(base)) == bytes([5]) * 16
    del base
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("target", ["view", "link"])
def test_setstate_frees_the_arrays_the_entry_walked(target):
    """__setstate__ on the view (or on the array between it and its base)
    frees the arrays below it; the entry used to keep borrowed pointers to
    them and read them at the next collection (a use-after-free that ASan
    reports)."""
    run_isolated(PRELUDE, f"""
    import numpy
    buf = Buffer(16, 1, init_value=2)
    ref = weakref.ref(buf)
    view = buf.create_view("numpy", shape=(2, 2, 4), order="F")
    target = view if {target!r} == "view" else view.base
    target.__setstate__(numpy.zeros(16, numpy.uint8).__reduce__()[2])
    del target
    for _ in range(3):
        [bytearray(64) for _ in range(1000)]
        gc.collect()
    assert buf.get_view("numpy_default") is view
    del view, buf
    gc.collect()
    assert ref() is None
    print("OK")
    """)


def test_releasing_a_numpy_views_base_cannot_free_the_memory():
    """view.base was a memoryview: its release() ended the export while the
    array still pointed at the memory, release() freed it, the next write
    crashed.  The base is now an export only its death ends."""
    run_isolated(PRELUDE, """
    import numpy
    buf = Buffer(1 << 20, 1, init_value=1)
    view = buf.create_view("numpy", dtype="u4")
    for base in (view.base, memoryview(view.base)):
        release = getattr(base, "release", None)
        if release is not None:
            release()
    try:
        buf.release()
    except BufferError:
        pass
    assert not buf.released
    view[:] = 7
    assert int(view.sum()) == 7 * (1 << 18)
    try:
        view.resize(1 << 19, refcheck=False)
    except ValueError:
        pass
    assert buf.view_names() == []          # release() forgot the stored one
    del view, base
    gc.collect()
    buf.release()
    assert buf.released
    print("OK")
    """)


def test_read_only_buffer_numpy_view():
    source = bytes(range(16))
    buf = Buffer.consume(source, 16, 1, delayed_gc=False)
    assert buf.readonly
    view = buf.create_view("numpy")
    assert not view.flags.writeable
    assert bytes(view) == source
    with pytest.raises(ValueError):
        view[0] = 1
    with pytest.raises(BufferError):
        buf.release()
    del view
    buf.release()


def test_released_memoryview_view_is_harmless():
    buf = Buffer(8, 1)
    view = buf.create_view("memoryview")
    view.release()
    with pytest.raises(ValueError):
        buf.clone_view("memoryview_default")
    buf.release()          # the stored view's export ended with release()
    assert buf.released


def test_ctypes_view_replaced_and_dropped():
    buf = Buffer(8, 1, init_value=4)
    first = buf.create_view("ctypes")
    buf.create_view("ctypes")                 # replaces the stored one
    assert list(first) == [4] * 8
    with pytest.raises(BufferError):
        buf.release()                         # `first` still exports
    assert buf.view_names() == []             # release() forgot the stored one
    del first
    gc.collect()
    buf.release()
    assert buf.released
