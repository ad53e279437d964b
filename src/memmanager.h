/*
 * memmanager.h -- the one internal header shared by the C files in src/.
 *
 * The extension is split by responsibility; this header declares what the
 * files expose to each other:
 *
 *   module.c           module definition, module state, exceptions,
 *                      module-level functions (stats, live_buffers, ...)
 *   buffer.c           the Buffer type: construction, lifecycle (finalize,
 *                      dealloc, release), accessors, repr
 *   buffer_args.c      constructor argument parsing (sizes, init_value,
 *                      the options mapping)
 *   buffer_access.c    buffer protocol, region(), extract_buffer_region(),
 *                      item and slice access
 *   allocator.c        the Allocator object: one allocator kind behind a
 *                      name; block allocation with init bytes, guard
 *                      bytes, huge pages, tracemalloc; the vtable kind
 *   builtin_allocators.c  the PyAlloc, CMalloc and Borrowed vtables
 *   allocator_aligned.c   the Aligned kind (posix_memalign, alignment=)
 *   allocator_mmap.c   the Mmap kind and the page-mapping helpers
 *   allocator_shm.c    the SharedMemory kind, Buffer.attach, buf.name
 *   shm_tracker.c      who unlinks SharedMemory names: the list of names
 *                      created, the unlink at exit, the tracker process
 *   allocator_python.c the kind behind Python plug-ins (validated calls)
 *   allocator_plugin.c register_allocator: C capsules and Python objects
 *   allocator_debug.c  MEMMANAGER_DEBUG: guard bytes, registry checks
 *   region_registry.c  the process-wide live-region registry and stats
 *   delayed_gc.c       pinning (delayed GC), collect_delayed, exit release
 *   consume.c          Buffer.consume: adopting memory that exists already
 *   cached_classmethod.c  a classmethod descriptor that allocates nothing
 *                      when looked up on its own class
 *   views.c            the per-buffer store of named views and its GC support
 *   dlpack.c           DLPack export for every exporter (request parsing and
 *                      rules, capsules, deleters); Buffer.__dlpack__
 *   dlpack_abi.h       our declarations of the DLPack structs (the only ones)
 *   interpreters.c     the interpreters memmanager is loaded in, and how a
 *                      thread enters one (DLPack deleters: any thread, any
 *                      interpreter, after shutdown)
 *   cuda_loader.c      the CUDA driver, loaded with dlopen at first use
 *   cuda_allocators.c  the CudaHost, CudaDevice and CudaManaged vtables
 *   cuda_device.c      device_movement(): per-(buffer, device) mappings
 *   cuda_view.c        device_view(): __cuda_array_interface__, and DLPack
 *                      through dlpack.c
 *                      (the four share cuda_driver.h and cuda_abi.h)
 *
 * Ownership rules for a BufferObject are written at the top of buffer.c.
 */
#ifndef MEMMANAGER_INTERNAL_H
#define MEMMANAGER_INTERNAL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>

#include "memmanager/allocator.h"
#include "region_registry.h"
#include "dlpack_abi.h"

/* The tracemalloc domain every non-PyMem allocation is reported under
 * ("memm" in ASCII). */
#define MEMMANAGER_TRACEMALLOC_DOMAIN 0x6d656d6du

/* Branch hints: MEMMANAGER_DEBUG checks stay off the hot paths' line. */
#if defined(__GNUC__)
#define MM_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define MM_UNLIKELY(x) (x)
#endif

/* a * b for non-negative sizes: 1 when it overflows Py_ssize_t. */
static inline int mm_mul_overflow(Py_ssize_t a, Py_ssize_t b, Py_ssize_t *product)
{
#if defined(__GNUC__)
    return __builtin_mul_overflow(a, b, product);
#else
    if (b != 0 && a > PY_SSIZE_T_MAX / b) {
        return 1;
    }
    *product = a * b;
    return 0;
#endif
}

