/*
 * numpy_handler.c -- NumPy's own arrays allocated through memmanager: a
 * NumPy data-memory handler (NEP 49) made from any registered allocator
 * that is C underneath, and NumPy's PyDataMem_SetHandler, reached at run
 * time through NumPy's table of C functions (no NumPy header is needed to
 * build; the declarations below are ours, of NumPy's documented ABI).
 *
 * In Python terms (memmanager/numpy.py is the public face):
 *
 *     route = Route(allocator, options)        # _numpy_handler(name, options)
 *     capsule = PyCapsule(route.handler, "mem_handler")
 *     numpy.PyDataMem_SetHandler(capsule)      # _numpy_set_handler(capsule)
 *     # NumPy: each array it allocates keeps the capsule and calls
 *     #   handler.malloc/calloc/realloc/free(route, ...)
 *
 * A *route* is one allocator with its options, parsed once; the handler
 * NumPy calls is its first member.  Every block a route hands out is
 * recorded in one process-wide table (address -> route, size, cookie,
 * guard bytes, statistics scope), because NumPy's realloc gives no old
 * size and its free no cookie (a Pool's record, a SharedMemory name), and
 * because a free of an address the table does not hold must never reach
 * an allocator: it is reported (RuntimeWarning) and left alone.
 *
 * Ownership rules
 * ---------------
 * - A route is reference-counted by hand: one for its capsule (dropped by
 *   the capsule's destructor) and one per live block.  It holds its
 *   allocator, its options and the module (for the module state), so an
 *   array freed after the allocator was unregistered, another handler was
 *   set or memmanager was torn down still goes back where it came from.
 * - The table owns nothing but its entries' statistics scopes (one strong
 *   reference each, as a Buffer holds its scope).
 * - The handler functions run with the GIL (NumPy calls them with it; a
 *   caller without it gets it for the call).  The GIL is the table's lock,
 *   as it is the registry's until something needs more (DESIGN section 15):
 *   nothing that may let the GIL go (a large block's allocation, fill or
 *   free) runs between a look at the table and the change it decides.
 *
 * Tracemalloc: the arrays are traced in NumPy's domain, by NumPy, as its
 * default handler's are; the allocators' own tracing (memmanager's
 * domain, or domain 0 for PyMem) is left out, so each array is traced
 * once.
 *
 * Layer: interop.  May call buffer/, adaptors/, allocators/ and core/.
 */
#include "interop/interop.h"
#include "adaptors/adaptors.h"

#include <string.h>

/* ------------------------------------------------------------------ */
/* NumPy's ABI, as documented (NEP 49 and numpy's C-API reference)     */
/* ------------------------------------------------------------------ */

/* Version 1 of the allocator NumPy calls; free gets the size NumPy
 * believes the block has. */
typedef struct {
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr, size_t size);
} np_allocator_v1;

/* The handler a capsule named "mem_handler" points to. */
typedef struct {
    char name[127];
    uint8_t version;
    np_allocator_v1 allocator;
} np_handler_v1;

#define NP_HANDLER_CAPSULE "mem_handler"
#define NP_HANDLER_VERSION 1

/* Slots of NumPy's function table (the `_ARRAY_API` capsule of
 * numpy._core._multiarray_umath, numpy.core.multiarray before 2.0). */
#define NP_API_FEATURE_VERSION 211   /* unsigned int (void) */
#define NP_API_SET_HANDLER 304       /* PyObject *(PyObject *handler) */
#define NP_API_GET_HANDLER 305       /* PyObject *(void) */
#define NP_FEATURE_VERSION_1_22 0x0fu   /* the first with handlers */

typedef unsigned int (*np_feature_version_fn)(void);
typedef PyObject *(*np_set_handler_fn)(PyObject *handler);
typedef PyObject *(*np_get_handler_fn)(void);

/* Bound once per process: there is one NumPy per process. */
static np_set_handler_fn numpy_set_handler = NULL;
static np_get_handler_fn numpy_get_handler = NULL;

