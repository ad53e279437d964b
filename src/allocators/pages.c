/*
 * pages.c -- page mappings and page advice, for every allocator kind that
 * maps or advises memory: Mmap and SharedMemory map with these helpers,
 * Aligned maps large alignments, and the heap kinds advise huge pages
 * (allocator.c).
 *
 * Layer: allocators (the lowest file in it).  Calls the C library only.
 */
#include "allocators/allocators.h"

#include <sys/mman.h>
#include <unistd.h>

#ifndef MAP_ANONYMOUS
#define MAP_ANONYMOUS MAP_ANON
#endif

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
 * there: a 64 MiB block from malloc then gets 62 MiB of huge pages where
 * NumPy's gets 64 (docs/benchmarks.md has what that costs a fill). */
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
