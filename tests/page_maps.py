"""What the kernel says about the mapping that holds an address: its
VmFlags (/proc/self/smaps: "hg" once huge pages were advised) and its NUMA
policy (/proc/self/numa_maps: "prefer:0" once bound to node 0), for
test_page_options.py and test_mapped_file.py."""

import mmap
import os

PAGE = mmap.PAGESIZE
HAS_SMAPS = os.path.exists("/proc/self/smaps")
HAS_NUMA_MAPS = os.path.exists("/proc/self/numa_maps")


def mapping_of(address):
    """(start, end) of the mapping holding address, from /proc/self/maps."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            if start <= address < end:
                return start, end
    raise AssertionError(f"no mapping holds {address:#x}")


def vm_flags(address):
    """The VmFlags of the mapping holding address, as a list."""
    start, _ = mapping_of(address)
    current = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                current = int(head.split("-")[0], 16) == start
            elif current and line.startswith("VmFlags:"):
                return line.split(":", 1)[1].split()
    raise AssertionError(f"no VmFlags for {address:#x}")


def advised(address):
    """True when the mapping holding address has MADV_HUGEPAGE."""
    return "hg" in vm_flags(address)


def numa_policy(address):
    """The policy field of the numa_maps line of the mapping holding
    address ("default", "prefer:0", "bind:0", ...)."""
    start, _ = mapping_of(address)
    with open("/proc/self/numa_maps") as numa_maps:
        for line in numa_maps:
            fields = line.split()
            if int(fields[0], 16) == start:
                return fields[1]
    raise AssertionError(f"no numa_maps line for {address:#x}")


def inside(buf):
    """An address in buf's first whole page (heap blocks share their first
    and last pages with neighbours, and only whole pages are advised)."""
    address = (buf.address + PAGE - 1) // PAGE * PAGE
    assert address < buf.address + buf.nbytes
    return address


def open_fds():
    return len(os.listdir("/proc/self/fd"))
