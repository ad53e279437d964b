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
 * The order of the steps is the point: everything is validated and the
 * overlap is checked *before* ownership is taken, so a refused consume
 * leaves the caller's block, holder and existing buffers exactly as they
 * were.  Foreign pointer objects (ctypes, cffi) are turned into an address
 * by a small Python resolver installed by memmanager/__init__.py.
 */
#include "memmanager.h"

#include <string.h>

/* What the source turned out to be. */
typedef struct {
    uintptr_t address;       /* address sources */
    PyObject *reset;         /* callable zeroing a mutable holder, or NULL */
    PyObject *list_holder;   /* a one-element list holding the address */
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
    if (_PyLong_Sign(value) <= 0) {
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
        out->list_holder = source;
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
    PyObject *address = NULL, *reset = NULL;
    int rc = -1;
    if (PyArg_ParseTuple(resolved, "OO", &address, &reset) &&
        address_from_int(address, &out->address) == 0) {
        out->reset = reset == Py_None ? NULL : Py_NewRef(reset);
        rc = 1;
    }
    Py_DECREF(resolved);
    return rc;
}

static void clear_holder(address_source *src)
{
    if (src->list_holder != NULL) {
        PyObject *zero = PyLong_FromLong(0);
        if (zero == NULL || PyList_SetItem(src->list_holder, 0, zero) < 0) {
            PyErr_WriteUnraisable(src->list_holder);
        }
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

static int check_address_options(AllocatorObject *alloc, buffer_args *a, int copy)
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
    if (!alloc->consume_only && (alloc->uses_pymem || alloc->vtable == NULL ||
                                 alloc->vtable->realloc == NULL)) {
        PyErr_Format(PyExc_TypeError,
                     "Allocator %U cannot adopt an address: use 'CMalloc' for "
                     "memory from malloc or 'Borrowed' for memory owned elsewhere",
                     alloc->name);
        return -1;
    }
    return allocator_check_options(alloc, a->extra);
}

/* Takes the block over: realloc to size (CMalloc) or wrap it (Borrowed).
 * The overlap was checked by the caller. */
static int take_address(BufferObject *self, AllocatorObject *alloc,
                        uintptr_t address, buffer_args *a)
{
    const MemManagerAllocator *vt = alloc->vtable;
    if (alloc->consume_only) {
        self->data = (char *)address;
        self->owns_memory = 0;
        self->source = Py_XNewRef(a->owner);
        return 0;
    }
    void *moved = vt->realloc(vt->ctx, (void *)address, 0, (size_t)self->nbytes);
    if (moved == NULL) {
        PyErr_NoMemory();   /* the caller's block is untouched */
        return -1;
    }
    mm_block block = {moved, (size_t)self->nbytes, NULL, 0};
    buffer_adopt_block(self, alloc, &block);
    allocator_track(alloc, &block);
    return 0;
}

static PyObject *consume_address(mm_state *st, PyTypeObject *cls,
                                 address_source *src, buffer_args *a,
                                 AllocatorObject *alloc, int copy, int delayed_gc)
{
    region_info other;
    uintptr_t end = src->address + (uintptr_t)(a->num_items * a->item_size);
    if (check_address_options(alloc, a, copy) < 0) {
        return NULL;
    }
    if (end < src->address) {
        PyErr_SetString(PyExc_OverflowError, "address + size wraps around");
        return NULL;
    }
    /* The object first: its allocation may start a collection, whose
     * finalizers may register memory.  From the overlap check to the
     * realloc nothing runs Python code, so the check still holds. */
    BufferObject *self = buffer_alloc_object(cls, a);
    if (self == NULL) {
        return NULL;
    }
    self->released = 1;            /* nothing to free until take_address */
    self->allocator = (AllocatorObject *)Py_NewRef(alloc);
    /* Before ownership is taken: realloc may move or free the block.
     * (Borrowed takes nothing; its insertion below checks by itself.) */
    if (!alloc->consume_only &&
        region_registry_find_overlap(src->address, end, &other)) {
        raise_overlap(st, src->address, end, &other);
        Py_DECREF(self);
        return NULL;
    }
    if (take_address(self, alloc, src->address, a) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->released = 0;
    if (self->owns_memory) {
        clear_holder(src);         /* ownership is ours from here on */
    }
    if (buffer_register_region(st, self) < 0 ||
        buffer_finish_construction(st, self, a->death_stub, delayed_gc) < 0) {
        Py_DECREF(self);           /* frees what we own */
        return NULL;
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
    PyObject *type, *value, *tb;
    Py_buffer probe;
    PyErr_Fetch(&type, &value, &tb);
    if (PyObject_GetBuffer(source, &probe, flags) < 0) {
        PyErr_Clear();
        PyErr_Restore(type, value, tb);
        return -1;
    }
    PyBuffer_Release(&probe);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
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
    return allocator_check_options(alloc, a->extra);
}

static int fill_copy(BufferObject *self, AllocatorObject *alloc, Py_buffer *view)
{
    mm_request req;
    mm_block block;
    if (allocator_parse_options(alloc, NULL, self->num_items, self->item_size,
                                INIT_UNINITIALISED, &req) < 0 ||
        allocator_alloc_block(alloc, &req, (size_t)self->nbytes, INIT_UNINITIALISED,
                              &block) < 0) {
        return -1;
    }
    Py_ssize_t copied = view->len < self->nbytes ? view->len : self->nbytes;
    memcpy(block.address, view->buf, (size_t)copied);
    memset(block.address + copied, 0, (size_t)(self->nbytes - copied));
    buffer_adopt_block(self, alloc, &block);
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
    BufferObject *self = buffer_alloc_object(cls, a);
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
        self->readonly = (unsigned char)(view.readonly || readonly == 1);
    }
    if (buffer_register_region(st, self) < 0 ||
        buffer_finish_construction(st, self, a->death_stub, delayed_gc) < 0) {
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
 * address are validated by allocator_consume_block. */
static PyObject *consume_with_plugin(mm_state *st, PyTypeObject *cls,
                                     PyObject *source, buffer_args *a,
                                     AllocatorObject *alloc, int copy, int delayed_gc)
{
    mm_block block;
    region_info other;
    size_t nbytes = (size_t)(a->num_items * a->item_size);
    int readonly = parse_flag(a->readonly == Py_None ? NULL : a->readonly, 0);
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
    if (PyLong_Check(source) && !PyBool_Check(source) && _PyLong_Sign(source) > 0) {
        uintptr_t start = (uintptr_t)PyLong_AsVoidPtr(source);
        if (start == 0 && PyErr_Occurred()) {
            PyErr_Clear();
        }
        else if (start <= UINTPTR_MAX - nbytes &&
                 region_registry_find_overlap(start, start + nbytes, &other)) {
            raise_overlap(st, start, start + nbytes, &other);
            return NULL;
        }
    }
    Py_INCREF(alloc);
    if (allocator_consume_block(alloc, source, nbytes, a->extra, &block) < 0) {
        Py_DECREF(alloc);
        return NULL;
    }
    BufferObject *self = buffer_alloc_object(cls, a);
    if (self == NULL) {
        allocator_free_block(alloc, &block);
        Py_DECREF(alloc);
        return NULL;
    }
    self->readonly = (unsigned char)readonly;
    buffer_adopt_block(self, alloc, &block);
    Py_DECREF(alloc);
    if (buffer_register_region(st, self) < 0 ||
        buffer_finish_construction(st, self, a->death_stub, delayed_gc) < 0) {
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
    return (AllocatorObject *)Py_XNewRef(allocator_lookup(st, a->allocator));
}

PyObject *buffer_consume(PyObject *cls, PyObject *const *args,
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
    if (parse_sizes(args[1], args[2], &a) < 0 ||
        parse_options(st, nargs == 4 ? args[3] : NULL, args + nargs, kwnames, 1, &a) < 0 ||
        (copy = parse_flag(a.copy, 0)) < 0 ||
        (delayed_gc = parse_flag(a.delayed_gc, 1)) < 0) {
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
    if (kind == 0 && !PyObject_CheckBuffer(source)) {
        PyErr_Format(PyExc_TypeError,
                     "consume() needs an object with the buffer protocol or an "
                     "address (int, one-element list, ctypes or cffi pointer), "
                     "not %.100s", Py_TYPE(source)->tp_name);
        goto done;
    }
    if (alloc == NULL) {
        alloc = (AllocatorObject *)Py_NewRef(kind == 1 ? st->cmalloc_allocator
                                                       : st->default_allocator);
    }
    result = kind == 1
        ? consume_address(st, (PyTypeObject *)cls, &src, &a, alloc, copy, delayed_gc)
        : consume_object(st, (PyTypeObject *)cls, source, &a, alloc, copy, delayed_gc);
done:
    Py_XDECREF(alloc);
    Py_XDECREF(src.reset);
    buffer_args_clear(&a);
    return result;
}
