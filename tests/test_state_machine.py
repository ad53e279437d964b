"""A hypothesis state machine over the whole life of buffers (DESIGN
sections 2, 3, 5, 6 and 10).

Rules: create (every allocator, option set and init_value form, through
keywords or the options mapping), consume (every source kind), consume of
memory that is already managed (OverlapError), export (every exporter),
write through an export, end an export, release (and `with`), drop the last
reference, collect_delayed, gc.collect, item writes and region copies.
Death stubs of every kind ride along: none, recording, reading the memory
they are about to lose, raising, and referring to their own buffer (a
cycle).

After every step the invariants check the model against memmanager:

- the registry matches the live buffers (addresses, sizes, allocators,
  export counts, pins), and its own invariants hold (_registry_check);
- stats() add up: the total is the sum of the allocators, and each
  allocator's counters moved exactly as the model says;
- no two live regions overlap;
- every death stub ran at most once, exactly once for a dead buffer, with
  the right info, before the memory went (a reading stub saw the bytes);
- every raising stub reached sys.unraisablehook, and nothing else did;
- the pinned list is what the model says; live buffers hold their bytes.

The collector is off while a machine runs (gc.collect() is a rule), so
the moment a buffer dies is deterministic; older objects are frozen
(gc.freeze) so that a collection only walks what the machine made.  The lists of allocators,
sources and exporters come from surface.py: a new one is one entry there.
"""

import ctypes
import gc
import sys
import weakref
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import memmanager
from memmanager import Buffer

import surface
from conftest import scaled


class UnfollowedArray(np.ndarray):
    """An exporter the registry does not follow to its Buffer (only
    numpy.ndarray itself, memoryviews, Buffers and stored views are)."""


STUB_KINDS = st.sampled_from(["none", "record", "read", "raise", "cycle"])
SMALL_SIZES = st.tuples(st.integers(1, 48), st.sampled_from([1, 2, 4, 8]))
LARGE = (1 << 20, 1)   # big enough for the GIL-free fill, copy and free paths
SIZES = st.integers(0, 9).flatmap(lambda i: st.just(LARGE) if i == 0 else SMALL_SIZES)
COUNTERS = ("live_buffers", "live_bytes", "allocations", "allocated_bytes")
PATTERN = bytes(range(256)) * 2


