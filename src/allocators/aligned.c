/*
 * aligned.c -- the Aligned allocator kind:
 *
 *   Buffer(n, s, allocator="Aligned", alignment=64, hugepages=None,
 *          numa_node=None)
 *
 * The block starts at a multiple of `alignment`, a power of two from 1 to
 * 1 GiB (anything else is ValueError; None means the default, 64).  Blocks
 * come from posix_memalign, except zero-filled blocks of 128 KiB and more,
 * which are fresh anonymous mappings (aligned by mm_map_anonymous): the
 * kernel hands those out as lazy zero pages, as calloc does for large
 * blocks, instead of a memset over the whole block.  With numa_node= every
 * block is a mapping of its own, bound to the node (numa.c) before a byte
 * of it is touched: heap pages are shared with other blocks, and may have
 * been placed already.  The cookie says which: NULL for the heap,
 * ALIGNED_MAPPED for a mapping.  hugepages= is allocator.c's (allocators.h);
 * a block that will be advised starts on a huge-page boundary from
 * MM_HUGEPAGE_SIZE on.
 *
 * Layer: allocators.  May call core/.
 */
#include "allocators/allocators.h"

#include <stdlib.h>
#include <string.h>

#define DEFAULT_ALIGNMENT ((size_t)64)
#define MAX_ALIGNMENT ((size_t)1 << 30)

/* Zero-filled blocks from this size on are mapped, not memset. */
#define ZERO_MAP_THRESHOLD ((size_t)128 << 10)

static const char aligned_mapped_tag;
#define ALIGNED_MAPPED ((void *)&aligned_mapped_tag)

static int parse_alignment(PyObject *value, size_t *alignment)
{
    if (PyBool_Check(value) || !PyLong_Check(value)) {
        PyErr_Format(PyExc_ValueError,
                     "alignment must be a power of two (an int), not %.100s",
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow != 0 || v < 1 || (v & (v - 1)) != 0 ||
        (unsigned long long)v > MAX_ALIGNMENT) {
        PyErr_Format(PyExc_ValueError,
                     "alignment must be a power of two from 1 to 2**30, got %R",
                     value);
        return -1;
    }
    *alignment = (size_t)v;
    return 0;
}

static int aligned_parse_options(AllocatorObject *self, PyObject *options,
                                 mm_request *req)
{
    static const char *const known[] = {"alignment", "hugepages", "numa_node", NULL};
    PyObject *value;
    req->alignment = DEFAULT_ALIGNMENT;
    if (options == NULL) {
        return 0;
    }
    if (mm_option_refuse_others(self, options, known) < 0) {
        return -1;
    }
    mm_option_get(options, "alignment", &value);   /* None: the default */
    if (value != NULL && parse_alignment(value, &req->alignment) < 0) {
        return -1;
    }
    return mm_option_hugepages(options, req) < 0 ? -1 : mm_numa_option(options, req);
}

/* The alignment the block is placed at: the request's, or a huge page's
 * when allocator.c will advise huge pages on it (allocators.h). */
static size_t placement(AllocatorObject *self, const mm_request *req,
                        size_t size, int zero)
{
    if (size >= MM_HUGEPAGE_SIZE && req->alignment < MM_HUGEPAGE_SIZE &&
        mm_wants_hugepages(self, req, size, zero)) {
        return MM_HUGEPAGE_SIZE;
    }
    return req->alignment;
}

/* *ptr: a fresh mapping (NULL when there is no room), bound to the
 * request's node if it names one; -1 with OSError when binding failed. */
static int map_block(AllocatorObject *self, const mm_request *req,
                     size_t size, size_t alignment, void **ptr)
{
    char *map = mm_map_anonymous(size, alignment, 0);
    if (map != NULL && req->numa_node >= 0 &&
        mm_numa_bind(self, map, mm_round_to_pages(size), req->numa_node) < 0) {
        mm_unmap(map, size);
        return -1;
    }
    *ptr = map;
    return 0;
}

static int aligned_allocate(AllocatorObject *self, const mm_request *req,
                            size_t size, int zero, mm_raw *out)
{
    void *ptr = NULL;
    size_t alignment = placement(self, req, size, zero);
    out->cookie = NULL;
    if ((zero && size >= ZERO_MAP_THRESHOLD) || req->numa_node >= 0) {
        if (map_block(self, req, size, alignment, &ptr) < 0) {
            return -1;
        }
        out->cookie = ALIGNED_MAPPED;
    }
    else {
        /* posix_memalign wants a multiple of sizeof(void *). */
        if (alignment < sizeof(void *)) {
            alignment = sizeof(void *);
        }
        if (posix_memalign(&ptr, alignment, size == 0 ? 1 : size) != 0) {
            ptr = NULL;
        }
        if (ptr != NULL && zero) {
            memset(ptr, 0, size);
        }
    }
    if (ptr == NULL) {
        PyErr_Format(PyExc_MemoryError,
                     "Allocator %U could not allocate %zu bytes aligned to %zu",
                     self->name, size, req->alignment);
        return -1;
    }
    out->base = ptr;
    return 0;
}

static void aligned_release(AllocatorObject *Py_UNUSED(self), char *base,
                            size_t size, void *cookie)
{
    if (cookie == ALIGNED_MAPPED) {
        mm_unmap(base, size);
    }
    else {
        free(base);
    }
}

static const mm_allocator_ops mm_aligned_ops = {
    .kind = "Aligned",
    .parse_options = aligned_parse_options,
    .allocate = aligned_allocate,
    .release = aligned_release,
};

/* Aligned blocks are ours alone: huge pages and guard bytes both. */
int mm_aligned_kind_register(mm_state *st)
{
    return mm_allocator_register_kind(st, "Aligned", &mm_aligned_ops, NULL, MM_KIND_HUGEPAGES | MM_KIND_GUARDED);
}
