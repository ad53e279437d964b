/*
 * consume.c -- Buffer.consume(): adopting memory that exists already.
 *
 * Three ownership modes (docs/ownership.md):
 *
 *   source                          allocator  the buffer...
 *   ------------------------------  ---------  ----------------------------
 *   an object with the buffer       PyAlloc    holds an export of the source
 *   protocol                                   (zero-copy), or copies it
 *   an address (int, one-element    CMalloc    owns the block: realloc()s it
 *   list, ctypes/cffi pointer)                 to n*s bytes, free()s it once
 *   an address                      Borrowed   owns nothing; keeps owner= alive
 *
 * An address needs allocator= (CMalloc or Borrowed): nothing can tell a
 * malloc'd block from any other int, so none is assumed.
 *
 * The order of the steps is the point: validate, check the overlap, take
 * ownership, register, and only then zero the caller's holder (which may
 * run Python code: a ctypes subclass, cffi's ffi.gc detach).  A refused
 * consume leaves the caller's block, holder and existing buffers exactly as
 * they were; code run by the holder's reset finds the new buffer complete
 * and registered (releasing it or consuming the address again is then an
 * ordinary release or OverlapError).  Foreign pointer objects (ctypes,
 * cffi) are turned into an address by a small Python resolver installed by
 * memmanager/__init__.py (memmanager/_address.py).
 *
 * Non-owning buffers (zero-copy, Borrowed) are registered as shared
 * regions (core/registry.h): they may overlap each other, and an owned
 * region only when they hold an export of the Buffer that owns it.
 *
 * The collector: a zero-copy buffer holds an export of its source.  The
 * collector may tp_clear the objects of a cycle in any order, and
 * CPython's memoryview drops its memory in tp_clear even while exported
 * (and then crashes when the export is given back).  So the export the
 * buffer holds is never handed to the collector unless it is a Buffer's
 * (whose tp_clear keeps the memory): see source_view_may_be_visited().
 *
 * Layer: interop.  May call buffer/, allocators/ and core/.
 */
#include "interop/interop.h"

#include <string.h>

static int source_view_may_be_visited(mm_state *st, PyObject *source,
                                      PyObject *exporter);
static int register_region(mm_state *st, BufferObject *self);

/* What the source turned out to be. */
typedef struct {
    uintptr_t address;       /* address sources */
    PyObject *reset;         /* callable zeroing a mutable holder, or NULL */
    PyObject *not_ownable;   /* str: why ownership cannot be taken, or NULL */
    PyObject *list_holder;   /* a one-element list holding the address (strong) */
} address_source;

/* ------------------------------------------------------------------ */
/* Recognising the source                                              */
/* ------------------------------------------------------------------ */

