/*
 * pool.c -- the Pool adaptor: keeps freed blocks and hands them out again.
 *
 *   pool = memmanager.Pool("Mmap", initial_size=1 << 30, maximum_size=8 << 30)
 *   memmanager.register_allocator("Big", pool)
 *   pool.held_bytes, pool.used_bytes, pool.live_blocks, pool.release_free()
 *
 * Memory comes from the upstream in *chunks* (one take_block each, a
 * growing size so that a million small blocks come from a few dozen
 * chunks), and is handed out in two ways:
 *
 *   - small blocks (up to SMALL_MAX bytes): size classes, four per power
 *     of two.  A class carves its blocks from *slabs* (one segment of a
 *     chunk each) and keeps the freed ones on a stack of (address, slab)
 *     pairs: allocation pops, release pushes, both O(1).  A slab counts
 *     its live blocks; release_free() gives back the slabs with none.
 *   - large blocks: *segments* of a chunk, on an address-ordered list per
 *     chunk, the free ones also in size bins (four per power of two, a
 *     bitmap of the non-empty ones).  A request takes the first segment
 *     that fits from its own bin (a few looked at) or any of a higher
 *     bin, splits off the rest, and a release coalesces with its free
 *     neighbours: O(1) both.
 *
 * Nothing is ever written into pooled memory: every record lives off the
 * block (PyMem_RawMalloc), since the upstream may be device memory the
 * host cannot touch.  The cookie handed out with a block is its record
 * (a segment, or its slab with the low bit set), so a release searches
 * nothing.
 *
 * Every block starts at a multiple of the pool's alignment, the
 * upstream's (at least 16): chunks start there (checked), and every size
 * is a multiple of it.  Under MEMMANAGER_DEBUG the guard bytes around
 * each block are allocator.c's, laid out for that alignment.
 *
 * Lock: one spinlock per pool, held only around the pool's own records,
 * never while calling the upstream (a Python plug-in may call back into
 * this pool) or any Python code.  Growth reserves its bytes against
 * maximum_size under the lock, takes the chunk without it, then links it.
 *
 * Chunks are given back by release_free() when wholly idle, and all of
 * them when the pool is deallocated (its buffers keep it alive, so none
 * is in use then).
 *
 * Layer: adaptors.  May call allocators/ and core/.
 */
#include "adaptors/adaptors.h"

#include <sched.h>
#include <stdint.h>
#include <string.h>

#define SMALL_MAX ((size_t)32 << 10)       /* the largest small block */
#define CLASS_COUNT 48                     /* enough for alignment 16 */
#define SLAB_MIN_BYTES ((size_t)64 << 10)
#define SLAB_MIN_BLOCKS 32
#define GROWTH_MIN ((size_t)1 << 20)       /* the smallest chunk grown */
#define GROWTH_ROUND ((size_t)64 << 10)
#define BIN_COUNT 256
#define BIN_LOOKS 4                        /* segments tried in a request's own bin */
#define RELEASE_GIL_THRESHOLD ((size_t)1 << 20)
#define SMALL_TAG ((uintptr_t)1)

typedef struct pool_chunk pool_chunk;

/* A piece of a chunk, free or in use (a large block or a slab). */
typedef struct pool_seg {
    char *addr;
    size_t size;
    struct pool_seg *prev, *next;           /* address order, in its chunk */
    struct pool_seg *bin_prev, *bin_next;   /* its bin, while free */
    pool_chunk *chunk;
    int bin;                                /* -1 while in use */
} pool_seg;

/* One block of the upstream's. */
struct pool_chunk {
    char *base;
    size_t size;
    void *cookie;                           /* the upstream's */
    pool_seg *first;
    pool_chunk *prev, *next;                /* the pool's chunks */
};

/* A segment cut into the blocks of one size class. */
typedef struct pool_slab {
    pool_seg *seg;
    size_t live;                            /* blocks handed out, not back */
    size_t carved;                          /* blocks carved so far */
    size_t nblocks;
    struct pool_slab *prev, *next;          /* its class's slabs */
    int cls;
} pool_slab;

typedef struct {
    char *addr;
    pool_slab *slab;
} pool_free_block;

typedef struct {
    size_t block_size;
    size_t slab_blocks;
    pool_free_block *stack;                 /* freed blocks, last freed on top */
    size_t count, capacity;
    pool_slab *current;                     /* carving from it, or NULL */
    pool_slab *slabs;
} pool_class;

