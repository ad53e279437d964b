/*
 * allocator.c -- the Allocator object: one allocator *kind* (an
 * mm_allocator_ops) behind a registered name, and the operations every
 * buffer goes through: mm_allocator_parse_options(), mm_allocator_alloc_block(),
 * mm_allocator_consume_block() and mm_allocator_free_block().
 *
 * The public MemManagerAllocator vtable (memmanager/allocator.h) has no
 * room for per-buffer options or state, so inside the extension a kind
 * sits in front of it:
 *
 *   kind        mm_parse_options          per-block cookie
 *   ----------  ---------------------  ------------------------------
 *   vtable      PyAlloc, CMalloc:      none     PyAlloc, CMalloc, capsules
 *               hugepages=; others
 *               none (TypeError)
 *   Aligned     alignment, hugepages,  mmapped or not
 *               numa_node
 *   Mmap        hugepages, populate,   none
 *               shared, numa_node
 *   SharedMem.  name, hugepages,       the name to unlink, the creator
 *               numa_node
 *   MappedFile  path, mode, offset,    the mapping (start, length)
 *               hugepages, numa_node
 *   Python      anything (passed on)   the plug-in's handle
 *
 * What lives here and not in the kinds:
 *   - the init byte: zero asks the kind for zeroed memory (lazy zero pages
 *     for large blocks, never a second pass), any other byte is a memset;
 *   - releasing the GIL around large frees by thread-safe allocators and
 *     around large memsets (the block is not shared with anybody yet);
 *   - transparent huge pages (hugepages=, allocators.h) for the blocks of
 *     the MM_KIND_HUGEPAGES kinds (Mmap and MappedFile advise their own
 *     mappings);
 *   - MEMMANAGER_DEBUG guard bytes around the blocks of guarded allocators
 *     (guards.c writes and checks them);
 *   - device allocators (cuda/allocators.c): their `prepare` hook runs
 *     before allocation (it loads the driver) and their `fill` hook sets
 *     the init byte of memory the host cannot touch;
 *   - tracemalloc reporting under MEMMANAGER_TRACEMALLOC_DOMAIN for every
 *     allocator that does not use PyMem_* (which Python traces itself).
 *
 * Each buffer holds a strong reference to its AllocatorObject, so it frees
 * through the allocator that made it even after the name is re-registered.
 *
 * Layer: allocators.  May call core/.
 */
#include "allocators/allocators.h"

#include <string.h>

/* Above this size the GIL is released around a fill and a free (a munmap
 * of touched pages); allocation itself is at most one quick mmap. */
#define RELEASE_GIL_THRESHOLD ((size_t)1 << 20)

/* Keeps the rare paths out of the hot functions' instruction stream. */
#if defined(__GNUC__)
#define MM_NOINLINE __attribute__((noinline))
#else
#define MM_NOINLINE
#endif


/* ------------------------------------------------------------------ */
/* The Allocator type                                                  */
/* ------------------------------------------------------------------ */

static int allocator_traverse(PyObject *op, visitproc visit, void *arg)
{
    AllocatorObject *self = (AllocatorObject *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->keeper);
    Py_VISIT(self->plugin_methods);
    return 0;
}

/* Buffers still holding this allocator after a clear leak their memory
 * rather than call a plug-in that is gone (python.c checks). */
static int allocator_clear(PyObject *op)
{
    AllocatorObject *self = (AllocatorObject *)op;
    Py_CLEAR(self->plugin_methods);
    return 0;
}

