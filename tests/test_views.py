"""Named views: create_view, get_view, delete_view, clone_view, register_view.

The three built-in kinds (numpy, memoryview, ctypes) alias the buffer both
ways; a stored view holds an export, release() forgets the stored views
first, and a view referenced elsewhere keeps its buffer alive.  Lifetime
tests drop the buffer first, collect, and then use the view.  The last part
checks the View::PDL example (examples/view_pdl.py and the tour).
"""

import ctypes
import gc
import os
import pathlib
import runpy
import subprocess
import sys
import weakref

import numpy
import pytest
from hypothesis import given
from hypothesis import strategies as st

import memmanager
from memmanager import Buffer, UnknownViewKindError

ROOT = pathlib.Path(__file__).resolve().parent.parent

KINDS = ["numpy", "memoryview", "ctypes"]


def first_byte(view):
    """The first byte a view sees, whatever its kind."""
    return bytes(memoryview(view).cast("B")[:1])[0]


def live_count():
    gc.collect()
    return memmanager.stats()["total"]["live_buffers"]


# ---------------------------------------------------------------------------
# Kinds and defaults
# ---------------------------------------------------------------------------

def test_builtin_kinds_are_registered():
    assert {"numpy", "memoryview", "ctypes"} <= set(memmanager.view_kinds())


@pytest.mark.parametrize("kind", KINDS)
def test_default_name_and_get_view_returns_the_stored_view(make_buffer, kind):
    buf = make_buffer(8, 1, init_value=3)
    view = buf.create_view(kind)
    assert buf.view_names() == [f"{kind}_default"]
    assert buf.get_view(f"{kind}_default") is view
    assert buf.exports == 1


@pytest.mark.parametrize("kind", KINDS)
def test_views_alias_the_buffer_both_ways(make_buffer, kind):
    buf = make_buffer(8, 1, init_value=3)
    view = buf.create_view(kind)
    memoryview(view).cast("B")[0] = 200
    assert buf[0] == 200
    buf[0] = 17
    assert first_byte(view) == 17


def test_numpy_defaults_are_all_bytes_as_uint8(make_buffer):
    buf = make_buffer(6, 2, init_value=9)
    view = buf.create_view("numpy")
    assert view.dtype == numpy.uint8 and view.shape == (12,)
    assert view.ctypes.data == buf.address


@pytest.mark.parametrize("dtype, shape, order, offset", [
    ("<i2", None, "C", 0),
    (">u4", (2, 2), "C", 0),
    ("f8", (1,), "C", 8),
    ("u1", (3, 4), "F", 4),
    ("<i2", (2, 2, 2), "F", 0),
    ("u1", 5, "C", 11),
])
def test_numpy_options_match_frombuffer(make_buffer, dtype, shape, order, offset):
    buf = make_buffer(16, 1)
    buf[:] = bytes(range(16))
    view = buf.create_view("numpy", dtype=dtype, shape=shape, order=order, offset=offset)
    itemsize = numpy.dtype(dtype).itemsize
    dims = (shape,) if isinstance(shape, int) else shape or ((16 - offset) // itemsize,)
    count = int(numpy.prod(dims))
    expected = numpy.frombuffer(bytes(range(16)), dtype=dtype, count=count,
                                offset=offset).reshape(dims, order=order)
    assert view.dtype == numpy.dtype(dtype) and view.shape == expected.shape
    numpy.testing.assert_array_equal(view, expected)
    assert view.flags.f_contiguous if order == "F" else view.flags.c_contiguous
    assert numpy.shares_memory(view, numpy.asarray(buf))


def test_memoryview_options(make_buffer):
    buf = make_buffer(12, 1)
    buf[:] = bytes(range(12))
    view = buf.create_view("memoryview", format="H", shape=(2, 3))
    assert view.format == "H" and view.shape == (2, 3)
    assert view.tolist() == memoryview(bytes(range(12))).cast("H", (2, 3)).tolist()
    tail = buf.create_view("memoryview", offset=10, view_name="tail")
    assert tail.tolist() == [10, 11]


def test_ctypes_options(make_buffer):
    buf = make_buffer(8, 1)
    buf[:] = bytes(range(8))
    default = buf.create_view("ctypes")
    assert type(default)._type_ is ctypes.c_uint8 and len(default) == 8
    words = buf.create_view("ctypes", ctype=ctypes.c_uint16 * 2, offset=4,
                            view_name="words")
    assert list(words) == list(memoryview(bytes(range(4, 8))).cast("H"))
    words[0] = 0xFFFF
    assert buf[4] == buf[5] == 0xFF

    class Pair(ctypes.Structure):
        _fields_ = [("a", ctypes.c_uint8), ("b", ctypes.c_uint8)]

    pair = buf.create_view("ctypes", ctype=Pair, view_name="pair")
    assert (pair.a, pair.b) == (0, 1)


def test_view_name_and_replacement(make_buffer):
    buf = make_buffer(8, 1)
    first = buf.create_view("numpy", view_name="v")
    assert buf.exports == 1
    second = buf.create_view("memoryview", view_name="v")
    assert buf.get_view("v") is second
    assert buf.view_names() == ["v"]
    assert buf.exports == 2          # `first` is still referenced here
    del first
    assert buf.exports == 1          # the replaced view's export has ended
    del second
    assert buf.exports == 1          # the stored one holds its export


# ---------------------------------------------------------------------------
# Refusals: nothing is stored, no export is left behind
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind, options", [
    ("numpy", {"shape": (17,)}),
    ("numpy", {"dtype": "<i4", "shape": (2, 3)}),
    ("numpy", {"offset": 8, "shape": (9,)}),
    ("numpy", {"dtype": "<i2", "offset": 1}),       # 15 bytes: not whole int16s
    ("numpy", {"order": "K"}),
    ("numpy", {"offset": 17}),
    ("numpy", {"shape": (-1,)}),
    ("memoryview", {"format": "i", "shape": (5,)}),
    ("memoryview", {"format": "not a format"}),
    ("memoryview", {"format": "q"}),                # 16 bytes: fine...
    ("ctypes", {"ctype": ctypes.c_uint8 * 17}),
    ("ctypes", {"ctype": ctypes.c_uint64, "offset": 9}),
])
def test_shapes_that_do_not_fit_raise_value_error(make_buffer, kind, options):
    buf = make_buffer(16, 1)
    if options == {"format": "q"}:      # ...but 3 of them are not
        options = {"format": "q", "shape": (3,)}
    with pytest.raises(ValueError):
        buf.create_view(kind, **options)
    assert buf.view_names() == [] and buf.exports == 0


