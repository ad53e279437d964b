"""python -m memmanager.bench [--quick] [--out DIR] [-k EXPR]

Runs the benchmark suite with pytest-benchmark, prints memmanager's time
as a ratio of each peer's, and writes DIR/benchmarks.md and
DIR/benchmarks.png (default DIR: the current directory).
"""

import argparse
import os
import platform
import sys
import tempfile


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
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m memmanager.bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer rounds: a smoke run, not numbers to publish")
    parser.add_argument("--out", default=".", help="where benchmarks.md/png go")
    parser.add_argument("-k", default=None, help="pytest -k expression")
    args = parser.parse_args(argv)
    try:
        import pytest
        import pytest_benchmark  # noqa: F401
    except ImportError:
        print("the benchmark suite needs the bench extra: "
              "pip install 'memmanager[bench]'", file=sys.stderr)
        return 2
    from . import report

    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as tmp:
        json_path = os.path.join(tmp, "results.json")
        pytest_args = [here, "-q", "-p", "no:cacheprovider",
                       "-o", "python_files=bench_*.py", "-o", "addopts=",
                       "--benchmark-only", "--benchmark-json", json_path,
                       "--benchmark-warmup=on", "--benchmark-disable-gc",
                       "--benchmark-columns=median,rounds"]
        if args.quick:
            pytest_args += ["--benchmark-max-time=0.05", "--benchmark-min-rounds=3"]
        else:
            pytest_args += ["--benchmark-max-time=0.5", "--benchmark-min-rounds=7"]
        if args.k:
            pytest_args += ["-k", args.k]
        status = pytest.main(pytest_args)
        if status != 0:
            return int(status)
        table = report.write_outputs(json_path, args.out, machine_description())
    print()
    print(report.text_table(table))
    missed = [row for row in table if row[-1] == "MISSED"]
    print(f"\n{len(table)} ratios, {len(missed)} targets missed; "
          f"wrote {os.path.join(args.out, 'benchmarks.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
