"""Buffer.device_view(): the device copy as __cuda_array_interface__ (v3)
and DLPack (kDLCUDA), keeping the buffer alive, on the fake CUDA driver;
and, when a real GPU and CuPy are present, the hand-off to CuPy.
"""

import ctypes
import gc
import threading
import weakref

import pytest

import memmanager
from conftest import cuda_library
from dlpack_ctypes import (DLDataType, DLDevice, DLManagedTensor,  # noqa: F401
                           DLManagedTensorVersioned, DLPackVersion, DLTensor)

KDLCUDA = 2

# ---------------------------------------------------------------------------
# DLPack structs, to read what a consumer would read (facts from the DLPack
# ABI; the layout is checked against memmanager's own by these tests).
# ---------------------------------------------------------------------------



_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype = ctypes.c_void_p
_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_get_name = ctypes.pythonapi.PyCapsule_GetName
_get_name.restype = ctypes.c_char_p
_get_name.argtypes = [ctypes.py_object]
_set_name = ctypes.pythonapi.PyCapsule_SetName
_set_name.restype = ctypes.c_int
_set_name.argtypes = [ctypes.py_object, ctypes.c_char_p]
USED_LEGACY = b"used_dltensor"            # kept alive: capsules keep the pointer
USED_VERSIONED = b"used_dltensor_versioned"


def open_capsule(capsule):
    """(managed tensor, struct type, used name) of a DLPack capsule."""
    name = _get_name(capsule)
    kind = DLManagedTensorVersioned if name == b"dltensor_versioned" else DLManagedTensor
    assert name in (b"dltensor", b"dltensor_versioned")
    tensor = kind.from_address(_get_pointer(capsule, name))
    return tensor, kind, USED_VERSIONED if kind is DLManagedTensorVersioned else USED_LEGACY


def consume(capsule):
    """What a consumer does: take the tensor, mark the capsule used."""
    tensor, kind, used = open_capsule(capsule)
    assert _set_name(capsule, used) == 0
    return tensor, kind


@pytest.fixture
def mapped(fake_cuda):
    """A 64-byte buffer entered on device 1 (released at teardown)."""
    buf = memmanager.Buffer(64, 1, init_value=0x42)
    buf.device_movement("enter", "to", device_id=1)
    yield buf
    gc.collect()
    buf.release()


# ---------------------------------------------------------------------------
# __cuda_array_interface__
# ---------------------------------------------------------------------------


def test_cuda_array_interface_v3(fake_cuda, mapped):
    view = mapped.device_view(1)
    address = mapped.device_mappings()[1]["device_address"]
    cai = view.__cuda_array_interface__
    assert cai == {"shape": (64,), "typestr": "|u1", "data": (address, False),
                   "version": 3, "strides": None, "stream": None}
    assert fake_cuda.read(cai["data"][0], 64) == b"\x42" * 64
    assert view.address == address and view.nbytes == 64 and view.device_id == 1
    assert view.buffer is mapped and view.readonly is False
    assert f"device_id=1 address={address:#x} nbytes=64" in repr(view)
    assert isinstance(view, memmanager.DeviceView)


def test_readonly_buffer_gives_a_readonly_view(fake_cuda):
    buf = memmanager.Buffer.consume(bytes(range(32)), 32, 1, delayed_gc=False)
    buf.device_movement("enter", "to")
    view = buf.device_view()
    assert view.readonly is True
    assert view.__cuda_array_interface__["data"][1] is True
    assert fake_cuda.read(view.address, 32) == bytes(range(32))
    del view
    buf.release()


def test_device_view_needs_a_mapping(fake_cuda, make_buffer):
    buf = make_buffer(16, 1)
    with pytest.raises(ValueError, match="not mapped to device 0"):
        buf.device_view()
    buf.device_movement("enter", "alloc", device_id=1)
    with pytest.raises(ValueError, match="not mapped to device 0"):
        buf.device_view(0)
    assert buf.device_view(device_id=1).device_id == 1
    assert buf.exports == 0


@pytest.mark.parametrize("device_id, error", [
    (-1, ValueError), (2, ValueError), (True, TypeError), ("1", TypeError), (1.0, TypeError),
])
def test_device_view_checks_device_id(fake_cuda, mapped, device_id, error):
    with pytest.raises(error):
        mapped.device_view(device_id)


def test_device_view_takes_one_argument(fake_cuda, mapped):
    with pytest.raises(TypeError):
        mapped.device_view(1, 2)
    with pytest.raises(TypeError):
        mapped.device_view(device=1)