static void allocator_dealloc(PyObject *op)
{
    AllocatorObject *self = (AllocatorObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    Py_CLEAR(self->name);
    Py_CLEAR(self->keeper);
    Py_CLEAR(self->plugin_methods);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *allocator_repr(PyObject *op)
{
    AllocatorObject *self = (AllocatorObject *)op;
    return PyUnicode_FromFormat("<memmanager allocator %R (%s)>",
                                self->name, self->ops->kind);
}

static PyObject *allocator_get_kind(PyObject *op, void *Py_UNUSED(closure))
{
    return PyUnicode_FromString(((AllocatorObject *)op)->ops->kind);
}

static PyMemberDef allocator_members[] = {
    {"name", T_OBJECT_EX, offsetof(AllocatorObject, name), READONLY,
     "The name the allocator is registered under."},
    {NULL},
};

static PyGetSetDef allocator_getset[] = {
    {"kind", allocator_get_kind, NULL,
     "What the allocator is: 'vtable', 'Aligned', 'Mmap', 'SharedMemory', "
     "'MappedFile' or 'python'.", NULL},
    {NULL},
};

static PyType_Slot allocator_slots[] = {
    {Py_tp_doc, "An allocator registered with memmanager (internal)."},
    {Py_tp_dealloc, allocator_dealloc},
    {Py_tp_traverse, allocator_traverse},
    {Py_tp_clear, allocator_clear},
    {Py_tp_repr, allocator_repr},
    {Py_tp_members, allocator_members},
    {Py_tp_getset, allocator_getset},
    {0, NULL},
};

PyType_Spec mm_allocator_type_spec = {
    .name = "memmanager._core.Allocator",
    .basicsize = sizeof(AllocatorObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_HAVE_GC,
    .slots = allocator_slots,
};

/* A new allocator of the given kind; the flags are the caller's to set
 * (all off, except debug). */
AllocatorObject *mm_allocator_new(mm_state *st, const char *name,
                               const mm_allocator_ops *ops,
                               const MemManagerAllocator *vtable,
                               PyObject *keeper)
{
    int slot = mm_region_registry_stats_slot(name, strlen(name));
    if (slot < 0) {
        PyErr_NoMemory();   /* the stats table grows: only memory limits it */
        return NULL;
    }
    AllocatorObject *self = PyObject_GC_New(AllocatorObject, st->allocator_type);
    if (self == NULL) {
        return NULL;
    }
    self->name = NULL;
    self->ops = ops;
    self->vtable = vtable;
    self->keeper = Py_XNewRef(keeper);
    self->plugin_methods = NULL;
    self->stats_slot = slot;
    self->uses_pymem = 0;
    self->needs_gil = 0;
    self->consume_only = 0;
    self->advise_hugepages = 0;
    self->auto_hugepages = (unsigned char)st->auto_hugepages;
    self->fills_itself = 0;
    self->guarded = 0;
    self->debug = (unsigned char)st->debug;
    self->is_plugin = 0;
    self->device_hooks = NULL;
    self->memory_kind = MM_MEMORY_HOST;
    self->device_id = 0;
    self->upstream = NULL;
    self->passes_cookie = 0;
    PyObject_GC_Track((PyObject *)self);
    self->name = PyUnicode_FromString(name);
    if (self->name == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return self;
}

/* Registers one allocator of a kind under name (an interned str), with
 * the properties flags (MM_KIND_*) give it. */
int mm_allocator_register_kind(mm_state *st, const char *name,
                               const mm_allocator_ops *ops,
                               const MemManagerAllocator *vtable, unsigned flags)
{
    AllocatorObject *alloc = mm_allocator_new(st, name, ops, vtable, NULL);
    if (alloc == NULL) {
        return -1;
    }
    alloc->uses_pymem = (flags & MM_KIND_USES_PYMEM) != 0;
    alloc->needs_gil = alloc->uses_pymem;
    alloc->consume_only = (flags & MM_KIND_CONSUME_ONLY) != 0;
    alloc->advise_hugepages = (flags & MM_KIND_HUGEPAGES) != 0;
    alloc->guarded = st->debug && (flags & MM_KIND_GUARDED) != 0;
    PyObject *key = PyUnicode_InternFromString(name);
    int rc = key == NULL ? -1 : mm_allocator_registry_set(st, key, alloc);
    Py_XDECREF(key);
    Py_DECREF(alloc);
    return rc;
}

/* The name -> allocator dict (st->allocators) is private to this file:
 * module_traverse visits the allocators, not the dict, and the dict is
 * untracked after every insert, so gc.get_referents(module) and
 * gc.get_objects() cannot hand it out (sound: the module state holds the
 * only reference).  Were it reachable, storing anything in it would be a
 * type confusion, and replacing an entry behind mm_allocator_registry_set
 * would leave the lookup cache naming a freed allocator.  Its keys are
 * exact str, so no __hash__ or __eq__ of a caller's str subclass runs
 * inside it; values read back are still type-checked, and the cache holds
 * strong references, so neither depends on the dict staying private. */

/* Every change to the dict goes through here, so that mm_allocator_lookup's
 * memory of the last name never outlives it. */
static void forget_last_lookup(mm_state *st)
{
    Py_CLEAR(st->last_allocator_name);
    Py_CLEAR(st->last_allocator);
}

/* The allocator replaced is dropped only once the dict is consistent and
 * private again: its destructor may run Python code (a plug-in's). */
int mm_allocator_registry_set(mm_state *st, PyObject *name, AllocatorObject *alloc)
{
    if (st->allocators == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "memmanager is shutting down");
        return -1;
    }
    PyObject *key = PyUnicode_FromObject(name);   /* an exact str */
    if (key == NULL) {
        return -1;
    }
    forget_last_lookup(st);
    PyObject *dict = Py_NewRef(st->allocators);
    PyObject *previous = Py_XNewRef(PyDict_GetItemWithError(dict, key));
    int rc = (previous == NULL && PyErr_Occurred())
             ? -1 : PyDict_SetItem(dict, key, (PyObject *)alloc);
    PyObject_GC_UnTrack(dict);
    Py_DECREF(key);
    Py_XDECREF(previous);
    forget_last_lookup(st);
    Py_DECREF(dict);
    return rc;
}

void mm_allocator_registry_clear(mm_state *st)
{
    forget_last_lookup(st);
    Py_CLEAR(st->allocators);
}

/* The allocator registered under name (NULL: the default), borrowed: the
 * registry or the cache holds it, and nothing here runs Python code.
 * Callers pass the same str object again and again (a constant of their
 * code), so the last name found is remembered and matched by identity.
 * A str subclass is looked up by its text (an exact copy): its __hash__
 * and __eq__ never run. */
AllocatorObject *mm_allocator_lookup(mm_state *st, PyObject *name)
{
    if (st->allocators == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot allocate: memmanager is shutting down");
        return NULL;
    }
    if (name == NULL) {
        return (AllocatorObject *)st->default_allocator;
    }
    if (name == st->last_allocator_name) {
        return (AllocatorObject *)st->last_allocator;
    }
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "allocator must be a str, not %.100s",
                     Py_TYPE(name)->tp_name);
        return NULL;
    }
    PyObject *key = PyUnicode_FromObject(name);
    if (key == NULL) {
        return NULL;
    }
    PyObject *alloc = PyDict_GetItemWithError(st->allocators, key);
    Py_DECREF(key);
    if (alloc == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_Format(st->UnknownAllocatorError,
                         "Allocator %U does not exist.", name);
        }
        return NULL;
    }
    if (!PyObject_TypeCheck(alloc, st->allocator_type)) {
        PyErr_Format(PyExc_SystemError,
                     "the allocator registry holds a %.100s under %R",
                     Py_TYPE(alloc)->tp_name, name);
        return NULL;
    }
    if (PyUnicode_CheckExact(name)) {   /* dropping an exact str runs no code */
        /* Held by the dict: replacing the cached one drops no last reference. */
        Py_XSETREF(st->last_allocator, Py_NewRef(alloc));
        Py_XSETREF(st->last_allocator_name, Py_NewRef(name));
    }
    return (AllocatorObject *)alloc;
}

