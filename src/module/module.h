/*
 * module.h -- the module layer: memmanager._core as Python sees it.
 *
 *   module.c       the module: initialisation (PEP 489), the table of
 *                  allocator kinds it registers, the module functions,
 *                  GC support of the state
 *   buffer_type.c  the Buffer type: attributes, methods, slots
 *
 * Layer: module (the top).  May call every layer.
 */
#ifndef MEMMANAGER_MODULE_H
#define MEMMANAGER_MODULE_H

#include "cuda/cuda.h"
#include "adaptors/adaptors.h"

/* buffer_type.c */
extern PyType_Spec mm_buffer_type_spec;
int mm_buffer_finish_type(mm_state *st, PyTypeObject *type);
PyObject *mm_set_python_methods(mm_state *st, PyObject *table);

#endif /* MEMMANAGER_MODULE_H */
