"""Run the benchmark suite and report memmanager's time as a ratio of each peer's.

    .venv/bin/python benchmarks/run.py --out docs     (make bench)
    .venv/bin/python benchmarks/run.py --quick        (make bench-quick)

The full run times every benchmark of benchmarks/bench_*.py (pytest-
benchmark, --repeats interleaved repeats), prints the ratios and rewrites
the generated part of OUT/benchmarks.md and OUT/benchmarks.png.  --quick
runs only the rows the design's targets name (the `hotpath` marker), with
shorter timings, and prints their ratio table; it writes no page.  Either
keeps the raw results in benchmarks/results/ (not tracked by git);
--from-json reports one of them again without running anything.
Extra arguments after -- go to pytest (e.g. -- -k consume).
"""

import argparse
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def machine_description():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    thp = ""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            thp = ", transparent huge pages: " + f.read().split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        pass
    return (f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}{thp}")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="only the hot-path rows, shorter timings; prints, writes no page")
    parser.add_argument("--out", default=None,
                        help="folder whose benchmarks.md and benchmarks.png are rewritten")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved repeats (default: 5 quick, 3 full)")
    parser.add_argument("--max-time", type=float, default=None,
                        help="seconds per benchmark and repeat (default: 0.1 quick, 0.3 full)")
    parser.add_argument("--from-json", default=None, metavar="PATH",
                        help="run nothing: report the results of an earlier run")
    args = parser.parse_args(argv)
    try:
        import pytest
        import pytest_benchmark  # noqa: F401
    except ImportError:
        print("the benchmark suite needs the bench extra: pip install -e '.[bench]'",
              file=sys.stderr)
        return 2
    sys.path.insert(0, HERE)
    import report

    repeats = args.repeats or (5 if args.quick else 3)
    max_time = args.max_time or (0.1 if args.quick else 0.3)
    results = os.path.join(HERE, "results")
    os.makedirs(results, exist_ok=True)
    json_path = os.path.join(results, time.strftime(
        f"{'quick' if args.quick else 'full'}-%Y%m%d-%H%M%S.json"))
    pytest_args = [HERE, "-q", "-c", os.path.join(HERE, "pytest.ini"),
                   "--rootdir", HERE, f"--repeats={repeats}",
                   f"--benchmark-json={json_path}", f"--benchmark-storage=file://{results}",
                   f"--benchmark-max-time={max_time}",
                   "--benchmark-min-rounds=5", "--benchmark-columns=median,rounds",
                   "--benchmark-sort=name", "--benchmark-quiet"]
    if args.quick:
        pytest_args += ["-m", "hotpath"]
    started = time.monotonic()
    if args.from_json:
        json_path, seconds = args.from_json, None
    else:
        status = pytest.main(pytest_args + extra)
        seconds = time.monotonic() - started
        if status != 0:
            return int(status)
    groups, only, _ = report.load(json_path)
    table = report.rows(groups, only)
    repeats = max((row.repeats for row in table), default=repeats)
    print()
    print(report.text_table(report.target_rows(table) if args.quick else table))
    took = "" if seconds is None else f", {seconds:.0f} s"
    print(f"\n{report.summary(table)}; {repeats} repeats{took}; results in {json_path}")
    if args.out:
        run_info = {"machine": machine_description(), "repeats": repeats, "seconds": seconds,
                    "when": time.strftime("%Y-%m-%d")}
        print("wrote", report.write_outputs(table, args.out, run_info),
              "and its plot, benchmarks.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
