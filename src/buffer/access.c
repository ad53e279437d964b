/*
 * buffer/access.c -- every way of reaching a Buffer's bytes from Python:
 *
 *   - the buffer protocol (format "B", 1-D, C-contiguous), which counts
 *     exports: each successful getbuffer increments `exports`, each
 *     releasebuffer decrements it;
 *   - region(start, stop): a zero-copy memoryview of [start, stop), made by
 *     one getbuffer over the sub-range (so it is one export);
 *   - extract_buffer_region(start, end): the Perl method, a bytes copy of
 *     [start, end] with an inclusive end and None for a bad range;
 *   - item and slice access like bytearray, except that a Buffer never
 *     changes size.
 *
 * Large copies run without the GIL while an internal export keeps
 * release() from freeing the memory underneath them.  Memory the host
 * cannot touch (CudaDevice) is refused with BufferError at each entry.
 *
 * Layer: buffer.  May call allocators/ and core/.
 */
#include "buffer/buffer.h"

#include <string.h>

#define COPY_WITHOUT_GIL_THRESHOLD ((Py_ssize_t)1 << 20)

/* ------------------------------------------------------------------ */
/* Buffer protocol                                                     */
/* ------------------------------------------------------------------ */

int mm_buffer_getbuffer(PyObject *op, Py_buffer *view, int flags)
{
    BufferObject *self = (BufferObject *)op;
    Py_ssize_t offset = 0, length = self->nbytes;
    int readonly = self->readonly;

    if (self->has_pending_region) {    /* set by region() just before */
        self->has_pending_region = 0;
        offset = self->pending_offset;
        length = self->pending_length;
        readonly |= self->pending_readonly;
    }
    if (mm_buffer_check_host_access(self) < 0) {
        view->obj = NULL;
        return -1;
    }
    if ((flags & PyBUF_WRITABLE) == PyBUF_WRITABLE && readonly) {
        PyErr_SetString(PyExc_BufferError,
                        "cannot export a read-only buffer as writable");
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, op, self->data + offset, length,
                          readonly, flags) < 0) {
        return -1;
    }
    self->exports++;
    return 0;
}

void mm_buffer_releasebuffer(PyObject *op, Py_buffer *Py_UNUSED(view))
{
    mm_buffer_export_ended((BufferObject *)op);
}

/* ------------------------------------------------------------------ */
/* region()                                                            */
/* ------------------------------------------------------------------ */