/* From MM_HUGEPAGE_THRESHOLD on, blocks of the built-in heap allocators
 * are advised to use transparent huge pages: one fault per 2 MiB instead
 * of per 4 KiB, which is most of the cost of touching a fresh 64 MiB
 * block.  Such blocks also start on a huge-page boundary (PyAlloc, CMalloc
 * and Aligned see to it), or the kernel can only use huge pages for the
 * 2 MiB extents that happen to lie wholly inside the mapping malloc made:
 * where that mapping lands decides between 62 and 64 MiB of huge pages,
 * and a 64 MiB fill then costs 4.6 ms or 3.7 ms. */
#define MM_HUGEPAGE_THRESHOLD ((size_t)4 << 20)
#define MM_HUGEPAGE_SIZE ((size_t)2 << 20)

/* What malloc guarantees: the alignment of a request that asks for none. */
#define MM_DEFAULT_ALIGNMENT ((size_t)16)

/* init_byte values understood by mm_allocator_alloc_block(). */
#define INIT_UNINITIALISED (-1)

/* ------------------------------------------------------------------ */
/* Module state                                                        */
/* ------------------------------------------------------------------ */

/* Which option each keyword of a call names, remembered for the tuple of
 * keyword names (buffer_args.c): a call site passes the same tuple, a
 * constant of its code, every time. */
#define MM_KWNAMES_CACHED 8
typedef struct {
    PyObject *names;                      /* strong, or NULL */
    signed char option[MM_KWNAMES_CACHED]; /* known option index; -1: extra */
} mm_kwnames_cache;

/* interpreters.c: one interpreter memmanager is loaded in. */
typedef struct mm_interp mm_interp;

/* Something to run inside an interpreter (with its GIL): exactly one of
 * run or abandon is called, once; abandon when the interpreter is gone or
 * the runtime finalised, and then only C memory may be touched.  Either
 * may free the node. */
typedef struct mm_interp_call {
    struct mm_interp_call *next;
    void (*run)(struct mm_interp_call *call);
    void (*abandon)(struct mm_interp_call *call);
} mm_interp_call;

typedef struct {
    PyTypeObject *buffer_type;
    PyTypeObject *allocator_type;
    PyTypeObject *cached_classmethod_type;
    PyTypeObject *view_entry_type; /* views.c: one stored view */
    PyTypeObject *view_export_type; /* views.c: a NumPy view's export */
    PyObject *allocators;      /* dict: name -> AllocatorObject; private
                                  (untracked, see allocator.c) */
    PyObject *default_allocator; /* the PyAlloc AllocatorObject */
    PyObject *pinned;          /* dict: identifier (int) -> Buffer */
    PyObject *MemManagerError;
    PyObject *UnknownAllocatorError;
    PyObject *OverlapError;
    PyObject *DeviceUnavailableError;
    PyObject *address_resolver; /* Python callable for foreign pointers, or NULL */
    PyObject *cmalloc_allocator; /* the CMalloc AllocatorObject */
    /* Interned option names, compared by identity on the hot path. */
    PyObject *str_allocator;
    PyObject *str_init_value;
    PyObject *str_delayed_gc;
    PyObject *str_death_stub;
    PyObject *str_copy;
    PyObject *str_readonly;
    PyObject *str_owner;
    PyTypeObject *device_view_type;
    PyObject *cuda_driver;     /* capsule: the CUDA loader, loaded at first use */
    /* mm_allocator_lookup's memory of the last name it found and what it
     * named (both strong); forgotten by every change to `allocators`
     * (mm_allocator_registry_set). */
    PyObject *last_allocator_name;
    PyObject *last_allocator;
    /* mm_parse_options' memory of the last keyword-name tuple, one for the
     * constructor's names and one for consume()'s (buffer_args.c). */
    mm_kwnames_cache kwnames_cache[2];
    int debug;                 /* MEMMANAGER_DEBUG was set at import */
    mm_interp *interp;         /* the interpreter this module instance is in */
} mm_state;

extern PyModuleDef mm_module_def;

mm_state *mm_state_from_type(PyTypeObject *type);

/* ------------------------------------------------------------------ */
/* Allocators                                                          */
/* ------------------------------------------------------------------ */

