"""Allocator plug-ins written in Python (DESIGN section 4): registration
and its checks, the calls memmanager makes (arguments, init_byte,
options), validation of everything the plug-in returns, consume, frees
that happen exactly once, and plug-ins that misbehave."""

import ctypes
import gc
import sys
import types
import uuid
import weakref

import pytest

import memmanager
from memmanager import Buffer

from conftest import catch_unraisable


def fresh_name(prefix="Py"):
    return f"{prefix}{uuid.uuid4().hex[:10]}"


class Handle:
    """What the recording plug-in's malloc returns: it owns the memory."""

    def __init__(self, size):
        self.block = (ctypes.c_char * size)()
        self.address = ctypes.addressof(self.block)


class Recorder:
    """A well-behaved plug-in that records every call."""

    def __init__(self, fill=True):
        self.fill = fill
        self.mallocs = []
        self.frees = []
        self.consumes = []
        self.live = {}

    def malloc(self, num_items, item_size, init_byte, options):
        self.mallocs.append((num_items, item_size, init_byte, options))
        handle = Handle(num_items * item_size)
        if init_byte is not None and self.fill:
            ctypes.memset(handle.address, init_byte, num_items * item_size)
        self.live[handle.address] = handle
        return handle

    def get_buffer_address(self, handle):
        return handle.address

    def free(self, address):
        self.frees.append(address)
        self.live.pop(address, None)

    def consume(self, source, length, options):
        self.consumes.append((source, length, options))
        handle = Handle(length)
        ctypes.memmove(handle.address, bytes(source)[:length], min(length, len(bytes(source))))
        self.live[handle.address] = handle
        return handle


@pytest.fixture
def recorder():
    plugin = Recorder()
    name = fresh_name()
    memmanager.register_allocator(name, plugin)
    plugin.name = name
    return plugin


def test_registered_and_used(recorder):
    assert recorder.name in memmanager.allocators()
    buf = Buffer(10, 4, allocator=recorder.name)
    assert buf.allocator == recorder.name
    assert recorder.mallocs == [(10, 4, None, {})]
    assert buf.address in recorder.live
    address = buf.address
    buf.release()
    assert recorder.frees == [address]
    assert memmanager.stats()[recorder.name]["live_buffers"] == 0


@pytest.mark.parametrize("init_value, init_byte", [
    (None, None), ("zero", 0), ("ZERO", 0), (0, 0), (200, 200), (b"\x07", 7),
    ("40", 40), ("7", 7), ("A", 65), ("\xff", 255),
])
def test_init_byte_is_mapped(recorder, init_value, init_byte):
    buf = Buffer(3, 2, allocator=recorder.name, init_value=init_value)
    assert recorder.mallocs[-1][2] == init_byte
    if init_byte is not None:
        assert buf[:] == bytes([init_byte]) * 6


def test_options_are_exactly_the_extra_keywords(recorder):
    opts = {"allocator": recorder.name, "pool": "fast", "death_stub": None}
    Buffer(2, 2, opts, init_value=1, delayed_gc=False, colour="red").release()
    assert recorder.mallocs[-1][3] == {"pool": "fast", "colour": "red"}
    assert opts == {"allocator": recorder.name, "pool": "fast", "death_stub": None}
    # The plug-in gets its own dict each time: keeping and mutating it is harmless.
    recorder.mallocs[-1][3]["pool"] = "changed"
    Buffer(2, 2, opts).release()
    assert recorder.mallocs[-1][3] == {"pool": "fast"}


def test_free_exactly_once_at_every_exit(recorder):
    calls = []
    a = Buffer(8, 1, allocator=recorder.name, death_stub=calls.append)
    b = Buffer(8, 1, allocator=recorder.name, delayed_gc=True)
    c = Buffer(8, 1, allocator=recorder.name)
    addresses = {a.address, b.address, c.address}
    a.release()
    a.release()
    del c
    b_id = b.identifier
    del b
    memmanager.collect_delayed([b_id])
    gc.collect()
    assert sorted(recorder.frees) == sorted(addresses)
    assert len(calls) == 1 and calls[0]["buffer_size"] == 8
    assert recorder.live == {}


