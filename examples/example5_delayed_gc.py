"""Example 5 of Task::MemManager, in Python: fine control over garbage collection.

A buffer made with delayed_gc=True is pinned: memmanager holds it, so
dropping every name you have does not free it.  collect_delayed() unpins
(the trigger the Perl TODO asked for); whatever is still pinned when the
program ends is released at exit, after your code, and its stub runs.

Run: python examples/example5_delayed_gc.py
"""

import memmanager
from memmanager import Buffer


def death_stub(name):
    """Make a death stub that says which buffer is dying."""
    def stub(info):
        print(f"Killing {name} (0x{info['identifier']:x})")
    return stub


def main():
    mem_cp = Buffer(20, 1, init_value="D", allocator="PyAlloc",
                    death_stub=death_stub("mem_cp, no delayed GC"))
    mem_cp2 = Buffer(20, 1, init_value="D", delayed_gc=True, allocator="CMalloc",
                     death_stub=death_stub("mem_cp2, delayed GC, collected"))
    mem_cp3 = Buffer(20, 1, init_value="D", delayed_gc=True, allocator="CMalloc",
                     death_stub=death_stub("mem_cp3, delayed GC, left for exit"))

    delayed_gc_objects = memmanager.get_delayed_gc_objects()
    print("Objects with delayed GC :",
          " ".join(f"0x{i:x}" for i in delayed_gc_objects))
    print(f"{'mem_cp2':>10} object is {mem_cp2!r}")

    print("Dropping objects with delayed GC does not kill them!")
    mem_cp2_id = mem_cp2.identifier
    del mem_cp2, mem_cp3
    print("Still pinned:", [hex(i) for i in memmanager.get_delayed_gc_objects()])

    print("collect_delayed() unpins mem_cp2; nothing else refers to it, so it dies:")
    unpinned = memmanager.collect_delayed([mem_cp2_id])
    print("Unpinned:", [hex(i) for i in unpinned])

    print("Dropping mem_cp (no delayed GC) kills it at once:")
    del mem_cp

    print("End of the program - see how memmanager destroys the delayed GC "
          "object still pinned, after everything else:")


if __name__ == "__main__":
    main()