/* Where an allocator's memory lives (device_movement and the host-access
 * checks depend on it). */
enum {
    MM_MEMORY_HOST = 0,        /* ordinary host memory (CudaHost: pinned) */
    MM_MEMORY_CUDA_MANAGED,    /* unified memory: host and every device */
    MM_MEMORY_CUDA_DEVICE,     /* device memory: the host cannot touch it */
};

struct mm_device_hooks;

typedef struct AllocatorObject AllocatorObject;

/* What one allocation asks for: the sizes, the init byte and the options
 * of the allocator kind, parsed and checked before anything is allocated.
 * Each kind's mm_parse_options sets the fields it uses; the rest keep the
 * defaults of mm_allocator_parse_options(). */
typedef struct {
    Py_ssize_t num_items;
    Py_ssize_t item_size;
    int init_byte;         /* INIT_UNINITIALISED or 0..255 */
    size_t alignment;      /* the block starts at a multiple of this */
    int hugepages;         /* Mmap: -1 automatic, 0 never, 1 always */
    int populate;          /* Mmap: pre-fault the pages */
    int shared;            /* Mmap: MAP_SHARED (survives fork) */
    PyObject *shm_name;    /* SharedMemory: name= (borrowed), or NULL */
    PyObject *options;     /* Python plug-ins: the extra keywords (borrowed) */
} mm_request;

/* Memory as an allocator kind handed it over: where it starts and the
 * kind's per-block state (a SharedMemory name, a plug-in's handle). */
typedef struct {
    char *base;
    void *cookie;
} mm_raw;

/* One allocated block as a buffer keeps it: what the buffer sees
 * (address, size), and what the free needs besides (cookie, and `guard`,
 * the guard bytes in front of address under MEMMANAGER_DEBUG). */
typedef struct {
    char *address;
    size_t size;
    void *cookie;
    size_t guard;
} mm_block;

/* An allocator kind: how a family of allocators parses its options and
 * gets and gives back memory.  allocate() returns `size` bytes (zeroed
 * when `zero`) or raises; release() never raises and may run without the
 * GIL unless the allocator has needs_gil. */
typedef struct {
    const char *kind;
    int (*parse_options)(AllocatorObject *self, PyObject *options,
                         mm_request *req);
    int (*allocate)(AllocatorObject *self, const mm_request *req, size_t size,
                    int zero, mm_raw *out);
    void (*release)(AllocatorObject *self, char *base, size_t size,
                    void *cookie);
    /* Optional: adopt `source` (Buffer.consume with this allocator). */
    int (*consume)(AllocatorObject *self, PyObject *source, size_t size,
                   PyObject *options, mm_raw *out);
    /* Optional: visit the Python objects a cookie holds (GC). */
    int (*visit_cookie)(void *cookie, visitproc visit, void *arg);
} mm_allocator_ops;

struct AllocatorObject {
    PyObject_HEAD
    PyObject *name;                    /* str */
    const mm_allocator_ops *ops;       /* the kind */
    const MemManagerAllocator *vtable; /* vtable kinds; NULL for the others */
    PyObject *keeper;                  /* owns the vtable (capsule) or is the
                                          Python plug-in object; or NULL */
    PyObject *plugin_methods;          /* Python plug-ins: (malloc, free,
                                          get_buffer_address, consume|None) */
    int stats_slot;                    /* index in the registry's stats table */
    unsigned char uses_pymem;          /* PyMem_*: already traced by Python */
    unsigned char needs_gil;           /* never release the GIL around it */
    unsigned char consume_only;        /* cannot allocate (Borrowed) */
    unsigned char advise_hugepages;    /* large blocks: madvise huge pages */
    unsigned char fills_itself;        /* the kind writes the init byte */
    unsigned char guarded;             /* MEMMANAGER_DEBUG guard bytes */
    unsigned char debug;               /* MEMMANAGER_DEBUG was set */
    unsigned char is_plugin;           /* registered by register_allocator */
    const struct mm_device_hooks *device_hooks; /* device allocators, else NULL */
    int memory_kind;                   /* MM_MEMORY_* */
};

