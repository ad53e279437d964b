/*
 * allocators.h -- the allocators layer: the Allocator object, the
 * interface every allocator kind implements (mm_allocator_ops), and the
 * kinds.
 *
 *   allocator.c    the Allocator object; the name -> allocator registry;
 *                  block allocation with init bytes, guard bytes, huge
 *                  pages and tracemalloc; the vtable kind (C allocators
 *                  behind a MemManagerAllocator, built-in or plug-in)
 *   pages.c        page mappings and huge-page advice, for every kind
 *   guards.c       MEMMANAGER_DEBUG: guard bytes, registry checks
 *   builtin.c      PyAlloc, CMalloc and Borrowed (vtables)
 *   aligned.c      Aligned (posix_memalign, alignment=)
 *   mmap.c         Mmap (one anonymous mapping per buffer)
 *   shm.c          SharedMemory (POSIX shared memory, by name)
 *   shm_tracker.c  who unlinks SharedMemory names
 *   mapped_file.c  MappedFile (a file mapped MAP_SHARED: path=, mode=)
 *   numa.c         numa_node=: the node check and mbind, for the
 *                  page-granular kinds
 *   python.c       the kind behind Python plug-ins (validated calls)
 *   plugin.c       register_allocator: C capsules and Python objects
 *
 * Each kind registers itself (its mm_*_register function); module/ walks
 * the table of them, so allocator.c knows no kind by name.  Allocators
 * hand out memory; they never build a Buffer.
 *
 * Layer: allocators.  May call core/.
 */
#ifndef MEMMANAGER_ALLOCATORS_H
#define MEMMANAGER_ALLOCATORS_H

#include "core/core.h"
#include "memmanager/allocator.h"

#include <sys/types.h>

/* Huge pages (hugepages=True / False / None, the default: automatic).
 * Automatically, from MM_HUGEPAGE_THRESHOLD on, the blocks of the heap
 * allocators that are about to be written (not zero-filled ones, which
 * stay the kernel's lazy zero pages) are advised to use transparent huge
 * pages: one fault per 2 MiB instead of per 4 KiB, which is most of the
 * cost of touching a fresh 64 MiB block.  hugepages=True advises every
 * block, whatever its size; False never does; MEMMANAGER_HUGEPAGES=0 at
 * import turns the automatic choice off (an explicit True still advises).
 * Blocks of MM_HUGEPAGE_SIZE and more that may be advised start on a
 * huge-page boundary, or the kernel can only use huge pages for the 2 MiB
 * extents that happen to lie wholly inside the mapping malloc made
 * (docs/benchmarks.md has what that costs): PyAlloc and CMalloc's malloc,
 * whose free() knows only the size, lay out every block of that size so;
 * Aligned those it will advise. */
#define MM_HUGEPAGE_THRESHOLD ((size_t)4 << 20)
#define MM_HUGEPAGE_SIZE ((size_t)2 << 20)
#define MM_HUGEPAGES_AUTO (-1)

/* What malloc guarantees: the alignment of a request that asks for none. */
#define MM_DEFAULT_ALIGNMENT ((size_t)16)

/* init_byte values understood by mm_allocator_alloc_block(). */
#define MM_INIT_UNINITIALISED (-1)

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
    int init_byte;         /* MM_INIT_UNINITIALISED or 0..255 */
    size_t alignment;      /* the block starts at a multiple of this */
    /* Next to each other, so the inline default below is one store. */
    signed char hugepages; /* MM_HUGEPAGES_AUTO, 0 never, 1 always */
    unsigned char readonly; /* the memory may not be written (MappedFile "r") */
    int populate;          /* Mmap: pre-fault the pages */
    int shared;            /* Mmap: MAP_SHARED (survives fork) */
    int numa_node;         /* page-granular kinds: the node to bind, or -1 */
    PyObject *shm_name;    /* SharedMemory: name= (borrowed), or NULL */
    PyObject *options;     /* Python plug-ins: the extra keywords (borrowed) */
    PyObject *path;        /* MappedFile: path= (borrowed), or NULL */
    int file_mode;         /* MappedFile: MM_FILE_* */
    uint64_t file_offset;  /* MappedFile: offset= */
} mm_request;