def test_handle_lives_until_free(recorder):
    buf = Buffer(16, 1, allocator=recorder.name)
    handle = weakref.ref(recorder.live[buf.address])
    recorder.live.clear()            # only memmanager holds the handle now
    gc.collect()
    assert handle() is not None
    buf[0:3] = b"abc"                # the memory is still good
    address = buf.address
    buf.release()
    assert recorder.frees == [address]
    assert handle() is None


@pytest.mark.parametrize("kind", ["module", "class", "instance"])
def test_plugin_shapes(kind):
    store = {}

    def malloc(num_items, item_size, init_byte, options):
        block = ctypes.create_string_buffer(num_items * item_size)
        store[ctypes.addressof(block)] = block
        return block

    def get_buffer_address(handle):
        return ctypes.addressof(handle)

    def free(address):
        del store[address]

    if kind == "module":
        impl = types.ModuleType("plugin_module")
        impl.malloc, impl.get_buffer_address, impl.free = malloc, get_buffer_address, free
    elif kind == "class":
        impl = type("PluginClass", (), {"malloc": staticmethod(malloc), "free": staticmethod(free),
                                        "get_buffer_address": staticmethod(get_buffer_address)})
    else:
        impl = types.SimpleNamespace(malloc=malloc, free=free,
                                     get_buffer_address=get_buffer_address)
    name = fresh_name(kind)
    memmanager.register_allocator(name, impl)
    buf = Buffer(5, 5, allocator=name, init_value=0)
    assert buf[:] == bytes(25)       # create_string_buffer zero-fills
    assert len(store) == 1
    buf.release()
    assert store == {}


# --------------------------------------------------------------------------
# Registration checks


@pytest.mark.parametrize("missing", [("malloc",), ("free",), ("get_buffer_address",),
                                     ("malloc", "free"), ("malloc", "free", "get_buffer_address")])
def test_missing_methods_are_named(missing):
    methods = {m: (lambda *a: None) for m in ("malloc", "free", "get_buffer_address")
               if m not in missing}
    impl = types.SimpleNamespace(**methods)
    name = fresh_name()
    with pytest.raises(TypeError) as info:
        memmanager.register_allocator(name, impl)
    for method in missing:
        assert method in str(info.value)
    for method in methods:
        assert f"missing {method}" not in str(info.value)
    assert name not in memmanager.allocators()


def test_not_callable_methods():
    impl = types.SimpleNamespace(malloc=5, free=print, get_buffer_address=id)
    with pytest.raises(TypeError, match="malloc"):
        memmanager.register_allocator(fresh_name(), impl)
    impl = types.SimpleNamespace(malloc=print, free=print, get_buffer_address=id, consume=3)
    with pytest.raises(TypeError, match="consume"):
        memmanager.register_allocator(fresh_name(), impl)


