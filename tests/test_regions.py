"""extract_buffer_region(), region() and the sequence protocol: DESIGN
section 2 (Regions) and docs/api-decisions.md (regions and items)."""

import ctypes
import gc

import numpy as np
import pytest
from hypothesis import given, strategies as st

import memmanager
from memmanager import Buffer

DATA = bytes(range(100, 132))  # 32 distinct bytes
N = len(DATA)


@pytest.fixture(params=["PyAlloc", "CMalloc"])
def buf(request, make_buffer):
    b = make_buffer(N, 1, allocator=request.param)
    b[:] = DATA
    assert bytes(b) == DATA
    return b


@pytest.fixture
def ro_buf():
    """A read-only buffer: zero-copy over a bytes object."""
    source = bytes(bytearray(DATA))  # a fresh object, not the module constant
    b = Buffer.consume(source, N, 1)
    assert b.readonly is True
    yield b
    b.release()


def address_of(view):
    """Address of the first byte of a (possibly read-only) buffer."""
    return np.frombuffer(view, dtype=np.uint8).__array_interface__["data"][0]


# --------------------------------------------------------------------------
# extract_buffer_region: the Perl method, end inclusive

def extract_model(start, end, n=N):
    start = 0 if start is None else start
    end = n - 1 if end is None else end
    if start < 0 or end < 0 or end >= n or start > end:
        return None
    return DATA[start:end + 1]


def test_extract_defaults(buf):
    assert buf.extract_buffer_region() == DATA
    assert buf.extract_buffer_region(3) == DATA[3:]
    assert buf.extract_buffer_region(None, None) == DATA
    assert buf.extract_buffer_region(None, 0) == DATA[:1]
    assert buf.extract_buffer_region(None, 5) == DATA[:6]


def test_extract_keywords(buf):
    # The DESIGN signature is extract_buffer_region(start=None, end=None).
    assert buf.extract_buffer_region(end=5) == DATA[:6]
    assert buf.extract_buffer_region(start=2, end=4) == DATA[2:5]
    assert buf.extract_buffer_region(start=30) == DATA[30:]


def test_extract_inclusive_end(buf):
    assert buf.extract_buffer_region(3, 5) == DATA[3:6]
    assert buf.extract_buffer_region(5, 5) == DATA[5:6]
    assert buf.extract_buffer_region(0, N - 1) == DATA
    assert buf.extract_buffer_region(N - 1) == DATA[-1:]
    assert buf.extract_buffer_region(N - 1, N - 1) == DATA[-1:]


@pytest.mark.parametrize(
    "start, end",
    [(0, N), (0, N + 5), (N, None), (N, N), (5, 4), (N - 1, N - 2), (-1, None),
     (-1, 5), (0, -1), (-3, -1), (None, N), (None, -1), (0, 2**70), (-(2**70), 3),
     (2**70, None)],
)
def test_extract_none(buf, start, end):
    assert buf.extract_buffer_region(start, end) is None


def test_extract_no_warning(buf, recwarn):
    assert buf.extract_buffer_region(0, N) is None
    assert len(recwarn) == 0


def test_extract_returns_new_bytes(buf):
    part = buf.extract_buffer_region(2, 9)
    assert type(part) is bytes
    whole = buf.extract_buffer_region()
    buf[2] = 0
    buf[0] = 0
    assert part == DATA[2:10]
    assert whole == DATA
    assert buf.exports == 0


@given(st.one_of(st.none(), st.integers(-3, N + 3)), st.one_of(st.none(), st.integers(-3, N + 3)))
def test_extract_model(start, end):
    b = Buffer(N, 1)
    try:
        b[:] = DATA
        assert b.extract_buffer_region(start, end) == extract_model(start, end)
    finally:
        b.release()


@pytest.mark.parametrize("start, end", [("1", None), (1.0, 3), (None, 3.0), (0, "5"), (b"0", 1), ([0], 1)])
def test_extract_type_error(buf, start, end):
    with pytest.raises(TypeError):
        buf.extract_buffer_region(start, end)


# --------------------------------------------------------------------------
# region(): zero-copy, half-open

def test_region_whole(buf):
    view = buf.region()
    assert isinstance(view, memoryview)
    assert len(view) == N
    assert view.format == "B"
    assert view.readonly is False
    assert bytes(view) == DATA
    assert address_of(view) == buf.address
    view.release()


@pytest.mark.parametrize("start, stop", [(2, 5), (0, 1), (N - 1, N), (0, N), (7, None), (N, N), (0, 0), (4, 4)])
def test_region_bounds(buf, start, stop):
    view = buf.region(start, stop)
    expected = DATA[start:stop]
    assert bytes(view) == expected
    assert len(view) == len(expected)
    if len(expected):
        assert address_of(view) == buf.address + start
    view.release()


