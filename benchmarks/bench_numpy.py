"""NumPy's own arrays allocated through memmanager (memmanager.numpy):
the same NumPy call under NumPy's default handler and under a handler made
from each of several allocators.

    numpy.empty(64)           (512 B)  PyAlloc, CMalloc, Aligned, Pool over PyAlloc, Limit over PyAlloc
    numpy.empty(4096, "u1")   (4 KiB)  PyAlloc, CMalloc, Mmap, Pool over Mmap
    numpy.zeros(64 MiB, "u1")          PyAlloc, CMalloc, Mmap, Aligned, Pool over Mmap

Each benchmark installs its handler (set_allocator) before the timed loop
and puts NumPy's default back after it, so what is timed is the array's
create + destroy alone.  The peer of every row is the same call under
NumPy's default handler.  NumPy's default keeps a small cache of freed
blocks under 1 KiB, so at 64 elements it pays no malloc at all.

A Pool hands back recycled memory, which it must zero for numpy.zeros
(calloc): at 64 MiB that is a memset of 64 MiB against the fresh zero
pages every other row gets from mmap, so the Pool row of that group loses
by orders of magnitude, as it should; the group's target leaves it out.

The last group is the context manager's own cost: entering and leaving
``with memmanager.numpy.allocator(...)`` with an object made once, and
with one made at each entry (the handler made and the options parsed each
time), against NumPy's own ``with numpy.errstate(...)`` (also a context
variable set and reset), made at each entry as NumPy requires."""

import uuid

import pytest

import memmanager

from support import hot, mark

numpy = pytest.importorskip("numpy")
mm_numpy = pytest.importorskip("memmanager.numpy")

DEFAULT = "NumPy default handler"

# case: (group, the call as written, the allocators it runs under, the
# ones make bench-quick runs)
CASES = {
    "empty64": ("numpy.empty(64)", "numpy.empty(64)",
                ["PyAlloc", "CMalloc", "Aligned", "Pool(PyAlloc)", "Limit(PyAlloc)"],
                {"PyAlloc", "CMalloc"}),
    "empty4k": ("numpy.empty(4096, u1)", 'numpy.empty(4096, "u1")',
                ["PyAlloc", "CMalloc", "Mmap", "Pool(Mmap)"], set()),
    "zeros64m": ("numpy.zeros(64 MiB)", 'numpy.zeros(64 << 20, "u1")',
                 ["PyAlloc", "CMalloc", "Mmap", "Aligned", "Pool(Mmap)"],
                 {"PyAlloc", "CMalloc"}),
}


def as_written(source):
    """The call `source` as written in code, one Python frame (as in
    bench_adaptors.py), with numpy and memmanager.numpy in scope."""
    return eval(f"lambda: {source}", {"numpy": numpy, "mm_numpy": mm_numpy})


def with_block(source, **names):
    """A function whose body is `with <source>: pass`, `names` in scope."""
    scope = {"numpy": numpy, "mm_numpy": mm_numpy, **names}
    exec(f"def f():\n    with {source}:\n        pass\n", scope)
    return scope["f"]


def _register(kind, upstream):
    name = f"BenchNumpy{kind}{uuid.uuid4().hex[:8]}"
    adaptor = memmanager.Pool(upstream) if kind == "Pool" else memmanager.Limit(upstream, 1 << 40)
    memmanager.register_allocator(name, adaptor)
    return name


@pytest.fixture(scope="module")
def names():
    """Subject -> registered allocator name.  The adaptors are registered
    when this module runs, not when it is collected (bench_create.py lists
    the registered allocators at collection)."""
    made = {"Pool(PyAlloc)": _register("Pool", "PyAlloc"),
            "Pool(Mmap)": _register("Pool", "Mmap"),
            "Limit(PyAlloc)": _register("Limit", "PyAlloc")}
    return {**{n: n for n in ("PyAlloc", "CMalloc", "Aligned", "Mmap")}, **made}


def run_under(benchmark, allocator, function):
    """Times function with NumPy's handler set to allocator's (None: NumPy's
    default) for the whole timed loop, warm-up included; default after."""
    mm_numpy.set_allocator(allocator)
    try:
        function()          # a Pool's first block is served before timing
        benchmark(function)
    finally:
        mm_numpy.set_allocator(None)
    assert mm_numpy.get_allocator() is None


OURS = [pytest.param(case, subject, id=f"{case}-{subject}",
                     marks=hot(subject in CASES[case][3]))
        for case in CASES for subject in CASES[case][2]]


@pytest.mark.parametrize("case, subject", OURS)
def test_memmanager(benchmark, names, case, subject):
    group, source, _, _ = CASES[case]
    mark(benchmark, group, f"memmanager:{subject}")
    run_under(benchmark, names[subject], as_written(source))


@pytest.mark.parametrize("case", [pytest.param(case, marks=hot(bool(CASES[case][3])))
                                  for case in CASES])
def test_default(benchmark, case):
    group, source, _, _ = CASES[case]
    mark(benchmark, group, DEFAULT)
    run_under(benchmark, None, as_written(source))


# The context manager.  Nothing is allocated inside the block.
CONTEXT = "with allocator() + exit"


def test_with_made_once(benchmark):
    mark(benchmark, CONTEXT, "memmanager:allocator made once")
    benchmark(with_block("cm", cm=mm_numpy.allocator("PyAlloc")))


def test_with_made_each_time(benchmark):
    mark(benchmark, CONTEXT, "memmanager:allocator('PyAlloc') per with")
    benchmark(with_block('mm_numpy.allocator("PyAlloc")'))


def test_with_made_each_time_options(benchmark):
    mark(benchmark, CONTEXT, "memmanager:allocator('Aligned', alignment=4096) per with")
    benchmark(with_block('mm_numpy.allocator("Aligned", alignment=4096)'))


def test_with_errstate(benchmark):
    mark(benchmark, CONTEXT, "numpy.errstate(all='ignore') per with")
    benchmark(with_block('numpy.errstate(all="ignore")'))


def test_set_allocator_pair(benchmark):
    """set_allocator(name) + set_allocator(None): what a thread pool's
    initializer pays, as a row of information."""
    mark(benchmark, CONTEXT, "memmanager:set_allocator('PyAlloc') + (None)")

    def set_and_reset():
        mm_numpy.set_allocator("PyAlloc")
        mm_numpy.set_allocator(None)
    benchmark(set_and_reset)
