/*
 * args.c -- the argument primitives every layer parses with: unpacking a
 * METH_FASTCALL | METH_KEYWORDS call into named slots, sizes, flags.
 *
 * Layer: core.  Calls the C API only.
 */
#include "core/core.h"

/* ------------------------------------------------------------------ */
/* Generic METH_FASTCALL | METH_KEYWORDS unpacking                     */
/* ------------------------------------------------------------------ */

static Py_ssize_t name_index(const char *const *names, PyObject *key)
{
    for (Py_ssize_t i = 0; names[i] != NULL; i++) {
        if (PyUnicode_CompareWithASCIIString(key, names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

int mm_unpack_arguments(const char *funcname, PyObject *const *args,
                     Py_ssize_t nargs, PyObject *kwnames,
                     const char *const *names, Py_ssize_t max_positional,
                     PyObject **out)
{
    Py_ssize_t nnames = 0;
    while (names[nnames] != NULL) {
        out[nnames++] = NULL;
    }
    if (nargs > max_positional) {
        PyErr_Format(PyExc_TypeError,
                     "%s() takes at most %zd positional arguments (%zd given)",
                     funcname, max_positional, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        out[i] = args[i];
    }
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        Py_ssize_t i = name_index(names, key);
        if (i < 0) {
            PyErr_Format(PyExc_TypeError,
                         "%s() got an unexpected keyword argument %R", funcname, key);
            return -1;
        }
        if (out[i] != NULL) {
            PyErr_Format(PyExc_TypeError,
                         "%s() got multiple values for argument %R", funcname, key);
            return -1;
        }
        out[i] = args[nargs + k];
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Sizes                                                               */
/* ------------------------------------------------------------------ */

int mm_parse_size(PyObject *obj, const char *what, Py_ssize_t *out)
{
    if (mm_positive_int(obj, out)) {
        return 0;
    }
    if (PyBool_Check(obj) || !PyIndex_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s",
                     what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyObject *as_int = PyNumber_Index(obj);
    if (as_int == NULL) {
        return -1;
    }
    int overflow = 0;
    long long value = PyLong_AsLongLongAndOverflow(as_int, &overflow);
    Py_DECREF(as_int);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow < 0 || (overflow == 0 && value < 1)) {
        PyErr_Format(PyExc_ValueError, "%s must be >= 1, got %R", what, obj);
        return -1;
    }
    if (overflow > 0 || value > PY_SSIZE_T_MAX) {
        PyErr_Format(PyExc_OverflowError, "%s is too large: %R", what, obj);
        return -1;
    }
    *out = (Py_ssize_t)value;
    return 0;
}

int mm_parse_flag(PyObject *value, int default_value)
{
    if (value == NULL) {
        return default_value;
    }
    if (value == Py_False || value == Py_True) {   /* no call for the usual case */
        return value == Py_True;
    }
    return PyObject_IsTrue(value);
}
