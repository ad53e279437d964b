/*
 * flaky_allocator.c -- a test-only C allocator plug-in that fails on
 * request: after `succeed` more allocations (malloc or calloc), every one
 * returns NULL until set again (-1: never fail).  It counts its malloc,
 * calloc and free calls and the blocks and bytes it holds, so a test can
 * tell which function NumPy's zeros reached and that nothing leaked.
 * tests/test_attack_numpy2.py compiles it, as test_plugins_c.py does the
 * canary.  Thread-safe (atomics); never calls Python from the vtable.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>

#include "memmanager/allocator.h"

static long long succeed = -1;   /* allocations left before failing; -1: no limit */
static unsigned long long mallocs, callocs, frees, failures, live_blocks, live_bytes;

static int may_allocate(void)
{
    long long left = __atomic_load_n(&succeed, __ATOMIC_SEQ_CST);
    while (left >= 0) {
        if (left == 0) {
            __atomic_add_fetch(&failures, 1, __ATOMIC_SEQ_CST);
            return 0;
        }
        if (__atomic_compare_exchange_n(&succeed, &left, left - 1, 0,
                                        __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
            break;
        }
    }
    return 1;
}

static void *took(void *ptr, size_t size)
{
    if (ptr != NULL) {
        __atomic_add_fetch(&live_blocks, 1, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&live_bytes, size, __ATOMIC_SEQ_CST);
    }
    return ptr;
}

static void *flaky_malloc(void *ctx, size_t size)
{
    (void)ctx;
    __atomic_add_fetch(&mallocs, 1, __ATOMIC_SEQ_CST);
    return may_allocate() ? took(malloc(size), size) : NULL;
}

static void *flaky_calloc(void *ctx, size_t count, size_t size)
{
    (void)ctx;
    __atomic_add_fetch(&callocs, 1, __ATOMIC_SEQ_CST);
    return may_allocate() ? took(calloc(count, size), count * size) : NULL;
}

static void flaky_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    __atomic_add_fetch(&frees, 1, __ATOMIC_SEQ_CST);
    __atomic_sub_fetch(&live_blocks, 1, __ATOMIC_SEQ_CST);
    __atomic_sub_fetch(&live_bytes, size, __ATOMIC_SEQ_CST);
    free(ptr);
}

static MemManagerAllocator flaky_vtable = {
    .name = "Flaky",
    .abi_version = MEMMANAGER_ALLOCATOR_ABI_VERSION,
    .struct_size = sizeof(MemManagerAllocator),
    .malloc = flaky_malloc,
    .calloc = flaky_calloc,
    .free = flaky_free,
};

static PyObject *capsule(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyCapsule_New(&flaky_vtable, MEMMANAGER_ALLOCATOR_CAPSULE, NULL);
}

static PyObject *set_succeed(PyObject *module, PyObject *arg)
{
    (void)module;
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    __atomic_store_n(&succeed, n, __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyObject *counters(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return Py_BuildValue("{sKsKsKsKsKsK}",
                         "mallocs", __atomic_load_n(&mallocs, __ATOMIC_SEQ_CST),
                         "callocs", __atomic_load_n(&callocs, __ATOMIC_SEQ_CST),
                         "frees", __atomic_load_n(&frees, __ATOMIC_SEQ_CST),
                         "failures", __atomic_load_n(&failures, __ATOMIC_SEQ_CST),
                         "live_blocks", __atomic_load_n(&live_blocks, __ATOMIC_SEQ_CST),
                         "live_bytes", __atomic_load_n(&live_bytes, __ATOMIC_SEQ_CST));
}

static PyMethodDef flaky_methods[] = {
    {"capsule", capsule, METH_NOARGS, "capsule() -> PyCapsule"},
    {"succeed", set_succeed, METH_O, "succeed(n): n more allocations, then NULL (-1: always)"},
    {"counters", counters, METH_NOARGS, "counters() -> dict"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef flaky_module = {
    PyModuleDef_HEAD_INIT, "_flaky", "A C allocator plug-in that fails on request.", -1,
    flaky_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__flaky(void)
{
    return PyModule_Create(&flaky_module);
}
