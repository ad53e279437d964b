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

/* The exception being raised, set aside while code that may raise runs
 * (a death stub, a plug-in's free()), and put back afterwards exactly as
 * it was: mm_err_save() takes it out of the thread state (none is fine),
 * mm_err_restore() puts it back (clearing the indicator when there was
 * none), mm_err_discard() drops it.  Before 3.12 the three parts are kept
 * as they are: normalising them could run an exception class's __init__. */
typedef struct {
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc;
#else
    PyObject *type, *value, *traceback;
#endif
} mm_saved_error;

static inline void mm_err_save(mm_saved_error *saved)
{
#if PY_VERSION_HEX >= 0x030C0000
    saved->exc = PyErr_GetRaisedException();
#else
    PyErr_Fetch(&saved->type, &saved->value, &saved->traceback);
#endif
}

static inline void mm_err_restore(mm_saved_error *saved)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(saved->exc);
#else
    PyErr_Restore(saved->type, saved->value, saved->traceback);
#endif
}

static inline void mm_err_discard(mm_saved_error *saved)
{
#if PY_VERSION_HEX >= 0x030C0000
    Py_XDECREF(saved->exc);
#else
    Py_XDECREF(saved->type);
    Py_XDECREF(saved->value);
    Py_XDECREF(saved->traceback);
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
