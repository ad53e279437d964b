"""Attacks on DLPack export: deleters in subinterpreters and on foreign
threads, buggy consumers, hostile __dlpack__ arguments, and device memory
that must never reach the host through any exporter.

Subinterpreter cases run in a child process with a timeout (the failure
they guard against is a deadlock or a crash).  A tensor is consumed the way
a C consumer would, with ctypes: the capsule is renamed, and its deleter is
then called from wherever the case needs (the interpreter's own thread with
the GIL released, a thread CPython has never seen, another interpreter's
thread holding its GIL, after the interpreter was destroyed).
"""

import copy
import ctypes
import gc
import os
import pickle
import subprocess
import sys
import textwrap

import numpy
import pytest

import memmanager
from memmanager import Buffer
from conftest import SUBINTERPRETERS
from dlpack_ctypes import DLManagedTensor, DLManagedTensorVersioned

KDL_CPU, KDL_CUDA, KDL_CUDA_HOST, KDL_CUDA_MANAGED = 1, 2, 3, 13
TESTS = os.path.dirname(os.path.abspath(__file__))

# The consumer's side, as source text: run in the child process and in each
# of its subinterpreters (which start with a sys.path of their own).
HELPERS = f"""
import ctypes, sys, threading
sys.path.insert(0, {TESTS!r})
from dlpack_ctypes import DLManagedTensor, DLManagedTensorVersioned
_api = ctypes.pythonapi
_api.PyCapsule_GetName.restype = ctypes.c_char_p
_api.PyCapsule_GetName.argtypes = [ctypes.py_object]
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_SetName.restype = ctypes.c_int
_api.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
_USED = {{b"dltensor": ctypes.c_char_p(b"used_dltensor"),
          b"dltensor_versioned": ctypes.c_char_p(b"used_dltensor_versioned")}}

def consume(capsule):
    '''Rename the capsule (its destructor then leaves the tensor alone) and
    return (tensor address, deleter address).'''
    name = _api.PyCapsule_GetName(capsule)
    address = _api.PyCapsule_GetPointer(capsule, name)
    assert _api.PyCapsule_SetName(capsule, _USED[name]) == 0
    struct = DLManagedTensorVersioned if name == b"dltensor_versioned" else DLManagedTensor
    tensor = struct.from_address(address)
    return address, ctypes.cast(tensor.deleter, ctypes.c_void_p).value

_libc = ctypes.CDLL(None)
_libc.pthread_create.argtypes = [ctypes.POINTER(ctypes.c_ulong), ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_void_p]
_libc.pthread_join.argtypes = [ctypes.c_ulong, ctypes.c_void_p]

def delete_on_raw_thread(tensor, deleter):
    '''The deleter on a thread CPython has never seen (no thread state).'''
    tid = ctypes.c_ulong()
    assert _libc.pthread_create(ctypes.byref(tid), None, deleter, tensor) == 0
    assert _libc.pthread_join(tid.value, None) == 0   # ctypes drops the GIL here

def delete_without_gil(tensor, deleter):
    '''This thread, its GIL released (CFUNCTYPE calls release it).'''
    ctypes.CFUNCTYPE(None, ctypes.c_void_p)(deleter)(tensor)

def delete_with_gil(tensor, deleter):
    '''This thread, holding its interpreter's GIL.'''
    ctypes.PYFUNCTYPE(None, ctypes.c_void_p)(deleter)(tensor)

def delete_on_python_thread(tensor, deleter):
    t = threading.Thread(target=delete_without_gil, args=(tensor, deleter))
    t.start()
    t.join()
"""


def interpreters_module():
    for name in ("_interpreters", "_xxsubinterpreters"):
        try:
            return __import__(name).__name__
        except ImportError:
            pass
    pytest.skip("no subinterpreter module")


# In the child: sub_code(body) is the source text for run_string, HELPERS
# and an import of memmanager first; new_interp() and the checked
# run_string are conftest's SUBINTERPRETERS.
SUB_CODE_DEF = f"HELPERS = {HELPERS!r}\n" + """
import textwrap
def sub_code(body):
    return HELPERS + "\\nimport memmanager\\n" + textwrap.dedent(body)
"""