/* MappedFile's mode=. */
enum {
    MM_FILE_READ_WRITE = 0,   /* "r+": an existing file, read-write */
    MM_FILE_READ_ONLY,        /* "r": an existing file, read-only */
    MM_FILE_CREATE,           /* "w+": created or truncated, read-write */
};

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
    /* Optional: write the block's changes to where it lives (a file);
     * with the GIL; 0, or -1 with OSError.  Buffer.flush() calls it. */
    int (*flush)(AllocatorObject *self, char *base, size_t size, void *cookie);
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
    unsigned char advise_hugepages;    /* MM_KIND_HUGEPAGES: takes hugepages=,
                                          allocator.c advises its blocks */
    unsigned char auto_hugepages;      /* automatic advice on (not
                                          MEMMANAGER_HUGEPAGES=0) */
    unsigned char fills_itself;        /* the kind writes the init byte */
    unsigned char guarded;             /* MEMMANAGER_DEBUG guard bytes */
    unsigned char debug;               /* MEMMANAGER_DEBUG was set */
    unsigned char is_plugin;           /* registered by register_allocator */
    const struct mm_device_hooks *device_hooks; /* device allocators, else NULL */
    int memory_kind;                   /* MM_MEMORY_* */
    int device_id;                     /* device memory: which device (0 otherwise) */
    /* Adaptors (adaptors/): the allocator their blocks come from (the
     * adaptor, which `keeper` is, holds it); NULL for the other kinds. */
    AllocatorObject *upstream;
    unsigned char passes_cookie;       /* blocks are the upstream's own, cookie
                                          and all (Limit, Log) */
};

/* What allocator.c asks of a device allocator (cuda/allocators.c). */
typedef struct mm_device_hooks {
    /* With the GIL, before each allocation: make the device usable, or
     * raise DeviceUnavailableError. */
    int (*prepare)(AllocatorObject *alloc);
    /* Set size bytes to byte in memory the host cannot touch; raises. */
    int (*fill)(AllocatorObject *alloc, void *ptr, int byte, size_t size);
} mm_device_hooks;

extern PyType_Spec mm_allocator_type_spec;
extern const mm_allocator_ops mm_vtable_ops;
extern const mm_allocator_ops mm_python_ops;

/* The kinds' registration, each in its own file; module/module.c walks
 * them in order.  Each registers its allocators under their names. */
int mm_builtin_kinds_register(mm_state *st);   /* builtin.c; sets the defaults */
int mm_aligned_kind_register(mm_state *st);    /* aligned.c */
int mm_mmap_kind_register(mm_state *st);       /* mmap.c */
int mm_shm_kind_register(mm_state *st);        /* shm.c */
int mm_mapped_file_kind_register(mm_state *st); /* mapped_file.c */

/* What a kind's allocators are, for mm_allocator_register_kind. */
enum {
    MM_KIND_USES_PYMEM = 1 << 0,   /* PyMem_*: traced by Python already; needs the GIL */
    MM_KIND_CONSUME_ONLY = 1 << 1, /* cannot allocate (Borrowed) */
    MM_KIND_HUGEPAGES = 1 << 2,    /* hugepages=; allocator.c advises */
    MM_KIND_GUARDED = 1 << 3,      /* MEMMANAGER_DEBUG: guard bytes */
};
int mm_allocator_register_kind(mm_state *st, const char *name,
                               const mm_allocator_ops *ops,
                               const MemManagerAllocator *vtable, unsigned flags);

/* shm.c, for Buffer.attach (buffer/attach.c): maps the existing object
 * called name (a str) into *out, readable (and writable unless readonly).
 * *num_items of item_size bytes are mapped; *num_items == 0 maps as many
 * as the object holds and sets it.  FileNotFoundError when there is no
 * such object, ValueError when it is too small. */
int mm_shm_map_existing(PyObject *name, int readonly, Py_ssize_t item_size,
                        Py_ssize_t *num_items, mm_block *out);
/* mapped_file.c: the table of files this process maps, which MappedFile's
 * mode 'w+' refuses to truncate.  SharedMemory counts its mappings there
 * too (a /dev/shm object is a file that path= can name): note after the
 * mmap, with the descriptor still open (0, or -1 with errno), forget
 * after the munmap (any thread, no Python). */
int mm_mapped_files_note(int fd, dev_t *device, ino_t *inode);
void mm_mapped_files_forget(dev_t device, ino_t inode);
/* The SharedMemory allocator (borrowed), or NULL with an exception. */
AllocatorObject *mm_shm_allocator(mm_state *st);
/* The name of a SharedMemory block (a new str), None for other kinds. */
PyObject *mm_shm_block_name(const AllocatorObject *alloc, void *cookie);

/* allocator.c: the Allocator object, the name registry, blocks */
AllocatorObject *mm_allocator_new(mm_state *st, const char *name,
                               const mm_allocator_ops *ops,
                               const MemManagerAllocator *vtable,
                               PyObject *keeper);
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
        req->hugepages = MM_HUGEPAGES_AUTO;   /* merged into one store */
        req->readonly = 0;
        return 0;
    }
    return mm_allocator_parse_any_options(alloc, options, num_items, item_size,
                                       init_byte, req);
}
int mm_allocator_alloc_block(AllocatorObject *alloc, const mm_request *req,
                          size_t size, int init_byte, mm_block *out);
