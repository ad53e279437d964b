"""Judge the LeakSanitizer pass of `make asan`.

    python tools/lsan_report.py build/asan

The pass runs tests/test_leaks.py with leak detection on and full stacks
(ASAN_OPTIONS=log_path=build/asan/lsan...).  CPython does not free
everything at exit, so every run reports leaks; what matters is whether
one of them was allocated from our C code.  This script fails when:

- the tests themselves failed, or did not finish (the JUnit file is missing
  or reports failures: an ASan error aborts the process);
- a log holds an AddressSanitizer or UndefinedBehaviorSanitizer error other
  than the leak report;
- a leak report has a frame in one of our source files (src/*/*.c), except
  the records tracemalloc keeps about an allocation (its own bookkeeping,
  which CPython leaves at exit).

It prints how many leak reports there were, and every one of ours in full.
"""

import pathlib
import re
import sys
import xml.etree.ElementTree as ElementTree

ROOT = pathlib.Path(__file__).resolve().parent.parent
# "buffer/buffer.c", ...: every C file of src/, by its path under src/.
OUR_SOURCES = sorted(p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src").rglob("*.c"))
OUR_FRAME = re.compile(r" in \S+ .*\bsrc/(%s):\d+" % "|".join(map(re.escape, OUR_SOURCES)))
TRACEMALLOC_BOOKKEEPING = ("traceback_new", "tracemalloc_add_trace", "_Py_hashtable")
LEAK_START = re.compile(r"^(Direct|Indirect) leak of ", re.MULTILINE)


def leak_reports(text):
    starts = [m.start() for m in LEAK_START.finditer(text)]
    for begin, end in zip(starts, starts[1:] + [len(text)]):
        yield text[begin:end].split("\n\n")[0]


def is_ours(report):
    return OUR_FRAME.search(report) is not None and not any(
        name in report for name in TRACEMALLOC_BOOKKEEPING)


def other_errors(text):
    errors = []
    for line in text.splitlines():
        if "ERROR: AddressSanitizer" in line or "runtime error:" in line:
            errors.append(line.strip())
    return errors


def check_junit(path):
    if not path.exists():
        return [f"{path} is missing: the leak pass did not finish (see its output above)"]
    suite = ElementTree.parse(path).getroot()
    if suite.tag == "testsuites":
        suite = suite[0]
    tests = int(suite.get("tests", 0))
    bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    problems = []
    if tests == 0:
        problems.append("the leak pass ran no tests")
    if bad:
        problems.append(f"{bad} test(s) of the leak pass failed")
    return problems


def main(directory):
    directory = pathlib.Path(directory)
    problems = check_junit(directory / "leak-pass.xml")
    total = 0
    ours = []
    for log in sorted(directory.glob("lsan*")):
        text = log.read_text(errors="replace")
        problems += [f"{log.name}: {line}" for line in other_errors(text)]
        for report in leak_reports(text):
            total += 1
            if is_ours(report):
                ours.append((log.name, report))
    for name, report in ours:
        print(f"--- a leak allocated from src/ ({name}):\n{report}\n")
    if ours:
        problems.append(f"{len(ours)} leak report(s) allocated from src/")
    print(f"LeakSanitizer: {total} leak report(s) in {directory}, {len(ours)} from src/ "
          f"(the rest are CPython's and NumPy's own, at exit)")
    for problem in problems:
        print("FAIL:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "build/asan"))
