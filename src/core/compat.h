/*
 * compat.h -- the few C-API calls whose spelling depends on the Python
 * version, behind one name each.  The rest of src/ uses only these names,
 * so a private or deprecated call appears here and nowhere else, and only
 * under the versions that lack the public one.
 *
 * Layer: core.  Includes Python.h only.
 */
#ifndef MEMMANAGER_CORE_COMPAT_H
#define MEMMANAGER_CORE_COMPAT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* The exception being raised, taken out of the thread state (a new
 * reference; NULL when none is), and put back.  mm_err_restore(NULL)
 * clears the error indicator, as PyErr_SetRaisedException(NULL) does.
 * Before 3.12 the exception is normalised on the way out, as 3.12 always
 * keeps it. */
static inline PyObject *mm_err_take(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    if (type == NULL) {
        return NULL;
    }
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL && value != NULL) {
        PyException_SetTraceback(value, traceback);
    }
    Py_DECREF(type);
    Py_XDECREF(traceback);
    return value;
#endif
}

static inline void mm_err_restore(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    if (exc == NULL) {
        PyErr_Clear();
        return;
    }
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc,
                  PyException_GetTraceback(exc));
#endif
}

/* The sign of an int (PyLong_Check(value) holds): -1, 0 or 1.  Never
 * raises and runs no Python code. */
static inline int mm_long_sign(PyObject *value)
{
#if PY_VERSION_HEX >= 0x030E0000
    int sign = 0;
    (void)PyLong_GetSign(value, &sign);
    return sign;
#else
    int overflow = 0;
    long small = PyLong_AsLongAndOverflow(value, &overflow);
    if (overflow != 0) {
        return overflow;
    }
    return (small > 0) - (small < 0);
#endif
}

/* This thread's current thread state, or NULL (no fatal error when
 * there is none), and whether the runtime is finalising. */
#if PY_VERSION_HEX >= 0x030D0000
#define mm_thread_state_unchecked() PyThreadState_GetUnchecked()
#define mm_runtime_finalizing() Py_IsFinalizing()
#else
#define mm_thread_state_unchecked() _PyThreadState_UncheckedGet()
#define mm_runtime_finalizing() _Py_IsFinalizing()
#endif

#endif /* MEMMANAGER_CORE_COMPAT_H */
