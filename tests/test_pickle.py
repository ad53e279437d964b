"""Pickling: in-band copies with every protocol, out-of-band with protocol 5.

What travels: the bytes, num_items, item_size, read-only-ness (and a
subclass's instance dict).  Unpickling makes an unpinned PyAlloc buffer,
adopting the received memory when it can and copying when it must.  A
small process pool checks the real thing.
"""

import concurrent.futures
import copy
import ctypes
import gc
import multiprocessing
import pickle
import weakref

import pytest

import memmanager
from memmanager import Buffer

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


def address_of(obj):
    """Start address of a writable buffer-protocol object."""
    return ctypes.addressof((ctypes.c_char * len(obj)).from_buffer(obj))


def filled(n, item_size=1, **kwargs):
    buf = Buffer(n, item_size, **kwargs)
    buf[:] = bytes(i % 256 for i in range(n * item_size))
    return buf


class Tagged(Buffer):
    """A subclass with instance attributes (module level, so it pickles)."""


# ---------------------------------------------------------------------------
# In-band
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_round_trip_copies(protocol):
    stubs = []
    buf = filled(6, 4, allocator="CMalloc", delayed_gc=True, death_stub=stubs.append)
    clone = pickle.loads(pickle.dumps(buf, protocol))
    assert type(clone) is Buffer
    assert clone[:] == buf[:]
    assert (clone.num_items, clone.itemsize, clone.nbytes) == (6, 4, 24)
    assert clone.allocator == "PyAlloc"
    assert not clone.readonly and not clone.delayed_gc
    assert clone.address != buf.address
    clone[0] = 255                            # independent of the original
    assert buf[0] == 0
    clone.release()
    assert stubs == []                        # the stub did not travel
    buf.release()
    assert len(stubs) == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_read_only_stays_read_only(protocol):
    buf = Buffer.consume(bytes(range(16)), 16, 1, delayed_gc=False)
    clone = pickle.loads(pickle.dumps(buf, protocol))
    assert clone.readonly and clone[:] == bytes(range(16))
    with pytest.raises(TypeError):
        clone[0] = 1


def test_protocol_5_in_band_adopts_the_unpickled_bytearray():
    buf = filled(16)
    clone = pickle.loads(pickle.dumps(buf, 5))
    assert clone[:] == buf[:] and not clone.readonly
    clone[1] = 200
    assert buf[1] == 1


def test_views_are_not_pickled_and_do_not_block_pickling():
    buf = filled(8)
    buf.create_view("memoryview", view_name="v")
    clone = pickle.loads(pickle.dumps(buf))
    assert clone.view_names() == [] and clone[:] == buf[:]
    buf.release()


def test_subclass_and_its_attributes():
    buf = Tagged(4, 2, init_value=3)
    buf.tag = "hello"
    for protocol in (2, 5):
        clone = pickle.loads(pickle.dumps(buf, protocol))
        assert type(clone) is Tagged and clone.tag == "hello"
        assert clone[:] == b"\x03" * 8 and clone.itemsize == 2


def test_copy_module():
    buf = filled(8)
    for clone in (copy.copy(buf), copy.deepcopy(buf)):
        assert clone[:] == buf[:] and clone.address != buf.address


def test_released_buffer_cannot_be_pickled():
    buf = Buffer(4, 1)
    buf.release()
    for protocol in PROTOCOLS:
        with pytest.raises(ValueError, match="released"):
            pickle.dumps(buf, protocol)


# ---------------------------------------------------------------------------
# Out-of-band (protocol 5)
# ---------------------------------------------------------------------------

def test_out_of_band_sends_the_memory_itself():
    buf = filled(4096)
    buffers = []
    data = pickle.dumps(buf, 5, buffer_callback=buffers.append)
    assert len(data) < 200                    # the bytes are not inside
    (pb,) = buffers
    with pb.raw() as raw:
        assert address_of(raw) == buf.address
    assert buf.exports == 1                   # the PickleBuffer holds one
    with pytest.raises(BufferError):
        buf.release()
    # Loading in the same process: the memory is managed, so it is copied.
    clone = pickle.loads(data, buffers=buffers)
    assert clone[:] == buf[:] and clone.address != buf.address
    del pb, buffers
    assert buf.exports == 0
    buf.release()
    assert clone[:100] == bytes(range(100))   # the copy is its own


def test_out_of_band_received_memory_is_adopted():
    buf = filled(64)
    data = pickle.dumps(buf, 5, buffer_callback=lambda pb: False)  # out of band
    received = bytearray(buf[:])              # what a transport would deliver
    clone = pickle.loads(data, buffers=[received])
    assert clone.address == address_of(received)   # zero-copy
    clone[0] = 77
    assert received[0] == 77
    ref = weakref.ref(clone)
    with pytest.raises(BufferError):          # the buffer holds the bytearray
        received.append(0)
    del clone
    gc.collect()
    assert ref() is None
    received.append(0)


def test_out_of_band_read_only():
    buf = Buffer.consume(bytes(range(32)), 32, 1, delayed_gc=False)
    data = pickle.dumps(buf, 5, buffer_callback=lambda pb: False)
    writable = bytearray(range(32))
    clone = pickle.loads(data, buffers=[writable])
    assert clone.readonly and clone.address == address_of(writable)
    clone = pickle.loads(data, buffers=[bytes(range(32))])
    assert clone.readonly


def test_out_of_band_read_only_memory_for_a_writable_buffer_is_copied():
    buf = filled(32)
    data = pickle.dumps(buf, 5, buffer_callback=lambda pb: False)
    clone = pickle.loads(data, buffers=[bytes(range(32))])
    assert not clone.readonly and clone[:] == bytes(range(32))
    clone[0] = 1


def test_out_of_band_wrong_size_is_refused():
    buf = filled(32)
    data = pickle.dumps(buf, 5, buffer_callback=lambda pb: False)
    before = memmanager.stats()["total"]["live_buffers"]
    with pytest.raises(ValueError, match="32"):
        pickle.loads(data, buffers=[bytearray(31)])
    assert memmanager.stats()["total"]["live_buffers"] == before


# ---------------------------------------------------------------------------
# Process pools
# ---------------------------------------------------------------------------

def child_increment(buf):
    """Runs in a worker: a received buffer is a live, writable PyAlloc one."""
    for i in range(len(buf)):
        buf[i] = (buf[i] + 1) % 256
    return buf, buf.allocator, buf.readonly


def child_describe(buf):
    return buf.readonly, buf[:], buf.num_items, buf.itemsize


def test_process_pool_round_trip():
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        buf = filled(100, 2)
        back, allocator, readonly = pool.submit(child_increment, buf).result(timeout=60)
        assert allocator == "PyAlloc" and not readonly
        assert back[:] == bytes((i + 1) % 256 for i in range(200))
        assert buf[:] == bytes(i % 256 for i in range(200))   # sent a copy
        frozen = Buffer.consume(b"frozen", 3, 2, delayed_gc=False)
        assert pool.submit(child_describe, frozen).result(timeout=60) == (
            True, b"frozen", 3, 2)