typedef struct {
    AdaptorObject base;
    size_t alignment;                       /* a power of two, >= 16 */
    unsigned align_shift;
    int nclasses;                           /* 0 when alignment > SMALL_MAX */
    size_t initial_size;
    size_t maximum_size;                    /* SIZE_MAX: none */
    int has_maximum;
    int lock;
    /* Under the lock: */
    size_t held;                            /* bytes of the chunks held */
    size_t reserved;                        /* of chunks being taken */
    size_t used;                            /* bytes of live blocks */
    size_t live_blocks;
    pool_chunk *chunks;
    pool_seg *spare_segs;                   /* records to reuse, by `next` */
    pool_seg *bins[BIN_COUNT];
    uint64_t bitmap[BIN_COUNT / 64];
    pool_class classes[CLASS_COUNT];
} PoolObject;

static PoolObject *pool_of(AllocatorObject *alloc)
{
    return (PoolObject *)mm_adaptor_of(alloc);
}

/* ------------------------------------------------------------------ */
/* Lock                                                                */
/* ------------------------------------------------------------------ */

/* Taken only when the region registry takes its lock (core/registry.c):
 * until something has said it will come without the GIL, every caller
 * holds it and no critical section here lets it go, so the GIL alone
 * keeps them apart.  The flag only goes from 0 to 1, under the GIL, so
 * no caller is inside then.  Each section decides once: 1 when locked. */
static inline int pool_lock(PoolObject *self)
{
    if (!mm_region_registry_locking()) {
        return 0;
    }
    unsigned spins = 0;
    while (__atomic_exchange_n(&self->lock, 1, __ATOMIC_ACQUIRE) != 0) {
        while (__atomic_load_n(&self->lock, __ATOMIC_RELAXED) != 0) {
            if (++spins % 64 == 0) {
                sched_yield();
            }
        }
    }
    return 1;
}

static inline void pool_unlock(PoolObject *self, int locked)
{
    if (locked) {
        __atomic_store_n(&self->lock, 0, __ATOMIC_RELEASE);
    }
}

/* ------------------------------------------------------------------ */
/* Sizes                                                               */
/* ------------------------------------------------------------------ */

static inline unsigned log2_floor(size_t x)
{
    return (unsigned)(8 * sizeof(unsigned long long) - 1) -
           (unsigned)__builtin_clzll((unsigned long long)x);
}

/* The class of a block of `units` alignment units (>= 1): one class per
 * unit up to 8, then four per power of two. */
static inline int class_of_units(size_t units)
{
    if (units <= 8) {
        return (int)units - 1;
    }
    unsigned b = log2_floor(units - 1);
    return 8 + (int)(b - 3) * 4 + (int)((units - 1) >> (b - 2)) - 4;
}

static size_t units_of_class(int cls)
{
    if (cls < 8) {
        return (size_t)cls + 1;
    }
    unsigned b = 3 + (unsigned)(cls - 8) / 4;
    return (size_t)(4 + (cls - 8) % 4 + 1) << (b - 2);
}

/* The bin a free segment of `size` bytes is kept in. */
static inline int bin_of(size_t size)
{
    unsigned b = log2_floor(size);
    if (b < 2) {
        return (int)size;
    }
    return (int)(4 * (b - 1) + ((size >> (b - 2)) & 3));
}

static size_t round_up(size_t size, size_t alignment)
{
    return (size + alignment - 1) & ~(alignment - 1);
}

/* ------------------------------------------------------------------ */
/* Segments and bins (callers hold the lock)                           */
/* ------------------------------------------------------------------ */

static pool_seg *new_seg(PoolObject *self)
{
    pool_seg *seg = self->spare_segs;
    if (seg != NULL) {
        self->spare_segs = seg->next;
        return seg;
    }
    return PyMem_RawMalloc(sizeof(pool_seg));
}

static void drop_seg(PoolObject *self, pool_seg *seg)
{
    seg->next = self->spare_segs;
    self->spare_segs = seg;
}

static void bin_insert(PoolObject *self, pool_seg *seg)
{
    int bin = bin_of(seg->size);
    seg->bin = bin;
    seg->bin_prev = NULL;
    seg->bin_next = self->bins[bin];
    if (seg->bin_next != NULL) {
        seg->bin_next->bin_prev = seg;
    }
    self->bins[bin] = seg;
    self->bitmap[bin / 64] |= (uint64_t)1 << (bin % 64);
}

static void bin_remove(PoolObject *self, pool_seg *seg)
{
    int bin = seg->bin;
    if (seg->bin_prev != NULL) {
        seg->bin_prev->bin_next = seg->bin_next;
    }
    else {
        self->bins[bin] = seg->bin_next;
        if (seg->bin_next == NULL) {
            self->bitmap[bin / 64] &= ~((uint64_t)1 << (bin % 64));
        }
    }
    if (seg->bin_next != NULL) {
        seg->bin_next->bin_prev = seg->bin_prev;
    }
    seg->bin = -1;
}

