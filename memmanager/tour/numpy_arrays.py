"""The tour's section on NumPy's own arrays: memmanager.numpy.allocator()
makes the arrays NumPy allocates come from a memmanager allocator
(skipped, saying so, when NumPy is not installed)."""

import importlib.util


def numpy_arrays(tour):
    tour.header("NumPy's own arrays from a memmanager allocator")
    if importlib.util.find_spec("numpy") is None:
        tour.say("""
            memmanager.numpy makes the arrays NumPy allocates come from a
            memmanager allocator; NumPy is not installed here
            (pip install 'memmanager[numpy]').
        """)
        return
    tour.say("""
        Buffers are not the only memory memmanager can hand out. Inside a
        memmanager.numpy.allocator() block, every array NumPy allocates for
        itself comes from the allocator you name, the results of
        arithmetic included. Here they come from Aligned, on page
        boundaries.
    """)
    tour.run('''
        import numpy
        import memmanager.numpy
        with memmanager.numpy.allocator("Aligned", alignment=4096):
            grid = numpy.zeros((256, 256))
            doubled = grid + 2.0
        print(grid.ctypes.data % 4096, doubled.ctypes.data % 4096)
        print(memmanager.numpy.allocator_of(doubled), memmanager.numpy.allocator_of(numpy.ones(3)))
    ''')
    tour.say("""
        Each array keeps the allocator that made it, whatever is chosen
        later. memmanager.numpy.stats() counts them per allocator, and
        memmanager.stats() counts them with the buffers.
    """)
    tour.run('''
        print(memmanager.numpy.stats()["Aligned"]["live_arrays"])
        del grid, doubled
        print(memmanager.numpy.stats()["Aligned"]["live_arrays"])
    ''')
