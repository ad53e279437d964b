/*
 * mmap.c -- the Mmap allocator kind: one anonymous mapping per buffer
 * (the mapping helpers are pages.c's).
 *
 *   Buffer(n, s, allocator="Mmap", hugepages=None, populate=False,
 *          shared=False, numa_node=None)
 *
 * Each buffer is one anonymous mapping of its own, rounded up to whole
 * pages, so every madvise touches this buffer's pages only:
 *   - hugepages: True advises transparent huge pages on the mapping, False
 *     never does; None (the default) advises them for blocks of 4 MiB and
 *     more that are about to be written (not for zero-fill, whose pages
 *     stay the kernel's lazy zero pages), as the heap allocators do, unless
 *     MEMMANAGER_HUGEPAGES=0 turned that off (allocators.h);
 *   - numa_node: binds the mapping to that node (numa.c) before anything
 *     touches it, populate included;
 *   - populate: pre-faults every page at allocation (after the huge-page
 *     advice, so the faults can be huge ones);
 *   - shared: MAP_SHARED instead of MAP_PRIVATE, so a child made by fork()
 *     writes the same memory as its parent.
 * Anonymous mappings are zeroed by the kernel: init_value=0 costs nothing.
 *
 * Layer: allocators.  May call core/.
 */
#include "allocators/allocators.h"

#include <sys/mman.h>
#include <unistd.h>

#ifndef MAP_ANONYMOUS
#define MAP_ANONYMOUS MAP_ANON
#endif

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
    static const char *const known[] = {"hugepages", "populate", "shared",
                                        "numa_node", NULL};
    req->alignment = mm_page_size();
    if (options == NULL) {
        return 0;
    }
    if (mm_option_refuse_others(self, options, known) < 0 ||
        mm_option_hugepages(options, req) < 0 ||
        parse_bool_option(options, "populate", &req->populate) < 0 ||
        parse_bool_option(options, "shared", &req->shared) < 0 ||
        mm_numa_option(options, req) < 0) {
        return -1;
    }
    return 0;
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
    if (req->numa_node >= 0 &&
        mm_numa_bind(self, base, mm_round_to_pages(size), req->numa_node) < 0) {
        mm_unmap(base, size);
        return -1;
    }
    if (mm_wants_hugepages(self, req, size, req->init_byte == 0)) {
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

static const mm_allocator_ops mm_mmap_ops = {
    .kind = "Mmap",
    .parse_options = mmap_parse_options,
    .allocate = mmap_allocate,
    .release = mmap_release,
};

/* Mmap advises huge pages itself (hugepages=): only guard bytes here. */
int mm_mmap_kind_register(mm_state *st)
{
    return mm_allocator_register_kind(st, "Mmap", &mm_mmap_ops, NULL, MM_KIND_GUARDED);
}
