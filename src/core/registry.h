/*
 * core/registry.h -- the process-wide registry of live memory regions.
 *
 * Every live buffer's [start, end) is one node of one of two treaps:
 *
 * - owned regions (a buffer that will free the memory): ordered by start.
 *   Owned regions never overlap each other, so the only regions that can
 *   overlap a new [start, end) are its neighbours in address order: insert
 *   (with its overlap check) and the overlap query are one root-to-leaf
 *   walk, O(log n) expected; remove follows the parent pointer, O(1)
 *   expected.  This is the hot path (create + destroy).
 * - non-owning ("shared") regions (Borrowed, zero-copy consume of a Python
 *   object): they may overlap each other, so this treap is ordered by
 *   (start, node) and each node keeps the greatest end in its subtree
 *   (`max_end`): an interval tree, insert, remove and overlap query
 *   O(log n) expected.  A shared region may overlap an owned one only when
 *   the caller names that owned region (`exporter`: the buffer it holds an
 *   export of, DESIGN section 5).
 *
 * Nodes are intrusive (embedded in the Buffer object), so the registry
 * allocates nothing per buffer.
 *
 * The registry has its own lock, independent of the GIL, so allocation
 * paths may release the GIL; it never calls into Python while holding it.
 * Per-allocator statistics live here too, updated under the same lock.
 * Code that calls in without the GIL must first call
 * mm_region_registry_use_without_gil() with the GIL held: until then the GIL
 * is all the exclusion the callers need, and the lock is left untaken.
 *
 * Layer: core.  Calls the C API only.
 */
#ifndef MEMMANAGER_REGION_REGISTRY_H
#define MEMMANAGER_REGION_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

typedef struct region_node {
    uintptr_t start;            /* first byte */
    uintptr_t end;              /* one past the last byte */
    uint64_t owner_id;          /* the owning buffer's identifier (never reused) */
    struct region_node *left;
    struct region_node *right;
    struct region_node *parent; /* NULL for the root */
    uint64_t priority;          /* treap heap key */
    uintptr_t max_end;          /* shared tree: greatest end in the subtree */
    int stats_slot;             /* which allocator's counters */
    unsigned char linked;       /* 1 while in a tree */
    unsigned char shared;       /* 1: in the non-owning tree */
} region_node;

/* What an overlap query reports about the region in the way. */
typedef struct {
    uintptr_t start;
    uintptr_t end;
    uint64_t owner_id;
} region_info;

typedef struct {
    uint64_t live_buffers;
    uint64_t live_bytes;
    uint64_t peak_bytes;
    uint64_t allocations;
    uint64_t allocated_bytes;
    /* NumPy arrays whose data the allocator holds (interop/numpy_handler.c):
     * counted in the five above as blocks, and here apart. */
    uint64_t live_arrays;
    uint64_t live_array_bytes;
    uint64_t array_allocations;
    uint64_t array_allocated_bytes;
} region_stats;

/* One allocator name's counters, as mm_region_registry_stats() copies them.
 * `name` is the registry's own NUL-terminated copy, which lives as long
 * as the process (slots are never freed). */
typedef struct {
    const char *name;
    region_stats stats;
} region_named_stats;

/* Sets up the lock and fork handlers once per process; 0 on success. */
int mm_region_registry_init(void);

/* From now on every caller takes the lock, so that the caller of this
 * function (which must hold the GIL now) may call in without the GIL. */
void mm_region_registry_use_without_gil(void);

/* 1 once mm_region_registry_use_without_gil() has been called. */
int mm_region_registry_locking(void);

/* Inserts node for an owned [start, end) unless it overlaps a live owned
 * region, in which case 1 is returned and *conflict describes that region.
 * 0 on success.  (Non-owning regions do not stand in its way.) */
int mm_region_registry_insert(region_node *node, uintptr_t start, uintptr_t end,
                           uint64_t owner_id, int stats_slot,
                           region_info *conflict);

/* Inserts node for a non-owning [start, end).  It may overlap any other
 * non-owning region, and of the owned ones only `exporter` (the owned
 * region of the buffer whose export the new buffer holds; NULL for none).
 * Otherwise as mm_region_registry_insert. */
int mm_region_registry_insert_shared(region_node *node, uintptr_t start,
                                  uintptr_t end, uint64_t owner_id,
                                  int stats_slot, const region_node *exporter,
                                  region_info *conflict);

/* Removes a linked node; a node that is not linked is left alone. */
void mm_region_registry_remove(region_node *node);

/* 1 and *conflict filled when [start, end) overlaps a live owned region,
 * else 0. */
int mm_region_registry_find_overlap(uintptr_t start, uintptr_t end,
                                 region_info *conflict);

/* The same over every live region, owned or not: what must be free before
 * ownership of [start, end) is taken. */
int mm_region_registry_find_any_overlap(uintptr_t start, uintptr_t end,
                                     region_info *conflict);

/* Stats slot for an allocator name of `length` bytes (no NUL inside),
 * created on first use; the table grows with the names (memory is the
 * only limit).  -1 when out of memory. */
int mm_region_registry_stats_slot(const char *name, size_t length);

/* A NumPy array's data block of nbytes, allocated or freed by the
 * allocator of stats_slot: counted in its array counters and the total's. */
void mm_region_registry_count_array(int stats_slot, size_t nbytes);
void mm_region_registry_uncount_array(int stats_slot, size_t nbytes);

/* Copies the counters of every slot that has been used into a
 * PyMem_RawMalloc'd array (caller frees), its length in *count; NULL with
 * *count == 0 when none was used, or with *count == -1 when out of memory.
 * *total receives the process-wide counters. */
region_named_stats *mm_region_registry_stats(ptrdiff_t *count, region_stats *total);

/* Snapshot of the nodes of all live regions (owned ones in address
 * order, then the non-owning ones in address order).  Returns
 * a PyMem_RawMalloc'd array (caller frees) and its length in *count;
 * NULL with *count == 0 when empty or out of memory (*count == -1).  The
 * nodes are only valid while nothing can remove them (module.c). */
region_node **mm_region_registry_nodes(ptrdiff_t *count);

/* Checks both trees (order, disjointness of owned regions, max_end of the
 * shared ones, heap order, parent links) and the node count; returns
 * the number of live regions, or -1 with a message in *why. */
ptrdiff_t mm_region_registry_check(const char **why);

#endif /* MEMMANAGER_REGION_REGISTRY_H */