/* ------------------------------------------------------------------ */
/* Options                                                             */
/* ------------------------------------------------------------------ */

/* Refuses any option: for consume() and for kinds that take none. */
int mm_allocator_check_options(AllocatorObject *alloc, PyObject *options)
{
    if (options == NULL || PyDict_GET_SIZE(options) == 0) {
        return 0;
    }
    PyObject *key = NULL;
    Py_ssize_t pos = 0;
    PyDict_Next(options, &pos, &key, NULL);
    PyErr_Format(PyExc_TypeError,
                 "allocator %U takes no option %R", alloc->name, key);
    return -1;
}

int mm_allocator_refuse_options(AllocatorObject *alloc, PyObject *options,
                             mm_request *Py_UNUSED(req))
{
    return mm_allocator_check_options(alloc, options);
}

/* *value is the option (borrowed), or NULL when it is absent or None. */
void mm_option_get(PyObject *options, const char *key, PyObject **value)
{
    PyObject *found = options != NULL ? PyDict_GetItemString(options, key) : NULL;
    *value = (found != NULL && found != Py_None) ? found : NULL;
}

/* TypeError naming the first option that is not in `known`. */
int mm_option_refuse_others(AllocatorObject *alloc, PyObject *options,
                         const char *const *known)
{
    PyObject *key;
    Py_ssize_t pos = 0;
    if (options == NULL) {
        return 0;
    }
    while (PyDict_Next(options, &pos, &key, NULL)) {
        int found = 0;
        for (const char *const *k = known; *k != NULL && !found; k++) {
            found = PyUnicode_CompareWithASCIIString(key, *k) == 0;
        }
        if (!found) {
            PyErr_Format(PyExc_TypeError,
                         "allocator %U takes no option %R", alloc->name, key);
            return -1;
        }
    }
    return 0;
}

