"""pytest plumbing of the benchmark suite: repeats, their order, fixtures.

``--repeats N`` runs every benchmark N times.  The runs are interleaved by
module: all of a module's benchmarks once, then all of them again, and so
on, so that a slow spell of a shared machine hits memmanager and its peers
alike.  The report takes, for each row, the median of the N ratios.
"""

import gc

import pytest

import memmanager

from support import load_libc


def pytest_addoption(parser):
    parser.addoption("--repeats", type=int, default=1,
                     help="run each benchmark N times, interleaved by module")


def pytest_generate_tests(metafunc):
    repeats = metafunc.config.getoption("repeats")
    if "bench_repeat" in metafunc.fixturenames and repeats > 1:
        metafunc.parametrize("bench_repeat", range(repeats), indirect=True,
                             ids=[f"r{i}" for i in range(repeats)])


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    """Order: module by module; in each, repeat 0 of everything, then 1..."""
    module_rank = {}
    for item in items:
        module_rank.setdefault(item.module.__name__, len(module_rank))

    def repeat_of(item):
        callspec = getattr(item, "callspec", None)
        return callspec.params.get("bench_repeat", 0) if callspec else 0

    position = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (module_rank[item.module.__name__], repeat_of(item),
                                 position[id(item)]))


@pytest.fixture(autouse=True)
def bench_repeat(request, benchmark):
    """Which repeat this is (recorded with the result); afterwards, nothing
    pinned or garbage left over from one benchmark to the next."""
    repeat = getattr(request, "param", 0)
    benchmark.extra_info["repeat"] = repeat
    yield repeat
    memmanager.collect_delayed()
    gc.collect()


@pytest.fixture(scope="session")
def libc():
    return load_libc()
