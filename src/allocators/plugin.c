/*
 * plugin.c -- register_allocator(name, impl): turning a
 * third-party allocator into an Allocator object under a name.
 *
 *   impl                                    kind
 *   --------------------------------------  ------------------------------
 *   a PyCapsule named "memmanager.allocator" vtable: the public C struct
 *     holding a MemManagerAllocator          of memmanager/allocator.h
 *   any other object with malloc, free,     python (python.c)
 *     get_buffer_address (consume optional)
 *
 * Everything is checked before anything is registered: the name (a str of
 * 1 to 63 UTF-8 bytes, not a built-in's), the capsule's name, ABI version,
 * struct size and function pointers, the Python object's methods (all the
 * missing ones are named).  A plug-in name may be registered again: the
 * new allocator replaces the old one for new buffers, and the buffers made
 * before keep freeing through the allocator that made them.
 *
 * Layer: allocators.  May call core/.
 */
#include "allocators/allocators.h"

#include <string.h>

/* The size of the version 1 struct: everything up to realloc. */
#define ABI_V1_STRUCT_SIZE \
    (offsetof(MemManagerAllocator, realloc) + sizeof(void *))

/* ------------------------------------------------------------------ */
/* C capsules                                                          */
/* ------------------------------------------------------------------ */

static const MemManagerAllocator *vtable_from_capsule(PyObject *capsule)
{
    if (!PyCapsule_IsValid(capsule, MEMMANAGER_ALLOCATOR_CAPSULE)) {
        const char *name = PyCapsule_GetName(capsule);
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "register_allocator() needs a capsule named '%s', not one "
                     "named '%s'", MEMMANAGER_ALLOCATOR_CAPSULE,
                     name != NULL ? name : "(none)");
        return NULL;
    }
    const MemManagerAllocator *vt = PyCapsule_GetPointer(capsule, MEMMANAGER_ALLOCATOR_CAPSULE);
    if (vt == NULL) {
        return NULL;
    }
    if (vt->abi_version < 1) {
        PyErr_Format(PyExc_ValueError,
                     "allocator capsule: abi_version %u is not supported (need >= 1)",
                     (unsigned)vt->abi_version);
        return NULL;
    }
    if (vt->struct_size < ABI_V1_STRUCT_SIZE) {
        PyErr_Format(PyExc_ValueError,
                     "allocator capsule: struct_size %u is smaller than version 1's %zu",
                     (unsigned)vt->struct_size, (size_t)ABI_V1_STRUCT_SIZE);
        return NULL;
    }
    const char *missing = vt->malloc == NULL ? "malloc"
                        : vt->calloc == NULL ? "calloc"
                        : vt->free == NULL ? "free" : NULL;
    if (missing != NULL) {
        PyErr_Format(PyExc_ValueError,
                     "allocator capsule: the function %s is NULL", missing);
        return NULL;
    }
    return vt;
}

static AllocatorObject *from_capsule(mm_state *st, const char *name, PyObject *capsule)
{
    const MemManagerAllocator *vt = vtable_from_capsule(capsule);
    if (vt == NULL) {
        return NULL;
    }
    return mm_allocator_new(st, name, &mm_vtable_ops, vt, capsule);
}

/* ------------------------------------------------------------------ */
/* Python objects                                                      */
/* ------------------------------------------------------------------ */

/* impl.<name> if it is callable; NULL with no exception when absent. */
static PyObject *find_method(PyObject *impl, const char *name, int *not_callable)
{
    PyObject *method = PyObject_GetAttrString(impl, name);
    if (method == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
        }
        return NULL;
    }
    if (!PyCallable_Check(method)) {
        *not_callable = 1;
        Py_DECREF(method);
        return NULL;
    }
    return method;
}

static PyObject *describe_missing(PyObject *impl, PyObject *missing)
{
    PyObject *sep = PyUnicode_FromString(", ");
    PyObject *joined = sep ? PyUnicode_Join(sep, missing) : NULL;
    if (joined != NULL) {
        PyErr_Format(PyExc_TypeError,
                     "allocator plug-in %R is missing %U (it needs callable "
                     "malloc, free and get_buffer_address)", impl, joined);
    }
    Py_XDECREF(sep);
    Py_XDECREF(joined);
    return NULL;
}