/* hugepages=: None (or absent) automatic, else its truth. */
int mm_option_hugepages(PyObject *options, mm_request *req)
{
    PyObject *value;
    mm_option_get(options, "hugepages", &value);
    if (value != NULL) {
        int truth = PyObject_IsTrue(value);
        if (truth < 0) {
            return -1;
        }
        req->hugepages = (signed char)truth;
    }
    return 0;
}

int mm_allocator_parse_any_options(AllocatorObject *alloc, PyObject *options,
                                Py_ssize_t num_items, Py_ssize_t item_size,
                                int init_byte, mm_request *req)
{
    req->num_items = num_items;
    req->item_size = item_size;
    req->init_byte = init_byte;
    req->alignment = MM_DEFAULT_ALIGNMENT;
    req->hugepages = MM_HUGEPAGES_AUTO;
    req->readonly = 0;
    req->populate = 0;
    req->shared = 0;
    req->numa_node = -1;
    req->shm_name = NULL;
    req->options = NULL;
    req->path = NULL;
    req->file_mode = MM_FILE_READ_WRITE;
    req->file_offset = 0;
    if (options != NULL && PyDict_GET_SIZE(options) == 0) {
        options = NULL;
    }
    return alloc->ops->parse_options(alloc, options, req);
}

/* ------------------------------------------------------------------ */
/* Blocks                                                              */
/* ------------------------------------------------------------------ */

static int is_traced(AllocatorObject *alloc)
{
    return !alloc->uses_pymem && !alloc->consume_only;
}

void mm_allocator_track(AllocatorObject *alloc, mm_block *block)
{
    if (is_traced(alloc)) {
        /* -2 means tracemalloc is not tracing: nothing to do. */
        (void)PyTraceMalloc_Track(MEMMANAGER_TRACEMALLOC_DOMAIN,
                                  (uintptr_t)block->address, block->size);
    }
}

AllocatorObject *mm_allocator_leaf(AllocatorObject *alloc)
{
    while (alloc->upstream != NULL) {
        alloc = alloc->upstream;
    }
    return alloc;
}

