/*
 * state.c -- where a type finds its module's state, and the one error
 * every layer raises the same way (OverlapError).
 *
 * Layer: core.  Calls the C API only.
 */
#include "core/core.h"

#include <inttypes.h>
#include <stdio.h>

/* module/module.c fills in the functions, slots and GC hooks (before
 * PyModuleDef_Init); the identity and the state size are the core's. */
PyModuleDef mm_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "memmanager._core",
    .m_doc = "The C core of memmanager: Buffer, allocators, the region registry.",
    .m_size = sizeof(mm_state),
};

mm_state *mm_state_from_type(PyTypeObject *type)
{
    PyObject *module = PyType_GetModuleByDef(type, &mm_module_def);
    return module ? (mm_state *)PyModule_GetState(module) : NULL;
}

void mm_raise_overlap(mm_state *st, uintptr_t start, uintptr_t end,
                      const region_info *other)
{
    char message[256];
    snprintf(message, sizeof(message),
             "region [0x%" PRIxPTR ", 0x%" PRIxPTR ") overlaps the live region "
             "[0x%" PRIxPTR ", 0x%" PRIxPTR ") of the buffer with identifier %" PRIu64,
             start, end, other->start, other->end, other->owner_id);
    PyErr_SetString(st->OverlapError, message);
}
