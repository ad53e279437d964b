"""Death stubs: DESIGN section 6."""

import ctypes
import gc
import sys
import weakref

import pytest

import memmanager
from memmanager import Buffer

from conftest import catch_unraisable, live_addresses

INFO_KEYS = {"buffer_address", "buffer_size", "element_size", "num_of_elements", "identifier"}


@pytest.mark.parametrize("allocator", ["PyAlloc", "CMalloc"])
@pytest.mark.parametrize("how", ["release", "del", "collect_delayed"])
def test_stub_called_once_with_info(allocator, how):
    calls = []

    def stub(*args, **kwargs):
        info = args[0]
        calls.append((args, kwargs, dict(info),
                      ctypes.string_at(info["buffer_address"], info["buffer_size"]),
                      info["buffer_address"] in live_addresses()))

    buf = Buffer(8, 4, allocator=allocator, init_value=0x61, death_stub=stub,
                 delayed_gc=(how == "collect_delayed"))
    buf[0:4] = b"wxyz"
    addr, ident = buf.address, buf.identifier
    expected = b"wxyz" + b"a" * 28
    if how == "release":
        buf.release()
    elif how == "del":
        del buf
    else:
        del buf
        gc.collect()
        assert calls == []
        memmanager.collect_delayed([ident])
    gc.collect()
    assert len(calls) == 1
    args, kwargs, info, content, registered = calls[0]
    assert len(args) == 1 and kwargs == {}
    assert type(args[0]) is dict
    assert INFO_KEYS <= set(info)
    assert info["buffer_address"] == addr
    assert info["buffer_size"] == 32
    assert info["element_size"] == 4
    assert info["num_of_elements"] == 8
    assert info["identifier"] == ident
    assert content == expected  # the stub can read the buffer
    assert registered  # called before the memory is freed
    assert addr not in live_addresses()


def test_stub_not_called_again():
    calls = []
    buf = Buffer(4, 1, death_stub=calls.append)
    buf.release()
    buf.release()
    del buf
    gc.collect()
    assert len(calls) == 1


def test_stub_runs_before_free_via_numpy_view():
    import numpy as np

    seen = []
    buf = Buffer(16, 1, init_value=5, death_stub=lambda info: seen.append(
        np.ctypeslib.as_array((ctypes.c_uint8 * info["buffer_size"]).from_address(info["buffer_address"])).sum()))
    buf.release()
    assert seen == [80]


def test_stub_can_write_buffer_before_free():
    # A stub may scrub the memory (e.g. secrets) before it goes back.
    def scrub(info):
        ctypes.memset(info["buffer_address"], 0, info["buffer_size"])

    buf = Buffer(32, 1, allocator="CMalloc", init_value=0xFF, death_stub=scrub)
    buf.release()
    assert buf.released


@pytest.mark.parametrize("how", ["release", "del"])
def test_raising_stub_goes_to_unraisablehook(how):
    def stub(info):
        raise RuntimeError("stub failed on purpose")

    with catch_unraisable() as unraisable:
        buf = Buffer(16, 1, allocator="CMalloc", death_stub=stub)
        addr = buf.address
        if how == "release":
            buf.release()  # does not raise
            assert buf.released is True
        else:
            del buf
            gc.collect()
    assert len(unraisable) == 1
    exc_type, exc_value, _ = unraisable[0]
    assert exc_type is RuntimeError
    assert str(exc_value) == "stub failed on purpose"
    assert addr not in live_addresses()  # the memory is still freed
    assert memmanager._core._registry_check() == len(memmanager.live_buffers())


def test_raising_stub_keeps_current_exception():
    buf = Buffer(4, 1, death_stub=lambda info: 1 / 0)
    with catch_unraisable() as unraisable:
        try:
            raise KeyError("outer")
        except KeyError:
            buf.release()
            assert sys.exc_info()[0] is KeyError
    assert [t for t, _, _ in unraisable] == [ZeroDivisionError]


def test_raising_stub_pinned():
    buf = Buffer(4, 1, delayed_gc=True, death_stub=lambda info: [][1])
    addr, ident = buf.address, buf.identifier
    del buf
    with catch_unraisable() as unraisable:
        assert memmanager.collect_delayed([ident]) == [ident]
        gc.collect()
    assert [t for t, _, _ in unraisable] == [IndexError]
    assert addr not in live_addresses()


def test_stub_referring_to_its_buffer_is_collected():
    calls = []

    def make():
        def stub(info):
            calls.append(info["identifier"])
            assert buf.identifier == info["identifier"]  # closes over its own buffer

        buf = Buffer(64, 1, allocator="CMalloc", death_stub=stub)
        return weakref.ref(buf), buf.address, buf.identifier

    ref, addr, ident = make()
    assert ref() is not None  # held by the cycle buf -> stub -> cell -> buf
    with catch_unraisable() as unraisable:
        gc.collect()
    assert ref() is None
    assert calls == [ident]
    assert unraisable == []
    assert addr not in live_addresses()


