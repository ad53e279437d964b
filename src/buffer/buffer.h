/*
 * buffer.h -- the buffer layer: the Buffer object and what every file
 * that touches one needs.
 *
 *   buffer.c      lifecycle: construction, release, the death stub, GC,
 *                 dealloc, the context manager (ownership rules at its top)
 *   args.c        the constructor's and consume()'s options
 *   access.c      buffer protocol, region(), extract_buffer_region(),
 *                 item and slice access
 *   delayed_gc.c  the pinned table (delayed_gc=True), collect_delayed()
 *   views.c       the per-buffer store of named views, and its GC support
 *   attach.c      Buffer.attach and buf.name (SharedMemory)
 *   statistics.c  memmanager.statistics(): scoped allocation counters
 *   flush.c       Buffer.flush() (MappedFile: msync)
 *
 * Within the layer: the inline checks below, args.c, delayed_gc.c,
 * views.c and statistics.c stand below buffer.c; access.c, attach.c and
 * flush.c above it.
 * State a higher layer keeps per buffer hangs on a mm_buffer_attachment,
 * which frees itself, so this layer knows nothing of it.
 *
 * Layer: buffer.  May call allocators/ and core/.
 */
#ifndef MEMMANAGER_BUFFER_H
#define MEMMANAGER_BUFFER_H

#include "allocators/allocators.h"

typedef struct BufferObject BufferObject;

/* Per-buffer state of a higher layer (the GPU mappings of cuda/): its
 * first member.  free() runs when the buffer's memory goes (GIL held,
 * never raises) and frees the attachment too. */
typedef struct mm_buffer_attachment {
    void (*free)(BufferObject *owner);
} mm_buffer_attachment;

struct BufferObject {
    PyObject_HEAD
    char *data;               /* the memory; NULL once released */
    Py_ssize_t nbytes;        /* num_items * item_size */
    Py_ssize_t num_items;
    Py_ssize_t item_size;
    Py_ssize_t exports;       /* live buffer-protocol exports + internal holds */
    AllocatorObject *allocator; /* strong: frees through it, whatever changes */
    PyObject *death_stub;     /* strong, or NULL */
    PyObject *source;         /* strong: adopted object or Borrowed owner */
    Py_buffer source_view;    /* export of source held by a zero-copy consume */
    PyObject *weakreflist;
    PyObject *views;          /* dict: view name -> entry (views.c), or NULL */
    region_node node;         /* this buffer's entry in the live-region registry */
    uint64_t identifier;      /* unique for the process's life (mm_buffer_alloc_object) */
    mm_buffer_attachment *device; /* GPU mappings (cuda/device.c), or NULL */
    PyObject *statistics;     /* strong: the innermost statistics scope that
                                 counted this buffer (statistics.c), or NULL */
    /* One-shot region requested by region(): consumed by the next getbuffer. */
    Py_ssize_t pending_offset;
    Py_ssize_t pending_length;
    unsigned char readonly;
    unsigned char pinned;
    unsigned char stub_done;  /* the death stub ran (or there was none) */
    unsigned char released;
    unsigned char owns_memory; /* free through allocator on release */
    unsigned char holds_source_view;
    unsigned char source_view_visible; /* the collector may see source_view.obj (consume.c) */
    unsigned char has_pending_region;
    unsigned char pending_readonly;
    unsigned char host_inaccessible; /* device memory: no host reads or writes */
    unsigned char release_deferred; /* __exit__ with an exception and live
                                       exports: release when the last ends */
    /* The allocator kind's per-block state and the guard-byte offset
     * (mm_block.cookie, .guard), handed back to it at free. */
    void *block_cookie;
    size_t block_guard;
};

/* args.c: values parsed from (options mapping, keywords). */
typedef struct {
    Py_ssize_t num_items;
    Py_ssize_t item_size;
    /* Strong (NULL: not given), released by mm_buffer_args_clear: Python
     * code that runs before they are used (a __bool__, a plug-in) may
     * empty the mapping or the list they came from.  Whoever keeps one
     * beyond the call takes its own reference. */
    PyObject *allocator;      /* name */
    PyObject *init_value;
    PyObject *death_stub;     /* None is stored as NULL */
    PyObject *delayed_gc;
    PyObject *copy;           /* consume only */
    PyObject *readonly;       /* consume only */
    PyObject *owner;          /* consume only */
    /* Strong, released by mm_buffer_args_clear. */
    PyObject *items;          /* list: the options mapping's items while
                                 they are read (NULL after mm_parse_options) */
    PyObject *extra;          /* dict of the remaining (allocator) options:
                                 exact str keys, private, untracked */
} buffer_args;


