"""The CUDA loader (memmanager.cuda) and the GPU allocators CudaHost,
CudaDevice and CudaManaged.

Runs without a GPU: `no_cuda` points memmanager at a library that does not
exist, `fake_cuda` at the fake driver built from tests/fake_cuda.c (see
conftest.py), which checks every driver call memmanager makes.
"""

import ctypes
import ctypes.util
import gc
import os
import subprocess
import sys
import textwrap

import numpy
import pytest

import memmanager
from conftest import CUDA_LIBRARY_VARIABLE, cuda_library

CUDA_ALLOCATORS = ("CudaHost", "CudaDevice", "CudaManaged")


# ---------------------------------------------------------------------------
# Without a GPU
# ---------------------------------------------------------------------------


def test_the_gpu_allocators_are_always_registered(no_cuda):
    assert set(CUDA_ALLOCATORS) <= set(memmanager.allocators())


def test_no_gpu_is_reported_with_the_loaders_reason(no_cuda):
    assert memmanager.cuda.is_available() is False
    assert memmanager.cuda.device_count() == 0
    assert memmanager.cuda.driver_version() is None
    reason = memmanager.cuda.unavailable_reason()
    assert no_cuda in reason
    assert "cannot load the CUDA driver" in reason


@pytest.mark.parametrize("allocator", CUDA_ALLOCATORS)
def test_gpu_allocators_raise_device_unavailable(no_cuda, allocator, registry_unchanged):
    with registry_unchanged():
        with pytest.raises(memmanager.DeviceUnavailableError) as caught:
            memmanager.Buffer(16, 4, allocator=allocator)
    assert no_cuda in str(caught.value)


def test_device_unavailable_error_is_a_runtime_error():
    assert issubclass(memmanager.DeviceUnavailableError, memmanager.MemManagerError)
    assert issubclass(memmanager.DeviceUnavailableError, RuntimeError)
    assert memmanager.cuda.DeviceUnavailableError is memmanager.DeviceUnavailableError


def test_device_calls_raise_device_unavailable(no_cuda, make_buffer):
    buf = make_buffer(64, 1)
    with pytest.raises(memmanager.DeviceUnavailableError, match="cannot load"):
        buf.device_movement("enter", "to")
    with pytest.raises(memmanager.DeviceUnavailableError, match="cannot load"):
        buf.device_view()
    assert buf.device_mappings() == {}
    assert buf.exports == 0


def test_default_library_is_libcuda(fake_cuda_library):
    with cuda_library(None):
        assert CUDA_LIBRARY_VARIABLE not in os.environ
        count, reason, library, _ = memmanager._core._cuda_probe()
        assert library == "libcuda.so.1"
        assert (count > 0) == (reason is None)


def test_a_library_without_the_entry_points_is_refused():
    libc = ctypes.util.find_library("c") or "libc.so.6"
    with cuda_library(libc):
        assert not memmanager.cuda.is_available()
        reason = memmanager.cuda.unavailable_reason()
        assert "has no entry point cuInit" in reason and libc in reason


def test_a_failed_load_is_kept_not_retried(no_cuda, fake_cuda_library):
    assert not memmanager.cuda.is_available()
    os.environ[CUDA_LIBRARY_VARIABLE] = str(fake_cuda_library)
    # Resolved once: the variable is read at the first use only.
    assert not memmanager.cuda.is_available()
    assert no_cuda in memmanager.cuda.unavailable_reason()


# ---------------------------------------------------------------------------
# The loader, on the fake driver
# ---------------------------------------------------------------------------


def test_fake_driver_is_available(fake_cuda):
    assert memmanager.cuda.is_available() is True
    assert memmanager.cuda.device_count() == fake_cuda.get("device_count") == 2
    assert memmanager.cuda.unavailable_reason() is None
    assert memmanager.cuda.driver_version() == 12040


def test_driver_is_initialised_once(fake_cuda):
    before = fake_cuda.get("init_calls")
    for _ in range(3):
        memmanager.cuda.is_available()
        memmanager.cuda.device_count()
    assert fake_cuda.get("init_calls") == before + 1


