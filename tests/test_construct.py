"""Buffer(num_items, item_size, options=None, /, *, ...): DESIGN section 2
and docs/api-decisions.md (constructor)."""

import collections.abc
import gc
import sys
import types
import weakref

import pytest
from hypothesis import given, strategies as st

import memmanager
from memmanager import Buffer

ALLOCATORS = ["PyAlloc", "CMalloc"]


class ReadOnlyMapping(collections.abc.Mapping):
    """A mapping that is not a dict (and cannot be mutated)."""

    def __init__(self, data):
        self._data = dict(data)

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)


# --------------------------------------------------------------------------
# sizes and argument forms

def test_positional_sizes(make_buffer):
    buf = make_buffer(10, 4)
    assert buf.num_items == 10
    assert buf.itemsize == 4
    assert buf.nbytes == 40
    assert buf.allocator == "PyAlloc"
    assert buf.delayed_gc is False
    assert type(buf) is Buffer


@given(st.integers(1, 4096), st.integers(1, 16))
def test_sizes_property(n, s):
    buf = Buffer(n, s)
    try:
        assert (buf.get_num_of_elements(), buf.get_element_size(), buf.get_buffer_size()) == (n, s, n * s)
        assert len(buf) == n * s
        assert len(bytes(buf)) == n * s
    finally:
        buf.release()


def test_sizes_are_positional_only():
    with pytest.raises(TypeError):
        Buffer(num_items=1, item_size=1)
    with pytest.raises(TypeError):
        Buffer()
    with pytest.raises(TypeError):
        Buffer(1)
    with pytest.raises(TypeError):
        Buffer(1, 1, None, 5)


def test_options_keyword_is_not_the_mapping(registry_unchanged):
    # options is positional-only: options= is an (unknown) allocator option.
    with registry_unchanged():
        with pytest.raises(TypeError, match="options"):
            Buffer(1, 1, options={"allocator": "CMalloc"})


@pytest.mark.parametrize("mapping_type", [dict, types.MappingProxyType, ReadOnlyMapping])
def test_options_mapping(make_buffer, mapping_type):
    opts = mapping_type({"allocator": "CMalloc", "init_value": 7})
    buf = make_buffer(5, 2, opts)
    assert buf.allocator == "CMalloc"
    assert bytes(buf) == b"\x07" * 10


def test_options_none_positional(make_buffer):
    buf = make_buffer(3, 1, None, init_value=1)
    assert bytes(buf) == b"\x01\x01\x01"


def test_keyword_wins_and_mapping_not_mutated(make_buffer):
    opts = {"allocator": "CMalloc", "init_value": 1, "delayed_gc": True}
    saved = dict(opts)
    buf = make_buffer(4, 1, opts, allocator="PyAlloc", init_value=2, delayed_gc=False)
    assert buf.allocator == "PyAlloc"
    assert bytes(buf) == b"\x02" * 4
    assert buf.delayed_gc is False
    assert buf.identifier not in memmanager.get_delayed_gc_objects()
    assert opts == saved
    assert list(opts) == list(saved)


def test_mapping_not_mutated_on_failure(registry_unchanged):
    opts = {"allocator": "PyAlloc", "init_value": 300}
    saved = dict(opts)
    with registry_unchanged():
        with pytest.raises(ValueError):
            Buffer(4, 1, opts)
    assert opts == saved


def test_mapping_keys_merge_with_keywords(make_buffer):
    buf = make_buffer(4, 1, {"init_value": 9}, allocator="CMalloc")
    assert buf.allocator == "CMalloc"
    assert bytes(buf) == b"\x09" * 4


@pytest.mark.parametrize("opts", [[("allocator", "CMalloc")], 5, "allocator", {1: "x"}, {b"allocator": "CMalloc"}])
def test_bad_options_mapping(opts, registry_unchanged):
    with registry_unchanged():
        with pytest.raises(TypeError):
            Buffer(4, 1, opts)


# --------------------------------------------------------------------------
# What the parser remembers between calls (buffer_args.c, allocator.c): the
# option of each keyword name, per tuple of names, and the last allocator
# name.  Each call must still read its own arguments.