/* The first non-empty bin from `bin` on, or -1. */
static int bin_search(const PoolObject *self, int bin)
{
    for (int word = bin / 64; word < BIN_COUNT / 64; word++) {
        uint64_t bits = self->bitmap[word];
        if (word == bin / 64) {
            bits &= ~(uint64_t)0 << (bin % 64);
        }
        if (bits != 0) {
            return word * 64 + __builtin_ctzll(bits);
        }
    }
    return -1;
}

/* A free segment of at least n bytes, or NULL. */
static pool_seg *find_free(PoolObject *self, size_t n)
{
    int bin = bin_of(n);
    pool_seg *seg = self->bins[bin];
    for (int i = 0; seg != NULL && i < BIN_LOOKS; i++, seg = seg->bin_next) {
        if (seg->size >= n) {
            return seg;
        }
    }
    int higher = bin + 1 < BIN_COUNT ? bin_search(self, bin + 1) : -1;
    return higher < 0 ? NULL : self->bins[higher];
}

/* Takes n bytes at the front of the free segment seg: the rest stays
 * free (when a record for it can be had; otherwise seg is used whole). */
static void take_segment(PoolObject *self, pool_seg *seg, size_t n)
{
    bin_remove(self, seg);
    if (seg->size > n) {
        pool_seg *rest = new_seg(self);
        if (rest != NULL) {
            rest->addr = seg->addr + n;
            rest->size = seg->size - n;
            rest->chunk = seg->chunk;
            rest->prev = seg;
            rest->next = seg->next;
            if (rest->next != NULL) {
                rest->next->prev = rest;
            }
            seg->next = rest;
            seg->size = n;
            bin_insert(self, rest);
        }
    }
}

/* A used segment becomes free, merged with its free neighbours. */
static void free_segment(PoolObject *self, pool_seg *seg)
{
    pool_seg *prev = seg->prev, *next = seg->next;
    if (prev != NULL && prev->bin >= 0) {
        bin_remove(self, prev);
        prev->size += seg->size;
        prev->next = next;
        if (next != NULL) {
            next->prev = prev;
        }
        drop_seg(self, seg);
        seg = prev;
    }
    if (next != NULL && next->bin >= 0) {
        bin_remove(self, next);
        seg->size += next->size;
        seg->next = next->next;
        if (seg->next != NULL) {
            seg->next->prev = seg;
        }
        drop_seg(self, next);
    }
    bin_insert(self, seg);
}

/* A used segment of n bytes (a multiple of the alignment), or NULL. */
static pool_seg *carve(PoolObject *self, size_t n)
{
    pool_seg *seg = find_free(self, n);
    if (seg != NULL) {
        take_segment(self, seg, n);
    }
    return seg;
}

/* ------------------------------------------------------------------ */
/* Small blocks (callers hold the lock)                                */
/* ------------------------------------------------------------------ */

enum { TAKEN = 0, NEEDS_CHUNK = 1, NO_RECORD = -1 };

static void link_slab(pool_class *c, pool_slab *slab)
{
    slab->prev = NULL;
    slab->next = c->slabs;
    if (c->slabs != NULL) {
        c->slabs->prev = slab;
    }
    c->slabs = slab;
}

static void unlink_slab(pool_class *c, pool_slab *slab)
{
    if (slab->prev != NULL) {
        slab->prev->next = slab->next;
    }
    else {
        c->slabs = slab->next;
    }
    if (slab->next != NULL) {
        slab->next->prev = slab->prev;
    }
    if (c->current == slab) {
        c->current = NULL;
    }
}

static size_t slab_bytes(const pool_class *c)
{
    return c->block_size * c->slab_blocks;
}

/* A block of class cls: *addr and *cookie, or what is missing. */
static inline int small_take(PoolObject *self, int cls, char **addr, void **cookie)
{
    pool_class *c = &self->classes[cls];
    pool_slab *slab;
    if (c->count > 0) {
        pool_free_block *top = &c->stack[--c->count];
        slab = top->slab;
        *addr = top->addr;
    }
    else {
        slab = c->current;
        if (slab == NULL || slab->carved == slab->nblocks) {
            slab = PyMem_RawMalloc(sizeof(pool_slab));
            if (slab == NULL) {
                return NO_RECORD;
            }
            slab->seg = carve(self, slab_bytes(c));
            if (slab->seg == NULL) {
                PyMem_RawFree(slab);
                return NEEDS_CHUNK;
            }
            slab->live = 0;
            slab->carved = 0;
            slab->nblocks = c->slab_blocks;
            slab->cls = cls;
            link_slab(c, slab);
            c->current = slab;
        }
        *addr = slab->seg->addr + slab->carved * c->block_size;
        slab->carved++;
    }
    slab->live++;
    *cookie = (void *)((uintptr_t)slab | SMALL_TAG);
    return TAKEN;
}

