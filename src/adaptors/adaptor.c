/*
 * adaptor.c -- what every adaptor shares:
 *
 *   - the common part of the Python object (AdaptorObject): the upstream,
 *     looked up by name when the adaptor is made, and the upstream's
 *     options (the constructor's leftover keywords), parsed once by the
 *     upstream's kind and kept in a private dict that nothing else can
 *     reach, so the request's borrowed pointers stay valid;
 *   - register_allocator(name, adaptor): an Allocator object of the
 *     adaptor's kind, refused when the name is somewhere in the adaptor's
 *     chain of upstreams (the name would then stand for an allocator that
 *     draws from itself);
 *
 * Upstreams are bound when the adaptor is made, as a buffer binds its
 * allocator: registering something else under the upstream's name later
 * changes nothing for an adaptor made before.
 *
 * Layer: adaptors.  May call allocators/ and core/.
 */
#include "adaptors/adaptors.h"


/* ------------------------------------------------------------------ */
/* The common part                                                     */
/* ------------------------------------------------------------------ */

static AllocatorObject *find_upstream(mm_state *st, PyObject *name, const char *kind)
{
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError,
                     "%s(): the upstream must be the name of a registered "
                     "allocator (a str), not %.100s", kind, Py_TYPE(name)->tp_name);
        return NULL;
    }
    AllocatorObject *up = mm_allocator_lookup(st, name);
    if (up == NULL) {
        return NULL;
    }
    if (up->consume_only) {
        PyErr_Format(PyExc_ValueError,
                     "%s(): allocator %U only adopts memory and cannot be "
                     "an upstream", kind, up->name);
        return NULL;
    }
    return (AllocatorObject *)Py_NewRef(up);
}

/* A private copy: untracked, so neither the collector nor Python code
 * can reach it (the values are visited by mm_adaptor_traverse). */
static PyObject *private_options(PyObject *options)
{
    if (options == NULL || PyDict_GET_SIZE(options) == 0) {
        return NULL;
    }
    PyObject *copy = PyDict_Copy(options);
    if (copy != NULL) {
        PyObject_GC_UnTrack(copy);
    }
    return copy;
}

int mm_adaptor_init(AdaptorObject *self, const mm_allocator_ops *ops,
                    PyObject *upstream_name, PyObject *options)
{
    mm_state *st = mm_state_from_type(Py_TYPE(self));
    if (st == NULL) {
        return -1;
    }
    self->ops = ops;
    self->upstream = find_upstream(st, upstream_name, ops->kind);
    if (self->upstream == NULL) {
        return -1;
    }
    if (options != NULL && PyDict_GET_SIZE(options) > 0) {
        self->upstream_options = private_options(options);
        if (self->upstream_options == NULL) {
            return -1;
        }
    }
    if (mm_allocator_parse_any_options(self->upstream, self->upstream_options,
                                       1, 1, MM_INIT_UNINITIALISED,
                                       &self->upstream_req) == 0) {
        self->parsed = 1;
        return 0;
    }
    /* An upstream that needs per-buffer options (MappedFile's path=) has
     * them parsed with each buffer's, by adaptors that pass them on. */
    if (self->upstream_options == NULL && ops->parse_options == mm_adaptor_parse_passed_options) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

int mm_adaptor_traverse(AdaptorObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->upstream);
    if (self->upstream_options != NULL) {
        PyObject *key, *value;
        Py_ssize_t pos = 0;
        while (PyDict_Next(self->upstream_options, &pos, &key, &value)) {
            Py_VISIT(value);
        }
    }
    return 0;
}

/* No tp_clear: buffers of the adaptor free through its upstream until
 * the last of them is gone, and they keep the adaptor alive. */
void mm_adaptor_clear_common(AdaptorObject *self)
{
    Py_CLEAR(self->upstream_options);
    Py_CLEAR(self->upstream);
}

int mm_adaptor_split_keywords(PyObject *kwargs, const char *const *names,
                              PyObject **own, PyObject **rest, PyObject **kept)
{
    *rest = NULL;
    *kept = NULL;
    if (kwargs == NULL || PyDict_GET_SIZE(kwargs) == 0) {
        return 0;
    }
    /* The caller's dict is no safe place to borrow from: code that runs
     * while the arguments are parsed (__index__, __fspath__) can find it
     * with gc.get_referrers() and empty it.  An untracked copy holds them. */
    PyObject *all = PyDict_Copy(kwargs);
    PyObject *others = all != NULL ? PyDict_Copy(all) : NULL;
    if (others == NULL) {
        Py_XDECREF(all);
        return -1;
    }
    PyObject_GC_UnTrack(all);
    for (int i = 0; names[i] != NULL; i++) {
        PyObject *value = PyDict_GetItemString(all, names[i]);
        if (value != NULL) {
            own[i] = value;   /* held by `all` */
            if (PyDict_DelItemString(others, names[i]) < 0) {
                Py_DECREF(others);
                Py_DECREF(all);
                return -1;
            }
        }
    }
    *kept = all;
    if (PyDict_GET_SIZE(others) == 0) {
        Py_DECREF(others);
        return 0;
    }
    *rest = others;
    return 0;
}

