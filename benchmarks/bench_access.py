"""Reading regions from 64 B to 256 MiB: extract_buffer_region, buf[a:b],
region() and numpy.asarray against bytes / memoryview / NumPy on a
bytearray.  Both sides are called through a lambda, so alike."""

import pytest

from memmanager import Buffer

from support import hot, mark

SIZES = {"64B": 64, "64KiB": 64 << 10, "16MiB": 16 << 20, "256MiB": 256 << 20}


def sizes(hot_size):
    return [pytest.param(size, marks=hot(size == hot_size)) for size in SIZES]


@pytest.fixture(scope="module")
def sources():
    """sources(size) -> (a Buffer, a bytearray) of that size, made once."""
    made = {}

    def source(label):
        if label not in made:
            n = SIZES[label]
            made[label] = (Buffer(n, 1, init_value=1), bytearray(b"\x01") * n)
        return made[label]
    yield source
    for buf, _ in made.values():
        buf.release()


@pytest.mark.parametrize("size", sizes("16MiB"))
def test_extract(benchmark, sources, size):
    buf, _ = sources(size)
    mark(benchmark, f"copy out {size}", "memmanager:extract_buffer_region")
    end = SIZES[size] - 1
    benchmark(lambda: buf.extract_buffer_region(0, end))


@pytest.mark.parametrize("size", sizes(None))
def test_slice_copy(benchmark, sources, size):
    buf, _ = sources(size)
    mark(benchmark, f"copy out {size}", "memmanager:buf[a:b]")
    n = SIZES[size]
    benchmark(lambda: buf[0:n])


@pytest.mark.parametrize("size", sizes("16MiB"))
def test_bytes_of_memoryview(benchmark, sources, size):
    _, ba = sources(size)
    mark(benchmark, f"copy out {size}", "bytes(memoryview(ba)[a:b])")
    n = SIZES[size]
    benchmark(lambda: bytes(memoryview(ba)[0:n]))


@pytest.mark.parametrize("size", sizes("64KiB"))
def test_region(benchmark, sources, size):
    buf, _ = sources(size)
    mark(benchmark, f"zero-copy view {size}", "memmanager:region()")
    n = SIZES[size]
    benchmark(lambda: buf.region(0, n))


@pytest.mark.parametrize("size", sizes("64KiB"))
def test_memoryview_slice(benchmark, sources, size):
    _, ba = sources(size)
    n = SIZES[size]
    mark(benchmark, f"zero-copy view {size}", "memoryview(ba)[a:b]")
    benchmark(lambda: memoryview(ba)[0:n])


@pytest.mark.parametrize("size", sizes("64KiB"))
def test_numpy_asarray(benchmark, sources, size):
    numpy = pytest.importorskip("numpy")
    buf, _ = sources(size)
    mark(benchmark, f"numpy view {size}", "memmanager:numpy.asarray(buf)")
    benchmark(numpy.asarray, buf)


@pytest.mark.parametrize("size", sizes("64KiB"))
def test_numpy_frombuffer(benchmark, sources, size):
    numpy = pytest.importorskip("numpy")
    _, ba = sources(size)
    mark(benchmark, f"numpy view {size}", "numpy.frombuffer(ba)")
    benchmark(numpy.frombuffer, ba, "u1")
