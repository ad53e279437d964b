/*
 * builtin_allocators.c -- the C vtables of the allocators that are always
 * there: PyAlloc (the interpreter's PyMem_* family, the Perl "PerlAlloc"),
 * CMalloc (the C library's malloc family, for memory C code may free or
 * hand over) and Borrowed (no memory of its own: consume only).
 *
 * They are written against the same public MemManagerAllocator struct a
 * third-party allocator uses, so nothing distinguishes them later on.
 */
#include "memmanager.h"

#include <stdlib.h>

#define VTABLE_HEADER(label) \
    .name = label, \
    .abi_version = MEMMANAGER_ALLOCATOR_ABI_VERSION, \
    .struct_size = sizeof(MemManagerAllocator), \
    .ctx = NULL

/* PyAlloc: needs the GIL (allocator.c never releases it for PyAlloc). */

static void *pyalloc_malloc(void *ctx, size_t size)
{
    (void)ctx;
    return PyMem_Malloc(size);
}

static void *pyalloc_calloc(void *ctx, size_t count, size_t size)
{
    (void)ctx;
    return PyMem_Calloc(count, size);
}

static void pyalloc_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    (void)size;
    PyMem_Free(ptr);
}

static void *pyalloc_realloc(void *ctx, void *ptr, size_t old_size, size_t new_size)
{
    (void)ctx;
    (void)old_size;
    return PyMem_Realloc(ptr, new_size);
}

const MemManagerAllocator mm_pyalloc_vtable = {
    VTABLE_HEADER("PyAlloc"),
    .malloc = pyalloc_malloc,
    .calloc = pyalloc_calloc,
    .free = pyalloc_free,
    .realloc = pyalloc_realloc,
};

/* CMalloc: thread-safe, callable without the GIL. */

static void *cmalloc_malloc(void *ctx, size_t size)
{
    (void)ctx;
    return malloc(size);
}

static void *cmalloc_calloc(void *ctx, size_t count, size_t size)
{
    (void)ctx;
    return calloc(count, size);
}

static void cmalloc_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    (void)size;
    free(ptr);
}

static void *cmalloc_realloc(void *ctx, void *ptr, size_t old_size, size_t new_size)
{
    (void)ctx;
    (void)old_size;
    return realloc(ptr, new_size);
}

const MemManagerAllocator mm_cmalloc_vtable = {
    VTABLE_HEADER("CMalloc"),
    .malloc = cmalloc_malloc,
    .calloc = cmalloc_calloc,
    .free = cmalloc_free,
    .realloc = cmalloc_realloc,
};

/* Borrowed: wraps memory somebody else owns; allocates and frees nothing. */

static void *borrowed_malloc(void *ctx, size_t size)
{
    (void)ctx;
    (void)size;
    return NULL;
}

static void *borrowed_calloc(void *ctx, size_t count, size_t size)
{
    (void)ctx;
    (void)count;
    (void)size;
    return NULL;
}

static void borrowed_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    (void)ptr;
    (void)size;
}

const MemManagerAllocator mm_borrowed_vtable = {
    VTABLE_HEADER("Borrowed"),
    .malloc = borrowed_malloc,
    .calloc = borrowed_calloc,
    .free = borrowed_free,
    .realloc = NULL,
};
