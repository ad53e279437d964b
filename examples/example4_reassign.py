"""Example 4 of Task::MemManager, in Python: object modification and destruction.

Binding the last name of a buffer to a new buffer frees the old one at once:
its death stub runs during the assignment.  (Python builds the new buffer
before it rebinds the name, so for a moment both exist.)

Run: python examples/example4_reassign.py
"""

from memmanager import Buffer


def print_hex_values(data, bytes_per_line=8):
    """Print data as hexadecimal bytes, bytes_per_line to a line."""
    for i in range(0, len(data), bytes_per_line):
        print(" ".join(f"{byte:02X}" for byte in data[i:i + bytes_per_line]))


def death_stub(name):
    """Make a death stub that says which buffer is dying."""
    def stub(info):
        print(f"Killing {name} (0x{info['identifier']:x}, "
              f"{info['buffer_size']} bytes at 0x{info['buffer_address']:x})")
    return stub


def main():
    mem_cp = Buffer(20, 1, init_value="A", allocator="CMalloc",
                    death_stub=death_stub("the 'A' buffer"))
    print(f"{'mem_cp':>10} object is {mem_cp!r}")
    print_hex_values(mem_cp.extract_buffer_region(), 10)

    print("Rebinding mem_cp to a new buffer:")
    mem_cp = Buffer(20, 1, init_value="D", allocator="CMalloc",
                    death_stub=death_stub("the 'D' buffer"))
    print(f"{'mem_cp':>10} object is {mem_cp!r}")
    print(f"Buffer {'Alpha_copy after modification':>10} with buffer address "
          f"0x{mem_cp.get_buffer():x}")
    print_hex_values(mem_cp.extract_buffer_region(), 10)

    print("release() frees it now, whoever else refers to it:")
    mem_cp.release()
    print(f"{'mem_cp':>10} object is {mem_cp!r}")


if __name__ == "__main__":
    main()