/* (malloc, free, get_buffer_address, consume or None), or NULL with a
 * TypeError naming every required method that is missing. */
static PyObject *plugin_methods(PyObject *impl)
{
    static const char *const required[] = {"malloc", "free", "get_buffer_address"};
    PyObject *methods = PyTuple_New(4);
    PyObject *missing = PyList_New(0);
    if (methods == NULL || missing == NULL) {
        goto error;
    }
    for (int i = 0; i < 3; i++) {
        int not_callable = 0;
        PyObject *method = find_method(impl, required[i], &not_callable);
        if (method == NULL && PyErr_Occurred()) {
            goto error;
        }
        if (method == NULL) {
            PyObject *entry = PyUnicode_FromFormat(
                not_callable ? "%s (not callable)" : "%s", required[i]);
            if (entry == NULL || PyList_Append(missing, entry) < 0) {
                Py_XDECREF(entry);
                goto error;
            }
            Py_DECREF(entry);
            method = Py_NewRef(Py_None);
        }
        PyTuple_SET_ITEM(methods, i, method);
    }
    int not_callable = 0;
    PyObject *consume = find_method(impl, "consume", &not_callable);
    if (consume == NULL && PyErr_Occurred()) {
        goto error;
    }
    if (not_callable) {
        PyErr_Format(PyExc_TypeError,
                     "allocator plug-in %R: consume is not callable", impl);
        goto error;
    }
    PyTuple_SET_ITEM(methods, 3, consume ? consume : Py_NewRef(Py_None));
    if (PyList_GET_SIZE(missing) > 0) {
        describe_missing(impl, missing);
        goto error;
    }
    Py_DECREF(missing);
    return methods;
error:
    Py_XDECREF(methods);
    Py_XDECREF(missing);
    return NULL;
}

static AllocatorObject *from_python(mm_state *st, const char *name, PyObject *impl)
{
    PyObject *methods = plugin_methods(impl);
    if (methods == NULL) {
        return NULL;
    }
    AllocatorObject *alloc = mm_allocator_new(st, name, &mm_python_ops, NULL, impl);
    if (alloc == NULL) {
        Py_DECREF(methods);
        return NULL;
    }
    alloc->plugin_methods = methods;
    alloc->needs_gil = 1;      /* it calls Python code */
    alloc->fills_itself = 1;   /* malloc(size, init) writes the init byte */
    return alloc;
}

/* ------------------------------------------------------------------ */
/* Registration                                                        */
/* ------------------------------------------------------------------ */

const char *mm_allocator_checked_name(mm_state *st, PyObject *name)
{
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "the allocator name must be a str, not %.100s",
                     Py_TYPE(name)->tp_name);
        return NULL;
    }
    Py_ssize_t length;
    const char *utf8 = PyUnicode_AsUTF8AndSize(name, &length);
    if (utf8 == NULL) {
        return NULL;
    }
    /* Any length: the registry's stats table keeps its own copy. */
    if (length == 0 || strlen(utf8) != (size_t)length) {
        PyErr_Format(PyExc_ValueError,
                     "an allocator name is a non-empty str without NUL, not %.200R",
                     name);
        return NULL;
    }
    PyObject *existing = PyDict_GetItemWithError(st->allocators, name);
    if (existing == NULL && PyErr_Occurred()) {
        return NULL;
    }
    if (existing != NULL && !((AllocatorObject *)existing)->is_plugin) {
        PyErr_Format(PyExc_ValueError,
                     "%R is a built-in allocator and cannot be replaced", name);
        return NULL;
    }
    return utf8;
}

/* Registers impl under name; returns the new Allocator object. */
PyObject *mm_allocator_register_plugin(mm_state *st, PyObject *name, PyObject *impl)
{
    if (st->allocators == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "memmanager is shutting down");
        return NULL;
    }
    const char *utf8 = mm_allocator_checked_name(st, name);
    if (utf8 == NULL) {
        return NULL;
    }
    AllocatorObject *alloc = PyCapsule_CheckExact(impl) ? from_capsule(st, utf8, impl)
                                                        : from_python(st, utf8, impl);
    if (alloc == NULL) {
        return NULL;
    }
    alloc->is_plugin = 1;
    if (mm_allocator_registry_set(st, name, alloc) < 0) {
        Py_DECREF(alloc);
        return NULL;
    }
    return (PyObject *)alloc;
}