def test_call_sites_with_different_keywords_take_turns(make_buffer):
    for _ in range(3):
        a = Buffer(2, 1, init_value=5)
        b = Buffer(2, 1, allocator="CMalloc", init_value=6)
        c = Buffer(2, 1, init_value=7, allocator="PyAlloc")
        d = Buffer(2, 1, allocator="CMalloc", init_value=6, delayed_gc=False)
        assert (bytes(a), a.allocator) == (b"\x05\x05", "PyAlloc")
        assert (bytes(b), b.allocator) == (b"\x06\x06", "CMalloc")
        assert (bytes(c), c.allocator) == (b"\x07\x07", "PyAlloc")
        assert (bytes(d), d.allocator, d.delayed_gc) == (b"\x06\x06", "CMalloc", False)
        for buf in (a, b, c, d):
            buf.release()


def test_keywords_built_at_run_time(make_buffer):
    for value, allocator in [(1, "CMalloc"), (2, "PyAlloc"), (3, "CMalloc")]:
        kwargs = {"init_value": value, "allocator": allocator}   # a new tuple of names
        buf = make_buffer(2, 1, **kwargs)
        assert (bytes(buf), buf.allocator) == (bytes([value]) * 2, allocator)


def test_str_subclass_keyword_names(make_buffer):
    class Name(str):
        pass

    buf = make_buffer(2, 1, **{Name("init_value"): 3, Name("allocator"): Name("CMalloc")})
    assert (bytes(buf), buf.allocator) == (b"\x03\x03", "CMalloc")


def test_more_keywords_than_are_remembered(registry_unchanged):
    """Nine names: past what is remembered per tuple, parsed one by one;
    the known ones are still known, the rest go to the allocator."""
    extra = {f"x{i}": i for i in range(5)}
    with registry_unchanged():
        with pytest.raises(TypeError, match="CMalloc.*takes no option 'x0'"):
            Buffer(2, 1, allocator="CMalloc", init_value=1, delayed_gc=False,
                   death_stub=None, **extra)


def test_allocator_name_equal_but_not_identical(make_buffer):
    constant = "CMalloc"
    name = "".join(["CMal", "loc"])      # equal to the constant, another object
    assert name == constant and name is not constant
    assert make_buffer(2, 1, allocator="CMalloc").allocator == "CMalloc"
    assert make_buffer(2, 1, allocator=name).allocator == "CMalloc"
    assert make_buffer(2, 1, allocator="PyAlloc").allocator == "PyAlloc"


def test_allocator_str_subclass_name(make_buffer):
    class Name(str):
        pass

    assert make_buffer(2, 1, allocator=Name("CMalloc")).allocator == "CMalloc"
    with pytest.raises(memmanager.UnknownAllocatorError):
        Buffer(2, 1, allocator=Name("NoSuch"))


def test_mapping_values_outlive_a_mapping_emptied_during_the_call():
    """Code the call runs (a __bool__) may empty the options mapping and
    drop the last reference to a value already read: the call keeps it."""
    seen = []

    class Emptier:
        def __bool__(self):
            opts.clear()
            gc.collect()
            return False

    opts = {"death_stub": lambda info: seen.append(info["buffer_size"]),
            "delayed_gc": Emptier()}
    buf = Buffer(3, 1, opts)
    assert opts == {}
    del buf
    gc.collect()
    assert seen == [3]


# --------------------------------------------------------------------------
# bad sizes

