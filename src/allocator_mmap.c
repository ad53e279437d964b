/*
 * allocator_mmap.c -- the Mmap allocator kind, and the page-mapping
 * helpers the Aligned and SharedMemory kinds share with it.
 *
 *   Buffer(n, s, allocator="Mmap", hugepages=None, populate=False,
 *          shared=False)
 *
 * Each buffer is one anonymous mapping of its own, rounded up to whole
 * pages, so every madvise touches this buffer's pages only:
 *   - hugepages: True advises transparent huge pages on the mapping, False
 *     never does; None (the default) advises them for blocks of 4 MiB and
 *     more that are about to be written (not for zero-fill, whose pages
 *     stay the kernel's lazy zero pages), as the heap allocators do;
 *   - populate: pre-faults every page at allocation (after the huge-page
 *     advice, so the faults can be huge ones);
 *   - shared: MAP_SHARED instead of MAP_PRIVATE, so a child made by fork()
 *     writes the same memory as its parent.
 * Anonymous mappings are zeroed by the kernel: init_value=0 costs nothing.
 */
#include "memmanager.h"

#include <sys/mman.h>
#include <unistd.h>

#ifndef MAP_ANONYMOUS
#define MAP_ANONYMOUS MAP_ANON
#endif

#define MMAP_HUGEPAGE_THRESHOLD ((size_t)4 << 20)

/* ------------------------------------------------------------------ */
/* Page helpers                                                        */
/* ------------------------------------------------------------------ */

size_t mm_page_size(void)
{
    long page = sysconf(_SC_PAGESIZE);
    return page > 0 ? (size_t)page : 4096;
}

/* size rounded up to whole pages; 0 when that overflows. */
size_t mm_round_to_pages(size_t size)
{
    size_t page = mm_page_size();
    if (size > SIZE_MAX - (page - 1)) {
        return 0;
    }
    return (size + page - 1) & ~(page - 1);
}

/* A fresh zeroed mapping of size bytes (rounded to pages) starting at a
 * multiple of alignment (a power of two); NULL on failure.  When the
 * alignment is above the page size, more is mapped and the slack at both
 * ends given back, so mm_unmap(base, size) later unmaps all of it. */
char *mm_map_anonymous(size_t size, size_t alignment, int shared)
{
    size_t page = mm_page_size();
    size_t length = mm_round_to_pages(size);
    size_t slack = alignment > page ? alignment - page : 0;
    int flags = MAP_ANONYMOUS | (shared ? MAP_SHARED : MAP_PRIVATE);
    if (length == 0 || length > SIZE_MAX - slack) {
        return NULL;
    }
    char *map = mmap(NULL, length + slack, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (map == MAP_FAILED) {
        return NULL;
    }
    if (slack == 0) {
        return map;
    }
    uintptr_t start = ((uintptr_t)map + alignment - 1) & ~(uintptr_t)(alignment - 1);
    size_t head = (size_t)(start - (uintptr_t)map);
    if (head > 0) {
        munmap(map, head);
    }
    if (slack - head > 0) {
        munmap((char *)start + length, slack - head);
    }
    return (char *)start;
}

void mm_unmap(char *base, size_t size)
{
    munmap(base, mm_round_to_pages(size));
}

/* Asks for transparent huge pages from the block's first whole page to
 * the end of its last page, partial or not, as NumPy does.  The advice is
 * only a hint on the mapping, so a partial page shared with a neighbour
 * comes to no harm; leaving it out would cost the huge page that ends
 * there (a 64 MiB block from malloc then gets 62 MiB of huge pages where
 * NumPy's gets 64, and fills 20% slower). */
void mm_advise_hugepages(void *ptr, size_t size)
{
#ifdef MADV_HUGEPAGE
    uintptr_t page = (uintptr_t)mm_page_size();
    uintptr_t first = ((uintptr_t)ptr + page - 1) & ~(page - 1);
    uintptr_t last = ((uintptr_t)ptr + size + page - 1) & ~(page - 1);
    if (last > first) {
        (void)madvise((void *)first, last - first, MADV_HUGEPAGE);
    }
#else
    (void)ptr;
    (void)size;
#endif
}

/* Faults in every page of a fresh zeroed mapping for writing. */
void mm_populate(char *base, size_t size)
{
    size_t length = mm_round_to_pages(size);
#ifdef MADV_POPULATE_WRITE
    if (madvise(base, length, MADV_POPULATE_WRITE) == 0) {
        return;
    }
#endif
    /* Older kernels: one write per page (the pages are zero already). */
    size_t page = mm_page_size();
    for (size_t offset = 0; offset < length; offset += page) {
        ((volatile char *)base)[offset] = 0;
    }
}

/* ------------------------------------------------------------------ */
/* The Mmap kind                                                       */
/* ------------------------------------------------------------------ */

static int parse_bool_option(PyObject *options, const char *key, int *out)
{
    PyObject *value;
    mm_option_get(options, key, &value);
    if (value != NULL) {
        int truth = PyObject_IsTrue(value);
        if (truth < 0) {
            return -1;
        }
        *out = truth;
    }
    return 0;
}

static int mmap_parse_options(AllocatorObject *self, PyObject *options,
                              mm_request *req)
{
    static const char *const known[] = {"hugepages", "populate", "shared", NULL};
    req->alignment = mm_page_size();
    if (options == NULL) {
        return 0;
    }
    if (mm_option_refuse_others(self, options, known) < 0 ||
        parse_bool_option(options, "hugepages", &req->hugepages) < 0 ||
        parse_bool_option(options, "populate", &req->populate) < 0 ||
        parse_bool_option(options, "shared", &req->shared) < 0) {
        return -1;
    }
    return 0;
}

static int wants_hugepages(const mm_request *req, size_t size)
{
    if (req->hugepages >= 0) {
        return req->hugepages;
    }
    return req->init_byte != 0 && size >= MMAP_HUGEPAGE_THRESHOLD;
}

static int mmap_allocate(AllocatorObject *self, const mm_request *req,
                         size_t size, int Py_UNUSED(zero), mm_raw *out)
{
    char *base = mm_map_anonymous(size, req->alignment, req->shared);
    if (base == NULL) {
        PyErr_Format(PyExc_MemoryError, "Allocator %U could not map %zu bytes",
                     self->name, size);
        return -1;
    }
    if (wants_hugepages(req, size)) {
        mm_advise_hugepages(base, mm_round_to_pages(size));
    }
    if (req->populate) {
        mm_populate(base, size);
    }
    out->base = base;
    out->cookie = NULL;
    return 0;
}

static void mmap_release(AllocatorObject *Py_UNUSED(self), char *base,
                         size_t size, void *Py_UNUSED(cookie))
{
    mm_unmap(base, size);
}

const mm_allocator_ops mm_mmap_ops = {
    .kind = "Mmap",
    .parse_options = mmap_parse_options,
    .allocate = mmap_allocate,
    .release = mmap_release,
};
