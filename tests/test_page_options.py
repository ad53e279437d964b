"""hugepages= on every host allocator and numa_node= on the page-granular
ones (DESIGN section 12, "Options that every host-memory allocator
gains"), with the process-wide switch MEMMANAGER_HUGEPAGES=0, checked
against what the kernel reports for the mapping (/proc/self/smaps and
/proc/self/numa_maps, tests/page_maps.py).  MappedFile's share of both is
in test_mapped_file.py."""

import gc
import os
import tracemalloc

import pytest

from memmanager import Buffer

from conftest import run_python
from page_maps import HAS_NUMA_MAPS, HAS_SMAPS, PAGE, advised, inside, numa_policy, open_fds

HUGE_PAGE = 2 << 20
HEAP = ["PyAlloc", "CMalloc", "Aligned"]
HUGEPAGE_KINDS = HEAP + ["Mmap", "SharedMemory"]
NUMA_KINDS = ["Aligned", "Mmap", "SharedMemory"]
# Past glibc's largest mmap threshold (32 MiB): every heap block of this
# size is a mapping of its own, which no earlier test advised.
OWN_MAPPING = 40 << 20

needs_smaps = pytest.mark.skipif(not HAS_SMAPS, reason="needs Linux /proc/self/smaps")
needs_numa_maps = pytest.mark.skipif(not HAS_NUMA_MAPS,
                                     reason="needs /proc/self/numa_maps (a NUMA kernel)")


# --------------------------------------------------------------------------
# hugepages=


@needs_smaps
@pytest.mark.parametrize("allocator", HUGEPAGE_KINDS)
@pytest.mark.parametrize("init_value", [None, 0, 7])
def test_hugepages_true_advises_whatever_the_size(allocator, init_value):
    """True advises every block, small or zero-filled, where automatic
    advice would not."""
    size = 256 << 10
    with Buffer(size, 1, allocator=allocator, hugepages=True, init_value=init_value) as buf:
        assert advised(inside(buf))
        buf[size - 1] = 1
        if init_value is not None:
            assert buf[0] == init_value


@needs_smaps
@pytest.mark.parametrize("allocator", HUGEPAGE_KINDS)
def test_hugepages_false_never_advises(allocator):
    with Buffer(OWN_MAPPING, 1, allocator=allocator, hugepages=False) as buf:
        assert not advised(inside(buf))


@needs_smaps
@pytest.mark.parametrize("allocator", HUGEPAGE_KINDS)
@pytest.mark.parametrize("hugepages", [None, "absent"])
def test_automatic_advises_large_written_blocks(allocator, hugepages):
    options = {} if hugepages == "absent" else {"hugepages": hugepages}
    with Buffer(OWN_MAPPING, 1, allocator=allocator, **options) as buf:
        assert advised(inside(buf))


@needs_smaps
@pytest.mark.parametrize("allocator", ["PyAlloc", "Aligned", "Mmap"])
def test_automatic_leaves_zero_filled_blocks_alone(allocator):
    with Buffer(OWN_MAPPING, 1, allocator=allocator, init_value=0) as buf:
        if allocator == "PyAlloc" and "vgpreload" in os.environ.get("LD_PRELOAD", ""):
            pytest.skip("under valgrind PyMem's blocks come from valgrind's own arena, "
                        "which keeps the advice an earlier block's pages had")
        assert not advised(inside(buf))


@pytest.mark.parametrize("allocator", HEAP)
@pytest.mark.parametrize("hugepages", [True, None])
@pytest.mark.parametrize("size", [2 << 20, (3 << 20) + 5])
def test_blocks_from_2_mib_start_on_a_huge_page(allocator, hugepages, size):
    """A block hugepages=True may advise from 2 MiB on starts on a huge-page
    boundary, or no 2 MiB of it could be a huge page.  PyAlloc and CMalloc
    lay out by size alone (free() knows nothing else); Aligned aligns the
    blocks it will advise (automatically: from 4 MiB)."""
    with Buffer(size, 1, allocator=allocator, hugepages=hugepages, init_value=3) as buf:
        if allocator != "Aligned" or hugepages:
            assert buf.address % HUGE_PAGE == 0
        assert buf[0] == buf[size - 1] == 3