@pytest.mark.parametrize("kind, options", [
    ("numpy", {"dtype": object}),
    ("numpy", {"shape": "ab"}),
    ("numpy", {"offset": 1.0}),
    ("numpy", {"colour": "red"}),
    ("memoryview", {"format": 2}),
    ("ctypes", {"ctype": int}),
    ("ctypes", {"offset": True}),
])
def test_bad_option_types_raise_type_error(make_buffer, kind, options):
    buf = make_buffer(16, 1)
    with pytest.raises(TypeError):
        buf.create_view(kind, **options)
    assert buf.view_names() == [] and buf.exports == 0


def test_unknown_kind(make_buffer):
    buf = make_buffer(8, 1)
    with pytest.raises(UnknownViewKindError, match="PDL") as info:
        buf.create_view("PDL")
    assert isinstance(info.value, (LookupError, ValueError, memmanager.MemManagerError))
    with pytest.raises(TypeError):
        buf.create_view(3)
    with pytest.raises(TypeError):
        buf.create_view("numpy", view_name=3)
    assert buf.view_names() == []


def test_missing_names(make_buffer):
    buf = make_buffer(8, 1)
    buf.create_view("numpy")
    for method in (buf.get_view, buf.delete_view, buf.clone_view):
        with pytest.raises(KeyError, match="nope"):
            method("nope")
        with pytest.raises(TypeError):
            method(0)
    assert buf.view_names() == ["numpy_default"]


def test_read_only_buffers(make_buffer):
    buf = Buffer.consume(bytes(range(8)), 8, 1, delayed_gc=False)
    array = buf.create_view("numpy")
    assert not array.flags.writeable
    with pytest.raises(ValueError):
        array[0] = 1
    assert buf.create_view("memoryview").readonly
    with pytest.raises(TypeError, match="read-only"):
        buf.create_view("ctypes")
    assert buf.view_names() == ["numpy_default", "memoryview_default"]
    del array
    buf.release()


def test_released_buffer(make_buffer):
    buf = make_buffer(8, 1)
    buf.release()
    for kind in KINDS:
        with pytest.raises(ValueError, match="released"):
            buf.create_view(kind)
    for call in (lambda: buf.get_view("x"), buf.view_names,
                 lambda: buf._store_view("x", "numpy", object())):
        with pytest.raises(ValueError, match="released"):
            call()


def test_a_failing_create_stores_nothing(make_buffer):
    def create(buffer, **options):
        memoryview(buffer)       # takes and gives back an export
        raise RuntimeError("no")

    memmanager.register_view("test_failing", create, lambda view: view)
    buf = make_buffer(8, 1)
    with pytest.raises(RuntimeError):
        buf.create_view("test_failing")
    assert buf.view_names() == [] and buf.exports == 0


