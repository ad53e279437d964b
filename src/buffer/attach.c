/*
 * attach.c -- Buffer.attach(name, num_items=None, item_size=1, *,
 * readonly=False) and buf.name: a Buffer over SharedMemory that exists
 * already, made here or in another process.
 *
 * The mapping itself is the SharedMemory kind's (allocators/shm.c); this
 * file makes the Buffer around it.  An attached buffer unmaps when it
 * dies and never unlinks the name.
 *
 * Layer: buffer.  May call allocators/ and core/.
 */
#include "buffer/buffer.h"

/* Maps the object as a new buffer of cls. */
static PyObject *attach_buffer(mm_state *st, PyTypeObject *cls, PyObject *name,
                               buffer_args *a, int readonly)
{
    mm_block block;
    AllocatorObject *alloc = mm_shm_allocator(st);
    if (alloc == NULL ||
        mm_shm_map_existing(name, readonly, a->item_size, &a->num_items, &block) < 0) {
        return NULL;
    }
    BufferObject *self = mm_buffer_alloc_object(cls, a);
    if (self == NULL) {
        mm_allocator_free_block(alloc, &block);
        return NULL;
    }
    self->readonly = (unsigned char)readonly;
    mm_buffer_adopt_block(self, alloc, &block);
    mm_allocator_track(alloc, &block);
    if (mm_buffer_register_region(st, self) < 0 ||
        mm_buffer_finish_construction(st, self, NULL, 0) < 0) {
        Py_DECREF(self);   /* unmaps */
        return NULL;
    }
    return (PyObject *)self;
}

PyObject *mm_buffer_attach(PyObject *cls, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"name", "num_items", "item_size",
                                         "readonly", NULL};
    PyObject *values[4];
    buffer_args a = {0};
    mm_state *st = mm_state_from_type((PyTypeObject *)cls);
    if (st == NULL ||
        mm_unpack_arguments("attach", args, nargs, kwnames, names, 3, values) < 0) {
        return NULL;
    }
    if (values[0] == NULL) {
        PyErr_SetString(PyExc_TypeError, "attach() missing its name");
        return NULL;
    }
    int sizes_from_object = values[1] == NULL || values[1] == Py_None;
    PyObject *one = PyLong_FromLong(1);
    if (one == NULL) {
        return NULL;
    }
    int readonly = mm_parse_flag(values[3], 0);
    int rc = readonly < 0 ? -1 :
        mm_parse_sizes(sizes_from_object ? one : values[1],
                       values[2] == NULL ? one : values[2], &a);
    Py_DECREF(one);
    if (rc < 0) {
        return NULL;
    }
    if (sizes_from_object) {
        a.num_items = 0;   /* as many as the object holds */
    }
    return attach_buffer(st, (PyTypeObject *)cls, values[0], &a, readonly);
}

PyObject *mm_buffer_get_name(PyObject *op, void *Py_UNUSED(closure))
{
    BufferObject *self = (BufferObject *)op;
    if (mm_buffer_check_live(self) < 0) {
        return NULL;
    }
    return mm_shm_block_name(mm_allocator_block_owner(self->allocator),
                             self->block_cookie);
}
