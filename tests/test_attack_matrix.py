"""The re-entrancy matrix and the gc.get_referents attack (issue 12, item 2).

Every public entry point (tests/attack/entries.py) is called with, in each
argument position, hostile objects whose dunders release the buffer,
collect, re-register an allocator or view kind, mutate the options
mapping, unpin everything or raise (tests/attack/hostile.py).  Every
mutable container that gc.get_referents() hands out is filled with junk,
cleared, or has its values replaced, then the API is driven
(tests/attack/referents.py).  The cases run in a fork server
(tests/attack/forkserver.py): a crash fails the named case.  Rerun one
case, or all cases whose name starts with a prefix:

    cd tests && ../.venv/bin/python -m attack.forkserver matrix /tmp/r.jsonl 'buf.region:'

(with MEMMANAGER_CUDA_LIBRARY pointing at the fake driver for the GPU
entries).  Known failures fixed on other branches: tests/attack/known.py.
"""

import pytest

from attack import entries, harness, known, suites

MATRIX = [case.name for case in suites.build("matrix")]
REFERENTS = [case.name for case in suites.build("referents")]


@pytest.fixture(scope="module")
def matrix_results(fake_cuda_library):
    return harness.run_suite("matrix", fake_cuda_library)


@pytest.fixture(scope="module")
def referents_results(fake_cuda_library):
    return harness.run_suite("referents", fake_cuda_library)


def test_the_matrix_knows_every_public_name():
    unknown = sorted(set(entries.public_names()) - entries.known_names())
    assert not unknown, (
        "public names the attack matrix does not call: add an E(...) line to "
        "tests/attack/entries.py (or NOT_CALLED, for a type or constant): %s" % unknown)


def test_the_matrix_covers_every_argument_position():
    for entry in entries.ENTRIES:
        for param in entry.params:
            prefix = "%s:%s=" % (entry.name, param.name)
            assert any(name.startswith(prefix) for name in MATRIX), (entry.name, param.name)


def test_the_runner_reports_crashes_by_case():
    results = harness.run_suite("selftest", extra_env={"ATTACK_CASE_TIMEOUT": "2"})
    assert results["pass"] is None and results["after-segfault"] is None
    assert results["last"] is None and results["exit-fine"] is None
    # Under AddressSanitizer a segfault is ASan's report and exit status 1.
    segfault = ("signal 11", "AddressSanitizer: SEGV")
    assert any(s in results["segfault"] for s in segfault), results["segfault"]
    assert any(s in results["abort"] for s in ("signal 6", "exit status")), results["abort"]
    assert "hang" in results["hang"]
    assert "a wrong result" in results["wrong"]
    assert results["exit-crash"] is not None
    assert any(s in results["exit-crash"] for s in segfault), results["exit-crash"]


# One test per entry point (its cases that no known bug covers) and one
# xfail test per known bug of tests/attack/known.py (the cases it covers).
MATRIX_GROUPS, MATRIX_KNOWN = known.split(MATRIX, lambda name: name.split(":")[0])
REFERENT_GROUPS, REFERENT_KNOWN = known.split(REFERENTS, lambda name: name.split(":")[0])


@pytest.mark.parametrize("names", MATRIX_GROUPS)
def test_reentrancy(names, matrix_results):
    harness.check(matrix_results, "matrix", names)


if MATRIX_KNOWN:  # only while tests/attack/known.py lists a bug
    @pytest.mark.parametrize("names", MATRIX_KNOWN)
    def test_reentrancy_known_bug(names, matrix_results):
        harness.check(matrix_results, "matrix", names)


@pytest.mark.parametrize("names", REFERENT_GROUPS)
def test_mutated_referents(names, referents_results):
    harness.check(referents_results, "referents", names)


if REFERENT_KNOWN:  # only while tests/attack/known.py lists a bug
    @pytest.mark.parametrize("names", REFERENT_KNOWN)
    def test_mutated_referents_known_bug(names, referents_results):
        harness.check(referents_results, "referents", names)