/* A block back on its class's stack.  Where the stack cannot grow, the
 * block is not reused, but its slab still goes back once all its blocks
 * are free. */
static inline void small_give(PoolObject *self, pool_slab *slab, char *addr)
{
    pool_class *c = &self->classes[slab->cls];
    slab->live--;
    if (c->count == c->capacity) {
        size_t capacity = c->capacity ? 2 * c->capacity : 64;
        pool_free_block *stack = PyMem_RawRealloc(c->stack, capacity * sizeof(*stack));
        if (stack == NULL) {
            return;
        }
        c->stack = stack;
        c->capacity = capacity;
    }
    c->stack[c->count].addr = addr;
    c->stack[c->count].slab = slab;
    c->count++;
}

/* Gives back the slabs of c without a live block: their blocks leave the
 * stack and their segments become free. */
static void release_idle_slabs(PoolObject *self, pool_class *c)
{
    size_t kept = 0;
    for (size_t i = 0; i < c->count; i++) {
        if (c->stack[i].slab->live > 0) {
            c->stack[kept++] = c->stack[i];
        }
    }
    c->count = kept;
    pool_slab *slab = c->slabs;
    while (slab != NULL) {
        pool_slab *next = slab->next;
        if (slab->live == 0) {
            unlink_slab(c, slab);
            free_segment(self, slab->seg);
            PyMem_RawFree(slab);
        }
        slab = next;
    }
    if (c->count == 0 && c->slabs == NULL) {
        PyMem_RawFree(c->stack);
        c->stack = NULL;
        c->capacity = 0;
    }
}

/* ------------------------------------------------------------------ */
/* Chunks                                                              */
/* ------------------------------------------------------------------ */

static int raise_exhausted(AllocatorObject *alloc, PoolObject *self, size_t size,
                           size_t held)
{
    PyErr_Format(PyExc_MemoryError,
                 "Pool %U: %zu bytes asked, %zu bytes held of its maximum_size "
                 "of %zu", alloc->name, size, held, self->maximum_size);
    return -1;
}

/* The size of the next chunk for a request of need bytes; 0 when the
 * maximum leaves too little (caller holds the lock). */
static size_t chunk_size_for(PoolObject *self, size_t need)
{
    size_t held = self->held + self->reserved;
    size_t size = held / 2 > GROWTH_MIN ? held / 2 : GROWTH_MIN;
    size = round_up(size, GROWTH_ROUND > self->alignment ? GROWTH_ROUND
                                                         : self->alignment);
    if (size < need) {
        size = need;
    }
    if (self->has_maximum) {
        size_t room = self->maximum_size > held ? self->maximum_size - held : 0;
        room &= ~(self->alignment - 1);
        if (need > room) {
            return 0;
        }
        if (size > room) {
            size = room;
        }
    }
    return size;
}

static void link_chunk(PoolObject *self, pool_chunk *chunk, pool_seg *seg)
{
    seg->addr = chunk->base;
    seg->size = chunk->size;
    seg->prev = seg->next = NULL;
    seg->chunk = chunk;
    chunk->first = seg;
    chunk->prev = NULL;
    chunk->next = self->chunks;
    if (self->chunks != NULL) {
        self->chunks->prev = chunk;
    }
    self->chunks = chunk;
    bin_insert(self, seg);
}

static void unlink_chunk(PoolObject *self, pool_chunk *chunk)
{
    if (chunk->prev != NULL) {
        chunk->prev->next = chunk->next;
    }
    else {
        self->chunks = chunk->next;
    }
    if (chunk->next != NULL) {
        chunk->next->prev = chunk->prev;
    }
}

/* Takes one chunk of `size` bytes from the upstream (no lock held: the
 * upstream may call Python, and that may call this pool). */