static int parse_bound(PyObject *obj, Py_ssize_t default_value, const char *what,
                       Py_ssize_t *out)
{
    if (obj == NULL || obj == Py_None) {
        *out = default_value;
        return 0;
    }
    if (!PyIndex_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int or None, not %.100s",
                     what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    *out = PyNumber_AsSsize_t(obj, NULL);   /* clamps huge values */
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

PyObject *mm_buffer_region(PyObject *op, PyObject *const *args,
                        Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"start", "stop", "readonly", NULL};
    BufferObject *self = (BufferObject *)op;
    PyObject *values[3];
    Py_ssize_t start, stop;
    int readonly;

    if (nargs == 3) {   /* readonly is keyword-only */
        PyErr_SetString(PyExc_TypeError,
                        "region() takes at most 2 positional arguments (3 given)");
        return NULL;
    }
    /* Conversions may run Python code (__index__, __bool__), which may
     * release this buffer: check that it is live only after them. */
    if (mm_unpack_arguments("region", args, nargs, kwnames, names, 2, values) < 0 ||
        parse_bound(values[0], 0, "start", &start) < 0 ||
        parse_bound(values[1], PY_SSIZE_T_MAX, "stop", &stop) < 0 ||
        (readonly = mm_parse_flag(values[2], 0)) < 0 ||
        mm_buffer_check_live(self) < 0) {
        return NULL;
    }
    if (values[1] == NULL || values[1] == Py_None) {
        stop = self->nbytes;
    }
    if (start < 0 || stop > self->nbytes || start > stop) {
        PyErr_Format(PyExc_IndexError,
                     "region [%zd, %zd) is outside the buffer [0, %zd)",
                     start, stop, self->nbytes);
        return NULL;
    }
    /* The pending region must reach this call's getbuffer, not another
     * export's: the memoryview's own allocation, before its getbuffer,
     * could start a collection whose finalizers export this buffer.  The
     * collector is paused for the call (no other Python code runs in it). */
    int collector_was_enabled = PyGC_Disable();
    self->has_pending_region = 1;
    self->pending_offset = start;
    self->pending_length = stop - start;
    self->pending_readonly = (unsigned char)readonly;
    PyObject *view = PyMemoryView_FromObject(op);
    self->has_pending_region = 0;
    if (collector_was_enabled) {
        PyGC_Enable();
    }
    return view;
}

/* ------------------------------------------------------------------ */
/* extract_buffer_region()                                             */
/* ------------------------------------------------------------------ */

/* A bytes copy of `length` bytes at `offset`; big copies drop the GIL. */
static PyObject *copy_to_bytes(BufferObject *self, Py_ssize_t offset,
                               Py_ssize_t length)
{
    if (length < COPY_WITHOUT_GIL_THRESHOLD) {
        return PyBytes_FromStringAndSize(self->data + offset, length);
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, length);
    if (result == NULL) {
        return NULL;
    }
    const char *source = self->data + offset;
    char *target = PyBytes_AS_STRING(result);
    self->exports++;    /* release() must wait for the copy */
    Py_BEGIN_ALLOW_THREADS
    memcpy(target, source, (size_t)length);
    Py_END_ALLOW_THREADS
    mm_buffer_export_ended(self);   /* may finish a release __exit__ deferred */
    return result;
}

PyObject *mm_buffer_extract_region(PyObject *op, PyObject *const *args,
                                Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"start", "end", NULL};
    BufferObject *self = (BufferObject *)op;
    PyObject *values[2];
    Py_ssize_t start, end;
    /* Convert first (may run Python code), then look at the buffer. */
    if (mm_unpack_arguments("extract_buffer_region", args, nargs, kwnames, names,
                         2, values) < 0 ||
        parse_bound(values[0], 0, "start", &start) < 0 ||
        parse_bound(values[1], 0, "end", &end) < 0 ||
        mm_buffer_check_host_access(self) < 0) {
        return NULL;
    }
    if (values[1] == NULL || values[1] == Py_None) {
        end = self->nbytes - 1;
    }
    if (start < 0 || end < 0 || end >= self->nbytes || start > end) {
        Py_RETURN_NONE;   /* the Perl contract: undef, no exception */
    }
    return copy_to_bytes(self, start, end - start + 1);
}

/* ------------------------------------------------------------------ */
/* Items and slices                                                    */
/* ------------------------------------------------------------------ */

Py_ssize_t mm_buffer_length(PyObject *op)
{
    BufferObject *self = (BufferObject *)op;
    return mm_buffer_check_live(self) < 0 ? -1 : self->nbytes;
}

PyObject *mm_buffer_item(PyObject *op, Py_ssize_t index)
{
    BufferObject *self = (BufferObject *)op;
    if (mm_buffer_check_host_access(self) < 0) {
        return NULL;
    }
    if (index < 0 || index >= self->nbytes) {
        PyErr_SetString(PyExc_IndexError, "buffer index out of range");
        return NULL;
    }
    return PyLong_FromLong((unsigned char)self->data[index]);
}

/* Converts key (which may run Python code), then checks that the buffer
 * is still live and the index inside it. */
static int normalise_index(BufferObject *self, PyObject *key, Py_ssize_t *index)
{
    Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
    if ((i == -1 && PyErr_Occurred()) || mm_buffer_check_host_access(self) < 0) {
        return -1;
    }
    if (i < 0) {
        i += self->nbytes;
    }
    if (i < 0 || i >= self->nbytes) {
        PyErr_SetString(PyExc_IndexError, "buffer index out of range");
        return -1;
    }
    *index = i;
    return 0;
}

