"""Run attack cases so that a crash is a failure of the named case.

    python -m attack.forkserver SUITE RESULTS_FILE [NAME_PREFIX]

imports memmanager once, builds the suite's cases (attack.suites), and
forks one child per group of cases (a group: the cases of one argument of
one entry point, a few dozen).  The child runs them one after the other, telling
the parent over a pipe when each begins and ends, then drives the exit
path (`_release_pinned_at_exit`, a last gc.collect()) and leaves with
os._exit.  A child killed by a signal, one that exits non-zero, or one
silent for longer than the per-case timeout fails the case that was
running; that case is then run again alone (unless it hung), so the
report says whether it crashes on its own.  The remaining cases of the
group go on in a new child.  After a case that fails without crashing the
child stops too, so that what a failed case broke is not blamed on the
next case.  One JSON line per case goes to RESULTS_FILE:

    {"name": ..., "status": "pass" | "fail", "detail": ...}

and each failure is also printed on stdout with its detail.
"""

import gc
import json
import os
import select
import signal
import sys
import tempfile
import time
import traceback
from typing import Any, Dict, List, Optional, Tuple

CASE_TIMEOUT = float(os.environ.get("ATTACK_CASE_TIMEOUT", "4"))


def _child(cases: List[Any], write_fd: int, err_path: str) -> None:
    err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(err, 2)
    os.dup2(err, 1)
    out = os.fdopen(write_fd, "w", buffering=1)
    import memmanager

    for case in cases:
        out.write("B %s\n" % case.name)
        try:
            case.run()
            out.write("R %s\n" % json.dumps(None))
        except BaseException as exc:  # report everything, even SystemExit
            detail = "%s: %s\n%s" % (type(exc).__name__, exc,
                                     "".join(traceback.format_exc(limit=-6)))
            out.write("R %s\n" % json.dumps(detail[-3000:]))
            # What a failed case left behind must not fail the next ones:
            # they go on in a fresh child.
            out.write("S\n")
            out.flush()
            os._exit(0)
        exc = None
    out.write("X exit\n")
    try:  # what atexit does; an exception is fine, not a SystemError
        memmanager.collect_delayed()
        gc.collect()
        memmanager._core._release_pinned_at_exit()
        gc.collect()
    except (SystemError, Exception) as exc:
        if isinstance(exc, SystemError) or not isinstance(exc, Exception):
            out.write("F %s\n" % json.dumps("at exit: %s: %s" % (type(exc).__name__, exc)))
    out.write("E\n")
    out.flush()
    os._exit(0)


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    return data[-2500:].decode("utf-8", "replace")


def _run_fork(cases: List[Any]) -> Tuple[Dict[str, Optional[str]], Optional[Tuple[Optional[str], str]]]:
    """Runs cases in one child.  Returns (results of the cases that ended,
    crash) where crash is (name of the case running or None for the exit
    path, description) or None."""
    read_fd, write_fd = os.pipe()
    err_fd, err_path = tempfile.mkstemp(prefix="attack-", suffix=".err")
    os.close(err_fd)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            _child(cases, write_fd, err_path)
        finally:
            os._exit(3)
    os.close(write_fd)
    results: Dict[str, Optional[str]] = {}
    current: Optional[str] = None
    exit_error: Optional[str] = None
    done = False
    buffer = b""
    hung = False
    deadline = time.monotonic() + CASE_TIMEOUT
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                hung = True
                os.kill(pid, signal.SIGKILL)
                break
            ready, _, _ = select.select([pipe], [], [], left)
            if not ready:
                continue
            chunk = pipe.read(65536)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                text = line.decode("utf-8", "replace")
                tag, _, rest = text.partition(" ")
                if tag == "B":
                    current = rest
                    deadline = time.monotonic() + CASE_TIMEOUT
                elif tag == "R" and current is not None:
                    results[current] = json.loads(rest)
                    current = None
                elif tag == "X":
                    current = None
                    deadline = time.monotonic() + CASE_TIMEOUT
                elif tag == "F":
                    exit_error = json.loads(rest)
                elif tag in ("E", "S"):
                    done = True
    _, status = os.waitpid(pid, 0)
    stderr = _tail(err_path)
    os.unlink(err_path)
    crash = None
    if hung:
        crash = (current, "hang: no progress in %.0f s\n%s" % (CASE_TIMEOUT, stderr))
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        crash = (current, "killed by signal %d (%s)\n%s" % (sig, signal.Signals(sig).name, stderr))
    elif os.WEXITSTATUS(status) != 0 or not done:
        crash = (current, "exit status %d\n%s" % (os.WEXITSTATUS(status), stderr))
    elif exit_error is not None:
        crash = (None, exit_error)
    return results, crash


def run_cases(cases: List[Any]) -> Dict[str, Optional[str]]:
    """name -> None (passed) or the failure's description."""
    results: Dict[str, Optional[str]] = {}
    pending = list(cases)
    while pending:
        got, crash = _run_fork(pending)
        results.update(got)
        if crash is None:
            ran = [i for i, case in enumerate(pending) if case.name in got]
            if not ran:
                for case in pending:
                    results.setdefault(case.name, "did not report")
                break
            pending = pending[ran[-1] + 1:]   # after a failed case: the rest
            continue
        name, why = crash
        if name is None:  # the exit path of the whole group crashed
            if len(pending) == 1:
                results[pending[0].name] = "failure at exit, after the case: " + why
                break
            # find out which case makes the exit crash: one child each
            for case in pending:
                results.update(run_cases([case]))
            break
        index = [case.name for case in pending].index(name)
        before = pending[:index]
        if index == 0 or why.startswith("hang"):
            results[name] = "CRASH: " + why
        else:
            alone, alone_crash = _run_fork([pending[index]])
            if alone_crash is not None and alone_crash[0] == name:
                results[name] = "CRASH: " + why
            elif alone_crash is not None:
                results[name] = "crash at exit (alone): " + alone_crash[1]
            elif alone.get(name) is not None:
                results[name] = alone[name]
            else:
                results[name] = ("CRASH only after the cases %s ran in the same "
                                 "process: %s" % ([c.name for c in before], why))
        pending = pending[index + 1:]
    return results


def main(argv: List[str]) -> int:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import faulthandler

    faulthandler.enable()
    import numpy  # noqa: F401  (imported once, before the forks)

    import memmanager
    from attack import suites

    suites.prepare_process()
    if os.environ.get("MEMMANAGER_CUDA_LIBRARY"):
        memmanager.cuda.is_available()
    # Everything imported so far is out of the collector's sight: a
    # gc.collect() in a case then scans the case's objects only (what that
    # saves: docs/benchmarks.md, measured facts).
    gc.collect()
    gc.freeze()
    suite, out_path = argv[1], argv[2]
    prefix = argv[3] if len(argv) > 3 else ""
    cases = [case for case in suites.build(suite) if case.name.startswith(prefix)]
    groups: Dict[str, List[Any]] = {}
    for case in cases:
        groups.setdefault(case.group, []).append(case)
    failed = 0
    with open(out_path, "w") as out:
        for group in groups.values():
            for name, detail in run_cases(group).items():
                out.write(json.dumps({"name": name, "status": "pass" if detail is None else "fail",
                                      "detail": detail}) + "\n")
                if detail is not None:
                    failed += 1
                    print("FAIL %s\n    %s" % (name, detail.replace("\n", "\n    ")))
            out.flush()
    print("%d cases, %d failed" % (len(cases), failed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
