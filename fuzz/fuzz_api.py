#!/usr/bin/env python3
"""Coverage-guided fuzzing of the memmanager API (atheris, libFuzzer).

The fuzzer's bytes are decoded, with atheris.FuzzedDataProvider, into a
sequence of API operations over a small pool of live buffers and exports:
Buffer() with every allocator and odd sizes, init values and options,
consume() of bytes, bytearray, memoryview, another buffer and a Borrowed
arena (never a raw address: DESIGN section 10 does not promise anything for
those), region(), extract_buffer_region(), item and slice access, release,
`with`, named views, pickling, DLPack, delayed GC, death stubs that do
things, plug-in allocators with odd names, and the observability calls.
Arguments are sometimes hostile objects whose __index__ or __hash__ runs
one more operation in the middle of the call.

An operation may raise one of EXPECTED (bad input gets a clear exception);
anything else is a crash, and so is a sanitizer report.  After each input
everything is dropped and collected, and the registry must be back where it
was: no live buffer, pin or /dev/shm name left behind.

Run it through `make fuzz` (an ASan + UBSan + libFuzzer build, see
docs/reliability.md).  Without atheris, or with --replay, it runs the files
given on the command line once each, in plain Python: that is how a crash
file is reproduced on any build, e.g.

    .venv/bin/python fuzz/fuzz_api.py --replay build/fuzz/crash-... [-v]

-v prints each operation as it runs (a reproducer is that list).
"""

import ctypes
import gc
import os
import pickle
import sys
import tempfile

try:
    import atheris
except ImportError:  # replay only
    atheris = None

if atheris is not None and "--replay" not in sys.argv:
    with atheris.instrument_imports(include=["memmanager"]):
        import memmanager
else:
    import memmanager

import numpy as np

import memmanager.numpy as mnp
from memmanager import Buffer

VERBOSE = "-v" in sys.argv

MAX_BYTES = 1 << 20        # no buffer larger than this gets allocated
MAX_POOL = 8               # live buffers kept at once
MAX_EXPORTS = 8            # live exports kept at once
MAX_OPS = 48               # operations per input
MAX_PLUGINS = 48           # plug-in allocators registered per process
MAX_LOG_BYTES = 1 << 16    # a log longer than this is no longer replayed

PID = os.getpid()
SHM_PREFIXES = ("mm_%d_" % PID, "mmfz_%d_" % PID)


class FuzzStubError(Exception):
    """What the harness's own death stubs and dunder methods raise."""


EXPECTED = (ValueError, TypeError, IndexError, BufferError, OverflowError,
            MemoryError, LookupError, memmanager.MemManagerError, FuzzStubError,
            NotImplementedError, OSError)

# The adaptors an input registers take these names (process-wide, so an
# input may find one an earlier input made); its files live in FILES.
ADAPTOR_NAMES = ["FzAdaptor0", "FzAdaptor1", "FzAdaptor2"]
FILES = tempfile.mkdtemp(prefix="mmfz_")
ALLOCATORS = ["PyAlloc", "CMalloc", "Aligned", "Mmap", "SharedMemory", "Borrowed",
              "MappedFile", "CudaHost", "CudaDevice", "CudaManaged"] + ADAPTOR_NAMES
INIT_VALUES = [None, "zero", "ZERO", 0, 7, 255, "A", b"\x10", "40", "\xe9", -1, 256,
               2 ** 64, "", "zz", b"", b"ab", 1.5, "random", True]
SPECIAL_SIZES = [0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 63, 64, 255, 4095, 4096, 4097,
                 65536, -1, -2, 2 ** 31, 2 ** 32, 2 ** 62, 2 ** 63 - 1, 2 ** 63, 2 ** 64,
                 -(2 ** 63), MAX_BYTES]