# ---------------------------------------------------------------------------
# delete_view, clone_view
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_delete_view_ends_the_export(make_buffer, kind):
    buf = make_buffer(8, 1)
    buf.create_view(kind, view_name="v")
    assert buf.exports == 1
    buf.delete_view("v")
    assert buf.exports == 0 and buf.view_names() == []
    with pytest.raises(KeyError):
        buf.get_view("v")


@pytest.mark.parametrize("kind", KINDS)
def test_clone_view_is_an_independent_copy(make_buffer, kind):
    buf = make_buffer(8, 1, init_value=5)
    options = {"memoryview": {"format": "H", "shape": (2, 2)},
               "numpy": {"dtype": "u2", "shape": (2, 2)},
               "ctypes": {"ctype": ctypes.c_uint16 * 4}}[kind]
    view = buf.create_view(kind, view_name="v", **options)
    clone = buf.clone_view("v")
    assert type(clone) is type(view)
    assert memoryview(clone).format == memoryview(view).format
    assert memoryview(clone).shape == memoryview(view).shape
    assert bytes(clone) == bytes(view)
    exports = buf.exports
    memoryview(clone).cast("B")[0] = 99       # the clone changes alone
    assert buf[0] == 5
    buf[1] = 77                               # and the buffer alone
    assert memoryview(clone).cast("B")[1] == 5
    assert buf.exports == exports             # a clone holds no export
    assert buf.view_names() == ["v"]          # and is not stored


# ---------------------------------------------------------------------------
# release() and lifetime
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_release_forgets_stored_views(kind):
    buf = Buffer(8, 1)
    buf.create_view(kind)
    buf.create_view(kind, view_name="second")
    assert buf.exports == 2
    buf.release()
    assert buf.released


@pytest.mark.parametrize("kind", KINDS)
def test_a_view_referenced_elsewhere_blocks_release(kind):
    buf = Buffer(8, 1, init_value=1)
    view = buf.create_view(kind)
    with pytest.raises(BufferError, match="1 live export"):
        buf.release()
    assert not buf.released
    assert buf.view_names() == []     # forgotten, as DESIGN says
    assert first_byte(view) == 1      # and still valid
    del view
    buf.release()
    assert buf.released


@pytest.mark.parametrize("kind", KINDS)
def test_view_outlives_dropped_buffer(kind):
    stubs = []
    buf = Buffer(16, 1, init_value=7, death_stub=stubs.append)
    ref = weakref.ref(buf)
    view = buf.create_view(kind)
    del buf
    gc.collect()
    assert ref() is not None and stubs == []
    memoryview(view).cast("B")[3] = 42          # the memory is still there
    assert bytes(memoryview(view).cast("B")) == bytes([7, 7, 7, 42] + [7] * 12)
    assert ref().get_view(f"{kind}_default") is view
    del view
    gc.collect()
    assert ref() is None and len(stubs) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_buffer_with_only_stored_views_is_collected(kind):
    before = live_count()
    stubs = []
    buf = Buffer(16, 1, death_stub=stubs.append)
    ref = weakref.ref(buf)
    buf.create_view(kind)
    buf.create_view(kind, view_name="another")
    del buf
    gc.collect()
    assert ref() is None
    assert len(stubs) == 1
    assert live_count() == before


def test_numpy_chain_is_collected_only_when_nothing_else_holds_it():
    buf = Buffer(16, 1)
    ref = weakref.ref(buf)
    view = buf.create_view("numpy", shape=(4, 4), order="F")
    link = view.base                  # an array between the view and the buffer
    del view, buf
    gc.collect()
    assert ref() is not None          # `link` keeps the memory
    assert numpy.asarray(link).sum() >= 0
    del link
    gc.collect()
    assert ref() is None


def test_holding_the_entry_through_gc_referents_keeps_everything():
    buf = Buffer(16, 1, init_value=2)
    ref = weakref.ref(buf)
    buf.create_view("numpy", shape=(4, 4))
    # The views dict is private: the buffer reports its entries directly.
    assert not [o for o in gc.get_referents(buf) if isinstance(o, dict)]
    (entry,) = [o for o in gc.get_referents(buf)
                if type(o).__name__ == "_ViewEntry"]
    del buf
    gc.collect()
    assert ref() is not None          # the entry holds view and anchor
    (view,) = [o for o in gc.get_referents(entry) if isinstance(o, numpy.ndarray)]
    assert int(view.sum()) == 32
    del entry, view
    gc.collect()
    assert ref() is None


def test_release_in_a_view_destructor_during_release():
    class ReleasesOnDeath:
        def __del__(self):
            buf.release()

    memmanager.register_view("test_reentrant", lambda buffer: ReleasesOnDeath(),
                             lambda view: view)
    stubs = []
    buf = Buffer(8, 1, death_stub=stubs.append)
    buf.create_view("test_reentrant")
    buf.release()     # forgetting the view releases the buffer first: no error
    assert buf.released and len(stubs) == 1


