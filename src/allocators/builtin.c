/*
 * builtin.c -- the C vtables of the allocators that are always
 * there: PyAlloc (the interpreter's PyMem_* family, the Perl "PerlAlloc"),
 * CMalloc (the C library's malloc family, for memory C code may free or
 * hand over) and Borrowed (no memory of its own: consume only).
 *
 * They are written against the same public MemManagerAllocator struct a
 * third-party allocator uses, so nothing distinguishes them later on.
 *
 * Blocks of MM_HUGEPAGE_SIZE and more start on a huge-page boundary
 * (allocators.h says why; from that size on hugepages=True can use a huge
 * page, automatically only from MM_HUGEPAGE_THRESHOLD).  The layout costs
 * address space, not memory: the pages skipped are never touched.
 * CMalloc asks posix_memalign, whose blocks
 * free() and realloc() accept, so C code may still free them.  PyMem has
 * no aligned call: PyAlloc takes MM_HUGEPAGE_SIZE more, starts the block
 * at the first boundary past one pointer, and keeps what PyMem returned
 * in that pointer, just below the block.  Which blocks are laid out so is
 * decided by size alone, which free() is given.  CMalloc's zero-filled
 * blocks come from calloc, which has no aligned form: of those only the
 * 2 MiB extents wholly inside the block can be huge pages.
 *
 * Layer: allocators.  May call core/.
 */
#include "allocators/allocators.h"

#include <stdlib.h>

#define VTABLE_HEADER(label) \
    .name = label, \
    .abi_version = MEMMANAGER_ALLOCATOR_ABI_VERSION, \
    .struct_size = sizeof(MemManagerAllocator), \
    .ctx = NULL

/* PyAlloc: needs the GIL (allocator.c never releases it for PyAlloc). */

static int is_huge(size_t size)
{
    return size >= MM_HUGEPAGE_SIZE;
}

/* The block inside raw (from PyMem, size + MM_HUGEPAGE_SIZE bytes). */
static void *pyalloc_align(void *raw)
{
    if (raw == NULL) {
        return NULL;
    }
    uintptr_t block = ((uintptr_t)raw + sizeof(void *) + MM_HUGEPAGE_SIZE - 1) &
                      ~(uintptr_t)(MM_HUGEPAGE_SIZE - 1);
    ((void **)block)[-1] = raw;
    return (void *)block;
}

static void *pyalloc_malloc(void *ctx, size_t size)
{
    (void)ctx;
    if (!is_huge(size)) {
        return PyMem_Malloc(size);
    }
    return size > SIZE_MAX - MM_HUGEPAGE_SIZE
           ? NULL : pyalloc_align(PyMem_Malloc(size + MM_HUGEPAGE_SIZE));
}

static void *pyalloc_calloc(void *ctx, size_t count, size_t size)
{
    (void)ctx;
    if (size != 0 && count > SIZE_MAX / size) {
        return NULL;
    }
    size_t total = count * size;
    if (!is_huge(total)) {
        return PyMem_Calloc(count, size);
    }
    return total > SIZE_MAX - MM_HUGEPAGE_SIZE
           ? NULL : pyalloc_align(PyMem_Calloc(total + MM_HUGEPAGE_SIZE, 1));
}

/* What PyMem handed out for a PyAlloc block of size bytes. */
static void *pyalloc_raw(void *ptr, size_t size)
{
    return ptr != NULL && is_huge(size) ? ((void **)ptr)[-1] : ptr;
}

static void pyalloc_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    PyMem_Free(pyalloc_raw(ptr, size));
}

void mm_pyalloc_untrace(AllocatorObject *alloc, const mm_block *block)
{
    if (alloc->uses_pymem && block->guard == 0) {
        (void)PyTraceMalloc_Untrack(0, (uintptr_t)pyalloc_raw(block->address, block->size));
    }
}



static const MemManagerAllocator mm_pyalloc_vtable = {
    VTABLE_HEADER("PyAlloc"),
    .malloc = pyalloc_malloc,
    .calloc = pyalloc_calloc,
    .free = pyalloc_free,
    .realloc = NULL,   /* PyAlloc never adopts an address (consume.c) */
};

/* CMalloc: thread-safe, callable without the GIL. */

static void *cmalloc_malloc(void *ctx, size_t size)
{
    (void)ctx;
    void *ptr = NULL;
    if (!is_huge(size)) {
        return malloc(size);
    }
    return posix_memalign(&ptr, MM_HUGEPAGE_SIZE, size) == 0 ? ptr : NULL;
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

static const MemManagerAllocator mm_cmalloc_vtable = {
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

static const MemManagerAllocator mm_borrowed_vtable = {
    VTABLE_HEADER("Borrowed"),
    .malloc = borrowed_malloc,
    .calloc = borrowed_calloc,
    .free = borrowed_free,
    .realloc = NULL,
};

/* PyAlloc is the default allocator; CMalloc the one consume() of a
 * malloc'd address takes over with.  Guard bytes and huge pages only on
 * memory that is ours alone. */
int mm_builtin_kinds_register(mm_state *st)
{
    if (mm_allocator_register_kind(st, "PyAlloc", &mm_vtable_ops, &mm_pyalloc_vtable,
                                   MM_KIND_USES_PYMEM | MM_KIND_HUGEPAGES) < 0 ||
        mm_allocator_register_kind(st, "CMalloc", &mm_vtable_ops, &mm_cmalloc_vtable,
                                   MM_KIND_HUGEPAGES | MM_KIND_GUARDED) < 0 ||
        mm_allocator_register_kind(st, "Borrowed", &mm_vtable_ops, &mm_borrowed_vtable,
                                   MM_KIND_CONSUME_ONLY) < 0) {
        return -1;
    }
    st->default_allocator = Py_NewRef(PyDict_GetItemString(st->allocators, "PyAlloc"));
    st->cmalloc_allocator = Py_NewRef(PyDict_GetItemString(st->allocators, "CMalloc"));
    return 0;
}
