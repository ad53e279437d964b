"""The guided tour: ``python -m memmanager demo``.

It walks through Examples 1 to 6 of the Perl module Task::MemManager, in
Python, as a newcomer would type them at the ``>>>`` prompt.  Every step
shows its code and then what that code printed; the code shown is exactly
the code that runs (each step is parsed and executed statement by statement
in one namespace, so the names of one example carry over to the next, as in
the Perl documentation, where "the examples are best run sequentially in a
single Perl script").

The examples use the allocators PyAlloc (the default) and CMalloc, plus
Borrowed in Example 6; after them come the example of
Task::MemManager::View::PDL, with NumPy, a section showing the other
built-in allocators and a plug-in, one on adaptors (a Pool over a
Limit) and statistics(), and one on NumPy's own arrays from a memmanager
allocator.  Everything the tour pins or keeps
alive is released before it ends.

The sections live in this package, one module per part: perl_examples
(the introduction and Examples 1-6), views, allocators, adaptors,
numpy_arrays, statistics; the
runner that shows and runs their code is runner.py.
"""

from .adaptors import adaptors
from .allocators import allocators
from .numpy_arrays import numpy_arrays
from .perl_examples import (example1, example2, example3, example4, example5,
                            example6, introduction)
from .runner import Tour
from .statistics import statistics
from .views import views

__all__ = ["SECTIONS", "Tour", "main"]

SECTIONS = (introduction, example1, example2, example3, example4, example5,
            example6, views, allocators, adaptors, numpy_arrays, statistics)


def main():
    """Run the tour; returns 0 (an unexpected error propagates)."""
    tour = Tour()
    try:
        for section in SECTIONS:
            section(tour)
    finally:
        tour.namespace.clear()
    return 0
