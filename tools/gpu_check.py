#!/usr/bin/env python3
"""tools/gpu_check.py -- memmanager's GPU checks, for a machine with an NVIDIA GPU.

The test suite runs the GPU code against a fake driver (tests/fake_cuda.c);
this script runs it against the real one, with CuPy kernels, the way the
Perl module's GPU tests ran OpenMP kernels:

  1. a float kernel writes 2*i into the device copy, then `update from`;
  2. `enter alloc`, a kernel writes 3*i, then `exit from`;
  3. a double kernel writes 4*j, and the result is asserted (the Perl test
     forgot to);
  4. the device view goes to cupy.asarray and cupy.from_dlpack zero-copy
     (same device pointer), and 5. to torch.from_dlpack (when installed);
  6. a CudaDevice and 7. a CudaManaged buffer, used from CuPy kernels;
  8. 1,000 buffers are mapped (device memory goes down by their size) and
     destroyed (it comes back: nothing leaks);
  9. host-to-device and device-to-host copies of 256 MiB from a CudaHost
     buffer reach at least 80% of what CuPy achieves for the same copy.

Usage:  python tools/gpu_check.py [--size-mib 256] [--repeat 10]
Exit status: 0 when every check passed (skips are listed), 1 when one
failed, 2 when no GPU or no CuPy is there.  The whole run must take less
than 5 minutes; that is checked too.
"""

import argparse
import gc
import statistics
import sys
import time
import traceback

import numpy

import memmanager
from memmanager import Buffer

TIME_LIMIT_S = 300.0
BANDWIDTH_BAR = 0.80
N = 1 << 20                      # elements in the kernel checks

KERNELS = r"""
extern "C" __global__ void write_2i(float *x, long long n) {
    long long i = (long long)blockDim.x * blockIdx.x + threadIdx.x;
    if (i < n) x[i] = 2.0f * (float)i;
}
extern "C" __global__ void write_3i(float *x, long long n) {
    long long i = (long long)blockDim.x * blockIdx.x + threadIdx.x;
    if (i < n) x[i] = 3.0f * (float)i;
}
extern "C" __global__ void write_4j(double *x, long long n) {
    long long j = (long long)blockDim.x * blockIdx.x + threadIdx.x;
    if (j < n) x[j] = 4.0 * (double)j;
}
"""


class Skip(Exception):
    """A check that cannot run here (a missing optional package)."""


class Context:
    def __init__(self, cupy, args):
        self.cupy = cupy
        self.args = args
        module = cupy.RawModule(code=KERNELS)
        self.kernels = {name: module.get_function(name)
                        for name in ("write_2i", "write_3i", "write_4j")}

    def launch(self, name, array):
        """Runs one kernel over `array` on CuPy's current stream."""
        n = array.size
        block = 256
        grid = (n + block - 1) // block
        self.kernels[name]((grid,), (block,), (array, numpy.int64(n)))

    def device_array(self, buf, dtype, device_id=0):
        """The device copy as a CuPy array, zero-copy, and its view."""
        view = buf.device_view(device_id)
        array = self.cupy.asarray(view).view(dtype)
        assert array.data.ptr == view.address, "cupy.asarray copied"
        return array, view


CHECKS = []


def check(function):
    CHECKS.append(function)
    return function


def expect_equal(actual, expected, what):
    if not numpy.array_equal(actual, expected):
        bad = numpy.flatnonzero(actual != expected)
        raise AssertionError(f"{what}: {bad.size} wrong values, first at {bad[0]}: "
                             f"{actual[bad[0]]!r} != {expected[bad[0]]!r}")


@check
def float_kernel_2i_then_update_from(ctx):
    buf = Buffer(N, 4, init_value="zero")
    buf.device_movement("enter", "to")
    array, view = ctx.device_array(buf, ctx.cupy.float32)
    ctx.launch("write_2i", array)
    buf.device_movement("update", "from")    # legacy default stream: after the kernel
    expect_equal(numpy.frombuffer(buf, numpy.float32),
                 numpy.arange(N, dtype=numpy.float32) * 2, "2*i after update from")
    del array, view
    buf.device_movement("exit", "release")
    assert buf.device_mappings() == {}
    buf.release()
    return "2*i read back with update from"


@check
def enter_alloc_kernel_3i_exit_from(ctx):
    buf = Buffer(N, 4, init_value=0xFF)
    buf.device_movement("enter", "alloc")
    array, view = ctx.device_array(buf, ctx.cupy.float32)
    ctx.launch("write_3i", array)
    del array, view
    buf.device_movement("exit", "from")
    expect_equal(numpy.frombuffer(buf, numpy.float32),
                 numpy.arange(N, dtype=numpy.float32) * 3, "3*i after exit from")
    assert buf.device_mappings() == {}
    buf.release()
    return "3*i read back with exit from"


