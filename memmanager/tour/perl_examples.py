"""The tour's first sections: the introduction and Examples 1 to 6 of the
Perl module Task::MemManager, in Python.

A section is a function taking the Tour (runner.py), which runs the code
it shows; the names it defines stay in the tour's namespace for the next
section, as the Perl documentation's examples run in one script.
"""

import importlib.util

def introduction(tour):
    tour.header("memmanager: a guided tour")
    tour.say("""
        memmanager manages raw memory for low-level Python code: buffers
        made by pluggable allocators, memory adopted from C, zero-copy
        regions, delayed garbage collection and death stubs. It re-creates
        the Perl module Task::MemManager, and this tour walks through the
        six examples of its documentation, in Python.

        Each step shows the code at a >>> prompt, then what it printed. You
        can type the same code into a Python prompt. First the imports, and
        a small factory of death stubs: a death stub is a function that
        memmanager calls once, just before it frees a buffer's memory, with
        a dict describing the buffer.
    """)
    tour.run('''
        import ctypes
        import memmanager
        from memmanager import Buffer
        def death_stub(name):
            def stub(info):
                print(f"Killing {name} (0x{info['identifier']:x})")
            return stub
    ''')


def example1(tour):
    tour.header("Example 1: Allocating buffers and killing them")
    tour.say("""
        Buffer(num_items, item_size) allocates num_items * item_size bytes.
        The default allocator is PyAlloc (Python's own allocator; Perl's
        PerlAlloc); CMalloc uses C's malloc and free. Options can be given
        as a mapping, like the Perl hash, or as keywords. init_value="zero"
        zero-fills; a one-character string such as "A" fills every byte
        with that character.
    """)
    tour.run('''
        memdeath = Buffer(40, 1, init_value="zero", death_stub=death_stub("memdeath"))
        mem = Buffer(20, 1, {"allocator": "CMalloc"}, init_value="A",
                     death_stub=death_stub("mem, the first"))
        print(f"{'mem':>10} object is {mem!r}")
    ''')
    tour.say("""
        Binding the name mem to a new buffer drops the last reference to
        the old one: its death stub runs and its memory is freed at once.
        (Python builds the new buffer before it rebinds the name, so for a
        moment both exist.)
    """)
    tour.run('''
        mem = Buffer(20, 1, init_value="A", allocator="CMalloc",
                     death_stub=death_stub("mem, the second"))
        print(f"{'memdeath':>10} object is {memdeath!r}")
        print(f"{'mem':>10} object is {mem!r}")
    ''')
    tour.say("""
        To kill a buffer immediately, drop it (Perl: undef $memdeath), or
        call memdeath.release(), which frees the memory even while other
        names still refer to the buffer.
    """)
    tour.run('''
        del memdeath
    ''')
    tour.say("""
        Perl makes a buffer constant with Const::Fast, and modifying it
        kills the script at run time. memmanager has read-only buffers
        instead: consuming a bytes object adopts its memory without copying
        it, and bytes are read-only, so writes raise TypeError (which we
        catch). As in Perl, C code given the address could still write.
    """)
    tour.run('''
        mem_const = Buffer.consume(bytes([0x44] * 20), 20, 1,
                                   death_stub=death_stub("mem_const"))
        print(mem_const.readonly, mem_const)
        try:
            mem_const[0] = 0x45
        except TypeError as exc:
            print("TypeError:", exc)
    ''')
    tour.say("""
        consume() pins what it adopts by default (delayed_gc=True, as in
        Perl: see Example 5), so dropping the name would not free it. We
        release it explicitly.
    """)
    tour.run('''
        mem_const.release()
        print(mem_const)
    ''')


