/*
 * limit.c -- the Limit adaptor: a budget of live bytes over any upstream.
 *
 *   capped = memmanager.Limit("PyAlloc", 2 << 30)
 *   memmanager.register_allocator("Capped", capped)
 *   capped.used, capped.max_bytes
 *
 * A block is reserved against the budget before the upstream is asked
 * (one compare-and-swap loop on `used`, so two threads can never both
 * pass the last bytes), and given back if the upstream fails.  What
 * would pass max_bytes is LimitExceededError, a MemoryError, and nothing
 * is allocated.  The bytes counted are those the allocator is asked for:
 * the buffer's, plus its guard bytes under MEMMANAGER_DEBUG.
 *
 * Blocks are the upstream's own, cookie and all, so a Limit over
 * SharedMemory still has buffers with a name, and per-buffer options go
 * to the upstream when the Limit was made without any.
 *
 * Layer: adaptors.  May call allocators/ and core/.
 */
#include "adaptors/adaptors.h"

typedef struct {
    AdaptorObject base;
    size_t max_bytes;
    size_t used;            /* atomic: live bytes handed out */
} LimitObject;

static LimitObject *limit_of(AllocatorObject *alloc)
{
    return (LimitObject *)mm_adaptor_of(alloc);
}

static size_t load_used(LimitObject *self)
{
    return __atomic_load_n(&self->used, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ */
/* The kind                                                            */
/* ------------------------------------------------------------------ */

/* LimitExceededError with the numbers. */
static int raise_exceeded(AllocatorObject *alloc, size_t size, size_t used,
                          size_t max_bytes)
{
    mm_state *st = mm_state_from_type(Py_TYPE(alloc));
    if (st == NULL) {
        return -1;
    }
    PyErr_Format(st->LimitExceededError,
                 "Allocator %U: %zu more bytes would pass its limit of %zu "
                 "(%zu in use)", alloc->name, size, max_bytes, used);
    return -1;
}

/* Reserves size bytes of the budget; 0, or -1 with LimitExceededError. */
static int reserve(AllocatorObject *alloc, LimitObject *self, size_t size)
{
    size_t used = load_used(self);
    do {
        if (size > self->max_bytes - used) {
            return raise_exceeded(alloc, size, used, self->max_bytes);
        }
    } while (!__atomic_compare_exchange_n(&self->used, &used, used + size, 1,
                                          __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return 0;
}

static void unreserve(LimitObject *self, size_t size)
{
    __atomic_sub_fetch(&self->used, size, __ATOMIC_RELAXED);
}

static int limit_allocate(AllocatorObject *alloc, const mm_request *req,
                          size_t size, int zero, mm_raw *out)
{
    LimitObject *self = limit_of(alloc);
    if (reserve(alloc, self, size) < 0) {
        return -1;
    }
    if (mm_adaptor_take(&self->base, req, size, zero, out) < 0) {
        unreserve(self, size);
        return -1;
    }
    return 0;
}

static void limit_release(AllocatorObject *alloc, char *base, size_t size,
                          void *cookie)
{
    LimitObject *self = limit_of(alloc);
    mm_adaptor_give(&self->base, base, size, cookie);
    unreserve(self, size);
}

static const mm_allocator_ops limit_ops = {
    .kind = "Limit",
    .parse_options = mm_adaptor_parse_passed_options,
    .allocate = limit_allocate,
    .release = limit_release,
};

/* ------------------------------------------------------------------ */
/* The Python type                                                     */
/* ------------------------------------------------------------------ */

static PyObject *limit_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static const char *const names[] = {"upstream", "max_bytes", NULL};
    PyObject *own[2] = {NULL, NULL}, *keyword[2] = {NULL, NULL}, *rest = NULL;
    PyObject *kept = NULL;
    Py_ssize_t max_bytes;
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError,
                     "Limit() takes upstream and max_bytes (%zd positional "
                     "arguments given)", nargs);
        return NULL;
    }
    if (mm_adaptor_split_keywords(kwargs, names, keyword, &rest, &kept) < 0) {
        return NULL;
    }
    for (int i = 0; i < 2; i++) {
        own[i] = i < nargs ? PyTuple_GET_ITEM(args, i) : keyword[i];
        if (i < nargs && keyword[i] != NULL) {
            PyErr_Format(PyExc_TypeError,
                         "Limit() got multiple values for argument '%s'", names[i]);
            goto error;
        }
        if (own[i] == NULL) {
            PyErr_Format(PyExc_TypeError,
                         "Limit() missing required argument '%s'", names[i]);
            goto error;
        }
    }
    if (mm_parse_size(own[1], "max_bytes", &max_bytes) < 0) {
        goto error;
    }
    LimitObject *self = (LimitObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        goto error;
    }
    self->max_bytes = (size_t)max_bytes;
    if (mm_adaptor_init(&self->base, &limit_ops, own[0], rest) < 0) {
        Py_DECREF(self);
        goto error;
    }
    self->base.passes_cookie = 1;
    Py_XDECREF(rest);
    Py_XDECREF(kept);
    return (PyObject *)self;
error:
    Py_XDECREF(rest);
    Py_XDECREF(kept);
    return NULL;
}

static int limit_traverse(PyObject *op, visitproc visit, void *arg)
{
    return mm_adaptor_traverse((AdaptorObject *)op, visit, arg);
}

static void limit_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    mm_adaptor_clear_common((AdaptorObject *)op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *limit_repr(PyObject *op)
{
    LimitObject *self = (LimitObject *)op;
    return PyUnicode_FromFormat("<memmanager.Limit over %R: %zu of %zu bytes used>",
                                self->base.upstream->name, load_used(self),
                                self->max_bytes);
}

static PyObject *limit_get_used(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(load_used((LimitObject *)op));
}

static PyObject *limit_get_max_bytes(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(((LimitObject *)op)->max_bytes);
}

static PyGetSetDef limit_getset[] = {
    {"used", limit_get_used, NULL,
     "Bytes of this limit's live blocks now.", NULL},
    {"max_bytes", limit_get_max_bytes, NULL,
     "The most live bytes this limit lets through.", NULL},
    {"upstream", mm_adaptor_get_upstream, NULL,
     "The name of the allocator the blocks come from.", NULL},
    {NULL},
};

static PyType_Slot limit_slots[] = {
    {Py_tp_doc,
     "Limit(upstream, max_bytes, **upstream_options)\n--\n\n"
     "An allocator adaptor: blocks from the allocator named upstream, while\n"
     "their live bytes stay within max_bytes; past that, LimitExceededError\n"
     "(a MemoryError).  Register it with register_allocator(name, limit)."},
    {Py_tp_new, limit_new},
    {Py_tp_dealloc, limit_dealloc},
    {Py_tp_traverse, limit_traverse},
    {Py_tp_repr, limit_repr},
    {Py_tp_getset, limit_getset},
    {0, NULL},
};

PyType_Spec mm_limit_type_spec = {
    .name = "memmanager.Limit",
    .basicsize = sizeof(LimitObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = limit_slots,
};
