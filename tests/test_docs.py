"""Every ```python block of README.md and docs/*.md runs.

One test per block, with the id ``page:line`` (the line of its opening
fence).  The blocks of a page run in order in one namespace, as a reader
would type them into one interpreter; each page runs in a fresh
subprocess, so that what a page registers (allocators, views, pinned
buffers) cannot leak into the suite or into another page, and the suite's
fixtures cannot change what a page sees.

A block that cannot run here is marked in the page by the line right
before its fence::

    <!-- doctest: skip: needs an NVIDIA GPU -->

and is skipped with that reason (docs/api-decisions.md, "Docs").  Any other
block must run.  A ``print(...)  # value`` comment is a promise: ``value``
(up to an explanation that starts with " (", ": " or "...") must appear in
what the block printed.  Examples that are not Python use another fence
language (console, sh, text, c).
"""

import json
import os
import pathlib
import re
import subprocess
import sys
from functools import lru_cache

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
SKIP = re.compile(r"^<!--\s*doctest:\s*skip:\s*(?P<reason>.+?)\s*-->\s*$")


def page_id(page):
    return page.relative_to(ROOT).as_posix()


def blocks_of(page):
    """The python blocks of a page: (line of the fence, source, skip reason).

    Fences of every language are followed, so that a ```python line inside
    another block is not taken for a block; a fence left open is an error
    (it swallows the rest of the page).
    """
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, info = match["fence"], match["info"].strip()
        start = i
        body = []
        i += 1
        while i < len(lines):
            close = FENCE.match(lines[i])
            if close and close["fence"][0] == fence[0] and len(close["fence"]) >= len(fence) \
                    and not close["info"].strip():
                break
            body.append(lines[i])
            i += 1
        else:
            raise AssertionError(f"{page_id(page)}:{start + 1}: the fence is never closed")
        i += 1
        if info.split()[0:1] != ["python"]:
            continue
        skip = SKIP.match(lines[start - 1]) if start else None
        blocks.append((start + 1, "\n".join(body) + "\n", skip["reason"] if skip else None))
    return blocks


# The child: runs the blocks it is given, in order, in one namespace, and
# prints their results as JSON.  After a failure the blocks that follow
# still run (each failure is reported), and say which block failed first.
RUNNER = r"""
import contextlib, io, json, sys, traceback
page, blocks = json.load(sys.stdin)
namespace = {"__name__": "__main__"}
failed = None
results = []
for line, source, skip in blocks:
    if skip is not None:
        results.append({"line": line, "status": "skipped"})
        continue
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(source, f"{page}:{line}", "exec"), namespace)
    except BaseException:
        error = traceback.format_exc()
        if failed is not None:
            error += f"(the block at line {failed} had failed before)\n"
        failed = failed or line
        results.append({"line": line, "status": "failed", "stdout": out.getvalue(),
                        "error": error})
    else:
        results.append({"line": line, "status": "ok", "stdout": out.getvalue()})
sys.stdout.write(json.dumps(results))
"""


@lru_cache(maxsize=None)
def run_page(page):
    """Run a page's blocks in a fresh interpreter; the result of each, by line."""
    blocks = blocks_of(page)
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER], input=json.dumps([page_id(page), blocks]),
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, f"{page_id(page)}: the runner died:\n{proc.stderr}"
    return {result["line"]: result for result in json.loads(proc.stdout)}


def promises(source):
    """The values that ``print(...)   # value`` comments promise."""
    found = []
    for line in source.splitlines():
        match = re.match(r"\s*print\(.*\)\s+#\s(.+)$", line)
        if match:
            promise = re.split(r" \(|: |\.\.\.", match.group(1))[0].strip()
            if promise:
                found.append(promise)
    return found


def all_blocks():
    params = []
    for page in PAGES:
        for line, source, skip in blocks_of(page):
            marks = [pytest.mark.skip(reason=skip)] if skip else []
            params.append(pytest.param(page, line, source, id=f"{page_id(page)}:{line}",
                                       marks=marks))
    return params


@pytest.mark.parametrize("page, line, source", all_blocks())
def test_block_runs(page, line, source):
    result = run_page(page)[line]
    assert result["status"] == "ok", f"{page_id(page)}:{line}: {result['error']}"
    printed = result["stdout"].splitlines()
    for want in promises(source):
        assert any(want in out for out in printed), \
            f"{page_id(page)}:{line}: promised {want!r}, printed {printed}"


def test_blocks_are_found():
    """The parser sees the blocks (a regression would make every page pass)."""
    counts = {page_id(page): len(blocks_of(page)) for page in PAGES}
    assert counts["docs/user-guide.md"] >= 25, counts
    assert counts["docs/views.md"] >= 8, counts
    assert counts["README.md"] >= 1, counts


def test_skip_marks_name_a_reason_and_a_block():
    """A skip mark sits right before a python fence, and says why."""
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for number, text in enumerate(lines, 1):
            if not re.match(r"^\s*<!--\s*doctest", text):
                continue
            assert SKIP.match(text), f"{page_id(page)}:{number}: malformed mark {text!r}"
            following = lines[number] if number < len(lines) else ""
            assert re.match(r"^ {0,3}(`{3,}|~{3,})\s*python\b", following), \
                f"{page_id(page)}:{number}: the mark is not right before a python block"