static int take_chunk(PoolObject *self, size_t size)
{
    AllocatorObject *up = self->base.upstream;
    mm_request req;
    mm_raw raw;
    mm_adaptor_upstream_request(&self->base, size, &req);
    if (mm_adaptor_take(&self->base, &req, size, 0, &raw) < 0) {
        return -1;
    }
    if (((uintptr_t)raw.base & (self->alignment - 1)) != 0) {
        mm_adaptor_give(&self->base, raw.base, size, raw.cookie);
        PyErr_Format(PyExc_ValueError,
                     "Pool(): its upstream %U gave a block at %p, not at a "
                     "multiple of its alignment %zu", up->name,
                     (void *)raw.base, self->alignment);
        return -1;
    }
    pool_chunk *chunk = PyMem_RawMalloc(sizeof(pool_chunk));
    pool_seg *seg = PyMem_RawMalloc(sizeof(pool_seg));
    if (chunk == NULL || seg == NULL) {
        PyMem_RawFree(chunk);
        PyMem_RawFree(seg);
        mm_adaptor_give(&self->base, raw.base, size, raw.cookie);
        PyErr_NoMemory();
        return -1;
    }
    chunk->base = raw.base;
    chunk->size = size;
    chunk->cookie = raw.cookie;
    int locked = pool_lock(self);
    self->held += size;
    link_chunk(self, chunk, seg);
    pool_unlock(self, locked);
    return 0;
}

/* One more chunk, big enough for need bytes. */
static int grow(AllocatorObject *alloc, PoolObject *self, size_t need, size_t asked)
{
    int locked = pool_lock(self);
    size_t size = chunk_size_for(self, need);
    size_t held = self->held + self->reserved;
    if (size > 0) {
        self->reserved += size;
    }
    pool_unlock(self, locked);
    if (size == 0) {
        return raise_exhausted(alloc, self, asked, held);
    }
    int rc = take_chunk(self, size);
    locked = pool_lock(self);
    self->reserved -= size;
    pool_unlock(self, locked);
    return rc;
}

/* Unlinks the chunks wholly free, into *idle (caller holds the lock);
 * their bytes. */
static size_t detach_idle_chunks(PoolObject *self, pool_chunk **idle)
{
    size_t bytes = 0;
    pool_chunk *chunk = self->chunks;
    while (chunk != NULL) {
        pool_chunk *next = chunk->next;
        pool_seg *seg = chunk->first;
        if (seg->next == NULL && seg->bin >= 0) {
            bin_remove(self, seg);
            drop_seg(self, seg);
            unlink_chunk(self, chunk);
            self->held -= chunk->size;
            bytes += chunk->size;
            chunk->next = *idle;
            *idle = chunk;
        }
        chunk = next;
    }
    return bytes;
}

static void give_back_chunks(PoolObject *self, pool_chunk *idle)
{
    while (idle != NULL) {
        pool_chunk *next = idle->next;
        mm_adaptor_give(&self->base, idle->base, idle->size, idle->cookie);
        PyMem_RawFree(idle);
        idle = next;
    }
}

/* Every idle slab and chunk back upstream; the bytes given back. */
static size_t release_free(PoolObject *self)
{
    pool_chunk *idle = NULL;
    int locked = pool_lock(self);
    for (int i = 0; i < self->nclasses; i++) {
        release_idle_slabs(self, &self->classes[i]);
    }
    size_t bytes = detach_idle_chunks(self, &idle);
    pool_seg *spare = self->spare_segs;
    self->spare_segs = NULL;
    pool_unlock(self, locked);
    while (spare != NULL) {
        pool_seg *next = spare->next;
        PyMem_RawFree(spare);
        spare = next;
    }
    give_back_chunks(self, idle);
    return bytes;
}

/* ------------------------------------------------------------------ */
/* The kind                                                            */
/* ------------------------------------------------------------------ */

/* Per-buffer options are refused; the request's alignment is the pool's,
 * which is what guard bytes are laid out by. */
static int pool_parse_options(AllocatorObject *alloc, PyObject *options,
                              mm_request *req)
{
    if (options != NULL && PyDict_GET_SIZE(options) > 0) {
        PyErr_Format(PyExc_TypeError,
                     "allocator %U (a Pool) takes no per-buffer options: its "
                     "upstream's options are given to Pool()", alloc->name);
        return -1;
    }
    req->alignment = pool_of(alloc)->alignment;
    return 0;
}

static int zero_block(AllocatorObject *alloc, char *ptr, size_t size)
{
    if (alloc->memory_kind == MM_MEMORY_CUDA_DEVICE) {
        return mm_allocator_device_fill(alloc, ptr, 0, size);
    }
    if (size >= RELEASE_GIL_THRESHOLD) {
        Py_BEGIN_ALLOW_THREADS
        memset(ptr, 0, size);
        Py_END_ALLOW_THREADS
    }
    else {
        memset(ptr, 0, size);
    }
    return 0;
}

static void pool_release(AllocatorObject *alloc, char *base, size_t size, void *cookie);

