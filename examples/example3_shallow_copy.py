"""Example 3 of Task::MemManager, in Python: shallow copying defers deallocation.

A second name for a buffer is a second reference, not a copy of the memory.
Dropping the first name does not free the buffer while the second lives.

Run: python examples/example3_shallow_copy.py
"""

from memmanager import Buffer


def print_hex_values(data, bytes_per_line=8):
    """Print data as hexadecimal bytes, bytes_per_line to a line."""
    for i in range(0, len(data), bytes_per_line):
        print(" ".join(f"{byte:02X}" for byte in data[i:i + bytes_per_line]))


def death_stub(name):
    """Make a death stub that says which buffer is dying."""
    def stub(info):
        print(f"Killing {name} (0x{info['identifier']:x})")
    return stub


def main():
    mem = Buffer(20, 1, init_value="A", allocator="CMalloc",
                 death_stub=death_stub("Alpha"))

    mem_cp = mem                                   # a shallow copy: the same buffer
    print(f"{'mem_cp':>10} object is {mem_cp!r}")
    print(f"Buffer {'Alpha':>10} with buffer address 0x{mem.get_buffer():x}")
    print(f"Buffer {'Alpha_copy':>10} with buffer address 0x{mem_cp.get_buffer():x}")

    print("Dropping the name mem (Perl: undef $mem); no death stub runs:")
    mem = None
    print("mem :", mem.get_buffer() if mem is not None else "does not exist anymore")

    print("The shallow copy continues to exist, and so does the buffer:")
    print(f"Buffer {'Alpha_copy':>10} with buffer address 0x{mem_cp.get_buffer():x}")
    print_hex_values(mem_cp.extract_buffer_region(), 10)

    print("Dropping the last name frees it:")
    del mem_cp
    print("Done.")


if __name__ == "__main__":
    main()