def run_child(body, timeout=60):
    """Runs HELPERS + body in a fresh interpreter; a hang is a failure."""
    interpreters_module()   # skips where there is none
    code = HELPERS + SUBINTERPRETERS + SUB_CODE_DEF + textwrap.dedent(body)
    try:
        done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code],
                              capture_output=True, text=True, timeout=timeout,
                              cwd=TESTS)
    except subprocess.TimeoutExpired as hang:
        pytest.fail(f"the child hung (deadlock):\n{hang.stdout}\n{hang.stderr}")
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    return done.stdout


# ---------------------------------------------------------------------------
# Subinterpreters: deleters never deadlock, and run in the right interpreter
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("max_version", [None, (1, 0)])
def test_unconsumed_capsule_dropped_in_a_subinterpreter(max_version):
    # Before: the capsule destructor called PyGILState_Ensure, which tries to
    # take the GIL the subinterpreter's thread already holds: a hang.
    out = run_child(f"""
        interp = new_interp()
        interpreters.run_string(interp, sub_code('''
            b = memmanager.Buffer(8, 1)
            c = b.__dlpack__(max_version={max_version!r})
            assert b.exports == 1
            del c
            assert b.exports == 0, b.exports
            b.release()
            print("dropped")
        '''))
        interpreters.destroy(interp)
        print("done")
    """)
    assert out.split() == ["dropped", "done"]


@pytest.mark.parametrize("how", ["delete_without_gil", "delete_on_raw_thread",
                                 "delete_on_python_thread", "delete_with_gil"])
@pytest.mark.parametrize("max_version", [None, (1, 0)])
def test_consumed_tensor_deleted_inside_a_subinterpreter(how, max_version):
    out = run_child(f"""
        interp = new_interp()
        interpreters.run_string(interp, sub_code('''
            try:           # 3.13 names it _interpreters (not yet imported here)
                import _interpreters as _x
            except ImportError:
                import _xxsubinterpreters as _x
            seen = []
            def stub(info):
                seen.append(_x.get_current())
            b = memmanager.Buffer(8, 1, death_stub=stub)
            tensor, deleter = consume(b.__dlpack__(max_version={max_version!r}))
            here = _x.get_current()
            assert b.exports == 1
            {how}(tensor, deleter)
            assert b.exports == 0, b.exports
            del b          # the stub runs here, in this interpreter
            assert seen == [here], (seen, here)
            # the last reference dropped by the deleter itself
            b = memmanager.Buffer(8, 1, death_stub=stub)
            tensor, deleter = consume(b.__dlpack__(max_version={max_version!r}))
            del b
            {how}(tensor, deleter)
            assert seen == [here, here], (seen, here)
            print("ok")
        '''))
        interpreters.destroy(interp)
        print("done")
    """)
    assert out.split() == ["ok", "done"]


@pytest.mark.parametrize("how", ["delete_with_gil", "delete_without_gil",
                                 "delete_on_raw_thread"])
def test_subinterpreter_tensor_deleted_from_the_main_interpreter(how):
    # The tensor goes to the main interpreter (as an address); its deleter
    # runs there, on the main interpreter's thread: the release must happen
    # in the subinterpreter, whose object the buffer is.
    out = run_child(f"""
        import memmanager
        slots = (ctypes.c_uint64 * 2)()
        interp = new_interp()
        interpreters.run_string(interp, sub_code('''
            slots = (ctypes.c_uint64 * 2).from_address(%d)
            seen = []
            b = memmanager.Buffer(8, 1, death_stub=seen.append)
            slots[0], slots[1] = consume(b.__dlpack__(max_version=(1, 0)))
        ''' % ctypes.addressof(slots)))
        {how}(slots[0], slots[1])
        interpreters.run_string(interp, sub_code('''
            assert b.exports == 0, b.exports
            b.release()
            assert len(seen) == 1
            print("released")
        '''))
        interpreters.destroy(interp)
        print("done")
    """)
    assert out.split() == ["released", "done"]