def test_subclass_views(make_buffer):
    class Sub(Buffer):
        pass

    buf = Sub(4, 1, init_value=1)
    assert buf.create_view("numpy").sum() == 4
    buf.release()


@given(dtype=st.sampled_from(["u1", "<i2", ">i2", "<f4", "<u8", "c8"]),
       nbytes=st.integers(1, 64), offset=st.integers(0, 64),
       count=st.integers(0, 70))
def test_numpy_views_fit_or_raise(dtype, nbytes, offset, count):
    buf = Buffer(nbytes, 1)
    try:
        buf[:] = bytes(i % 251 for i in range(nbytes))
        itemsize = numpy.dtype(dtype).itemsize
        fits = offset <= nbytes and count * itemsize <= nbytes - offset
        if not fits:
            with pytest.raises(ValueError):
                buf.create_view("numpy", dtype=dtype, shape=(count,), offset=offset)
            assert buf.exports == 0
            return
        view = buf.create_view("numpy", dtype=dtype, shape=(count,), offset=offset)
        expected = numpy.frombuffer(buf[:], dtype=dtype, count=count, offset=offset)
        assert view.tobytes() == expected.tobytes()
        del view
    finally:
        buf.release()


# ---------------------------------------------------------------------------
# register_view
# ---------------------------------------------------------------------------

def test_register_a_third_party_kind(make_buffer):
    def create(buffer, *, start=0):
        return buffer.region(start)

    def clone(view):
        return bytes(view)

    memmanager.register_view("test_tail", create, clone)
    assert "test_tail" in memmanager.view_kinds()
    buf = make_buffer(8, 1, init_value=4)
    tail = buf.create_view("test_tail", start=6)
    assert buf.get_view("test_tail_default") is tail and len(tail) == 2
    assert buf.clone_view("test_tail_default") == b"\x04\x04"
    memmanager.register_view("test_tail", create, lambda view: "replaced")
    assert buf.clone_view("test_tail_default") == "replaced"


@pytest.mark.parametrize("args, error", [
    ((1, len, len), TypeError),
    (("", len, len), ValueError),
    (("test_x", None, len), TypeError),
    (("test_x", len, 3), TypeError),
    (("numpy", len, len), ValueError),
])
def test_register_view_refusals(args, error):
    kinds = memmanager.view_kinds()
    with pytest.raises(error):
        memmanager.register_view(*args)
    assert memmanager.view_kinds() == kinds


def test_numpy_is_imported_lazily():
    code = ("import sys, memmanager\n"
            "b = memmanager.Buffer(8, 1)\n"
            "b.create_view('memoryview'); b.create_view('ctypes')\n"
            "import pickle; pickle.loads(pickle.dumps(b, 5))\n"
            "assert 'numpy' not in sys.modules, 'numpy imported'\n"
            "b.create_view('numpy')\n"
            "assert 'numpy' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------------------
# The View::PDL example
# ---------------------------------------------------------------------------

def test_view_pdl_steps():
    buf = Buffer(10, 1, init_value=40)
    byte_view = buf.create_view("numpy", view_name="bytes")
    assert byte_view.tolist() == [40] * 10
    byte_view[5:] = 60
    byte_view //= 10
    assert buf[:] == bytes([4] * 5 + [6] * 5)
    clone = buf.clone_view("bytes")
    clone += 1
    assert buf.get_view("bytes").tolist() == [4] * 5 + [6] * 5
    int16_view = buf.create_view("numpy", dtype="<i2", view_name="int16")
    assert int16_view.tolist() == [1028, 1028, 1540, 1542, 1542]
    assert clone.tolist() == [5] * 5 + [7] * 5
    del byte_view, int16_view
    buf.release()


def test_view_pdl_example_script(capsys):
    runpy.run_path(str(ROOT / "examples" / "view_pdl.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "int16 view:      [1028 1028 1540 1542 1542]" in out
    assert "04 04 04 04 04 06 06 06 06 06" in out
    assert "buffer, intact:  [4 4 4 4 4 6 6 6 6 6]" in out
    assert "released:        True" in out


def test_view_pdl_in_the_tour():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "memmanager", "demo"],
                          capture_output=True, text=True, timeout=120, env=env,
                          check=True)
    section = done.stdout.split("Views: the View::PDL example")[1]
    assert "[1028 1028 1540 1542 1542]" in section
    assert "[5 5 5 5 5 7 7 7 7 7] [4 4 4 4 4 6 6 6 6 6]" in section
    assert done.stderr == ""
