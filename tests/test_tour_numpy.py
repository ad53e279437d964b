"""The tour's section on NumPy's own arrays (memmanager/tour/numpy_arrays.py)
runs as shown and leaves no array of its handler alive."""

from test_tour_allocators import run_section


def test_numpy_section_runs_and_cleans_up():
    done = run_section("numpy_arrays", after=(
        'print("BLOCKS", memmanager._core._numpy_live_blocks())'))
    text = done.stdout
    assert "0 0\n" in text                        # both arrays page-aligned
    assert "Aligned None\n" in text               # NumPy's result too; not after the block
    assert "    2\n" in text and "    0\n" in text  # live arrays, then none
    assert "BLOCKS 0" in text and text.rstrip().endswith("LIVE 0")
    assert done.stderr == ""