/* The device hooks are the leaf's: its keeper holds the driver. */
static int prepare_device(AllocatorObject *alloc)
{
    AllocatorObject *leaf = mm_allocator_leaf(alloc);
    return leaf->device_hooks->prepare(leaf);
}

int mm_allocator_device_fill(AllocatorObject *alloc, void *ptr, int byte, size_t size)
{
    AllocatorObject *leaf = mm_allocator_leaf(alloc);
    return leaf->device_hooks->fill(leaf, ptr, byte, size);
}

/* Sets every byte of a fresh block; 0 or -1 with an exception. */
static int fill_block(AllocatorObject *alloc, char *ptr, int init_byte, size_t size)
{
    if (alloc->memory_kind == MM_MEMORY_CUDA_DEVICE) {
        return mm_allocator_device_fill(alloc, ptr, init_byte, size);
    }
    if (size >= RELEASE_GIL_THRESHOLD) {
        Py_BEGIN_ALLOW_THREADS
        memset(ptr, init_byte, size);
        Py_END_ALLOW_THREADS
    }
    else {
        memset(ptr, init_byte, size);
    }
    return 0;
}

/* Guarded blocks below this size are zeroed by alloc_block_general. */
#define GUARDED_ZERO_HERE_BELOW ((size_t)128 << 10)

/* The front guard and the total size of a guarded block; -1 on overflow. */
static int guard_sizes(AllocatorObject *alloc, const mm_request *req,
                       size_t size, size_t *front, size_t *total)
{
    *front = mm_debug_guard_front(req->alignment);
    size_t back = DEBUG_GUARD_BACK;
    if (size > SIZE_MAX - *front - back) {
        PyErr_Format(PyExc_MemoryError,
                     "Allocator %U could not allocate %zu bytes", alloc->name, size);
        return -1;
    }
    *total = size + *front + back;
    return 0;
}

static int raise_no_memory(AllocatorObject *alloc, size_t size)
{
    PyErr_Format(PyExc_MemoryError, "Allocator %U could not allocate %zu bytes",
                 alloc->name, size);
    return -1;
}

/* ValueError for an allocator that can only adopt memory (Borrowed). */
static int refuse_consume_only(AllocatorObject *alloc)
{
    if (!alloc->consume_only) {
        return 0;
    }
    PyErr_Format(PyExc_ValueError,
                 "Allocator %U can only adopt memory: use Buffer.consume()",
                 alloc->name);
    return -1;
}

/* Any kind, guard bytes included. */
static MM_NOINLINE int alloc_block_general(AllocatorObject *alloc,
                                           const mm_request *req, size_t size,
                                           int init_byte, mm_block *out)
{
    size_t front = 0, total = size;
    mm_raw raw;
    int zero = (init_byte == 0);
    int zero_here = 0;

    if (refuse_consume_only(alloc) < 0 ||
        (alloc->device_hooks != NULL && prepare_device(alloc) < 0) ||
        (alloc->guarded && guard_sizes(alloc, req, size, &front, &total) < 0)) {
        return -1;
    }
    /* A guarded small block is zeroed here, its own bytes only: the kind
     * would zero the alignment's padding in front of it too (pages of it
     * for a large alignment).  Large ones keep the kind's lazy zero pages. */
    if (zero && alloc->guarded && size < GUARDED_ZERO_HERE_BELOW) {
        zero = 0;
        zero_here = 1;
    }
    if (alloc->ops->allocate(alloc, req, total, zero, &raw) < 0) {
        return -1;
    }
    char *ptr = raw.base + front;
    if (zero_here) {
        memset(ptr, 0, size);
        zero = 1;
    }
    if (!alloc->fills_itself) {
        /* Automatically, zeroed blocks are left to the kernel's lazy zero
         * pages, untouched. */
        if (alloc->advise_hugepages && mm_wants_hugepages(alloc, req, size, zero)) {
            mm_advise_hugepages(ptr, size);
        }
        if (init_byte > 0 && fill_block(alloc, ptr, init_byte, size) < 0) {
            alloc->ops->release(alloc, raw.base, total, raw.cookie);
            return -1;
        }
    }
    if (alloc->guarded) {
        mm_debug_write_guards(raw.base, front, size);
    }
    out->address = ptr;
    out->size = size;
    out->cookie = raw.cookie;
    out->guard = front;
    return 0;
}