static int address_from_int(PyObject *value, uintptr_t *out)
{
#if SIZEOF_VOID_P <= SIZEOF_LONG
    /* The common case: one conversion (the unsigned long one walks the
     * digits; the long long one goes through a byte array). */
    if (PyLong_CheckExact(value)) {
        unsigned long address = PyLong_AsUnsignedLong(value);
        if (address != 0 && (address != (unsigned long)-1 || !PyErr_Occurred())) {
            *out = (uintptr_t)address;
            return 0;
        }
        PyErr_Clear();   /* negative, zero or too large: the precise error below */
    }
#endif
    if (PyBool_Check(value) || !PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "an address must be an int, not %.100s",
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    if (mm_long_sign(value) <= 0) {
        PyErr_Format(PyExc_ValueError,
                     "an address must be a positive int, got %R", value);
        return -1;
    }
    void *ptr = PyLong_AsVoidPtr(value);
    if (ptr == NULL && PyErr_Occurred()) {
        return -1;
    }
    *out = (uintptr_t)ptr;
    return 0;
}

/* 1: an address source (filled), 0: not one, -1: error. */
static int recognise_address(mm_state *st, PyObject *source, address_source *out)
{
    if (PyLong_Check(source) && !PyBool_Check(source)) {
        return address_from_int(source, &out->address) < 0 ? -1 : 1;
    }
    if (PyList_Check(source)) {
        if (PyList_GET_SIZE(source) != 1) {
            PyErr_Format(PyExc_ValueError,
                         "an address holder list must have exactly one item, "
                         "not %zd", PyList_GET_SIZE(source));
            return -1;
        }
        if (address_from_int(PyList_GET_ITEM(source, 0), &out->address) < 0) {
            return -1;
        }
        out->list_holder = Py_NewRef(source);
        return 1;
    }
    if (st->address_resolver == NULL || PyBytes_Check(source) ||
        PyByteArray_Check(source) || PyMemoryView_Check(source)) {
        return 0;
    }
    PyObject *resolved = PyObject_CallOneArg(st->address_resolver, source);
    if (resolved == NULL) {
        return -1;
    }
    if (resolved == Py_None) {
        Py_DECREF(resolved);
        return 0;
    }
    PyObject *address = NULL, *reset = NULL, *not_ownable = Py_None;
    int rc = -1;
    if (!PyTuple_Check(resolved)) {
        PyErr_SetString(PyExc_TypeError, "the address resolver must return a tuple");
    }
    else if (PyArg_ParseTuple(resolved, "OO|O", &address, &reset, &not_ownable) &&
             address_from_int(address, &out->address) == 0) {
        out->reset = reset == Py_None ? NULL : Py_NewRef(reset);
        out->not_ownable = not_ownable == Py_None ? NULL : Py_NewRef(not_ownable);
        rc = 1;
    }
    Py_DECREF(resolved);
    return rc;
}

/* The buffer owns the block now: the caller's holder forgets it.  Runs
 * after registration (the reset is Python code).  A list is zeroed only if
 * it still holds that address: code that ran since (a finalizer) may have
 * put another one there, which is not ours to drop.  PyList_SetItem, not
 * __setitem__: a list subclass runs nothing here. */
static void clear_holder(address_source *src)
{
    if (src->list_holder != NULL && PyList_GET_SIZE(src->list_holder) == 1) {
        PyObject *item = PyList_GET_ITEM(src->list_holder, 0);
        if (PyLong_Check(item) && !PyBool_Check(item) && mm_long_sign(item) > 0 &&
            (uintptr_t)PyLong_AsVoidPtr(item) == src->address) {
            PyObject *zero = PyLong_FromLong(0);
            if (zero == NULL || PyList_SetItem(src->list_holder, 0, zero) < 0) {
                PyErr_WriteUnraisable(src->list_holder);
            }
        }
        PyErr_Clear();   /* an int too large for a pointer is not ours either */
    }
    if (src->reset != NULL) {
        PyObject *result = PyObject_CallNoArgs(src->reset);
        if (result == NULL) {
            PyErr_WriteUnraisable(src->reset);
        }
        Py_XDECREF(result);
    }
}

/* ------------------------------------------------------------------ */
/* Adopting an address (CMalloc and Borrowed)                          */
/* ------------------------------------------------------------------ */

static int check_address_options(AllocatorObject *alloc, buffer_args *a, int copy,
                                 PyObject *src_not_ownable)
{
    if (copy) {
        PyErr_SetString(PyExc_ValueError,
                        "copy=True needs a source with the buffer protocol, "
                        "not an address");
        return -1;
    }
    if (a->owner != NULL && !alloc->consume_only) {
        PyErr_Format(PyExc_ValueError,
                     "owner= is only for allocator='Borrowed', not %R", alloc->name);
        return -1;
    }
    if (src_not_ownable != NULL && !alloc->consume_only) {
        PyErr_Format(PyExc_TypeError,
                     "Allocator %U cannot take this memory over: %S (use "
                     "allocator='Borrowed' with owner= the object that owns it)",
                     alloc->name, src_not_ownable);
        return -1;
    }
    if (!alloc->consume_only && (alloc->uses_pymem || alloc->vtable == NULL ||
                                 alloc->vtable->realloc == NULL)) {
        PyErr_Format(PyExc_TypeError,
                     "Allocator %U cannot adopt an address: use 'CMalloc' for "
                     "memory from malloc or 'Borrowed' for memory owned elsewhere",
                     alloc->name);
        return -1;
    }
    return mm_allocator_check_options(alloc, a->extra);
}

/* Borrowed with owner= a Buffer: the new buffer holds an export of it, so
 * the owner cannot be freed under it (DESIGN section 5), and may overlap
 * its region.  The export is made here, not through getbuffer: a device
 * buffer's memory may be wrapped too. */
static int export_owner_buffer(mm_state *st, BufferObject *self, PyObject *owner)
{
    if (!PyObject_TypeCheck(owner, st->buffer_type)) {
        return 0;
    }
    BufferObject *ob = (BufferObject *)owner;
    if (ob->released) {
        PyErr_SetString(PyExc_ValueError, "owner= is a released buffer");
        return -1;
    }
    if (PyBuffer_FillInfo(&self->source_view, owner, ob->data, ob->nbytes,
                          1, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    ob->exports++;     /* given back by PyBuffer_Release (mm_buffer_releasebuffer) */
    self->holds_source_view = 1;
    self->source_view_visible = 1;    /* a Buffer: see source_view_may_be_visited */
    return 0;
}

/* Takes the block over: realloc to size (CMalloc) or wrap it (Borrowed).
 * The overlap was checked by the caller; nothing here runs Python code. */
static int take_address(mm_state *st, BufferObject *self, AllocatorObject *alloc,
                        uintptr_t address, buffer_args *a)
{
    const MemManagerAllocator *vt = alloc->vtable;
    if (alloc->consume_only) {
        if (a->owner != NULL && export_owner_buffer(st, self, a->owner) < 0) {
            return -1;
        }
        self->data = (char *)address;
        self->owns_memory = 0;
        if (!self->holds_source_view) {   /* else the export holds the owner */
            self->source = Py_XNewRef(a->owner);
        }
        return 0;
    }
    void *moved = vt->realloc(vt->ctx, (void *)address, 0, (size_t)self->nbytes);
    if (moved == NULL) {
        PyErr_NoMemory();   /* the caller's block is untouched */
        return -1;
    }
    mm_block block = {moved, (size_t)self->nbytes, NULL, 0};
    mm_buffer_adopt_block(self, alloc, &block);
    mm_allocator_track(alloc, &block);
    return 0;
}

static PyObject *consume_address(mm_state *st, PyTypeObject *cls,
                                 address_source *src, buffer_args *a,
                                 AllocatorObject *alloc, int copy, int delayed_gc)
{
    region_info other;
    uintptr_t end = src->address + (uintptr_t)(a->num_items * a->item_size);
    if (check_address_options(alloc, a, copy, src->not_ownable) < 0) {
        return NULL;
    }
    if (end < src->address) {
        PyErr_SetString(PyExc_OverflowError, "address + size wraps around");
        return NULL;
    }
    /* The object first: its allocation may start a collection, whose
     * finalizers may register memory.  From the overlap check to the
     * realloc nothing runs Python code, so the check still holds. */
    BufferObject *self = mm_buffer_alloc_object(cls, a);
    if (self == NULL) {
        return NULL;
    }
    self->released = 1;            /* nothing to free until take_address */
    self->allocator = (AllocatorObject *)Py_NewRef(alloc);
    /* Before ownership is taken: realloc may move or free the block, so
     * no live region, owned or not, may lie in it.  (Borrowed takes
     * nothing; its insertion below checks by itself.) */
    if (!alloc->consume_only &&
        mm_region_registry_find_any_overlap(src->address, end, &other)) {
        mm_raise_overlap(st, src->address, end, &other);
        Py_DECREF(self);
        return NULL;
    }
    if (take_address(st, self, alloc, src->address, a) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->released = 0;
    if (register_region(st, self) < 0 ||
        mm_buffer_finish_construction(st, self, a->death_stub, delayed_gc) < 0) {
        /* Only a Borrowed insertion can be refused here (no Python code
         * ran since the owned check above).  A CMalloc block that is
         * registered but cannot be pinned (MemoryError) is freed now, so
         * the holder must forget it as well. */
        int owned = self->owns_memory;
        Py_DECREF(self);           /* frees what we own */
        if (owned) {
            clear_holder(src);
        }
        return NULL;
    }
    if (self->owns_memory) {
        /* Last: ownership is ours and the buffer is complete, whatever the
         * reset's Python code does with it (release, consume again). */
        clear_holder(src);
    }
    return (PyObject *)self;
}

/* ------------------------------------------------------------------ */
/* Adopting a buffer-protocol object (PyAlloc)                         */
/* ------------------------------------------------------------------ */

/* A writable export failed: when a read-only one works, the reason was
 * writability, reported as BufferError whatever the exporter raised. */
static int refuse_read_only(PyObject *source, int flags)
{
    Py_buffer probe;
    mm_saved_error raised;
    mm_err_save(&raised);
    if (PyObject_GetBuffer(source, &probe, flags) < 0) {
        PyErr_Clear();
        mm_err_restore(&raised);
        return -1;
    }
    PyBuffer_Release(&probe);
    mm_err_discard(&raised);
    PyErr_Format(PyExc_BufferError,
                 "readonly=False, but the %.100s source is read-only",
                 Py_TYPE(source)->tp_name);
    return -1;
}

/* Export of the source: writable when possible, as asked by readonly=
 * (-1: follow the source, 0: must be writable, 1: read-only). */
static int export_source(PyObject *source, int readonly, Py_buffer *view)
{
    int flags = PyBUF_ANY_CONTIGUOUS;
    if (readonly == 1) {
        return PyObject_GetBuffer(source, view, flags);
    }
    if (PyObject_GetBuffer(source, view, flags | PyBUF_WRITABLE) == 0) {
        return 0;
    }
    if (readonly == 0) {
        return refuse_read_only(source, flags);
    }
    /* Exporters refuse a writable view with different exceptions (NumPy
     * raises ValueError): whatever it was, ask again for a read-only one;
     * if that fails too, its error is the one the caller sees. */
    PyErr_Clear();
    return PyObject_GetBuffer(source, view, flags);
}

static int check_buffer_options(mm_state *st, AllocatorObject *alloc, buffer_args *a)
{
    if (alloc != (AllocatorObject *)st->default_allocator) {
        PyErr_Format(PyExc_TypeError,
                     "Allocator %U adopts addresses; an object with the buffer "
                     "protocol is adopted by 'PyAlloc'", alloc->name);
        return -1;
    }
    if (a->owner != NULL) {
        PyErr_SetString(PyExc_ValueError, "owner= is only for allocator='Borrowed'");
        return -1;
    }
    return mm_allocator_check_options(alloc, a->extra);
}

static int fill_copy(BufferObject *self, AllocatorObject *alloc, Py_buffer *view)
{
    mm_request req;
    mm_block block;
    if (mm_allocator_parse_options(alloc, NULL, self->num_items, self->item_size,
                                MM_INIT_UNINITIALISED, &req) < 0 ||
        mm_allocator_alloc_block(alloc, &req, (size_t)self->nbytes, MM_INIT_UNINITIALISED,
                              &block) < 0) {
        return -1;
    }
    Py_ssize_t copied = view->len < self->nbytes ? view->len : self->nbytes;
    memcpy(block.address, view->buf, (size_t)copied);
    memset(block.address + copied, 0, (size_t)(self->nbytes - copied));
    mm_buffer_adopt_block(self, alloc, &block);
    return 0;
}

static PyObject *consume_object(mm_state *st, PyTypeObject *cls, PyObject *source,
                                buffer_args *a, AllocatorObject *alloc,
                                int copy, int delayed_gc)
{
    Py_buffer view;
    int readonly = a->readonly == NULL || a->readonly == Py_None
                   ? -1 : PyObject_IsTrue(a->readonly);
    if (readonly == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (check_buffer_options(st, alloc, a) < 0 ||
        export_source(source, copy ? 1 : readonly, &view) < 0) {
        return NULL;
    }
    Py_ssize_t nbytes = a->num_items * a->item_size;
    if (!copy && nbytes > view.len) {
        PyErr_Format(PyExc_ValueError,
                     "the source has %zd bytes, %zd are needed "
                     "(copy=True copies and zero-fills the rest)", view.len, nbytes);
        PyBuffer_Release(&view);
        return NULL;
    }
    BufferObject *self = mm_buffer_alloc_object(cls, a);
    if (self == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    self->allocator = (AllocatorObject *)Py_NewRef(alloc);
    if (copy) {
        int failed = fill_copy(self, alloc, &view);
        PyBuffer_Release(&view);
        self->readonly = readonly == 1;
        if (failed) {
            self->released = 1;
            goto error;
        }
    }
    else {
        self->data = view.buf;
        self->source_view = view;
        self->holds_source_view = 1;
        self->source_view_visible = source_view_may_be_visited(st, source, view.obj);
        self->readonly = (unsigned char)(view.readonly || readonly == 1);
    }
    if (register_region(st, self) < 0 ||
        mm_buffer_finish_construction(st, self, a->death_stub, delayed_gc) < 0) {
        goto error;
    }
    return (PyObject *)self;
error:
    Py_DECREF(self);   /* gives the export back / frees the copy */
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Adopting through a plug-in that has consume()                       */
/* ------------------------------------------------------------------ */

/* The source goes to the plug-in as it is; the plug-in's handle and
 * address are validated by mm_allocator_consume_block. */
static PyObject *consume_with_plugin(mm_state *st, PyTypeObject *cls,
                                     PyObject *source, buffer_args *a,
                                     AllocatorObject *alloc, int copy, int delayed_gc)
{
    mm_block block;
    region_info other;
    size_t nbytes = (size_t)(a->num_items * a->item_size);
    int readonly = mm_parse_flag(a->readonly == Py_None ? NULL : a->readonly, 0);
    if (readonly < 0) {
        return NULL;
    }
    if (copy || a->owner != NULL) {
        PyErr_Format(PyExc_ValueError,
                     "%s is not for allocator %R: its plug-in adopts the source",
                     copy ? "copy=True" : "owner=", alloc->name);
        return NULL;
    }
    /* An address that is already managed is refused before the plug-in
     * sees it, as for CMalloc. */
    if (PyLong_Check(source) && !PyBool_Check(source) && mm_long_sign(source) > 0) {
        uintptr_t start = (uintptr_t)PyLong_AsVoidPtr(source);
        if (start == 0 && PyErr_Occurred()) {
            PyErr_Clear();
        }
        else if (start <= UINTPTR_MAX - nbytes &&
                 mm_region_registry_find_any_overlap(start, start + nbytes, &other)) {
            mm_raise_overlap(st, start, start + nbytes, &other);
            return NULL;
        }
    }
    /* The object first: its allocation may start a collection.  After the
     * plug-in's consume (which refuses an address already owned) nothing
     * runs Python code until the block is registered. */
    BufferObject *self = mm_buffer_alloc_object(cls, a);
    if (self == NULL) {
        return NULL;
    }
    self->released = 1;            /* nothing to free until adopted */
    self->allocator = (AllocatorObject *)Py_NewRef(alloc);
    if (mm_allocator_consume_block(alloc, source, nbytes, a->extra, &block) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->readonly = (unsigned char)readonly;
    mm_buffer_adopt_block(self, alloc, &block);
    if (register_region(st, self) < 0 ||
        mm_buffer_finish_construction(st, self, a->death_stub, delayed_gc) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* ------------------------------------------------------------------ */
/* Entry point                                                         */
/* ------------------------------------------------------------------ */

/* The allocator named by allocator=, or NULL (and no error) when none
 * was named: the source decides then.  A new reference: adoption can run
 * Python code (an exporter, a plug-in), which could re-register the name
 * and drop the registry's reference. */
static AllocatorObject *named_allocator(mm_state *st, buffer_args *a)
{
    if (a->allocator == NULL || a->allocator == Py_None) {
        return NULL;
    }
    return (AllocatorObject *)Py_XNewRef(mm_allocator_lookup(st, a->allocator));
}

PyObject *mm_buffer_consume(PyObject *cls, PyObject *const *args,
                         Py_ssize_t nargs, PyObject *kwnames)
{
    buffer_args a = {0};
    address_source src = {0};
    AllocatorObject *alloc = NULL;
    PyObject *result = NULL;
    int copy, delayed_gc;
    mm_state *st = mm_state_from_type((PyTypeObject *)cls);
    if (st == NULL) {
        return NULL;
    }
    if (nargs < 3 || nargs > 4) {
        PyErr_Format(PyExc_TypeError,
                     "consume() takes source, num_items, item_size and an "
                     "optional options mapping (%zd positional arguments given)",
                     nargs);
        return NULL;
    }
    PyObject *source = args[0];
    if (mm_parse_sizes(args[1], args[2], &a) < 0 ||
        mm_parse_options(st, nargs == 4 ? args[3] : NULL, args + nargs, kwnames, 1, &a) < 0 ||
        (copy = mm_parse_flag(a.copy, 0)) < 0 ||
        (delayed_gc = mm_parse_flag(a.delayed_gc, 1)) < 0) {
        goto done;
    }
    if (a.init_value != NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "consume() takes no init_value: adopted memory keeps its contents");
        goto done;
    }
    alloc = named_allocator(st, &a);
    if (alloc == NULL && PyErr_Occurred()) {
        goto done;
    }
    if (alloc != NULL && alloc->ops->consume != NULL) {
        result = consume_with_plugin(st, (PyTypeObject *)cls, source, &a,
                                     alloc, copy, delayed_gc);
        goto done;
    }
    int kind = recognise_address(st, source, &src);
    if (kind < 0) {
        goto done;
    }
    if (kind == 1 && alloc == NULL) {
        PyErr_Format(PyExc_TypeError,
                     "consume() of an address needs allocator=: 'CMalloc' to take "
                     "over a block from malloc (it is realloc'd and freed), or "
                     "'Borrowed' to wrap memory owned elsewhere (nothing can tell "
                     "a malloc'd block from any other %.100s)",
                     Py_TYPE(source)->tp_name);
        goto done;
    }
    if (kind == 0 && !PyObject_CheckBuffer(source)) {
        PyErr_Format(PyExc_TypeError,
                     "consume() needs an object with the buffer protocol or an "
                     "address (int, one-element list, ctypes or cffi pointer), "
                     "not %.100s", Py_TYPE(source)->tp_name);
        goto done;
    }
    if (alloc == NULL) {
        alloc = (AllocatorObject *)Py_NewRef(st->default_allocator);
    }
    result = kind == 1
        ? consume_address(st, (PyTypeObject *)cls, &src, &a, alloc, copy, delayed_gc)
        : consume_object(st, (PyTypeObject *)cls, source, &a, alloc, copy, delayed_gc);
done:
    Py_XDECREF(alloc);
    Py_XDECREF(src.reset);
    Py_XDECREF(src.not_ownable);
    Py_XDECREF(src.list_holder);
    mm_buffer_args_clear(&a);
    return result;
}

/* ------------------------------------------------------------------ */
/* The export a non-owning buffer holds (registry and collector)       */
/* ------------------------------------------------------------------ */

/* The Buffer that owns the memory a non-owning buffer shows
 * through the export it holds, or NULL (self inherits the read-only and
 * host-inaccessible marks of every Buffer on the way): the chain of exports (a Buffer
 * exported by a zero-copy or Borrowed buffer, a memoryview's base) is
 * followed to the Buffer that owns the memory.  Only objects whose type
 * is checked are followed; nothing here runs Python code. */
/* numpy.ndarray itself, a static type: its `base` is a C getter, so
 * reading it runs no Python code (a subclass could override it). */
static int is_numpy_array(PyObject *obj)
{
    PyTypeObject *type = Py_TYPE(obj);
    return !(type->tp_flags & Py_TPFLAGS_HEAPTYPE) &&
           strcmp(type->tp_name, "numpy.ndarray") == 0;
}

/* The array's base, borrowed (the array holds it), or NULL. */
static PyObject *numpy_base(PyObject *array)
{
    /* Interned: a fresh name each call would be kept, one per call, by
     * the type attribute cache. */
    PyObject *name = PyUnicode_InternFromString("base");
    PyObject *base = name ? PyObject_GetAttr(array, name) : NULL;
    Py_XDECREF(name);
    if (base == NULL) {
        PyErr_Clear();
        return NULL;
    }
    Py_DECREF(base);
    return base == Py_None ? NULL : base;
}

static BufferObject *consume_exporter(mm_state *st, BufferObject *self)
{
    PyObject *obj = self->holds_source_view ? self->source_view.obj : NULL;
    for (int depth = 0; obj != NULL && depth < 64; depth++) {
        if (PyMemoryView_Check(obj)) {
            obj = PyMemoryView_GET_BASE(obj);
            continue;
        }
        PyObject *held = mm_view_export_exporter(st, obj);
        if (held != NULL) {   /* create_view("numpy")'s base */
            obj = held;
            continue;
        }
        if (is_numpy_array(obj)) {
            obj = numpy_base(obj);
            continue;
        }
        if (!PyObject_TypeCheck(obj, st->buffer_type)) {
            return NULL;
        }
        BufferObject *b = (BufferObject *)obj;
        if (b->released) {
            return NULL;
        }
        /* Every Buffer on the way passes on where its memory is and
         * whether it may be written (a view of device memory is device
         * memory; a view of read-only memory, bytes or a PROT_READ
         * mapping, is read-only). */
        self->host_inaccessible |= b->host_inaccessible;
        self->readonly |= b->readonly;
        if (b->owns_memory) {
            return b;
        }
        obj = b->holds_source_view ? b->source_view.obj : NULL;
    }
    return NULL;
}

/* mm_buffer_register_region for a buffer that frees nothing: a shared region,
 * which may overlap the region of the Buffer whose export it holds. */
static int register_shared_region(mm_state *st, BufferObject *self)
{
    region_info other;
    uintptr_t start = (uintptr_t)self->data;
    uintptr_t end = start + (uintptr_t)self->nbytes;
    BufferObject *exporter = consume_exporter(st, self);
    if (mm_region_registry_insert_shared(&self->node, start, end, self->identifier,
                                      self->allocator->stats_slot,
                                      exporter ? &exporter->node : NULL, &other) != 0) {
        mm_raise_overlap(st, start, end, &other);
        return -1;
    }
    if (MM_UNLIKELY(self->allocator->debug)) {
        mm_debug_check_registry("an insert");
    }
    return 0;
}

/* The collector clears the objects of a garbage cycle in any order, each
 * by its tp_clear.  CPython's memoryview drops its memory in tp_clear even
 * while it is exported, and then crashes when that export is given back
 * (memory_dealloc on a cleared view); the wrapper that 3.12 puts around a
 * Python class's __buffer__ holds such a memoryview too.  So the collector
 * is shown the exporter of a held export only when it is the object
 * consume() was given and not a memoryview, or a Buffer (whose tp_clear
 * keeps the memory).  Any other exporter looks referenced from outside the
 * garbage: the collector never clears it while this buffer holds it, and
 * the buffer gives the export back when it dies.  (A cycle that runs
 * through such an exporter back to the buffer is therefore not collected:
 * rare, and a leak rather than a crash.) */
static int source_view_may_be_visited(mm_state *st, PyObject *source, PyObject *exporter)
{
    if (exporter == NULL) {
        return 0;
    }
    if (PyObject_TypeCheck(exporter, st->buffer_type)) {
        return 1;
    }
    return exporter == source && !PyMemoryView_Check(exporter);
}

/* The region of a new buffer: owned as buffer.c registers it, or shared. */
static int register_region(mm_state *st, BufferObject *self)
{
    return self->owns_memory ? mm_buffer_register_region(st, self)
                             : register_shared_region(st, self);
}