def test_pyalloc_layout_around_2_mib_goes_back_to_pymem():
    """PyAlloc lays blocks out by size alone, which free() is given: every
    size around the 2 MiB boundary, with and without huge pages, gives
    PyMem back what it handed out."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for hugepages in (True, False, None):
            for init_value in (None, 0, 9):
                buffers = [Buffer(size, 1, hugepages=hugepages, init_value=init_value)
                           for size in ((2 << 20) - 1, 2 << 20, (2 << 20) + 1)]
                for buf in buffers:
                    buf.release()
        assert tracemalloc.get_traced_memory()[0] - before < 64 << 10
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("allocator", HUGEPAGE_KINDS)
def test_hugepages_is_a_truth_value(allocator, make_buffer):
    for value in (1, 0, "", [1]):
        assert make_buffer(10, 1, allocator=allocator, hugepages=value).nbytes == 10


@pytest.mark.parametrize("allocator", HUGEPAGE_KINDS)
def test_hugepages_bool_that_raises_allocates_nothing(allocator, registry_unchanged):
    class Bad:
        def __bool__(self):
            raise RuntimeError("no truth")

    with registry_unchanged():
        with pytest.raises(RuntimeError, match="no truth"):
            Buffer(10, 1, allocator=allocator, hugepages=Bad())


@pytest.mark.parametrize("allocator", HUGEPAGE_KINDS)
def test_hugepages_bool_may_allocate(allocator):
    """__bool__ runs while the options are parsed: a buffer it makes and
    frees, and a collection, change nothing for the one being made."""
    class Busy:
        def __bool__(self):
            Buffer(3 << 20, 1, allocator=allocator, hugepages=False).release()
            gc.collect()
            return True

    with Buffer(3 << 20, 1, allocator=allocator, hugepages=Busy(), init_value=4) as buf:
        assert buf[0] == buf[(3 << 20) - 1] == 4
        if HAS_SMAPS:
            assert advised(inside(buf))


@pytest.mark.parametrize("allocator", ["Borrowed", "CudaHost", "CudaDevice", "CudaManaged"])
def test_other_vtable_allocators_refuse_hugepages(allocator, registry_unchanged):
    with registry_unchanged():
        with pytest.raises(TypeError, match="hugepages"):
            Buffer(10, 1, allocator=allocator, hugepages=True)


@pytest.mark.parametrize("allocator", ["PyAlloc", "CMalloc"])
def test_heap_vtables_take_hugepages_only(allocator, registry_unchanged):
    with registry_unchanged():
        with pytest.raises(TypeError, match="'alignment'"):
            Buffer(10, 1, allocator=allocator, hugepages=True, alignment=64)


# --------------------------------------------------------------------------
# MEMMANAGER_HUGEPAGES: the process-wide switch (read at import)

SWITCH_CHILD = """
    import json
    import memmanager
    from memmanager import Buffer
    from page_maps import advised, inside
    result = {"switch": memmanager._core.AUTO_HUGEPAGES, "automatic": {}, "explicit": {}}
    for allocator in %r:
        with Buffer(40 << 20, 1, allocator=allocator) as buf:
            result["automatic"][allocator] = advised(inside(buf))
        with Buffer(256 << 10, 1, allocator=allocator, hugepages=True) as buf:
            result["explicit"][allocator] = advised(inside(buf))
    print(json.dumps(result))
