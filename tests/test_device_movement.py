"""Buffer.device_movement(): the OpenMP target-data meaning of each
(action, direction) pair, per (buffer, device_id), on the fake CUDA driver
(tests/fake_cuda.c), and the validation that happens before any device is
touched, with or without a GPU.
"""

import gc
import itertools
import threading
import weakref

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, invariant, precondition,
                                 rule, run_state_machine_as_test)

import memmanager

ACTIONS = ("enter", "exit", "update")
DIRECTIONS = ("to", "from", "tofrom", "alloc", "release", "delete")
VALID = {
    "enter": ("to", "tofrom", "alloc"),
    "exit": ("from", "tofrom", "release", "delete"),
    "update": ("to", "from"),
}
VALID_PAIRS = [(a, d) for a in ACTIONS for d in VALID[a]]
INVALID_PAIRS = [(a, d) for a, d in itertools.product(ACTIONS, DIRECTIONS)
                 if d not in VALID[a]]
GARBAGE = 0xA5   # what the fake driver puts in fresh device memory


@pytest.fixture(params=["no_cuda", "fake_cuda"])
def any_backend(request):
    """Runs a test once without a GPU and once on the fake driver."""
    return request.getfixturevalue(request.param)


def device_bytes(fake, buf, device_id=0):
    mapping = buf.device_mappings()[device_id]
    return fake.read(mapping["device_address"], mapping["nbytes"])


def pattern(n, seed=1):
    return bytes((seed + 7 * i) % 256 for i in range(n))


# ---------------------------------------------------------------------------
# Validation: ValueError/TypeError whether or not a GPU is present
# ---------------------------------------------------------------------------


def test_valid_pairs_are_the_openmp_ones():
    assert len(VALID_PAIRS) == 9 and len(INVALID_PAIRS) == 9


@pytest.mark.parametrize("action, direction", INVALID_PAIRS)
def test_invalid_pairs_raise_value_error(any_backend, make_buffer, action, direction):
    buf = make_buffer(16, 1)
    with pytest.raises(ValueError, match="not a valid pair"):
        buf.device_movement(action, direction)


@pytest.mark.parametrize("action, direction", [
    ("enter", "TO"), ("Enter", "to"), ("go", "to"), ("enter", "into"), ("", "to"),
    ("enter", ""), ("enter ", "to"),
])
def test_unknown_names_raise_value_error(any_backend, make_buffer, action, direction):
    with pytest.raises(ValueError, match="unknown"):
        make_buffer(16, 1).device_movement(action, direction)


@pytest.mark.parametrize("start, end", [
    (-1, None), (0, 17), (5, 4), (17, None), (0, -1), (16, 17), (2**70, None),
    (0, 2**70), (-(2**70), 3),
])
def test_ranges_outside_the_buffer_raise_value_error(any_backend, make_buffer, start, end):
    with pytest.raises(ValueError, match="outside the buffer"):
        make_buffer(16, 1).device_movement("enter", "to", start=start, end=end)


@pytest.mark.parametrize("kwargs, error", [
    ({"device": "AMD_GPU"}, ValueError),
    ({"device": "nvidia_gpu"}, ValueError),
    ({"device": None}, TypeError),
    ({"device_id": -1}, ValueError),
    ({"device_id": 2**40}, ValueError),
    ({"device_id": True}, TypeError),
    ({"device_id": 0.0}, TypeError),
    ({"device_id": "0"}, TypeError),
    ({"start": 1.5}, TypeError),
    ({"end": "3"}, TypeError),
    ({"start": False}, TypeError),
])
def test_bad_keywords(any_backend, make_buffer, kwargs, error):
    with pytest.raises(error):
        make_buffer(16, 1).device_movement("enter", "to", **kwargs)


@pytest.mark.parametrize("args, kwargs", [
    ((), {}), (("enter",), {}), (("enter", "to", "NVIDIA_GPU"), {}),
    (("enter", "to"), {"bogus": 1}), (("enter", "to"), {"action": "exit"}),
    ((1, "to"), {}), (("enter", b"to"), {}),
])
def test_bad_call_shapes_raise_type_error(any_backend, make_buffer, args, kwargs):
    with pytest.raises(TypeError):
        make_buffer(16, 1).device_movement(*args, **kwargs)


