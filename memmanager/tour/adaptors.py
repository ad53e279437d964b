"""The tour's section on adaptors: a Pool over a Limit, what stats() and
report() say of them, and a statistics() scope around a block of code."""


def adaptors(tour):
    tour.header("Allocators built on allocators: Pool, Limit, statistics()")
    tour.say("""
        An adaptor is an allocator whose blocks come from another one. A
        Limit keeps the live bytes of its buffers within a budget; a Pool
        keeps freed blocks and hands them out again. Both are C, and they
        stack: here a Pool draws its chunks from a Limit over PyAlloc.
    """)
    tour.run('''
        memmanager.register_allocator("TourBudget", memmanager.Limit("PyAlloc", 8 << 20))
        tour_pool = memmanager.Pool("TourBudget", maximum_size=4 << 20)
        memmanager.register_allocator("TourPool", tour_pool)
        first = Buffer(256, 1, allocator="TourPool")
        address = first.address
        first.release()
        again = Buffer(256, 1, allocator="TourPool")
        print(again.address == address, tour_pool.held_bytes, tour_pool.used_bytes)
    ''')
    tour.say("""
        The pool handed the freed block out again. A request past the
        pool's maximum_size is a MemoryError, and nothing is taken; report()
        ends with a line per adaptor.
    """)
    tour.run('''
        try:
            Buffer(8 << 20, 1, allocator="TourPool")
        except MemoryError as error:
            print(type(error).__name__, error)
        print(memmanager.report().splitlines()[-1])
    ''')
    tour.say("""
        memmanager.statistics() counts what one block of code allocates, per
        allocator, in this thread or context only.
    """)
    tour.run('''
        with memmanager.statistics() as counted:
            scratch = [Buffer(1000, 1) for _ in range(3)]
            del scratch[0]
        print(counted.allocations, counted.frees, counted.live_bytes, counted.peak_bytes)
        del scratch
        again.release()
        tour_pool.release_free()
        del again, first, tour_pool, counted
    ''')
