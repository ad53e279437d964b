/*
 * guards.c -- what MEMMANAGER_DEBUG=1 (read at import) switches
 * on in the C core:
 *
 *   - guard bytes: the guarded allocators (CMalloc, Aligned, Mmap) put 64
 *     bytes of GUARD_BYTE right in front of each block and 64 right after
 *     it.  The block is placed at a multiple of its alignment, so the
 *     offset from the start of what was allocated (the front guard's
 *     span, `mm_block.guard`) is at least 64 and a multiple of the
 *     alignment; only its last 64 bytes are written and checked.  The
 *     rest is never touched, so a page-aligned or 1 GiB-aligned 1-byte
 *     block costs a few resident bytes more, not the alignment's worth of
 *     pages (it used to fill the whole span).  At free they are checked;
 *     damage is reported on stderr and as a RuntimeWarning, and the block
 *     is freed all the same: an overrun is never silent and never a crash.
 *   - registry checks: the live-region registry's invariants are checked
 *     after every insert and remove (buffer.c calls mm_debug_check_registry);
 *     a violation is reported the same way.
 *
 * Reports never raise: a warning turned into an error goes to
 * sys.unraisablehook, and the caller's exception, if any, is kept.
 *
 * Layer: allocators.  May call core/.
 */
#include "allocators/allocators.h"

#include <inttypes.h>
#include <string.h>

#define GUARD_BYTE 0xFD
#define GUARD_FRONT_MIN ((size_t)64)

size_t mm_debug_guard_front(size_t alignment)
{
    return alignment > GUARD_FRONT_MIN ? alignment : GUARD_FRONT_MIN;
}

void mm_debug_write_guards(char *base, size_t front, size_t size)
{
    char *block = base + front;
    memset(block - GUARD_FRONT_MIN, GUARD_BYTE, GUARD_FRONT_MIN);
    memset(block + size, GUARD_BYTE, DEBUG_GUARD_BACK);
}

/* Offset of the first damaged byte of [start, start + length), or -1. */
static Py_ssize_t first_damaged(const unsigned char *start, size_t length)
{
    for (size_t i = 0; i < length; i++) {
        if (start[i] != GUARD_BYTE) {
            return (Py_ssize_t)i;
        }
    }
    return -1;
}

/* stderr and a RuntimeWarning; never raises. */
static void report(const char *message)
{
    fprintf(stderr, "memmanager: %s\n", message);
    fflush(stderr);
    mm_saved_error raised;
    mm_err_save(&raised);
    if (PyErr_WarnEx(PyExc_RuntimeWarning, message, 1) < 0) {
        PyErr_WriteUnraisable(NULL);
    }
    mm_err_restore(&raised);
}

void mm_debug_check_guards(AllocatorObject *alloc, const mm_block *block)
{
    size_t front_length = block->guard < GUARD_FRONT_MIN ? block->guard : GUARD_FRONT_MIN;
    const unsigned char *front = (const unsigned char *)block->address - front_length;
    const unsigned char *back = (const unsigned char *)block->address + block->size;
    Py_ssize_t before = first_damaged(front, front_length);
    Py_ssize_t after = first_damaged(back, DEBUG_GUARD_BACK);
    if (before < 0 && after < 0) {
        return;
    }
    const char *name = PyUnicode_AsUTF8(alloc->name);
    char message[320];
    if (name == NULL) {
        PyErr_Clear();
        name = "?";
    }
    if (after >= 0) {
        snprintf(message, sizeof(message),
                 "buffer overrun: the guard bytes after the %zu-byte block at "
                 "0x%" PRIxPTR " (allocator %s) were overwritten, from byte "
                 "%zu past its end", block->size, (uintptr_t)block->address,
                 name, (size_t)after);
    }
    else {
        snprintf(message, sizeof(message),
                 "buffer underrun: the guard bytes before the %zu-byte block at "
                 "0x%" PRIxPTR " (allocator %s) were overwritten, %zu bytes "
                 "before its start", block->size, (uintptr_t)block->address,
                 name, front_length - (size_t)before);
    }
    report(message);
}

void mm_debug_check_registry(const char *after)
{
    const char *why = NULL;
    if (mm_region_registry_check(&why) >= 0) {
        return;
    }
    char message[256];
    snprintf(message, sizeof(message),
             "the live-region registry is corrupt after %s: %s", after, why);
    report(message);
}
