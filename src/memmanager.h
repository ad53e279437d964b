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
 *   allocator.c        the Allocator object: one C vtable behind a name,
 *                      block allocation with init bytes, tracemalloc
 *   builtin_allocators.c  the PyAlloc and CMalloc vtables
 *   region_registry.c  the process-wide live-region registry and stats
 *   delayed_gc.c       pinning (delayed GC), collect_delayed, exit release
 *   consume.c          Buffer.consume: adopting memory that exists already
 *   cached_classmethod.c  a classmethod descriptor that allocates nothing
 *                      when looked up on its own class
 *   views.c            the per-buffer store of named views and its GC support
 *   dlpack.c           DLPack export for every exporter (request parsing and
 *                      rules, capsules, deleters); Buffer.__dlpack__
 *   dlpack_abi.h       our declarations of the DLPack structs (the only ones)
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

/* init_byte values understood by allocator_alloc_block(). */
#define INIT_UNINITIALISED (-1)

/* ------------------------------------------------------------------ */
/* Module state                                                        */
/* ------------------------------------------------------------------ */

typedef struct {
    PyTypeObject *buffer_type;
    PyTypeObject *allocator_type;
    PyTypeObject *cached_classmethod_type;
    PyTypeObject *view_entry_type; /* views.c: one stored view */
    PyObject *allocators;      /* dict: name -> AllocatorObject */
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
    int debug;                 /* MEMMANAGER_DEBUG was set at import */
} mm_state;

extern PyModuleDef memmanager_module_def;

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

typedef struct {
    PyObject_HEAD
    PyObject *name;                    /* str */
    const MemManagerAllocator *vtable; /* borrowed from keeper or static */
    PyObject *keeper;                  /* owns the vtable (a capsule), or NULL */
    int stats_slot;                    /* index in the registry's stats table */
    int uses_pymem;                    /* PyMem_*: GIL needed, already traced */
    int consume_only;                  /* cannot allocate (Borrowed) */
    int advise_hugepages;              /* heap blocks: madvise huge pages */
    const struct mm_device_hooks *device_hooks; /* device allocators, else NULL */
    int memory_kind;                   /* MM_MEMORY_* */
} AllocatorObject;

/* What allocator.c asks of a device allocator (cuda_allocators.c). */
typedef struct mm_device_hooks {
    /* With the GIL, before each allocation: make the device usable, or
     * raise DeviceUnavailableError. */
    int (*prepare)(AllocatorObject *alloc);
    /* Set size bytes to byte in memory the host cannot touch; raises. */
    int (*fill)(AllocatorObject *alloc, void *ptr, int byte, size_t size);
} mm_device_hooks;

/* One allocated block as the allocator returned it. */
typedef struct {
    char *address;
    size_t size;
} mm_block;

extern PyType_Spec allocator_type_spec;
extern const MemManagerAllocator mm_pyalloc_vtable;
extern const MemManagerAllocator mm_cmalloc_vtable;
extern const MemManagerAllocator mm_borrowed_vtable;

PyObject *allocator_new(mm_state *st, const char *name,
                        const MemManagerAllocator *vtable, PyObject *keeper);
int allocator_register_builtins(mm_state *st);
AllocatorObject *allocator_lookup(mm_state *st, PyObject *name);
int allocator_check_options(AllocatorObject *alloc, PyObject *options);
int allocator_alloc_block(AllocatorObject *alloc, size_t size, int init_byte,
                          mm_block *out);
void allocator_free_block(AllocatorObject *alloc, mm_block *block);
void allocator_track(AllocatorObject *alloc, mm_block *block);

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
    unsigned char has_pending_region;
    unsigned char pending_readonly;
    unsigned char host_inaccessible; /* device memory: no host reads or writes */
} BufferObject;

extern PyType_Spec buffer_type_spec;

/* buffer.c */
PyObject *buffer_create(PyTypeObject *type, PyObject *const *args,
                        Py_ssize_t nargs, PyObject *kwnames);
int buffer_finish_type(mm_state *st, PyTypeObject *type);
extern PyMethodDef buffer_class_methods[];
BufferObject *buffer_alloc_object(PyTypeObject *type);
int buffer_register_region(mm_state *st, BufferObject *self);
int buffer_release_memory(BufferObject *self);
int buffer_check_live(BufferObject *self);
int buffer_check_writable(BufferObject *self);
int buffer_check_host_access(BufferObject *self);
int buffer_finish_construction(mm_state *st, BufferObject *self,
                               PyObject *death_stub, int delayed_gc);
mm_state *buffer_state(BufferObject *self);
PyObject *buffer_release_method(PyObject *self, PyObject *unused);
void buffer_run_death_stub(BufferObject *self);

