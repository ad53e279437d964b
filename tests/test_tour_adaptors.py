"""The tour's adaptor section (memmanager/tour/adaptors.py) runs as shown
and leaves nothing behind: no buffer live, nothing held by its pool.

In a child interpreter: the section registers allocators, and a
registration lasts as long as the process."""

from test_tour_allocators import run_section


def test_adaptor_section_runs_and_cleans_up():
    done = run_section("adaptors", after=(
        'print("HELD", memmanager.stats().get("TourBudget", {}).get("upstream_bytes", 0))'))
    text = done.stdout
    assert "True 1048576 256" in text            # the freed block, handed out again
    assert "MemoryError Pool TourPool: 8388608 bytes asked" in text
    assert "TourPool" in text and "held_bytes=" in text
    assert "3 1 2000 3000" in text               # the statistics() scope
    assert "HELD 0" in text and text.rstrip().endswith("LIVE 0")
    assert done.stderr == ""