/* What allocator.c asks of a device allocator (cuda_allocators.c). */
typedef struct mm_device_hooks {
    /* With the GIL, before each allocation: make the device usable, or
     * raise DeviceUnavailableError. */
    int (*prepare)(AllocatorObject *alloc);
    /* Set size bytes to byte in memory the host cannot touch; raises. */
    int (*fill)(AllocatorObject *alloc, void *ptr, int byte, size_t size);
} mm_device_hooks;

extern PyType_Spec mm_allocator_type_spec;
extern const MemManagerAllocator mm_pyalloc_vtable;
extern const MemManagerAllocator mm_cmalloc_vtable;
extern const MemManagerAllocator mm_borrowed_vtable;
extern const mm_allocator_ops mm_vtable_ops;
extern const mm_allocator_ops mm_aligned_ops;
extern const mm_allocator_ops mm_mmap_ops;
extern const mm_allocator_ops mm_shm_ops;
extern const mm_allocator_ops mm_python_ops;

/* allocator.c */
AllocatorObject *mm_allocator_new(mm_state *st, const char *name,
                               const mm_allocator_ops *ops,
                               const MemManagerAllocator *vtable,
                               PyObject *keeper);
int mm_allocator_register_builtins(mm_state *st);
AllocatorObject *mm_allocator_lookup(mm_state *st, PyObject *name);
int mm_allocator_registry_set(mm_state *st, PyObject *name, AllocatorObject *alloc);
void mm_allocator_registry_clear(mm_state *st);
int mm_allocator_check_options(AllocatorObject *alloc, PyObject *options);
int mm_allocator_refuse_options(AllocatorObject *alloc, PyObject *options,
                             mm_request *req);
int mm_allocator_parse_any_options(AllocatorObject *alloc, PyObject *options,
                                Py_ssize_t num_items, Py_ssize_t item_size,
                                int init_byte, mm_request *req);

/* The request for an allocation.  Inline for the hot path: a vtable
 * allocator (PyAlloc, CMalloc) given no options reads nothing else. */
static inline int mm_allocator_parse_options(AllocatorObject *alloc, PyObject *options,
                                          Py_ssize_t num_items, Py_ssize_t item_size,
                                          int init_byte, mm_request *req)
{
    if (options == NULL && alloc->ops == &mm_vtable_ops) {
        req->alignment = MM_DEFAULT_ALIGNMENT;
        return 0;
    }
    return mm_allocator_parse_any_options(alloc, options, num_items, item_size,
                                       init_byte, req);
}
int mm_allocator_alloc_block(AllocatorObject *alloc, const mm_request *req,
                          size_t size, int init_byte, mm_block *out);
int mm_allocator_consume_block(AllocatorObject *alloc, PyObject *source,
                            size_t size, PyObject *options, mm_block *out);
void mm_allocator_free_block(AllocatorObject *alloc, mm_block *block);
void mm_allocator_track(AllocatorObject *alloc, mm_block *block);
int mm_allocator_visit_block(AllocatorObject *alloc, void *cookie,
                          visitproc visit, void *arg);
void mm_option_get(PyObject *options, const char *key, PyObject **value);
int mm_option_refuse_others(AllocatorObject *alloc, PyObject *options,
                         const char *const *known);

/* allocator_mmap.c: page mappings shared by Mmap, Aligned, SharedMemory. */
size_t mm_page_size(void);
size_t mm_round_to_pages(size_t size);
char *mm_map_anonymous(size_t size, size_t alignment, int shared);
void mm_unmap(char *base, size_t size);
void mm_advise_hugepages(void *ptr, size_t size);
void mm_populate(char *base, size_t size);

/* shm_tracker.c: the names this process created and must unlink.  A link
 * lives in a SharedMemory cookie; the list is process-wide, under its own
 * lock (forget may run without the GIL). */