/* ------------------------------------------------------------------ */
/* Routes                                                              */
/* ------------------------------------------------------------------ */

typedef struct {
    np_handler_v1 handler;      /* first: the capsule points here */
    Py_ssize_t refs;            /* the capsule + each live block */
    PyObject *module;           /* strong: the module state lives */
    AllocatorObject *alloc;     /* strong */
    PyObject *options;          /* strong: a private copy, or NULL */
    mm_request req;             /* the options, parsed (borrows from them) */
} np_route;

static void route_decref(np_route *route)
{
    if (--route->refs > 0) {
        return;
    }
    PyObject *module = route->module;
    AllocatorObject *alloc = route->alloc;
    PyObject *options = route->options;
    PyMem_RawFree(route);
    /* Last: these deallocs may run Python code. */
    Py_XDECREF(options);
    Py_DECREF(alloc);
    Py_DECREF(module);
}

static void route_capsule_destructor(PyObject *capsule)
{
    np_route *route = PyCapsule_GetPointer(capsule, NP_HANDLER_CAPSULE);
    if (route == NULL) {
        PyErr_WriteUnraisable(capsule);
        return;
    }
    route_decref(route);
}

/* The route behind a capsule of ours, or NULL (no exception) for any
 * other object. */
static np_route *route_of(PyObject *capsule)
{
    if (!PyCapsule_CheckExact(capsule) ||
        PyCapsule_GetDestructor(capsule) != route_capsule_destructor) {
        return NULL;
    }
    return PyCapsule_GetPointer(capsule, NP_HANDLER_CAPSULE);
}

/* ------------------------------------------------------------------ */
/* The table of live blocks                                            */
/* ------------------------------------------------------------------ */

typedef struct {
    uintptr_t address;          /* 0: an empty entry */
    np_route *route;
    void *cookie;
    size_t size;
    size_t guard;
    PyObject *scope;            /* statistics scope (strong), or NULL */
    uint64_t serial;            /* which block this is, for realloc */
} np_entry;

/* Open addressing, linear probing, at most half full; removal shifts
 * the entries after it back, so there are no tombstones. */
static np_entry *table = NULL;
static size_t table_mask = 0;   /* capacity - 1 (a power of two), or 0 */
static size_t table_used = 0;
static uint64_t table_serial = 0;   /* the last serial given */

#define TABLE_MIN_CAPACITY ((size_t)64)

static inline size_t slot_of(uintptr_t address)
{
    /* Blocks are at least 16-aligned: the low bits say nothing. */
    uint64_t h = (uint64_t)(address >> 4) * UINT64_C(0x9E3779B97F4A7C15);
    return (size_t)(h >> 32) & table_mask;
}

static void table_place(np_entry *entries, size_t mask, const np_entry *e)
{
    uint64_t h = (uint64_t)(e->address >> 4) * UINT64_C(0x9E3779B97F4A7C15);
    size_t i = (size_t)(h >> 32) & mask;
    while (entries[i].address != 0) {
        i = (i + 1) & mask;
    }
    entries[i] = *e;
}