"""


def run_switch_child(value):
    import json
    import os
    tests = os.path.dirname(__file__)
    env = {} if value is None else {"MEMMANAGER_HUGEPAGES": value}
    code = SWITCH_CHILD.replace("import json", "import sys; sys.path.insert(0, %r); import json" % tests)
    done = run_python(code % HUGEPAGE_KINDS, env_extra=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@needs_smaps
def test_switch_off_turns_automatic_advice_off_everywhere():
    """MEMMANAGER_HUGEPAGES=0: no automatic advice for any allocator, while
    an explicit hugepages=True still advises (the code's choice wins)."""
    result = run_switch_child("0")
    assert result["switch"] == 0
    assert result["automatic"] == {a: False for a in HUGEPAGE_KINDS}
    assert result["explicit"] == {a: True for a in HUGEPAGE_KINDS}


@needs_smaps
@pytest.mark.parametrize("value", [None, "1", ""])
def test_switch_on_by_default(value):
    result = run_switch_child(value)
    assert result["switch"] == 1
    assert result["automatic"] == {a: True for a in HUGEPAGE_KINDS}


# --------------------------------------------------------------------------
# numa_node=

@needs_numa_maps
@pytest.mark.parametrize("allocator", NUMA_KINDS)
@pytest.mark.parametrize("init_value", [None, 0, 5])
def test_numa_node_0_binds_the_mapping(allocator, init_value):
    size = (64 << 10) + 3
    with Buffer(size, 1, allocator=allocator, numa_node=0, init_value=init_value) as buf:
        assert buf.address % PAGE == 0      # Aligned too: a mapping of its own
        assert numa_policy(buf.address) == "prefer:0"
        buf[size - 1] = 1
        if init_value is not None:
            assert buf[0] == init_value


@needs_numa_maps
@pytest.mark.parametrize("allocator", NUMA_KINDS)
def test_without_numa_node_no_policy(allocator):
    with Buffer(1 << 20, 1, allocator=allocator, init_value=0) as buf:
        assert numa_policy(buf.address) == "default"


@needs_numa_maps
def test_numa_node_with_the_other_options():
    with Buffer(100, 1, allocator="Aligned", numa_node=0, alignment=1 << 16) as buf:
        assert buf.address % (1 << 16) == 0
        assert numa_policy(buf.address) == "prefer:0"
    with Buffer(8 << 20, 1, allocator="Mmap", numa_node=0, populate=True,
                hugepages=True, shared=True) as buf:
        assert numa_policy(buf.address) == "prefer:0"
        if HAS_SMAPS:
            assert advised(buf.address)
    with Buffer(1 << 20, 1, allocator="SharedMemory", numa_node=0, init_value=1) as buf:
        other = Buffer.attach(buf.name)
        assert other[(1 << 20) - 1] == 1
        other.release()


def test_numa_node_none_is_no_binding(make_buffer):
    for allocator in NUMA_KINDS:
        assert make_buffer(10, 1, allocator=allocator, numa_node=None).nbytes == 10


def nodes_online():
    """The node list sysfs gives ("0", "0-3"), and the set of them."""
    try:
        with open("/sys/devices/system/node/online") as online:
            text = online.read().strip()
    except OSError:
        return "0", {0}
    nodes = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        nodes.update(range(int(first), int(last or first) + 1))
    return text, nodes


ONLINE_TEXT, ONLINE = nodes_online()
ABSENT = [n for n in (1, 2, 1023) if n not in ONLINE] + [1024, 10 ** 6, 10 ** 30]


@pytest.mark.parametrize("allocator", NUMA_KINDS)
@pytest.mark.parametrize("node", ABSENT)
def test_numa_node_that_is_not_there(allocator, node, registry_unchanged):
    """Named, with the nodes there are (here, where every node has memory
    and no cpuset narrows them, sysfs's list)."""
    fds = open_fds()
    with registry_unchanged():
        with pytest.raises(ValueError, match=r"numa_node=%d: no such NUMA node" % node) as info:
            Buffer(10, 1, allocator=allocator, numa_node=node)
    assert open_fds() == fds
    if ONLINE == {0}:
        assert str(info.value).endswith("node(s) 0)")


@pytest.mark.parametrize("allocator", NUMA_KINDS)
@pytest.mark.parametrize("node, error, message", [
    (-1, ValueError, ">= 0"), (-(10 ** 30), ValueError, ">= 0"),
    ("0", TypeError, "str"), (True, TypeError, "bool"), (False, TypeError, "bool"),
    (0.0, TypeError, "float"), ([0], TypeError, "list"),
])
def test_numa_node_bad_values(allocator, node, error, message, registry_unchanged):
    with registry_unchanged():
        with pytest.raises(error, match=message):
            Buffer(10, 1, allocator=allocator, numa_node=node)


@pytest.mark.parametrize("allocator", ["PyAlloc", "CMalloc", "Borrowed", "CudaHost"])
def test_other_allocators_refuse_numa_node(allocator, registry_unchanged):
    with registry_unchanged():
        with pytest.raises(TypeError, match="takes no option 'numa_node'"):
            Buffer(10, 1, allocator=allocator, numa_node=0)


def test_shared_memory_refused_numa_node_leaves_no_name(registry_unchanged):
    """The node is checked before the object is created: no name is made."""
    from conftest import shm_names_of_this_session
    before = shm_names_of_this_session()
    with registry_unchanged():
        with pytest.raises(ValueError):
            Buffer(10, 1, allocator="SharedMemory", numa_node=7, name="mm_numa_refused")
    gc.collect()
    assert shm_names_of_this_session() == before


# --------------------------------------------------------------------------
# MEMMANAGER_DEBUG=1: guard bytes with the new options

DEBUG_CHILD = """
    import warnings
    import memmanager
    from memmanager import Buffer
    assert memmanager._core.DEBUG == 1
    cases = [
        ("CMalloc", {"hugepages": True}), ("CMalloc", {"hugepages": False}),
        ("PyAlloc", {"hugepages": True}),
        ("Aligned", {"hugepages": True, "numa_node": 0}),
        ("Aligned", {"numa_node": 0, "alignment": 4096}),
        ("Aligned", {"hugepages": False}),
        ("Mmap", {"numa_node": 0, "hugepages": True, "populate": True}),
        ("SharedMemory", {"numa_node": 0, "hugepages": True}),
    ]
    for allocator, options in cases:
        for size in (1, 4097, (2 << 20) + 3):
            for init_value in (None, 0, 0xAB):
                buf = Buffer(size, 1, allocator=allocator, init_value=init_value, **options)
                if init_value is not None:
                    assert buf[0] == buf[size - 1] == init_value, (allocator, options)
                buf[0] = buf[size - 1] = 1
                buf.release()
    # an overrun is still caught on a bound, advised block
    buf = Buffer(64, 1, allocator="Aligned", numa_node=0, hugepages=True)
    import ctypes
    ctypes.memset(buf.address + 64, 0, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        buf.release()
    assert ["overrun" in str(w.message) for w in caught] == [True]
    print("ok")
"""


def test_debug_guards_with_the_new_options():
    done = run_python(DEBUG_CHILD, env_extra={"MEMMANAGER_DEBUG": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    # the one report is the overrun made on purpose
    assert done.stderr.count("memmanager:") == 1, done.stderr
