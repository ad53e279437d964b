"""DLPack: __dlpack__ and __dlpack_device__.

The capsule is checked field by field through ctypes mirrors of the DLPack
1.x structs (written here from the standard's layout), then end to end with
numpy.from_dlpack.  The export is counted (release() is refused while a
capsule or a consumer's array lives); deleters work from a thread without
the GIL and after the interpreter has been finalised.
"""

import ctypes
import gc
import subprocess
import sys
import textwrap
import threading
import weakref

import numpy
import pytest

import memmanager
from memmanager import Buffer
from dlpack_ctypes import (DLDataType, DLDevice, DLManagedTensor,  # noqa: F401
                           DLManagedTensorVersioned, DLPackVersion, DLTensor)

KDL_CPU = 1
KDL_UINT = 1
FLAG_READ_ONLY = 1 << 0
FLAG_IS_COPIED = 1 << 1



pythonapi = ctypes.pythonapi
pythonapi.PyCapsule_GetName.restype = ctypes.c_char_p
pythonapi.PyCapsule_GetName.argtypes = [ctypes.py_object]
pythonapi.PyCapsule_GetPointer.restype = ctypes.c_void_p
pythonapi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
pythonapi.PyCapsule_SetName.restype = ctypes.c_int
pythonapi.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]


def capsule_name(capsule):
    return pythonapi.PyCapsule_GetName(capsule).decode()


def managed(capsule):
    """The managed tensor inside a capsule, as a ctypes structure."""
    name = capsule_name(capsule)
    struct = DLManagedTensorVersioned if name == "dltensor_versioned" else DLManagedTensor
    address = pythonapi.PyCapsule_GetPointer(capsule, name.encode())
    return struct.from_address(address)


# The consumer's side of the protocol: rename the capsule so that its
# destructor leaves the tensor alone; the consumer now owns the deleter call.
_USED_NAMES = {name: ctypes.c_char_p(b"used_" + name.encode())
               for name in ("dltensor", "dltensor_versioned")}


def consume(capsule):
    tensor = managed(capsule)
    assert pythonapi.PyCapsule_SetName(capsule, _USED_NAMES[capsule_name(capsule)]) == 0
    return tensor


# ---------------------------------------------------------------------------
# The capsule's contents
# ---------------------------------------------------------------------------

def test_dlpack_device(make_buffer):
    assert make_buffer(4, 1).__dlpack_device__() == (KDL_CPU, 0)


@pytest.mark.parametrize("max_version, name", [
    (None, "dltensor"),
    ((0, 8), "dltensor"),
    ((1, 0), "dltensor_versioned"),
    ((1, 3), "dltensor_versioned"),
    ((2, 0), "dltensor_versioned"),
])
def test_capsule_kind_follows_max_version(make_buffer, max_version, name):
    buf = make_buffer(4, 1)
    assert capsule_name(buf.__dlpack__(max_version=max_version)) == name


@pytest.mark.parametrize("versioned", [False, True])
def test_tensor_fields(make_buffer, versioned):
    buf = make_buffer(6, 4)
    capsule = buf.__dlpack__(max_version=(1, 0) if versioned else None)
    m = managed(capsule)
    if versioned:
        assert (m.version.major, m.version.minor) == (1, 0)
        assert m.flags == 0
    t = m.dl_tensor
    assert t.data == buf.address and t.byte_offset == 0
    assert (t.device.device_type, t.device.device_id) == (KDL_CPU, 0)
    assert t.ndim == 1
    assert (t.dtype.code, t.dtype.bits, t.dtype.lanes) == (KDL_UINT, 8, 1)
    assert t.shape[0] == 24 and t.strides[0] == 1


def test_read_only_buffer(make_buffer):
    buf = Buffer.consume(bytes(range(8)), 8, 1, delayed_gc=False)
    with pytest.raises(BufferError, match="read-only"):
        buf.__dlpack__()                      # legacy capsules cannot say so
    assert buf.exports == 0
    capsule = buf.__dlpack__(max_version=(1, 0))
    assert managed(capsule).flags == FLAG_READ_ONLY
    array = numpy.from_dlpack(buf)
    assert not array.flags.writeable and array.tolist() == list(range(8))
    del capsule, array
    buf.release()


@pytest.mark.parametrize("max_version", [None, (1, 0)])
def test_copy_true_exports_an_independent_writable_copy(max_version):
    buf = Buffer.consume(bytes(range(8)), 8, 1, delayed_gc=False)
    capsule = buf.__dlpack__(max_version=max_version, copy=True)
    m = managed(capsule)
    assert m.dl_tensor.data != buf.address
    assert ctypes.string_at(m.dl_tensor.data, 8) == bytes(range(8))
    if max_version:
        assert m.flags == FLAG_IS_COPIED
    assert buf.exports == 0                   # the copy is exported, not buf
    buf.release()                             # so the original may go
    assert ctypes.string_at(m.dl_tensor.data, 8) == bytes(range(8))
    del m, capsule


def test_copy_false_aliases(make_buffer):
    buf = make_buffer(8, 1)
    assert managed(buf.__dlpack__(copy=False)).dl_tensor.data == buf.address


@pytest.mark.parametrize("kwargs, error", [
    ({"stream": 1}, BufferError),
    ({"dl_device": (2, 0)}, BufferError),
    ({"dl_device": (1, 1)}, BufferError),
    ({"dl_device": "cpu"}, TypeError),
    ({"max_version": 1}, TypeError),
    ({"max_version": (1,)}, TypeError),
    ({"max_version": ("1", 0)}, TypeError),
    ({"colour": 1}, TypeError),
])
def test_bad_requests(make_buffer, kwargs, error):
    buf = make_buffer(8, 1)
    with pytest.raises(error):
        buf.__dlpack__(**kwargs)
    assert buf.exports == 0


