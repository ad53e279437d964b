"""Example 1 of Task::MemManager, in Python: allocating buffers and killing them.

Buffers are made by an allocator (PyAlloc, Python's own, by default; CMalloc
is C's malloc).  A death stub runs once, just before a buffer's memory is
freed, whatever frees it.  Perl's Const::Fast buffer becomes a read-only
buffer: writes raise TypeError instead of killing the script.

Run: python examples/example1_allocate_and_kill.py
"""

from memmanager import Buffer


def death_stub(name):
    """Make a death stub that says which buffer is dying."""
    def stub(info):
        print(f"Killing {name} (0x{info['identifier']:x})")
    return stub


def main():
    # The default allocator, PyAlloc; "zero" zero-fills the 40 bytes.
    memdeath = Buffer(40, 1, init_value="zero", death_stub=death_stub("memdeath"))

    # Options as a mapping, like the Perl hash, or as keywords: both work.
    mem = Buffer(20, 1, {"allocator": "CMalloc"}, init_value="A",
                 death_stub=death_stub("mem, the first"))
    print(f"{'mem':>10} object is {mem!r}")

    print("Rebinding mem frees the first buffer at once:")
    mem = Buffer(20, 1, init_value="A", allocator="CMalloc",
                 death_stub=death_stub("mem, the second"))

    print(f"{'memdeath':>10} object is {memdeath!r}")
    print(f"{'mem':>10} object is {mem!r}")

    print("To kill a buffer immediately, drop it (Perl: undef $memdeath):")
    del memdeath

    # Perl's `const my $mem_cp2 => ...` (Const::Fast): a read-only buffer.
    # Consuming a bytes object adopts its (read-only) memory without copying.
    mem_const = Buffer.consume(bytes([0x44] * 20), 20, 1,
                               death_stub=death_stub("mem_const"))
    print(f"{'mem_const':>10} object is {mem_const!r}, readonly={mem_const.readonly}")
    try:
        mem_const[0] = 0x45
    except TypeError as exc:
        print(f"Writing to the read-only buffer raised TypeError: {exc}")
    print(f"It still holds {mem_const.extract_buffer_region(0, 3)!r}...")

    # consume() pins by default (delayed_gc=True): release explicitly.
    print("Releasing the read-only buffer:")
    mem_const.release()

    print("End of main(): mem goes out of scope and dies.")


if __name__ == "__main__":
    main()
