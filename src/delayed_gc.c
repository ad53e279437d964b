/*
 * delayed_gc.c -- pinning buffers against garbage collection (the Perl
 * "delayed_gc"), the trigger the Perl TODO asked for (collect_delayed),
 * and the release of everything still pinned at interpreter exit.
 *
 * The module state's `pinned` dict maps identifier -> Buffer and holds the
 * only reference the module keeps.  Unpinning drops that reference, so a
 * buffer nobody else refers to is freed right there (stub first).
 */
#include "memmanager.h"

/* After the module state was cleared (late in interpreter shutdown) there
 * is no pinned dict: nothing can be pinned, and unpinning is a no-op. */
static int shutting_down(mm_state *st)
{
    return st == NULL || st->pinned == NULL;
}

int delayed_gc_pin(mm_state *st, BufferObject *self)
{
    if (shutting_down(st)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot pin a buffer: memmanager is shutting down");
        return -1;
    }
    PyObject *key = PyLong_FromVoidPtr(self);
    if (key == NULL) {
        return -1;
    }
    int rc = PyDict_SetItem(st->pinned, key, (PyObject *)self);
    /* Private (module.c visits the buffers, not the dict): out of
     * gc.get_objects(), where anything stored in it would later be read
     * back as a Buffer. */
    PyObject_GC_UnTrack(st->pinned);
    Py_DECREF(key);
    if (rc == 0) {
        self->pinned = 1;
    }
    return rc;
}

/* Drops the module's reference: the caller must hold its own if it goes
 * on using self. */
int delayed_gc_unpin(mm_state *st, BufferObject *self)
{
    if (!self->pinned || shutting_down(st)) {
        self->pinned = 0;
        return 0;
    }
    PyObject *key = PyLong_FromVoidPtr(self);
    if (key == NULL) {
        return -1;
    }
    self->pinned = 0;
    int rc = PyDict_DelItem(st->pinned, key);
    Py_DECREF(key);
    return rc;
}

PyObject *delayed_gc_identifiers(mm_state *st)
{
    if (shutting_down(st)) {
        return PyList_New(0);
    }
    return PyDict_Keys(st->pinned);
}

/* An identifier (int) or a Buffer, as a dict key. */
static PyObject *identifier_key(mm_state *st, PyObject *item)
{
    if (PyObject_TypeCheck(item, st->buffer_type)) {
        return PyLong_FromVoidPtr(item);
    }
    if (PyLong_Check(item) && !PyBool_Check(item)) {
        return Py_NewRef(item);
    }
    PyErr_Format(PyExc_TypeError,
                 "collect_delayed() takes identifiers (int) or Buffers, not %.100s",
                 Py_TYPE(item)->tp_name);
    return NULL;
}

/* All keys to unpin, validated before anything is unpinned. */
static PyObject *keys_to_collect(mm_state *st, PyObject *identifiers)
{
    if (identifiers == NULL || identifiers == Py_None) {
        return PyDict_Keys(st->pinned);
    }
    PyObject *items = PySequence_List(identifiers);
    if (items == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Format(PyExc_TypeError,
                         "collect_delayed() takes None or an iterable of "
                         "identifiers, not %.100s", Py_TYPE(identifiers)->tp_name);
        }
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *key = identifier_key(st, PyList_GET_ITEM(items, i));
        if (key == NULL) {
            Py_DECREF(items);
            return NULL;
        }
        PyList_SetItem(items, i, key);   /* steals key, drops the item */
    }
    return items;
}

PyObject *delayed_gc_collect(mm_state *st, PyObject *identifiers)
{
    if (shutting_down(st)) {
        return PyList_New(0);
    }
    PyObject *keys = keys_to_collect(st, identifiers);
    PyObject *collected = keys ? PyList_New(0) : NULL;
    if (collected == NULL) {
        Py_XDECREF(keys);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(keys); i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);
        PyObject *buffer = PyDict_GetItemWithError(st->pinned, key);
        if (buffer == NULL) {
            if (PyErr_Occurred()) {
                goto error;
            }
            continue;   /* not pinned (any more): skipped */
        }
        if (PyList_Append(collected, key) < 0) {
            goto error;
        }
        /* May free the buffer right here, running its stub. */
        if (delayed_gc_unpin(st, (BufferObject *)buffer) < 0) {
            goto error;
        }
    }
    Py_DECREF(keys);
    return collected;
error:
    Py_DECREF(keys);
    Py_DECREF(collected);
    return NULL;
}

/* At exit: release every pinned buffer; one that is still exported is
 * unpinned after its stub ran, and freed when its last export goes. */
PyObject *delayed_gc_release_all(mm_state *st)
{
    if (shutting_down(st)) {
        Py_RETURN_NONE;
    }
    PyObject *buffers = PyDict_Values(st->pinned);
    if (buffers == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(buffers); i++) {
        PyObject *buffer = PyList_GET_ITEM(buffers, i);
        PyObject *result = buffer_release_method(buffer, NULL);
        if (result == NULL) {
            PyErr_Clear();
            buffer_run_death_stub((BufferObject *)buffer);
            if (delayed_gc_unpin(st, (BufferObject *)buffer) < 0) {
                PyErr_Clear();
            }
        }
        Py_XDECREF(result);
    }
    Py_DECREF(buffers);
    Py_RETURN_NONE;
}