/* Room for one more entry; -1 with MemoryError. */
static int table_reserve(void)
{
    size_t capacity = table_mask + 1;
    if (table != NULL && (table_used + 1) * 2 <= capacity) {
        return 0;
    }
    size_t grown = table == NULL ? TABLE_MIN_CAPACITY : capacity * 2;
    if (grown > SIZE_MAX / sizeof(np_entry)) {
        PyErr_NoMemory();
        return -1;
    }
    np_entry *entries = PyMem_RawCalloc(grown, sizeof(np_entry));
    if (entries == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (table != NULL) {
        for (size_t i = 0; i < capacity; i++) {
            if (table[i].address != 0) {
                table_place(entries, grown - 1, &table[i]);
            }
        }
    }
    PyMem_RawFree(table);
    table = entries;
    table_mask = grown - 1;
    return 0;
}

/* After table_reserve(), with nothing in between that can run Python
 * or release the GIL (either lets other blocks take the room). */
static void table_insert(np_entry *e)
{
    e->serial = ++table_serial;
    table_place(table, table_mask, e);
    table_used++;
}

static np_entry *table_find(uintptr_t address)
{
    if (table == NULL || address == 0) {
        return NULL;
    }
    for (size_t i = slot_of(address);; i = (i + 1) & table_mask) {
        if (table[i].address == address) {
            return &table[i];
        }
        if (table[i].address == 0) {
            return NULL;
        }
    }
}

/* Removes *e (a pointer table_find returned). */
static void table_remove(np_entry *e)
{
    size_t hole = (size_t)(e - table);
    size_t i = hole;
    for (;;) {
        i = (i + 1) & table_mask;
        if (table[i].address == 0) {
            break;
        }
        size_t home = slot_of(table[i].address);
        /* Move it back unless its home lies in (hole, i]. */
        int stays = hole <= i ? (hole < home && home <= i) : (hole < home || home <= i);
        if (!stays) {
            table[hole] = table[i];
            hole = i;
        }
    }
    memset(&table[hole], 0, sizeof(np_entry));
    table_used--;
}

/* ------------------------------------------------------------------ */
/* What NumPy calls                                                    */
/* ------------------------------------------------------------------ */

/* Reports, never raises: a RuntimeWarning (or the unraisable hook when
 * warnings are errors), the caller's exception kept. */
static void report_foreign(const char *doing, void *ptr)
{
    mm_saved_error saved;
    mm_err_save(&saved);
    if (PyErr_WarnFormat(PyExc_RuntimeWarning, 1,
                         "memmanager: NumPy asked to %s %p, which this handler "
                         "did not allocate; left alone", doing, ptr) < 0) {
        PyErr_WriteUnraisable(NULL);
    }
    mm_err_restore(&saved);
}

/* A new block of size bytes (init_byte 0: zeroed) recorded in the table
 * and counted; NULL with an exception, which NumPy replaces with its own
 * MemoryError (NumPy 2.4 does not chain it: a Limit's LimitExceededError
 * does not reach the user). */
static void *route_allocate(np_route *route, size_t size, int init_byte)
{
    AllocatorObject *alloc = route->alloc;
    PyObject *scope = NULL;
    mm_block block;
    if (size == 0) {
        size = 1;   /* a distinct address, as malloc(0) may not give */
    }
    if (size > (size_t)PY_SSIZE_T_MAX) {
        PyErr_Format(PyExc_MemoryError, "Allocator %U could not allocate %zu bytes",
                     alloc->name, size);
        return NULL;
    }
    if (MM_UNLIKELY(mm_statistics_any_active())) {
        mm_state *st = PyModule_GetState(route->module);
        if (st != NULL && st->statistics_var != NULL &&
            mm_statistics_prepare(st, alloc, &scope) < 0) {
            return NULL;
        }
    }
    /* A vtable kind (PyAlloc, CMalloc, C plug-ins) reads no size from the
     * request, so its hot path gets the route's own, uncopied. */
    mm_request sized;
    const mm_request *req = &route->req;
    if (alloc->ops != &mm_vtable_ops) {
        sized = route->req;
        sized.num_items = (Py_ssize_t)size;
        sized.item_size = 1;
        sized.init_byte = init_byte;
        req = &sized;
    }
    if (mm_allocator_alloc_untraced(alloc, req, size, init_byte, &block) < 0) {
        Py_XDECREF(scope);
        return NULL;
    }
    /* Room in the table only now: the allocation may run Python code (a
     * SharedMemory's first block starts its tracker) or release the GIL
     * (zeroing, mapping), and other blocks recorded meanwhile would take
     * room reserved before it: past a full table, inserting never ends. */
    if (table_reserve() < 0) {
        mm_allocator_free_untraced(alloc, &block);
        Py_XDECREF(scope);
        return NULL;
    }
    /* PyMem traced a PyAlloc block in domain 0; NumPy traces it in its own. */
    mm_pyalloc_untrace(alloc, &block);
    np_entry e = {(uintptr_t)block.address, route, block.cookie, size,
                  block.guard, scope, 0};
    table_insert(&e);
    route->refs++;
    mm_region_registry_count_array(alloc->stats_slot, size);
    if (scope != NULL) {
        mm_statistics_count_block(scope, alloc->stats_slot, size);
    }
    return block.address;
}

/* Frees the block of *e, which route owns. */
static void route_free(np_route *route, np_entry *e, int keep_gil)
{
    AllocatorObject *alloc = route->alloc;
    mm_block block = {(char *)e->address, e->size, e->cookie, e->guard};
    PyObject *scope = e->scope;
    table_remove(e);
    if (keep_gil) {
        /* realloc's old block: until NumPy stores the new address the
         * array still points at the old one, and a thread resizing it
         * meanwhile would find whichever block took that address in
         * between (another array's) and move it away from its array. */
        mm_allocator_free_holding_gil(alloc, &block);
    }
    else {
        mm_allocator_free_untraced(alloc, &block);
    }
    mm_region_registry_uncount_array(alloc->stats_slot, block.size);
    if (scope != NULL) {
        mm_statistics_count_block_free(scope, alloc->stats_slot, block.size);
    }
    route_decref(route);   /* last: may run Python code */
}

/* NumPy calls with the GIL; a caller without it gets it for the call. */
typedef struct {
    int taken;
    PyGILState_STATE state;
} gil_hold;

/* Whether this thread holds the GIL.  From 3.12 the current thread state
 * is a thread-local, set exactly while this thread holds the GIL (is
 * attached, in a free-threaded build): one load, where PyGILState_Check
 * also looks up this thread's PyGILState state (about 50 instructions,
 * twice per array).  Before 3.12 the current thread state is the GIL
 * holder's, whichever thread asks, so PyGILState_Check it is. */
static inline int holds_gil(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return mm_thread_state_unchecked() != NULL;
#else
    return PyGILState_Check();
#endif
}

static inline void gil_take(gil_hold *g)
{
    g->taken = !holds_gil();
    if (MM_UNLIKELY(g->taken)) {
        g->state = PyGILState_Ensure();
    }
}

static inline void gil_give(gil_hold *g)
{
    if (MM_UNLIKELY(g->taken)) {
        PyGILState_Release(g->state);
    }
}

static void *handler_malloc(void *ctx, size_t size)
{
    gil_hold gil;
    gil_take(&gil);
    void *ptr = route_allocate(ctx, size, MM_INIT_UNINITIALISED);
    gil_give(&gil);
    return ptr;
}

static void *handler_calloc(void *ctx, size_t nelem, size_t elsize)
{
    gil_hold gil;
    gil_take(&gil);
    void *ptr = NULL;
    if (elsize != 0 && nelem > SIZE_MAX / elsize) {
        PyErr_NoMemory();
    }
    else {
        ptr = route_allocate(ctx, nelem * elsize, 0);
    }
    gil_give(&gil);
    return ptr;
}

/* A new block, the old one's bytes copied, the old one freed; on failure
 * the old block is left as it was (as C's realloc). */
static void *handler_realloc(void *ctx, void *ptr, size_t new_size)
{
    np_route *route = ctx;
    gil_hold gil;
    gil_take(&gil);
    void *fresh = NULL;
    np_entry *old = table_find((uintptr_t)ptr);
    if (ptr == NULL) {
        fresh = route_allocate(route, new_size, MM_INIT_UNINITIALISED);
    }
    else if (old == NULL || old->route != route) {
        PyErr_Format(PyExc_ValueError,
                     "memmanager: NumPy asked to resize %p, which this handler "
                     "did not allocate", ptr);
    }
    else {
        size_t old_size = old->size;
        uint64_t old_serial = old->serial;
        route->refs++;   /* the old block's free must not end the route first */
        fresh = route_allocate(route, new_size, MM_INIT_UNINITIALISED);
        if (fresh != NULL) {
            /* Found again: the table may have grown.  The allocation may
             * have released the GIL (or run Python code), and another
             * thread resized or freed the array meanwhile: its old block
             * is then gone (its bytes with it, perhaps unmapped), or its
             * address is another block's.  Nothing to copy: fail. */
            np_entry *moved = table_find((uintptr_t)ptr);
            if (moved == NULL || moved->serial != old_serial) {
                route_free(route, table_find((uintptr_t)fresh), 0);
                fresh = NULL;
                PyErr_Format(PyExc_RuntimeError,
                             "memmanager: the array at %p was resized or freed "
                             "while its new block was being allocated", ptr);
            }
            else {
                memcpy(fresh, ptr, old_size < new_size ? old_size : new_size);
                route_free(route, moved, 1);
            }
        }
        route_decref(route);
    }
    gil_give(&gil);
    return fresh;
}

static void handler_free(void *ctx, void *ptr, size_t Py_UNUSED(size))
{
    np_route *route = ctx;
    if (ptr == NULL) {
        return;
    }
    gil_hold gil;
    gil_take(&gil);
    np_entry *e = table_find((uintptr_t)ptr);
    if (e == NULL || e->route != route) {
        report_foreign("free", ptr);
    }
    else {
        route_free(route, e, 0);
    }
    gil_give(&gil);
}

/* ------------------------------------------------------------------ */
/* Making a route: what NumPy can use                                  */
/* ------------------------------------------------------------------ */

static int refuse(AllocatorObject *alloc, const char *why)
{
    PyErr_Format(PyExc_ValueError, "Allocator %U cannot allocate NumPy's arrays: %s",
                 alloc->name, why);
    return -1;
}

/* ValueError unless every block alloc hands out under req is host memory
 * NumPy may write, made by C code, and not shared with another array. */
static int check_usable(AllocatorObject *alloc, const mm_request *req)
{
    AllocatorObject *leaf = mm_allocator_leaf(alloc);
    if (alloc->consume_only) {
        return refuse(alloc, "it can only adopt memory");
    }
    for (AllocatorObject *a = alloc; a != NULL; a = a->upstream) {
        if (a->ops == &mm_python_ops) {
            return refuse(alloc, a == alloc
                ? "it is written in Python, and NumPy allocates from C code "
                  "that must not run Python (inside its own allocations, and "
                  "in deallocs); register a C allocator (a capsule) instead"
                : "it is built on an allocator written in Python, and NumPy "
                  "allocates from C code that must not run Python");
        }
    }
    if (leaf->memory_kind == MM_MEMORY_CUDA_DEVICE) {
        return refuse(alloc, "its memory is on a GPU, where NumPy cannot read or write");
    }
    if (req->readonly) {
        return refuse(alloc, "its memory is read-only, and NumPy writes its arrays");
    }
    if (strcmp(leaf->ops->kind, "MappedFile") == 0 && req->file_mode != MM_FILE_CREATE) {
        return refuse(alloc, "with mode 'r+' every array would map the same bytes "
                             "of the file; use mode 'w+' (one live array per path)");
    }
    if (req->shm_name != NULL && req->shm_name != Py_None) {
        return refuse(alloc, "name= would give every array the same shared memory name");
    }
    return 0;
}

#define NP_HANDLER_PREFIX "memmanager:"

/* "memmanager:<name>", which allocator_of() reads back; -1 with
 * ValueError when it does not fit whole (NumPy's name has 127 bytes, and
 * a cut name would name another allocator, or end inside a character,
 * which NumPy's get_handler_name cannot decode). */
static int name_handler(np_route *route)
{
    Py_ssize_t length;
    const char *name = PyUnicode_AsUTF8AndSize(route->alloc->name, &length);
    if (name == NULL) {
        return -1;
    }
    size_t room = sizeof(route->handler.name) - 1 - strlen(NP_HANDLER_PREFIX);
    if ((size_t)length > room) {
        PyErr_Format(PyExc_ValueError,
                     "Allocator %U cannot allocate NumPy's arrays: NumPy's handler "
                     "name holds %zu bytes of the allocator's name, and this one has "
                     "%zd in UTF-8; register it under a shorter name",
                     route->alloc->name, room, length);
        return -1;
    }
    snprintf(route->handler.name, sizeof(route->handler.name), NP_HANDLER_PREFIX "%s", name);
    return 0;
}

/* A path-like option made a str or bytes now: MappedFile would call its
 * __fspath__ at every allocation, inside NumPy's, where no Python code
 * may run (it could allocate, resize or free arrays there). */
static int fix_path(PyObject *options)
{
    PyObject *path = PyDict_GetItemString(options, "path");   /* borrowed */
    if (path == NULL || PyUnicode_CheckExact(path) || PyBytes_CheckExact(path)) {
        return 0;
    }
    PyObject *fixed = PyOS_FSPath(path);
    if (fixed == NULL) {
        return -1;
    }
    PyObject *exact = PyUnicode_Check(fixed) ? PyUnicode_FromObject(fixed)
                                             : PyBytes_FromObject(fixed);
    Py_DECREF(fixed);
    if (exact == NULL) {
        return -1;
    }
    int rc = PyDict_SetItemString(options, "path", exact);
    Py_DECREF(exact);
    return rc;
}

/* A capsule named "mem_handler" for alloc under options (a dict or NULL). */
static PyObject *route_capsule_new(PyObject *module, AllocatorObject *alloc,
                                   PyObject *options)
{
    np_route *route = PyMem_RawCalloc(1, sizeof(np_route));
    if (route == NULL) {
        return PyErr_NoMemory();
    }
    route->refs = 1;
    route->module = Py_NewRef(module);
    route->alloc = (AllocatorObject *)Py_NewRef((PyObject *)alloc);
    if (options != NULL && PyDict_GET_SIZE(options) > 0) {
        /* Private: a caller changing its dict later changes nothing here. */
        route->options = PyDict_Copy(options);
        if (route->options == NULL || fix_path(route->options) < 0) {
            route_decref(route);
            return NULL;
        }
        PyObject_GC_UnTrack(route->options);
    }
    if (mm_allocator_parse_any_options(alloc, route->options, 1, 1,
                                       MM_INIT_UNINITIALISED, &route->req) < 0 ||
        check_usable(alloc, &route->req) < 0 || name_handler(route) < 0) {
        route_decref(route);
        return NULL;
    }
    route->handler.version = NP_HANDLER_VERSION;
    route->handler.allocator.ctx = route;
    route->handler.allocator.malloc = handler_malloc;
    route->handler.allocator.calloc = handler_calloc;
    route->handler.allocator.realloc = handler_realloc;
    route->handler.allocator.free = handler_free;
    PyObject *capsule = PyCapsule_New(&route->handler, NP_HANDLER_CAPSULE,
                                      route_capsule_destructor);
    if (capsule == NULL) {
        route_decref(route);
    }
    return capsule;
}

/* ------------------------------------------------------------------ */
/* The module's functions (module/module.c lists them)                 */
/* ------------------------------------------------------------------ */

/* NumPy's table of C functions, as every extension built on NumPy finds
 * it (import_array): the `_ARRAY_API` capsule of its multiarray module. */
static void **numpy_api_table(void)
{
    PyObject *multiarray = PyImport_ImportModule("numpy._core._multiarray_umath");
    if (multiarray == NULL && PyErr_ExceptionMatches(PyExc_ImportError)) {
        PyErr_Clear();   /* NumPy 1.x */
        multiarray = PyImport_ImportModule("numpy.core._multiarray_umath");
    }
    if (multiarray == NULL) {
        return NULL;
    }
    PyObject *api = PyObject_GetAttrString(multiarray, "_ARRAY_API");
    Py_DECREF(multiarray);
    if (api == NULL) {
        return NULL;
    }
    void **functions = NULL;
    if (!PyCapsule_CheckExact(api) || PyCapsule_GetName(api) != NULL) {
        PyErr_SetString(PyExc_ImportError, "NumPy's _ARRAY_API is not its C API capsule");
    }
    else {
        functions = PyCapsule_GetPointer(api, NULL);
    }
    Py_DECREF(api);
    return functions;
}

/* _numpy_bind(): imports NumPy and finds its handler functions (once). */
PyObject *mm_numpy_bind(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(unused))
{
    if (numpy_set_handler != NULL) {
        Py_RETURN_NONE;
    }
    void **functions = numpy_api_table();
    if (functions == NULL) {
        return NULL;
    }
    np_feature_version_fn feature = (np_feature_version_fn)functions[NP_API_FEATURE_VERSION];
    unsigned int version = feature();
    if (version < NP_FEATURE_VERSION_1_22) {
        PyErr_Format(PyExc_ImportError,
                     "memmanager.numpy needs NumPy 1.22 or later (its C API "
                     "feature version 0x%x has no memory handlers)", version);
        return NULL;
    }
    numpy_get_handler = (np_get_handler_fn)functions[NP_API_GET_HANDLER];
    numpy_set_handler = (np_set_handler_fn)functions[NP_API_SET_HANDLER];
    Py_RETURN_NONE;
}

static int check_bound(void)
{
    if (numpy_set_handler == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "memmanager.numpy has not been bound to NumPy yet");
        return -1;
    }
    return 0;
}