int mm_parse_sizes(PyObject *n_obj, PyObject *s_obj, buffer_args *a);
int mm_parse_init_value(PyObject *value, int *init_byte);
int mm_parse_options(mm_state *st, PyObject *options, PyObject *const *kwvalues,
                     PyObject *kwnames, int accept_consume_keys, buffer_args *a);
void mm_buffer_args_clear(buffer_args *a);
void mm_buffer_args_forget_kwnames(mm_state *st);   /* at module clear */

/* ------------------------------------------------------------------ */
/* The checks every file makes before it touches a buffer's memory     */
/* ------------------------------------------------------------------ */

static inline mm_state *mm_buffer_state(BufferObject *self)
{
    return mm_state_from_type(Py_TYPE(self));
}

static inline int mm_buffer_check_live(BufferObject *self)
{
    if (self->released) {
        PyErr_SetString(PyExc_ValueError, "buffer is released");
        return -1;
    }
    return 0;
}

/* Live, and memory the host may read and write (CudaDevice memory is on
 * the GPU: reaching it from the host would crash). */
static inline int mm_buffer_check_host_access(BufferObject *self)
{
    if (mm_buffer_check_live(self) < 0) {
        return -1;
    }
    if (self->host_inaccessible) {
        PyErr_Format(PyExc_BufferError,
                     "the memory of a %U buffer is on the GPU: the host cannot "
                     "read or write it (use device_view())", self->allocator->name);
        return -1;
    }
    return 0;
}

static inline int mm_buffer_check_writable(BufferObject *self)
{
    if (mm_buffer_check_host_access(self) < 0) {
        return -1;
    }
    if (self->readonly) {
        PyErr_SetString(PyExc_TypeError, "buffer is read-only");
        return -1;
    }
    return 0;
}

/* The identifier as a new int. */
static inline PyObject *mm_buffer_identifier(BufferObject *self)
{
    return PyLong_FromUnsignedLongLong((unsigned long long)self->identifier);
}

/* buffer.c */
BufferObject *mm_buffer_alloc_object(PyTypeObject *type, const buffer_args *a);
PyObject *mm_buffer_create(PyTypeObject *type, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames);
PyObject *mm_buffer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs);
PyObject *mm_buffer_vectorcall(PyObject *type, PyObject *const *args,
                               size_t nargsf, PyObject *kwnames);
int mm_buffer_register_region(mm_state *st, BufferObject *self);
void mm_buffer_adopt_block(BufferObject *self, AllocatorObject *alloc,
                           const mm_block *block);
int mm_buffer_finish_construction(mm_state *st, BufferObject *self,
                                  PyObject *death_stub, int delayed_gc);
int mm_buffer_release_memory(BufferObject *self);
void mm_buffer_run_death_stub(BufferObject *self);
/* Every exporter calls this (GIL held) when one of its exports of self
 * ends, instead of decrementing exports itself: the last one finishes a
 * release that __exit__ deferred. */
void mm_buffer_export_ended(BufferObject *self);
/* The type's slots and methods (module/buffer_type.c lists them). */
void mm_buffer_finalize(PyObject *op);
int mm_buffer_traverse(PyObject *op, visitproc visit, void *arg);
int mm_buffer_clear(PyObject *op);
void mm_buffer_dealloc(PyObject *op);
PyObject *mm_buffer_release_method(PyObject *self, PyObject *unused);
PyObject *mm_buffer_enter(PyObject *self, PyObject *unused);
PyObject *mm_buffer_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
/* At exit: release every pinned buffer (one still exported is unpinned
 * after its stub ran, and freed when its last export goes). */
PyObject *mm_buffer_release_all_pinned(mm_state *st);

