"""Attacks on the merged fixes of issue 12 (an outside review of the
branches together): each test crashed, hung or failed before its fix.

- a Borrowed or zero-copy buffer inherits what its exporters forbid:
  writes to read-only memory, host access to device memory;
- a DLPack copy made without the GIL cannot be released under the copy;
- a subinterpreter ended by the main interpreter's finalisation keeps the
  process's exit status;
- a Python plug-in's handle with the buffer protocol keeps its memory;
- OverlapError names the identifier of a non-owning buffer, not its id();
- zero-copy consume of a NumPy array or a stored view over a Buffer is
  allowed, as consume(buf) is.
"""

import ctypes
import gc
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import memmanager
from memmanager import Buffer, OverlapError

from conftest import SUBINTERPRETERS


def run_python(code, timeout=60):
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                           capture_output=True, text=True, timeout=timeout)
    return child


def test_borrowed_over_a_read_only_buffer_is_read_only():
    source = b"immutable bytes!"
    adopted = Buffer.consume(source, 16, 1, delayed_gc=False)
    assert adopted.readonly
    view = Buffer.consume(adopted.address, 16, 1, allocator="Borrowed",
                          owner=adopted, delayed_gc=False)
    assert view.readonly
    with pytest.raises(TypeError):
        view[0:3] = b"XYZ"
    with memoryview(view) as exported:
        assert exported.readonly
    assert source == b"immutable bytes!"
    view.release()
    adopted.release()


def test_borrowed_over_a_read_only_attach_is_read_only():
    created = Buffer(4096, 1, allocator="SharedMemory", init_value=7)
    attached = Buffer.attach(created.name, readonly=True)
    view = Buffer.consume(attached.address, 4096, 1, allocator="Borrowed",
                          owner=attached, delayed_gc=False)
    assert view.readonly
    with pytest.raises(TypeError):
        view[0] = 1            # was a SIGSEGV: a write to a PROT_READ page
    assert view[0] == 7
    view.release()
    attached.release()
    created.release()


def test_dlpack_copy_cannot_be_released_during_the_copy():
    # Another thread finds the fresh copy through gc.get_objects() while the
    # GIL is given back for the memcpy (1 MiB and more) and releases it.
    n = 8 << 20
    source = Buffer(n, 1, init_value=1)
    stop = threading.Event()
    released = []

    def hunter():
        while not stop.is_set():
            for obj in gc.get_objects():
                if (type(obj) is Buffer and obj is not source and
                        not obj.released and obj.nbytes == n):
                    try:
                        obj.release()
                        released.append(1)
                    except BufferError:
                        pass

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=hunter)
    thread.start()
    try:
        for _ in range(10):
            capsule = source.__dlpack__(copy=True)
            del capsule
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old)
    source.release()


def test_subinterpreter_ended_at_exit_keeps_the_exit_status():
    # memmanager's atexit callback in the subinterpreter gave the GIL back
    # and took it again while the runtime finalised: the main thread ended
    # there, the exit status was lost, and with another thread alive the
    # process hung.
    child = run_python(SUBINTERPRETERS + textwrap.dedent("""
        import sys, threading, time
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
        iid = new_interp()
        interpreters.run_string(iid, "import memmanager")
        sys.exit(3)
    """), timeout=20)
    assert child.returncode == 3, child.stderr[-2000:]


class BytearrayPlugin:
    def malloc(self, n, s, init, options):
        return bytearray([init or 0]) * (n * s)

    def get_buffer_address(self, handle):
        return ctypes.addressof((ctypes.c_char * len(handle)).from_buffer(handle))

    def free(self, address):
        pass


def test_plugin_bytearray_handle_keeps_its_memory():
    memmanager.register_allocator("AttackMergedBA", BytearrayPlugin())
    buf = Buffer(4096, 1, allocator="AttackMergedBA", init_value=9)
    for ref in gc.get_referents(buf):
        if isinstance(ref, bytearray):
            with pytest.raises(BufferError):
                ref.clear()    # was: the buffer's memory freed under it
    assert buf[0] == 9 and buf[4095] == 9
    buf.release()
    gc.collect()
    # Later tests enumerate the allocators: leave one that refuses politely.
    memmanager.register_allocator("AttackMergedBA", RetiredPlugin())


class RetiredPlugin(BytearrayPlugin):
    def malloc(self, n, s, init, options):
        raise ValueError("a retired test allocator")


def test_overlap_error_names_the_identifier_of_a_non_owning_buffer():
    data = b"x" * 64
    adopted = Buffer.consume(data, 64, 1, delayed_gc=False)
    with pytest.raises(OverlapError) as error:
        Buffer.consume(adopted.address, 8, 1, allocator="CMalloc")
    assert str(adopted.identifier) in str(error.value)
    assert str(id(adopted)) not in str(error.value)
    adopted.release()


@pytest.mark.parametrize("make", [
    lambda buf: np.asarray(buf),
    lambda buf: np.frombuffer(buf, dtype=np.uint8),
    lambda buf: buf.create_view("numpy"),
    lambda buf: np.asarray(buf)[8:],
])
def test_zero_copy_consume_of_arrays_over_a_buffer(make):
    buf = Buffer(64, 1, init_value=5)
    array = make(buf)
    adopted = Buffer.consume(array, 8, 1, delayed_gc=False)
    assert adopted[0] == 5
    with pytest.raises(BufferError):
        buf.release()          # the adopted buffer holds an export of it
    adopted.release()
    del array
    if "numpy_default" in buf._view_names():
        buf.delete_view("numpy_default")
    gc.collect()
    buf.release()