def test_region_keywords(buf):
    with buf.region(start=3, stop=6) as view:
        assert bytes(view) == DATA[3:6]
    with buf.region(stop=2) as view:
        assert bytes(view) == DATA[:2]
    with buf.region(5) as view:
        assert bytes(view) == DATA[5:]


def test_region_writes_through(buf):
    view = buf.region(4, 8)
    view[0] = 0xAA
    view[1:3] = b"\x01\x02"
    assert buf[4] == 0xAA
    assert buf.extract_buffer_region(4, 7) == b"\xaa\x01\x02" + DATA[7:8]
    buf[7] = 0x55
    assert view[3] == 0x55
    assert ctypes.string_at(buf.address + 4, 4) == bytes(view)
    view.release()


@pytest.mark.parametrize("start, stop", [(0, N + 1), (-1, None), (-1, 3), (0, -1), (5, 2), (N + 1, None),
                                         (N + 1, N + 1), (2**70, None), (0, 2**70), (-(2**70), 0)])
def test_region_index_error(buf, start, stop):
    with pytest.raises(IndexError):
        buf.region(start, stop)
    assert buf.exports == 0


@pytest.mark.parametrize("start, stop", [("1", None), (1.0, None), (0, 2.0), (0, "3"), ([0], 1)])
def test_region_type_error(buf, start, stop):
    with pytest.raises(TypeError):
        buf.region(start, stop)
    assert buf.exports == 0


@given(st.integers(-2, N + 2), st.one_of(st.none(), st.integers(-2, N + 2)))
def test_region_model(start, stop):
    b = Buffer(N, 1)
    try:
        b[:] = DATA
        real_stop = N if stop is None else stop
        if 0 <= start <= real_stop <= N:
            with b.region(start, stop) as view:
                assert bytes(view) == DATA[start:real_stop]
        else:
            with pytest.raises(IndexError):
                b.region(start, stop)
        assert b.exports == 0
    finally:
        b.release()


def test_region_readonly(buf):
    view = buf.region(2, 6, readonly=True)
    assert view.readonly is True
    with pytest.raises(TypeError):
        view[0] = 1
    with pytest.raises(TypeError):
        view[0:2] = b"xy"
    assert bytes(view) == DATA[2:6]
    buf[2] = 9
    assert view[0] == 9  # still zero-copy
    assert address_of(view) == buf.address + 2
    with pytest.raises((TypeError, BufferError)):
        (ctypes.c_char * 4).from_buffer(view)
    view.release()


def test_region_of_readonly_buffer(ro_buf):
    view = ro_buf.region(readonly=True)
    assert bytes(view) == DATA
    assert view.readonly is True
    view.release()
    # Without readonly=True a read-only buffer still gives no way to write.
    view = ro_buf.region(1, 5)
    assert view.readonly is True
    with pytest.raises(TypeError):
        view[0] = 0
    view.release()
    assert bytes(ro_buf) == DATA


def test_region_holds_export(buf):
    first = buf.region()
    assert buf.exports == 1
    second = buf.region(1, 2)
    assert buf.exports == 2
    with pytest.raises(BufferError, match=r"^cannot release: the buffer has 2 live export\(s\)$"):
        buf.release()
    assert buf.released is False
    assert bytes(buf) == DATA
    assert buf.address in {e.address for e in memmanager.live_buffers()}
    first.release()
    assert buf.exports == 1
    with pytest.raises(BufferError, match=r"\b1 live export"):
        buf.release()
    del second
    assert buf.exports == 0
    buf.release()
    assert buf.released is True


def test_region_keeps_buffer_alive():
    b = Buffer(N, 1, allocator="CMalloc")
    b[:] = DATA
    addr = b.address
    view = b.region(1, 5)
    del b
    gc.collect()
    assert addr in {e.address for e in memmanager.live_buffers()}
    assert bytes(view) == DATA[1:5]
    view.release()
    gc.collect()
    assert addr not in {e.address for e in memmanager.live_buffers()}


def test_region_slice_keeps_export(buf):
    view = buf.region(0, 8)
    sub = view[2:4]
    del view
    assert buf.exports == 1  # the slice keeps the export
    assert bytes(sub) == DATA[2:4]
    sub.release()
    assert buf.exports == 0


# --------------------------------------------------------------------------
# sequence protocol

def test_getitem(buf):
    assert buf[0] == DATA[0]
    assert buf[5] == DATA[5]
    assert buf[N - 1] == DATA[-1]
    assert buf[-1] == DATA[-1]
    assert buf[-N] == DATA[0]
    assert type(buf[0]) is int


