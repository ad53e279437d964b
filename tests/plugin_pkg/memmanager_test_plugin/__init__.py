"""A test-only memmanager plug-in package (see pyproject.toml).

Importing it is recorded in IMPORTED, so the tests can tell that
memmanager.use() loads a plug-in only when it is named.
"""

import ctypes

IMPORTED = True
calls = {"device": 0, "view": 0, "factory": 0, "free": []}


class Arena:
    """A Python allocator plug-in over ctypes arrays."""

    def __init__(self, label):
        self.label = label

    def malloc(self, num_items, item_size, init_byte, options):
        block = (ctypes.c_char * (num_items * item_size))()
        if init_byte is not None:
            ctypes.memset(block, init_byte, num_items * item_size)
        return block

    def get_buffer_address(self, handle):
        return ctypes.addressof(handle)

    def free(self, address):
        calls["free"].append((self.label, address))


arena = Arena("arena")


def make_allocator():
    calls["factory"] += 1
    return Arena("factory")


class broken:  # noqa: N801  (an entry point that is not an allocator)
    malloc = None


def register_device():
    calls["device"] += 1


def register_view():
    calls["view"] += 1