def test_views_cannot_be_made_directly():
    with pytest.raises(TypeError):
        memmanager.DeviceView()


def test_device_memory_has_a_view_without_mapping(fake_cuda, make_buffer):
    buf = make_buffer(16, 1, allocator="CudaDevice", init_value=1)
    view = buf.device_view()
    assert view.address == buf.address
    assert buf.device_mappings() == {}
    with pytest.raises(ValueError, match="not mapped to device 1"):
        buf.device_view(1)
    del view


def test_managed_memory_has_a_view_on_every_device(fake_cuda, make_buffer):
    buf = make_buffer(16, 1, allocator="CudaManaged")
    assert [buf.device_view(d).address for d in (0, 1)] == [buf.address] * 2


# ---------------------------------------------------------------------------
# A view keeps the buffer alive and counts as an export
# ---------------------------------------------------------------------------


def test_view_keeps_the_buffer_alive(fake_cuda):
    live = fake_cuda.get("device_live")
    buf = memmanager.Buffer(32, 1, init_value=5)
    buf.device_movement("enter", "to")
    view = buf.device_view()
    ref = weakref.ref(buf)
    del buf
    gc.collect()
    assert ref() is not None
    assert fake_cuda.read(view.address, 32) == b"\x05" * 32
    assert view.buffer.exports == 1
    del view
    gc.collect()
    assert ref() is None
    assert fake_cuda.get("device_live") == live


def test_views_count_as_exports(fake_cuda, mapped):
    views = [mapped.device_view(1) for _ in range(3)]
    assert mapped.exports == 3
    assert mapped.device_mappings()[1]["views"] == 3
    assert "exported(3)" in repr(mapped)
    with pytest.raises(BufferError, match="3 live export"):
        mapped.release()
    del views
    assert mapped.exports == 0 and mapped.device_mappings()[1]["views"] == 0


def test_cycle_through_a_death_stub_is_collected(fake_cuda):
    live = fake_cuda.get("device_live")
    holder = []
    buf = memmanager.Buffer(32, 1, death_stub=lambda info, keep=holder: None)
    buf.device_movement("enter", "to")
    holder.append(buf.device_view())      # buffer -> stub -> list -> view -> buffer
    ref = weakref.ref(buf)
    del buf, holder
    gc.collect()
    assert ref() is None
    assert fake_cuda.get("device_live") == live


# ---------------------------------------------------------------------------
# DLPack
# ---------------------------------------------------------------------------


def test_dlpack_device(fake_cuda, mapped):
    assert mapped.device_view(1).__dlpack_device__() == (KDLCUDA, 1)


def check_tensor(tensor, view):
    t = tensor.dl_tensor
    assert t.data == view.address
    assert (t.device.device_type, t.device.device_id) == (KDLCUDA, view.device_id)
    assert t.ndim == 1
    assert (t.dtype.code, t.dtype.bits, t.dtype.lanes) == (1, 8, 1)
    assert t.shape[0] == view.nbytes and t.strides[0] == 1
    assert t.byte_offset == 0


def test_legacy_capsule(fake_cuda, mapped):
    view = mapped.device_view(1)
    capsule = view.__dlpack__()
    tensor, kind = consume(capsule)
    assert kind is DLManagedTensor
    check_tensor(tensor, view)
    del view, capsule
    gc.collect()
    assert mapped.exports == 1              # the consumer still holds it
    tensor.deleter(ctypes.pointer(tensor))
    assert mapped.exports == 0


@pytest.mark.parametrize("max_version", [(1, 0), (1, 3), (2, 0)])
def test_versioned_capsule(fake_cuda, mapped, max_version):
    view = mapped.device_view(1)
    capsule = view.__dlpack__(max_version=max_version)
    tensor, kind = consume(capsule)
    assert kind is DLManagedTensorVersioned
    assert (tensor.version.major, tensor.version.minor) == (1, 0)
    assert tensor.flags == 0
    check_tensor(tensor, view)
    del view, capsule
    tensor.deleter(ctypes.pointer(tensor))
    assert mapped.exports == 0


def test_old_max_version_gives_a_legacy_capsule(fake_cuda, mapped):
    capsule = mapped.device_view(1).__dlpack__(max_version=(0, 8))
    assert _get_name(capsule) == b"dltensor"