#if defined(__GNUC__)
#define MM_POOL_NOINLINE __attribute__((noinline))
#else
#define MM_POOL_NOINLINE
#endif

/* Any block: from a class (a new slab if need be) or a segment, growing
 * the pool until it fits. */
static MM_POOL_NOINLINE int allocate_general(AllocatorObject *alloc, PoolObject *self,
                                            size_t size, size_t n, int cls,
                                            int zero, mm_raw *out)
{
    char *addr = NULL;
    void *cookie = NULL;
    for (;;) {
        int rc;
        size_t need;
        int locked = pool_lock(self);
        if (cls >= 0) {
            rc = small_take(self, cls, &addr, &cookie);
            need = slab_bytes(&self->classes[cls]);
        }
        else {
            pool_seg *seg = carve(self, n);
            rc = seg != NULL ? TAKEN : NEEDS_CHUNK;
            if (seg != NULL) {
                addr = seg->addr;
                cookie = seg;
            }
            need = n;
        }
        if (rc == TAKEN) {
            self->used += size;
            self->live_blocks++;
            pool_unlock(self, locked);
            break;
        }
        pool_unlock(self, locked);
        if (rc == NO_RECORD) {
            PyErr_NoMemory();
            return -1;
        }
        if (grow(alloc, self, need, size) < 0) {
            return -1;
        }
    }
    if (zero && zero_block(alloc, addr, size) < 0) {
        pool_release(alloc, addr, size, cookie);
        return -1;
    }
    out->base = addr;
    out->cookie = cookie;
    return 0;
}

/* The hot path: a small block, not zeroed, from its class's stack. */
static int pool_allocate(AllocatorObject *alloc, const mm_request *Py_UNUSED(req),
                         size_t size, int zero, mm_raw *out)
{
    PoolObject *self = pool_of(alloc);
    size_t alignment = self->alignment;
    if (size > SIZE_MAX - GROWTH_ROUND - alignment) {
        return raise_exhausted(alloc, self, size, self->held);
    }
    size_t n = round_up(size == 0 ? 1 : size, alignment);
    int cls = n <= SMALL_MAX ? class_of_units(n >> self->align_shift) : -1;
    if (cls >= 0 && !zero) {
        int locked = pool_lock(self);
        pool_class *c = &self->classes[cls];
        if (c->count > 0) {
            pool_free_block *top = &c->stack[--c->count];
            top->slab->live++;
            self->used += size;
            self->live_blocks++;
            out->base = top->addr;
            out->cookie = (void *)((uintptr_t)top->slab | SMALL_TAG);
            pool_unlock(self, locked);
            return 0;
        }
        pool_unlock(self, locked);
    }
    return allocate_general(alloc, self, size, n, cls, zero, out);
}

static void pool_release(AllocatorObject *alloc, char *base, size_t size, void *cookie)
{
    PoolObject *self = pool_of(alloc);
    int locked = pool_lock(self);
    if ((uintptr_t)cookie & SMALL_TAG) {
        small_give(self, (pool_slab *)((uintptr_t)cookie & ~SMALL_TAG), base);
    }
    else {
        free_segment(self, (pool_seg *)cookie);
    }
    self->used -= size;
    self->live_blocks--;
    pool_unlock(self, locked);
}

static const mm_allocator_ops pool_ops = {
    .kind = "Pool",
    .parse_options = pool_parse_options,
    .allocate = pool_allocate,
    .release = pool_release,
};

/* ------------------------------------------------------------------ */
/* The Python type                                                     */
/* ------------------------------------------------------------------ */

static void init_classes(PoolObject *self)
{
    self->nclasses = 0;
    if (self->alignment > SMALL_MAX) {
        return;
    }
    self->nclasses = class_of_units(SMALL_MAX >> self->align_shift) + 1;
    for (int i = 0; i < self->nclasses; i++) {
        pool_class *c = &self->classes[i];
        c->block_size = units_of_class(i) << self->align_shift;
        size_t blocks = (SLAB_MIN_BYTES + c->block_size - 1) / c->block_size;
        c->slab_blocks = blocks > SLAB_MIN_BLOCKS ? blocks : SLAB_MIN_BLOCKS;
    }
}

/* A size argument: an int >= 0 (>= 1 when positive). */
static int parse_pool_size(PyObject *value, const char *what, int positive,
                           size_t *out)
{
    if (PyLong_CheckExact(value) && !positive && PyLong_AsSsize_t(value) == 0) {
        *out = 0;
        return 0;
    }
    PyErr_Clear();
    Py_ssize_t size;
    if (mm_parse_size(value, what, &size) < 0) {
        return -1;
    }
    *out = (size_t)size;
    return 0;
}

