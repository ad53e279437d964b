"""What every attack case asserts once the attacked call is over."""

import gc
from typing import Any, Callable, List, NamedTuple

import memmanager

# Exceptions that a call may end in: anything a caller can handle, but not
# SystemError (a C function that returned NULL without an exception, or a
# result with an exception set) nor a fatal-looking BaseException.
BAD_EXCEPTIONS = (SystemError,)


class Case(NamedTuple):
    name: str
    group: str
    run: Callable[[], None]


def call_outcome(call: Callable[[], Any]) -> Any:
    """Runs call; returns its result, or the exception it raised.  A
    SystemError or a non-Exception fails the case."""
    try:
        return call()
    except BAD_EXCEPTIONS as exc:
        raise AssertionError("the call ended in %s: %s" % (type(exc).__name__, exc)) from exc
    except Exception as exc:
        exc.__traceback__ = None
        return exc


def _host_readable(buf: Any) -> bool:
    return buf.allocator != "CudaDevice"


def check_buffer(buf: Any) -> None:
    """Released, or fully usable; live_buffers() agrees either way."""
    rows = {row.identifier: row for row in memmanager.live_buffers()}
    if buf.released:
        assert buf.identifier not in rows, "released buffer is still in live_buffers()"
        try:
            buf.nbytes
        except ValueError:
            pass
        else:
            raise AssertionError("a released buffer answers nbytes")
        return
    address, nbytes = buf.address, buf.nbytes
    assert address != 0, "a live buffer at address 0"
    assert nbytes == len(buf) >= 1
    row = rows.get(buf.identifier)
    assert row is not None, "live buffer %r is missing from live_buffers()" % (buf,)
    assert (row.address, row.nbytes) == (address, nbytes), (row, address, nbytes)
    assert row.pinned == buf.delayed_gc
    if _host_readable(buf):
        with memoryview(buf) as view:
            assert view.nbytes == nbytes
            first = view[0]
            if not view.readonly:
                view[0] = first ^ 0xFF
                assert buf[0] == first ^ 0xFF
                view[0] = first
        assert buf.extract_buffer_region(0, nbytes - 1) is not None


def check_registry() -> None:
    rows = memmanager.live_buffers()
    stats = memmanager.stats()
    total = stats["total"]
    assert total["live_buffers"] == len(rows), (total, len(rows))
    assert total["live_bytes"] == sum(row.nbytes for row in rows), (total, rows)
    per = [v for k, v in stats.items() if k != "total"]
    assert sum(v["live_buffers"] for v in per) == total["live_buffers"], stats
    assert sum(v["live_bytes"] for v in per) == total["live_bytes"], stats
    for row in rows:
        assert row.address != 0, "a live region at address 0: %r" % (row,)
        assert row.nbytes > 0, row
    memmanager._core._registry_check()
    pinned = set(memmanager.get_delayed_gc_objects())
    assert pinned <= {row.identifier for row in rows}, "a pinned identifier is not live"


def exported_buffers(obj: Any, depth: int = 0) -> List[Any]:
    """The memmanager Buffers whose memory obj (a memoryview, an ndarray,
    a ctypes object, ...) exposes, found through .obj / .base / _objects."""
    if depth > 6 or obj is None:
        return []
    if isinstance(obj, memmanager.Buffer):
        return [obj]
    found: List[Any] = []
    if isinstance(obj, memoryview):
        try:
            found += exported_buffers(obj.obj, depth + 1)
        except ValueError:  # a released memoryview
            return []
    for attr in ("base", "_objects"):
        try:
            inner = getattr(obj, attr, None)
        except Exception:
            inner = None
        if isinstance(inner, dict):
            for value in list(inner.values()):
                found += exported_buffers(value, depth + 1)
        elif inner is not None and inner is not obj:
            found += exported_buffers(inner, depth + 1)
    return found


def check_result(result: Any) -> None:
    """A view a call returned must not expose a released buffer."""
    if isinstance(result, BaseException):
        return
    for buf in exported_buffers(result):
        assert not buf.released, "the call returned a view of a released buffer"


def cleanup(state: Any, holder: List[Any]) -> None:
    """Drop everything the case made (holder: [the call's result], emptied
    here); afterwards nothing it made is live."""
    result = holder.pop()
    ids = set()
    for buf in state.bufs:
        ids.add(buf.identifier)
    if isinstance(result, memmanager.Buffer):
        ids.add(result.identifier)
        state.bufs.append(result)
    result = None
    bufs = state.bufs
    state.keep.clear()
    state.options.clear()
    for attr in list(vars(state)):   # setups' extras: views, device views
        if attr != "bufs":
            delattr(state, attr)
    for buf in bufs:
        for name in list(buf.view_names() if not buf.released else []):
            try:
                buf.delete_view(name)
            except Exception:
                pass
    gc.collect()
    for buf in bufs:
        try:
            buf.release()
        except BufferError:
            pass
    bufs.clear()
    memmanager.collect_delayed()
    gc.collect()
    check_registry()
    left = [row for row in memmanager.live_buffers() if row.identifier in ids]
    assert not left, "buffers of the case are still live after cleanup: %r" % (left,)
