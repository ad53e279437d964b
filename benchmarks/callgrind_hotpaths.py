"""Instructions per hot-path operation, counted by valgrind's callgrind.

    .venv/bin/python benchmarks/callgrind_hotpaths.py [--loops N]   (make callgrind)

Wall-clock time is noisy on a shared machine; instruction counts are not.
For each operation the same script runs twice under callgrind (with a
fixed hash seed), with N and with 2N loop iterations; the difference
divided by N is the cost of one operation plus one turn of a Python
for-loop (measured too, as the "empty loop" row, to subtract by eye).
The NumPy rows set their handler before the loop (memmanager.numpy).
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

SETUP = """
import memmanager, ctypes
from memmanager import Buffer
buf = Buffer(1 << 20, 1, init_value=1)
ba = bytearray(64)
owner = bytearray(4096)
address = ctypes.addressof((ctypes.c_char * 4096).from_buffer(owner))
memmanager.register_allocator("HotPool", memmanager.Pool("PyAlloc"))
memmanager.register_allocator("HotLimit", memmanager.Limit("PyAlloc", 1 << 40))
Buffer(64, 1, allocator="HotPool")
"""

NUMPY_UNDER = "import numpy, memmanager.numpy\nmemmanager.numpy.set_allocator({!r})\nnumpy.empty(64)"

OPERATIONS = {
    "empty loop": "pass",
    "bytearray(64) (peer)": "bytearray(64)",
    "Buffer(64, 1) create+destroy": "Buffer(64, 1)",
    "Buffer(64, 1, allocator='CMalloc')": "Buffer(64, 1, allocator='CMalloc')",
    "Buffer(64, 1, allocator='PyAlloc')": "Buffer(64, 1, allocator='PyAlloc')",
    "Buffer(64, 1, allocator=<Pool(PyAlloc)>)": "Buffer(64, 1, allocator='HotPool')",
    "Buffer(64, 1, allocator=<Limit(PyAlloc)>)": "Buffer(64, 1, allocator='HotLimit')",
    "Buffer(64, 1, init_value=0)": "Buffer(64, 1, init_value=0)",
    "memoryview(buf) (getbuffer+release)": "memoryview(buf)",
    "memoryview(ba)[10:100] (peer)": "memoryview(ba)[10:100]",
    "buf.region(10, 100)": "buf.region(10, 100)",
    "buf.extract_buffer_region(10, 73)": "buf.extract_buffer_region(10, 73)",
    "buf[5]": "buf[5]",
    "consume(address, Borrowed)":
        "Buffer.consume(address, 64, 1, allocator='Borrowed', owner=owner, delayed_gc=False)",
    "consume(bytearray)": "Buffer.consume(ba, 64, 1, delayed_gc=False)",
    # NumPy's own arrays: (what runs before the loop, the statement).
    "numpy.empty(64), NumPy's default handler (peer)":
        ("import numpy\nnumpy.empty(64)", "numpy.empty(64)"),
    "numpy.empty(64) under memmanager.numpy 'PyAlloc'":
        (NUMPY_UNDER.format("PyAlloc"), "numpy.empty(64)"),
    "numpy.empty(64) under memmanager.numpy 'CMalloc'":
        (NUMPY_UNDER.format("CMalloc"), "numpy.empty(64)"),
    "numpy.empty(64) under memmanager.numpy <Pool(PyAlloc)>":
        (NUMPY_UNDER.format("HotPool"), "numpy.empty(64)"),
}


def instructions(statement, loops):
    before = ""
    if isinstance(statement, tuple):
        before, statement = statement
    script = SETUP + before + f"\nfor _ in range({loops}):\n    {statement}\n"
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        sys.executable, "-c", script],
                       check=True, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONHASHSEED="0",
                                 # OpenBLAS's idle threads spin: counted, and never the same
                                 OPENBLAS_NUM_THREADS="1"))
        with open(out) as f:
            for line in f:
                match = re.match(r"(?:summary|totals):\s+(\d+)", line)
                if match:
                    return int(match.group(1))
    raise RuntimeError("no instruction total in the callgrind output")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=10000)
    args = parser.parse_args(argv)
    print(f"{'operation':<56} {'instructions':>12}")
    for label, statement in OPERATIONS.items():
        once = instructions(statement, args.loops)
        twice = instructions(statement, 2 * args.loops)
        print(f"{label:<56} {(twice - once) / args.loops:12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