static PyObject *slice_to_bytes(BufferObject *self, PyObject *slice)
{
    Py_ssize_t start, stop, step;
    if (PySlice_Unpack(slice, &start, &stop, &step) < 0 ||
        mm_buffer_check_host_access(self) < 0) {
        return NULL;
    }
    Py_ssize_t length = PySlice_AdjustIndices(self->nbytes, &start, &stop, step);
    if (step == 1) {
        return copy_to_bytes(self, start, length);
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, length);
    if (result == NULL) {
        return NULL;
    }
    char *target = PyBytes_AS_STRING(result);
    for (Py_ssize_t k = 0, i = start; k < length; k++, i += step) {
        target[k] = self->data[i];
    }
    return result;
}

PyObject *mm_buffer_subscript(PyObject *op, PyObject *key)
{
    BufferObject *self = (BufferObject *)op;
    Py_ssize_t index;
    if (mm_buffer_check_live(self) < 0) {   /* checked again after conversions */
        return NULL;
    }
    if (PyIndex_Check(key)) {
        if (normalise_index(self, key, &index) < 0) {
            return NULL;
        }
        return PyLong_FromLong((unsigned char)self->data[index]);
    }
    if (PySlice_Check(key)) {
        return slice_to_bytes(self, key);
    }
    PyErr_Format(PyExc_TypeError,
                 "buffer indices must be integers or slices, not %.100s",
                 Py_TYPE(key)->tp_name);
    return NULL;
}

static int store_byte(BufferObject *self, PyObject *key, PyObject *value)
{
    Py_ssize_t index;
    if (PyBool_Check(value) || !PyIndex_Check(value)) {
        PyErr_Format(PyExc_TypeError, "a byte must be an int, not %.100s",
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    Py_ssize_t byte = PyNumber_AsSsize_t(value, NULL);
    if (byte == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (byte < 0 || byte > 255) {
        PyErr_SetString(PyExc_ValueError, "byte must be in range(0, 256)");
        return -1;
    }
    /* Last conversion: after it nothing runs Python code before the store. */
    if (normalise_index(self, key, &index) < 0 || mm_buffer_check_writable(self) < 0) {
        return -1;
    }
    self->data[index] = (char)byte;
    return 0;
}

static int store_slice(BufferObject *self, PyObject *slice, PyObject *value)
{
    Py_ssize_t start, stop, step;
    Py_buffer source;
    if (PySlice_Unpack(slice, &start, &stop, &step) < 0 ||
        PyObject_GetBuffer(value, &source, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    int rc = -1;
    if (mm_buffer_check_writable(self) < 0) {
        goto done;
    }
    Py_ssize_t length = PySlice_AdjustIndices(self->nbytes, &start, &stop, step);
    if (source.len != length) {
        PyErr_Format(PyExc_ValueError,
                     "a Buffer cannot change size: the slice has %zd bytes, "
                     "the value %zd", length, source.len);
        goto done;
    }
    if (step == 1) {
        memmove(self->data + start, source.buf, (size_t)length);
    }
    else {
        /* Through a copy: the value may be a view of this very buffer. */
        char *copy = PyMem_Malloc((size_t)length + 1);
        if (copy == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        memcpy(copy, source.buf, (size_t)length);
        for (Py_ssize_t k = 0, i = start; k < length; k++, i += step) {
            self->data[i] = copy[k];
        }
        PyMem_Free(copy);
    }
    rc = 0;
done:
    PyBuffer_Release(&source);
    return rc;
}

int mm_buffer_ass_subscript(PyObject *op, PyObject *key, PyObject *value)
{
    BufferObject *self = (BufferObject *)op;
    if (mm_buffer_check_live(self) < 0) {
        return -1;
    }
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "a Buffer cannot change size: deleting items is not supported");
        return -1;
    }
    if (PyIndex_Check(key)) {
        return store_byte(self, key, value);
    }
    if (PySlice_Check(key)) {
        return store_slice(self, key, value);
    }
    PyErr_Format(PyExc_TypeError,
                 "buffer indices must be integers or slices, not %.100s",
                 Py_TYPE(key)->tp_name);
    return -1;
}