def test_released_buffer_raises_value_error(any_backend, make_buffer):
    buf = make_buffer(16, 1)
    buf.release()
    with pytest.raises(ValueError, match="released"):
        buf.device_movement("enter", "to")
    with pytest.raises(ValueError, match="released"):
        buf.device_view()
    with pytest.raises(ValueError, match="released"):
        buf.device_mappings()


def test_readonly_buffer_cannot_receive_a_copy(any_backend):
    buf = memmanager.Buffer.consume(b"read only bytes!", 16, 1, delayed_gc=False)
    for action, direction in [("exit", "from"), ("exit", "tofrom"), ("update", "from")]:
        with pytest.raises(TypeError, match="read-only"):
            buf.device_movement(action, direction)


def test_validation_touches_no_device(fake_cuda, make_buffer):
    """The driver is not even loaded by a call that fails validation."""
    init_calls = fake_cuda.get("init_calls")
    buf = make_buffer(16, 1)
    for action, direction in INVALID_PAIRS:
        with pytest.raises(ValueError):
            buf.device_movement(action, direction)
    with pytest.raises(ValueError):
        buf.device_movement("enter", "to", end=17)
    with pytest.raises(ValueError):
        buf.device_movement("enter", "to", device="TPU")
    assert fake_cuda.get("init_calls") == init_calls
    buf.device_movement("enter", "alloc")
    assert fake_cuda.get("init_calls") == init_calls + 1
    buf.device_movement("exit", "delete")


def test_index_that_releases_the_buffer(fake_cuda):
    buf = memmanager.Buffer(16, 1)

    class Sneaky:
        def __index__(self):
            buf.release()
            return 0

    with pytest.raises(ValueError, match="released"):
        buf.device_movement("enter", "to", start=Sneaky())
    assert fake_cuda.get("device_live") == 0


def test_device_id_beyond_the_devices(fake_cuda, make_buffer):
    buf = make_buffer(16, 1)
    with pytest.raises(ValueError, match="no NVIDIA GPU 2"):
        buf.device_movement("enter", "to", device_id=2)
    assert buf.device_mappings() == {}


# ---------------------------------------------------------------------------
# enter
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["to", "tofrom"])
def test_enter_to_allocates_and_copies_the_range(fake_cuda, make_buffer, direction):
    data = pattern(64)
    buf = make_buffer(64, 1)
    buf[:] = data
    live = fake_cuda.get("device_live")
    buf.device_movement("enter", direction, start=8, end=40)
    assert fake_cuda.get("device_live") == live + 1
    (info,) = buf.device_mappings().values()
    assert info["refcount"] == 1 and info["nbytes"] == 64 and info["views"] == 0
    expected = bytes([GARBAGE]) * 8 + data[8:40] + bytes([GARBAGE]) * 24
    assert device_bytes(fake_cuda, buf) == expected
    buf.device_movement("exit", "delete")


def test_enter_alloc_copies_nothing(fake_cuda, make_buffer):
    buf = make_buffer(32, 1, init_value=1)
    copies = fake_cuda.get("htod_calls")
    buf.device_movement("enter", "alloc")
    assert fake_cuda.get("htod_calls") == copies
    assert device_bytes(fake_cuda, buf) == bytes([GARBAGE]) * 32
    buf.device_movement("exit", "release")


def test_enter_when_present_only_counts(fake_cuda, make_buffer):
    buf = make_buffer(32, 1, init_value=1)
    buf.device_movement("enter", "to")
    address = buf.device_mappings()[0]["device_address"]
    buf[:] = b"\x02" * 32
    copies, live = fake_cuda.get("htod_calls"), fake_cuda.get("device_live")
    buf.device_movement("enter", "to")          # present: OpenMP copies nothing
    buf.device_movement("enter", "tofrom")
    buf.device_movement("enter", "alloc")
    assert fake_cuda.get("htod_calls") == copies
    assert fake_cuda.get("device_live") == live
    assert buf.device_mappings()[0] == {"device_address": address, "nbytes": 32,
                                        "refcount": 4, "views": 0}
    assert device_bytes(fake_cuda, buf) == b"\x01" * 32
    buf.device_movement("exit", "delete")


