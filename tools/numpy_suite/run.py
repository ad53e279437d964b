"""Run NumPy's own test suite once per mode (NumPy's default handler, then
memmanager allocators installed as NumPy's handler) and compare the outcome
of every test.  `make numpy-suite` runs it; docs/reliability.md says why.

    python tools/numpy_suite/run.py [--modes default,aligned,pool]
        [--suite numpy._core] [-n 2] [--out build/numpy-suite]
        [--fast] [--reruns 1] [-- more pytest arguments]

Each mode is one pytest run of ``--pyargs SUITE`` from an empty temporary
directory (so no conftest or ini file of this repository is picked up),
with the plug-in tools/numpy_suite/plugin.py installing the allocator and
checking that the tests ran under it.  Into --out go, per mode,
junit-MODE.xml, results-MODE.json (every test's outcome, and the
plug-in's check) and MODE.log, and at the end summary.json.

A test differs when its outcome class (pass, skip, xfail, fail) under a memmanager
mode is not the one under default.  Differing tests are run again --reruns
times in both modes (only those tests); a difference that does not hold on
every run is reported as flaky and not counted.  Exit status 1 when:

- a run did not finish (crash, usage error such as "memmanager.numpy is
  missing", no tests), or the plug-in's check failed (the tests did not
  run under the handler, or no array came from it);
- a test fails or errors under a memmanager mode but not under default
  (a new failure), is skipped there but passes under default (a new
  skip), or was not run there at all.

Tests that fail under default and pass under a mode are reported only.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.dirname(HERE)
REPO = os.path.dirname(TOOLS)
MODES = ("default", "aligned", "pool", "cmalloc")

# Outcome classes compared between modes: an expected failure that passed
# (xpassed) is in the class of one that failed (xfailed); a strict xfail
# that passes is reported as failed by pytest.
CLASS = {"passed": "pass", "xpassed": "xfail", "skipped": "skip",
         "xfailed": "xfail", "failed": "fail", "error": "fail",
         None: "missing"}


def numpy_root(python):
    """The directory holding the numpy package (pytest's rootdir here, so
    node ids read numpy/_core/tests/test_x.py::...)."""
    out = subprocess.check_output(
        [python, "-c", "import numpy, os; "
         "print(os.path.dirname(os.path.dirname(numpy.__file__)))"],
        text=True)
    return out.strip()


def run_pytest(args, mode, out_dir, tag, targets, select=None, workers=0,
               extra=()):
    """One pytest run in mode; returns (results dict or None, seconds, rc,
    log path)."""
    log = os.path.join(out_dir, f"{tag}.log")
    results = os.path.join(out_dir, f"results-{tag}.json")
    junit = os.path.join(out_dir, f"junit-{tag}.xml")
    for path in (results, junit):
        if os.path.exists(path):
            os.remove(path)
    env = dict(os.environ)
    env["MEMMANAGER_NUMPY_SUITE"] = mode
    env["MEMMANAGER_NUMPY_SUITE_OUT"] = results
    env.pop("MEMMANAGER_NUMPY_SUITE_SELECT", None)
    if select is not None:
        env["MEMMANAGER_NUMPY_SUITE_SELECT"] = select
    env["PYTHONPATH"] = os.pathsep.join(
        [TOOLS] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    # meson and ninja (test_mem_policy builds a C extension) live beside the
    # interpreter in the virtual environment.
    env["PATH"] = os.pathsep.join([os.path.dirname(args.python),
                                   env.get("PATH", "")])
    cmd = [args.python, "-m", "pytest", "-p", "no:cacheprovider",
           "-p", "numpy_suite.plugin", f"--rootdir={args.root}",
           f"--junitxml={junit}", "-q", "-rfE"]
    if workers:
        cmd += ["-n", str(workers)]
    else:
        cmd += ["-p", "no:xdist"]
    if args.fast:
        cmd += ["-m", "not slow"]
    cmd += list(extra) + targets
    cwd = tempfile.mkdtemp(prefix=f"numpy-suite-{tag}-")
    start = time.monotonic()
    try:
        with open(log, "w") as f:
            f.write("$ (cd <empty temporary directory>) " + " ".join(
                [f"MEMMANAGER_NUMPY_SUITE={mode}"] + cmd) + "\n")
            f.flush()
            rc = subprocess.call(cmd, cwd=cwd, env=env, stdout=f,
                                 stderr=subprocess.STDOUT)
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    seconds = time.monotonic() - start
    data = None
    if os.path.exists(results):
        with open(results) as f:
            data = json.load(f)
    return data, seconds, rc, log


def tail(path, lines=25):
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def run_problem(data, rc, log):
    """Why a run cannot be judged, or None."""
    if rc not in (0, 1):
        return f"pytest exited {rc}\n{tail(log)}"
    if data is None:
        return f"no results were written (pytest exited {rc})\n{tail(log)}"
    if not data["check"]["ok"]:
        problems = [p for c in data["check"]["checks"]
                    for p in c.get("problems", [])]
        return "the handler check failed:\n  " + "\n  ".join(problems)
    if not data["results"]:
        return "no test ran"
    return None


def counts(results):
    n = {}
    for r in results.values():
        n[r["outcome"]] = n.get(r["outcome"], 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(n.items()))


def outcome_class(results, nodeid):
    r = results.get(nodeid)
    return CLASS[r["outcome"] if r else None]


def differing(base, other):
    """node id -> (class under default, class under the mode) for the tests
    whose class differs (xfail against xpass does not count)."""
    diff = {}
    for nodeid in set(base) | set(other):
        a, b = outcome_class(base, nodeid), outcome_class(other, nodeid)
        if a != b:
            diff[nodeid] = (a, b)
    return diff


def kind_of(a, b):
    if b == "fail" or b == "missing":
        return "new failure" if b == "fail" else "not run"
    if b == "skip" and a == "pass":
        return "new skip"
    if a == "fail":
        return "fixed"          # fails under default, not under the mode
    return "other"              # skipped under default, run under the mode


COUNTED = {"new failure", "not run", "new skip"}


def compare(args, out, mode, base, results, extra=()):
    """The differing tests of mode against default, each judged after
    --reruns more runs of those tests in both modes: node id -> {kind,
    message, outcomes under default, outcomes under mode}.  Also whether a
    rerun itself failed to run."""
    failed = False
    diff = differing(base, results)
    history = {nodeid: ([base.get(nodeid)], [results.get(nodeid)])
               for nodeid in diff}
    if diff and args.reruns:
        print(f"numpy-suite: {mode}: {len(diff)} test(s) differ from "
              f"default; running them again {args.reruns} time(s) in "
              "both modes", flush=True)
        select = os.path.join(out, f"select-{mode}.txt")
        with open(select, "w") as f:
            f.write("\n".join(sorted(diff)) + "\n")
        files = sorted({os.path.join(args.root, n.split("::")[0])
                        for n in diff})
        files = [f for f in files if os.path.isfile(f)]
        for i in range(args.reruns):
            for m, col in (("default", 0), (mode, 1)):
                tag = f"rerun-{mode}-{i + 1}-{m}"
                # One xdist worker: a test that crashes the interpreter (or
                # is killed for memory) is reported, and the others still run.
                data, _, rc, log = run_pytest(
                    args, m, out, tag, files, select=select,
                    workers=1 if args.workers else 0, extra=extra)
                problem = run_problem(data, rc, log)
                if problem and (data is None or not data["check"]["ok"]):
                    print(f"numpy-suite: {tag}: FAILED: {problem}")
                    failed = True
                results_now = data["results"] if data else {}
                for nodeid in diff:
                    history[nodeid][col].append(results_now.get(nodeid))
    verdicts = {}
    for nodeid, (a_runs, b_runs) in sorted(history.items()):
        a_classes = {CLASS[r["outcome"] if r else None] for r in a_runs}
        b_classes = {CLASS[r["outcome"] if r else None] for r in b_runs}
        # A difference holds when each mode gave one class on every run.
        if len(a_classes) == 1 and len(b_classes) == 1 \
                and a_classes != b_classes:
            kind = kind_of(a_classes.pop(), b_classes.pop())
        else:
            kind = "flaky"
        message = next((r["message"] for r in b_runs + a_runs
                        if r and r["message"]), "")
        verdicts[nodeid] = {
            "kind": kind, "message": message,
            "default": [r["outcome"] if r else "not run" for r in a_runs],
            mode: [r["outcome"] if r else "not run" for r in b_runs]}
    return verdicts, failed


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default="default,aligned,pool",
                   help="comma-separated, default first (%(default)s)")
    p.add_argument("--suite", default="numpy._core",
                   help="what pytest --pyargs runs: numpy._core, numpy, "
                        "or a test module (%(default)s)")
    p.add_argument("-n", "--workers", type=int, default=2,
                   help="pytest-xdist workers per run, 0 for none "
                        "(%(default)s)")
    p.add_argument("--fast", action="store_true",
                   help="leave out the tests NumPy marks slow")
    p.add_argument("--reruns", type=int, default=1,
                   help="runs of each differing test in both modes before "
                        "judging (%(default)s)")
    p.add_argument("--out", default=os.path.join(REPO, "build", "numpy-suite"))
    p.add_argument("--python", default=sys.executable)
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes or modes[0] != "default":
        p.error(f"--modes: default first, then any of {', '.join(MODES[1:])}")
    args.root = numpy_root(args.python)
    if args.workers and subprocess.call(
            [args.python, "-c", "import xdist"], stderr=subprocess.DEVNULL):
        p.error(f"-n {args.workers} needs pytest-xdist in {args.python} "
                "(make numpy-suite installs it), or -n 0")
    os.makedirs(args.out, exist_ok=True)
    out = os.path.abspath(args.out)

    failed = False
    runs = {}
    summary = {"suite": args.suite, "workers": args.workers,
               "fast": args.fast, "modes": {}}
    for mode in modes:
        print(f"numpy-suite: {mode}: pytest --pyargs {args.suite} ...",
              flush=True)
        data, seconds, rc, log = run_pytest(
            args, mode, out, mode, ["--pyargs", args.suite],
            workers=args.workers, extra=extra)
        problem = run_problem(data, rc, log)
        entry = {"seconds": round(seconds, 1), "pytest_exit": rc, "log": log}
        if problem:
            print(f"numpy-suite: {mode}: FAILED in {seconds / 60:.1f} min: "
                  f"{problem}", flush=True)
            entry["problem"] = problem
            failed = True
        else:
            check = [c for c in data["check"]["checks"]
                     if c.get("array_allocations_end") is not None]
            arrays = sum(c["array_allocations_end"]
                         - (c["array_allocations_start"] or 0) for c in check)
            arrays = f"; arrays from the allocator: {arrays:,}" if check else ""
            crashed = sum(1 for c in data["check"]["checks"]
                          if c.get("crashed"))
            if crashed:
                arrays += f"; {crashed} xdist worker(s) crashed"
            print(f"numpy-suite: {mode}: {counts(data['results'])} in "
                  f"{seconds / 60:.1f} min{arrays}", flush=True)
            runs[mode] = data["results"]
            entry["counts"] = counts(data["results"])
        summary["modes"][mode] = entry

    base = runs.get("default")
    verdicts = {}
    for mode in modes[1:]:
        if base is None or mode not in runs:
            continue
        verdicts[mode], rerun_failed = compare(args, out, mode, base,
                                               runs[mode], extra)
        failed = failed or rerun_failed

    for mode, tests in verdicts.items():
        counted = {n: v for n, v in tests.items() if v["kind"] in COUNTED}
        others = {n: v for n, v in tests.items() if v["kind"] not in COUNTED}
        if counted:
            failed = True
            print(f"\nnumpy-suite: {mode}: {len(counted)} test(s) differ "
                  "from default on every run:")
        for nodeid, v in counted.items():
            print(f"  {v['kind'].upper()}: {nodeid}\n"
                  f"    default: {', '.join(v['default'])}; "
                  f"{mode}: {', '.join(v[mode])}")
            for line in v["message"].splitlines():
                print(f"      {line}")
        for nodeid, v in others.items():
            print(f"  ({v['kind']}, not counted) {nodeid}: default "
                  f"{', '.join(v['default'])}; {mode} {', '.join(v[mode])}")
        if not counted:
            print(f"numpy-suite: {mode}: no test fails or skips that passes "
                  f"under default ({len(others)} other difference(s))")
    summary["differences"] = verdicts
    summary["ok"] = not failed
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"numpy-suite: {'FAILED' if failed else 'OK'} "
          f"(details in {os.path.relpath(out)})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