class Fuzz:
    """One input: the data provider, the pool and what it did."""

    def __init__(self, data):
        self.fdp = atheris.FuzzedDataProvider(data)
        self.buffers = []      # live Buffer objects
        self.exports = []      # memoryviews, regions, arrays, capsules, views
        self.arenas = []       # ctypes arenas lent with owner=
        self.scopes = []       # statistics() scopes entered, innermost last

    def note(self, text):
        if VERBOSE:
            print(text, flush=True)

    # -- decoding helpers --------------------------------------------------
    def choice(self, seq):
        return seq[self.fdp.ConsumeIntInRange(0, len(seq) - 1)]

    def flag(self):
        return self.fdp.ConsumeBool()

    def small(self, limit=64):
        return self.fdp.ConsumeIntInRange(0, limit)

    def size(self):
        """An item count or size: small, special or arbitrary."""
        how = self.fdp.ConsumeIntInRange(0, 7)
        if how <= 3:
            return self.fdp.ConsumeIntInRange(0, 64)
        if how <= 5:
            return self.choice(SPECIAL_SIZES)
        if how == 6:
            return self.fdp.ConsumeIntInRange(0, MAX_BYTES)
        return self.hostile_int(self.fdp.ConsumeIntInRange(0, 64))

    def sizes(self):
        """num_items, item_size: both small enough together, or a product
        that no allocator can give (which must be refused)."""
        n, s = self.size(), self.size()
        try:
            product = int(n) * int(s)
        except Exception:
            return n, s
        if MAX_BYTES < product < 2 ** 62:
            s = 1
            n = product % (MAX_BYTES + 1)
        return n, s

    def index(self, length):
        """A position or slice bound: in range, out of range, negative, None."""
        how = self.fdp.ConsumeIntInRange(0, 9)
        if how <= 4:
            return self.fdp.ConsumeIntInRange(0, max(length, 0) + 1)
        if how <= 6:
            return -self.fdp.ConsumeIntInRange(0, max(length, 0) + 1)
        if how == 7:
            return None
        if how == 8:
            return self.choice(SPECIAL_SIZES)
        return self.hostile_int(self.fdp.ConsumeIntInRange(0, max(length, 1)))

    def hostile_int(self, value):
        """An int-like whose __index__ runs one more operation first."""
        fuzz = self
        action = self.fdp.ConsumeIntInRange(0, 4)

        class HostileInt:
            def __index__(self):
                fuzz.side_action(action)
                return value

            __int__ = __index__

        return HostileInt()

    def hostile_name(self, text):
        """A str subclass whose __hash__ and __eq__ run one more operation."""
        fuzz = self
        action = self.fdp.ConsumeIntInRange(0, 4)

        class HostileStr(str):
            def __hash__(self):
                fuzz.side_action(action)
                return str.__hash__(self)

            def __eq__(self, other):
                fuzz.side_action(action)
                return str.__eq__(self, other)

        return HostileStr(text)

    def side_action(self, action):
        """What hostile callbacks do in the middle of a call."""
        self.note("  (side action %d)" % action)
        if action == 0 and self.buffers:
            self.buffers[-1].release()
        elif action == 1:
            gc.collect()
        elif action == 2:
            self.exports.clear()
            self.buffers.clear()
        elif action == 3:
            memmanager.collect_delayed()
        elif action == 4:
            raise FuzzStubError("hostile callback")

    def buffer(self):
        if not self.buffers:
            return None
        k = self.fdp.ConsumeIntInRange(0, len(self.buffers) - 1)
        self.note("  [pool[%d] of %d: %r]" % (k, len(self.buffers), self.buffers[k]))
        return self.buffers[k]

    def keep(self, buf):
        if isinstance(buf, Buffer):
            self.note("  -> pool[%d] = %r" % (len(self.buffers), buf))
            self.buffers.append(buf)
            if len(self.buffers) > MAX_POOL:
                self.buffers.pop(0)

    def export(self, obj):
        self.exports.append(obj)
        if len(self.exports) > MAX_EXPORTS:
            self.exports.pop(0)

    def init_value(self):
        how = self.fdp.ConsumeIntInRange(0, 3)
        if how <= 1:
            return self.choice(INIT_VALUES)
        if how == 2:
            return self.fdp.ConsumeIntInRange(-300, 300)
        return self.fdp.ConsumeUnicodeNoSurrogates(self.small(3))

    def allocator_name(self):
        how = self.fdp.ConsumeIntInRange(0, 5)
        if how <= 3:
            return self.choice(ALLOCATORS)
        if how == 4:
            return self.choice(memmanager.allocators())
        return self.fdp.ConsumeUnicode(self.small(12))

    def options(self, allocator):
        """Keyword options for the allocator (some wrong on purpose)."""
        opts = {}
        for _ in range(self.small(3)):
            key = self.choice(["alignment", "populate", "shared", "hugepages", "name",
                               "bogus", "init_value", "delayed_gc", "copy", "readonly",
                               "path", "mode", "offset", "numa_node"])
            opts[key] = self.option_value(key)
        return opts

    def option_value(self, key):
        how = self.fdp.ConsumeIntInRange(0, 3)
        if key == "alignment" and how <= 1:
            return self.choice([1, 2, 3, 8, 16, 64, 4096, 65536, 2 ** 20, 0, -8, 2 ** 63])
        if key == "path" and how <= 2:
            return os.path.join(FILES, "file%d" % self.small(3))
        if key == "mode" and how <= 2:
            return self.choice(["r+", "r", "w+", "w", ""])
        if key in ("offset", "numa_node") and how <= 1:
            return self.choice([0, 1, 4095, 4096, 2 ** 40, 2 ** 63 - 1, -1])
        if key == "name" and how <= 2:
            return "mmfz_%d_%s" % (PID, self.fdp.ConsumeUnicodeNoSurrogates(self.small(6))
                                   .replace("/", "s").replace("\0", "z") or "x")
        if how == 0:
            return self.flag()
        if how == 1:
            return None
        if how == 2:
            return self.fdp.ConsumeIntInRange(-2, 2 ** 16)
        return self.fdp.ConsumeUnicode(self.small(4))

    def death_stub(self):
        how = self.fdp.ConsumeIntInRange(0, 6)
        fuzz = self
        if how <= 1:
            return None
        if how == 2:
            def stub(info):
                fuzz.note("  (death stub: %r)" % (sorted(info),))
            return stub
        if how == 3:
            def stub(info):
                raise FuzzStubError("death stub")
            return stub
        if how == 4:
            def stub(info):
                for buf in list(fuzz.buffers):
                    buf.release()
            return stub
        if how == 5:
            def stub(info):
                Buffer(8, 1, allocator="CMalloc").release()
                gc.collect()
            return stub
        return self.choice([5, "not callable", repr])

    def payload(self):
        return self.fdp.ConsumeBytes(self.size() if self.flag() else self.small(32))

    # -- operations --------------------------------------------------------
    def op_new(self):
        n, s = self.sizes()
        allocator = self.allocator_name()
        kwargs = {"allocator": allocator}
        if self.flag():
            kwargs["init_value"] = self.init_value()
        if self.flag():
            kwargs["delayed_gc"] = self.flag()
        if self.flag():
            kwargs["death_stub"] = self.death_stub()
        options = self.options(allocator)
        if self.flag():
            self.note("Buffer(%r, %r, %r, **%r)" % (n, s, options, kwargs))
            buf = Buffer(n, s, options, **kwargs)
        else:
            kwargs.update(options)
            self.note("Buffer(%r, %r, **%r)" % (n, s, kwargs))
            buf = Buffer(n, s, **kwargs)
        self.keep(buf)

    def consume_source(self):
        kind = self.fdp.ConsumeIntInRange(0, 8)
        data = self.payload()
        if kind == 0:
            return "bytes", bytes(data) + b"\0", {}
        if kind == 1:
            return "bytearray", bytearray(data), {}
        if kind == 2:
            backing = bytearray(b"\0" + data + b"\0")
            return "memoryview", memoryview(backing)[1:-1], {}
        if kind == 3:
            return "read-only memoryview", memoryview(bytes(data) + b"\0"), {}
        if kind == 4:
            return "numpy", np.frombuffer(bytearray(data or b"\0"), dtype=np.uint8), {}
        if kind == 5:
            # A raw address is trusted for its size (DESIGN section 10 makes
            # no promise for a wrong one): the arena is as large as asked.
            n, s = self.small(), self.small()
            arena = ctypes.create_string_buffer(bytes(data[: n * s]), max(n * s, 1))
            self.arenas.append(arena)
            return ("Borrowed arena", ctypes.addressof(arena),
                    {"allocator": "Borrowed", "owner": arena, "sizes": (n, s)})
        other = self.buffer()
        if other is None:
            return "bytes", bytes(data), {}
        if kind == 6:
            return "another buffer", other, {}
        if kind == 7:
            return "a region of another buffer", other.region(self.index(len(other)),
                                                               self.index(len(other))), {}
        return "a memoryview of another buffer", memoryview(other), {}

    def op_consume(self):
        what, source, kwargs = self.consume_source()
        n, s = self.sizes()
        if "sizes" in kwargs:
            n, s = kwargs.pop("sizes")
        elif self.flag():
            length = len(memoryview(source)) if not isinstance(source, int) else 0
            if length and self.flag():
                n, s = length, 1
        for key in ("copy", "readonly", "delayed_gc"):
            if self.flag():
                kwargs[key] = self.flag() if self.flag() else self.option_value(key)
        if self.flag() and "owner" not in kwargs:
            kwargs["allocator"] = self.allocator_name()
        if self.flag():
            kwargs["death_stub"] = self.death_stub()
        self.note("Buffer.consume(<%s>, %r, %r, **%r)" % (what, n, s, kwargs))
        buf = Buffer.consume(source, n, s, **kwargs)
        self.keep(buf)
        if self.flag():
            self.export(source)

    def op_region(self):
        buf = self.buffer()
        if buf is None:
            return
        start, stop = self.index(len(buf)), self.index(len(buf))
        readonly = self.flag()
        self.note("buf.region(%r, %r, readonly=%r)" % (start, stop, readonly))
        self.export(buf.region(start, stop, readonly=readonly))

    def op_extract(self):
        buf = self.buffer()
        if buf is None:
            return
        start, end = self.index(len(buf)), self.index(len(buf))
        self.note("buf.extract_buffer_region(%r, %r)" % (start, end))
        buf.extract_buffer_region(start, end)

    def op_getitem(self):
        buf = self.buffer()
        if buf is None:
            return
        if self.flag():
            key = self.index(len(buf))
        else:
            key = slice(self.index(len(buf)), self.index(len(buf)),
                        self.choice([None, 1, 2, -1, 0, 3]))
        self.note("buf[%r]" % (key,))
        buf[key]

    def op_setitem(self):
        buf = self.buffer()
        if buf is None:
            return
        how = self.fdp.ConsumeIntInRange(0, 5)
        if self.flag():
            key = self.index(len(buf))
            value = self.fdp.ConsumeIntInRange(-2, 300) if how else self.hostile_int(7)
        else:
            key = slice(self.index(len(buf)), self.index(len(buf)),
                        self.choice([None, 1, 2, -1, 0]))
            if how <= 2:
                value = self.payload()
            elif how == 3:
                other = self.buffer()
                value = memoryview(other) if other is not None and not other.released else b""
            elif how == 4:
                value = buf
            else:
                value = bytearray(self.payload())
        self.note("buf[%r] = <%s>" % (key, type(value).__name__))
        buf[key] = value

    def op_release(self):
        buf = self.buffer()
        if buf is None:
            return
        self.note("buf.release()")
        buf.release()

    def op_drop(self):
        if self.flag() and self.buffers:
            self.note("drop a buffer")
            self.buffers.pop(self.fdp.ConsumeIntInRange(0, len(self.buffers) - 1))
        elif self.exports:
            self.note("drop an export")
            self.exports.pop(self.fdp.ConsumeIntInRange(0, len(self.exports) - 1))

    def op_end_export(self):
        if not self.exports:
            return
        handle = self.exports[self.fdp.ConsumeIntInRange(0, len(self.exports) - 1)]
        if isinstance(handle, memoryview):
            self.note("export.release()")
            handle.release()

    def op_with(self):
        buf = self.buffer()
        if buf is None:
            return
        how = self.fdp.ConsumeIntInRange(0, 3)
        self.note("with buf: (%d)" % how)
        with buf as entered:
            if how == 1:
                self.export(memoryview(entered))
            elif how == 2:
                raise FuzzStubError("inside with")
            elif how == 3:
                self.export(entered.region(0))
                raise FuzzStubError("inside with, exported")

    def op_view(self):
        buf = self.buffer()
        if buf is None:
            return
        what = self.fdp.ConsumeIntInRange(0, 5)
        text = self.choice(["a", "b", "v", ""]) if self.flag() else \
            self.fdp.ConsumeUnicode(self.small(4))
        name = self.hostile_name(text) if self.fdp.ConsumeIntInRange(0, 3) == 0 else text
        if what <= 1:
            kind = self.choice(["numpy", "memoryview", "ctypes", "nope"])
            options = {}
            if kind == "numpy" and self.flag():
                options["dtype"] = self.choice(["uint8", "int32", "float64", "V3", "bogus"])
            if kind == "numpy" and self.flag():
                options["shape"] = self.choice([None, (2, 2), (-1,), (0,), (1 << 20,), 3])
            if kind == "memoryview" and self.flag():
                options["format"] = self.choice(["B", "i", "d", "x", "@"])
            if kind == "memoryview" and self.flag():
                options["offset"] = self.index(len(buf))
            if kind == "ctypes" and self.flag():
                options["ctype"] = self.choice([None, ctypes.c_int, ctypes.c_char * 4,
                                                ctypes.c_double * 1000, 5])
            self.note("buf.create_view(%r, view_name=%r, **%r)" % (kind, name, options))
            view = buf.create_view(kind, view_name=name if self.flag() else None, **options)
            if self.flag():
                self.export(view)
        elif what == 2:
            self.note("buf.get_view(%r)" % (name,))
            view = buf.get_view(name)
            if self.flag():
                self.export(view)
        elif what == 3:
            self.note("buf.delete_view(%r)" % (name,))
            buf.delete_view(name)
        elif what == 4:
            self.note("buf.clone_view(%r)" % (name,))
            self.export(buf.clone_view(name))
        else:
            self.note("buf.view_names()")
            buf.view_names()

    def op_pickle(self):
        buf = self.buffer()
        if buf is None:
            return
        protocol = self.fdp.ConsumeIntInRange(0, pickle.HIGHEST_PROTOCOL)
        self.note("pickle.loads(pickle.dumps(buf, %d))" % protocol)
        self.keep(pickle.loads(pickle.dumps(buf, protocol)))

    def op_dlpack(self):
        buf = self.buffer()
        if buf is None:
            return
        how = self.fdp.ConsumeIntInRange(0, 3)
        if how == 0:
            self.note("numpy.from_dlpack(buf)")
            self.export(np.from_dlpack(buf))
            return
        if how == 1:
            self.note("buf.__dlpack_device__()")
            buf.__dlpack_device__()
            return
        kwargs = {}
        if self.flag():
            kwargs["max_version"] = self.choice([None, (1, 0), (0, 8), (2, 0), (1,), "x",
                                                 (1, 2 ** 70)])
        if self.flag():
            kwargs["dl_device"] = self.choice([None, (1, 0), (2, 0), (13, 0), (1, -1), ()])
        if self.flag():
            kwargs["copy"] = self.choice([None, True, False, 0])
        if self.flag():
            kwargs["stream"] = self.choice([None, 0, 1, -1, "s"])
        self.note("buf.__dlpack__(**%r)" % (kwargs,))
        capsule = buf.__dlpack__(**kwargs)
        if how == 3:
            self.export(capsule)

    def op_delayed(self):
        how = self.fdp.ConsumeIntInRange(0, 5)
        if how == 0:
            self.note("collect_delayed()")
            memmanager.collect_delayed()
        elif how == 1:
            ids = [b.identifier for b in self.buffers if not b.released][: self.small(3)]
            self.note("collect_delayed(<%d identifiers>)" % len(ids))
            memmanager.collect_delayed(ids)
        elif how == 2:
            self.note("collect_delayed(<buffers>)")
            memmanager.collect_delayed(list(self.buffers[: self.small(3)]))
        elif how == 3:
            arg = self.choice([[0], [-1], [2 ** 64], ["x"], 5, "abc", [None],
                               self.buffer(), [self.hostile_int(1)]])
            self.note("collect_delayed(%r)" % (arg,))
            memmanager.collect_delayed(arg)
        elif how == 4:
            self.note("get_delayed_gc_objects()")
            memmanager.get_delayed_gc_objects()
            Buffer.get_delayed_gc_objects()
        else:
            self.note("gc.collect()")
            gc.collect()

    def op_register(self):
        global PLUGINS
        if PLUGINS >= MAX_PLUGINS:
            return
        PLUGINS += 1
        raw = self.fdp.ConsumeUnicode(self.small(20))
        name = self.choice([raw, "PyAlloc", "", " ", "x" * 300, "\0", "a.b", raw + "\udc80"])
        impl = self.plugin() if self.flag() else self.choice([None, 5, object(), "str"])
        self.note("register_allocator(%r, %s)" % (name, type(impl).__name__))
        memmanager.register_allocator(name, impl)

    def plugin(self):
        fuzz = self
        mode = self.fdp.ConsumeIntInRange(0, 4)
        store = {}

        class Plugin:
            def malloc(self, num_items, item_size, init_byte, options):
                if mode == 1:
                    raise FuzzStubError("plugin malloc")
                block = ctypes.create_string_buffer(max(num_items * item_size, 1))
                store[ctypes.addressof(block)] = block
                if mode == 2:
                    fuzz.side_action(0)
                return block

            def get_buffer_address(self, handle):
                if mode == 3:
                    return 0
                return ctypes.addressof(handle)

            def free(self, address):
                if mode == 4:
                    raise FuzzStubError("plugin free")
                store.pop(address, None)

        return Plugin()

    def op_observe(self):
        how = self.fdp.ConsumeIntInRange(0, 3)
        self.note("observe %d" % how)
        if how == 0:
            memmanager.stats()
        elif how == 1:
            memmanager.live_buffers()
        elif how == 2:
            memmanager.report()
        else:
            buf = self.buffer()
            if buf is not None:
                (repr(buf), buf.released, buf.exports, buf.readonly, buf.delayed_gc,
                 buf.allocator, len(buf))
                buf.address, buf.nbytes, buf.identifier, buf.name, buf.itemsize
                buf.get_buffer(), buf.get_buffer_size(), buf.get_num_of_elements()

    def op_memoryview(self):
        buf = self.buffer()
        if buf is None:
            return
        self.note("memoryview(buf) / bytes(buf)")
        if self.flag():
            self.export(memoryview(buf))
        else:
            bytes(buf)

    def op_attach(self):
        shared = [b for b in self.buffers if b.allocator == "SharedMemory"]
        if not shared:
            return
        buf = self.choice(shared)
        n, s = self.sizes()
        if self.flag():
            n, s = buf.num_items, buf.itemsize
        readonly = self.flag()
        self.note("Buffer.attach(buf.name, %r, %r, readonly=%r)" % (n, s, readonly))
        self.keep(Buffer.attach(buf.name, n, s, readonly=readonly))

    def op_device(self):
        buf = self.buffer()
        if buf is None:
            return
        self.note("device calls")
        if self.flag():
            self.export(buf.device_view(self.small(2)))
        else:
            buf.device_movement(self.choice(["map", "unmap", "update", "x"]),
                                self.choice(["to", "from", "both", "y"]),
                                start=self.index(len(buf)))

    def op_adaptor(self):
        kind = self.choice(["Pool", "Limit", "Log"])
        upstream = self.allocator_name()
        options = self.options(upstream) if self.flag() else {}
        name = self.choice(ADAPTOR_NAMES)
        self.note("register_allocator(%r, %s(%r, ..., **%r))" % (name, kind, upstream, options))
        if kind == "Pool":
            sizes = {}
            if self.flag():
                sizes["initial_size"] = self.size()
            if self.flag():
                sizes["maximum_size"] = self.size()
            adaptor = memmanager.Pool(upstream, **sizes, **options)
        elif kind == "Limit":
            adaptor = memmanager.Limit(upstream, self.size(), **options)
        else:
            path = os.path.join(FILES, "log%d" % self.small(2))
            adaptor = memmanager.Log(upstream, path, **options)
        memmanager.register_allocator(name, adaptor)

    def op_adaptor_call(self):
        rows = memmanager._core._adaptors()
        if not rows:
            return
        name, kind, upstream, adaptor = self.choice(rows)
        self.note("%s %r: calls" % (kind, name))
        if kind == "Pool":
            adaptor.release_free()
        elif kind == "Log":
            adaptor.flush()
            if self.flag():
                self.replay(adaptor)
        repr(adaptor)
        memmanager.report()

    def replay(self, log):
        """Replay a log unless it has grown long: the files outlive the input
        (the adaptors are process-wide) and a replay through the Log that
        writes the file doubles it, so replaying every time, one input came
        to take minutes.  Replay's cost is linear in the log by design."""
        if os.path.getsize(log.path) > MAX_LOG_BYTES:
            self.note("  (log %s is %d bytes: not replayed)" % (log.path, os.path.getsize(log.path)))
            return
        memmanager.replay(log.path, allocator=self.allocator_name())

    def op_statistics(self):
        if self.scopes and self.flag():
            scope = self.scopes.pop() if self.flag() else self.choice(self.scopes)
            self.note("statistics: exit")
            try:
                scope.__exit__(None, None, None)
            except RuntimeError as exc:   # ended already, or not the innermost
                self.note("  -> RuntimeError: %s" % exc)
            return
        scope = memmanager.statistics()
        self.note("statistics: enter")
        scope.__enter__()
        self.scopes.append(scope)
        scope.allocations, scope["PyAlloc"], scope.allocators

    def op_flush(self):
        buf = self.buffer()
        if buf is not None:
            self.note("buf.flush()")
            buf.flush()

    def op_numpy(self):
        """NumPy's own arrays through a memmanager handler: made, resized,
        zeroed, kept past a change of handler, freed in any order."""
        name = self.allocator_name()
        options = self.options(name) if self.flag() else {}
        self.note("memmanager.numpy.allocator(%r, **%r)" % (name, options))
        chosen = mnp.allocator(name, **options)
        with chosen:
            for _ in range(self.small(4)):
                n = self.fdp.ConsumeIntInRange(0, 1 << 16)
                how = self.small(3)
                if how == 0:
                    array = np.empty(n, dtype=np.uint8)
                elif how == 1:
                    array = np.zeros(n, dtype=np.uint8)
                    assert not array.any(), "numpy.zeros under %r is not zero" % name
                elif how == 2:
                    array = np.full(n, 7, dtype=np.uint8)
                    array.resize(self.fdp.ConsumeIntInRange(0, 1 << 16), refcheck=False)
                else:
                    array = np.arange(n % 4096) * 2
                self.exports.append(array)
                if self.flag():
                    self.side_action(self.small(4))
        if len(self.exports) > MAX_EXPORTS:
            del self.exports[: len(self.exports) - MAX_EXPORTS]

    OPS = ["op_new", "op_new", "op_consume", "op_consume", "op_region", "op_extract",
           "op_getitem", "op_setitem", "op_release", "op_drop", "op_end_export", "op_with",
           "op_view", "op_view", "op_pickle", "op_dlpack", "op_delayed", "op_register",
           "op_observe", "op_memoryview", "op_attach", "op_device", "op_adaptor",
           "op_adaptor_call", "op_statistics", "op_flush", "op_numpy"]

    def run(self):
        for _ in range(MAX_OPS):
            if self.fdp.remaining_bytes() == 0:
                break
            op = getattr(self, self.choice(self.OPS))
            try:
                op()
            except EXPECTED as exc:
                self.note("  -> %s: %s" % (type(exc).__name__, exc))