@check
def double_kernel_4j_is_asserted(ctx):
    buf = Buffer(N, 8, init_value="zero")
    buf.device_movement("enter", "to")
    array, view = ctx.device_array(buf, ctx.cupy.float64)
    ctx.launch("write_4j", array)
    del array, view
    buf.device_movement("exit", "from")
    expect_equal(numpy.frombuffer(buf, numpy.float64),
                 numpy.arange(N, dtype=numpy.float64) * 4, "4*j after exit from")
    buf.release()
    return "4*j asserted"


@check
def cupy_zero_copy(ctx):
    cupy = ctx.cupy
    buf = Buffer(4096, 1, init_value=7)
    buf.device_movement("enter", "to")
    view = buf.device_view()
    by_cai = cupy.asarray(view)
    by_dlpack = cupy.from_dlpack(view)
    for array in (by_cai, by_dlpack):
        assert array.data.ptr == view.address, "CuPy copied the device view"
        assert int(array.sum()) == 7 * 4096
    by_dlpack[:] = 9                          # writes reach the same memory
    assert int(by_cai.sum()) == 9 * 4096
    del array, by_cai, by_dlpack, view       # every holder of the device view
    buf.device_movement("exit", "from")
    assert bytes(buf) == b"\x09" * 4096
    buf.release()
    return "cupy.asarray and cupy.from_dlpack share the pointer"


@check
def torch_zero_copy(ctx):
    try:
        import torch
    except ImportError:
        raise Skip("torch is not installed") from None
    buf = Buffer(N, 4, init_value="zero")
    buf.device_movement("enter", "to")
    view = buf.device_view()
    tensor = torch.from_dlpack(view)
    assert tensor.data_ptr() == view.address, "torch copied the device view"
    assert tensor.device.type == "cuda" and tensor.dtype == torch.uint8
    tensor.view(torch.float32).copy_(torch.arange(N, dtype=torch.float32,
                                                  device=tensor.device) * 5)
    torch.cuda.synchronize()
    del tensor, view
    buf.device_movement("exit", "from")
    expect_equal(numpy.frombuffer(buf, numpy.float32),
                 numpy.arange(N, dtype=numpy.float32) * 5, "5*i written by torch")
    buf.release()
    return f"torch {torch.__version__} shares the pointer"


@check
def cuda_device_buffer(ctx):
    buf = Buffer(N, 4, allocator="CudaDevice", init_value="zero")
    try:
        memoryview(buf)
        raise AssertionError("host access to CudaDevice memory was allowed")
    except BufferError:
        pass
    array, view = ctx.device_array(buf, ctx.cupy.float32)
    assert int(ctx.cupy.count_nonzero(array)) == 0
    ctx.launch("write_2i", array)
    expect_equal(ctx.cupy.asnumpy(array), numpy.arange(N, dtype=numpy.float32) * 2,
                 "2*i in CudaDevice memory")
    del array, view
    buf.release()
    return "kernel on CudaDevice memory; host access refused"


@check
def cuda_managed_buffer(ctx):
    buf = Buffer(N, 4, allocator="CudaManaged", init_value="zero")
    buf.device_movement("enter", "to")
    array, view = ctx.device_array(buf, ctx.cupy.float32)
    assert view.address == buf.address
    ctx.launch("write_3i", array)
    buf.device_movement("update", "from")     # waits for the kernel
    expect_equal(numpy.frombuffer(buf, numpy.float32),
                 numpy.arange(N, dtype=numpy.float32) * 3, "3*i in CudaManaged memory")
    del array, view
    buf.device_movement("exit", "release")
    buf.release()
    return "kernel on CudaManaged memory, read from the host"


@check
def thousand_buffers_do_not_grow_device_memory(ctx):
    cupy = ctx.cupy
    size = 1 << 20
    cupy.cuda.runtime.deviceSynchronize()
    warm = Buffer(size, 1)
    warm.device_movement("enter", "to")
    warm.release()
    free_before = cupy.cuda.runtime.memGetInfo()[0]
    buffers = [Buffer(size, 1, init_value=i % 256) for i in range(1000)]
    for buf in buffers:
        buf.device_movement("enter", "to")
    free_mapped = cupy.cuda.runtime.memGetInfo()[0]
    used = free_before - free_mapped
    assert used >= 1000 * size, f"1000 MiB mapped, but only {used / 2**20:.0f} MiB used"
    del buf, buffers
    gc.collect()
    free_after = cupy.cuda.runtime.memGetInfo()[0]
    growth = free_before - free_after
    assert growth <= 4 << 20, f"device memory grew by {growth / 2**20:.1f} MiB"
    return (f"mapped: {used / 2**20:.0f} MiB used; destroyed: "
            f"{growth / 2**20:+.1f} MiB left")