/* access.c */
int mm_buffer_getbuffer(PyObject *op, Py_buffer *view, int flags);
void mm_buffer_releasebuffer(PyObject *op, Py_buffer *view);
Py_ssize_t mm_buffer_length(PyObject *op);
PyObject *mm_buffer_item(PyObject *op, Py_ssize_t index);
PyObject *mm_buffer_subscript(PyObject *op, PyObject *key);
int mm_buffer_ass_subscript(PyObject *op, PyObject *key, PyObject *value);
PyObject *mm_buffer_extract_region(PyObject *self, PyObject *const *args,
                                   Py_ssize_t nargs, PyObject *kwnames);
PyObject *mm_buffer_region(PyObject *self, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames);

/* flush.c */
PyObject *mm_buffer_flush(PyObject *self, PyObject *unused);

/* delayed_gc.c: the pinned table */
int mm_delayed_gc_pin(mm_state *st, BufferObject *self);
/* Drops the table's reference: the caller holds its own if it goes on
 * using self. */
int mm_delayed_gc_unpin(mm_state *st, BufferObject *self);
PyObject *mm_delayed_gc_identifiers(mm_state *st);
PyObject *mm_delayed_gc_collect(mm_state *st, PyObject *identifiers);

/* views.c */
extern PyType_Spec mm_view_entry_type_spec;
extern PyType_Spec mm_view_export_type_spec;
/* The object a _ViewExport holds an export of (borrowed), or NULL when obj
 * is no _ViewExport. */
PyObject *mm_view_export_exporter(mm_state *st, PyObject *obj);
PyObject *mm_buffer_view_export(PyObject *self, PyObject *unused);
int mm_views_add_types(PyObject *module, mm_state *st);
int mm_buffer_views_traverse(BufferObject *self, visitproc visit, void *arg);
void mm_buffer_views_clear(BufferObject *self);
PyObject *mm_buffer_store_view(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *mm_buffer_stored_view(PyObject *self, PyObject *name);
PyObject *mm_buffer_forget_view(PyObject *self, PyObject *name);
PyObject *mm_buffer_view_names(PyObject *self, PyObject *unused);

/* attach.c */
PyObject *mm_buffer_attach(PyObject *cls, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames);
PyObject *mm_buffer_get_name(PyObject *op, void *closure);

/* statistics.c: memmanager.statistics() scopes.  Nothing is counted while
 * no scope is active anywhere (mm_statistics_any_active() is 0). */
extern Py_ssize_t mm_statistics_active_scopes;

static inline int mm_statistics_any_active(void)
{
    return __atomic_load_n(&mm_statistics_active_scopes, __ATOMIC_RELAXED) != 0;
}

/* Before a new owned buffer of alloc is registered: the innermost active
 * scope of the current context as a new reference in *scope (NULL: none),
 * with room made for alloc in it and every active scope around it.  -1
 * with MemoryError (nothing held). */
int mm_statistics_prepare(mm_state *st, AllocatorObject *alloc, PyObject **scope);
/* Once it is registered: counts self in scope's chain; self keeps the
 * reference prepare made. */
void mm_statistics_count_allocation(BufferObject *self, PyObject *scope);
/* At release (self->statistics != NULL): counts the free and drops the
 * reference, which may run a dealloc: call it last.  Never raises. */
void mm_statistics_count_free(BufferObject *self);
/* The same for a block that is not a buffer (a NumPy array's data,
 * interop/numpy_handler.c): counts nbytes of the allocator of stats slot
 * `slot` in scope's chain, whose reference (from prepare) the block keeps;
 * at its free, counts the free and drops that reference (call it last). */
void mm_statistics_count_block(PyObject *scope, int slot, uint64_t nbytes);
void mm_statistics_count_block_free(PyObject *scope, int slot, uint64_t nbytes);
/* The module's functions statistics() and _statistics_active_scopes(),
 * and its types Statistics and AllocatorStatistics (module/module.c). */
PyObject *mm_statistics_new(PyObject *module, PyObject *unused);
PyObject *mm_statistics_active_count(PyObject *module, PyObject *unused);
int mm_statistics_add_types(PyObject *module, mm_state *st);

#endif /* MEMMANAGER_BUFFER_H */
