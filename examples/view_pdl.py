"""The example of Perl's Task::MemManager::View::PDL, in Python with NumPy.

A buffer of ten bytes, all 40, is looked at through a NumPy view of its
bytes; writing through the view writes the buffer.  Part of it is
assigned, all of it divided in place, a clone is taken (and changed, which
leaves the buffer alone), and finally the same ten bytes are read as five
little-endian 16-bit integers:

    bytes  04 04 04 04 04 06 06 06 06 06
    int16  0x0404 0x0404 0x0604 0x0606 0x0606 = 1028 1028 1540 1542 1542

Run: python examples/view_pdl.py   (needs NumPy)
"""

from memmanager import Buffer


def print_hex_values(data, bytes_per_line=10):
    """Print data as hexadecimal bytes, bytes_per_line to a line."""
    for i in range(0, len(data), bytes_per_line):
        print(" ".join(f"{byte:02X}" for byte in data[i:i + bytes_per_line]))


def main():
    buffer = Buffer(10, 1, init_value=40)

    # A view of the bytes (dtype uint8), stored on the buffer under a name.
    byte_view = buffer.create_view("numpy", view_name="bytes")
    print("byte view:      ", byte_view)

    byte_view[5:] = 60                     # partial assignment
    print("after [5:] = 60:", byte_view)

    byte_view //= 10                       # in-place arithmetic, in the buffer
    print("after //= 10:   ", byte_view)
    print_hex_values(buffer.extract_buffer_region())

    clone = buffer.clone_view("bytes")     # an independent copy
    clone += 1
    print("clone + 1:      ", clone)
    print("buffer, intact: ", buffer.get_view("bytes"))

    int16_view = buffer.create_view("numpy", dtype="<i2", view_name="int16")
    print("int16 view:     ", int16_view)

    # The views hold the memory: drop them (or release() drops the stored
    # ones itself) before freeing the buffer.
    del byte_view, int16_view
    buffer.release()
    print("released:       ", buffer.released)


if __name__ == "__main__":
    main()