/* The fields of the upstream's request, with this buffer's sizes. */
static void copy_request(const AdaptorObject *self, mm_request *req)
{
    Py_ssize_t num_items = req->num_items, item_size = req->item_size;
    int init_byte = req->init_byte;
    *req = self->upstream_req;
    req->num_items = num_items;
    req->item_size = item_size;
    req->init_byte = init_byte;
}

int mm_adaptor_parse_passed_options(AllocatorObject *alloc, PyObject *options,
                                    mm_request *req)
{
    AdaptorObject *self = mm_adaptor_of(alloc);
    AllocatorObject *up = self->upstream;
    if (options == NULL && self->parsed) {
        /* The options were parsed for no init value; a buffer with one has
         * them checked again against it (MappedFile refuses an init value
         * over a file's data, mode 'r' or 'r+'). */
        if (req->init_byte != MM_INIT_UNINITIALISED && self->upstream_options != NULL) {
            return up->ops->parse_options(up, self->upstream_options, req);
        }
        copy_request(self, req);
        return 0;
    }
    if (self->upstream_options != NULL) {
        PyErr_Format(PyExc_TypeError,
                     "allocator %U takes no per-buffer options: its upstream's "
                     "options were given when it was made", alloc->name);
        return -1;
    }
    return up->ops->parse_options(up, options, req);
}

void mm_adaptor_upstream_request(const AdaptorObject *self, size_t size,
                                 mm_request *req)
{
    *req = self->upstream_req;
    req->num_items = (Py_ssize_t)size;
    req->item_size = 1;
    req->init_byte = MM_INIT_UNINITIALISED;
}

int mm_adaptor_take(AdaptorObject *self, const mm_request *req, size_t size,
                    int zero, mm_raw *out)
{
    if (mm_allocator_take_block(self->upstream, req, size, zero, out) < 0) {
        return -1;
    }
    __atomic_add_fetch(&self->upstream_blocks, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&self->upstream_bytes, size, __ATOMIC_RELAXED);
    return 0;
}

void mm_adaptor_give(AdaptorObject *self, char *base, size_t size, void *cookie)
{
    __atomic_sub_fetch(&self->upstream_blocks, 1, __ATOMIC_RELAXED);
    __atomic_sub_fetch(&self->upstream_bytes, size, __ATOMIC_RELAXED);
    mm_allocator_give_block(self->upstream, base, size, cookie);
}

PyObject *mm_adaptor_get_upstream(PyObject *op, void *Py_UNUSED(closure))
{
    return Py_NewRef(((AdaptorObject *)op)->upstream->name);
}

/* ------------------------------------------------------------------ */
/* Registration                                                        */
/* ------------------------------------------------------------------ */

int mm_adaptor_check(mm_state *st, PyObject *obj)
{
    for (int i = 0; i < MM_ADAPTOR_KINDS; i++) {
        if (st->adaptor_types[i] != NULL && Py_IS_TYPE(obj, st->adaptor_types[i])) {
            return 1;
        }
    }
    return 0;
}

/* ValueError when name is in the chain of upstreams from `up`. */
static int refuse_cycle(PyObject *name, AllocatorObject *up)
{
    for (AllocatorObject *a = up; a != NULL; a = a->upstream) {
        int same = PyUnicode_Compare(a->name, name);
        if (same == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (same == 0) {
            PyErr_Format(PyExc_ValueError,
                         "cannot register %R: the adaptor draws from an allocator "
                         "registered under that name, so the name would stand for "
                         "an allocator that draws from itself (a cycle)", name);
            return -1;
        }
    }
    return 0;
}

static void inherit_from_upstream(AllocatorObject *alloc, const AdaptorObject *ad)
{
    AllocatorObject *up = ad->upstream;
    alloc->upstream = up;
    alloc->passes_cookie = ad->passes_cookie;
    alloc->uses_pymem = up->uses_pymem;
    alloc->needs_gil = 1;              /* upstream calls are made with the GIL */
    /* Guarded where the upstream's blocks are, and over PyMem_* too (left
     * unguarded only for Python's own debug hooks): not over memory that
     * is not ours alone (a file's, a device's). */
    alloc->guarded = up->guarded || (up->debug && up->uses_pymem);
    alloc->device_hooks = up->device_hooks;
    alloc->memory_kind = up->memory_kind;
    alloc->device_id = up->device_id;
    alloc->is_plugin = 1;
}

PyObject *mm_adaptor_register(mm_state *st, PyObject *name, PyObject *adaptor)
{
    AdaptorObject *ad = (AdaptorObject *)adaptor;
    if (st->allocators == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "memmanager is shutting down");
        return NULL;
    }
    const char *utf8 = mm_allocator_checked_name(st, name);
    if (utf8 == NULL || refuse_cycle(name, ad->upstream) < 0) {
        return NULL;
    }
    AllocatorObject *alloc = mm_allocator_new(st, utf8, ad->ops, NULL, adaptor);
    if (alloc == NULL) {
        return NULL;
    }
    inherit_from_upstream(alloc, ad);
    if (mm_allocator_registry_set(st, name, alloc) < 0) {
        Py_DECREF(alloc);
        return NULL;
    }
    return (PyObject *)alloc;
}
