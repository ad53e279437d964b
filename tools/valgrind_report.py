"""Judge a `make valgrind` run.

    python tools/valgrind_report.py build/valgrind

memcheck writes one log per process (memcheck.<pid>.log) with the errors
that tools/valgrind-python.supp did not suppress, and the definite leaks.
This script fails when:

- any log holds an error that is not a leak: an invalid read or write, an
  invalid or mismatched free, overlapping copies, a jump or an address
  that depends on an uninitialised value, a bad system-call argument;
- a definite leak has a frame in one of our source files (src/*/*.c), except
  tracemalloc's records of allocations, which CPython 3.11 leaves behind
  when tracing stops: the interpreter's own blocks are counted, not judged;
- the test run itself failed (pytest's summary line in the log's process
  output is checked by the Makefile through its exit status).

It prints a summary per log and every error in full.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
# "buffer/buffer.c", ...: every C file of src/, by its path under src/.
OUR_SOURCES = sorted(p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src").rglob("*.c"))
OUR_FRAME = re.compile(r"\((?:[^()]*/)?src/(%s):\d+\)" % "|".join(map(re.escape, OUR_SOURCES)))
PREFIX = re.compile(r"^==\d+== ?", re.MULTILINE)
# tracemalloc's record of an allocation, which CPython 3.11 leaves behind
# when tracing stops: its stack runs through our code, the block is not ours.
TRACEMALLOC_BOOKKEEPING = ("traceback_new", "tracemalloc_add_trace", "_Py_hashtable")


def is_ours(leak):
    return OUR_FRAME.search(leak) is not None and not any(
        name in leak for name in TRACEMALLOC_BOOKKEEPING)


def blocks(text):
    """The log's reports: runs of lines separated by empty ones."""
    body = PREFIX.sub("", text)
    for block in re.split(r"\n\s*\n", body):
        block = block.strip("\n")
        if block:
            yield block


ERROR_STARTS = re.compile(
    r"^(Invalid (read|write|free)|Mismatched free|Conditional jump or move depends|"
    r"Use of uninitialised value|Syscall param|Source and destination overlap|"
    r"Jump to the invalid address|Process terminating|Argument '\w+' of function|"
    r"Invalid address|Illegal memory pool address)")
LEAK_START = re.compile(r"^[\d,]+ (\([\d,]+ direct, [\d,]+ indirect\) )?bytes in [\d,]+ blocks? "
                        r"(is|are) definitely lost")


def classify(block):
    """'error', 'leak' (definite) or 'info' (headers, summaries)."""
    first = block.splitlines()[0]
    if ERROR_STARTS.match(first):
        return "error"
    if LEAK_START.match(first):
        return "leak"
    return "info"


def main(directory):
    directory = pathlib.Path(directory)
    logs = sorted(directory.glob("memcheck.*.log"))
    if not logs:
        print(f"FAIL: no memcheck logs in {directory}")
        return 1
    failures = 0
    leaks_total = 0
    for log in logs:
        text = log.read_text(errors="replace")
        errors, ours, leaks = [], [], 0
        for block in blocks(text):
            kind = classify(block)
            if kind == "error":
                errors.append(block)
            elif kind == "leak":
                leaks += 1
                if is_ours(block):
                    ours.append(block)
        leaks_total += leaks
        summary = re.search(r"ERROR SUMMARY: (\d+) errors from (\d+) contexts \(suppressed: (\d+)",
                            text)
        print(f"{log.name}: {len(errors)} error(s), {leaks} definite leak(s), {len(ours)} from "
              f"src/" + (f"; {summary.group(3)} suppressed" if summary else ""))
        for block in errors + ours:
            print(block, "\n")
        failures += len(errors) + len(ours)
    print(f"valgrind: {len(logs)} process(es), {failures} problem(s), {leaks_total} definite "
          f"leak(s) in all (the interpreter's own, at exit, unless listed above)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "build/valgrind"))