def pattern(key, nbytes):
    """Bytes that differ from buffer to buffer and position to position."""
    start = (key * 37) % 256
    block = PATTERN[start:start + 256]
    return (block * (nbytes // 256 + 1))[:nbytes]


def sample(content):
    """What is compared of a buffer's bytes: all of a small one, three
    windows of a large one."""
    if len(content) <= 4096:
        return bytes(content)
    middle = len(content) // 2
    return bytes(content[:64]) + bytes(content[middle:middle + 64]) + bytes(content[-64:])


def buffer_sample(buf):
    n = len(buf)
    if n <= 4096:
        return buf.extract_buffer_region()
    return (buf.extract_buffer_region(0, 63) + buf.extract_buffer_region(n // 2, n // 2 + 63)
            + buf.extract_buffer_region(n - 64, n - 1))


class Record:
    """The model of one buffer."""

    def __init__(self, key, buf, allocator, stub_kind, box, closing=None):
        self.key = key
        self.buf = buf                      # the machine's reference, or None
        self.ref = weakref.ref(buf)
        self.identifier = buf.identifier
        self.address = buf.address
        self.nbytes = buf.nbytes
        self.num_items = buf.num_items
        self.item_size = buf.itemsize
        self.allocator = allocator
        self.readonly = buf.readonly
        self.pinned = buf.delayed_gc
        self.exports = []                   # [(Exporter, Export)]
        self.content = bytearray(buffer_sample(buf)) if buf.nbytes <= 4096 else None
        self.stub_kind = stub_kind
        self.calls = box["calls"]           # infos the stub received
        self.seen = box["seen"]             # bytes a reading stub saw
        self.closing = closing
        self.freed = False
        self.owns = True                    # frees its memory (not zero-copy, not Borrowed)

    def __repr__(self):
        return (f"<Record {self.key} {self.allocator} nbytes={self.nbytes} stub={self.stub_kind}"
                f" pinned={self.pinned} exports={len(self.exports)} ref={self.buf is not None}"
                f" freed={self.freed}>")

    def set_content(self, content):
        self.content = bytearray(content)

    def expected_sample(self):
        return sample(self.content)


def make_stub(kind, box):
    if kind == "none":
        return None

    def stub(info):
        box["calls"].append(dict(info))
        if kind == "read":
            box["seen"].append(ctypes.string_at(info["buffer_address"], info["buffer_size"]))
        if kind == "raise":
            raise RuntimeError("a death stub raising on purpose")

    return stub


class LifecycleMachine(RuleBasedStateMachine):

    def __init__(self):
        super().__init__()
        # The collector only runs when a rule asks, and only over what this
        # machine made: everything older is frozen out of its sight.
        self.gc_was_enabled = gc.isenabled()
        gc.disable()
        gc.freeze()
        self.unraisable = []
        self.previous_hook = sys.unraisablehook
        sys.unraisablehook = self.record_unraisable
        self.records = {}
        self.next_key = 0
        self.created = Counter()        # (allocator, counter) -> expected delta
        self.baseline_count = memmanager._core._registry_check()
        self.baseline = memmanager.stats()

    # ---------------------------------------------------------------- helpers

    def record_unraisable(self, args):
        # Type and message only: the traceback would keep the frames of the
        # rules that let the stub run (and the buffers in them) alive.
        self.unraisable.append((args.exc_type, str(args.exc_value)))

    def new_key(self):
        self.next_key += 1
        return self.next_key

    def live(self):
        return [r for r in self.records.values() if not r.freed]

    def usable(self):
        """Records the machine can still call methods on."""
        return [r for r in self.records.values() if r.buf is not None and not r.freed]

    def exported(self):
        return [r for r in self.records.values() if r.exports]

    def counted(self, allocator, nbytes):
        self.created[allocator, "allocations"] += 1
        self.created[allocator, "allocated_bytes"] += nbytes

    def adopt_record(self, key, buf, allocator, stub_kind, box, closing=None):
        if stub_kind == "cycle":
            box["buf"] = buf            # buf -> stub -> box -> buf
        record = Record(key, buf, allocator, stub_kind, box, closing)
        self.records[key] = record
        self.counted(allocator, record.nbytes)
        return record

    def write_pattern(self, record):
        if record.readonly:
            return
        content = pattern(record.key, record.nbytes)
        record.buf[:] = content
        record.set_content(content)

    def mark_freed(self, record):
        assert record.ref() is None or record.ref().released, record
        record.freed = True
        record.pinned = False
        if record.closing is not None:
            record.closing()

    def settle(self):
        """Buffers nobody holds any more must be gone, except cycles,
        which wait for the collector."""
        for record in self.live():
            if record.buf is None and not record.pinned and not record.exports:
                if record.stub_kind == "cycle":
                    continue
                assert record.ref() is None, f"{record} survived its last reference"
                self.mark_freed(record)

    def pick(self, data, records, label):
        return data.draw(st.sampled_from(sorted(records, key=lambda r: r.key)), label=label)

    def snapshot(self):
        return (memmanager._core._registry_check(), memmanager.live_buffers(),
                memmanager.stats(), memmanager.get_delayed_gc_objects())

    # ---------------------------------------------------------------- rules

    @rule(choice=st.sampled_from(surface.ALLOCATOR_CHOICES), size=SIZES,
          init=st.sampled_from(surface.INIT_VALUES), pin=st.booleans(), stub_kind=STUB_KINDS,
          via_mapping=st.booleans())
    def create(self, choice, size, init, pin, stub_kind, via_mapping):
        name, options = choice
        (n, s), (value, byte) = size, init
        box = {"calls": [], "seen": []}
        kwargs = dict(options, allocator=name, init_value=value, delayed_gc=pin,
                      death_stub=make_stub(stub_kind, box))
        buf = Buffer(n, s, kwargs) if via_mapping else Buffer(n, s, **kwargs)
        assert (buf.num_items, buf.itemsize, buf.nbytes, buf.allocator) == (n, s, n * s, name)
        assert buf.delayed_gc is pin and buf.readonly is False and buf.exports == 0
        if byte is not None:
            assert buffer_sample(buf) == sample(bytes([byte]) * (n * s))
        record = self.adopt_record(self.new_key(), buf, name, stub_kind, box)
        self.write_pattern(record)

    @rule(kind=st.sampled_from(surface.SOURCES), size=SMALL_SIZES, pin=st.booleans(),
          stub_kind=STUB_KINDS)
    def consume(self, kind, size, pin, stub_kind):
        n, s = size
        key = self.new_key()
        before = memmanager.stats()
        adoption = kind.prepare(n * s, pattern(key, n * s))
        self.count_side_allocations(before)
        box = {"calls": [], "seen": []}
        try:
            buf = Buffer.consume(adoption.source, n, s, delayed_gc=pin,
                                 death_stub=make_stub(stub_kind, box), **adoption.kwargs)
        except BaseException:
            adoption.refused()
            raise
        adoption.adopted()
        assert buf.allocator == adoption.allocator, kind.name
        assert buf.readonly is adoption.readonly, kind.name
        assert buf.delayed_gc is pin
        assert buf.extract_buffer_region() == adoption.content, kind.name
        if adoption.address is not None:
            assert buf.address == adoption.address, kind.name
        record = self.adopt_record(key, buf, adoption.allocator, stub_kind, box, adoption.closing)
        record.keep = adoption.keep
        record.owns = adoption.allocator == "CMalloc" or bool(adoption.kwargs.get("copy"))
        self.write_pattern(record)

    def count_side_allocations(self, before):
        """A source may be a Buffer itself: its allocation is not the model's."""
        after = memmanager.stats()
        for name in after:
            if name == "total":
                continue
            for counter in ("allocations", "allocated_bytes"):
                was = before.get(name, {}).get(counter, 0)
                self.created[name, counter] += after[name][counter] - was

    @precondition(lambda self: self.usable())
    @rule(data=st.data(), how=st.sampled_from(["zero-copy", "Borrowed", "adopt", "copy"]))
    def consume_managed_memory(self, data, how):
        record = self.pick(data, self.usable(), "record")
        buf = record.buf
        offset = data.draw(st.integers(0, record.nbytes - 1), label="offset")
        length = data.draw(st.integers(1, record.nbytes - offset), label="length")
        if how == "copy":   # an independent copy is fine
            before = memmanager.stats()
            copy = Buffer.consume(buf, record.nbytes, 1, copy=True, delayed_gc=False)
            assert copy.extract_buffer_region() == buf.extract_buffer_region()
            copy.release()
            self.count_side_allocations(before)
            return
        refcount = sys.getrefcount(buf)
        before = self.snapshot()
        holder = [record.address + offset]
        # Issue 12 (DESIGN section 5): a non-owning buffer may overlap other
        # non-owning ones, but never an owned region unless it holds an
        # export of that Buffer (a NumPy array subclass is not followed);
        # an adoption may overlap nothing.
        source, kwargs = {
            "zero-copy": (np.asarray(buf).view(UnfollowedArray), {}),
            "Borrowed": (record.address + offset, {"allocator": "Borrowed"}),
            "adopt": (holder, {"allocator": "CMalloc"}),
        }[how]
        length = length if how != "zero-copy" else record.nbytes
        if how != "adopt" and not record.owns:
            before = memmanager.stats()   # the model counts the new buffer
            other = Buffer.consume(source, length, 1, delayed_gc=False, **kwargs)
            assert other.address == record.address + (offset if how == "Borrowed" else 0)
            other.release()
            del source, other
            self.count_side_allocations(before)
            return
        with pytest.raises(memmanager.OverlapError):
            Buffer.consume(source, length, 1, **kwargs)
        del source
        assert self.snapshot() == before
        assert holder == [record.address + offset]   # ownership was not taken
        assert sys.getrefcount(buf) == refcount

    @precondition(lambda self: self.usable())
    @rule(data=st.data(), exporter=st.sampled_from(surface.EXPORTERS))
    def export(self, data, exporter):
        record = self.pick(data, self.usable(), "record")
        if exporter.needs_writable and record.readonly:
            before = self.snapshot()
            with pytest.raises((TypeError, BufferError)):
                exporter.export(record.buf)
            assert self.snapshot() == before
            return
        record.exports.append((exporter, exporter.export(record.buf)))

    @precondition(lambda self: self.exported())
    @rule(data=st.data(), value=st.integers(0, 255))
    def write_through_export(self, data, value):
        record = self.pick(data, self.exported(), "record")
        index = data.draw(st.integers(0, len(record.exports) - 1), label="export")
        exporter, export = record.exports[index]
        if not surface.writable_export(exporter, export.handle, record.readonly):
            return
        exporter.write(export.handle, value)
        if record.content is not None:
            record.content[export.offset] = value
        elif record.buf is not None:
            assert record.buf[export.offset] == value

    @precondition(lambda self: self.exported())
    @rule(data=st.data())
    def end_export(self, data):
        record = self.pick(data, self.exported(), "record")
        index = data.draw(st.integers(0, len(record.exports) - 1), label="export")
        exporter, export = record.exports.pop(index)
        exporter.end(export.handle)
        del export
        self.settle()

    @precondition(lambda self: [r for r in self.records.values() if r.buf is not None])
    @rule(data=st.data(), via_with=st.booleans())
    def release(self, data, via_with):
        record = self.pick(data, [r for r in self.records.values() if r.buf is not None], "record")
        buf = record.buf
        if record.freed:                       # released before: a no-op
            buf.release()
            assert buf.released
            return
        if record.exports:
            before = self.snapshot()
            with pytest.raises(BufferError, match=f"{len(record.exports)} live export"):
                if via_with:
                    with buf:
                        pass
                else:
                    buf.release()
            assert self.snapshot() == before
            assert record.calls == [] and not buf.released
            return
        if via_with:
            with buf as entered:
                assert entered is buf
        else:
            buf.release()
        assert buf.released
        with pytest.raises(ValueError, match="released"):
            buf.address
        self.mark_freed(record)

    @precondition(lambda self: self.usable())
    @rule(data=st.data())
    def drop_reference(self, data):
        record = self.pick(data, self.usable(), "record")
        record.buf = None
        self.settle()

    @rule(data=st.data(), everything=st.booleans(), as_objects=st.booleans())
    def collect_delayed(self, data, everything, as_objects):
        if everything:
            unpinned = memmanager.collect_delayed()
            chosen = self.live()
        else:
            chosen = data.draw(st.lists(st.sampled_from(sorted(self.live(), key=lambda r: r.key)),
                                        max_size=4) if self.live() else st.just([]), label="chosen")
            arg = [r.buf if as_objects and r.buf is not None else r.identifier for r in chosen]
            unpinned = memmanager.collect_delayed(arg)
            expected = []
            for r in chosen:
                if r.pinned and r.identifier not in expected:
                    expected.append(r.identifier)
            assert unpinned == expected
        for r in chosen:
            if r.pinned:
                assert r.identifier in unpinned
                r.pinned = False
        self.settle()

    @rule()
    def collect_garbage(self):
        gc.collect()
        for record in self.live():
            if record.buf is None and not record.pinned and not record.exports:
                assert record.ref() is None, f"{record} survived gc.collect()"
                self.mark_freed(record)

    @precondition(lambda self: self.usable())
    @rule(data=st.data(), value=st.integers(0, 255))
    def write_item(self, data, value):
        record = self.pick(data, self.usable(), "record")
        index = data.draw(st.integers(-record.nbytes, record.nbytes - 1), label="index")
        if record.readonly:
            with pytest.raises(TypeError):
                record.buf[index] = value
            return
        record.buf[index] = value
        if record.content is not None:
            record.content[index] = value
        assert record.buf[index] == value

    @precondition(lambda self: self.usable())
    @rule(data=st.data())
    def extract(self, data):
        record = self.pick(data, self.usable(), "record")
        n = record.nbytes
        start = data.draw(st.integers(-2, n + 1), label="start")
        end = data.draw(st.integers(-2, n + 1), label="end")
        got = record.buf.extract_buffer_region(start, end)
        if start < 0 or end < 0 or end >= n or start > end:
            assert got is None
        elif record.content is not None:
            assert got == bytes(record.content[start:end + 1])
        else:
            assert len(got) == end - start + 1

    # ---------------------------------------------------------------- invariants

    @invariant()
    def registry_matches_model(self):
        count = memmanager._core._registry_check()
        entries = memmanager.live_buffers()
        live = self.live()
        assert count == len(entries) == self.baseline_count + len(live)
        by_identifier = {e.identifier: e for e in entries}
        for record in live:
            entry = by_identifier.get(record.identifier)
            assert entry is not None, f"{record} is not in live_buffers()"
            assert (entry.address, entry.nbytes, entry.allocator, entry.exports, entry.pinned) == (
                record.address, record.nbytes, record.allocator, len(record.exports),
                record.pinned), record

    @invariant()
    def live_regions_disjoint(self):
        spans = sorted((e.address, e.address + e.nbytes) for e in memmanager.live_buffers())
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert end <= start, spans

    @invariant()
    def stats_add_up(self):
        stats = memmanager.stats()
        names = [name for name in stats if name != "total"]
        for counter in COUNTERS:
            assert stats["total"][counter] == sum(stats[n][counter] for n in names), counter
        for name in names:
            assert stats[name]["peak_bytes"] >= stats[name]["live_bytes"]
            assert stats["total"]["peak_bytes"] >= stats[name]["peak_bytes"]
        live = self.live()
        for name in set(names) | {allocator for allocator, _ in self.created}:
            base = self.baseline.get(name, dict.fromkeys(COUNTERS, 0))
            now = stats.get(name, dict.fromkeys(COUNTERS, 0))
            mine = [r for r in live if r.allocator == name]
            assert now["live_buffers"] == base["live_buffers"] + len(mine), name
            assert now["live_bytes"] == base["live_bytes"] + sum(r.nbytes for r in mine), name
            for counter in ("allocations", "allocated_bytes"):
                assert now[counter] == base[counter] + self.created[name, counter], (name, counter)

    @invariant()
    def stubs_ran_once_before_the_free(self):
        for record in self.records.values():
            if record.stub_kind == "none" or not record.freed:
                assert record.calls == [], record
                continue
            assert len(record.calls) == 1, record
            info = record.calls[0]
            assert info["buffer_address"] == record.address
            assert info["buffer_size"] == record.nbytes
            assert info["element_size"] == record.item_size
            assert info["num_of_elements"] == record.num_items
            assert info["identifier"] == record.identifier
            if record.stub_kind == "read":
                assert len(record.seen) == 1 and len(record.seen[0]) == record.nbytes
                if record.content is not None:
                    assert record.seen[0] == bytes(record.content), record

    @invariant()
    def raising_stubs_reached_unraisablehook(self):
        raised = [r for r in self.records.values() if r.freed and r.stub_kind == "raise"]
        assert len(self.unraisable) == len(raised), self.unraisable
        assert all(exc_type is RuntimeError for exc_type, _ in self.unraisable), self.unraisable

    @invariant()
    def pins_match(self):
        pinned = set(memmanager.get_delayed_gc_objects())
        for record in self.live():
            assert (record.identifier in pinned) == record.pinned, record

    @invariant()
    def live_buffers_hold_their_bytes(self):
        for record in self.usable():
            if record.content is not None:
                assert buffer_sample(record.buf) == record.expected_sample(), record
            assert record.buf.exports == len(record.exports)

    def teardown(self):
        try:
            for record in self.records.values():
                while record.exports:
                    exporter, export = record.exports.pop()
                    exporter.end(export.handle)
                    del export
            for record in self.usable():
                record.buf.release()
                self.mark_freed(record)
            memmanager.collect_delayed([r.identifier for r in self.live() if r.pinned])
            for record in self.live():
                record.pinned = False
            self.collect_garbage()
            assert self.live() == []
            self.stubs_ran_once_before_the_free()
            self.raising_stubs_reached_unraisablehook()
            assert memmanager._core._registry_check() == self.baseline_count
        finally:
            self.records.clear()
            sys.unraisablehook = self.previous_hook
            gc.unfreeze()
            if self.gc_was_enabled:
                gc.enable()


MACHINE_EXAMPLES = scaled(500, 20)

TestLifecycleMachine = LifecycleMachine.TestCase
TestLifecycleMachine.settings = settings(
    max_examples=MACHINE_EXAMPLES, stateful_step_count=scaled(50, 15), deadline=None,
    database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
