/*
 * allocator.c -- the Allocator object: one MemManagerAllocator vtable
 * behind a registered name, and the two operations every buffer goes
 * through, allocator_alloc_block() and allocator_free_block().
 *
 * What lives here and not in the vtables:
 *   - the init byte: zero goes through calloc (lazy zero pages for large
 *     blocks, never a second pass), any other byte through malloc+memset;
 *   - releasing the GIL around large frees by thread-safe allocators and
 *     around large memsets (the block is not shared with anybody yet);
 *   - transparent huge pages for large non-zeroed heap blocks;
 *   - tracemalloc reporting under MEMMANAGER_TRACEMALLOC_DOMAIN for every
 *     allocator that does not use PyMem_* (which Python traces itself).
 *   - device allocators (cuda_allocators.c): their `prepare` hook runs
 *     before each allocation, and memory the host cannot touch is filled
 *     by their `fill` hook instead of memset.
 *
 * Each buffer holds a strong reference to its AllocatorObject, so it frees
 * through the allocator that made it even after the name is re-registered.
 */
#include "memmanager.h"

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Above this size the GIL is released around a fill and a free (a munmap
 * of touched pages); allocation itself is at most one quick mmap. */
#define RELEASE_GIL_THRESHOLD ((size_t)1 << 20)

/* From this size on, blocks of the built-in heap allocators are advised to
 * use transparent huge pages: one fault per 2 MiB instead of per 4 KiB,
 * which is most of the cost of touching a fresh 64 MiB block. */
#define HUGEPAGE_THRESHOLD ((size_t)4 << 20)

/* ------------------------------------------------------------------ */
/* The Allocator type                                                  */
/* ------------------------------------------------------------------ */

