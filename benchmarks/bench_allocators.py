"""Ratios for the allocators, against the system calls they wrap, in one run.

    .venv/bin/python benchmarks/bench_allocators.py [--repeat N] [--quick]

Two tables (DESIGN sections 4 and 9, issue 4's bars):

1. create + destroy of a buffer of 64 B, 64 KiB and 64 MiB through
   ``Aligned`` and ``Mmap`` (uninitialised), against ``posix_memalign`` +
   ``free`` and ``mmap`` + ``munmap`` called from Python through ctypes.
   The bar: the system call's cost plus a constant.  The constant shows
   in the 64 B rows (a Python object, the registry, tracemalloc's hook);
   at 64 MiB both sides are the system calls.
2. a 64 MiB buffer zero-filled with every built-in allocator against
   ``numpy.zeros`` (target <= 1.1x), and filled with one byte against
   ``numpy.full`` (target <= 1.05x).

Each row times the two sides alternately in the same process (timeit,
garbage collector off during a timing) and reports the median of the
repeats.  Machines with few cores and busy neighbours are noisy: compare
ratios, run twice.
"""

import argparse
import ctypes
import ctypes.util
import mmap
import statistics
import sys
import timeit

from memmanager import Buffer

try:
    import numpy
except ImportError:  # the fill table needs it
    numpy = None

MIB = 1 << 20
SIZES = (("64 B", 64), ("64 KiB", 64 << 10), ("64 MiB", 64 * MIB))
BUILTINS = ("PyAlloc", "CMalloc", "Aligned", "Mmap", "SharedMemory")


def libc_functions():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t,
                                    ctypes.c_size_t]
    libc.posix_memalign.restype = ctypes.c_int
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free.restype = None
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mmap.restype = ctypes.c_void_p
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.munmap.restype = ctypes.c_int
    return libc


def median_ns(stmt, namespace, number):
    timer = timeit.Timer(stmt, globals=namespace)
    return min(timer.repeat(repeat=3, number=number)) / number * 1e9


def compare(label, ours, peer, namespace, number, repeat, target=None):
    ours_ns, peer_ns = [], []
    for _ in range(repeat):  # interleaved, so drift hits both sides alike
        ours_ns.append(median_ns(ours, namespace, number))
        peer_ns.append(median_ns(peer, namespace, number))
    a, b = statistics.median(ours_ns), statistics.median(peer_ns)
    ratio = a / b
    verdict = "" if target is None else ("ok" if ratio <= target else "MISSED")
    bar = "" if target is None else f"(target <= {target}x)"
    print(f"{label:<46} {a:12.1f} ns {b:12.1f} ns {ratio:7.2f}x {bar} {verdict}")
    return ratio


def number_for(size, quick):
    number = 20_000 if size <= 64 << 10 else 200
    return max(number // 10, 20) if quick else number


def system_call_table(args):
    libc = libc_functions()
    namespace = {
        "Buffer": Buffer, "libc": libc, "ptr": ctypes.c_void_p(), "byref": ctypes.byref,
        "PROT": mmap.PROT_READ | mmap.PROT_WRITE,
        "FLAGS": mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
    }
    print(f"{'create + destroy':<46} {'memmanager':>15} {'ctypes':>15} {'ratio':>8}")
    for label, size in SIZES:
        namespace["size"] = size
        number = number_for(size, args.quick)
        compare(f"Aligned {label} vs posix_memalign + free",
                "Buffer(size, 1, allocator='Aligned')",
                "libc.posix_memalign(byref(ptr), 64, size); libc.free(ptr)",
                namespace, number, args.repeat)
        compare(f"Mmap {label} vs mmap + munmap",
                "Buffer(size, 1, allocator='Mmap')",
                "libc.munmap(libc.mmap(None, size, PROT, FLAGS, -1, 0), size)",
                namespace, number, args.repeat)


def fill_table(args):
    if numpy is None:
        print("\n(numpy is not installed: no fill table)")
        return
    namespace = {"Buffer": Buffer, "numpy": numpy, "size": 64 * MIB}
    print(f"\n{'64 MiB':<46} {'memmanager':>15} {'numpy':>15} {'ratio':>8}")
    for allocator in BUILTINS:
        namespace["allocator"] = allocator
        compare(f"{allocator} zero-filled vs numpy.zeros",
                "Buffer(size, 1, allocator=allocator, init_value=0)",
                "numpy.zeros(size, 'u1')", namespace, 20 if args.quick else 200,
                args.repeat, 1.1)
    for allocator in BUILTINS:
        namespace["allocator"] = allocator
        compare(f"{allocator} filled with 7 vs numpy.full",
                "Buffer(size, 1, allocator=allocator, init_value=7)",
                "numpy.full(size, 7, 'u1')", namespace, 2 if args.quick else 5,
                args.repeat, 1.05)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args(argv)
    system_call_table(args)
    fill_table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
