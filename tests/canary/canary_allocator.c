/*
 * canary_allocator.c -- a test-only C allocator plug-in, built against the
 * public header memmanager/allocator.h alone (and Python.h for the module
 * that hands out the capsule).  tests/test_plugins_c.py compiles it into a
 * temporary directory.
 *
 * The canary remembers every block it hands out (address -> size) and
 * checks every free and realloc against that table: a free of an address
 * it never gave out, or with a size other than the one allocated, is
 * counted, never performed.  The tests read the counters.
 *
 * It is written to be called without the GIL, from any thread, as the
 * header requires: the table has its own mutex.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "memmanager/allocator.h"

#define TABLE_SIZE 65536   /* a power of two; tests keep far fewer live */

typedef struct {
    void *ptr;
    size_t size;
} slot;

typedef struct {
    pthread_mutex_t lock;
    slot table[TABLE_SIZE];
    unsigned long long allocations, frees, reallocs;
    unsigned long long unknown_frees, size_mismatches;
    unsigned long long live_blocks, live_bytes;
} canary_state;

static canary_state canary = {.lock = PTHREAD_MUTEX_INITIALIZER};

static size_t hash_ptr(void *ptr)
{
    uintptr_t x = (uintptr_t)ptr;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (size_t)x & (TABLE_SIZE - 1);
}

/* Callers hold the lock. */
static slot *find(void *ptr)
{
    for (size_t i = hash_ptr(ptr), n = 0; n < TABLE_SIZE; i = (i + 1) & (TABLE_SIZE - 1), n++) {
        if (canary.table[i].ptr == ptr) {
            return &canary.table[i];
        }
        if (canary.table[i].ptr == NULL) {
            return NULL;
        }
    }
    return NULL;
}

static int remember(void *ptr, size_t size)
{
    for (size_t i = hash_ptr(ptr), n = 0; n < TABLE_SIZE; i = (i + 1) & (TABLE_SIZE - 1), n++) {
        if (canary.table[i].ptr == NULL) {
            canary.table[i].ptr = ptr;
            canary.table[i].size = size;
            canary.live_blocks++;
            canary.live_bytes += size;
            return 0;
        }
    }
    return -1;
}

/* Removes a slot, re-inserting the rest of its probe run (linear probing). */
static void forget(slot *s)
{
    size_t i = (size_t)(s - canary.table);
    canary.live_blocks--;
    canary.live_bytes -= s->size;
    s->ptr = NULL;
    for (size_t j = (i + 1) & (TABLE_SIZE - 1); canary.table[j].ptr != NULL;
         j = (j + 1) & (TABLE_SIZE - 1)) {
        slot moved = canary.table[j];
        canary.table[j].ptr = NULL;
        canary.live_blocks--;
        canary.live_bytes -= moved.size;
        remember(moved.ptr, moved.size);
    }
}

static void *record(void *ptr, size_t size)
{
    if (ptr == NULL) {
        return NULL;
    }
    pthread_mutex_lock(&canary.lock);
    canary.allocations++;
    if (remember(ptr, size) < 0) {
        pthread_mutex_unlock(&canary.lock);
        free(ptr);
        return NULL;
    }
    pthread_mutex_unlock(&canary.lock);
    return ptr;
}

static void *canary_malloc(void *ctx, size_t size)
{
    (void)ctx;
    return record(malloc(size), size);
}

static void *canary_calloc(void *ctx, size_t count, size_t size)
{
    (void)ctx;
    return record(calloc(count, size), count * size);
}

static void canary_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    pthread_mutex_lock(&canary.lock);
    slot *s = find(ptr);
    canary.frees++;
    if (s == NULL) {
        canary.unknown_frees++;
        pthread_mutex_unlock(&canary.lock);
        return;   /* not ours: never free it */
    }
    if (s->size != size) {
        canary.size_mismatches++;
    }
    forget(s);
    pthread_mutex_unlock(&canary.lock);
    free(ptr);
}

/* old_size is 0 when memmanager adopts a block whose size it does not know. */
static void *canary_realloc(void *ctx, void *ptr, size_t old_size, size_t new_size)
{
    (void)ctx;
    pthread_mutex_lock(&canary.lock);
    slot *s = find(ptr);
    canary.reallocs++;
    if (s == NULL) {
        canary.unknown_frees++;
        pthread_mutex_unlock(&canary.lock);
        return NULL;
    }
    if (old_size != 0 && s->size != old_size) {
        canary.size_mismatches++;
    }
    void *moved = realloc(ptr, new_size);
    if (moved != NULL) {
        forget(s);
        canary.allocations++;
        remember(moved, new_size);
    }
    pthread_mutex_unlock(&canary.lock);
    return moved;
}

#define HEADER(label) \
    .name = label, \
    .abi_version = MEMMANAGER_ALLOCATOR_ABI_VERSION, \
    .struct_size = sizeof(MemManagerAllocator), \
    .ctx = &canary