PLUGINS = 0
BASELINE = None
UNRAISABLE = []


def unraisable(hook_args):
    """Death stubs and plug-in frees that raise are reported here: ours are
    expected, anything else (a SystemError, say) is a crash."""
    if not isinstance(hook_args.exc_value, EXPECTED):
        UNRAISABLE.append("%s: %s (in %r)" % (hook_args.exc_type.__name__,
                                              hook_args.exc_value, hook_args.object))


sys.unraisablehook = unraisable


def shm_names():
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith(SHM_PREFIXES)}
    except OSError:
        return set()


def unlink_shm(names):
    for name in names:
        try:
            os.unlink(os.path.join("/dev/shm", name))
        except OSError:
            pass


def live_count():
    return memmanager.stats()["total"]["live_buffers"]


def run_one(data):
    fuzz = Fuzz(data)
    try:
        fuzz.run()
    finally:
        while fuzz.buffers:
            try:
                fuzz.buffers.pop().release()
            except EXPECTED:
                pass
        fuzz.exports.clear()
        fuzz.arenas.clear()
        while fuzz.scopes:
            scope = fuzz.scopes.pop()
            try:
                scope.__exit__(None, None, None)
            except RuntimeError:   # exited already, out of order on purpose
                pass


def TestOneInput(data):
    global BASELINE
    if BASELINE is None:
        gc.collect()
        # What exists now (the interpreter, NumPy, atheris) is never garbage:
        # out of the collector's sight, a full collection per input is cheap.
        gc.freeze()
        BASELINE = live_count()
    run_one(data)
    # Everything is gone now (the pool, the exports); the pins go, and the
    # registry must be where it was.
    memmanager.collect_delayed()
    gc.collect()
    if UNRAISABLE:
        raise AssertionError("unexpected unraisable exceptions: %r" % UNRAISABLE)
    left = live_count()
    names = shm_names()
    if names:
        unlink_shm(names)
    if left != BASELINE:
        rows, before = memmanager.live_buffers(), BASELINE
        BASELINE = left
        raise AssertionError("%d buffers live after the input (%d before): %r"
                             % (left, before, rows))
    if names:
        raise AssertionError("shared memory names left in /dev/shm: %r" % sorted(names))


def replay(paths):
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        print("replaying %s (%d bytes)" % (path, len(data)), flush=True)
        TestOneInput(data)
    print("replayed %d inputs, no crash" % len(paths))


def main():
    args = [a for a in sys.argv[1:] if a not in ("--replay", "-v")]
    if atheris is None or "--replay" in sys.argv:
        if atheris is None:
            sys.exit("atheris is needed even for --replay (FuzzedDataProvider)")
        paths = []
        for arg in args:
            if os.path.isdir(arg):
                paths += sorted(os.path.join(arg, n) for n in os.listdir(arg))
            else:
                paths.append(arg)
        replay(paths)
        return
    # libFuzzer runs argv[0] again for -minimize_crash and -merge: the
    # Makefile's wrapper script (build/fuzz/fuzz-api), when there is one.
    argv0 = os.environ.get("FUZZ_ARGV0", sys.argv[0])
    atheris.Setup([argv0] + args, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
