"""The bad-input matrix (DESIGN section 10; docs/bad-input.md).

Every public entry point, called with a wrong type, a value out of range,
and on a buffer in each state that can matter (released, exported, pinned,
read-only).  Each case names the exception it must raise, and the test
checks that nothing changed: the registry, stats(), the pinned list, the
buffer's state and bytes, and the reference count of the buffer.  Cases
that are not errors say what happens instead ("allowed").

CASES below is the one table: docs/bad-input.md is generated from it, and
test_doc_is_in_step fails when the two differ.  After changing CASES, run

    .venv/bin/python tests/test_bad_input.py --write

The names a case's code can use: `buf` (a 16-byte buffer in the column's
state), `ALLOC` (the allocator under test, each in turn), `block` (the
address of 16 malloc'ed bytes), `Buffer`, `memmanager`, `ctypes`, `ffi`.
"""

import contextlib
import ctypes
import functools
import gc
import pathlib
import sys
from typing import Any, List, NamedTuple

import cffi
import pytest

import memmanager
from memmanager import Buffer, OverlapError, UnknownAllocatorError

import surface
from conftest import registry_snapshot

COLUMNS = ["wrong type", "wrong range", "released", "exported", "pinned", "read-only"]
DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "bad-input.md"


class Allowed(NamedTuple):
    """Not an error: what happens instead.  With `returns`, the result is
    checked; with mutates=False, that nothing changed is checked too."""

    note: str
    returns: Any = ...
    mutates: bool = False


class Case(NamedTuple):
    entry: str
    column: str
    code: str
    expect: Any          # an exception class, or Allowed


ACCESSORS = ["buf.address", "buf.nbytes", "buf.itemsize", "buf.num_items", "buf.allocator",
             "buf.readonly", "buf.delayed_gc", "buf.exports", "len(buf)", "buf.get_buffer()",
             "buf.get_buffer_size()", "buf.get_element_size()", "buf.get_num_of_elements()"]


def cases_for(entry, column, expect, *codes):
    return [Case(entry, column, code, expect) for code in codes]


CONSTRUCTOR = "Buffer()"
CONSUME = "Buffer.consume()"

