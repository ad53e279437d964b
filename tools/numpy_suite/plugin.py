"""A pytest plug-in that runs NumPy's own test suite with a memmanager
allocator installed as NumPy's data handler (docs/reliability.md, "NumPy's
own suite").

Load it with ``-p numpy_suite.plugin`` and ``tools/`` on PYTHONPATH (as
tools/numpy_suite/run.py does).  The environment variable
MEMMANAGER_NUMPY_SUITE chooses the mode:

    default   nothing installed: NumPy's own handler (the baseline)
    aligned   memmanager.numpy.set_allocator("Aligned", alignment=4096)
    pool      a Pool over CMalloc, registered as "SuitePool", then
              memmanager.numpy.set_allocator("SuitePool"); between tests
              its idle chunks go back when they pass 1 GiB (see
              release_idle_pool)
    cmalloc   memmanager.numpy.set_allocator("CMalloc")

The allocator is installed in pytest_configure: after NumPy's conftest has
imported NumPy, before any test module is imported, in the context the
tests run in.  The plug-in then proves that the suite really ran under it,
and fails the session when it did not:

- the header names the handler installed;
- before and after each test, NumPy's current handler must be the one
  installed (a test that leaves another one behind is named);
- at the end, a fresh array must still come from the handler, and
  memmanager.numpy.stats() of the allocator must count more array
  allocations (its "array_allocations" entry) than at the start.

Under pytest-xdist each worker installs the allocator and checks itself;
the controller gathers the workers' checks.  MEMMANAGER_NUMPY_SUITE_OUT,
when set, names a JSON file the controller (or the single process) writes:
the mode, each check, and the outcome of every test by node id, which
run.py compares between modes.  MEMMANAGER_NUMPY_SUITE_SELECT, when set,
names a file of node ids, one a line: only those tests run (run.py's
reruns; a node id pytest would not parse on its command line still works).
"""

import json
import os
import sys

import pytest

ENV_MODE = "MEMMANAGER_NUMPY_SUITE"
ENV_OUT = "MEMMANAGER_NUMPY_SUITE_OUT"
ENV_SELECT = "MEMMANAGER_NUMPY_SUITE_SELECT"
NUMPY_DEFAULT = "default_allocator"
POOL_NAME = "SuitePool"
POOL_IDLE_LIMIT = 1 << 30   # idle bytes a Pool may keep between two tests

# mode -> (allocator name, set_allocator options, what the header says)
MODES = {
    "default": (None, {}, "NumPy's default handler (nothing installed)"),
    "aligned": ("Aligned", {"alignment": 4096}, "Aligned, alignment=4096"),
    "pool": (POOL_NAME, {}, f"{POOL_NAME}: a Pool over CMalloc"),
    "cmalloc": ("CMalloc", {}, "CMalloc"),
}


class SuiteError(Exception):
    """The suite cannot run, or did not run, under the handler asked for."""


def _handler_name(arr=None):
    from numpy._core.multiarray import get_handler_name
    return get_handler_name() if arr is None else get_handler_name(arr)


def _import_memmanager_numpy():
    try:
        import memmanager.numpy as mm_numpy
    except ModuleNotFoundError as exc:
        if exc.name in ("memmanager.numpy", "memmanager"):
            raise SuiteError(
                f"{exc.name} is missing: this build of memmanager cannot "
                "install NumPy's handler, so only the 'default' mode can run"
            ) from None
        raise
    return mm_numpy


def _array_allocations(allocator):
    """The allocator's count of NumPy arrays (memmanager.numpy.stats(), or
    memmanager.stats() in builds that kept it there), or a message saying
    why there is none."""
    import memmanager
    import memmanager.numpy as mm_numpy
    if hasattr(mm_numpy, "stats"):
        where, table = "memmanager.numpy.stats()", mm_numpy.stats()
    else:
        where, table = "memmanager.stats()", memmanager.stats()
    entry = table.get(allocator)
    if entry is None:
        return 0, None  # not used yet: only allocators used are listed
    if "array_allocations" not in entry:
        return None, (
            f"{where}[{allocator!r}] has no 'array_allocations' key "
            f"(keys: {sorted(entry)}): the core does not count NumPy's "
            "arrays, so the suite cannot show they came from it")
    return entry["array_allocations"], None