typedef struct mm_shm_link {
    struct mm_shm_link *prev, *next;   /* the list, while listed */
    pid_t creator;                     /* the creating process */
    int64_t interpreter;               /* the creating interpreter's ID */
    int listed;                        /* not unlinked yet */
    const char *posix_name;            /* the cookie's, "/..." */
} mm_shm_link;
int mm_shm_tracker_ensure(void);          /* GIL; before creating; raises */
void mm_shm_tracker_created(mm_shm_link *link);   /* GIL; no Python */
void mm_shm_tracker_forget(mm_shm_link *link);    /* any thread; unlinks */
PyObject *mm_shm_unlink_at_exit(PyObject *module, PyObject *arg);

/* allocator_shm.c */
PyObject *mm_buffer_attach(PyObject *cls, PyObject *const *args,
                        Py_ssize_t nargs, PyObject *kwnames);
PyObject *mm_buffer_get_name(PyObject *op, void *closure);

/* allocator_plugin.c */
PyObject *mm_allocator_register_plugin(mm_state *st, PyObject *name, PyObject *impl);

/* allocator_debug.c */
size_t mm_debug_guard_front(size_t alignment);
#define DEBUG_GUARD_BACK ((size_t)64)
void mm_debug_write_guards(char *base, size_t front, size_t size);
void mm_debug_check_guards(AllocatorObject *alloc, const mm_block *block);
void mm_debug_check_registry(const char *after);

/* ------------------------------------------------------------------ */
/* Buffer                                                              */
/* ------------------------------------------------------------------ */

typedef struct {
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
    struct mm_device_state *device; /* GPU mappings (cuda_device.c), or NULL */
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
} BufferObject;

extern PyType_Spec mm_buffer_type_spec;

/* buffer.c */
PyObject *mm_buffer_create(PyTypeObject *type, PyObject *const *args,
                        Py_ssize_t nargs, PyObject *kwnames);
int mm_buffer_finish_type(mm_state *st, PyTypeObject *type);
extern PyMethodDef mm_buffer_class_methods[];
int mm_buffer_register_region(mm_state *st, BufferObject *self);
void mm_buffer_adopt_block(BufferObject *self, AllocatorObject *alloc,
                        const mm_block *block);
int mm_buffer_release_memory(BufferObject *self);
int mm_buffer_check_live(BufferObject *self);
PyObject *mm_buffer_identifier(BufferObject *self);   /* a new int */
int mm_buffer_check_writable(BufferObject *self);
int mm_buffer_check_host_access(BufferObject *self);
int mm_buffer_finish_construction(mm_state *st, BufferObject *self,
                               PyObject *death_stub, int delayed_gc);
mm_state *mm_buffer_state(BufferObject *self);
PyObject *mm_buffer_release_method(PyObject *self, PyObject *unused);
void mm_buffer_run_death_stub(BufferObject *self);
/* Every exporter calls this (GIL held) when one of its exports of self
 * ends, instead of decrementing exports itself: the last one finishes a
 * release that __exit__ deferred. */
void mm_buffer_export_ended(BufferObject *self);

/* buffer_args.c: values parsed from (options mapping, keywords). */
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

/* buffer.c: a new, empty buffer object of the sizes in a. */
BufferObject *mm_buffer_alloc_object(PyTypeObject *type, const buffer_args *a);

int mm_unpack_arguments(const char *funcname, PyObject *const *args,
                     Py_ssize_t nargs, PyObject *kwnames,
                     const char *const *names, Py_ssize_t max_positional,
                     PyObject **out);
int mm_parse_size(PyObject *obj, const char *what, Py_ssize_t *out);
int mm_parse_sizes(PyObject *n_obj, PyObject *s_obj, buffer_args *a);
int mm_parse_init_value(PyObject *value, int *init_byte);
int mm_parse_options(mm_state *st, PyObject *options, PyObject *const *kwvalues,
                  PyObject *kwnames, int accept_consume_keys, buffer_args *a);
int mm_parse_flag(PyObject *value, int default_value);
void mm_buffer_args_clear(buffer_args *a);
void mm_buffer_args_forget_kwnames(mm_state *st);   /* at module clear */

/* buffer_access.c */
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