def test_empty_range_maps_without_copying(fake_cuda, make_buffer):
    buf = make_buffer(8, 1)
    copies = fake_cuda.get("htod_calls")
    buf.device_movement("enter", "to", start=3, end=3)
    assert fake_cuda.get("htod_calls") == copies
    assert buf.device_mappings()[0]["refcount"] == 1
    buf.device_movement("exit", "from", start=8)
    assert buf.device_mappings() == {}


def test_end_none_means_the_whole_buffer(fake_cuda, make_buffer):
    buf = make_buffer(4, 4)
    buf[:] = pattern(16)
    buf.device_movement("enter", "to", start=4, end=None)
    assert device_bytes(fake_cuda, buf)[4:] == pattern(16)[4:]
    buf.device_movement("exit", "delete")


# ---------------------------------------------------------------------------
# exit
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["from", "tofrom"])
def test_exit_from_copies_back_the_range_and_frees(fake_cuda, make_buffer, direction):
    buf = make_buffer(32, 1, init_value=0)
    live = fake_cuda.get("device_live")
    buf.device_movement("enter", "to")
    address = buf.device_mappings()[0]["device_address"]
    fake_cuda.write(address, pattern(32, seed=3))     # the "kernel"
    buf.device_movement("exit", direction, start=4, end=12)
    assert bytes(buf) == bytes(4) + pattern(32, seed=3)[4:12] + bytes(20)
    assert buf.device_mappings() == {}
    assert fake_cuda.get("device_live") == live


def test_exit_from_with_references_left_copies_nothing(fake_cuda, make_buffer):
    buf = make_buffer(16, 1, init_value=0)
    buf.device_movement("enter", "to")
    buf.device_movement("enter", "to")
    fake_cuda.write(buf.device_mappings()[0]["device_address"], b"\x09" * 16)
    copies = fake_cuda.get("dtoh_calls")
    buf.device_movement("exit", "from")                 # 2 -> 1: no copy
    assert fake_cuda.get("dtoh_calls") == copies
    assert bytes(buf) == bytes(16)
    assert buf.device_mappings()[0]["refcount"] == 1
    buf.device_movement("exit", "from")                 # 1 -> 0: copy
    assert bytes(buf) == b"\x09" * 16


def test_exit_release_frees_without_copying(fake_cuda, make_buffer):
    buf = make_buffer(16, 1, init_value=0)
    buf.device_movement("enter", "to")
    buf.device_movement("enter", "to")
    fake_cuda.write(buf.device_mappings()[0]["device_address"], b"\x09" * 16)
    copies, live = fake_cuda.get("dtoh_calls"), fake_cuda.get("device_live")
    buf.device_movement("exit", "release")
    assert buf.device_mappings()[0]["refcount"] == 1
    buf.device_movement("exit", "release")
    assert buf.device_mappings() == {}
    assert fake_cuda.get("dtoh_calls") == copies
    assert fake_cuda.get("device_live") == live - 1
    assert bytes(buf) == bytes(16)


def test_exit_delete_frees_whatever_the_count(fake_cuda, make_buffer):
    buf = make_buffer(16, 1, init_value=0)
    for _ in range(5):
        buf.device_movement("enter", "alloc")
    live = fake_cuda.get("device_live")
    buf.device_movement("exit", "delete")
    assert buf.device_mappings() == {}
    assert fake_cuda.get("device_live") == live - 1


@pytest.mark.parametrize("action, direction", [
    ("exit", "from"), ("exit", "tofrom"), ("exit", "release"), ("exit", "delete"),
    ("update", "to"), ("update", "from"),
])
def test_exit_and_update_need_a_mapping(fake_cuda, make_buffer, action, direction):
    buf = make_buffer(16, 1)
    with pytest.raises(ValueError, match="not mapped to device 0"):
        buf.device_movement(action, direction)
    buf.device_movement("enter", "alloc", device_id=1)
    with pytest.raises(ValueError, match="not mapped to device 0"):
        buf.device_movement(action, direction)
    buf.device_movement("exit", "delete", device_id=1)