def test_readonly_views_need_a_versioned_capsule(fake_cuda):
    buf = memmanager.Buffer.consume(bytes(16), 16, 1, delayed_gc=False)
    buf.device_movement("enter", "to")
    view = buf.device_view()
    with pytest.raises(BufferError, match="read-only"):
        view.__dlpack__()
    capsule = view.__dlpack__(max_version=(1, 0))
    tensor = open_capsule(capsule)[0]
    assert tensor.flags & 1                  # DLPACK_FLAG_BITMASK_READ_ONLY
    del capsule, view, tensor
    gc.collect()
    buf.release()


def test_unconsumed_capsule_lets_go(fake_cuda, mapped):
    for kwargs in ({}, {"max_version": (1, 0)}):
        capsule = mapped.device_view(1).__dlpack__(**kwargs)
        assert mapped.exports == 1
        del capsule
        assert mapped.exports == 0


def test_deleter_from_another_thread(fake_cuda, mapped):
    capsule = mapped.device_view(1).__dlpack__(max_version=(1, 0))
    tensor, _ = consume(capsule)
    del capsule
    # ctypes drops the GIL around the call: the deleter must take it itself.
    thread = threading.Thread(target=tensor.deleter, args=(ctypes.pointer(tensor),))
    thread.start()
    thread.join()
    assert mapped.exports == 0


@pytest.mark.parametrize("kwargs", [
    {"stream": None}, {"stream": 1}, {"stream": 2}, {"stream": -1}, {"stream": 12345},
    {"dl_device": (KDLCUDA, 1)}, {"dl_device": None}, {"copy": False}, {"copy": None},
])
def test_dlpack_accepted_keywords(fake_cuda, mapped, kwargs):
    assert _get_name(mapped.device_view(1).__dlpack__(**kwargs)) == b"dltensor"


@pytest.mark.parametrize("kwargs, error", [
    ({"dl_device": (1, 0)}, BufferError),
    ({"dl_device": (KDLCUDA, 0)}, BufferError),
    ({"copy": True}, BufferError),
    ({"stream": "default"}, TypeError),
    ({"max_version": 1}, TypeError),
    ({"max_version": (1,)}, TypeError),
    ({"dl_device": "cuda"}, TypeError),
    ({"bogus": 1}, TypeError),
])
def test_dlpack_refusals(fake_cuda, mapped, kwargs, error):
    view = mapped.device_view(1)
    with pytest.raises(error):
        view.__dlpack__(**kwargs)
    assert mapped.exports == 1


@pytest.mark.parametrize("max_version", [(1, "0"), (1, None), (1, 0.5), ("1", 0)])
def test_dlpack_max_version_must_be_two_ints(fake_cuda, mapped, max_version):
    # The one request parser of dlpack.c: the same rule as Buffer.__dlpack__.
    view = mapped.device_view(1)
    for exporter in (view, memmanager.Buffer(8, 1)):
        with pytest.raises(TypeError):
            exporter.__dlpack__(max_version=max_version)
    assert mapped.exports == 1


def test_dlpack_arguments_are_keyword_only(fake_cuda, mapped):
    with pytest.raises(TypeError):
        mapped.device_view(1).__dlpack__(None)


def test_numpy_refuses_a_device_view(fake_cuda, mapped):
    numpy = pytest.importorskip("numpy")
    with pytest.raises((BufferError, RuntimeError, TypeError, ValueError)):
        numpy.from_dlpack(mapped.device_view(1))
    gc.collect()
    assert mapped.exports == 0


# ---------------------------------------------------------------------------
# A real GPU (skipped without one): CuPy sees the same memory
# ---------------------------------------------------------------------------


@pytest.fixture
def real_gpu():
    with cuda_library(None):
        if not memmanager.cuda.is_available():
            pytest.skip("needs an NVIDIA GPU: " + memmanager.cuda.unavailable_reason())
        yield


def test_cupy_sees_the_device_copy(real_gpu):
    cupy = pytest.importorskip("cupy")
    buf = memmanager.Buffer(256, 4, init_value=0)
    buf.device_movement("enter", "to")
    array = cupy.asarray(buf.device_view()).view(cupy.float32)
    array[:] = cupy.arange(256, dtype=cupy.float32) * 2
    cupy.cuda.runtime.deviceSynchronize()
    del array
    buf.device_movement("exit", "from")
    import numpy
    assert (numpy.frombuffer(buf, dtype=numpy.float32) == numpy.arange(256) * 2).all()
    buf.release()