@pytest.mark.parametrize("how", ["delete_with_gil", "delete_on_raw_thread"])
def test_deleter_after_its_subinterpreter_was_destroyed(how):
    # The interpreter is gone: the deleter must not touch its objects (they
    # are leaked, like at process exit), and must not crash or hang.
    out = run_child(f"""
        import memmanager
        slots = (ctypes.c_uint64 * 2)()
        interp = new_interp()
        interpreters.run_string(interp, sub_code('''
            slots = (ctypes.c_uint64 * 2).from_address(%d)
            b = memmanager.Buffer(8, 1)
            slots[0], slots[1] = consume(b.__dlpack__())
        ''' % ctypes.addressof(slots)))
        interpreters.destroy(interp)
        {how}(slots[0], slots[1])
        memmanager.Buffer(8, 1).release()
        print("done")
    """)
    assert out.split() == ["done"]


def test_deleter_while_the_subinterpreter_is_ending_is_run_by_it():
    # Once the interpreter's atexit callbacks have run, no other thread may
    # enter it (Py_EndInterpreter would find a second thread state): the
    # release is queued and run by the interpreter itself, here when it next
    # drops a capsule, at the latest when the module is cleared.
    out = run_child("""
        interp = new_interp()
        interpreters.run_string(interp, sub_code('''
            import atexit
            b = memmanager.Buffer(8, 1)
            tensor, deleter = consume(b.__dlpack__())
            atexit._run_exitfuncs()          # the interpreter "is ending"
            delete_on_raw_thread(tensor, deleter)
            assert b.exports == 1            # queued, not run on that thread
            del_me = b.__dlpack__()
            del del_me                       # a release inside: runs the queue
            assert b.exports == 0, b.exports
            tensor, deleter = consume(b.__dlpack__())
            delete_on_raw_thread(tensor, deleter)
            keep = b                         # queued until the interpreter ends
            print("queued")
        '''))
        interpreters.destroy(interp)
        print("done")
    """)
    assert out.split() == ["queued", "done"]


def test_memmanager_works_in_a_subinterpreter():
    # Module state is per interpreter; the registry is process-wide.
    out = run_child("""
        import memmanager, numpy
        main = memmanager.Buffer(16, 1, init_value=1)
        interp = new_interp()
        interpreters.run_string(interp, sub_code('''
            import gc
            stubs = []
            b = memmanager.Buffer(16, 1, init_value=7, death_stub=stubs.append)
            assert bytes(b.region(0, 4)) == b"\\\\x07" * 4
            assert b.extract_buffer_region(0, 1) == b"\\\\x07\\\\x07"
            mv = b.create_view("memoryview")
            b.delete_view("memoryview_default")
            del mv
            c = memmanager.Buffer.consume(b"abcdef", 6, 1, delayed_gc=False)
            assert c[0] == 97
            p = memmanager.Buffer(4, 1, delayed_gc=True)
            assert p.identifier in memmanager.get_delayed_gc_objects()
            memmanager.collect_delayed(p)
            assert any(r.address == b.address for r in memmanager.live_buffers())
            b.release()
            assert len(stubs) == 1
            pinned = memmanager.Buffer(4, 1, delayed_gc=True, death_stub=print)
            capsule = memmanager.Buffer(4, 1).__dlpack__()
            print("sub ok")
        '''))
        interpreters.destroy(interp)
        assert main.extract_buffer_region(0, 0) == b"\\x01"
        main.release()
        print("done")
    """)
    assert out.split()[0] == "sub"
    assert out.split()[-1] == "done"


