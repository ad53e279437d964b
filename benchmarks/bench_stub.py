"""Death-stub overhead: a buffer with a stub vs weakref.finalize on a bytearray.

A bytearray cannot carry a weak reference, so the peer wraps it in the
smallest object that can; the stub itself does nothing in both."""

import weakref

from memmanager import Buffer

from support import mark


def _noop(*args):
    return None


class _Holder:
    __slots__ = ("data", "__weakref__")

    def __init__(self, n):
        self.data = bytearray(n)


def test_death_stub(benchmark):
    mark(benchmark, "create+destroy with a finaliser", "memmanager:death_stub")
    benchmark(lambda: Buffer(64, 1, death_stub=_noop))


def test_weakref_finalize(benchmark):
    mark(benchmark, "create+destroy with a finaliser", "weakref.finalize(bytearray holder)")

    def make():
        holder = _Holder(64)
        weakref.finalize(holder, _noop)
    benchmark(make)