CASES: List[Case] = [
    # ---- Buffer()
    *cases_for(CONSTRUCTOR, "wrong type", TypeError,
               'Buffer("16", 1)', "Buffer(16, 1.0)", "Buffer(True, 1)", "Buffer(None, 1)",
               "Buffer(16)", "Buffer(16, 1, None, 0)", 'Buffer(16, 1, [("allocator", "CMalloc")])',
               'Buffer(16, 1, {1: "x"})', "Buffer(16, 1, allocator=5)",
               'Buffer(16, 1, allocator=b"PyAlloc")', "Buffer(16, 1, allocator=ALLOC, init_value=1.5)",
               "Buffer(16, 1, allocator=ALLOC, init_value=True)",
               'Buffer(16, 1, allocator=ALLOC, init_value=bytearray(b"A"))',
               "Buffer(16, 1, allocator=ALLOC, death_stub=5)",
               "Buffer(16, 1, allocator=ALLOC, alignmnet=64)"),
    *cases_for(CONSTRUCTOR, "wrong range", ValueError,
               "Buffer(0, 1, allocator=ALLOC)", "Buffer(16, -1, allocator=ALLOC)",
               "Buffer(16, 1, allocator=ALLOC, init_value=256)",
               "Buffer(16, 1, allocator=ALLOC, init_value=-1)",
               'Buffer(16, 1, allocator=ALLOC, init_value="256")',
               'Buffer(16, 1, allocator=ALLOC, init_value="zeroes")',
               'Buffer(16, 1, allocator=ALLOC, init_value=b"AB")',
               'Buffer(16, 1, allocator=ALLOC, init_value="\\u0100")',
               'Buffer(16, 1, allocator="Borrowed")'),
    *cases_for(CONSTRUCTOR, "wrong range", OverflowError,
               "Buffer(2**63, 1, allocator=ALLOC)", "Buffer(2**32, 2**32, allocator=ALLOC)"),
    Case(CONSTRUCTOR, "wrong range", 'Buffer(16, 1, allocator="Nope")', UnknownAllocatorError),
    Case(CONSTRUCTOR, "wrong range", "Buffer(2**40, 2**20, allocator=ALLOC)", MemoryError),

    # ---- Buffer.consume()
    *cases_for(CONSUME, "wrong type", TypeError,
               "Buffer.consume(1.5, 16, 1)", "Buffer.consume(None, 16, 1)",
               'Buffer.consume("abc", 3, 1)', "Buffer.consume(True, 1, 1)",
               "Buffer.consume([1.5], 16, 1)", 'Buffer.consume(bytearray(16), "16", 1)',
               "Buffer.consume(bytearray(16), 16)",
               "Buffer.consume(bytearray(16), 16, 1, init_value=0)",
               'Buffer.consume(bytearray(16), 16, 1, allocator="CMalloc")',
               'Buffer.consume(block, 16, 1, allocator="PyAlloc")',
               "Buffer.consume(bytearray(16), 16, 1, death_stub=1)",
               "Buffer.consume(bytearray(16), 16, 1, bogus=1)",
               'Buffer.consume(ffi.new("char[16]"), 16, 1)',
               # issue 12: an address needs allocator= (CMalloc or Borrowed)
               "Buffer.consume(block, 16, 1)", "Buffer.consume([block], 16, 1)",
               "Buffer.consume(ctypes.c_void_p(block), 16, 1)",
               'Buffer.consume(ffi.new("char[16]"), 16, 1, allocator="CMalloc")'),
    *cases_for(CONSUME, "wrong range", ValueError,
               "Buffer.consume(0, 16, 1)", "Buffer.consume(-8, 16, 1)", "Buffer.consume([], 16, 1)",
               "Buffer.consume([block, block], 16, 1)", "Buffer.consume(bytearray(16), 17, 1)",
               "Buffer.consume(bytearray(16), 0, 1)",
               'Buffer.consume(block, 16, 1, allocator="CMalloc", copy=True)',
               "Buffer.consume(bytearray(16), 16, 1, owner=[])",
               'Buffer.consume(block, 16, 1, allocator="CMalloc", owner=[])'),
    *cases_for(CONSUME, "wrong range", OverflowError,
               "Buffer.consume(2**64, 16, 1)", "Buffer.consume(block, 2**62, 8)",
               'Buffer.consume(2**64 - 8, 16, 1, allocator="Borrowed")'),
    *cases_for(CONSUME, "wrong range", BufferError,
               "Buffer.consume(bytes(16), 16, 1, readonly=False)",
               "Buffer.consume(memoryview(bytearray(32))[::2], 16, 1)"),
    *cases_for(CONSUME, "released", ValueError,
               "Buffer.consume(buf, 16, 1)", "Buffer.consume(buf, 16, 1, copy=True)"),
    *[case for column in ("exported", "pinned") for case in [
        *cases_for(CONSUME, column, OverlapError,
                   'Buffer.consume(buf.address + 8, 4, 1, allocator="Borrowed")',
                   'Buffer.consume([buf.address], 16, 1, allocator="CMalloc")'),
        # issue 12: a zero-copy consume holds an export of buf: it may overlap
        *[Case(CONSUME, column, code, Allowed("a zero-copy buffer over buf's memory", mutates=True))
          for code in ("Buffer.consume(buf, 16, 1, delayed_gc=False)",
                       "Buffer.consume(buf, 8, 1, delayed_gc=False)",
                       "Buffer.consume(memoryview(buf)[4:12], 8, 1, delayed_gc=False)",
                       'Buffer.consume(buf.address + 8, 4, 1, allocator="Borrowed", '
                       'owner=buf, delayed_gc=False)')],
        Case(CONSUME, column, "Buffer.consume(buf, 16, 1, copy=True, delayed_gc=False)",
             Allowed("an independent copy", mutates=True)),
    ]],
    Case(CONSUME, "read-only", "Buffer.consume(buf, 16, 1, readonly=False)", BufferError),
    # issue 12: non-owning buffers may overlap each other
    Case(CONSUME, "read-only", "Buffer.consume(buf, 16, 1, delayed_gc=False)",
         Allowed("a second zero-copy buffer over the same bytes", mutates=True)),

    # ---- accessors
    *cases_for("accessors", "wrong type", TypeError,
               "buf.get_buffer(0)", "buf.get_buffer_size(None)", "buf.get_element_size(1)",
               "buf.get_num_of_elements(1)"),
    *cases_for("accessors", "wrong type", AttributeError,
               "buf.address = 1", "buf.nbytes = 16", "del buf.allocator", "buf.no_such_field = 1"),
    *cases_for("accessors", "released", ValueError, *ACCESSORS),
    *[Case("accessors", column, "(" + ", ".join(ACCESSORS) + ")", Allowed("all work"))
      for column in ("exported", "pinned", "read-only")],
    *[Case("identifier, released, repr()", column, "(buf.identifier, buf.released, repr(buf))",
           Allowed("always work")) for column in ("released", "exported", "pinned")],

    # ---- extract_buffer_region()
    *cases_for("buf.extract_buffer_region()", "wrong type", TypeError,
               'buf.extract_buffer_region("0")', "buf.extract_buffer_region(0, 1.5)",
               "buf.extract_buffer_region(0, 1, 2)", "buf.extract_buffer_region(start=0, stop=1)"),
    *cases_for("buf.extract_buffer_region()", "wrong range",
               Allowed("returns None (the Perl contract)", returns=None),
               "buf.extract_buffer_region(-1, 3)", "buf.extract_buffer_region(0, 16)",
               "buf.extract_buffer_region(5, 2)", "buf.extract_buffer_region(0, 2**70)"),
    Case("buf.extract_buffer_region()", "released", "buf.extract_buffer_region(0, 3)", ValueError),
    *[Case("buf.extract_buffer_region()", column, "buf.extract_buffer_region(0, 3)",
           Allowed("a copy")) for column in ("exported", "pinned", "read-only")],

    # ---- region()
    *cases_for("buf.region()", "wrong type", TypeError,
               'buf.region("0")', "buf.region(0, 2.0)", "buf.region(0, 4, True)",
               "buf.region(end=4)"),
    *cases_for("buf.region()", "wrong range", IndexError,
               "buf.region(-1)", "buf.region(0, 17)", "buf.region(5, 2)", "buf.region(2**70)",
               "buf.region(0, -1)"),
    Case("buf.region()", "released", "buf.region(0, 4)", ValueError),
    *[Case("buf.region()", column, "buf.region(0, 4)", Allowed("one more export"))
      for column in ("exported", "pinned", "read-only")],
    Case("buf.region()", "read-only", 'buf.region(0, 4)[0:1] = b"x"', TypeError),

    # ---- buf[i], buf[a:b]
    *cases_for("buf[i]", "wrong type", TypeError, 'buf["0"]', "buf[1.5]", "buf[None]", "buf[(0,)]"),
    *cases_for("buf[i]", "wrong range", IndexError, "buf[16]", "buf[-17]", "buf[2**70]"),
    Case("buf[i]", "released", "buf[0]", ValueError),
    *[Case("buf[i]", column, "buf[0]", Allowed("an int")) for column in
      ("exported", "pinned", "read-only")],
    Case("buf[a:b]", "wrong type", 'buf["a":2]', TypeError),
    Case("buf[a:b]", "wrong range", "buf[0:2:0]", ValueError),
    Case("buf[a:b]", "wrong range", "buf[10:100]", Allowed("clipped, as for bytes")),
    Case("buf[a:b]", "released", "buf[0:2]", ValueError),
    *[Case("buf[a:b]", column, "buf[0:2]", Allowed("a bytes copy")) for column in
      ("exported", "pinned", "read-only")],

    # ---- buf[i] = v, buf[a:b] = data, del
    *cases_for("buf[i] = v", "wrong type", TypeError,
               'buf[0] = "a"', "buf[0] = 1.0", "buf[0] = True", 'buf["0"] = 1', 'buf[0] = b"a"'),
    *cases_for("buf[i] = v", "wrong range", ValueError, "buf[0] = 256", "buf[0] = -1"),
    *cases_for("buf[i] = v", "wrong range", IndexError, "buf[16] = 0", "buf[-17] = 0"),
    Case("buf[i] = v", "released", "buf[0] = 1", ValueError),
    *[Case("buf[i] = v", column, "buf[0] = 1", Allowed("written", mutates=True))
      for column in ("exported", "pinned")],
    Case("buf[i] = v", "read-only", "buf[0] = 1", TypeError),
    *cases_for("buf[a:b] = data", "wrong type", TypeError,
               'buf[0:3] = "abc"', "buf[0:3] = 3", "buf[0:3] = [1, 2, 3]", "buf[0:3] = None"),
    *cases_for("buf[a:b] = data", "wrong range", ValueError,
               'buf[0:3] = b"ab"', 'buf[0:3] = b"abcd"', 'buf[::2] = b"x"', 'buf[0:2:0] = b""'),
    Case("buf[a:b] = data", "released", 'buf[0:3] = b"abc"', ValueError),
    *[Case("buf[a:b] = data", column, 'buf[0:3] = b"abc"', Allowed("written", mutates=True))
      for column in ("exported", "pinned")],
    Case("buf[a:b] = data", "read-only", 'buf[0:3] = b"abc"', TypeError),
    *cases_for("del buf[i]", "wrong type", TypeError, "del buf[0]", "del buf[0:2]"),
    Case("del buf[i]", "released", "del buf[0]", ValueError),
    *[Case("del buf[i]", column, "del buf[0]", TypeError) for column in
      ("exported", "pinned", "read-only")],

    # ---- the buffer protocol
    Case("memoryview(buf)", "released", "memoryview(buf)", ValueError),
    *[Case("memoryview(buf)", column, "memoryview(buf)", Allowed("one more export"))
      for column in ("exported", "pinned", "read-only")],
    Case("memoryview(buf)", "read-only", "(ctypes.c_char * 16).from_buffer(buf)", TypeError),

    # ---- release() and with
    Case("buf.release()", "wrong type", "buf.release(1)", TypeError),
    Case("buf.release()", "released", "buf.release()", Allowed("a no-op", returns=None)),
    Case("buf.release()", "exported", "buf.release()", BufferError),
    *[Case("buf.release()", column, "buf.release()", Allowed("frees it", mutates=True))
      for column in ("pinned", "read-only")],
    Case("with buf:", "wrong type", "buf.__enter__(1)", TypeError),
    Case("with buf:", "released", "with buf: pass", ValueError),
    Case("with buf:", "exported", "with buf: pass", BufferError),
    Case("with buf:", "pinned", "with buf: pass", Allowed("frees it at the end", mutates=True)),

    # ---- module functions
    *cases_for("memmanager.collect_delayed()", "wrong type", TypeError,
               "memmanager.collect_delayed(5)", "memmanager.collect_delayed([1.5])",
               'memmanager.collect_delayed(["x"])', "memmanager.collect_delayed([True])",
               "memmanager.collect_delayed([], 1)", "memmanager.collect_delayed(ids=[])"),
    Case("memmanager.collect_delayed()", "wrong range", "memmanager.collect_delayed([1])",
         Allowed("skips what is not pinned", returns=[])),
    *[Case("memmanager.collect_delayed()", column, "memmanager.collect_delayed([buf])",
           Allowed("skipped: not pinned", returns=[])) for column in ("released", "exported")],
    Case("memmanager.collect_delayed()", "pinned", "memmanager.collect_delayed([buf])",
         Allowed("unpins it", mutates=True)),
    *cases_for("memmanager.get_delayed_gc_objects()", "wrong type", TypeError,
               "memmanager.get_delayed_gc_objects(1)", "Buffer.get_delayed_gc_objects(1)"),
    *cases_for("stats(), live_buffers(), report(), allocators(), get_include()", "wrong type",
               TypeError, "memmanager.stats(1)", "memmanager.live_buffers(1)",
               "memmanager.report(1)", "memmanager.allocators(1)", "memmanager.get_include(1)"),
]

