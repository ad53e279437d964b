"""The tour's views section: the example of Task::MemManager::View::PDL,
with NumPy (skipped, saying so, when NumPy is not installed)."""

import importlib.util


def views(tour):
    tour.header("Views: the View::PDL example, in NumPy")
    if importlib.util.find_spec("numpy") is None:
        tour.say("""
            Perl's Task::MemManager::View::PDL looks at a buffer through PDL
            piddles; memmanager does it with NumPy, which is not installed
            here. A memoryview view works without it.
        """)
        tour.run('''
            pdl_buffer = Buffer(10, 1, init_value=40)
            words = pdl_buffer.create_view("memoryview", format="H")
            print(words.tolist())
            del words
            pdl_buffer.release()
        ''')
        return
    tour.say("""
        Perl's Task::MemManager::View::PDL looks at a buffer through PDL
        piddles; memmanager does it with NumPy. create_view() makes a
        zero-copy view and stores it on the buffer under a name (here
        "bytes"; by default "numpy_default"). Writing through the view
        writes the buffer: a partial assignment, then an in-place division.
    """)
    tour.run('''
        pdl_buffer = Buffer(10, 1, init_value=40)
        byte_view = pdl_buffer.create_view("numpy", view_name="bytes")
        print(byte_view)
        byte_view[5:] = 60
        byte_view //= 10
        print(byte_view, pdl_buffer.extract_buffer_region().hex(" "))
    ''')
    tour.say("""
        clone_view() copies a stored view: changing the clone leaves the
        buffer alone. A second view reads the same ten bytes as five
        little-endian 16-bit integers: 0x0404 is 1028, 0x0604 is 1540 and
        0x0606 is 1542.
    """)
    tour.run('''
        clone = pdl_buffer.clone_view("bytes")
        clone += 1
        print(clone, pdl_buffer.get_view("bytes"))
        int16_view = pdl_buffer.create_view("numpy", dtype="<i2", view_name="int16")
        print(int16_view)
    ''')
    tour.say("""
        A view holds an export, like any memoryview: while one is referenced
        outside the buffer, release() refuses. release() first forgets the
        views stored on the buffer, so dropping our own names is enough.
    """)
    tour.run('''
        try:
            pdl_buffer.release()
        except BufferError as exc:
            print("BufferError:", exc)
        del byte_view, int16_view
        pdl_buffer.release()
        print(pdl_buffer)
    ''')
    tour.say("""
        Buffers also travel: through DLPack without copying
        (numpy.from_dlpack, torch.from_dlpack), and through pickle, which
        with protocol 5 can send the bytes out-of-band. Their address goes
        to C through ctypes or cffi. docs/views.md has the recipes.
    """)
    tour.run('''
        import pickle
        shared = Buffer(4, 1, init_value=7)
        array = numpy.from_dlpack(shared)
        array[0] = 1
        copy = pickle.loads(pickle.dumps(shared))
        print(shared[:], copy[:], copy.allocator)
        del array, shared, copy, clone
    ''')
