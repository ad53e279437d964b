"""Example 2 of Task::MemManager, in Python: extracting and inspecting a region.

extract_buffer_region(start, end) is the Perl method: a copy, with `end`
inclusive, and None (not an exception) outside the buffer.  region(start,
stop) is the zero-copy alternative, a memoryview with Python's half-open
bounds.

Run: python examples/example2_extract_region.py
"""

from memmanager import Buffer


def print_hex_values(data, bytes_per_line=8):
    """Print data as hexadecimal bytes, bytes_per_line to a line."""
    for i in range(0, len(data), bytes_per_line):
        print(" ".join(f"{byte:02X}" for byte in data[i:i + bytes_per_line]))


def main():
    mem = Buffer(20, 1, init_value="A", allocator="CMalloc")
    print(f"{'mem':>10} object is {mem!r}")

    region = mem.extract_buffer_region(5, 10)      # bytes 5..10: six bytes
    print(f"extract_buffer_region(5, 10) -> {region!r} ({len(region)} bytes)")
    print_hex_values(region, 8)

    print(f"extract_buffer_region(5, 20) -> {mem.extract_buffer_region(5, 20)!r}"
          " (end is past the buffer)")
    print(f"extract_buffer_region(10, 5) -> {mem.extract_buffer_region(10, 5)!r}"
          " (start > end)")

    # Zero-copy: write through a memoryview of bytes 5..10.
    view = mem.region(5, 11)
    view[:] = b"hello!"
    print(f"While the view lives the buffer is {mem!r}")
    view.release()
    print("After writing b'hello!' through region(5, 11), the whole buffer is:")
    print_hex_values(mem.extract_buffer_region(), 10)
    print(f"Slicing copies too: mem[5:11] -> {mem[5:11]!r}")


if __name__ == "__main__":
    main()