def test_enter_exit_enter(fake_cuda, make_buffer):
    buf = make_buffer(16, 1)
    for round_ in range(3):
        buf[:] = bytes([round_]) * 16
        buf.device_movement("enter", "to")
        assert device_bytes(fake_cuda, buf) == bytes([round_]) * 16
        fake_cuda.write(buf.device_mappings()[0]["device_address"], bytes([round_ + 10]) * 16)
        buf.device_movement("exit", "from")
        assert bytes(buf) == bytes([round_ + 10]) * 16
        assert buf.device_mappings() == {}


# ---------------------------------------------------------------------------
# update
# ---------------------------------------------------------------------------


def test_update_to_and_from_copy_the_range(fake_cuda, make_buffer):
    buf = make_buffer(32, 1, init_value=0)
    buf.device_movement("enter", "alloc")
    address = buf.device_mappings()[0]["device_address"]
    buf[:] = pattern(32)
    buf.device_movement("update", "to", start=0, end=16)
    assert device_bytes(fake_cuda, buf) == pattern(32)[:16] + bytes([GARBAGE]) * 16
    fake_cuda.write(address, b"\x11" * 32)
    buf.device_movement("update", "from", start=30)
    assert bytes(buf) == pattern(32)[:30] + b"\x11\x11"
    assert buf.device_mappings()[0]["refcount"] == 1    # update never counts
    buf.device_movement("exit", "release")


# ---------------------------------------------------------------------------
# State per (buffer, device_id)
# ---------------------------------------------------------------------------


def test_devices_are_independent(fake_cuda, make_buffer):
    buf = make_buffer(8, 1, init_value=1)
    buf.device_movement("enter", "to", device_id=0)
    buf[:] = b"\x02" * 8
    buf.device_movement("enter", "to", device_id=1)
    buf.device_movement("enter", "alloc", device_id=1)
    mappings = buf.device_mappings()
    assert set(mappings) == {0, 1}
    assert mappings[0]["refcount"] == 1 and mappings[1]["refcount"] == 2
    assert mappings[0]["device_address"] != mappings[1]["device_address"]
    assert device_bytes(fake_cuda, buf, 0) == b"\x01" * 8
    assert device_bytes(fake_cuda, buf, 1) == b"\x02" * 8
    buf.device_movement("exit", "from", device_id=0)
    assert bytes(buf) == b"\x01" * 8
    assert set(buf.device_mappings()) == {1}
    buf.device_movement("exit", "delete", device_id=1)


def test_buffers_are_independent(fake_cuda, make_buffer):
    a, b = make_buffer(8, 1, init_value=1), make_buffer(8, 1, init_value=2)
    a.device_movement("enter", "to")
    assert b.device_mappings() == {}
    b.device_movement("enter", "to")
    assert device_bytes(fake_cuda, a) == b"\x01" * 8
    assert device_bytes(fake_cuda, b) == b"\x02" * 8
    a.device_movement("exit", "delete")
    assert b.device_mappings()[0]["refcount"] == 1
    b.device_movement("exit", "delete")


# ---------------------------------------------------------------------------
# Mappings die with the buffer
# ---------------------------------------------------------------------------


def test_release_frees_every_mapping(fake_cuda):
    live = fake_cuda.get("device_live")
    buf = memmanager.Buffer(64, 1)
    buf.device_movement("enter", "to", device_id=0)
    buf.device_movement("enter", "to", device_id=1)
    assert fake_cuda.get("device_live") == live + 2
    buf.release()
    assert fake_cuda.get("device_live") == live


def test_death_frees_every_mapping(fake_cuda):
    live = fake_cuda.get("device_live")
    buf = memmanager.Buffer(64, 1, allocator="CMalloc")
    buf.device_movement("enter", "to", device_id=1)
    buf.device_movement("enter", "alloc", device_id=0)
    ref = weakref.ref(buf)
    del buf
    assert ref() is None
    assert fake_cuda.get("device_live") == live


def test_pinned_buffer_mappings_go_with_collect_delayed(fake_cuda):
    live = fake_cuda.get("device_live")
    buf = memmanager.Buffer(64, 1, delayed_gc=True)
    buf.device_movement("enter", "to")
    identifier = buf.identifier
    del buf
    assert fake_cuda.get("device_live") == live + 1
    memmanager.collect_delayed([identifier])
    assert fake_cuda.get("device_live") == live


