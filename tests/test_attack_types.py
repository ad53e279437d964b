"""__get__ / __new__ / __init__ / __setstate__ / __reduce__ / __class__ /
copy / pickle / subclass / setattr misuse of every type memmanager defines
or returns (issue 12, item 2; the cases: tests/attack/types_cases.py, run
in the fork server like the matrix: see tests/test_attack_matrix.py)."""

import pytest

from attack import harness, known, suites, types_cases

TYPES = [case.name for case in suites.build("types")]


@pytest.fixture(scope="module")
def types_results(fake_cuda_library):
    return harness.run_suite("types", fake_cuda_library)


def test_every_module_type_has_a_sample():
    missing = sorted(set(types_cases.module_type_names()) - types_cases.SAMPLED_TYPES)
    assert not missing, "types with no entry in tests/attack/types_cases.py SAMPLES: %s" % missing


TYPE_GROUPS, TYPE_KNOWN = known.split(TYPES, lambda name: name.rsplit(":", 1)[0])


@pytest.mark.parametrize("names", TYPE_GROUPS)
def test_type_misuse(names, types_results):
    harness.check(types_results, "types", names)


if TYPE_KNOWN:  # only while tests/attack/known.py lists a bug
    @pytest.mark.parametrize("names", TYPE_KNOWN)
    def test_type_misuse_known_bug(names, types_results):
        harness.check(types_results, "types", names)