static MemManagerAllocator canary_vtable = {
    HEADER("Canary"),
    .malloc = canary_malloc, .calloc = canary_calloc,
    .free = canary_free, .realloc = canary_realloc,
};

/* Broken variants, for the registration checks. */
static MemManagerAllocator bad_abi = {
    .name = "bad", .abi_version = 0, .struct_size = sizeof(MemManagerAllocator),
    .malloc = canary_malloc, .calloc = canary_calloc, .free = canary_free,
};
static MemManagerAllocator bad_size = {
    .name = "bad", .abi_version = MEMMANAGER_ALLOCATOR_ABI_VERSION,
    .struct_size = offsetof(MemManagerAllocator, free),
    .malloc = canary_malloc, .calloc = canary_calloc, .free = canary_free,
};
static MemManagerAllocator no_free = {
    HEADER("bad"), .malloc = canary_malloc, .calloc = canary_calloc,
};
static MemManagerAllocator no_calloc = {
    HEADER("bad"), .malloc = canary_malloc, .free = canary_free,
};
/* A later version's caller: a bigger struct is fine. */
static struct {
    MemManagerAllocator v1;
    void *appended;
} future = {
    .v1 = {.name = "future", .abi_version = MEMMANAGER_ALLOCATOR_ABI_VERSION + 1,
           .struct_size = sizeof(MemManagerAllocator) + sizeof(void *), .ctx = &canary,
           .malloc = canary_malloc, .calloc = canary_calloc, .free = canary_free},
};

/* ------------------------------------------------------------------ */
/* The module                                                          */
/* ------------------------------------------------------------------ */

static PyObject *capsule(PyObject *module, PyObject *args)
{
    const char *which = "good";
    const char *name = MEMMANAGER_ALLOCATOR_CAPSULE;
    (void)module;
    if (!PyArg_ParseTuple(args, "|s", &which)) {
        return NULL;
    }
    MemManagerAllocator *vt = &canary_vtable;
    if (strcmp(which, "abi0") == 0) vt = &bad_abi;
    else if (strcmp(which, "small") == 0) vt = &bad_size;
    else if (strcmp(which, "nofree") == 0) vt = &no_free;
    else if (strcmp(which, "nocalloc") == 0) vt = &no_calloc;
    else if (strcmp(which, "future") == 0) vt = &future.v1;
    else if (strcmp(which, "wrongname") == 0) name = "not.memmanager";
    else if (strcmp(which, "good") != 0) {
        PyErr_Format(PyExc_ValueError, "unknown variant %s", which);
        return NULL;
    }
    return PyCapsule_New(vt, name, NULL);
}

static PyObject *counters(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    pthread_mutex_lock(&canary.lock);
    PyObject *result = Py_BuildValue(
        "{s:K,s:K,s:K,s:K,s:K,s:K,s:K}",
        "allocations", canary.allocations, "frees", canary.frees,
        "reallocs", canary.reallocs, "unknown_frees", canary.unknown_frees,
        "size_mismatches", canary.size_mismatches,
        "live_blocks", canary.live_blocks, "live_bytes", canary.live_bytes);
    pthread_mutex_unlock(&canary.lock);
    return result;
}

/* A block from the canary, as C code would hand one over for consume(). */
static PyObject *alloc_raw(PyObject *module, PyObject *arg)
{
    (void)module;
    Py_ssize_t size = PyLong_AsSsize_t(arg);
    if (size <= 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "size must be positive");
        }
        return NULL;
    }
    void *ptr = canary_malloc(&canary, (size_t)size);
    if (ptr == NULL) {
        return PyErr_NoMemory();
    }
    return PyLong_FromVoidPtr(ptr);
}

/* At C exit (after the interpreter finalised): what is still live. */
static void report_counters(void)
{
    printf("live_blocks=%llu size_mismatches=%llu unknown_frees=%llu\n",
           canary.live_blocks, canary.size_mismatches, canary.unknown_frees);
    fflush(stdout);
}

static PyObject *report_at_exit(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    if (atexit(report_counters) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "atexit failed");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef canary_methods[] = {
    {"report_at_exit", report_at_exit, METH_NOARGS,
     "report_at_exit() -> None: print the counters when the process exits"},
    {"capsule", capsule, METH_VARARGS, "capsule(variant='good') -> PyCapsule"},
    {"counters", counters, METH_NOARGS, "counters() -> dict"},
    {"alloc_raw", alloc_raw, METH_O, "alloc_raw(size) -> address"},
    {NULL},
};

static struct PyModuleDef canary_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_canary",
    .m_doc = "A test-only allocator plug-in.",
    .m_size = -1,
    .m_methods = canary_methods,
};

PyMODINIT_FUNC PyInit__canary(void)
{
    return PyModule_Create(&canary_module);
}