static void allocator_dealloc(PyObject *op)
{
    AllocatorObject *self = (AllocatorObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    Py_CLEAR(self->name);
    Py_CLEAR(self->keeper);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *allocator_repr(PyObject *op)
{
    return PyUnicode_FromFormat("<memmanager allocator %R>",
                                ((AllocatorObject *)op)->name);
}

static PyMemberDef allocator_members[] = {
    {"name", T_OBJECT_EX, offsetof(AllocatorObject, name), READONLY,
     "The name the allocator is registered under."},
    {NULL},
};

static PyType_Slot allocator_slots[] = {
    {Py_tp_doc, "An allocator registered with memmanager (internal)."},
    {Py_tp_dealloc, allocator_dealloc},
    {Py_tp_repr, allocator_repr},
    {Py_tp_members, allocator_members},
    {0, NULL},
};

PyType_Spec allocator_type_spec = {
    .name = "memmanager._core.Allocator",
    .basicsize = sizeof(AllocatorObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = allocator_slots,
};

PyObject *allocator_new(mm_state *st, const char *name,
                        const MemManagerAllocator *vtable, PyObject *keeper)
{
    int slot = region_registry_stats_slot(name);
    if (slot < 0) {
        PyErr_SetString(PyExc_RuntimeError, "too many allocators registered");
        return NULL;
    }
    AllocatorObject *self = PyObject_New(AllocatorObject, st->allocator_type);
    if (self == NULL) {
        return NULL;
    }
    self->vtable = vtable;
    self->keeper = Py_XNewRef(keeper);
    self->stats_slot = slot;
    self->uses_pymem = (vtable == &mm_pyalloc_vtable);
    self->consume_only = (vtable == &mm_borrowed_vtable);
    self->advise_hugepages = (vtable == &mm_pyalloc_vtable ||
                              vtable == &mm_cmalloc_vtable);
    self->device_hooks = NULL;
    self->memory_kind = MM_MEMORY_HOST;
    self->name = PyUnicode_FromString(name);
    if (self->name == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int register_builtin(mm_state *st, const MemManagerAllocator *vtable)
{
    PyObject *alloc = allocator_new(st, vtable->name, vtable, NULL);
    if (alloc == NULL) {
        return -1;
    }
    int rc = PyDict_SetItemString(st->allocators, vtable->name, alloc);
    Py_DECREF(alloc);
    return rc;
}

int allocator_register_builtins(mm_state *st)
{
    if (register_builtin(st, &mm_pyalloc_vtable) < 0 ||
        register_builtin(st, &mm_cmalloc_vtable) < 0 ||
        register_builtin(st, &mm_borrowed_vtable) < 0 ||
        cuda_register_allocators(st) < 0) {
        return -1;
    }
    st->default_allocator = Py_NewRef(PyDict_GetItemString(st->allocators, "PyAlloc"));
    st->cmalloc_allocator = Py_NewRef(PyDict_GetItemString(st->allocators, "CMalloc"));
    return 0;
}

AllocatorObject *allocator_lookup(mm_state *st, PyObject *name)
{
    if (st->allocators == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot allocate: memmanager is shutting down");
        return NULL;
    }
    if (name == NULL) {
        return (AllocatorObject *)st->default_allocator;
    }
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "allocator must be a str, not %.100s",
                     Py_TYPE(name)->tp_name);
        return NULL;
    }
    PyObject *alloc = PyDict_GetItemWithError(st->allocators, name);
    if (alloc == NULL && !PyErr_Occurred()) {
        PyErr_Format(st->UnknownAllocatorError,
                     "Allocator %U does not exist.", name);
    }
    return (AllocatorObject *)alloc;  /* borrowed */
}

int allocator_check_options(AllocatorObject *alloc, PyObject *options)
{
    if (options == NULL || PyDict_GET_SIZE(options) == 0) {
        return 0;
    }
    PyObject *key = NULL;
    Py_ssize_t pos = 0;
    PyDict_Next(options, &pos, &key, NULL);
    PyErr_Format(PyExc_TypeError,
                 "allocator %U takes no option %R", alloc->name, key);
    return -1;
}

/* ------------------------------------------------------------------ */
/* Blocks                                                              */
/* ------------------------------------------------------------------ */

void allocator_track(AllocatorObject *alloc, mm_block *block)
{
    if (!alloc->uses_pymem && !alloc->consume_only) {
        /* -2 means tracemalloc is not tracing: nothing to do. */
        (void)PyTraceMalloc_Track(MEMMANAGER_TRACEMALLOC_DOMAIN,
                                  (uintptr_t)block->address, block->size);
    }
}

/* madvise only the whole pages inside the block, which belong to it alone. */
static void advise_hugepages(void *ptr, size_t size)
{
#ifdef MADV_HUGEPAGE
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t first = ((uintptr_t)ptr + page - 1) & ~(page - 1);
    uintptr_t last = ((uintptr_t)ptr + size) & ~(page - 1);
    if (last > first) {
        (void)madvise((void *)first, last - first, MADV_HUGEPAGE);
    }
#else
    (void)ptr;
    (void)size;
#endif
}

static void *call_allocate(const MemManagerAllocator *vt, size_t size, int zero)
{
    return zero ? vt->calloc(vt->ctx, size, 1) : vt->malloc(vt->ctx, size);
}

/* Sets every byte of a fresh block; 0 or -1 with an exception. */
static int fill_block(AllocatorObject *alloc, void *ptr, int init_byte, size_t size)
{
    if (alloc->memory_kind == MM_MEMORY_CUDA_DEVICE) {
        return alloc->device_hooks->fill(alloc, ptr, init_byte, size);
    }
    if (size >= RELEASE_GIL_THRESHOLD) {
        Py_BEGIN_ALLOW_THREADS
        memset(ptr, init_byte, size);
        Py_END_ALLOW_THREADS
    }
    else {
        memset(ptr, init_byte, size);
    }
    return 0;
}

int allocator_alloc_block(AllocatorObject *alloc, size_t size, int init_byte,
                          mm_block *out)
{
    const MemManagerAllocator *vt = alloc->vtable;
    int zero = (init_byte == 0);
    void *ptr;

    if (alloc->consume_only) {
        PyErr_Format(PyExc_ValueError,
                     "Allocator %U can only adopt memory: use Buffer.consume()",
                     alloc->name);
        return -1;
    }
    if (alloc->device_hooks != NULL && alloc->device_hooks->prepare(alloc) < 0) {
        return -1;
    }
    ptr = call_allocate(vt, size, zero);   /* an mmap at most: quick */
    if (ptr == NULL) {
        PyErr_Format(PyExc_MemoryError, "Allocator %U could not allocate %zu bytes",
                     alloc->name, size);
        return -1;
    }
    /* Zeroed blocks are left to the kernel's lazy zero pages, untouched. */
    if (!zero && size >= HUGEPAGE_THRESHOLD && alloc->advise_hugepages) {
        advise_hugepages(ptr, size);
    }
    if (init_byte > 0 && fill_block(alloc, ptr, init_byte, size) < 0) {
        vt->free(vt->ctx, ptr, size);
        return -1;
    }
    out->address = ptr;
    out->size = size;
    allocator_track(alloc, out);
    return 0;
}

void allocator_free_block(AllocatorObject *alloc, mm_block *block)
{
    const MemManagerAllocator *vt = alloc->vtable;
    if (!alloc->uses_pymem && !alloc->consume_only) {
        (void)PyTraceMalloc_Untrack(MEMMANAGER_TRACEMALLOC_DOMAIN,
                                    (uintptr_t)block->address);
    }
    if (block->size >= RELEASE_GIL_THRESHOLD && !alloc->uses_pymem) {
        Py_BEGIN_ALLOW_THREADS
        vt->free(vt->ctx, block->address, block->size);
        Py_END_ALLOW_THREADS
    }
    else {
        vt->free(vt->ctx, block->address, block->size);
    }
    block->address = NULL;
}