static int refuse_shared_bytes(PoolObject *self)
{
    AllocatorObject *owner = mm_allocator_block_owner(self->base.upstream);
    if (owner != NULL && strcmp(owner->ops->kind, "MappedFile") == 0) {
        PyErr_Format(PyExc_ValueError,
                     "Pool(): upstream %U maps a file: every chunk would be the "
                     "same bytes of it, so two buffers would share memory (use "
                     "MappedFile itself, or Limit over it)", self->base.upstream->name);
        return -1;
    }
    if (owner != NULL && strcmp(owner->ops->kind, "SharedMemory") == 0) {
        PyErr_Format(PyExc_ValueError,
                     "Pool(): upstream %U hands out SharedMemory blocks, each a "
                     "named object for other processes to attach; a pool's "
                     "blocks would be unnamed pieces of one (use SharedMemory "
                     "itself, or Limit over it)", self->base.upstream->name);
        return -1;
    }
    return 0;
}

static PyObject *pool_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static const char *const names[] = {"upstream", "initial_size", "maximum_size",
                                        NULL};
    PyObject *own[3] = {NULL, NULL, NULL}, *rest = NULL, *kept = NULL;
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    size_t initial_size = 0, maximum_size = SIZE_MAX;
    int has_maximum = 0;
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError,
                     "Pool() takes the upstream as its only positional argument "
                     "(%zd given)", nargs);
        return NULL;
    }
    if (nargs == 1 && kwargs != NULL && PyDict_GetItemString(kwargs, "upstream") != NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "Pool() got multiple values for argument 'upstream'");
        return NULL;
    }
    own[0] = nargs == 1 ? PyTuple_GET_ITEM(args, 0) : NULL;
    if (mm_adaptor_split_keywords(kwargs, names, own, &rest, &kept) < 0) {
        return NULL;
    }
    if (own[0] == NULL) {
        PyErr_SetString(PyExc_TypeError, "Pool() missing required argument 'upstream'");
        goto error;
    }
    if (own[1] != NULL && parse_pool_size(own[1], "initial_size", 0, &initial_size) < 0) {
        goto error;
    }
    if (own[2] != NULL && own[2] != Py_None) {
        if (parse_pool_size(own[2], "maximum_size", 1, &maximum_size) < 0) {
            goto error;
        }
        has_maximum = 1;
    }
    PoolObject *self = (PoolObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        goto error;
    }
    /* tp_alloc zeroed the rest: no chunks, no classes, no lock. */
    self->maximum_size = maximum_size;
    self->has_maximum = has_maximum;
    if (mm_adaptor_init(&self->base, &pool_ops, own[0], rest) < 0 ||
        refuse_shared_bytes(self) < 0) {
        Py_DECREF(self);
        goto error;
    }
    Py_CLEAR(rest);
    Py_CLEAR(kept);
    size_t alignment = self->base.upstream_req.alignment;
    self->alignment = alignment > MM_DEFAULT_ALIGNMENT ? alignment : MM_DEFAULT_ALIGNMENT;
    self->align_shift = log2_floor(self->alignment);
    init_classes(self);
    if (initial_size > 0) {
        initial_size = round_up(initial_size, self->alignment);
    }
    self->initial_size = initial_size;
    if (has_maximum && initial_size > maximum_size) {
        PyErr_Format(PyExc_ValueError,
                     "Pool(): initial_size %zu (a multiple of the alignment, %zu) "
                     "is more than maximum_size %zu", initial_size, self->alignment,
                     maximum_size);
        Py_DECREF(self);
        return NULL;
    }
    if (initial_size > 0) {
        if (take_chunk(self, initial_size) < 0) {
            Py_DECREF(self);
            return NULL;
        }
    }
    return (PyObject *)self;
error:
    Py_XDECREF(rest);
    Py_XDECREF(kept);
    return NULL;
}

static int pool_traverse(PyObject *op, visitproc visit, void *arg)
{
    PoolObject *self = (PoolObject *)op;
    for (pool_chunk *chunk = self->chunks; chunk != NULL; chunk = chunk->next) {
        int rc = mm_allocator_visit_block(self->base.upstream, chunk->cookie,
                                          visit, arg);
        if (rc != 0) {
            return rc;
        }
    }
    return mm_adaptor_traverse(&self->base, visit, arg);
}

/* Every chunk back (all idle: the pool's buffers kept it alive), every
 * record freed.  A chunk still in use, which cannot happen, is left. */
