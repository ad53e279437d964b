"""Example 6 of Task::MemManager, in Python: consuming buffers, preventing double free.

Buffer.consume() turns memory that exists already into a Buffer:

- a block from C's malloc, with CMalloc: memmanager takes ownership,
  realloc()s it to the size asked for and free()s it exactly once; the
  ctypes holder is zeroed so it cannot be freed twice;
- a Python object (bytearray, bytes, ...), with PyAlloc: zero-copy, the
  buffer holds an export of the object;
- memory that is already managed: refused with OverlapError before anything
  changes, whatever the allocator (Borrowed included).

The Perl original reads 1000 bytes of a 100-byte string and hands Perl's
memory to CMalloc; both are refused here.

Run: python examples/example6_consume.py
"""

import ctypes

import memmanager
from memmanager import Buffer


def death_stub(name):
    """Make a death stub that says which buffer is dying."""
    def stub(info):
        print(f"Killing {name} (0x{info['identifier']:x})")
    return stub


def main():
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]

    # 1. A block from C's malloc, adopted by CMalloc.
    pointer = ctypes.c_void_p(libc.malloc(1024))
    if not pointer.value:
        raise MemoryError("malloc(1024) failed")
    print(f"Memory address is 0x{pointer.value:x}")
    mem_pointer = Buffer.consume(pointer, 100, 1, allocator="CMalloc",
                                 death_stub=death_stub("the reconsumable"))
    print(f"Memory address is {pointer.value} (the holder was zeroed)")
    print(f"{'consumed':>10} object is {mem_pointer!r}")

    # 2. A bytearray, adopted zero-copy by PyAlloc.
    consumable = bytearray(100)
    mem_consumable = Buffer.consume(consumable, 100, 1, allocator="PyAlloc",
                                    death_stub=death_stub("the consumable"))
    mem_consumable[0:5] = b"hello"
    print(f"Written through the buffer, seen in the bytearray: {bytes(consumable[:5])!r}")
    try:
        consumable.append(0)
    except BufferError as exc:
        print(f"The adopted bytearray cannot resize: BufferError: {exc}")

    # 3. Perl consumes 1000 bytes of a 100-byte string: refused here.
    consumable2 = bytearray(100)
    try:
        Buffer.consume(consumable2, 1000, 1, allocator="PyAlloc")
    except ValueError as exc:
        print(f"Consuming 1000 bytes of 100: ValueError: {exc}")
    mem_consumable2 = Buffer.consume(consumable2, 100, 1, allocator="PyAlloc",
                                     death_stub=death_stub("the consumable2"))
    del consumable2     # the buffer keeps the bytearray alive
    print(f"{'consumed':>10} object is {mem_consumable2!r}")

    # 4. The same memory a second time, taking ownership of it (CMalloc):
    # OverlapError, nothing changes.  (Borrowed, which frees nothing, may
    # wrap it: non-owning buffers may overlap.)
    try:
        Buffer.consume(mem_consumable.address, 100, 1, allocator="CMalloc",
                       death_stub=death_stub("the overlap"))
    except memmanager.OverlapError as exc:
        print(f"Consuming the same memory again: OverlapError: {exc}")
    print(f"The first buffer is unharmed: {mem_consumable[0:5]!r}, {mem_consumable!r}")

    # An independent second buffer with the same bytes: a copy.
    snapshot = Buffer.consume(consumable, 100, 1, copy=True, delayed_gc=False)
    print(f"A copy instead: {snapshot[0:5]!r} at a different address: "
          f"{snapshot.address != mem_consumable.address}")

    # consume() pins by default (delayed_gc=True): collect them now.
    print("Pinned:", [hex(i) for i in memmanager.get_delayed_gc_objects()])
    del mem_pointer, mem_consumable, mem_consumable2
    print("collect_delayed() frees the three consumed buffers:")
    memmanager.collect_delayed()
    consumable.append(0)
    print(f"The bytearray can grow again: {len(consumable)} bytes")
    snapshot.release()
    print("Pinned:", memmanager.get_delayed_gc_objects(),
          "- live buffers:", memmanager.stats()["total"]["live_buffers"])


if __name__ == "__main__":
    main()