def median_seconds(function, repeat):
    function()                                 # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@check
def bandwidth_cudahost_vs_cupy(ctx):
    cupy = ctx.cupy
    import cupyx
    size = ctx.args.size_mib << 20
    repeat = ctx.args.repeat
    gib = size / 2**30
    runtime = cupy.cuda.runtime
    sync = cupy.cuda.Device().synchronize

    buf = Buffer(size, 1, allocator="CudaHost", init_value=1)
    buf.device_movement("enter", "alloc")
    ours_h2d = gib / median_seconds(lambda: buf.device_movement("update", "to"), repeat)
    ours_d2h = gib / median_seconds(lambda: buf.device_movement("update", "from"), repeat)
    buf.device_movement("exit", "delete")
    buf.release()

    host = cupyx.empty_pinned((size,), dtype=numpy.uint8)
    host[:] = 1
    device = cupy.empty(size, dtype=cupy.uint8)

    def set_():
        device.set(host)
        sync()

    def get_():
        device.get(out=host)
        sync()

    host_to_device = getattr(runtime, "memcpyHostToDevice", 1)   # cudaMemcpyKind
    device_to_host = getattr(runtime, "memcpyDeviceToHost", 2)

    def memcpy_h2d():
        runtime.memcpy(device.data.ptr, host.ctypes.data, size, host_to_device)

    def memcpy_d2h():
        runtime.memcpy(host.ctypes.data, device.data.ptr, size, device_to_host)

    cupy_h2d = max(gib / median_seconds(f, repeat) for f in (set_, memcpy_h2d))
    cupy_d2h = max(gib / median_seconds(f, repeat) for f in (get_, memcpy_d2h))
    del device, host
    lines = [f"H2D {ours_h2d:6.2f} GiB/s vs cupy {cupy_h2d:6.2f} GiB/s "
             f"= {ours_h2d / cupy_h2d:.0%}",
             f"D2H {ours_d2h:6.2f} GiB/s vs cupy {cupy_d2h:6.2f} GiB/s "
             f"= {ours_d2h / cupy_d2h:.0%}"]
    report = f"{ctx.args.size_mib} MiB, median of {repeat}: " + "; ".join(lines)
    assert ours_h2d >= BANDWIDTH_BAR * cupy_h2d and ours_d2h >= BANDWIDTH_BAR * cupy_d2h, (
        f"below {BANDWIDTH_BAR:.0%} of cupy: {report}")
    return report


def describe_machine(cupy):
    properties = cupy.cuda.runtime.getDeviceProperties(0)
    name = properties["name"]
    name = name.decode() if isinstance(name, bytes) else name
    return (f"GPU 0: {name}; {memmanager.cuda.device_count()} device(s); driver "
            f"{memmanager.cuda.driver_version()}; cupy {cupy.__version__}; "
            f"numpy {numpy.__version__}; memmanager {memmanager.__version__}; "
            f"python {sys.version.split()[0]}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256,
                        help="size of the bandwidth copies (default 256)")
    parser.add_argument("--repeat", type=int, default=10,
                        help="timed repetitions per copy (default 10)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if not memmanager.cuda.is_available():
        print(f"no GPU: {memmanager.cuda.unavailable_reason()}")
        return 2
    try:
        import cupy
    except ImportError as error:
        print(f"CuPy is needed: {error}")
        return 2
    print(describe_machine(cupy))
    ctx = Context(cupy, args)
    results = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    for function in CHECKS:
        begin = time.perf_counter()
        try:
            outcome, detail = "PASS", function(ctx)
        except Skip as why:
            outcome, detail = "SKIP", str(why)
        except Exception:              # every failure is reported, then counted
            outcome, detail = "FAIL", traceback.format_exc().rstrip()
        gc.collect()
        results[outcome] += 1
        print(f"{outcome} {function.__name__} ({time.perf_counter() - begin:.2f} s): {detail}")
    elapsed = time.perf_counter() - started
    if elapsed > TIME_LIMIT_S:
        results["FAIL"] += 1
        print(f"FAIL the run took {elapsed:.0f} s, more than {TIME_LIMIT_S:.0f} s")
    print(f"{results['PASS']} passed, {results['FAIL']} failed, {results['SKIP']} skipped "
          f"in {elapsed:.1f} s")
    return 1 if results["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