def test_cuinit_failure_gives_the_drivers_error_text(fake_cuda):
    fake_cuda.set("init_error", 100)
    memmanager._core._cuda_reset()
    assert not memmanager.cuda.is_available()
    reason = memmanager.cuda.unavailable_reason()
    assert "cuInit failed" in reason
    assert "CUDA_ERROR_NO_DEVICE" in reason and "no CUDA-capable device" in reason
    with pytest.raises(memmanager.DeviceUnavailableError, match="CUDA_ERROR_NO_DEVICE"):
        memmanager.Buffer(8, 1, allocator="CudaHost")


def test_zero_devices_is_unavailable(fake_cuda, make_buffer):
    fake_cuda.set("device_count", 0)
    memmanager._core._cuda_reset()
    assert memmanager.cuda.device_count() == 0
    assert "finds no device" in memmanager.cuda.unavailable_reason()
    with pytest.raises(memmanager.DeviceUnavailableError, match="finds no device"):
        make_buffer(8, 1).device_movement("enter", "to")


def test_v2_entry_points_are_preferred(fake_cuda, make_buffer):
    buf = make_buffer(64, 1, init_value=1)
    buf.device_movement("enter", "to")
    buf.device_movement("update", "from")
    buf.device_movement("exit", "delete")
    dev = make_buffer(64, 1, allocator="CudaDevice", init_value=2)
    dev.release()
    # The fake's pre-_v2 names fail and count; none was called.
    assert fake_cuda.get("legacy_calls") == 0
    assert fake_cuda.get("htod_calls") >= 1 and fake_cuda.get("memset_calls") >= 1


def test_primary_contexts_are_retained_per_device_and_released(fake_cuda, make_buffer):
    retained = fake_cuda.get("retained")
    buf = make_buffer(32, 1)
    buf.device_movement("enter", "alloc", device_id=0)
    assert fake_cuda.get("retained") == retained + 1
    buf.device_movement("enter", "alloc", device_id=0)
    assert fake_cuda.get("retained") == retained + 1
    buf.device_movement("enter", "alloc", device_id=1)
    assert fake_cuda.get("retained") == retained + 2
    buf.release()
    # Forgetting the driver releases both once nothing uses it any more.
    memmanager._core._cuda_reset()
    gc.collect()
    assert fake_cuda.get("retained") == retained


def test_buffers_keep_their_driver_across_a_reset(fake_cuda):
    retained = fake_cuda.get("retained")
    buf = memmanager.Buffer(32, 1, allocator="CudaDevice", init_value=9)
    mapped = memmanager.Buffer(32, 1, init_value=4)
    mapped.device_movement("enter", "to")
    memmanager._core._cuda_reset()
    gc.collect()
    assert fake_cuda.get("retained") == retained + 1    # still in use
    assert fake_cuda.read(buf.device_view().address, 32) == b"\x09" * 32
    mapped.device_movement("exit", "from")
    assert bytes(mapped) == b"\x04" * 32
    del buf, mapped
    gc.collect()
    assert fake_cuda.get("retained") == retained


