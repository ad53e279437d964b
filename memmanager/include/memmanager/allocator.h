/*
 * memmanager/allocator.h -- the public C interface for allocators.
 *
 * A third-party C allocator fills one MemManagerAllocator and hands it to
 * Python inside a PyCapsule named MEMMANAGER_ALLOCATOR_CAPSULE:
 *
 *     static MemManagerAllocator arena = {
 *         .name = "Arena",
 *         .abi_version = MEMMANAGER_ALLOCATOR_ABI_VERSION,
 *         .struct_size = sizeof(MemManagerAllocator),
 *         .ctx = &my_arena,
 *         .malloc = arena_malloc, .calloc = arena_calloc, .free = arena_free,
 *     };
 *     capsule = PyCapsule_New(&arena, MEMMANAGER_ALLOCATOR_CAPSULE, NULL);
 *     # Python: memmanager.register_allocator("Arena", capsule)
 *
 * The struct must outlive every buffer made through it (a static, or memory
 * owned by the capsule).  memmanager keeps the capsule alive as long as any
 * buffer allocated through it lives.
 *
 * Rules of the ABI:
 *   - name, abi_version and struct_size come first and never move;
 *   - later versions only append fields; memmanager reads a field only when
 *     struct_size says the caller's struct has it;
 *   - free receives the size that was asked for at allocation time;
 *   - the functions may be called without the GIL held (never call into
 *     Python from them), and must be thread-safe;
 *   - malloc/calloc return NULL on failure; memmanager turns that into
 *     MemoryError;
 *   - memmanager never calls free with an address the allocator did not
 *     return, and calls it exactly once per block.
 *
 * register_allocator() refuses a capsule with another name, an
 * abi_version of 0, a struct_size smaller than version 1's, or a NULL
 * malloc, calloc or free.  Such allocators take no per-buffer options.
 *
 * This header needs only <stddef.h> and <stdint.h>; it is found with
 * memmanager.get_include().
 */
#ifndef MEMMANAGER_ALLOCATOR_H
#define MEMMANAGER_ALLOCATOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped only when a field is appended. */
#define MEMMANAGER_ALLOCATOR_ABI_VERSION 1u

/* The name a PyCapsule holding a MemManagerAllocator must carry. */
#define MEMMANAGER_ALLOCATOR_CAPSULE "memmanager.allocator"

typedef struct MemManagerAllocator {
    /* --- fixed header: never moves ------------------------------------ */
    const char *name;        /* human-readable, for repr and reports */
    uint32_t abi_version;    /* MEMMANAGER_ALLOCATOR_ABI_VERSION */
    uint32_t struct_size;    /* sizeof(MemManagerAllocator) as compiled */

    /* --- version 1 ---------------------------------------------------- */
    void *ctx;               /* passed back unchanged to every function */

    /* size bytes, contents undefined; NULL on failure. */
    void *(*malloc)(void *ctx, size_t size);
    /* count * size zeroed bytes (the product was checked for overflow). */
    void *(*calloc)(void *ctx, size_t count, size_t size);
    /* Frees a block this allocator returned; size is the size asked for. */
    void (*free)(void *ctx, void *ptr, size_t size);
    /* Optional (may be NULL): resize a block, as C realloc.  With it,
     * Buffer.consume(address, ..., allocator=<this one>) adopts a block the
     * allocator made; old_size is 0 then, as memmanager does not know it. */
    void *(*realloc)(void *ctx, void *ptr, size_t old_size, size_t new_size);
} MemManagerAllocator;

#ifdef __cplusplus
}
#endif

#endif /* MEMMANAGER_ALLOCATOR_H */
