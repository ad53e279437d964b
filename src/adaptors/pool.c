/*
 * pool.c -- the Pool adaptor (being written).
 *
 * Layer: adaptors.  May call allocators/ and core/.
 */
#include "adaptors/adaptors.h"

static PyObject *pool_new(PyTypeObject *Py_UNUSED(type), PyObject *Py_UNUSED(args),
                          PyObject *Py_UNUSED(kwargs))
{
    PyErr_SetString(PyExc_NotImplementedError, "Pool is not written yet");
    return NULL;
}

static PyType_Slot pool_slots[] = {
    {Py_tp_new, pool_new},
    {0, NULL},
};

PyType_Spec mm_pool_type_spec = {
    .name = "memmanager.Pool",
    .basicsize = sizeof(AdaptorObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = pool_slots,
};