def test_main_interpreter_deleter_on_a_raw_thread():
    out = run_child("""
        import memmanager
        b = memmanager.Buffer(8, 1)
        for max_version in (None, (1, 0)):
            tensor, deleter = consume(b.__dlpack__(max_version=max_version))
            delete_on_raw_thread(tensor, deleter)
            assert b.exports == 0, b.exports
        # a thread that holds no thread state drops the last reference
        seen = []
        b = memmanager.Buffer(8, 1, death_stub=seen.append)
        tensor, deleter = consume(b.__dlpack__())
        del b
        delete_on_raw_thread(tensor, deleter)
        assert len(seen) == 1
        print("done")
    """)
    assert out.split() == ["done"]


def test_deleter_whose_release_runs_the_atexit_callbacks():
    # The release, on a visiting thread, runs a death stub that runs the
    # atexit callbacks, memmanager's among them: it must not wait for its
    # own thread to leave the interpreter.
    out = run_child("""
        import atexit, memmanager
        b = memmanager.Buffer(8, 1, death_stub=lambda info: atexit._run_exitfuncs())
        tensor, deleter = consume(b.__dlpack__())
        del b
        delete_on_raw_thread(tensor, deleter)
        print("done")
    """, timeout=30)
    assert out.split() == ["done"]


def test_foreign_thread_deleter_at_exit_does_not_hang():
    # A raw thread calls the deleter while the main interpreter is exiting.
    out = run_child("""
        import atexit, memmanager
        b = memmanager.Buffer(8, 1, delayed_gc=True)
        tensor, deleter = consume(b.__dlpack__())
        def late():
            delete_on_raw_thread(tensor, deleter)
            print("called")
        atexit.register(late)      # runs before memmanager's own callbacks
        b2 = memmanager.Buffer(8, 1)
        t2, d2 = consume(b2.__dlpack__())
        atexit._run_exitfuncs()    # memmanager's callback too: now "ending"
        delete_on_raw_thread(t2, d2)
        print("done")
    """)
    assert out.split() == ["called", "done"]


# ---------------------------------------------------------------------------
# Buggy consumers: the deleter called twice, or without renaming the capsule
# ---------------------------------------------------------------------------

pythonapi = ctypes.pythonapi
pythonapi.PyCapsule_GetName.restype = ctypes.c_char_p
pythonapi.PyCapsule_GetName.argtypes = [ctypes.py_object]
pythonapi.PyCapsule_GetPointer.restype = ctypes.c_void_p
pythonapi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
pythonapi.PyCapsule_SetName.restype = ctypes.c_int
pythonapi.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
_USED = {b"dltensor": ctypes.c_char_p(b"used_dltensor"),
         b"dltensor_versioned": ctypes.c_char_p(b"used_dltensor_versioned")}


def open_capsule(capsule):
    name = pythonapi.PyCapsule_GetName(capsule)
    struct = DLManagedTensorVersioned if name == b"dltensor_versioned" else DLManagedTensor
    return struct.from_address(pythonapi.PyCapsule_GetPointer(capsule, name))


def rename(capsule):
    name = pythonapi.PyCapsule_GetName(capsule)
    assert pythonapi.PyCapsule_SetName(capsule, _USED[name]) == 0


@pytest.mark.parametrize("max_version", [None, (1, 0)])
def test_deleter_called_twice_while_the_capsule_lives(max_version):
    buf = Buffer(8, 1)
    refs = sys.getrefcount(buf)
    capsule = buf.__dlpack__(max_version=max_version)
    tensor = open_capsule(capsule)
    rename(capsule)
    tensor.deleter(ctypes.pointer(tensor))
    tensor.deleter(ctypes.pointer(tensor))       # the consumer's bug
    assert buf.exports == 0
    assert sys.getrefcount(buf) == refs
    del capsule
    assert buf.exports == 0
    assert sys.getrefcount(buf) == refs
    buf.release()


@pytest.mark.parametrize("max_version", [None, (1, 0)])
def test_deleter_called_but_capsule_not_renamed(max_version):
    # Before: the capsule destructor called the deleter again on the freed
    # block (use-after-free, double free, exports -1, the buffer decref'd
    # twice).
    buf = Buffer(8, 1)
    refs = sys.getrefcount(buf)
    capsule = buf.__dlpack__(max_version=max_version)
    tensor = open_capsule(capsule)
    tensor.deleter(ctypes.pointer(tensor))
    assert buf.exports == 0
    del tensor
    del capsule
    gc.collect()
    assert buf.exports == 0
    assert sys.getrefcount(buf) == refs
    buf.release()
    assert buf.released