# Cases whose outcome does not depend on the allocator of `buf` run once.
ALLOCATOR_FREE = {CONSTRUCTOR, CONSUME, "memmanager.collect_delayed()",
                  "memmanager.get_delayed_gc_objects()",
                  "stats(), live_buffers(), report(), allocators(), get_include()"}


def depends_on_allocator(case):
    if "ALLOC" in case.code:
        return True
    return case.entry not in ALLOCATOR_FREE and case.column != "read-only"


def expectation_name(expect):
    return "allowed" if isinstance(expect, Allowed) else expect.__name__


# --------------------------------------------------------------------------
# running a case

FFI = cffi.FFI()


@contextlib.contextmanager
def buffer_in_state(column, allocator):
    """A 16-byte buffer in the column's state, and what keeps it there."""
    if column == "read-only":
        source = bytes(range(16)) + b"!"
        buf = Buffer.consume(source, 16, 1, delayed_gc=False)
    else:
        buf = Buffer(16, 1, allocator=allocator, delayed_gc=(column == "pinned"))
        buf[:] = bytes(range(16))
    view = memoryview(buf) if column == "exported" else None
    if column == "released":
        buf.release()
    try:
        yield buf
    finally:
        if view is not None:
            view.release()
        buf.release()


def buffer_state(buf):
    if buf.released:
        return ("released", repr(buf))
    return (buf.exports, buf.delayed_gc, buf.readonly, buf.address, buf.extract_buffer_region())


