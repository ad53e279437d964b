"""NumPy's own arrays allocated through memmanager (docs/numpy.md).

Every array NumPy allocates (``numpy.empty``, ``zeros``, the result of
``a + b``, a copy) comes from NumPy's memory handler for the current
context.  This module makes one from any registered allocator that is C
underneath -- the built-ins, the adaptors (Pool, Limit, Log), C plug-ins
-- and installs it::

    import memmanager.numpy

    with memmanager.numpy.allocator("Aligned", alignment=4096):
        a = numpy.zeros((4096, 4096))      # from Aligned, 4096-aligned

    memmanager.numpy.set_allocator("Big")  # from now on, in this context

Each array keeps the handler that made it, so it goes back to its own
allocator whatever is chosen later.  The handler lives where NumPy keeps
it, in a context variable: a ``with`` block or ``set_allocator`` covers
the calling thread and the asyncio tasks and copied contexts started
from it; a new thread starts with NumPy's default handler (NumPy's rule),
so a thread pool's workers call ``set_allocator`` in their initializer.

NumPy is imported the first time a function here is called, never
before: ``import memmanager.numpy`` alone does not import it.
"""

from . import _core

__all__ = ["allocator", "set_allocator", "get_allocator", "handler", "allocator_of", "stats"]

_bound = False
_get_handler_name = None


def _bind():
    """Import NumPy and find its handler functions (once)."""
    global _bound, _get_handler_name
    if _bound:
        return
    try:
        import numpy  # noqa: F401  (its absence is the clearest error)
    except ImportError as error:
        raise ImportError("memmanager.numpy needs NumPy: pip install 'memmanager[numpy]'") from error
    _core._numpy_bind()
    try:
        from numpy._core.multiarray import get_handler_name   # NumPy 2
    except ImportError:
        from numpy.core.multiarray import get_handler_name    # NumPy 1.x
    _get_handler_name = get_handler_name
    _bound = True


def handler(name, /, **options):
    """A NumPy memory handler (a ``mem_handler`` capsule, NEP 49) that
    allocates from the allocator registered as ``name`` with ``options``.

    The options are checked now, as ``Buffer(..., allocator=name,
    **options)`` would check them.  Refused with ValueError: an allocator
    that can only adopt memory (Borrowed), one written in Python or built
    on one, GPU device memory, read-only memory, MappedFile in a mode other
    than ``"w+"`` and SharedMemory with ``name=``.  UnknownAllocatorError
    for a name that is not registered.
    """
    _bind()
    return _core._numpy_handler(name, options)


def set_allocator(name, /, **options):
    """From now on, in the calling context, NumPy's arrays come from the
    allocator registered as ``name`` (``None``: NumPy's default handler
    again).  Arrays that exist keep the allocator that made them."""
    _bind()
    _core._numpy_set_handler(None if name is None else _core._numpy_handler(name, options))


def get_allocator():
    """The name of the allocator NumPy's next array comes from in this
    context, or ``None`` when that is not a memmanager allocator."""
    _bind()
    alloc = _core._numpy_handler_allocator(_core._numpy_get_handler())
    return None if alloc is None else alloc.name


def allocator_of(array):
    """The name of the memmanager allocator that holds ``array``'s data, or
    ``None``: NumPy's or another handler's, or an array that does not own
    its data (a view: ask its ``base``)."""
    _bind()
    name = _get_handler_name(array)
    if name is None or not name.startswith("memmanager:"):
        return None
    return name[len("memmanager:"):]


def stats():
    """The NumPy arrays each allocator holds and has held: a dict from
    allocator name (those that have held arrays) and ``"total"`` to dicts
    with ``live_arrays``, ``live_array_bytes``, ``array_allocations`` and
    ``array_allocated_bytes``.  ``memmanager.stats()`` counts the same
    arrays in its five counters, with the buffers.  Imports nothing."""
    return _core._numpy_stats()


class allocator:
    """``with memmanager.numpy.allocator(name, **options):`` -- the arrays
    NumPy makes inside the block, in this context, come from ``name``.

    The handler is made (and the options checked) when the object is
    created, so ``with`` fails before the block if anything is wrong.  The
    object may be entered again, and nested: each exit puts back the
    handler its enter found.
    """

    __slots__ = ("_handler", "_previous", "name")

    def __init__(self, name, /, **options):
        self._handler = handler(name, **options)
        self._previous = []
        self.name = name

    def __enter__(self):
        self._previous.append(_core._numpy_set_handler(self._handler))
        return self

    def __exit__(self, *exc_info):
        if not self._previous:
            raise RuntimeError("memmanager.numpy.allocator exited more often than entered")
        _core._numpy_set_handler(self._previous.pop())
        return False

    def __repr__(self):
        return "memmanager.numpy.allocator(%r)" % (self.name,)