def test_stub_bound_method_cycle():
    calls = []

    class Owner:
        def __init__(self):
            self.buf = Buffer(8, 1, death_stub=self.on_death)

        def on_death(self, info):
            calls.append(info["buffer_size"])

    owner = Owner()
    ref = weakref.ref(owner.buf)
    owner_ref = weakref.ref(owner)
    del owner
    gc.collect()
    assert ref() is None
    assert owner_ref() is None
    assert calls == [8]


def test_stub_is_kept_alive_by_buffer():
    calls = []

    def make_stub():
        def stub(info):
            calls.append(info["buffer_size"])

        return stub

    stub = make_stub()
    stub_ref = weakref.ref(stub)
    buf = Buffer(3, 1, death_stub=stub)
    del stub
    gc.collect()
    assert stub_ref() is not None
    buf.release()
    assert calls == [3]
    del buf
    gc.collect()
    assert stub_ref() is None


@pytest.mark.parametrize("stub", [5, "print", b"x", object(), [print]])
def test_non_callable_stub(stub, registry_unchanged):
    with registry_unchanged():
        with pytest.raises(TypeError):
            Buffer(4, 1, death_stub=stub)
    with registry_unchanged():
        with pytest.raises(TypeError):
            Buffer(4, 1, {"death_stub": stub})


class CallableObject:
    def __init__(self):
        self.calls = 0

    def __call__(self, info):
        self.calls += 1


def test_callables_accepted():
    obj = CallableObject()
    Buffer(4, 1, death_stub=obj).release()
    assert obj.calls == 1
    Buffer(4, 1, death_stub=len).release()  # a builtin
    seen = []
    Buffer(4, 1, death_stub=seen.append).release()  # a bound builtin method
    assert len(seen) == 1


def test_none_stub(make_buffer):
    buf = make_buffer(4, 1, death_stub=None)
    buf.release()
    assert buf.released


def test_stub_resurrecting_buffer_is_safe():
    """A stub that stores the info dict (not the buffer) and a buffer whose
    stub touches the dead buffer through a weakref must not crash."""
    box = {}

    def stub(info):
        box["info"] = info
        target = box.get("ref")
        box["seen_alive"] = target is not None and target() is not None

    buf = Buffer(8, 1, death_stub=stub)
    box["ref"] = weakref.ref(buf)
    with catch_unraisable() as unraisable:
        del buf
        gc.collect()
    assert box["info"]["buffer_size"] == 8
    assert unraisable == []


def test_stub_calling_release_on_itself():
    box = {}

    def stub(info):
        box["buf"].release()  # re-entrant release must be a no-op
        box["called"] = box.get("called", 0) + 1

    buf = Buffer(8, 1, death_stub=stub)
    box["buf"] = buf
    with catch_unraisable() as unraisable:
        buf.release()
    assert box["called"] == 1
    assert buf.released
    box.clear()
    assert unraisable == []


@pytest.mark.parametrize("action", ["create", "query", "collect", "release-other", "consume-own-range"])
def test_stub_may_use_memmanager(action):
    """A stub runs outside the registry's lock: it may create, query and
    release buffers (DESIGN section 6: it may read the buffer)."""
    other = Buffer(8, 1, delayed_gc=True)
    seen = {}

    def stub(info):
        if action == "create":
            Buffer(16, 1).release()
            seen["made"] = Buffer(8, 1)
        elif action == "query":
            seen["live"] = info["buffer_address"] in live_addresses()
            seen["check"] = memmanager._core._registry_check() == len(memmanager.live_buffers())
        elif action == "collect":
            seen["collected"] = memmanager.collect_delayed([other])
        elif action == "release-other":
            other.release()
            seen["released"] = other.released
        else:
            try:
                Buffer.consume(info["buffer_address"], 4, 1, allocator="Borrowed")
            except memmanager.OverlapError:
                seen["overlap"] = True

    buf = Buffer(8, 1, death_stub=stub, delayed_gc=True)
    ident = buf.identifier
    del buf
    with catch_unraisable() as unraisable:
        assert memmanager.collect_delayed([ident]) == [ident]
        gc.collect()
    assert unraisable == []
    expected = {
        "create": lambda: seen["made"].nbytes == 8,
        "query": lambda: seen == {"live": True, "check": True},
        "collect": lambda: seen == {"collected": [other.identifier]},
        "release-other": lambda: seen == {"released": True},
        "consume-own-range": lambda: seen == {"overlap": True},
    }
    assert expected[action]()
    assert memmanager._core._registry_check() == len(memmanager.live_buffers())
    other.release()


def test_resurrected_buffer_stays_tracked():
    """A stub that resurrects its buffer (through a weak reference) leaves
    it under the collector's watch, alive and usable (issue 8: dealloc
    untracked the object before running the stub)."""
    box = {}

    def stub(info):
        box["alive"] = box["ref"]()

    buf = Buffer(8, 1, init_value=4, death_stub=stub)
    box["ref"] = weakref.ref(buf)
    del buf
    resurrected = box.pop("alive")
    assert resurrected is not None
    assert gc.is_tracked(resurrected)
    assert not resurrected.released
    assert resurrected.extract_buffer_region() == b"\x04" * 8
    box["cycle"] = resurrected          # a cycle the collector must be able to break
    resurrected.release()               # the stub ran already: it does not run again
    del resurrected, box
    gc.collect()