@functools.lru_cache(maxsize=None)
def compiled(code):
    """(is an expression, code object): compiled once, so that repeating a
    case (test_leaks.py) measures the case, not the compiler."""
    try:
        return True, compile(code, "<case>", "eval")
    except SyntaxError:
        return False, compile(code, "<case>", "exec")


def run_code(code, namespace):
    """Evaluates an expression (returning its value) or executes a statement."""
    is_expression, code_object = compiled(code)
    if is_expression:
        return eval(code_object, namespace)
    exec(code_object, namespace)
    return None


def adoptions():
    return memmanager.stats().get("CMalloc", {}).get("allocations", 0)


def check_case(case, allocator):
    block = surface.LIBC.malloc(16)
    adoptions_before = None
    gc.freeze()     # older garbage stays put; gc.collect() below stays cheap
    try:
        with buffer_in_state(case.column, allocator) as buf:
            adoptions_before = adoptions()
            before = registry_snapshot(), buffer_state(buf)
            refcount = sys.getrefcount(buf)
            namespace = {"buf": buf, "ALLOC": allocator, "block": block, "Buffer": Buffer,
                         "memmanager": memmanager, "ctypes": ctypes, "ffi": FFI}
            if isinstance(case.expect, Allowed):
                result = run_code(case.code, namespace)
                if case.expect.returns is not ...:
                    assert result == case.expect.returns
                del result
            else:
                with pytest.raises(case.expect):
                    run_code(case.code, namespace)
            namespace.clear()
            gc.collect()
            if not (isinstance(case.expect, Allowed) and case.expect.mutates):
                assert (registry_snapshot(), buffer_state(buf)) == before, "something changed"
                assert sys.getrefcount(buf) == refcount
            assert memmanager._core._registry_check() == len(memmanager.live_buffers())
    finally:
        gc.unfreeze()
        # No case allocates with CMalloc: a new CMalloc buffer is the block,
        # adopted (and perhaps freed already), so it is not freed again here.
        adopted = adoptions_before is not None and adoptions() != adoptions_before
        if not adopted:
            surface.LIBC.free(block)
    assert not adopted, "a refused consume() adopted the block"


