"""consume() of an address and of a buffer object, against the peers that
wrap foreign memory, in one run (medians of interleaved repeats).

    .venv/bin/python benchmarks/bench_consume.py [--repeat N]

Peers need pyarrow and cffi (the `bench` extra); missing ones are skipped.
DESIGN section 9: consume of an address <= 1.0x pyarrow.foreign_buffer and
ctypes from_address.
"""

import ctypes
import sys

from bench_core import compare, parse_timing_args

from memmanager import Buffer

try:
    import pyarrow
except ImportError:
    pyarrow = None
try:
    import cffi
except ImportError:
    cffi = None
try:
    import numpy
except ImportError:
    numpy = None


def main(argv=None):
    n, r = parse_timing_args(__doc__, argv)

    owner = bytearray(4096)
    address = ctypes.addressof((ctypes.c_char * 4096).from_buffer(owner))
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    ns = {"Buffer": Buffer, "address": address, "owner": owner, "ctypes": ctypes,
          "char64": ctypes.c_char * 64, "pyarrow": pyarrow, "numpy": numpy,
          "malloc": libc.malloc, "ba": bytearray(64)}

    print(f"{'operation':<44} {'memmanager':>13} {'peer':>13} {'ratio':>7}")
    borrowed = "Buffer.consume(address, 64, 1, allocator='Borrowed', owner=owner, delayed_gc=False)"
    compare("consume address (Borrowed) vs ctypes from_address",
            borrowed, "char64.from_address(address)", ns, n, r, 1.0)
    if pyarrow is not None:
        compare("consume address (Borrowed) vs pa.foreign_buffer",
                borrowed, "pyarrow.foreign_buffer(address, 64, owner)", ns, n, r, 1.0)
    compare("malloc + consume (CMalloc) + free vs malloc + from_address",
            "Buffer.consume(malloc(64), 64, 1, delayed_gc=False)",
            "char64.from_address(malloc(64))", ns, n // 4, r, 1.5)
    compare("consume bytearray (zero-copy) vs memoryview(ba)",
            "Buffer.consume(ba, 64, 1, delayed_gc=False)", "memoryview(ba)", ns, n, r, 2.0)
    if numpy is not None:
        compare("consume bytearray (zero-copy) vs numpy.frombuffer",
                "Buffer.consume(ba, 64, 1, delayed_gc=False)",
                "numpy.frombuffer(ba, 'u1')", ns, n, r, 1.0)
    if cffi is not None:
        ns["ffi"] = cffi.FFI()
        compare("consume bytearray (zero-copy) vs ffi.from_buffer",
                "Buffer.consume(ba, 64, 1, delayed_gc=False)",
                "ffi.from_buffer(ba)", ns, n, r, 1.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