def test_cpu_device_and_stream_none_are_accepted(make_buffer):
    buf = make_buffer(8, 1)
    capsule = buf.__dlpack__(stream=None, dl_device=(KDL_CPU, 0), max_version=(1, 0))
    assert capsule_name(capsule) == "dltensor_versioned"


def test_positional_arguments_are_refused(make_buffer):
    with pytest.raises(TypeError):
        make_buffer(8, 1).__dlpack__(None)


def test_released_buffer(make_buffer):
    buf = make_buffer(8, 1)
    buf.release()
    with pytest.raises(ValueError, match="released"):
        buf.__dlpack__()
    with pytest.raises(ValueError, match="released"):
        buf.__dlpack_device__()


def test_index_that_releases_the_buffer_is_caught(make_buffer):
    buf = make_buffer(8, 1)

    class Sneaky:
        def __index__(self):
            buf.release()
            return 1

    with pytest.raises(ValueError, match="released"):
        buf.__dlpack__(max_version=(Sneaky(), 0))
    assert buf.released


# ---------------------------------------------------------------------------
# The export and lifetime
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("max_version", [None, (1, 0)])
def test_an_unconsumed_capsule_holds_an_export(max_version):
    buf = Buffer(8, 1)
    capsule = buf.__dlpack__(max_version=max_version)
    assert buf.exports == 1
    with pytest.raises(BufferError, match="1 live export"):
        buf.release()
    del capsule
    assert buf.exports == 0
    buf.release()


def test_numpy_from_dlpack_aliases_and_holds_an_export():
    buf = Buffer(8, 1, init_value=1)
    array = numpy.from_dlpack(buf)
    assert array.dtype == numpy.uint8 and array.shape == (8,)
    array[2] = 9
    assert buf[2] == 9
    buf[3] = 8
    assert array[3] == 8
    assert buf.exports == 1
    with pytest.raises(BufferError):
        buf.release()
    del array
    assert buf.exports == 0
    buf.release()


def test_array_outlives_dropped_buffer():
    stubs = []
    buf = Buffer(16, 1, init_value=5, death_stub=stubs.append)
    ref = weakref.ref(buf)
    array = numpy.from_dlpack(buf)
    del buf
    gc.collect()
    assert ref() is not None and stubs == []
    array += 1
    assert array.tolist() == [6] * 16
    del array
    gc.collect()
    assert ref() is None and len(stubs) == 1


def test_capsule_outlives_dropped_buffer():
    buf = Buffer(16, 1, init_value=5)
    ref = weakref.ref(buf)
    capsule = buf.__dlpack__(max_version=(1, 0))
    del buf
    gc.collect()
    assert ref() is not None
    assert numpy.from_dlpack(_Holder(capsule)).tolist() == [5] * 16
    gc.collect()
    assert ref() is None      # numpy consumed the capsule and dropped its array


class _Holder:
    """Hands a ready capsule to numpy.from_dlpack, once."""

    def __init__(self, capsule):
        self.capsule = capsule

    def __dlpack__(self, **kwargs):
        capsule, self.capsule = self.capsule, None
        return capsule

    def __dlpack_device__(self):
        return (KDL_CPU, 0)


@pytest.mark.parametrize("max_version", [None, (1, 0)])
def test_deleter_from_a_thread_without_the_gil(max_version):
    buf = Buffer(8, 1)
    capsule = buf.__dlpack__(max_version=max_version)
    tensor = consume(capsule)
    del capsule                      # renamed: its destructor does nothing
    assert buf.exports == 1
    deleter = tensor.deleter         # a CFUNCTYPE: called without the GIL
    thread = threading.Thread(target=deleter, args=(ctypes.pointer(tensor),))
    thread.start()
    thread.join()
    assert buf.exports == 0
    buf.release()


def test_subclass_export():
    class Sub(Buffer):
        pass

    buf = Sub(4, 1, init_value=2)
    assert numpy.from_dlpack(buf).sum() == 8
    gc.collect()
    buf.release()


def run_python(code):
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def test_deleter_after_interpreter_finalisation():
    # The tensor is consumed (renamed capsule), and its deleter is left to a
    # C atexit handler, which runs after Py_FinalizeEx: it must not touch
    # Python, and the process must exit cleanly.
    done = run_python("""
        import ctypes, memmanager
        from ctypes import pythonapi as api
        api.PyCapsule_GetPointer.restype = ctypes.c_void_p
        api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
        api.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
        buf = memmanager.Buffer(64, 1, delayed_gc=True, death_stub=print)
        capsule = buf.__dlpack__(max_version=(1, 0))
        tensor = api.PyCapsule_GetPointer(capsule, b"dltensor_versioned")
        used = ctypes.c_char_p(b"used_dltensor_versioned")
        api.PyCapsule_SetName(capsule, used)
        deleter = ctypes.c_void_p.from_address(tensor + 16).value
        libc = ctypes.CDLL(None)
        libc.__cxa_atexit.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        assert libc.__cxa_atexit(deleter, tensor, None) == 0
        print("registered")
    """)
    assert done.stdout.startswith("registered")


def test_unconsumed_capsules_and_arrays_at_exit():
    done = run_python("""
        import numpy, memmanager
        keep = []
        for delayed in (False, True):
            buf = memmanager.Buffer(32, 1, delayed_gc=delayed, death_stub=print)
            keep += [buf.__dlpack__(), buf.__dlpack__(max_version=(1, 0)),
                     numpy.from_dlpack(buf)]
        print("done")
    """)
    assert done.stdout.startswith("done")