def case_id(case):
    return f"{case.entry} | {case.column} | {case.code}"


def parameters():
    for case in CASES:
        allocators = surface.ALLOCATORS if depends_on_allocator(case) else ["PyAlloc"]
        for allocator in allocators:
            yield pytest.param(case, allocator, id=f"{case_id(case)} | {allocator}")


@pytest.mark.parametrize("case, allocator", list(parameters()))
def test_bad_input(case, allocator):
    check_case(case, allocator)


# --------------------------------------------------------------------------
# the document

BEGIN = "<!-- generated from tests/test_bad_input.py: do not edit below -->"
END = "<!-- end of generated part -->"


def entries():
    seen = []
    for case in CASES:
        if case.entry not in seen:
            seen.append(case.entry)
    return seen


def cell(entry, column):
    names = []
    for case in CASES:
        if case.entry == entry and case.column == column:
            name = expectation_name(case.expect)
            if name not in names:
                names.append(name)
    return ", ".join(f"`{n}`" if n != "allowed" else n for n in names) or "—"


def render():
    lines = [BEGIN, "", "## The matrix", "",
             "| entry point | " + " | ".join(COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for entry in entries():
        lines.append(f"| `{entry}` | " + " | ".join(cell(entry, c) for c in COLUMNS) + " |")
    lines += ["", "## Every case", ""]
    for entry in entries():
        lines += [f"### `{entry}`", "", "| condition | call | result |", "|---|---|---|"]
        for case in CASES:
            if case.entry != entry:
                continue
            if isinstance(case.expect, Allowed):
                result = "allowed: " + case.expect.note
            else:
                result = f"`{case.expect.__name__}`, nothing changed"
            code = case.code.replace("|", "\\|")
            lines.append(f"| {case.column} | `{code}` | {result} |")
        lines.append("")
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_doc():
    text = DOC.read_text()
    head = text.split(BEGIN)[0]
    DOC.write_text(head + render())


def test_doc_is_in_step():
    text = DOC.read_text()
    assert BEGIN in text and END in text
    generated = BEGIN + text.split(BEGIN, 1)[1]
    assert generated == render(), "docs/bad-input.md is stale: run tests/test_bad_input.py --write"


def test_every_entry_has_a_wrong_type_case():
    for entry in entries():
        if entry.startswith("identifier"):
            continue
        assert any(c.entry == entry and c.column in ("wrong type", "released") for c in CASES), entry


def test_matrix_covers_every_state_of_the_buffer_methods():
    methods = [e for e in entries() if e.startswith(("buf", "accessors", "memoryview", "with"))]
    for entry in methods:
        assert any(c.entry == entry and c.column == "released" for c in CASES), entry


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_doc()
        print(f"wrote {DOC}")
    else:
        print(render())
