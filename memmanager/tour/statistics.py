"""The tour's last section: stats() and report(), then the release of
everything the tour still holds."""


def statistics(tour):
    tour.header("What is live: stats() and report()")
    tour.say("""
        memmanager keeps every live buffer's address range in one registry,
        with counters per allocator. report() shows the live buffers as a
        table; stats() returns the counters as a dict.
    """)
    tour.run('''
        print(memmanager.report())
        for name, c in memmanager.stats().items():
            print(f"{name:>8}: {c['allocations']} allocations ({c['allocated_bytes']} bytes), "
                  f"{c['live_buffers']} live ({c['live_bytes']} bytes), peak {c['peak_bytes']} bytes")
    ''')
    tour.say("""
        The tour ends by releasing what is left.
    """)
    tour.run('''
        mem_cp.release()
        snapshot.release()
        del mem_cp, snapshot, consumable
        print("Live buffers:", memmanager.stats()["total"]["live_buffers"])
        print("Pinned:", memmanager.get_delayed_gc_objects())
    ''')
    tour.say("""
        That is the tour. The same six examples, and the View::PDL one,
        are runnable scripts in examples/; docs/user-guide.md covers everything memmanager can do
        today, and docs/ownership.md who frees what.
    """)