def test_attribute_errors_other_than_missing_propagate():
    class Exploding:
        malloc = free = staticmethod(print)

        @property
        def get_buffer_address(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        memmanager.register_allocator(fresh_name(), Exploding())


@pytest.mark.parametrize("builtin", ["PyAlloc", "CMalloc", "Borrowed", "Aligned", "Mmap",
                                     "SharedMemory"])
def test_builtins_cannot_be_replaced(builtin):
    with pytest.raises(ValueError, match="built-in"):
        memmanager.register_allocator(builtin, Recorder())
    assert Buffer(4, 1, allocator=builtin if builtin != "Borrowed" else "PyAlloc").nbytes == 4


@pytest.mark.parametrize("name, exc", [(5, TypeError), (None, TypeError), (b"x", TypeError),
                                       ("", ValueError),   # any length is fine (DESIGN 5)
                                       ("a\0b", ValueError)])
def test_bad_names(name, exc):
    with pytest.raises(exc):
        memmanager.register_allocator(name, Recorder())


def test_reregistration_keeps_old_buffers_with_old_plugin():
    name = fresh_name()
    first, second = Recorder(), Recorder()
    memmanager.register_allocator(name, first)
    old = Buffer(4, 1, allocator=name)
    memmanager.register_allocator(name, second)
    new = Buffer(4, 1, allocator=name)
    assert len(first.mallocs) == 1 and len(second.mallocs) == 1
    old_address, new_address = old.address, new.address
    del old, new
    gc.collect()
    assert first.frees == [old_address]
    assert second.frees == [new_address]


# --------------------------------------------------------------------------
# Validation of what the plug-in returns


class Returning(Recorder):
    def __init__(self, address_result):
        super().__init__()
        self.address_result = address_result

    def get_buffer_address(self, handle):
        if isinstance(self.address_result, BaseException):
            raise self.address_result
        return self.address_result


@pytest.mark.parametrize("result, exc", [
    ("0x1000", TypeError), (None, TypeError), (1.5, TypeError), (True, TypeError),
    (0, ValueError), (-4096, ValueError), (2**64, ValueError), (2**200, ValueError),
    (2**64 - 8, ValueError),            # the block would wrap around the address space
    (KeyError("no such handle"), KeyError),
])
def test_bad_addresses_refused(result, exc, registry_unchanged):
    plugin = Returning(result)
    name = fresh_name()
    memmanager.register_allocator(name, plugin)
    with registry_unchanged():
        with pytest.raises(exc):
            Buffer(16, 1, allocator=name)
    assert plugin.frees == []            # a refused address is never freed


def test_overlapping_address_refused(make_buffer, registry_unchanged):
    victim = make_buffer(64, 1, init_value=5)
    plugin = Returning(victim.address + 8)
    name = fresh_name()
    memmanager.register_allocator(name, plugin)
    with registry_unchanged():
        with pytest.raises(memmanager.OverlapError):
            Buffer(16, 1, allocator=name)
    assert plugin.frees == []
    assert victim[:] == bytes([5]) * 64


def test_malloc_exceptions_propagate(registry_unchanged):
    class Failing(Recorder):
        def malloc(self, *args):
            raise MemoryError("plug-in is out of memory")

    name = fresh_name()
    memmanager.register_allocator(name, Failing())
    stub_calls = []
    with registry_unchanged():
        with pytest.raises(MemoryError, match="plug-in is out"):
            Buffer(16, 1, allocator=name, death_stub=stub_calls.append, delayed_gc=True)
    gc.collect()
    assert stub_calls == []


def test_none_from_malloc_is_out_of_memory(registry_unchanged):
    class Exhausted(Recorder):
        def malloc(self, *args):
            super().malloc(*args)
            return None

        def consume(self, *args):
            super().consume(*args)
            return None

    plugin = Exhausted()
    name = fresh_name()
    memmanager.register_allocator(name, plugin)
    with registry_unchanged():
        with pytest.raises(MemoryError, match="None"):
            Buffer(16, 1, allocator=name)
        with pytest.raises(ValueError, match="None"):
            Buffer.consume(b"abc", 3, 1, allocator=name)
    assert plugin.frees == []


def test_free_errors_go_to_unraisable():
    class FailingFree(Recorder):
        def free(self, address):
            super().free(address)
            raise RuntimeError("free failed")

    plugin = FailingFree()
    name = fresh_name()
    memmanager.register_allocator(name, plugin)
    buf = Buffer(8, 1, allocator=name)
    address = buf.address
    with catch_unraisable() as seen:
        buf.release()
        del buf
        gc.collect()
    assert [type(s[1]) for s in seen] == [RuntimeError]
    assert plugin.frees == [address]              # called once, not retried
    assert memmanager.stats()[name]["live_buffers"] == 0
    assert memmanager._core._registry_check() >= 0


# --------------------------------------------------------------------------
# consume


def test_consume_through_plugin(recorder):
    source = b"hello, plug-in"
    buf = Buffer.consume(source, 5, 1, allocator=recorder.name, delayed_gc=False, flavour="x")
    assert recorder.consumes == [(source, 5, {"flavour": "x"})]
    assert buf[:] == b"hello"
    assert buf.allocator == recorder.name
    address = buf.address
    buf.release()
    assert recorder.frees == [address]


def test_consume_readonly_and_refused_keywords(recorder):
    buf = Buffer.consume(b"abcd", 4, 1, allocator=recorder.name, readonly=True, delayed_gc=False)
    assert buf.readonly
    with pytest.raises(ValueError, match="copy"):
        Buffer.consume(b"abcd", 4, 1, allocator=recorder.name, copy=True)
    with pytest.raises(ValueError, match="owner"):
        Buffer.consume(b"abcd", 4, 1, allocator=recorder.name, owner=object())
    assert len(recorder.consumes) == 1


def test_consume_without_consume_method(registry_unchanged):
    plugin = Recorder()
    impl = types.SimpleNamespace(malloc=plugin.malloc, free=plugin.free,
                                 get_buffer_address=plugin.get_buffer_address)
    name = fresh_name()
    memmanager.register_allocator(name, impl)
    with registry_unchanged():
        with pytest.raises(TypeError, match="no consume"):
            Buffer.consume(b"abc", 3, 1, allocator=name)


def test_consume_of_a_managed_address_refused_before_the_plugin(recorder, make_buffer,
                                                                 registry_unchanged):
    victim = make_buffer(32, 1)
    with registry_unchanged():
        with pytest.raises(memmanager.OverlapError):
            Buffer.consume(victim.address + 4, 8, 1, allocator=recorder.name)
    assert recorder.consumes == []


def test_consume_validates_the_address(registry_unchanged):
    plugin = Returning("nope")
    name = fresh_name()
    memmanager.register_allocator(name, plugin)
    with registry_unchanged():
        with pytest.raises(TypeError, match="not an int"):
            Buffer.consume(b"abc", 3, 1, allocator=name)
    assert plugin.frees == []


# --------------------------------------------------------------------------
# Plug-ins doing surprising things while memmanager waits on them


def test_plugin_replacing_itself_mid_call():
    name = fresh_name()
    inner = Recorder()

    class Replacer(Recorder):
        def malloc(self, *args):
            memmanager.register_allocator(name, inner)   # drops the registry's reference
            gc.collect()
            return super().malloc(*args)

    outer = Replacer()
    memmanager.register_allocator(name, outer)
    outer_ref = weakref.ref(outer)
    buf = Buffer(8, 1, allocator=name, init_value=1)
    del outer
    gc.collect()
    assert outer_ref() is not None          # the buffer keeps its allocator
    address = buf.address
    buf.release()
    assert outer_ref().frees == [address]
    assert Buffer(8, 1, allocator=name).allocator == name
    assert len(inner.mallocs) == 1


def test_half_made_buffer_found_by_the_gc_is_harmless():
    name = fresh_name()
    seen = []

    class Snooper(Recorder):
        def malloc(self, *args):
            for obj in gc.get_objects():
                if type(obj) is Buffer and obj.released:
                    seen.append(repr(obj))
                    with pytest.raises(ValueError):
                        obj.nbytes
                    with pytest.raises(ValueError):
                        memoryview(obj)
            return super().malloc(*args)

    memmanager.register_allocator(name, Snooper())
    buf = Buffer(8, 1, allocator=name, init_value=2)
    assert buf[:] == b"\x02" * 8
    assert any("state=released" in r for r in seen)


def test_handle_cycle_is_collected():
    name = fresh_name()

    class Box:
        pass

    store = {}

    class Cyclic(Recorder):
        def malloc(self, num_items, item_size, init_byte, options):
            box = Box()
            box.block = (ctypes.c_char * (num_items * item_size))()
            store["last"] = box
            return box

        def get_buffer_address(self, handle):
            return ctypes.addressof(handle.block)

        def free(self, address):
            self.frees.append(address)

    plugin = Cyclic()
    memmanager.register_allocator(name, plugin)
    buf = Buffer(8, 1, allocator=name)
    store.pop("last").buffer = buf           # handle -> buffer -> handle
    ref = weakref.ref(buf)
    del buf
    gc.collect()
    assert ref() is None
    assert len(plugin.frees) == 1


def test_refcounts_stay_put(recorder):
    refs = lambda: (sys.getrefcount(recorder), sys.getrefcount(Recorder.malloc))  # noqa: E731
    gc.collect()
    before = refs()
    base = memmanager.stats()[recorder.name]["live_buffers"] if recorder.name in memmanager.stats() else 0
    for i in range(200):
        buf = Buffer(4, 2, allocator=recorder.name, init_value=i % 256, extra=i)
        buf.release()
        try:
            Buffer(4, 2, allocator=recorder.name, init_value=999)
        except ValueError:
            pass
    recorder.mallocs.clear()
    gc.collect()
    assert refs() == before
    assert memmanager.stats()[recorder.name]["live_buffers"] == base


def test_allocator_replaced_by_python_code_mid_call():
    """Buffer() holds the allocator it looked up: Python code run by its
    own argument checks (here delayed_gc's __bool__) may register another
    plug-in under the same name, dropping the registry's reference, and the
    call must still use, and free through, the first."""
    first, second = Recorder(), Recorder()
    name = fresh_name()
    memmanager.register_allocator(name, first)

    class Swap:
        def __bool__(self):
            memmanager.register_allocator(name, second)
            gc.collect()
            return False

    buf = Buffer(32, 1, allocator=name, init_value=5, delayed_gc=Swap())
    assert bytes(buf) == b"\x05" * 32
    address = buf.address
    buf.release()
    assert first.frees == [address] and second.frees == []


def test_allocator_replaced_by_its_own_consume():
    """consume() holds the allocator too: a plug-in whose consume() replaces
    itself in the registry is still the one that frees the block."""
    name = fresh_name()

    class SelfReplacing(Recorder):
        def consume(self, source, length, options):
            memmanager.register_allocator(name, Recorder())
            gc.collect()
            return super().consume(source, length, options)

    first = SelfReplacing()
    memmanager.register_allocator(name, first)
    buf = Buffer.consume(b"x" * 32, 32, 1, allocator=name, delayed_gc=False)
    assert bytes(buf) == b"x" * 32
    address = buf.address
    buf.release()
    assert first.frees == [address]


def test_reregistration_under_a_str_subclass_name_that_looks_itself_up():
    """A str subclass's __hash__ runs while the name is re-registered; a
    lookup made from there must not be remembered past the replacement."""
    name = fresh_name()
    memmanager.register_allocator(name, Recorder())
    calls = []

    class Sneaky(str):
        def __hash__(self):
            calls.append(1)
            if len(calls) == 2:                 # inside the table's insert
                Buffer(1, 8, allocator=name).release()
            return str.__hash__(self)

        __eq__ = str.__eq__

    second = Recorder()
    memmanager.register_allocator(Sneaky(name), second)
    [bytearray(200) for _ in range(1000)]       # reuse what was freed
    buf = Buffer(1, 8, allocator=name)
    # The registry stores names as exact str, so the subclass's __hash__
    # runs only in register_allocator's own check, never inside the insert.
    assert len(calls) >= 1
    assert len(second.mallocs) == 1             # the new plug-in made it
    buf.release()