def test_importing_memmanager_does_not_load_the_driver(fake_cuda_library):
    script = textwrap.dedent(f"""
        import ctypes
        fake = ctypes.CDLL({str(fake_cuda_library)!r})
        fake.fake_get.restype = ctypes.c_long
        import memmanager
        b = memmanager.Buffer(64, 1, allocator="CMalloc")
        b.device_mappings()
        assert fake.fake_get(b"init_calls") == 0, "loaded at import"
        assert memmanager.cuda.is_available()
        assert memmanager.cuda.device_count() == 2
        assert fake.fake_get(b"init_calls") == 1
        print("ok")
    """)
    env = dict(os.environ, **{CUDA_LIBRARY_VARIABLE: str(fake_cuda_library)})
    result = subprocess.run([sys.executable, "-c", script], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# ---------------------------------------------------------------------------
# CudaHost: pinned host memory, an ordinary buffer on the CPU
# ---------------------------------------------------------------------------


def test_cudahost_is_host_memory(fake_cuda, make_buffer):
    before = fake_cuda.get("host_live")
    buf = make_buffer(256, 4, allocator="CudaHost", init_value="zero")
    assert fake_cuda.get("host_live") == before + 1
    assert buf.allocator == "CudaHost"
    array = numpy.asarray(buf)
    assert not array.any()
    array[:] = 7
    assert buf[5] == 7 and bytes(buf.region(0, 3)) == b"\x07" * 3
    del array
    buf.release()
    assert fake_cuda.get("host_live") == before


def test_cudahost_init_byte_and_stats(fake_cuda, make_buffer):
    buf = make_buffer(100, 1, allocator="CudaHost", init_value=0x41)
    assert bytes(buf) == b"A" * 100
    entry = memmanager.stats()["CudaHost"]
    assert entry["live_buffers"] >= 1 and entry["live_bytes"] >= 100


def test_cudahost_is_freed_when_the_buffer_dies(fake_cuda):
    before = fake_cuda.get("host_live")
    buf = memmanager.Buffer(2 << 20, 1, allocator="CudaHost")   # freed without the GIL
    assert fake_cuda.get("host_live") == before + 1
    del buf
    assert fake_cuda.get("host_live") == before


def test_cuda_allocators_cannot_adopt(fake_cuda, libc):
    address = libc.malloc(64)
    try:
        for allocator in CUDA_ALLOCATORS:
            with pytest.raises(TypeError, match="cannot adopt"):
                memmanager.Buffer.consume(address, 64, 1, allocator=allocator)
            with pytest.raises(TypeError):
                memmanager.Buffer.consume(bytearray(64), 64, 1, allocator=allocator)
    finally:
        libc.free(address)


@pytest.mark.parametrize("allocator", CUDA_ALLOCATORS)
def test_cuda_allocators_take_no_options(fake_cuda, allocator, registry_unchanged):
    with registry_unchanged(), pytest.raises(TypeError, match="device_id"):
        memmanager.Buffer(8, 1, allocator=allocator, device_id=1)


# ---------------------------------------------------------------------------
# CudaDevice: device memory; the host cannot touch it
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("init_value, expected", [("zero", 0), (0, 0), (7, 7), ("A", 65)])
def test_cudadevice_init_value_is_set_on_the_device(fake_cuda, make_buffer, init_value,
                                                    expected):
    buf = make_buffer(64, 2, allocator="CudaDevice", init_value=init_value)
    assert fake_cuda.read(buf.address, 128) == bytes([expected]) * 128


def test_cudadevice_uninitialised_needs_no_memset(fake_cuda, make_buffer):
    memsets = fake_cuda.get("memset_calls")
    make_buffer(64, 1, allocator="CudaDevice")
    assert fake_cuda.get("memset_calls") == memsets


HOST_ACCESSES = {
    "memoryview": lambda b: memoryview(b),
    "numpy": lambda b: numpy.asarray(b),
    "bytes": lambda b: bytes(b),
    "region": lambda b: b.region(0, 4),
    "extract_buffer_region": lambda b: b.extract_buffer_region(0, 3),
    "item": lambda b: b[0],
    "negative item": lambda b: b[-1],
    "slice": lambda b: b[0:4],
    "extended slice": lambda b: b[::2],
    "store item": lambda b: b.__setitem__(0, 1),
    "store slice": lambda b: b.__setitem__(slice(0, 2), b"xy"),
    "ctypes": lambda b: (ctypes.c_char * len(b)).from_buffer(b),
    "consume": lambda b: memmanager.Buffer.consume(b, 4, 1, copy=True),
}


@pytest.mark.parametrize("access", HOST_ACCESSES)
def test_cudadevice_memory_is_not_reachable_from_the_host(fake_cuda, make_buffer, access):
    buf = make_buffer(16, 1, allocator="CudaDevice", init_value=3)
    with pytest.raises(BufferError, match="on the GPU"):
        HOST_ACCESSES[access](buf)
    assert buf.exports == 0
    assert fake_cuda.read(buf.address, 16) == b"\x03" * 16   # untouched


def test_cudadevice_metadata_still_works(fake_cuda, make_buffer):
    buf = make_buffer(16, 4, allocator="CudaDevice")
    assert len(buf) == buf.nbytes == 64
    assert buf.address == buf.get_buffer() != 0
    assert buf.allocator == "CudaDevice"
    assert "CudaDevice" in repr(buf)
    assert any(row.address == buf.address for row in memmanager.live_buffers())


def test_cudadevice_is_freed_on_release_and_death(fake_cuda):
    before = fake_cuda.get("device_live")
    live = len(memmanager.live_buffers())
    buf = memmanager.Buffer(64, 1, allocator="CudaDevice")
    assert fake_cuda.get("device_live") == before + 1
    buf.release()
    assert fake_cuda.get("device_live") == before
    buf = memmanager.Buffer(64, 1, allocator="CudaDevice")
    del buf
    assert fake_cuda.get("device_live") == before
    assert len(memmanager.live_buffers()) == live


def test_cudadevice_death_stub_sees_the_device_address(fake_cuda):
    seen = []
    buf = memmanager.Buffer(8, 1, allocator="CudaDevice", death_stub=seen.append)
    address = buf.address
    del buf
    assert seen and seen[0]["buffer_address"] == address


def test_cudadevice_out_of_memory_is_memory_error(fake_cuda, registry_unchanged):
    fake_cuda.set("fail_next_alloc", 2)     # CUDA_ERROR_OUT_OF_MEMORY
    with registry_unchanged(), pytest.raises(MemoryError):
        memmanager.Buffer(64, 1, allocator="CudaDevice")


def test_failed_device_fill_frees_the_block(fake_cuda, registry_unchanged):
    before = fake_cuda.get("device_live")
    fake_cuda.set("fail_next_memset", 1)    # CUDA_ERROR_INVALID_VALUE
    with registry_unchanged():
        with pytest.raises(memmanager.DeviceUnavailableError,
                           match="CUDA_ERROR_INVALID_VALUE"):
            memmanager.Buffer(64, 1, allocator="CudaDevice", init_value=5)
    assert fake_cuda.get("device_live") == before


def test_failed_zero_fill_is_memory_error(fake_cuda, registry_unchanged):
    before = fake_cuda.get("device_live")
    fake_cuda.set("fail_next_memset", 1)
    with registry_unchanged(), pytest.raises(MemoryError):
        memmanager.Buffer(64, 1, allocator="CudaDevice", init_value="zero")
    assert fake_cuda.get("device_live") == before


# ---------------------------------------------------------------------------
# CudaManaged: one address for host and device
# ---------------------------------------------------------------------------


def test_cudamanaged_is_reachable_from_host_and_device(fake_cuda, make_buffer):
    before = fake_cuda.get("managed_live")
    buf = make_buffer(32, 1, allocator="CudaManaged", init_value="zero")
    assert fake_cuda.get("managed_live") == before + 1
    assert bytes(buf) == bytes(32)
    buf[3] = 9
    assert fake_cuda.read(buf.address, 4) == b"\x00\x00\x00\x09"
    fake_cuda.write(buf.address, b"\x05" * 32)
    assert bytes(buf) == b"\x05" * 32
    buf.release()
    assert fake_cuda.get("managed_live") == before


def test_cudamanaged_init_byte(fake_cuda, make_buffer):
    assert bytes(make_buffer(10, 1, allocator="CudaManaged", init_value=200)) == b"\xc8" * 10


# ---------------------------------------------------------------------------
# tools/gpu_check.py (the real-GPU checks) at least starts and says why not
# ---------------------------------------------------------------------------


def test_gpu_check_script_reports_a_missing_gpu(tmp_path):
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "tools" / "gpu_check.py"
    missing = str(tmp_path / "no-libcuda.so.1")
    env = dict(os.environ, **{CUDA_LIBRARY_VARIABLE: missing})
    result = subprocess.run([sys.executable, str(script)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stdout.startswith("no GPU: ") and missing in result.stdout