def test_a_thousand_mapped_buffers_free_their_device_memory(fake_cuda):
    live, total = fake_cuda.get("device_live"), fake_cuda.get("device_bytes")
    buffers = [memmanager.Buffer(256, 4, init_value=i % 256) for i in range(1000)]
    for buf in buffers:
        buf.device_movement("enter", "to")
    assert fake_cuda.get("device_live") == live + 1000
    assert fake_cuda.get("device_bytes") == total + 1000 * 1024
    del buf, buffers
    gc.collect()
    assert fake_cuda.get("device_live") == live
    assert fake_cuda.get("device_bytes") == total


# ---------------------------------------------------------------------------
# Device views block frees; failures change nothing
# ---------------------------------------------------------------------------


def test_exit_that_would_free_a_viewed_copy_is_refused(fake_cuda, make_buffer):
    buf = make_buffer(16, 1, init_value=1)
    buf.device_movement("enter", "to")
    buf.device_movement("enter", "to")
    view = buf.device_view()
    buf.device_movement("exit", "release")             # 2 -> 1 frees nothing: fine
    for direction in ("from", "tofrom", "release", "delete"):
        with pytest.raises(BufferError, match="1 live device view"):
            buf.device_movement("exit", direction)
    assert buf.device_mappings()[0]["refcount"] == 1
    assert buf.device_mappings()[0]["views"] == 1
    with pytest.raises(BufferError, match="export"):
        buf.release()
    del view
    buf.device_movement("exit", "delete")
    assert buf.device_mappings() == {}


def test_failed_copy_on_enter_leaves_no_mapping(fake_cuda, make_buffer):
    buf = make_buffer(16, 1)
    live = fake_cuda.get("device_live")
    fake_cuda.set("fail_next_htod", 1)
    with pytest.raises(memmanager.DeviceUnavailableError, match="copying 16 bytes to"):
        buf.device_movement("enter", "to")
    assert buf.device_mappings() == {}
    assert fake_cuda.get("device_live") == live
    buf.device_movement("enter", "to")                  # and it works afterwards
    buf.device_movement("exit", "delete")


def test_failed_allocation_is_memory_error(fake_cuda, make_buffer):
    buf = make_buffer(16, 1)
    fake_cuda.set("fail_next_alloc", 2)
    with pytest.raises(MemoryError, match="CUDA_ERROR_OUT_OF_MEMORY"):
        buf.device_movement("enter", "alloc")
    assert buf.device_mappings() == {}


def test_failed_copy_back_keeps_the_mapping(fake_cuda, make_buffer):
    buf = make_buffer(16, 1, init_value=0)
    buf.device_movement("enter", "to")
    fake_cuda.write(buf.device_mappings()[0]["device_address"], b"\x07" * 16)
    fake_cuda.set("fail_next_dtoh", 1)
    with pytest.raises(memmanager.DeviceUnavailableError, match="from device 0"):
        buf.device_movement("exit", "from")
    assert buf.device_mappings()[0]["refcount"] == 1
    buf.device_movement("exit", "from")                 # the retry copies
    assert bytes(buf) == b"\x07" * 16


def test_failed_update_changes_no_count(fake_cuda, make_buffer):
    buf = make_buffer(16, 1)
    buf.device_movement("enter", "alloc")
    fake_cuda.set("fail_next_htod", 1)
    with pytest.raises(memmanager.DeviceUnavailableError):
        buf.device_movement("update", "to")
    assert buf.device_mappings()[0]["refcount"] == 1
    buf.device_movement("exit", "delete")


# ---------------------------------------------------------------------------
# Large copies run without the GIL
# ---------------------------------------------------------------------------