/* delayed_gc.c */
int mm_delayed_gc_pin(mm_state *st, BufferObject *self);
int mm_delayed_gc_unpin(mm_state *st, BufferObject *self);
PyObject *mm_delayed_gc_identifiers(mm_state *st);
PyObject *mm_delayed_gc_collect(mm_state *st, PyObject *identifiers);
PyObject *mm_delayed_gc_release_all(mm_state *st);

/* cached_classmethod.c */
extern PyType_Spec mm_cached_classmethod_spec;
int mm_install_cached_classmethods(mm_state *st, PyTypeObject *owner, PyMethodDef *defs);

/* consume.c */
int mm_consume_register_region(mm_state *st, BufferObject *self);
int mm_consume_visit_source(BufferObject *self, visitproc visit, void *arg);
PyObject *mm_buffer_consume(PyObject *cls, PyObject *const *args,
                         Py_ssize_t nargs, PyObject *kwnames);

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

/* dlpack.c: the one DLPack implementation, a capsule over any memory
 * (Buffer.__dlpack__ here, DeviceView.__dlpack__ in cuda_view.c). */
typedef struct {
    void *data;
    int64_t nbytes;                     /* exported as a 1-D uint8 tensor */
    mm_dl_device device;                /* kDLCPU 0, kDLCUDA n, ... */
    int readonly;                       /* versioned: the READ_ONLY flag */
    int copied;                         /* versioned: the IS_COPIED flag */
    PyObject *owner;                    /* the capsule takes a reference */
    void (*unexport)(PyObject *owner);  /* gives the export back (GIL held);
                                           NULL: the owner counts none */
} mm_dlpack_source;

/* The arguments of __dlpack__, parsed but not judged. */
typedef struct {
    PyObject *stream;     /* borrowed; NULL for None */
    int versioned;        /* max_version given with major >= 1 */
    int has_device;       /* dl_device given */
    long device_type;
    long device_id;
    int copy;             /* -1: None, 0: False, 1: True */
} mm_dlpack_request;

int mm_dlpack_parse_request(const char *funcname, PyObject *const *args,
                         Py_ssize_t nargs, PyObject *kwnames,
                         mm_dlpack_request *out);
int mm_dlpack_check_device(const mm_dlpack_request *req, mm_dl_device here,
                        const char *what);
int mm_dlpack_check_readonly(int readonly, int versioned, const char *what,
                          const char *remedy);
PyObject *mm_dlpack_capsule_new(const mm_dlpack_source *src, int versioned);
PyObject *mm_buffer_dlpack(PyObject *self, PyObject *const *args,
                        Py_ssize_t nargs, PyObject *kwnames);
PyObject *mm_buffer_dlpack_device(PyObject *self, PyObject *unused);
/* The GPU files (cuda_*.c; their shared header is cuda_driver.h) */
extern PyType_Spec mm_device_view_type_spec;
int mm_cuda_register_allocators(mm_state *st);
PyObject *mm_cuda_probe(PyObject *module, PyObject *unused);
PyObject *mm_cuda_reset(PyObject *module, PyObject *unused);
PyObject *mm_buffer_device_movement(PyObject *self, PyObject *const *args,
                                 Py_ssize_t nargs, PyObject *kwnames);
PyObject *mm_buffer_device_mappings(PyObject *self, PyObject *unused);
PyObject *mm_buffer_device_view(PyObject *self, PyObject *const *args,
                             Py_ssize_t nargs, PyObject *kwnames);
void mm_device_state_free(BufferObject *self);   /* never raises */

/* interpreters.c */
int mm_interp_attach(mm_state *st);      /* module exec */
void mm_interp_detach(mm_state *st);     /* module clear; idempotent */
mm_interp *mm_interp_ref(mm_interp *it);
void mm_interp_unref(mm_interp *it);     /* any thread, no GIL needed */
/* From any thread, with or without the GIL: see interpreters.c. */
void mm_interp_call_soon(mm_interp *it, mm_interp_call *call);

/* module.c */
void mm_raise_overlap(mm_state *st, uintptr_t start, uintptr_t end,
                   const region_info *other);

#endif /* MEMMANAGER_INTERNAL_H */
