"""Attacks on the resource adaptors and what came with them (issue 14):
Pool, Limit, Log, replay(), statistics() scopes and MappedFile, through
hostile Python code in the middle of their entry points.  Each test is
one way in that once crashed, hung or gave a wrong answer; the ones
that crashed run in a child process, so the suite survives a regression.
"""

import uuid

import pytest

import memmanager
from memmanager import Buffer, Limit

from conftest import run_python


def fresh(prefix):
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def child_ok(code, env_extra=None, timeout=60):
    result = run_python(code, env_extra=env_extra, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok"), result.stdout[-2000:]


# ---------------------------------------------------------------------------
# An init value through a Limit made with MappedFile's options: the
# options were parsed once, for no init value, so mode 'r' / 'r+' let an
# init value through: a memset on a read-only mapping (SIGSEGV), or the
# file's data overwritten (and init_value=0 answered with the file's bytes).
# ---------------------------------------------------------------------------

def test_init_value_through_a_limit_over_a_file_opened_r_plus(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"abcd" * 1024)
    name = fresh("OverFile")
    memmanager.register_allocator(name, Limit("MappedFile", 1 << 20, path=str(path), mode="r+"))
    for init in (0, 7):
        with pytest.raises(ValueError, match="init_value"):
            Buffer(16, 1, allocator=name, init_value=init)
    assert path.read_bytes() == b"abcd" * 1024
    with Buffer(4, 1, allocator=name) as buf:      # no init value: the file's data
        assert bytes(buf) == b"abcd"


def test_init_value_through_a_limit_over_a_read_only_file_is_refused(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 4096)
    child_ok(f"""
        import memmanager
        from memmanager import Buffer, Limit
        memmanager.register_allocator("RO", Limit("MappedFile", 1 << 20,
                                                  path={str(path)!r}, mode="r"))
        try:
            Buffer(16, 1, allocator="RO", init_value=5)
        except ValueError as error:
            assert "init_value" in str(error)
        else:
            raise AssertionError("an init value was written to a read-only mapping")
        buf = Buffer(16, 1, allocator="RO")
        assert buf.readonly and bytes(buf) == b"x" * 16
        print("ok")
    """)


# ---------------------------------------------------------------------------
# report() and stats() walk the registry while allocating their result; a
# collection there may run code that replaces a registered adaptor, whose
# last reference the registry held: the walk went on with a freed adaptor
# (report() then printed it: a segfault).
# ---------------------------------------------------------------------------

def test_report_survives_a_collection_that_replaces_an_adaptor():
    child_ok("""
        import gc, memmanager
        from memmanager import _core, Pool
        def register():
            memmanager.register_allocator("X", Pool("PyAlloc", initial_size=1 << 16))
        register()
        def callback(phase, info):
            if phase == "start":
                register()
        # Drain the 4-tuples' free list, so that the row _adaptors() builds
        # for "X" is a fresh allocation, which starts a collection.
        keep = [(i, i, i, i) for i in range(3000)]
        gc.callbacks.append(callback)
        gc.set_threshold(1)
        rows = _core._adaptors()
        gc.set_threshold(700)
        gc.callbacks.remove(callback)
        assert [type(row[3]) for row in rows] == [Pool], rows
        assert all(row[3].held_bytes == 1 << 16 for row in rows)
        repr(rows)
        memmanager.report()
        print("ok")
    """, env_extra={"PYTHONMALLOC": "debug"})


def test_stats_survives_collections_that_replace_adaptors():
    """The same walk in stats(): whatever the collections do, every
    adaptor entry reads a live adaptor (the values are its own)."""
    child_ok("""
        import gc, memmanager
        from memmanager import Pool
        def register():
            memmanager.register_allocator("X", Pool("PyAlloc", initial_size=1 << 16))
        register()
        def callback(phase, info):
            if phase == "start":
                register()
        for drained in range(0, 120, 7):
            dicts = [{} for _ in range(drained)]
            gc.callbacks.append(callback)
            gc.set_threshold(1)
            s = memmanager.stats()
            gc.set_threshold(700)
            gc.callbacks.remove(callback)
            assert s["X"]["upstream_bytes"] == 1 << 16, s["X"]
            del dicts
        print("ok")
    """, env_extra={"PYTHONMALLOC": "debug"})


# ---------------------------------------------------------------------------
# Pool(), Limit() and Log() borrowed their keyword arguments from the
# caller's kwargs dict; code run while one is parsed (__index__,
# __fspath__) can find that dict with gc.get_referrers() and empty it,
# freeing the others under the constructor.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["Limit", "Pool", "Log"])
def test_constructors_hold_their_keyword_arguments(kind, tmp_path):
    log_path = str(tmp_path / "evil.log")
    child_ok(f"""
        import gc, memmanager
        def empty_my_kwargs(obj):
            # The dict Python made for the call is all that holds the
            # upstream's name (a str made here) and Big().
            for d in gc.get_referrers(obj):
                if isinstance(d, dict) and "upstream" in d:
                    d.clear()
        class Evil:
            def __index__(self):
                empty_my_kwargs(self)
                return 1 << 20
            def __fspath__(self):
                empty_my_kwargs(self)
                return {log_path!r}
        class Big:                  # an object only the dict holds
            def __index__(self):
                return 1 << 30
        kind = {kind!r}
        if kind == "Limit":
            made = memmanager.Limit(**{{"upstream": "".join(["Py", "Alloc"]),
                                        "max_bytes": Evil()}})
        elif kind == "Pool":
            made = memmanager.Pool(**{{"upstream": "".join(["Py", "Alloc"]),
                                       "initial_size": Evil(),
                                       "maximum_size": Big()}})
        else:
            made = memmanager.Log(**{{"upstream": "".join(["Py", "Alloc"]),
                                      "path": Evil()}})
        assert made.upstream == "PyAlloc", made
        if kind == "Pool":
            assert made.maximum_size == 1 << 30
        print("ok")
    """, env_extra={"PYTHONMALLOC": "debug"})


# ---------------------------------------------------------------------------
# statistics(): code that finds the context variable (it is in every
# copy_context()) can store a scope there that was never entered; entering
# it then made it its own parent, and every later allocation walked the
# chain for ever.
# ---------------------------------------------------------------------------

def test_a_scope_cannot_become_its_own_ancestor():
    child_ok("""
        import contextvars, memmanager
        from memmanager import Buffer
        with memmanager.statistics():
            var = next(v for v in contextvars.copy_context()
                       if v.name == "memmanager.statistics")
        scope = memmanager.statistics()
        var.set(scope)
        try:
            scope.__enter__()
        except RuntimeError:
            pass
        else:
            raise AssertionError("a scope was entered as its own parent")
        Buffer(10, 1)                      # hung here
        var.set(None)
        # Nor the parent of another: that could close a cycle further out.
        with memmanager.statistics() as outer:
            never_entered = memmanager.statistics()
            var.set(never_entered)
            try:
                memmanager.statistics().__enter__()
            except RuntimeError:
                pass
            else:
                raise AssertionError("a scope never entered became a parent")
            var.set(outer)
            with memmanager.statistics() as inner:
                Buffer(10, 1)
            assert inner.allocations == outer.allocations == 1
        print("ok")
    """, timeout=30)