def test_large_copies_are_correct(fake_cuda, make_buffer):
    """Copies from 1 MiB up run without the GIL, holding an export and a
    view count meanwhile; both are given back."""
    size = 4 << 20
    buf = make_buffer(size, 1, init_value=3)
    buf.device_movement("enter", "to")
    assert buf.exports == 0
    assert device_bytes(fake_cuda, buf) == b"\x03" * size
    fake_cuda.write(buf.device_mappings()[0]["device_address"] + size - 4, b"\x01\x02\x03\x04")
    buf.device_movement("update", "from")
    assert bytes(buf.region(size - 4)) == b"\x01\x02\x03\x04"
    assert buf.exports == 0 and buf.device_mappings()[0]["views"] == 0
    buf[0] = 9
    buf.device_movement("update", "to", end=1)
    assert fake_cuda.read(buf.device_mappings()[0]["device_address"], 1) == b"\x09"
    buf.device_movement("exit", "delete")


def test_threads_mapping_one_buffer(fake_cuda, make_buffer):
    buf = make_buffer(2 << 20, 1, init_value=1)
    errors = []

    def work():
        try:
            for _ in range(20):
                buf.device_movement("enter", "to")
                buf.device_movement("update", "from")
                buf.device_movement("exit", "release")
        except Exception as error:   # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # An exit may meet another thread's copy in flight (BufferError); no
    # other error, and nothing is left mapped or exported.
    assert all(isinstance(error, BufferError) for error in errors), errors
    mappings = buf.device_mappings()
    if mappings:
        buf.device_movement("exit", "delete")
    assert buf.exports == 0


# ---------------------------------------------------------------------------
# Memory that is on the device already: CudaManaged and CudaDevice
# ---------------------------------------------------------------------------


def test_managed_memory_maps_to_itself(fake_cuda, make_buffer):
    buf = make_buffer(32, 1, allocator="CudaManaged", init_value=1)
    live, copies = fake_cuda.get("device_live"), fake_cuda.get("htod_calls")
    for device_id in (0, 1):
        buf.device_movement("enter", "to", device_id=device_id)
        assert buf.device_mappings()[device_id]["device_address"] == buf.address
    assert fake_cuda.get("device_live") == live
    assert fake_cuda.get("htod_calls") == copies
    fake_cuda.write(buf.address, b"\x05" * 32)
    syncs, dtoh = fake_cuda.get("ctx_syncs"), fake_cuda.get("dtoh_calls")
    buf.device_movement("update", "from")
    assert fake_cuda.get("ctx_syncs") == syncs + 1      # waits for kernels
    assert fake_cuda.get("dtoh_calls") == dtoh          # copies nothing
    assert bytes(buf) == b"\x05" * 32
    buf.device_movement("exit", "from", device_id=0)
    buf.device_movement("exit", "delete", device_id=1)
    assert buf.device_mappings() == {}
    assert bytes(buf) == b"\x05" * 32                   # nothing was freed


def test_device_memory_maps_to_itself_on_its_device(fake_cuda, make_buffer):
    buf = make_buffer(32, 1, allocator="CudaDevice", init_value=6)
    live = fake_cuda.get("device_live")
    buf.device_movement("enter", "to")
    assert buf.device_mappings()[0]["device_address"] == buf.address
    assert fake_cuda.get("device_live") == live
    buf.device_movement("update", "from")
    buf.device_movement("exit", "tofrom")
    assert fake_cuda.read(buf.address, 32) == b"\x06" * 32
    with pytest.raises(ValueError, match="lives on device 0"):
        buf.device_movement("enter", "to", device_id=1)


def test_cudahost_maps_like_host_memory(fake_cuda, make_buffer):
    buf = make_buffer(64, 1, allocator="CudaHost", init_value=8)
    live = fake_cuda.get("device_live")
    buf.device_movement("enter", "to")
    assert fake_cuda.get("device_live") == live + 1
    assert buf.device_mappings()[0]["device_address"] != buf.address
    assert device_bytes(fake_cuda, buf) == b"\x08" * 64
    buf.device_movement("exit", "delete")


# ---------------------------------------------------------------------------
# A state machine against a model of OpenMP target data
# ---------------------------------------------------------------------------

SIZE = 24
offsets = st.integers(0, SIZE)
ranges = st.tuples(offsets, offsets).map(sorted)
devices = st.sampled_from([0, 1])