class SuiteState:
    """What one process installed, and what it saw."""

    def __init__(self, mode):
        if mode not in MODES:
            raise SuiteError(
                f"{ENV_MODE}={mode!r}: expected one of {', '.join(MODES)}")
        self.mode = mode
        self.allocator, self.options, self.description = MODES[mode]
        self.expected = (NUMPY_DEFAULT if self.allocator is None
                         else f"memmanager:{self.allocator}")
        self.start_count = None
        self.changed_by = []      # when the handler was another one
        self.tests_checked = 0
        self.check = None         # filled at session end
        self.pool = None          # the Pool, in mode "pool"
        self.pool_released = 0    # bytes given back between tests

    def install(self):
        if self.allocator is not None:
            mm_numpy = _import_memmanager_numpy()
            if self.mode == "pool":
                import memmanager
                self.pool = memmanager.Pool("CMalloc")
                memmanager.register_allocator(POOL_NAME, self.pool)
            mm_numpy.set_allocator(self.allocator, **self.options)
        name = _handler_name()
        if name != self.expected:
            raise SuiteError(f"after installing, NumPy's handler is {name!r}, "
                             f"expected {self.expected!r}")
        if self.allocator is not None:
            self.start_count, _ = _array_allocations(self.allocator)

    def release_idle_pool(self):
        """After a test, give the Pool's idle chunks back to CMalloc when
        they come to more than POOL_IDLE_LIMIT.  A Pool keeps what it took
        (that is its job), and NumPy's tests of huge arrays decide to run
        or skip from the memory the machine has free: without this, a test
        that allocated 18 GB leaves it held, the next huge test is skipped,
        and one that needs 16 GB of Python objects is killed for memory."""
        if self.pool is not None and \
                self.pool.held_bytes - self.pool.used_bytes > POOL_IDLE_LIMIT:
            self.pool_released += self.pool.release_free()

    def check_handler(self, when, count=False):
        self.tests_checked += count
        name = _handler_name()
        if name != self.expected:
            self.changed_by.append(f"{when}: {name!r}")
            if self.allocator is not None:
                # The rest of the suite still runs under the allocator.
                _import_memmanager_numpy().set_allocator(self.allocator,
                                                         **self.options)

    def finish(self):
        """The end-of-session check, as a dict (ok, problems, numbers)."""
        import numpy
        problems = []
        name = _handler_name()
        if name != self.expected:
            problems.append(f"at the end NumPy's handler is {name!r}, "
                            f"expected {self.expected!r}")
        if self.changed_by:
            problems.append(
                f"{len(self.changed_by)} time(s) NumPy's handler was not the "
                "one installed: " + "; ".join(self.changed_by[:10]))
        end_count = None
        if self.allocator is not None:
            end_count, missing = _array_allocations(self.allocator)
            if missing:
                problems.append(missing)
            elif self.tests_checked and end_count <= (self.start_count or 0):
                problems.append(
                    f"the array_allocations of {self.allocator!r} are "
                    f"{end_count}, no more than the "
                    f"{self.start_count} at the start: the tests' arrays did "
                    "not come from it")
        # Read after the count, so that it does not add to it.
        probe = numpy.empty(1024)
        probe_name = _handler_name(probe)
        del probe
        if probe_name != self.expected:
            problems.append(f"a new array at the end came from {probe_name!r}, "
                            f"expected {self.expected!r}")
        self.check = {
            "mode": self.mode, "expected_handler": self.expected,
            "handler_at_end": name, "tests_checked": self.tests_checked,
            "array_allocations_start": self.start_count,
            "array_allocations_end": end_count,
            "pool_released_bytes": self.pool_released,
            "ok": not problems, "problems": problems,
            "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
        }
        return self.check


def _is_worker(config):
    return hasattr(config, "workerinput")


def _uses_workers(config):
    return (not _is_worker(config)
            and getattr(config.option, "numprocesses", None) not in (None, 0))


def _outcome(report):
    if report.passed:
        return "xpassed" if hasattr(report, "wasxfail") else "passed"
    if report.skipped:
        return "xfailed" if hasattr(report, "wasxfail") else "skipped"
    return "failed" if report.when == "call" else "error"


_RANK = {"passed": 0, "xpassed": 1, "skipped": 2, "xfailed": 2,
         "failed": 3, "error": 4}


def _summary(report):
    text = getattr(report, "longreprtext", "") or ""
    if report.skipped and isinstance(report.longrepr, tuple):
        text = str(report.longrepr[2])
    lines = [line for line in text.splitlines() if line.strip()]
    # The end of a traceback says what failed; keep it short.
    return "\n".join(lines[-6:])