def test_unconsumed_capsule_blocks_release_until_it_dies():
    seen = []
    buf = Buffer(8, 1, death_stub=seen.append)
    capsule = buf.__dlpack__(max_version=(1, 0))
    with pytest.raises(BufferError, match="1"):
        buf.release()
    assert not buf.released and not seen
    assert buf.extract_buffer_region(0, 0) is not None
    del capsule
    buf.release()
    assert buf.released and len(seen) == 1


def test_consumed_tensor_outlives_buffer_reference():
    seen = []
    buf = Buffer(8, 1, init_value=5, death_stub=seen.append)
    array = numpy.from_dlpack(buf)
    del buf
    gc.collect()
    assert not seen                     # the array's tensor keeps it
    assert array.sum() == 40
    del array
    gc.collect()
    assert len(seen) == 1


# ---------------------------------------------------------------------------
# Hostile __dlpack__ arguments
# ---------------------------------------------------------------------------


class Releasing:
    """An int-like whose __index__ / __bool__ / __eq__ releases a buffer."""

    def __init__(self, buf, value):
        self.buf, self.value, self.calls = buf, value, 0

    def _release(self):
        self.calls += 1
        self.buf.release()

    def __index__(self):
        self._release()
        return self.value

    def __bool__(self):
        self._release()
        return bool(self.value)

    def __eq__(self, other):
        self._release()
        return self.value == other

    __hash__ = object.__hash__

    def __repr__(self):
        self._release()
        return "Releasing()"


@pytest.mark.parametrize("make_kwargs", [
    lambda b: {"max_version": (Releasing(b, 1), 0)},
    lambda b: {"max_version": (1, Releasing(b, 0))},
    lambda b: {"dl_device": (Releasing(b, KDL_CPU), 0)},
    lambda b: {"dl_device": (KDL_CPU, Releasing(b, 0))},
    lambda b: {"copy": Releasing(b, True)},
    lambda b: {"copy": Releasing(b, False)},
    lambda b: {"max_version": (1, 0), "copy": Releasing(b, True)},
], ids=["major", "minor", "device type", "device id", "copy True", "copy False",
        "versioned copy"])
def test_arguments_that_release_the_buffer_mid_call(make_kwargs):
    buf = Buffer(64, 1)
    address = buf.address
    kwargs = make_kwargs(buf)
    with pytest.raises(ValueError, match="released"):
        buf.__dlpack__(**kwargs)
    assert buf.released
    gc.collect()
    assert not any(r.address == address for r in memmanager.live_buffers())


def test_copy_whose_bool_raises():
    class Bad:
        def __bool__(self):
            raise ZeroDivisionError

    buf = Buffer(8, 1)
    with pytest.raises(ZeroDivisionError):
        buf.__dlpack__(copy=Bad())
    assert buf.exports == 0
    buf.release()


def test_arguments_that_export_the_buffer_mid_call():
    buf = Buffer(8, 1)
    held = []

    class Exporting:
        def __index__(self):
            held.append(memoryview(buf))
            return 1

    capsule = buf.__dlpack__(max_version=(Exporting(), 0))
    assert buf.exports == 2
    del capsule
    held.pop().release()
    assert buf.exports == 0
    buf.release()


def test_hostile_stream_on_a_cpu_buffer_runs_none_of_its_code():
    buf = Buffer(8, 1)
    stream = Releasing(buf, 1)
    with pytest.raises(BufferError, match="stream=None"):
        buf.__dlpack__(stream=stream)
    assert stream.calls == 0            # not even its __repr__ for the message
    assert not buf.released and buf.exports == 0
    buf.release()