@pytest.mark.parametrize("index", [N, N + 1, -N - 1, 2**70, -(2**70)])
def test_getitem_out_of_range(buf, index):
    with pytest.raises(IndexError):
        buf[index]


@pytest.mark.parametrize("index", ["0", 1.0, None, b"0", (0,)])
def test_getitem_type_error(buf, index):
    with pytest.raises(TypeError):
        buf[index]


def test_index_protocol(buf):
    assert buf[np.int64(3)] == DATA[3]
    assert buf[np.uint8(2)] == DATA[2]


@pytest.mark.parametrize(
    "key",
    [slice(2, 5), slice(None), slice(None, None, 2), slice(None, None, -1), slice(1, 20, 3),
     slice(5, 2), slice(-5, None), slice(-100, 100), slice(30, 2, -4), slice(N, None)],
)
def test_slices(buf, key):
    part = buf[key]
    assert type(part) is bytes
    assert part == DATA[key]


def test_slice_is_copy(buf):
    part = buf[0:4]
    buf[0] = 0
    assert part == DATA[0:4]
    assert buf.exports == 0


def test_setitem(buf):
    buf[0] = 0
    buf[-1] = 255
    buf[3] = np.uint8(7)
    expected = bytearray(DATA)
    expected[0] = 0
    expected[-1] = 255
    expected[3] = 7
    assert bytes(buf) == bytes(expected)


@pytest.mark.parametrize("value, exc", [(256, ValueError), (-1, ValueError), (2**70, ValueError),
                                        ("a", TypeError), (1.0, TypeError), (b"a", TypeError), (None, TypeError)])
def test_setitem_bad_value(buf, value, exc):
    with pytest.raises(exc):
        buf[0] = value
    assert bytes(buf) == DATA


@pytest.mark.parametrize("index", [N, -N - 1])
def test_setitem_out_of_range(buf, index):
    with pytest.raises(IndexError):
        buf[index] = 1
    assert bytes(buf) == DATA


@pytest.mark.parametrize("data", [b"xyz", bytearray(b"xyz"), memoryview(b"xyz"), np.frombuffer(b"xyz", np.uint8),
                                  np.array([120, 121, 122], dtype=np.uint8)])
def test_slice_assignment(buf, data):
    buf[2:5] = data
    assert bytes(buf) == DATA[:2] + b"xyz" + DATA[5:]


def test_slice_assignment_from_itself(buf):
    # Overlapping source and destination (memmove semantics).
    with memoryview(buf) as whole:
        buf[1:9] = whole[0:8]
    assert bytes(buf) == DATA[:1] + DATA[0:8] + DATA[9:]


def test_slice_assignment_wide_memoryview(buf):
    wide = memoryview(np.array([0x01020304], dtype="<u4"))
    buf[0:4] = wide
    assert buf[0:4] == b"\x04\x03\x02\x01"


