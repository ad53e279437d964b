"""The tour's allocator section (memmanager/tour/allocators.py) runs as
shown, with every built-in allocator, and leaves nothing behind.

It runs in a child interpreter: the section registers a plug-in allocator
(CtypesArena) whose methods live in the tour's namespace, and a
registration lasts as long as the process.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import gc, io
import memmanager
from memmanager.tour import Tour, introduction
from memmanager.tour.{module} import {module}
gc.collect()
before = memmanager.stats()["total"]["live_buffers"]
out = io.StringIO()
tour = Tour(out)
introduction(tour)
{module}(tour)
gc.collect()
print(out.getvalue())
{after}
print("LIVE", memmanager.stats()["total"]["live_buffers"] - before)
"""


def run_section(module, after=""):
    """Runs the tour's introduction and the section of that module in a
    child interpreter (without MEMMANAGER_DEBUG); its CompletedProcess.
    `after` is source run once the section is done, before the count of
    live buffers that ends the output."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("MEMMANAGER_DEBUG", None)
    return subprocess.run([sys.executable, "-c", SCRIPT.format(module=module, after=after)],
                          capture_output=True, text=True, timeout=120, env=env, check=True)


def test_allocator_section_runs_and_cleans_up():
    done = run_section("allocators")
    text = done.stdout
    for name in ("Aligned", "Mmap", "SharedMemory", "CtypesArena"):
        assert name in text
    assert "0 0\n" in text                                  # both addresses aligned
    assert "ValueError: alignment must be a power of two" in text
    assert "True b'hello' True" in text                     # attached, read-only
    assert "b'MMMMMMMM'" in text and "CtypesArena frees 0x" in text
    assert text.rstrip().endswith("LIVE 0")                 # every buffer freed
    assert done.stderr == ""