/* The same without tracemalloc, for memory someone else traces (NumPy's
 * arrays, in NumPy's domain: interop/numpy_handler.c); freed with
 * mm_allocator_free_untraced. */
int mm_allocator_alloc_untraced(AllocatorObject *alloc, const mm_request *req,
                                size_t size, int init_byte, mm_block *out);
void mm_allocator_free_untraced(AllocatorObject *alloc, mm_block *block);
/* The same, never letting the GIL go (mm_allocator_free_untraced lets it
 * go for a large block), for a caller whose callers still point at the
 * block: NumPy's realloc, until NumPy stores the new address. */
void mm_allocator_free_holding_gil(AllocatorObject *alloc, mm_block *block);
/* builtin.c: a block of alloc that Python's tracemalloc traced in domain 0
 * (a PyAlloc block: PyMem) is no longer traced there; nothing for others. */
void mm_pyalloc_untrace(AllocatorObject *alloc, const mm_block *block);
int mm_allocator_consume_block(AllocatorObject *alloc, PyObject *source,
                            size_t size, PyObject *options, mm_block *out);
void mm_allocator_free_block(AllocatorObject *alloc, mm_block *block);
void mm_allocator_track(AllocatorObject *alloc, mm_block *block);
int mm_allocator_visit_block(AllocatorObject *alloc, void *cookie,
                          visitproc visit, void *arg);
void mm_option_get(PyObject *options, const char *key, PyObject **value);
int mm_option_refuse_others(AllocatorObject *alloc, PyObject *options,
                         const char *const *known);
int mm_option_hugepages(PyObject *options, mm_request *req);
/* Whether allocator.c, or a kind that advises itself, advises a block of
 * size bytes (zero: zero-filled) under req's hugepages=. */
static inline int mm_wants_hugepages(const AllocatorObject *alloc,
                                     const mm_request *req, size_t size, int zero)
{
    if (req->hugepages != MM_HUGEPAGES_AUTO) {
        return req->hugepages;
    }
    return !zero && size >= MM_HUGEPAGE_THRESHOLD && alloc->auto_hugepages;
}

/* numa.c: numa_node= (Linux), for Aligned, Mmap, SharedMemory and
 * MappedFile.  mm_numa_option parses it into req->numa_node (-1 when
 * absent) and refuses, before anything is allocated, a node this process
 * cannot use (ValueError naming the nodes it can).  mm_numa_bind binds a
 * fresh page-aligned mapping nothing has touched yet: 0, or -1 with
 * OSError (the caller unmaps). */
int mm_numa_option(PyObject *options, mm_request *req);
int mm_numa_bind(AllocatorObject *alloc, void *base, size_t length, int node);

/* allocator.c, for adaptors (adaptors/): a raw block of an upstream
 * allocator, without guard bytes or tracemalloc (the adaptor's own blocks
 * get those); the adaptor counts it (mm_adaptor_take).  The caller holds
 * the GIL.  take raises; give never does. */
int mm_allocator_take_block(AllocatorObject *alloc, const mm_request *req,
                            size_t size, int zero, mm_raw *out);
void mm_allocator_give_block(AllocatorObject *alloc, char *base, size_t size,
                             void *cookie);
/* The allocator whose kind made a block of alloc: alloc itself, or the
 * end of its chain of cookie-passing adaptors. */
AllocatorObject *mm_allocator_block_owner(AllocatorObject *alloc);

/* The allocator at the bottom of alloc's chain of adaptors (alloc itself
 * for every other kind): the one whose device hooks and keeper are real. */
AllocatorObject *mm_allocator_leaf(AllocatorObject *alloc);
/* Sets size bytes of alloc's device memory to byte (the leaf's fill hook);
 * 0, or -1 with an exception. */
int mm_allocator_device_fill(AllocatorObject *alloc, void *ptr, int byte, size_t size);

/* plugin.c: the UTF-8 of a name register_allocator accepts (a non-empty
 * str without NUL that is not a built-in's), or NULL with an exception. */
const char *mm_allocator_checked_name(mm_state *st, PyObject *name);

/* pages.c: page mappings and advice, for every kind. */
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

/* plugin.c: register_allocator (C capsules and Python objects) */
PyObject *mm_allocator_register_plugin(mm_state *st, PyObject *name, PyObject *impl);

/* guards.c: MEMMANAGER_DEBUG guard bytes and registry checks */
size_t mm_debug_guard_front(size_t alignment);
#define DEBUG_GUARD_BACK ((size_t)64)
void mm_debug_write_guards(char *base, size_t front, size_t size);
void mm_debug_check_guards(AllocatorObject *alloc, const mm_block *block);
void mm_debug_check_registry(const char *after);

#endif /* MEMMANAGER_ALLOCATORS_H */