def example2(tour):
    tour.header("Example 2: Extracting and inspecting a region from the buffer")
    tour.say("""
        First a function that prints bytes in hexadecimal, a given number
        to a line.
    """)
    tour.run('''
        def print_hex_values(data, bytes_per_line=8):
            for i in range(0, len(data), bytes_per_line):
                print(" ".join(f"{byte:02X}" for byte in data[i:i + bytes_per_line]))
    ''')
    tour.say("""
        extract_buffer_region(start, end) is the Perl method: it returns a
        copy of the bytes from start to end, both included, so (5, 10) is
        six bytes. "A" is 0x41.
    """)
    tour.run('''
        region = mem.extract_buffer_region(5, 10)
        print(region, len(region))
        print_hex_values(region, 8)
    ''')
    tour.say("""
        Outside the buffer it returns None rather than raising, as in Perl.
    """)
    tour.run('''
        print(mem.extract_buffer_region(5, 20))
    ''')
    tour.say("""
        region(start, stop) is the zero-copy alternative: a memoryview of
        the buffer's own bytes, half-open like any Python slice. Writing
        through it writes the buffer. While the view lives it holds an
        export: the memory cannot be freed until the view is released.
    """)
    tour.run('''
        view = mem.region(5, 11)
        view[:] = b"hello!"
        print(mem.exports, mem)
        view.release()
        print_hex_values(mem.extract_buffer_region(), 10)
    ''')
    if importlib.util.find_spec("numpy") is not None:
        tour.say("""
            NumPy sees the same bytes through the buffer protocol, without
            copying.
        """)
        tour.run('''
            import numpy
            array = numpy.asarray(mem)
            print(array.dtype, array.shape, bytes(array[5:11]))
            del array
        ''')


def example3(tour):
    tour.header("Example 3: Shallow copying defers buffer deallocation")
    tour.say("""
        Assigning a buffer to a second name copies the reference, not the
        memory: both names are the same buffer, at the same address.
    """)
    tour.run('''
        mem_cp = mem
        print(f"{'mem_cp':>10} object is {mem_cp!r}")
        print(f"Buffer {'Alpha':>10} with buffer address 0x{mem.get_buffer():x}")
        print(f"Buffer {'Alpha_copy':>10} with buffer address 0x{mem_cp.get_buffer():x}")
    ''')
    tour.say("""
        Dropping the original name (Perl: undef $mem) does not free the
        buffer, because mem_cp still refers to it: no death stub runs.
    """)
    tour.run('''
        mem = None
        print("mem :", mem.get_buffer() if mem is not None else "does not exist anymore")
        print(f"Buffer {'Alpha_copy':>10} with buffer address 0x{mem_cp.get_buffer():x}")
        print_hex_values(mem_cp.extract_buffer_region(), 10)
    ''')


def example4(tour):
    tour.header("Example 4: Object modification and object destruction")
    tour.say("""
        Binding mem_cp, the last name of the buffer, to a new buffer frees
        the old one at once: its death stub runs during the assignment. The
        new buffer is filled with "D" (0x44).
    """)
    tour.run('''
        mem_cp = Buffer(20, 1, init_value="D", allocator="CMalloc",
                        death_stub=death_stub("mem_cp, the CMalloc one"))
        print(f"{'mem_cp':>10} object is {mem_cp!r}")
        print(f"Buffer {'Alpha_copy after modification':>10} with buffer address 0x{mem_cp.get_buffer():x}")
        print_hex_values(mem_cp.extract_buffer_region(), 10)
    ''')


def example5(tour):
    tour.header("Example 5: Fine control over garbage collection")
    tour.say("""
        A buffer made with delayed_gc=True is pinned: memmanager itself
        holds a reference, so dropping every name you have does not free
        it. That is what you want when C code keeps the pointer, or when a
        name is rebound in a loop but the old memory must live on. We make
        two buffers, one without and one with delayed GC. (Rebinding mem_cp
        frees the buffer of Example 4.)
    """)
    tour.run('''
        mem_cp = Buffer(20, 1, init_value="D", allocator="PyAlloc",
                        death_stub=death_stub("mem_cp, the PyAlloc one"))
        mem_cp2 = Buffer(20, 1, init_value="D", delayed_gc=True, allocator="CMalloc",
                         death_stub=death_stub("mem_cp2, with delayed GC"))
        delayed_gc_objects = memmanager.get_delayed_gc_objects()
        print("Objects with delayed GC :", " ".join(f"0x{i:x}" for i in delayed_gc_objects))
        print(mem_cp2)
    ''')
    tour.say("""
        Dropping an object with delayed GC does not kill it: no death stub
        runs.
    """)
    tour.run('''
        pinned_id = mem_cp2.identifier
        del mem_cp2
        print("Still pinned:", memmanager.get_delayed_gc_objects())
    ''')
    tour.say("""
        Perl frees such buffers only when the program ends, and memmanager
        does too: whatever is still pinned at exit is released, and its
        death stub runs. memmanager also has the trigger the Perl TODO list
        asked for: collect_delayed() unpins buffers (the ones you name, or
        all); a buffer nobody else refers to then dies at once.
    """)
    tour.run('''
        unpinned = memmanager.collect_delayed([pinned_id])
        print("Unpinned:", unpinned)
        print("Still pinned:", memmanager.get_delayed_gc_objects())
    ''')


