"""Quick ratios for the core's hot paths, against their peers, in one run.

    .venv/bin/python benchmarks/bench_core.py [--repeat N]

Each row times the operation and its peer alternately in the same process
(timeit, garbage collector off during a timing, as timeit does), takes the
median of the repeats, and prints memmanager's time as a ratio of the
peer's.  Targets are those of DESIGN section 9.  This is a quick check for
the C core; the full comparison suite is issue 7's `make bench`.
"""

import argparse
import gc
import statistics
import sys
import timeit

import memmanager
from memmanager import Buffer

try:
    import numpy
except ImportError:  # numpy rows are skipped without it
    numpy = None


def median_ns(stmt, namespace, number, repeat):
    timer = timeit.Timer(stmt, globals=namespace)
    timer.timeit(number // 10 or 1)  # warm up caches and branch predictors
    runs = timer.repeat(repeat=repeat, number=number)
    return statistics.median(runs) / number * 1e9


def compare(label, ours, peer, namespace, number, repeat, target):
    ours_ns, peer_ns = [], []
    for _ in range(repeat):  # interleave so drift hits both sides alike
        ours_ns.append(median_ns(ours, namespace, number, 1))
        peer_ns.append(median_ns(peer, namespace, number, 1))
    a, b = statistics.median(ours_ns), statistics.median(peer_ns)
    verdict = "ok" if a / b <= target else "MISSED"
    print(f"{label:<44} {a:10.1f} ns {b:10.1f} ns {a / b:6.2f}x  (target <= {target}x) {verdict}")
    return a / b


def registry_scaling(number, repeat):
    """create+destroy Buffer(64, 1) with 10^6 live buffers vs 10^3 live."""
    namespace = {"Buffer": Buffer}
    keep = [Buffer(64, 1) for _ in range(1_000)]
    gc.collect()
    gc.freeze()
    small = statistics.median(
        median_ns("Buffer(64, 1)", namespace, number, 1) for _ in range(repeat))
    keep += [Buffer(64, 1) for _ in range(999_000)]
    gc.collect()
    gc.freeze()
    large = statistics.median(
        median_ns("Buffer(64, 1)", namespace, number, 1) for _ in range(repeat))
    assert len(memmanager.live_buffers()) >= 1_000_000
    del keep
    gc.unfreeze()
    gc.collect()
    ratio = large / small
    verdict = "ok" if ratio <= 1.5 else "MISSED"
    print(f"{'create+destroy, 10^6 live vs 10^3 live':<44} {large:10.1f} ns {small:10.1f} ns "
          f"{ratio:6.2f}x  (target <= 1.5x) {verdict}")
    return ratio


def parse_timing_args(doc, argv=None):
    """(number, repeat) from --number and --repeat, for the quick scripts."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--number", type=int, default=200_000)
    args = parser.parse_args(argv)
    return args.number, args.repeat


def main(argv=None):
    n, r = parse_timing_args(__doc__, argv)

    ba = bytearray(1 << 20)
    buf = Buffer(1 << 20, 1, init_value=7)
    big = Buffer(64 << 20, 1, init_value=7)
    big_ba = bytearray(64 << 20)
    ns = {"Buffer": Buffer, "numpy": numpy, "ba": ba, "buf": buf,
          "big": big, "big_ba": big_ba, "memoryview": memoryview}

    print(f"{'operation':<44} {'memmanager':>13} {'peer':>13} {'ratio':>7}")
    compare("create+destroy Buffer(64,1) vs bytearray(64)",
            "Buffer(64, 1)", "bytearray(64)", ns, n, r, 1.5)
    if numpy is not None:
        compare("create+destroy Buffer(64,1) vs numpy.empty",
                "Buffer(64, 1)", "numpy.empty(64, 'u1')", ns, n, r, 1.0)
        compare("numpy.asarray(buf) vs numpy.frombuffer(ba)",
                "numpy.asarray(buf)", "numpy.frombuffer(ba, 'u1')", ns, n, r, 1.2)
        compare("64 MiB zero-filled vs numpy.zeros",
                "Buffer(64 << 20, 1, init_value=0)", "numpy.zeros(64 << 20, 'u1')",
                ns, 200, r, 1.1)
        compare("64 MiB filled with 7 vs numpy.full",
                "Buffer(64 << 20, 1, init_value=7)", "numpy.full(64 << 20, 7, 'u1')",
                ns, 5, r, 1.05)
    compare("region(10, 100) vs memoryview(ba)[10:100]",
            "buf.region(10, 100)", "memoryview(ba)[10:100]", ns, n, r, 1.2)
    compare("extract_buffer_region 16 MiB vs bytes(mv[a:b])",
            "big.extract_buffer_region(0, (16 << 20) - 1)",
            "bytes(memoryview(big_ba)[0:16 << 20])", ns, 20, r, 1.05)
    registry_scaling(n, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
