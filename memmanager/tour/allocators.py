"""The guided tour's allocator section: each built-in allocator once, a
plug-in written in Python, and what report() shows afterwards.

A section is a function taking the Tour (runner.py), which runs
the code it shows; the names it defines are in the tour's namespace, so
it relies on ``memmanager`` and ``Buffer`` imported by the introduction,
and deletes what it made before it ends.
"""


def allocators(tour):
    tour.header("Allocators: where the memory comes from")
    tour.say("""
        Every buffer is made by a named allocator, and freed by the same
        one. memmanager.allocators() lists the registered names. PyAlloc
        (the default) and CMalloc you have met; the others take options,
        passed as extra keywords.
    """)
    tour.run('''
        print(memmanager.allocators())
    ''')
    tour.say("""
        Aligned uses posix_memalign: the address is a multiple of
        alignment= (a power of two, 64 by default), for SIMD code, cache
        lines or pages. Anything that is not a power of two is refused.
    """)
    tour.run('''
        simd = Buffer(1000, 4, allocator="Aligned", alignment=64, init_value=0)
        page = Buffer(10, 1, allocator="Aligned", alignment=4096)
        print(simd.address % 64, page.address % 4096)
        try:
            Buffer(10, 1, allocator="Aligned", alignment=48)
        except ValueError as exc:
            print("ValueError:", exc)
    ''')
    tour.say("""
        Mmap gives each buffer an anonymous mapping of its own, so advice
        to the kernel touches that buffer only: hugepages=True asks for
        transparent huge pages, populate=True faults the pages in now,
        shared=True keeps the memory shared with a child after fork().
        Zero-filling costs nothing: fresh pages are zero.
    """)
    tour.run('''
        big = Buffer(8, 1 << 20, allocator="Mmap", init_value=0, hugepages=True)
        print(big.nbytes, big.address % 4096, big[12345])
    ''')
    tour.say("""
        SharedMemory is POSIX shared memory with a name, so another process
        can map the same bytes with Buffer.attach(name, num_items,
        item_size). Here we attach in this process; the creator's buffer
        removes the name when it dies.
    """)
    tour.run('''
        shared = Buffer(16, 1, allocator="SharedMemory", init_value="S")
        other = Buffer.attach(shared.name, 16, 1, readonly=True)
        shared[0:5] = b"hello"
        print(shared.name.startswith("mm_"), other[0:5], other.readonly)
    ''')
    tour.say("""
        An allocator can also be yours, written in Python: any object with
        malloc(num_items, item_size, init_byte, options), free(address) and
        get_buffer_address(handle). memmanager validates what it returns
        and calls free exactly once. (C allocators register a PyCapsule
        instead; installed packages are found with memmanager.use().)
    """)
    tour.run('''
        class CtypesArena:
            def malloc(self, num_items, item_size, init_byte, options):
                block = ctypes.create_string_buffer(num_items * item_size)
                if init_byte is not None:
                    ctypes.memset(block, init_byte, num_items * item_size)
                return block
            def get_buffer_address(self, handle):
                return ctypes.addressof(handle)
            def free(self, address):
                print(f"CtypesArena frees 0x{address:x}")
        memmanager.register_allocator("CtypesArena", CtypesArena())
        mine = Buffer(4, 2, allocator="CtypesArena", init_value="M")
        print(mine[:], mine)
    ''')
    tour.say("""
        report() shows every live buffer, whatever made it, and the
        counters of each allocator. Then we let them all go.
    """)
    tour.run('''
        print(memmanager.report())
        del simd, page, big, other, shared, mine
    ''')