def example6(tour):
    tour.header("Example 6: Consuming buffers and preventing double free")
    tour.say("""
        Buffer.consume() turns memory that exists already into a Buffer.
        The Perl example consumes a block from C's malloc, then two Perl
        strings, then tries to consume one string's memory a second time.
        Two of its steps are unsafe (it reads 1000 bytes of a 100-byte
        string, and hands Perl's memory to CMalloc, which would free it);
        here memmanager refuses both.

        First, a block from C's malloc. Consuming it with CMalloc takes
        ownership: memmanager realloc()s it to the size asked for (so the
        address may change) and will free() it exactly once. The holder,
        a ctypes.c_void_p, is set to 0 (None), so the block cannot be freed
        a second time by mistake.
    """)
    tour.run('''
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        pointer = ctypes.c_void_p(libc.malloc(1024))
        print(f"Memory address is 0x{pointer.value:x}")
        mem_pointer = Buffer.consume(pointer, 100, 1, allocator="CMalloc",
                                     death_stub=death_stub("the reconsumable"))
        print("Memory address is", pointer.value)
        print(mem_pointer)
    ''')
    tour.say("""
        Next, Python objects. Consuming a bytearray with PyAlloc adopts its
        memory without copying: the buffer and the bytearray are the same
        bytes. The buffer holds an export of the bytearray, which keeps it
        alive and stops it from resizing.
    """)
    tour.run('''
        consumable = bytearray(100)
        mem_consumable = Buffer.consume(consumable, 100, 1, allocator="PyAlloc",
                                        death_stub=death_stub("the consumable"))
        mem_consumable[0:5] = b"hello"
        print(consumable[:8])
        try:
            consumable.append(0)
        except BufferError as exc:
            print("BufferError:", exc)
    ''')
    tour.say("""
        The Perl example asks for 1000 bytes of a 100-byte string. memmanager
        refuses with ValueError (pass copy=True to copy into a fresh, larger
        block instead). Consuming the 100 bytes it has works; the buffer
        keeps the bytearray alive even after its name is gone.
    """)
    tour.run('''
        consumable2 = bytearray(100)
        try:
            Buffer.consume(consumable2, 1000, 1, allocator="PyAlloc")
        except ValueError as exc:
            print("ValueError:", exc)
        mem_consumable2 = Buffer.consume(consumable2, 100, 1, allocator="PyAlloc",
                                         death_stub=death_stub("the consumable2"))
        del consumable2
        print(mem_consumable2)
    ''')
    tour.say("""
        Now try to consume the first bytearray's memory a second time, by
        its address, as the Perl example does, taking ownership of it
        (CMalloc). Two owners of the same memory are how double frees
        happen, so memmanager checks its registry of live regions first
        and raises OverlapError, before anything is changed, and the first
        buffer is unharmed. (Wrapping it without ownership, allocator=
        "Borrowed", is allowed: buffers that free nothing may overlap.)
    """)
    tour.run('''
        try:
            Buffer.consume(mem_consumable.address, 100, 1, allocator="CMalloc",
                           death_stub=death_stub("the overlap"))
        except memmanager.OverlapError as exc:
            print("OverlapError:", exc)
        print(mem_consumable[0:5], mem_consumable)
    ''')
    tour.say("""
        For a second, independent buffer with the same bytes, ask for a
        copy.
    """)
    tour.run('''
        snapshot = Buffer.consume(consumable, 100, 1, copy=True, delayed_gc=False)
        print(snapshot[0:5], snapshot.address != mem_consumable.address)
    ''')
    tour.say("""
        All three consumed buffers are pinned (delayed_gc defaults to True
        for consume). Perl would free them at exit; we drop our names and
        collect them now. Each death stub runs once, and the bytearray can
        grow again.
    """)
    tour.run('''
        print("Pinned:", memmanager.get_delayed_gc_objects())
        del mem_pointer, mem_consumable, mem_consumable2
        memmanager.collect_delayed()
        consumable.append(0)
        print(len(consumable))
    ''')
