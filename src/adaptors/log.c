/*
 * log.c -- the Log adaptor (being written).
 *
 * Layer: adaptors.  May call allocators/ and core/.
 */
#include "adaptors/adaptors.h"

static PyObject *log_new(PyTypeObject *Py_UNUSED(type), PyObject *Py_UNUSED(args),
                          PyObject *Py_UNUSED(kwargs))
{
    PyErr_SetString(PyExc_NotImplementedError, "Log is not written yet");
    return NULL;
}

static PyType_Slot log_slots[] = {
    {Py_tp_new, log_new},
    {0, NULL},
};

PyType_Spec mm_log_type_spec = {
    .name = "memmanager.Log",
    .basicsize = sizeof(AdaptorObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = log_slots,
};