@pytest.mark.parametrize("key, data", [(slice(2, 5), b"xy"), (slice(2, 5), b"wxyz"), (slice(None), b""),
                                       (slice(0, 0), b"a"), (slice(None, None, 2), b"a" * (N // 2 + 1)),
                                       (slice(None, None, 2), b"a" * (N // 2 - 1))])
def test_slice_assignment_wrong_length(buf, key, data):
    with pytest.raises(ValueError):
        buf[key] = data
    assert bytes(buf) == DATA


@pytest.mark.parametrize("data", ["xyz", 3, [1, 2, 3], None])
def test_slice_assignment_type_error(buf, data):
    with pytest.raises(TypeError):
        buf[0:3] = data
    assert bytes(buf) == DATA


def test_extended_slice_assignment(buf):
    buf[::2] = bytes(N // 2)
    expected = bytearray(DATA)
    expected[::2] = bytes(N // 2)
    assert bytes(buf) == bytes(expected)
    buf[::-3] = b"\xff" * len(range(N - 1, -1, -3))
    expected[::-3] = b"\xff" * len(range(N - 1, -1, -3))
    assert bytes(buf) == bytes(expected)


def test_empty_slice_assignment(buf):
    buf[3:3] = b""
    assert bytes(buf) == DATA


@given(st.slices(N), st.binary(min_size=0, max_size=N + 2))
def test_slice_assignment_model(key, data):
    b = Buffer(N, 1)
    try:
        b[:] = DATA
        model = bytearray(DATA)
        length = len(range(*key.indices(N)))
        if len(data) == length:
            b[key] = data
            model[key] = data
        else:
            with pytest.raises(ValueError):
                b[key] = data
        assert bytes(b) == bytes(model)
        assert b[key] == bytes(model[key])
    finally:
        b.release()


def test_delete_is_type_error(buf):
    with pytest.raises(TypeError):
        del buf[0]
    with pytest.raises(TypeError):
        del buf[0:2]
    with pytest.raises(TypeError):
        del buf[::2]
    assert bytes(buf) == DATA
    assert len(buf) == N


def test_iteration(buf):
    assert list(buf) == list(DATA)
    assert [x for x in buf] == list(DATA)
    assert DATA[7] in buf
    assert sum(buf) == sum(DATA)


def test_bytes_and_bytearray(buf):
    assert bytes(buf) == DATA
    assert bytearray(buf) == bytearray(DATA)
    assert buf.exports == 0


def test_readonly_buffer_rejects_writes(ro_buf):
    with pytest.raises(TypeError):
        ro_buf[0] = 1
    with pytest.raises(TypeError):
        ro_buf[0:2] = b"ab"
    with pytest.raises(TypeError):
        ro_buf[::2] = bytes(N // 2)
    assert bytes(ro_buf) == DATA
    assert ro_buf[3] == DATA[3]
    assert ro_buf[1:4] == DATA[1:4]
    assert ro_buf.extract_buffer_region(1, 3) == DATA[1:4]


def test_multibyte_items_are_bytes(make_buffer):
    b = make_buffer(4, 4, init_value=1)
    assert len(b) == 16
    assert b[15] == 1
    with pytest.raises(IndexError):
        b[16]
    assert b.extract_buffer_region(12) == b"\x01" * 4
    assert len(b.region()) == 16


# --------------------------------------------------------------------------
# re-entrancy: an index whose __index__ releases the buffer must not make the
# operation touch freed memory (DESIGN section 10: no crash, no
# use-after-free).  Run in a child interpreter, since the failure mode is a
# crash.

REENTRANT_SCRIPT = """
import sys
from memmanager import Buffer

class Evil:
    def __init__(self, buf, value=0):
        self.buf, self.value = buf, value
    def __index__(self):
        self.buf.release()
        return self.value

buf = Buffer(1 << 20, 1, allocator=sys.argv[1], init_value=1)
ops = {
    "buf[i]": lambda: buf[Evil(buf)],
    "buf[i] = v (index)": lambda: buf.__setitem__(Evil(buf), 5),
    "buf[i] = v (value)": lambda: buf.__setitem__(0, Evil(buf, 5)),
    "buf[a:b]": lambda: buf[Evil(buf):10],
    "buf[a:b] = data": lambda: buf.__setitem__(slice(Evil(buf), 2), b"ab"),
    "region(a, b)": lambda: buf.region(Evil(buf), 10),
    "extract_buffer_region(a, b)": lambda: buf.extract_buffer_region(Evil(buf), 10),
}
try:
    result = ops[sys.argv[2]]()
except (ValueError, BufferError) as exc:
    print("raised", type(exc).__name__, exc)
else:
    print("returned", repr(result)[:60])
"""

REENTRANT_OPS = ["buf[i]", "buf[i] = v (index)", "buf[i] = v (value)", "buf[a:b]", "buf[a:b] = data",
                 "region(a, b)", "extract_buffer_region(a, b)"]


@pytest.mark.parametrize("allocator", ["PyAlloc", "CMalloc"])
@pytest.mark.parametrize("op", REENTRANT_OPS)
def test_release_inside_index_conversion(allocator, op):
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-c", REENTRANT_SCRIPT, allocator, op],
                          cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-500:]}"
    # Either the release is refused while the operation runs (BufferError) or
    # the operation sees the buffer released (ValueError); it never returns
    # data from, or writes to, freed memory.
    assert proc.stdout.startswith("raised"), proc.stdout


# --------------------------------------------------------------------------
# regression: region() must hand its range to its own export (issue 8).
# The memoryview's allocation, before its getbuffer, could start a
# collection whose finalizer exported the same buffer: that export took the
# pending range, and region(8, 16, readonly=True) returned a writable view
# of the whole buffer.

def test_region_range_not_taken_by_a_finalizer():
    buf = Buffer(64, 1, init_value=0)
    taken = []

    class Thief:
        def __init__(self):
            self.me = self          # a cycle: only the collector frees it

        def __del__(self):
            taken.append(memoryview(buf))

    try:
        for extra in range(12):     # where, in the call, the collection starts
            gc.collect()
            gc.disable()
            Thief()
            gc.set_threshold(gc.get_count()[0] + extra)
            gc.enable()
            view = buf.region(8, 16, readonly=True)
            gc.set_threshold(700)
            assert (view.nbytes, view.readonly) == (8, True)
            assert all(t.nbytes == 64 and not t.readonly for t in taken)
            view.release()
            for t in taken:
                t.release()
            taken.clear()
    finally:
        gc.set_threshold(700)
        gc.enable()
    gc.collect()                    # the last Thief, if the loop did not free it
    for t in taken:
        t.release()
    buf.release()