@pytest.mark.parametrize("bad", [(1,), (1, 2, 3), [1, 0], "ab", 1.5, (1.5, 0)])
def test_malformed_pairs(bad):
    buf = Buffer(8, 1)
    for key in ("max_version", "dl_device"):
        with pytest.raises(TypeError):
            buf.__dlpack__(**{key: bad})
    assert buf.exports == 0
    buf.release()


# ---------------------------------------------------------------------------
# Device memory never reaches the host
# ---------------------------------------------------------------------------


def capsule_device(capsule):
    tensor = open_capsule(capsule).dl_tensor
    return (tensor.device.device_type, tensor.device.device_id), tensor.data


@pytest.mark.parametrize("allocator, expected", [
    ("CudaDevice", (KDL_CUDA, 0)),
    ("CudaManaged", (KDL_CUDA_MANAGED, 0)),
    ("CudaHost", (KDL_CPU, 0)),
])
def test_dlpack_device_of_gpu_allocators(fake_cuda, make_buffer, allocator, expected):
    buf = make_buffer(16, 1, allocator=allocator)
    assert buf.__dlpack_device__() == expected
    for max_version in (None, (1, 0)):
        capsule = buf.__dlpack__(max_version=max_version)
        assert capsule_device(capsule) == (expected, buf.address)
        del capsule
    assert buf.exports == 0


def test_cudadevice_dlpack_with_a_stream(fake_cuda, make_buffer):
    buf = make_buffer(16, 1, allocator="CudaDevice")
    for stream in (1, 2, -1, 12345):
        capsule = buf.__dlpack__(stream=stream, dl_device=(KDL_CUDA, 0))
        assert capsule_device(capsule)[0] == (KDL_CUDA, 0)
        del capsule
    stream = Releasing(buf, 1)
    with pytest.raises(TypeError, match="stream"):
        buf.__dlpack__(stream=stream)
    assert stream.calls == 0 and not buf.released
    assert buf.exports == 0


@pytest.mark.parametrize("kwargs", [
    {"dl_device": (KDL_CPU, 0)},
    {"dl_device": (KDL_CUDA, 1)},
    {"dl_device": (KDL_CUDA_MANAGED, 0)},
    {"copy": True},
    {"copy": True, "max_version": (1, 0)},
    {"copy": True, "dl_device": (KDL_CPU, 0)},
])
def test_cudadevice_dlpack_refuses_the_host(fake_cuda, make_buffer, kwargs):
    # Before: copy=True memcpy'd from the device address (a crash), and the
    # capsule said kDLCPU.
    buf = make_buffer(16, 1, allocator="CudaDevice", init_value=3)
    with pytest.raises(BufferError):
        buf.__dlpack__(**kwargs)
    assert buf.exports == 0
    assert fake_cuda.read(buf.address, 16) == b"\x03" * 16


def test_numpy_from_dlpack_refuses_cudadevice_memory(fake_cuda, make_buffer):
    buf = make_buffer(16, 1, allocator="CudaDevice", init_value=3)
    with pytest.raises((BufferError, RuntimeError, TypeError, ValueError)):
        numpy.from_dlpack(buf)
    with pytest.raises((BufferError, RuntimeError, TypeError, ValueError)):
        numpy.from_dlpack(buf, device="cpu")
    gc.collect()
    assert buf.exports == 0


DEVICE_HOST_PATHS = {
    "pickle 0": lambda b: pickle.dumps(b, protocol=0),
    "pickle 2": lambda b: pickle.dumps(b, protocol=2),
    "pickle 5": lambda b: pickle.dumps(b, protocol=5),
    "pickle 5 out-of-band": lambda b: pickle.dumps(b, protocol=5, buffer_callback=list),
    "copy": copy.copy,
    "deepcopy": copy.deepcopy,
    "numpy view": lambda b: b.create_view("numpy"),
    "memoryview view": lambda b: b.create_view("memoryview"),
    "ctypes view": lambda b: b.create_view("ctypes"),
    "numpy.asarray": numpy.asarray,
    "numpy.frombuffer": numpy.frombuffer,
    "bytearray": bytearray,
    "consume": lambda b: Buffer.consume(b, 4, 1, delayed_gc=False),
    "consume copy": lambda b: Buffer.consume(b, 4, 1, delayed_gc=False, copy=True),
}