/* buffer_args.c: values parsed from (options mapping, keywords). */
typedef struct {
    Py_ssize_t num_items;
    Py_ssize_t item_size;
    /* Strong references (NULL: not given), released by buffer_args_clear. */
    PyObject *allocator;      /* name */
    PyObject *init_value;
    PyObject *death_stub;     /* None is stored as NULL */
    PyObject *delayed_gc;
    PyObject *copy;           /* consume only */
    PyObject *readonly;       /* consume only */
    PyObject *owner;          /* consume only */
    PyObject *extra;          /* dict of the remaining (allocator) options */
} buffer_args;

int unpack_arguments(const char *funcname, PyObject *const *args,
                     Py_ssize_t nargs, PyObject *kwnames,
                     const char *const *names, Py_ssize_t max_positional,
                     PyObject **out);
int parse_size(PyObject *obj, const char *what, Py_ssize_t *out);
int parse_sizes(PyObject *n_obj, PyObject *s_obj, buffer_args *a);
int parse_init_value(PyObject *value, int *init_byte);
int parse_options(mm_state *st, PyObject *options, PyObject *const *kwvalues,
                  PyObject *kwnames, int accept_consume_keys, buffer_args *a);
int parse_flag(PyObject *value, int default_value);
void buffer_args_clear(buffer_args *a);

/* buffer_access.c */
int buffer_getbuffer(PyObject *op, Py_buffer *view, int flags);
void buffer_releasebuffer(PyObject *op, Py_buffer *view);
Py_ssize_t buffer_length(PyObject *op);
PyObject *buffer_item(PyObject *op, Py_ssize_t index);
PyObject *buffer_subscript(PyObject *op, PyObject *key);
int buffer_ass_subscript(PyObject *op, PyObject *key, PyObject *value);
PyObject *buffer_extract_region(PyObject *self, PyObject *const *args,
                                Py_ssize_t nargs, PyObject *kwnames);
PyObject *buffer_region(PyObject *self, PyObject *const *args,
                        Py_ssize_t nargs, PyObject *kwnames);

/* delayed_gc.c */
int delayed_gc_pin(mm_state *st, BufferObject *self);
int delayed_gc_unpin(mm_state *st, BufferObject *self);
PyObject *delayed_gc_identifiers(mm_state *st);
PyObject *delayed_gc_collect(mm_state *st, PyObject *identifiers);
PyObject *delayed_gc_release_all(mm_state *st);

/* cached_classmethod.c */
extern PyType_Spec cached_classmethod_spec;
int install_cached_classmethods(mm_state *st, PyTypeObject *owner, PyMethodDef *defs);

/* consume.c */
PyObject *buffer_consume(PyObject *cls, PyObject *const *args,
                         Py_ssize_t nargs, PyObject *kwnames);

/* views.c */
extern PyType_Spec view_entry_type_spec;
int views_add_types(PyObject *module, mm_state *st);
int buffer_views_traverse(BufferObject *self, visitproc visit, void *arg);
void buffer_views_clear(BufferObject *self);
PyObject *buffer_store_view(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *buffer_stored_view(PyObject *self, PyObject *name);
PyObject *buffer_forget_view(PyObject *self, PyObject *name);
PyObject *buffer_view_names(PyObject *self, PyObject *unused);

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

int dlpack_parse_request(const char *funcname, PyObject *const *args,
                         Py_ssize_t nargs, PyObject *kwnames,
                         mm_dlpack_request *out);
int dlpack_check_device(const mm_dlpack_request *req, mm_dl_device here,
                        const char *what);
int dlpack_check_readonly(int readonly, int versioned, const char *what,
                          const char *remedy);
PyObject *dlpack_capsule_new(const mm_dlpack_source *src, int versioned);
PyObject *buffer_dlpack(PyObject *self, PyObject *const *args,
                        Py_ssize_t nargs, PyObject *kwnames);
PyObject *buffer_dlpack_device(PyObject *self, PyObject *unused);
/* The GPU files (cuda_*.c; their shared header is cuda_driver.h) */
extern PyType_Spec device_view_type_spec;
int cuda_register_allocators(mm_state *st);
PyObject *cuda_probe(PyObject *module, PyObject *unused);
PyObject *cuda_reset(PyObject *module, PyObject *unused);
PyObject *buffer_device_movement(PyObject *self, PyObject *const *args,
                                 Py_ssize_t nargs, PyObject *kwnames);
PyObject *buffer_device_mappings(PyObject *self, PyObject *unused);
PyObject *buffer_device_view(PyObject *self, PyObject *const *args,
                             Py_ssize_t nargs, PyObject *kwnames);
void device_state_free(BufferObject *self);   /* never raises */

/* module.c */
void raise_overlap(mm_state *st, uintptr_t start, uintptr_t end,
                   const region_info *other);

#endif /* MEMMANAGER_INTERNAL_H */
