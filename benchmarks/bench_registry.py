"""Registry scaling: create+destroy Buffer(64, 1) with 10^3 .. 10^6 buffers
already live.  O(log n) means the 10^6 row stays within 1.5x of 10^3."""

import gc

import pytest

from memmanager import Buffer

from support import hot, mark

LIVE = {"1e3": 10**3, "1e4": 10**4, "1e5": 10**5, "1e6": 10**6}


@pytest.fixture(scope="module",
                params=[pytest.param(n, marks=hot(n in ("1e3", "1e6"))) for n in LIVE])
def live(request):
    gc.collect()
    gc.disable()          # no collections while the million objects are made
    try:
        keep = [Buffer(64, 1) for _ in range(LIVE[request.param])]
    finally:
        gc.enable()
    gc.freeze()           # and none that scan them afterwards
    yield request.param
    gc.unfreeze()
    del keep
    gc.collect()


def test_with_live(benchmark, live):
    subject = "memmanager:10^6 live" if live == "1e6" else f"{live} live"
    mark(benchmark, "registry scaling", subject)
    benchmark(Buffer, 64, 1)