@pytest.mark.parametrize("path", DEVICE_HOST_PATHS)
def test_cudadevice_memory_never_reaches_the_host(fake_cuda, make_buffer, path):
    buf = make_buffer(16, 1, allocator="CudaDevice", init_value=3)
    with pytest.raises(BufferError, match="on the GPU"):
        DEVICE_HOST_PATHS[path](buf)
    assert buf.exports == 0
    assert fake_cuda.read(buf.address, 16) == b"\x03" * 16


def test_cudadevice_has_no_host_array_interfaces(fake_cuda, make_buffer):
    buf = make_buffer(16, 1, allocator="CudaDevice")
    assert not hasattr(buf, "__array_interface__")
    assert not hasattr(buf, "__cuda_array_interface__")   # device_view() has it
    view = buf.device_view()
    assert view.__dlpack_device__() == (KDL_CUDA, 0)
    assert view.__cuda_array_interface__["data"][0] == buf.address
    del view
    assert buf.exports == 0


@pytest.mark.parametrize("dl_device, expected", [
    (None, (KDL_CUDA_MANAGED, 0)),
    ((KDL_CUDA_MANAGED, 0), (KDL_CUDA_MANAGED, 0)),
    ((KDL_CPU, 0), (KDL_CPU, 0)),
    ((KDL_CUDA, 0), (KDL_CUDA, 0)),
])
def test_cudamanaged_exports_where_asked(fake_cuda, make_buffer, dl_device, expected):
    buf = make_buffer(16, 1, allocator="CudaManaged")
    capsule = buf.__dlpack__(dl_device=dl_device, max_version=(1, 0))
    assert capsule_device(capsule) == (expected, buf.address)
    del capsule
    assert buf.exports == 0


@pytest.mark.parametrize("kwargs", [
    {"dl_device": (KDL_CUDA, 1)},
    {"dl_device": (KDL_CPU, 1)},
    {"dl_device": (KDL_CUDA_HOST, 0)},
    {"dl_device": (KDL_CPU, 0), "stream": 1},
    {"copy": True, "dl_device": (KDL_CUDA_MANAGED, 0)},
    {"copy": True, "stream": 1},
])
def test_cudamanaged_refusals(fake_cuda, make_buffer, kwargs):
    buf = make_buffer(16, 1, allocator="CudaManaged")
    with pytest.raises(BufferError):
        buf.__dlpack__(**kwargs)
    assert buf.exports == 0


def test_cudamanaged_is_readable_by_numpy(fake_cuda, make_buffer):
    buf = make_buffer(16, 1, allocator="CudaManaged", init_value=4)
    array = numpy.from_dlpack(buf)
    assert array.sum() == 64
    copied = numpy.from_dlpack(buf, copy=True)
    assert copied.sum() == 64
    del array, copied
    gc.collect()
    assert buf.exports == 0


def test_borrowed_view_of_device_memory_stays_on_the_device(fake_cuda, make_buffer):
    # Found after the merge: Borrowed with owner= a CudaDevice buffer may now
    # overlap it (it holds an export), and it read device memory from the
    # host (a segfault on a real GPU) and called itself CPU memory.
    dev = make_buffer(16, 1, allocator="CudaDevice")
    view = Buffer.consume(dev.address, 16, 1, allocator="Borrowed", owner=dev,
                          delayed_gc=False)
    with pytest.raises(BufferError, match="GPU"):
        view[0]
    with pytest.raises(BufferError, match="GPU"):
        memoryview(view)
    with pytest.raises(BufferError, match="GPU"):
        view.extract_buffer_region(0, 3)
    assert view.__dlpack_device__() == (KDL_CUDA, 0)
    with pytest.raises(BufferError):
        dev.release()
    view.release()
    dev.release()