@pytest.mark.parametrize(
    "n, s, exc",
    [
        (0, 1, ValueError),
        (1, 0, ValueError),
        (-1, 1, ValueError),
        (1, -5, ValueError),
        (-(2**70), 1, ValueError),
        (1.0, 1, TypeError),
        (1, 1.0, TypeError),
        ("1", 1, TypeError),
        (None, 1, TypeError),
        (1, None, TypeError),
        (True, 1, TypeError),
        (1, True, TypeError),
        (False, 1, TypeError),
        (sys.maxsize + 1, 1, OverflowError),
        (1, sys.maxsize + 1, OverflowError),
        (2**64, 1, OverflowError),
        (2**200, 2**200, OverflowError),
        (2**32, 2**32, OverflowError),  # product 2**64 > sys.maxsize
        (sys.maxsize, 2, OverflowError),
        (sys.maxsize // 2 + 1, 2, OverflowError),
    ],
)
def test_bad_sizes(n, s, exc, registry_unchanged):
    with registry_unchanged():
        with pytest.raises(exc):
            Buffer(n, s)


@pytest.mark.parametrize("allocator", ALLOCATORS)
@pytest.mark.parametrize("n, s", [(2**40, 2**20), (sys.maxsize, 1), (2**31, 2**31)])
@pytest.mark.parametrize("init_value", [None, "zero", 0x5A])
def test_huge_allocation_is_memory_error(allocator, n, s, init_value, registry_unchanged):
    with registry_unchanged():
        with pytest.raises(MemoryError):
            Buffer(n, s, allocator=allocator, init_value=init_value)


def test_subclass_of_int_sizes_not_bool(make_buffer):
    class MyInt(int):
        pass

    buf = make_buffer(MyInt(3), MyInt(2))
    assert buf.nbytes == 6


# --------------------------------------------------------------------------
# init_value

def test_init_value_none(make_buffer):
    buf = make_buffer(16, 1, init_value=None)
    assert buf.nbytes == 16


@pytest.mark.parametrize("allocator", ALLOCATORS)
@pytest.mark.parametrize("zero", ["zero", "ZeRo", "ZERO", "Zero", 0, "0", "000", b"\x00", "\x00"])
@pytest.mark.parametrize("size", [64, 1 << 20])
def test_init_value_zero(allocator, zero, size, make_buffer):
    # Dirty the heap first, so a missing fill is likely to show.
    dirty = Buffer(size, 1, allocator=allocator, init_value=0xEE)
    dirty.release()
    buf = make_buffer(size, 1, allocator=allocator, init_value=zero)
    assert bytes(buf) == bytes(size)


@pytest.mark.parametrize("allocator", ALLOCATORS)
@given(value=st.integers(0, 255), n=st.integers(1, 300), s=st.integers(1, 4))
def test_init_value_int(allocator, value, n, s):
    buf = Buffer(n, s, allocator=allocator, init_value=value)
    try:
        assert bytes(buf) == bytes([value]) * (n * s)
    finally:
        buf.release()


@given(value=st.integers(0, 255))
def test_init_value_digit_strings(value):
    for text in (str(value), "0" + str(value)):
        buf = Buffer(3, 1, init_value=text)
        try:
            assert bytes(buf) == bytes([value]) * 3, text
        finally:
            buf.release()


@given(code=st.integers(0, 255).filter(lambda c: not chr(c).isascii() or not chr(c).isdigit()))
def test_init_value_one_char_str(code):
    buf = Buffer(3, 1, init_value=chr(code))
    try:
        assert bytes(buf) == bytes([code]) * 3
    finally:
        buf.release()


@given(code=st.integers(0, 255))
def test_init_value_one_byte(code):
    buf = Buffer(3, 1, init_value=bytes([code]))
    try:
        assert bytes(buf) == bytes([code]) * 3
    finally:
        buf.release()


@pytest.mark.parametrize(
    "value, byte",
    [
        (b"A", 65),
        ("40", 40),
        ("7", 7),
        ("9", 9),
        ("A", 65),
        ("\xff", 255),
        ("255", 255),
        ("007", 7),
        ("\xb2", 0xB2),  # superscript two: a digit to str.isdigit(), not ASCII
        (1, 1),
        (255, 255),
    ],
)
@pytest.mark.parametrize("allocator", ALLOCATORS)
def test_init_value_forms(value, byte, allocator, make_buffer):
    buf = make_buffer(7, 3, allocator=allocator, init_value=value)
    assert bytes(buf) == bytes([byte]) * 21


@pytest.mark.parametrize(
    "value, exc",
    [
        (True, TypeError),
        (False, TypeError),
        (1.0, TypeError),
        (0.0, TypeError),
        (bytearray(b"A"), TypeError),
        (memoryview(b"A"), TypeError),
        ([65], TypeError),
        (object(), TypeError),
        (256, ValueError),
        (-1, ValueError),
        (2**64, ValueError),
        (-(2**64), ValueError),
        (b"", ValueError),
        (b"AB", ValueError),
        ("256", ValueError),
        ("999", ValueError),
        ("", ValueError),
        ("AB", ValueError),
        ("zer", ValueError),
        ("zeros", ValueError),
        ("-1", ValueError),
        (" 7", ValueError),
        ("7 ", ValueError),
        ("+7", ValueError),
        ("\u0100", ValueError),
        ("\u0661", ValueError),  # ARABIC-INDIC DIGIT ONE: not ASCII, code point >= 256
        ("\u20ac", ValueError),
    ],
)
@pytest.mark.parametrize("allocator", ALLOCATORS)
def test_bad_init_value(value, exc, allocator, registry_unchanged):
    with registry_unchanged():
        with pytest.raises(exc):
            Buffer(4, 1, allocator=allocator, init_value=value)
    with registry_unchanged():
        with pytest.raises(exc):
            Buffer(4, 1, {"allocator": allocator, "init_value": value})


@given(st.integers().filter(lambda v: not 0 <= v <= 255))
def test_bad_init_int_property(value):
    before = memmanager.stats()["total"]["live_buffers"]
    with pytest.raises(ValueError):
        Buffer(2, 1, init_value=value)
    assert memmanager.stats()["total"]["live_buffers"] == before


@given(st.text(min_size=1, max_size=5))
def test_init_value_str_property(text):
    """Any str is accepted exactly by the documented rule, else ValueError."""
    if text.isascii() and text.lower() == "zero":
        expected = 0
    elif text.isascii() and text.isdigit():
        expected = int(text) if int(text) <= 255 else None
    elif len(text) == 1 and ord(text) < 256:
        expected = ord(text)
    else:
        expected = None
    if expected is None:
        with pytest.raises(ValueError):
            Buffer(2, 1, init_value=text)
    else:
        buf = Buffer(2, 1, init_value=text)
        try:
            assert bytes(buf) == bytes([expected, expected])
        finally:
            buf.release()


# --------------------------------------------------------------------------
# allocators

@pytest.mark.parametrize("allocator", ALLOCATORS)
def test_allocator_names(allocator, make_buffer):
    buf = make_buffer(8, 8, allocator=allocator)
    assert buf.allocator == allocator
    assert buf.address != 0


def test_default_allocator_is_pyalloc(make_buffer):
    assert make_buffer(1, 1).allocator == "PyAlloc"


def test_unknown_allocator(registry_unchanged):
    with registry_unchanged():
        with pytest.raises(memmanager.UnknownAllocatorError) as info:
            Buffer(10, 1, allocator="Nope")
    assert str(info.value) == "Allocator Nope does not exist."
    assert isinstance(info.value, LookupError)
    assert isinstance(info.value, memmanager.MemManagerError)


def test_unknown_allocator_via_mapping(registry_unchanged):
    with registry_unchanged():
        with pytest.raises(memmanager.UnknownAllocatorError, match=r"^Allocator Nope does not exist\.$"):
            Buffer(10, 1, {"allocator": "Nope"})


@pytest.mark.parametrize("allocator", [5, None, b"PyAlloc", ["PyAlloc"], memmanager.Buffer])
def test_allocator_must_be_str(allocator, registry_unchanged):
    with registry_unchanged():
        with pytest.raises(TypeError):
            Buffer(10, 1, allocator=allocator)


@pytest.mark.parametrize("allocator", ALLOCATORS)
def test_unknown_allocator_option(allocator, registry_unchanged):
    with registry_unchanged():
        with pytest.raises(TypeError, match="alignmnet"):
            Buffer(10, 1, allocator=allocator, alignmnet=64)
    with registry_unchanged():
        with pytest.raises(TypeError, match="alignmnet"):
            Buffer(10, 1, {"allocator": allocator, "alignmnet": 64})


def test_bad_death_stub(registry_unchanged):
    for stub in (5, "print", b"x", object()):
        with registry_unchanged():
            with pytest.raises(TypeError):
                Buffer(4, 1, death_stub=stub)
        with registry_unchanged():
            with pytest.raises(TypeError):
                Buffer(4, 1, {"death_stub": stub})


def test_failed_construction_with_pin_pins_nothing(registry_unchanged):
    with registry_unchanged():
        with pytest.raises(ValueError):
            Buffer(4, 1, delayed_gc=True, init_value=999)
        with pytest.raises(MemoryError):
            Buffer(2**40, 2**20, delayed_gc=True, death_stub=lambda info: None)


def test_failed_allocation_does_not_call_stub():
    calls = []
    with pytest.raises(MemoryError):
        Buffer(2**40, 2**20, death_stub=calls.append)
    gc.collect()
    assert calls == []


# --------------------------------------------------------------------------
# subclasses and weak references

def test_subclass_construction(make_buffer):
    class Sub(Buffer):
        pass

    buf = Sub(4, 2, init_value=3)
    try:
        assert type(buf) is Sub
        assert isinstance(buf, Buffer)
        assert buf.nbytes == 8
        assert bytes(buf) == b"\x03" * 8
        buf.tag = "mine"  # subclasses get a __dict__
        assert buf.tag == "mine"
    finally:
        buf.release()


def test_subclass_with_init(make_buffer):
    class Tagged(Buffer):
        def __init__(self, n, s, *args, tag=None, **kwargs):
            self.tag = tag

    buf = Tagged(2, 2)
    try:
        assert type(buf) is Tagged
        assert buf.tag is None
        assert buf.nbytes == 4
    finally:
        buf.release()


def test_class_methods_bind_the_subclass():
    """Sub.consume and Sub.attach make a Sub, through the class or an
    instance; on Buffer itself the bound method is made once, not per
    lookup."""
    class Sub(Buffer):
        pass

    class SubSub(Sub):
        pass

    assert Buffer.consume is Buffer.consume
    source = bytearray(8)
    for cls in (Buffer, Sub, SubSub):
        for name in ("consume", "attach", "get_delayed_gc_objects"):
            assert getattr(cls, name).__self__ is cls
        buf = cls.consume(source, 8, 1, delayed_gc=False)
        assert type(buf) is cls
        assert buf.consume.__self__ is cls        # through an instance too
        buf.release()
    shared = Sub(16, 1, allocator="SharedMemory")
    try:
        attached = SubSub.attach(shared.name, 16, 1)
        assert type(attached) is SubSub
        attached.release()
    finally:
        shared.release()


def test_subclass_override_of_a_class_method_is_kept():
    class Own(Buffer):
        @classmethod
        def consume(cls, source, num_items, item_size, **options):
            return ("own", cls)

    class Child(Own):
        pass

    assert Own.consume(b"", 1, 1) == ("own", Own)
    assert Child.consume(b"", 1, 1) == ("own", Child)
    assert Child.attach.__self__ is Child


def test_weakref(make_buffer):
    buf = Buffer(8, 1)
    ref = weakref.ref(buf)
    assert ref() is buf
    calls = []
    proxy_ref = weakref.ref(buf, calls.append)
    del buf
    gc.collect()
    assert ref() is None
    assert proxy_ref() is None
    assert calls == [proxy_ref]


def test_weakref_released_buffer():
    buf = Buffer(8, 1)
    ref = weakref.ref(buf)
    buf.release()
    assert ref() is buf
    del buf
    assert ref() is None


def test_weakref_to_subclass():
    class Sub(Buffer):
        pass

    buf = Sub(2, 1)
    ref = weakref.ref(buf)
    del buf
    gc.collect()
    assert ref() is None


# --------------------------------------------------------------------------
# Borrowed options stay alive while the call runs (each of these crashed
# a build that borrowed from objects the caller's code could empty)

def test_mapping_whose_items_list_is_its_own_and_is_emptied_mid_call():
    """items() may return a list the mapping keeps; emptying it from code
    the call runs must not free the options already read."""
    seen = []

    class Mapping:
        def __init__(self, pairs):
            self.pairs = pairs

        def keys(self):
            return [k for k, _ in self.pairs]

        def __getitem__(self, key):
            return dict(self.pairs)[key]

        def __len__(self):
            return len(self.pairs)

        def items(self):
            return self.pairs                  # its own list

    class Emptier:
        def __bool__(self):
            opts.pairs.clear()
            [bytearray(64) for _ in range(1000)]   # reuse what was freed
            return False

    opts = Mapping([("death_stub", lambda info: seen.append(info["buffer_size"])),
                    ("delayed_gc", Emptier())])
    buf = Buffer(4, 8, opts)
    buf.release()
    assert seen == [32]


def test_subclass_keywords_emptied_mid_call():
    """A subclass goes through tp_new with a kwargs dict; emptying that dict
    from code the call runs must not free the keywords already read."""
    seen = []

    class Sub(Buffer):
        pass

    class Emptier:
        def __bool__(self):
            for referrer in gc.get_referrers(self):
                if isinstance(referrer, dict) and "death_stub" in referrer:
                    referrer.clear()
            [bytearray(64) for _ in range(1000)]
            return False

    buf = Sub(4, 8, **{"delayed_gc": Emptier(),
                       "death_stub": lambda info: seen.append(info["buffer_size"])})
    buf.release()
    assert seen == [32]


def test_class_methods_through_super_bind_the_subclass():
    """An override that extends consume through super() still makes an
    instance of its own class (the class methods are descriptors)."""
    class Frame(Buffer):
        @classmethod
        def consume(cls, *args, **kwargs):
            return super().consume(*args, **kwargs)

    class Leaf(Frame):
        pass

    source = bytearray(8)
    for cls in (Frame, Leaf):
        buf = cls.consume(source, 8, 1, delayed_gc=False)
        assert type(buf) is cls
        buf.release()
