/*
 * buffer/flush.c -- Buffer.flush(): write the buffer's changes to where
 * its memory lives.  Only file-backed memory (MappedFile) lives anywhere
 * but in memory; its kind's flush (msync) runs, while an internal export
 * keeps release() from unmapping the file underneath it.  For every other
 * allocator there is nothing to write, and flush() does nothing.
 *
 * Layer: buffer.  May call allocators/ and core/, and buffer.c.
 */
#include "buffer/buffer.h"

PyObject *mm_buffer_flush(PyObject *op, PyObject *Py_UNUSED(unused))
{
    BufferObject *self = (BufferObject *)op;
    if (mm_buffer_check_live(self) < 0) {
        return NULL;
    }
    /* Through a Limit or a Log the block is the upstream's own. */
    AllocatorObject *alloc = mm_allocator_block_owner(self->allocator);
    if (!self->owns_memory || alloc->ops->flush == NULL) {
        Py_RETURN_NONE;
    }
    size_t size = (size_t)self->nbytes;
    if (self->block_guard > 0) {
        size += self->block_guard + DEBUG_GUARD_BACK;
    }
    self->exports++;   /* the kind may drop the GIL: release() must wait */
    int rc = alloc->ops->flush(alloc, self->data - self->block_guard, size,
                               self->block_cookie);
    mm_buffer_export_ended(self);   /* may finish a release __exit__ deferred */
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}