class OpenMPModel(RuleBasedStateMachine):
    """Random sequences of device_movement, host writes, kernel writes and
    device views, checked against a pure-Python model after every step."""

    def __init__(self, fake):
        super().__init__()
        self.fake = fake
        self.buf = memmanager.Buffer(SIZE, 1, init_value=0)
        self.host = bytearray(SIZE)
        self.device = {}          # device_id -> {"refcount", "data", "views"}
        self.views = []

    def teardown(self):
        self.views.clear()
        self.buf.release()

    def copy(self, device_id, lo, hi, to_device):
        mapping = self.device[device_id]
        if to_device:
            mapping["data"][lo:hi] = self.host[lo:hi]
        else:
            self.host[lo:hi] = mapping["data"][lo:hi]

    @rule(direction=st.sampled_from(VALID["enter"]), device_id=devices, span=ranges)
    def enter(self, direction, device_id, span):
        self.buf.device_movement("enter", direction, device_id=device_id,
                                 start=span[0], end=span[1])
        if device_id in self.device:
            self.device[device_id]["refcount"] += 1
            return
        self.device[device_id] = {"refcount": 1, "views": 0,
                                  "data": bytearray([GARBAGE]) * SIZE}
        if direction != "alloc":
            self.copy(device_id, *span, to_device=True)

    @rule(direction=st.sampled_from(VALID["exit"]), device_id=devices, span=ranges)
    def exit(self, direction, device_id, span):
        mapping = self.device.get(device_id)
        remaining = None if mapping is None else (
            0 if direction == "delete" else mapping["refcount"] - 1)
        if mapping is None:
            expected = ValueError
        elif remaining == 0 and mapping["views"]:
            expected = BufferError
        else:
            expected = None
        if expected is not None:
            with pytest.raises(expected):
                self.buf.device_movement("exit", direction, device_id=device_id,
                                         start=span[0], end=span[1])
            return
        self.buf.device_movement("exit", direction, device_id=device_id,
                                 start=span[0], end=span[1])
        if remaining > 0:
            mapping["refcount"] = remaining
            return
        if direction in ("from", "tofrom"):
            self.copy(device_id, *span, to_device=False)
        del self.device[device_id]

    @rule(direction=st.sampled_from(VALID["update"]), device_id=devices, span=ranges)
    def update(self, direction, device_id, span):
        if device_id not in self.device:
            with pytest.raises(ValueError):
                self.buf.device_movement("update", direction, device_id=device_id,
                                         start=span[0], end=span[1])
            return
        self.buf.device_movement("update", direction, device_id=device_id,
                                 start=span[0], end=span[1])
        self.copy(device_id, *span, to_device=direction == "to")

    @rule(offset=st.integers(0, SIZE - 1), value=st.integers(0, 255))
    def host_write(self, offset, value):
        self.buf[offset] = value
        self.host[offset] = value

    @precondition(lambda self: self.device)
    @rule(data=st.data())
    def kernel_write(self, data):
        device_id = data.draw(st.sampled_from(sorted(self.device)))
        lo, hi = data.draw(ranges)
        payload = data.draw(st.binary(min_size=hi - lo, max_size=hi - lo))
        address = self.buf.device_mappings()[device_id]["device_address"]
        if payload:
            self.fake.write(address + lo, payload)
        self.device[device_id]["data"][lo:hi] = payload

    @precondition(lambda self: self.device)
    @rule(data=st.data())
    def take_view(self, data):
        device_id = data.draw(st.sampled_from(sorted(self.device)))
        self.views.append(self.buf.device_view(device_id))
        self.device[device_id]["views"] += 1

    @precondition(lambda self: self.views)
    @rule(data=st.data())
    def drop_view(self, data):
        view = self.views.pop(data.draw(st.integers(0, len(self.views) - 1)))
        self.device[view.device_id]["views"] -= 1

    @invariant()
    def matches_the_model(self):
        assert bytes(self.buf) == bytes(self.host)
        mappings = self.buf.device_mappings()
        assert {d: (m["refcount"], m["views"]) for d, m in mappings.items()} == {
            d: (m["refcount"], m["views"]) for d, m in self.device.items()}
        for device_id, mapping in mappings.items():
            assert self.fake.read(mapping["device_address"], SIZE) == bytes(
                self.device[device_id]["data"])
        assert self.buf.exports == len(self.views)


def test_device_movement_state_machine(fake_cuda):
    run_state_machine_as_test(lambda: OpenMPModel(fake_cuda))
