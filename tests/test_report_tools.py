"""The judges of make asan and make valgrind (tools/lsan_report.py,
tools/valgrind_report.py) recognise a frame in any C file of src/.

They decide which leak reports are ours by the source file a frame names;
were that list empty (src/ moved into folders once, and a glob of
src/*.c found nothing), every leak would pass unnoticed.
"""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_FILES = sorted(os.path.relpath(os.path.join(root, name), os.path.join(ROOT, "src"))
                 for root, _dirs, names in os.walk(os.path.join(ROOT, "src"))
                 for name in names if name.endswith(".c"))


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FRAMES = {
    "lsan_report": "    #2 0x7f0012345678 in some_function {root}/src/{path}:412:5",
    "valgrind_report": "   by 0x4C2E0EF: some_function ({root}/src/{path}:412)",
}


@pytest.mark.parametrize("tool", sorted(FRAMES))
def test_every_c_file_of_src_is_ours(tool):
    judge = load(tool)
    assert C_FILES and judge.OUR_SOURCES == C_FILES
    for path in C_FILES:
        assert judge.OUR_FRAME.search(FRAMES[tool].format(root=ROOT, path=path)), path


@pytest.mark.parametrize("tool", sorted(FRAMES))
def test_frames_elsewhere_are_not_ours(tool):
    judge = load(tool)
    for path in ("Objects/listobject.c", "Modules/_ctypes/callproc.c"):
        assert not judge.OUR_FRAME.search(FRAMES[tool].format(root="/python", path=path)
                                           .replace("/src/", "/"))
