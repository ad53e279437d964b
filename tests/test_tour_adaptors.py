"""The tour's adaptor section (memmanager/tour/adaptors.py) runs as shown
and leaves nothing behind: no buffer live, nothing held by its pool.

In a child interpreter: the section registers allocators, and a
registration lasts as long as the process."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import gc, io
import memmanager
from memmanager.tour import Tour, introduction
from memmanager.tour.adaptors import adaptors
gc.collect()
before = memmanager.stats()["total"]["live_buffers"]
out = io.StringIO()
tour = Tour(out)
introduction(tour)
adaptors(tour)
gc.collect()
print(out.getvalue())
print("HELD", memmanager.stats().get("TourBudget", {}).get("upstream_bytes", 0))
print("LIVE", memmanager.stats()["total"]["live_buffers"] - before)
"""


def test_adaptor_section_runs_and_cleans_up():
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("MEMMANAGER_DEBUG", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=120, env=env, check=True)
    text = done.stdout
    assert "True 1048576 256" in text            # the freed block, handed out again
    assert "MemoryError Pool TourPool: 8388608 bytes asked" in text
    assert "TourPool" in text and "held_bytes=" in text
    assert "3 1 2000 3000" in text               # the statistics() scope
    assert "HELD 0" in text and text.rstrip().endswith("LIVE 0")
    assert done.stderr == ""
