/*
 * delayed_gc.c -- pinning buffers against garbage collection (the Perl
 * "delayed_gc"), the trigger the Perl TODO asked for (collect_delayed),
 * (The release of everything still pinned at interpreter exit is
 * buffer.c's, which this file stands below: nothing here frees a buffer
 * but by dropping the reference the pinned dict holds.)
 *
 * The module state's `pinned` dict maps identifier -> Buffer and holds the
 * only reference the module keeps.  Unpinning drops that reference, so a
 * buffer nobody else refers to is freed right there (stub first).
 *
 * Layer: buffer (below buffer.c).  May call allocators/ and core/.
 */
#include "buffer/buffer.h"

/* After the module state was cleared (late in interpreter shutdown) there
 * is no pinned dict: nothing can be pinned, and unpinning is a no-op. */
static int shutting_down(mm_state *st)
{
    return st == NULL || st->pinned == NULL;
}

int mm_delayed_gc_pin(mm_state *st, BufferObject *self)
{
    if (shutting_down(st)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot pin a buffer: memmanager is shutting down");
        return -1;
    }
    PyObject *key = mm_buffer_identifier(self);
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

/* Removes the entry under key, if any, and gives the value to the caller
 * (a new reference, or NULL with no error when there was none).  The key
 * is an exact int, so neither step runs Python code. */
static int pop_pinned(mm_state *st, PyObject *key, PyObject **value)
{
    *value = PyDict_GetItemWithError(st->pinned, key);
    if (*value == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    Py_INCREF(*value);
    if (PyDict_DelItem(st->pinned, key) < 0) {
        Py_CLEAR(*value);
        return -1;
    }
    return 0;
}

/* Drops the module's reference: the caller must hold its own if it goes
 * on using self. */
int mm_delayed_gc_unpin(mm_state *st, BufferObject *self)
{
    if (!self->pinned || shutting_down(st)) {
        self->pinned = 0;
        return 0;
    }
    PyObject *key = mm_buffer_identifier(self);
    PyObject *value;
    if (key == NULL) {
        return -1;
    }
    self->pinned = 0;
    int rc = pop_pinned(st, key, &value);
    Py_DECREF(key);
    Py_XDECREF(value);   /* may free self */
    return rc;
}

PyObject *mm_delayed_gc_identifiers(mm_state *st)
{
    if (shutting_down(st)) {
        return PyList_New(0);
    }
    return PyDict_Keys(st->pinned);
}

/* An identifier (an int, or what __index__ makes one) or a Buffer, as an
 * exact int: a dict key whose hash and comparison run no Python code.
 * Only __index__ may run code here, before anything is unpinned. */
static PyObject *identifier_key(mm_state *st, PyObject *item)
{
    if (PyObject_TypeCheck(item, st->buffer_type)) {
        return mm_buffer_identifier((BufferObject *)item);
    }
    if (PyLong_CheckExact(item)) {
        return Py_NewRef(item);
    }
    if (!PyBool_Check(item) && Py_TYPE(item)->tp_as_number != NULL &&
        Py_TYPE(item)->tp_as_number->nb_index != NULL) {
        return PyNumber_Index(item);   /* an exact int (3.10 and later) */
    }
    PyErr_Format(PyExc_TypeError,
                 "collect_delayed() takes identifiers (int) or Buffers, not %.100s",
                 Py_TYPE(item)->tp_name);
    return NULL;
}

/* Objects that iterate, but never over identifiers: their bytes or
 * characters would be read as identifiers. */
static int is_not_a_collection_of_identifiers(PyObject *obj)
{
    return PyLong_Check(obj) || PyUnicode_Check(obj) || PyBytes_Check(obj) ||
           PyByteArray_Check(obj) || PyMemoryView_Check(obj);
}

/* All keys to unpin (exact ints), built before anything is unpinned: None
 * is every pinned buffer, a Buffer is itself (never an iterable of
 * identifiers: iterating it would read its bytes), and anything else must
 * be an iterable of identifiers and Buffers.  The iterator's __next__ and
 * the items' __index__ run here and may release or collect buffers; only
 * ints are kept, so nothing they free is used afterwards. */
static PyObject *keys_to_collect(mm_state *st, PyObject *identifiers)
{
    if (identifiers == NULL || identifiers == Py_None) {
        return PyDict_Keys(st->pinned);
    }
    if (PyObject_TypeCheck(identifiers, st->buffer_type)) {
        PyObject *key = mm_buffer_identifier((BufferObject *)identifiers);
        if (key == NULL) {
            return NULL;
        }
        PyObject *keys = PyList_New(1);
        if (keys == NULL) {
            Py_DECREF(key);
            return NULL;
        }
        PyList_SET_ITEM(keys, 0, key);
        return keys;
    }
    PyObject *iterator = is_not_a_collection_of_identifiers(identifiers) ? NULL
                       : PyObject_GetIter(identifiers);
    if (iterator == NULL) {
        if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_TypeError)) {
            return NULL;
        }
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "collect_delayed() takes None, a Buffer, or an iterable "
                     "of identifiers and Buffers, not %.100s",
                     Py_TYPE(identifiers)->tp_name);
        return NULL;
    }
    PyObject *keys = PyList_New(0);
    PyObject *item;
    while (keys != NULL && (item = PyIter_Next(iterator)) != NULL) {
        PyObject *key = identifier_key(st, item);
        Py_DECREF(item);
        if (key == NULL || PyList_Append(keys, key) < 0) {
            Py_XDECREF(key);
            Py_CLEAR(keys);
            break;
        }
        Py_DECREF(key);
    }
    Py_DECREF(iterator);
    if (keys != NULL && PyErr_Occurred()) {   /* __next__ raised */
        Py_CLEAR(keys);
    }
    return keys;
}

PyObject *mm_delayed_gc_collect(mm_state *st, PyObject *identifiers)
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
        PyObject *value;
        /* Looked up again each time: a stub run by the previous unpin may
         * have released, collected or pinned anything (or, at shutdown,
         * the dict may be gone). */
        if (shutting_down(st)) {
            break;
        }
        if (pop_pinned(st, key, &value) < 0) {
            goto error;
        }
        if (value == NULL) {
            continue;   /* not pinned (any more), or never was: ignored */
        }
        if (PyObject_TypeCheck(value, st->buffer_type)) {
            BufferObject *buffer = (BufferObject *)value;
            if (buffer->pinned && buffer->identifier ==
                    (uint64_t)PyLong_AsUnsignedLongLong(key)) {
                buffer->pinned = 0;
            }
        }
        PyErr_Clear();   /* a key that is no identifier cannot be pinned */
        int rc = PyList_Append(collected, key);
        /* May free the buffer right here, running its stub. */
        Py_DECREF(value);
        if (rc < 0) {
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