/* The hot path is an unguarded vtable allocator (PyAlloc, CMalloc): its
 * functions are called directly, as small buffers cannot afford more. */
static inline int alloc_block_untraced(AllocatorObject *alloc, const mm_request *req,
                                       size_t size, int init_byte, mm_block *out)
{
    if (alloc->ops != &mm_vtable_ops || alloc->guarded || alloc->consume_only ||
        alloc->device_hooks != NULL) {
        return alloc_block_general(alloc, req, size, init_byte, out);
    }
    const MemManagerAllocator *vt = alloc->vtable;
    int zero = (init_byte == 0);
    char *ptr = zero ? vt->calloc(vt->ctx, size, 1) : vt->malloc(vt->ctx, size);
    if (ptr == NULL) {
        return raise_no_memory(alloc, size);
    }
    if (MM_UNLIKELY(req->hugepages > 0 || size >= MM_HUGEPAGE_THRESHOLD) &&
        alloc->advise_hugepages && mm_wants_hugepages(alloc, req, size, zero)) {
        mm_advise_hugepages(ptr, size);
    }
    if (init_byte > 0) {
        fill_block(alloc, ptr, init_byte, size);   /* host memory: cannot fail */
    }
    out->address = ptr;
    out->size = size;
    out->cookie = NULL;
    out->guard = 0;
    return 0;
}

int mm_allocator_alloc_block(AllocatorObject *alloc, const mm_request *req,
                          size_t size, int init_byte, mm_block *out)
{
    if (alloc_block_untraced(alloc, req, size, init_byte, out) < 0) {
        return -1;
    }
    mm_allocator_track(alloc, out);
    return 0;
}

int mm_allocator_alloc_untraced(AllocatorObject *alloc, const mm_request *req,
                                size_t size, int init_byte, mm_block *out)
{
    return alloc_block_untraced(alloc, req, size, init_byte, out);
}

int mm_allocator_consume_block(AllocatorObject *alloc, PyObject *source,
                            size_t size, PyObject *options, mm_block *out)
{
    mm_raw raw = {NULL, NULL};
    if (alloc->ops->consume == NULL) {
        PyErr_Format(PyExc_TypeError, "Allocator %U cannot consume", alloc->name);
        return -1;
    }
    if (alloc->ops->consume(alloc, source, size, options, &raw) < 0) {
        return -1;
    }
    out->address = raw.base;
    out->size = size;
    out->cookie = raw.cookie;
    out->guard = 0;
    mm_allocator_track(alloc, out);
    return 0;
}

static MM_NOINLINE void free_block_general(AllocatorObject *alloc, mm_block *block,
                                           int may_release_gil)
{
    size_t total = block->size;
    if (block->guard > 0) {
        mm_debug_check_guards(alloc, block);
        total += block->guard + DEBUG_GUARD_BACK;
    }
    char *base = block->address - block->guard;
    if (may_release_gil && total >= RELEASE_GIL_THRESHOLD && !alloc->needs_gil) {
        Py_BEGIN_ALLOW_THREADS
        alloc->ops->release(alloc, base, total, block->cookie);
        Py_END_ALLOW_THREADS
    }
    else {
        alloc->ops->release(alloc, base, total, block->cookie);
    }
}

static inline void free_block_untraced(AllocatorObject *alloc, mm_block *block)
{
    if (block->guard == 0 && alloc->ops == &mm_vtable_ops &&
        block->size < RELEASE_GIL_THRESHOLD) {   /* the hot path, direct */
        alloc->vtable->free(alloc->vtable->ctx, block->address, block->size);
        return;
    }
    free_block_general(alloc, block, 1);
}