class SuitePlugin:
    def __init__(self, config, state):
        self.config = config
        self.state = state            # None in an xdist controller
        self.results = {}             # nodeid -> {"outcome", "message"}
        self.worker_checks = []
        self.out = os.environ.get(ENV_OUT)

    # -- the header ----------------------------------------------------
    def pytest_report_header(self, config):
        import numpy
        import memmanager
        mode = os.environ.get(ENV_MODE)
        allocator, _, description = MODES[mode]
        expected = (NUMPY_DEFAULT if allocator is None
                    else f"memmanager:{allocator}")
        where = ("each xdist worker installs it"
                 if self.state is None else "installed in this process")
        return [f"memmanager NumPy suite: mode {mode!r}, NumPy's handler "
                f"{expected!r} ({description}; {where})",
                f"numpy {numpy.__version__} at {os.path.dirname(numpy.__file__)}, "
                f"memmanager at {os.path.dirname(memmanager.__file__)}"]

    # -- which tests -------------------------------------------------
    def pytest_collection_modifyitems(self, config, items):
        select = os.environ.get(ENV_SELECT)
        if not select:
            return
        with open(select) as f:
            wanted = {line.rstrip("\n") for line in f if line.strip()}
        keep = [item for item in items if item.nodeid in wanted]
        drop = [item for item in items if item.nodeid not in wanted]
        if drop:
            config.hook.pytest_deselected(items=drop)
        items[:] = keep

    # -- each test -----------------------------------------------------
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        if self.state is not None:
            self.state.check_handler(f"before {item.nodeid}")
        yield
        if self.state is not None:
            self.state.check_handler(f"after {item.nodeid}", count=True)
            self.state.release_idle_pool()

    def pytest_runtest_logreport(self, report):
        if _is_worker(self.config):
            return  # the controller records what its workers report
        outcome = _outcome(report)
        old = self.results.get(report.nodeid)
        # A test's outcome is the worst of its phases (setup, call, teardown).
        if old is None or _RANK[outcome] > _RANK[old["outcome"]]:
            self.results[report.nodeid] = {
                "outcome": outcome,
                "message": "" if outcome == "passed" else _summary(report)}

    # -- xdist ---------------------------------------------------------
    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error):
        check = getattr(node, "workeroutput", {}).get("memmanager_check")
        if check is None:
            check = {"ok": False, "worker": getattr(node, "gateway", None)
                     and node.gateway.id,
                     "problems": [f"a worker went down without its check "
                                  f"({error or 'no error given'})"]}
            # A crashed worker is replaced; its tests show as failures.
            check["crashed"] = True
        else:
            check = json.loads(check)
        self.worker_checks.append(check)

    # -- the end -------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session, exitstatus):
        if self.state is not None:
            check = self.state.finish()
            if _is_worker(self.config):
                self.config.workeroutput["memmanager_check"] = json.dumps(check)
                return
            checks = [check]
        else:
            checks = self.worker_checks
        # A crashed worker's tests show as failures (xdist replaces it);
        # every worker that finished must have passed its check.
        finished = [c for c in checks if not c.get("crashed")]
        ok = bool(finished) and all(c["ok"] for c in finished)
        if not checks:
            checks = [{"ok": False, "problems": ["no worker reported a check"]}]
        self.final = {"ok": ok, "checks": checks}
        if self.out:
            with open(self.out, "w") as f:
                json.dump({"mode": os.environ.get(ENV_MODE),
                           "exitstatus": int(exitstatus),
                           "check": self.final,
                           "results": self.results}, f, indent=0)
        if not ok and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        final = getattr(self, "final", None)
        if final is None:
            return
        tr = terminalreporter
        tr.section("memmanager handler check", sep="=",
                   red=not final["ok"], green=final["ok"], bold=True)
        for c in final["checks"]:
            who = c.get("worker", "?")
            if c.get("ok"):
                counts = ""
                if c.get("array_allocations_end") is not None:
                    counts = (f", array_allocations "
                              f"{c['array_allocations_start']} -> "
                              f"{c['array_allocations_end']}")
                tr.line(f"{who}: OK, {c['tests_checked']} tests ran under "
                        f"{c['expected_handler']!r}{counts}")
            else:
                for p in c.get("problems", []):
                    tr.line(f"{who}: FAILED: {p}", red=True)


def pytest_configure(config):
    mode = os.environ.get(ENV_MODE)
    if mode is None:
        raise pytest.UsageError(
            f"numpy_suite.plugin is loaded but {ENV_MODE} is not set "
            f"(one of {', '.join(MODES)})")
    state = None
    if not _uses_workers(config):
        # This process runs tests (alone, or as an xdist worker): install.
        try:
            state = SuiteState(mode)
            state.install()
        except SuiteError as exc:
            raise pytest.UsageError(f"memmanager NumPy suite: {exc}") from None
    elif mode not in MODES:
        raise pytest.UsageError(
            f"{ENV_MODE}={mode!r}: expected one of {', '.join(MODES)}")
    elif MODES[mode][0] is not None:
        # Fail in the controller too, before workers start.
        try:
            _import_memmanager_numpy()
        except SuiteError as exc:
            raise pytest.UsageError(f"memmanager NumPy suite: {exc}") from None
    config.pluginmanager.register(SuitePlugin(config, state),
                                  "memmanager_numpy_suite")
