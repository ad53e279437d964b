"""The tour's allocator section (memmanager/_tour_allocators.py) runs as
shown, with every built-in allocator, and leaves nothing behind."""

import gc
import io

import memmanager
from memmanager._tour import Tour, introduction
from memmanager._tour_allocators import allocators


def test_allocator_section_runs_and_cleans_up():
    gc.collect()
    before = memmanager.stats()["total"]["live_buffers"]
    out = io.StringIO()
    tour = Tour(out)
    introduction(tour)
    allocators(tour)
    text = out.getvalue()
    for name in ("Aligned", "Mmap", "SharedMemory", "CtypesArena"):
        assert name in text
    assert "0 0\n" in text                                  # both addresses aligned
    assert "ValueError: alignment must be a power of two" in text
    assert "True b'hello' True" in text                     # attached, read-only
    assert "b'MMMMMMMM'" in text and "CtypesArena frees 0x" in text
    tour.namespace.clear()
    gc.collect()
    assert memmanager.stats()["total"]["live_buffers"] == before