void mm_allocator_free_block(AllocatorObject *alloc, mm_block *block)
{
    if (is_traced(alloc)) {
        (void)PyTraceMalloc_Untrack(MEMMANAGER_TRACEMALLOC_DOMAIN,
                                    (uintptr_t)block->address);
    }
    free_block_untraced(alloc, block);
}

void mm_allocator_free_untraced(AllocatorObject *alloc, mm_block *block)
{
    free_block_untraced(alloc, block);
}

void mm_allocator_free_holding_gil(AllocatorObject *alloc, mm_block *block)
{
    free_block_general(alloc, block, 0);
}

/* ------------------------------------------------------------------ */
/* Blocks for adaptors                                                 */
/* ------------------------------------------------------------------ */

int mm_allocator_take_block(AllocatorObject *alloc, const mm_request *req,
                            size_t size, int zero, mm_raw *out)
{
    if (refuse_consume_only(alloc) < 0 ||
        (alloc->device_hooks != NULL && prepare_device(alloc) < 0) ||
        alloc->ops->allocate(alloc, req, size, zero, out) < 0) {
        return -1;
    }
    if (alloc->advise_hugepages && mm_wants_hugepages(alloc, req, size, zero)) {
        mm_advise_hugepages(out->base, size);
    }
    return 0;
}

void mm_allocator_give_block(AllocatorObject *alloc, char *base, size_t size,
                             void *cookie)
{
    alloc->ops->release(alloc, base, size, cookie);
}

AllocatorObject *mm_allocator_block_owner(AllocatorObject *alloc)
{
    while (alloc != NULL && alloc->passes_cookie && alloc->upstream != NULL) {
        alloc = alloc->upstream;
    }
    return alloc;
}

int mm_allocator_visit_block(AllocatorObject *alloc, void *cookie,
                          visitproc visit, void *arg)
{
    alloc = mm_allocator_block_owner(alloc);   /* whose cookie it is */
    if (cookie == NULL || alloc == NULL || alloc->ops->visit_cookie == NULL) {
        return 0;
    }
    return alloc->ops->visit_cookie(cookie, visit, arg);
}

/* ------------------------------------------------------------------ */
/* The vtable kind: PyAlloc, CMalloc, Borrowed and C capsules          */
/* ------------------------------------------------------------------ */

static int vtable_allocate(AllocatorObject *self, const mm_request *Py_UNUSED(req),
                           size_t size, int zero, mm_raw *out)
{
    const MemManagerAllocator *vt = self->vtable;
    void *ptr = zero ? vt->calloc(vt->ctx, size, 1) : vt->malloc(vt->ctx, size);
    if (ptr == NULL) {
        PyErr_Format(PyExc_MemoryError, "Allocator %U could not allocate %zu bytes",
                     self->name, size);
        return -1;
    }
    out->base = ptr;
    out->cookie = NULL;
    return 0;
}

static void vtable_release(AllocatorObject *self, char *base, size_t size,
                           void *Py_UNUSED(cookie))
{
    const MemManagerAllocator *vt = self->vtable;
    vt->free(vt->ctx, base, size);
}

/* The built-in heap allocators (MM_KIND_HUGEPAGES) take hugepages=; the
 * others (Borrowed, C plug-ins, the CUDA ones) no option. */
static int vtable_parse_options(AllocatorObject *self, PyObject *options,
                                mm_request *req)
{
    static const char *const known[] = {"hugepages", NULL};
    if (options == NULL) {
        return 0;
    }
    if (!self->advise_hugepages) {
        return mm_allocator_check_options(self, options);
    }
    if (mm_option_refuse_others(self, options, known) < 0) {
        return -1;
    }
    return mm_option_hugepages(options, req);
}

const mm_allocator_ops mm_vtable_ops = {
    .kind = "vtable",
    .parse_options = vtable_parse_options,
    .allocate = vtable_allocate,
    .release = vtable_release,
};