/* _numpy_handler(name, options): a new handler capsule. */
PyObject *mm_numpy_handler(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    mm_state *st = PyModule_GetState(module);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_numpy_handler(name, options)");
        return NULL;
    }
    PyObject *options = args[1] == Py_None ? NULL : args[1];
    if (options != NULL && !PyDict_CheckExact(options)) {
        PyErr_SetString(PyExc_TypeError, "_numpy_handler(): options must be a dict");
        return NULL;
    }
    if (args[0] == Py_None) {
        PyErr_SetString(PyExc_TypeError, "allocator must be a str, not None");
        return NULL;
    }
    AllocatorObject *alloc = mm_allocator_lookup(st, args[0]);
    if (alloc == NULL) {
        return NULL;
    }
    return route_capsule_new(module, alloc, options);
}

/* _numpy_set_handler(capsule or None): NumPy's handler for this context;
 * the one it had. */
PyObject *mm_numpy_set_handler(PyObject *Py_UNUSED(module), PyObject *handler)
{
    if (check_bound() < 0) {
        return NULL;
    }
    if (handler != Py_None && !PyCapsule_IsValid(handler, NP_HANDLER_CAPSULE)) {
        PyErr_SetString(PyExc_TypeError,
                        "_numpy_set_handler() takes a 'mem_handler' capsule or None");
        return NULL;
    }
    return numpy_set_handler(handler == Py_None ? NULL : handler);
}

/* _numpy_get_handler(): NumPy's handler for this context. */
PyObject *mm_numpy_get_handler(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(unused))
{
    if (check_bound() < 0) {
        return NULL;
    }
    return numpy_get_handler();
}

/* _numpy_handler_allocator(capsule): the Allocator a capsule of ours
 * allocates from, or None for any other object. */
PyObject *mm_numpy_handler_allocator(PyObject *Py_UNUSED(module), PyObject *capsule)
{
    np_route *route = route_of(capsule);
    if (route == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return Py_NewRef((PyObject *)route->alloc);
}

/* _numpy_live_blocks(): how many blocks the handlers hold now. */
PyObject *mm_numpy_live_blocks(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(unused))
{
    return PyLong_FromSize_t(table_used);
}