static void free_everything(PoolObject *self)
{
    if (self->base.upstream == NULL) {
        return;
    }
    release_free(self);
    for (int i = 0; i < self->nclasses; i++) {
        pool_class *c = &self->classes[i];
        PyMem_RawFree(c->stack);
        c->stack = NULL;
        c->count = c->capacity = 0;
    }
}

static void pool_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    mm_saved_error raised;
    mm_err_save(&raised);
    free_everything((PoolObject *)op);
    mm_err_restore(&raised);
    mm_adaptor_clear_common((AdaptorObject *)op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *pool_repr(PyObject *op)
{
    PoolObject *self = (PoolObject *)op;
    int locked = pool_lock(self);
    size_t used = self->used, held = self->held, live = self->live_blocks;
    pool_unlock(self, locked);
    if (self->has_maximum) {
        return PyUnicode_FromFormat(
            "<memmanager.Pool over %R: %zu bytes in %zu blocks, %zu held of %zu>",
            self->base.upstream->name, used, live, held, self->maximum_size);
    }
    return PyUnicode_FromFormat("<memmanager.Pool over %R: %zu bytes in %zu blocks, "
                                "%zu held>", self->base.upstream->name, used, live,
                                held);
}

static PyObject *pool_release_free(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSize_t(release_free((PoolObject *)op));
}

static size_t locked_read(PoolObject *self, const size_t *field)
{
    int locked = pool_lock(self);
    size_t value = *field;
    pool_unlock(self, locked);
    return value;
}

static PyObject *pool_get_held(PyObject *op, void *Py_UNUSED(closure))
{
    PoolObject *self = (PoolObject *)op;
    return PyLong_FromSize_t(locked_read(self, &self->held));
}

static PyObject *pool_get_used(PyObject *op, void *Py_UNUSED(closure))
{
    PoolObject *self = (PoolObject *)op;
    return PyLong_FromSize_t(locked_read(self, &self->used));
}

static PyObject *pool_get_live(PyObject *op, void *Py_UNUSED(closure))
{
    PoolObject *self = (PoolObject *)op;
    return PyLong_FromSize_t(locked_read(self, &self->live_blocks));
}

static PyObject *pool_get_initial(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(((PoolObject *)op)->initial_size);
}

static PyObject *pool_get_maximum(PyObject *op, void *Py_UNUSED(closure))
{
    PoolObject *self = (PoolObject *)op;
    return self->has_maximum ? PyLong_FromSize_t(self->maximum_size) : Py_NewRef(Py_None);
}

static PyObject *pool_get_alignment(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(((PoolObject *)op)->alignment);
}

static PyMethodDef pool_methods[] = {
    {"release_free", pool_release_free, METH_NOARGS,
     "release_free($self, /)\n--\n\n"
     "Give every wholly idle chunk back to the upstream; the bytes given back."},
    {NULL},
};

static PyGetSetDef pool_getset[] = {
    {"upstream", mm_adaptor_get_upstream, NULL,
     "The name of the allocator the chunks come from.", NULL},
    {"initial_size", pool_get_initial, NULL,
     "The bytes taken when the pool was made (rounded to its alignment).", NULL},
    {"maximum_size", pool_get_maximum, NULL,
     "The most bytes the pool holds at once, or None.", NULL},
    {"alignment", pool_get_alignment, NULL,
     "Every block starts at a multiple of this (the upstream's).", NULL},
    {"held_bytes", pool_get_held, NULL,
     "Bytes taken from the upstream and not given back.", NULL},
    {"used_bytes", pool_get_used, NULL,
     "Bytes of the live blocks, as asked (guard bytes included).", NULL},
    {"live_blocks", pool_get_live, NULL,
     "Blocks handed out and not back.", NULL},
    {NULL},
};

static PyType_Slot pool_slots[] = {
    {Py_tp_doc,
     "Pool(upstream, *, initial_size=0, maximum_size=None, **upstream_options)\n--\n\n"
     "An allocator adaptor that keeps freed blocks for later requests: size\n"
     "classes for small blocks, coalescing segments for large ones, all in\n"
     "chunks taken from the allocator named upstream.  Past maximum_size,\n"
     "MemoryError.  Register it with register_allocator(name, pool)."},
    {Py_tp_new, pool_new},
    {Py_tp_dealloc, pool_dealloc},
    {Py_tp_traverse, pool_traverse},
    {Py_tp_repr, pool_repr},
    {Py_tp_methods, pool_methods},
    {Py_tp_getset, pool_getset},
    {0, NULL},
};

PyType_Spec mm_pool_type_spec = {
    .name = "memmanager.Pool",
    .basicsize = sizeof(PoolObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = pool_slots,
};
