/*
 * module.c -- the memmanager._core module: multi-phase initialisation
 * (PEP 489), its state, its exceptions and its module-level functions.
 *
 *   stats()                  per-allocator and total counters
 *   _live_buffers()          snapshot rows for memmanager.live_buffers()
 *   get_delayed_gc_objects() identifiers of the pinned buffers
 *   collect_delayed(ids)     unpin (and so free) pinned buffers
 *   allocators()             registered allocator names
 *   statistics()             a new allocation-statistics scope (buffer/statistics.c)
 *   _statistics_active_scopes()  how many scopes are active, for tests
 *   _register_allocator(n, impl)  a plug-in (capsule, Python object, adaptor)
 *   _adaptors()              the registered adaptors, for report()
 *   _release_pinned_at_exit()  called from an atexit hook
 *   _shm_unlink_at_exit()    called from an atexit hook (shm_tracker.c)
 *   _registry_check()        the registry's invariants, for tests
 *   _registry_locking()      whether the registry takes its lock, for tests
 *   _registry_spin(n)        the registry's lock taken n times without the
 *                            GIL, for the fork tests
 *   _set_address_resolver(f) Python helper turning foreign pointers into ints
 *   _set_python_methods(t)   the Buffer methods written in Python
 *   _replay(path, allocator) a Log's file played (adaptors/replay.c)
 *   _numpy_bind(), _numpy_handler(name, options), _numpy_set_handler(h),
 *   _numpy_get_handler(), _numpy_handler_allocator(h), _numpy_live_blocks(),
 *   _numpy_stats()
 *                            NumPy's arrays through memmanager, for
 *                            memmanager.numpy (interop/numpy_handler.c)
 *   _cuda_probe(), _cuda_reset()  the CUDA loader (cuda/), for
 *                            memmanager.cuda and the tests
 *
 * The only process-wide state (the region registry) lives in
 * core/registry.c; everything else is in mm_state.
 *
 * Layer: module (the top).  May call every layer.
 */
#include "module/module.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static mm_state *module_state(PyObject *module)
{
    return (mm_state *)PyModule_GetState(module);
}

/* ------------------------------------------------------------------ */
/* Module functions                                                    */
/* ------------------------------------------------------------------ */

static PyObject *stats_dict(const region_stats *s)
{
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K}",
                         "live_buffers", (unsigned long long)s->live_buffers,
                         "live_bytes", (unsigned long long)s->live_bytes,
                         "peak_bytes", (unsigned long long)s->peak_bytes,
                         "allocations", (unsigned long long)s->allocations,
                         "allocated_bytes", (unsigned long long)s->allocated_bytes);
}

static PyObject *array_stats_dict(const region_stats *s)
{
    return Py_BuildValue("{s:K,s:K,s:K,s:K}",
                         "live_arrays", (unsigned long long)s->live_arrays,
                         "live_array_bytes", (unsigned long long)s->live_array_bytes,
                         "array_allocations", (unsigned long long)s->array_allocations,
                         "array_allocated_bytes",
                         (unsigned long long)s->array_allocated_bytes);
}

typedef PyObject *(*stats_entry_fn)(const region_stats *s);

/* result[name] = entry_of(s); 0 or -1. */
static int set_stats_item(PyObject *result, const char *name, const region_stats *s,
                          stats_entry_fn entry_of)
{
    PyObject *entry = entry_of(s);
    if (entry == NULL) {
        return -1;
    }
    int rc = PyDict_SetItemString(result, name, entry);
    Py_DECREF(entry);
    return rc;
}

/* {"total": entry_of(the total), name: entry_of(its counters), ...} for
 * every allocator name used; with arrays_only, only those that have held
 * NumPy arrays. */
static PyObject *counters_by_name(stats_entry_fn entry_of, int arrays_only)
{
    region_stats total;
    ptrdiff_t n;
    region_named_stats *per_name = mm_region_registry_stats(&n, &total);
    if (n < 0) {
        return PyErr_NoMemory();
    }
    PyObject *result = PyDict_New();
    int rc = result == NULL ? -1 : set_stats_item(result, "total", &total, entry_of);
    for (ptrdiff_t i = 0; rc == 0 && i < n; i++) {
        if (!arrays_only || per_name[i].stats.array_allocations > 0) {
            rc = set_stats_item(result, per_name[i].name, &per_name[i].stats, entry_of);
        }
    }
    PyMem_RawFree(per_name);
    if (rc < 0) {
        Py_XDECREF(result);
        return NULL;
    }
    return result;
}

/* The entry of an adaptor, made (with zero buffers) for one that holds
 * blocks but has made no buffer (one under another adaptor); borrowed. */
static PyObject *adaptor_entry(PyObject *result, PyObject *key, size_t blocks)
{
    static const region_stats none;
    PyObject *entry = PyDict_GetItemWithError(result, key);
    if (entry != NULL || PyErr_Occurred() || blocks == 0) {
        return entry;
    }
    if ((entry = stats_dict(&none)) == NULL || PyDict_SetItem(result, key, entry) < 0) {
        Py_XDECREF(entry);
        return NULL;
    }
    Py_DECREF(entry);
    return entry;
}

/* The registry as it is now: an untracked copy, which holds its names
 * and allocators.  Walking it, the allocations made for the result may
 * start a collection, whose finalizers may register other allocators
 * under those names and drop the registry's last reference to one. */
static PyObject *registry_snapshot(mm_state *st)
{
    if (st->allocators == NULL) {
        return PyDict_New();
    }
    PyObject *copy = PyDict_Copy(st->allocators);
    if (copy != NULL) {
        PyObject_GC_UnTrack(copy);
    }
    return copy;
}

/* An adaptor's entry also says what it holds from its upstream (a Pool's
 * chunks, a Limit's blocks): two keys more, which the total leaves out,
 * as it counts each buffer once. */
static int add_upstream_use(mm_state *st, PyObject *result)
{
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    PyObject *registry = registry_snapshot(st);
    if (registry == NULL) {
        return -1;
    }
    while (PyDict_Next(registry, &pos, &key, &value)) {
        AllocatorObject *alloc = (AllocatorObject *)value;
        if (alloc->upstream == NULL) {
            continue;
        }
        AdaptorObject *ad = mm_adaptor_of(alloc);
        size_t held = __atomic_load_n(&ad->upstream_blocks, __ATOMIC_RELAXED);
        PyObject *entry = adaptor_entry(result, key, held);
        if (entry == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(registry);
                return -1;
            }
            continue;
        }
        PyObject *blocks = PyLong_FromSize_t(held);
        PyObject *bytes = PyLong_FromSize_t(
            __atomic_load_n(&ad->upstream_bytes, __ATOMIC_RELAXED));
        int rc = (blocks == NULL || bytes == NULL ||
                  PyDict_SetItemString(entry, "upstream_blocks", blocks) < 0 ||
                  PyDict_SetItemString(entry, "upstream_bytes", bytes) < 0) ? -1 : 0;
        Py_XDECREF(blocks);
        Py_XDECREF(bytes);
        if (rc < 0) {
            Py_DECREF(registry);
            return -1;
        }
    }
    Py_DECREF(registry);
    return 0;
}

/* _numpy_stats(): the array counters of each allocator that has held
 * NumPy arrays, and their "total" (memmanager.numpy.stats()). */
static PyObject *mm_numpy_stats(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(a))
{
    return counters_by_name(array_stats_dict, 1);
}

static PyObject *mm_stats(PyObject *module, PyObject *Py_UNUSED(a))
{
    PyObject *result = counters_by_name(stats_dict, 0);
    if (result != NULL && add_upstream_use(module_state(module), result) < 0) {
        Py_CLEAR(result);
    }
    return result;
}

static PyObject *live_buffer_row(BufferObject *b)
{
    return Py_BuildValue("(NONnnO)", mm_buffer_identifier(b),
                         b->allocator->name,
                         PyLong_FromVoidPtr(b->data), b->nbytes, b->exports,
                         b->pinned ? Py_True : Py_False);
}

/* The buffer whose registry node this is (nodes live inside Buffers). */
static BufferObject *node_buffer(region_node *node)
{
    return (BufferObject *)((char *)node - offsetof(BufferObject, node));
}

static PyObject *mm_live_buffers(PyObject *module, PyObject *Py_UNUSED(a))
{
    /* The snapshot holds raw pointers to the registry's nodes, which live
     * inside their Buffers, so none may die before its row is built.  This
     * thread keeps the GIL throughout and runs no Python code, but the
     * allocations below could start a collection, which frees garbage
     * cycles holding buffers and runs finalizers (that may release any
     * buffer, or switch threads): the collector is paused for the
     * duration.  The identifier is no pointer: the buffer is found from its
     * node.  The registry is process-wide; the rows are this
     * interpreter's buffers only (another's objects are not ours to use). */
    mm_state *st = module_state(module);
    int collector_was_enabled = PyGC_Disable();
    ptrdiff_t count;
    region_node **nodes = mm_region_registry_nodes(&count);
    PyObject *rows = count < 0 ? PyErr_NoMemory() : PyList_New(0);
    for (ptrdiff_t i = 0; rows != NULL && i < count; i++) {
        BufferObject *b = node_buffer(nodes[i]);
        if (mm_state_from_type(Py_TYPE(b)) != st) {
            PyErr_Clear();
            continue;
        }
        PyObject *row = live_buffer_row(b);
        if (row == NULL || PyList_Append(rows, row) < 0) {
            Py_XDECREF(row);
            Py_CLEAR(rows);
            break;
        }
        Py_DECREF(row);
    }
    PyMem_RawFree(nodes);
    if (collector_was_enabled) {
        PyGC_Enable();
    }
    return rows;
}

static PyObject *mm_get_delayed_gc_objects(PyObject *module, PyObject *Py_UNUSED(a))
{
    return mm_delayed_gc_identifiers(module_state(module));
}

static PyObject *mm_collect_delayed(PyObject *module, PyObject *const *args,
                                    Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"identifiers", NULL};
    PyObject *identifiers;
    if (mm_unpack_arguments("collect_delayed", args, nargs, kwnames, names, 1,
                         &identifiers) < 0) {
        return NULL;
    }
    return mm_delayed_gc_collect(module_state(module), identifiers);
}

static PyObject *mm_allocators(PyObject *module, PyObject *Py_UNUSED(a))
{
    return PyDict_Keys(module_state(module)->allocators);
}

/* (name, kind, upstream name, adaptor) for each registered adaptor, in
 * registration order: for report(). */
static PyObject *mm_adaptors(PyObject *module, PyObject *Py_UNUSED(a))
{
    mm_state *st = module_state(module);
    PyObject *result = PyList_New(0);
    PyObject *registry = result != NULL ? registry_snapshot(st) : NULL;
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    if (registry == NULL) {
        Py_XDECREF(result);
        return NULL;
    }
    while (PyDict_Next(registry, &pos, &key, &value)) {
        AllocatorObject *alloc = (AllocatorObject *)value;
        if (alloc->upstream == NULL) {
            continue;
        }
        PyObject *row = Py_BuildValue("(OsOO)", key, alloc->ops->kind,
                                      alloc->upstream->name, alloc->keeper);
        if (row == NULL || PyList_Append(result, row) < 0) {
            Py_XDECREF(row);
            Py_DECREF(registry);
            Py_DECREF(result);
            return NULL;
        }
        Py_DECREF(row);
    }
    Py_DECREF(registry);
    return result;
}

static PyObject *mm_register_allocator(PyObject *module, PyObject *const *args,
                                       Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError,
                     "_register_allocator() takes name and impl (%zd given)", nargs);
        return NULL;
    }
    mm_state *st = module_state(module);
    if (mm_adaptor_check(st, args[1])) {
        return mm_adaptor_register(st, args[0], args[1]);
    }
    return mm_allocator_register_plugin(st, args[0], args[1]);
}

static PyObject *mm_release_pinned_at_exit(PyObject *module, PyObject *Py_UNUSED(a))
{
    return mm_buffer_release_all_pinned(module_state(module));
}

static PyObject *mm_registry_locking(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(a))
{
    return PyBool_FromLong(mm_region_registry_locking());
}

static PyObject *mm_registry_check(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(a))
{
    const char *why = NULL;
    ptrdiff_t count = mm_region_registry_check(&why);
    if (count < 0) {
        PyErr_Format(PyExc_AssertionError, "region registry corrupt: %s", why);
        return NULL;
    }
    return PyLong_FromSsize_t((Py_ssize_t)count);
}

/* Takes and gives back the registry's lock `iterations` times with the GIL
 * released, as an allocator path that drops the GIL does: lets the tests
 * fork while another thread is inside the registry. */
static PyObject *mm_registry_spin(PyObject *Py_UNUSED(module), PyObject *arg)
{
    Py_ssize_t iterations = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (iterations == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t found = 0;
    mm_region_registry_use_without_gil();
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < iterations; i++) {
        region_info ignored;
        found += mm_region_registry_find_overlap(0, 1, &ignored);
    }
    Py_END_ALLOW_THREADS
    return PyLong_FromSsize_t(found);
}

static PyObject *mm_set_address_resolver(PyObject *module, PyObject *resolver)
{
    if (!PyCallable_Check(resolver)) {
        PyErr_SetString(PyExc_TypeError, "the address resolver must be callable");
        return NULL;
    }
    Py_XSETREF(module_state(module)->address_resolver, Py_NewRef(resolver));
    Py_RETURN_NONE;
}

static PyObject *module_set_python_methods(PyObject *module, PyObject *table)
{
    return mm_set_python_methods(module_state(module), table);
}

static PyMethodDef module_methods[] = {
    {"stats", mm_stats, METH_NOARGS,
     "stats()\n--\n\nCounters per allocator used, and their 'total'."},
    {"_live_buffers", mm_live_buffers, METH_NOARGS,
     "_live_buffers()\n--\n\nRows (identifier, allocator, address, nbytes, "
     "exports, pinned) of every live buffer, in address order."},
    {"get_delayed_gc_objects", mm_get_delayed_gc_objects, METH_NOARGS,
     "get_delayed_gc_objects()\n--\n\nIdentifiers of the pinned buffers."},
    {"collect_delayed", (PyCFunction)(void (*)(void))mm_collect_delayed,
     METH_FASTCALL | METH_KEYWORDS,
     "collect_delayed(identifiers=None)\n--\n\n"
     "Unpin the given pinned buffers (all when None); each is freed as soon\n"
     "as no other reference remains.  Returns the identifiers unpinned."},
    {"allocators", mm_allocators, METH_NOARGS,
     "allocators()\n--\n\nNames of the registered allocators."},
    {"_adaptors", mm_adaptors, METH_NOARGS,
     "_adaptors()\n--\n\n"
     "(name, kind, upstream, adaptor) for each registered adaptor."},
    {"statistics", mm_statistics_new, METH_NOARGS,
     "statistics()\n--\n\nA new Statistics scope: `with statistics() as s:` counts the\n"
     "buffers made in the block, in this thread or context, per allocator."},
    {"_statistics_active_scopes", mm_statistics_active_count, METH_NOARGS,
     "_statistics_active_scopes()\n--\n\n"
     "How many statistics scopes are active in the process (for tests)."},
    {"_register_allocator", (PyCFunction)(void (*)(void))mm_register_allocator,
     METH_FASTCALL,
     "_register_allocator(name, impl, /)\n--\n\n"
     "Register a plug-in allocator; returns its Allocator object."},
    {"_replay", (PyCFunction)(void (*)(void))mm_replay, METH_FASTCALL | METH_KEYWORDS,
     "_replay(path, allocator)\n--\n\nmemmanager.replay() without its ReplayResult."},
    {"_numpy_bind", mm_numpy_bind, METH_NOARGS,
     "_numpy_bind()\n--\n\nImport NumPy and find its handler functions in its C API table (once)."},
    {"_numpy_handler", (PyCFunction)(void (*)(void))mm_numpy_handler, METH_FASTCALL,
     "_numpy_handler(name, options, /)\n--\n\n"
     "A new NumPy memory handler ('mem_handler' capsule) allocating from name."},
    {"_numpy_set_handler", mm_numpy_set_handler, METH_O,
     "_numpy_set_handler(handler, /)\n--\n\n"
     "PyDataMem_SetHandler(handler) (None: NumPy's default); returns the previous one."},
    {"_numpy_get_handler", mm_numpy_get_handler, METH_NOARGS,
     "_numpy_get_handler()\n--\n\nPyDataMem_GetHandler(): this context's NumPy handler."},
    {"_numpy_handler_allocator", mm_numpy_handler_allocator, METH_O,
     "_numpy_handler_allocator(handler, /)\n--\n\n"
     "The Allocator a memmanager handler allocates from; None for any other object."},
    {"_numpy_stats", mm_numpy_stats, METH_NOARGS,
     "_numpy_stats()\n--\n\nThe NumPy-array counters of each allocator that has held arrays."},
    {"_numpy_live_blocks", mm_numpy_live_blocks, METH_NOARGS,
     "_numpy_live_blocks()\n--\n\nHow many NumPy blocks memmanager's handlers hold now."},
    {"_release_pinned_at_exit", mm_release_pinned_at_exit, METH_NOARGS,
     "_release_pinned_at_exit()\n--\n\nRelease every pinned buffer (atexit)."},
    {"_shm_unlink_at_exit", mm_shm_unlink_at_exit, METH_NOARGS,
     "_shm_unlink_at_exit()\n--\n\nUnlink the SharedMemory names this interpreter "
     "created and still holds (atexit); returns how many."},
    {"_registry_check", mm_registry_check, METH_NOARGS,
     "_registry_check()\n--\n\nVerify the registry; return the number of live regions."},
    {"_registry_locking", mm_registry_locking, METH_NOARGS,
     "_registry_locking()\n--\n\n"
     "Whether the registry takes its lock (something used it without the GIL)."},
    {"_cuda_probe", mm_cuda_probe, METH_NOARGS,
     "_cuda_probe()\n--\n\n(device_count, reason, library, driver_version), loading\n"
     "the CUDA driver if needed; reason is None when a GPU is usable."},
    {"_cuda_reset", mm_cuda_reset, METH_NOARGS,
     "_cuda_reset()\n--\n\nForget the loaded CUDA driver (re-read "
     "MEMMANAGER_CUDA_LIBRARY at\nnext use); existing buffers keep theirs. For tests."},
    {"_registry_spin", mm_registry_spin, METH_O,
     "_registry_spin(iterations, /)\n--\n\n"
     "For tests: take and give back the registry's lock that many times\n"
     "with the GIL released.  Returns how many queries found a region at 0."},
    {"_set_python_methods", module_set_python_methods, METH_O,
     "_set_python_methods(table, /)\n--\n\n"
     "Install the Buffer methods written in Python (called at import)."},
    {"_set_address_resolver", mm_set_address_resolver, METH_O,
     "_set_address_resolver(resolver, /)\n--\n\n"
     "Install the callable consume() uses for ctypes/cffi pointers."},
    {NULL},
};

/* ------------------------------------------------------------------ */
/* Initialisation                                                      */
/* ------------------------------------------------------------------ */

static PyObject *new_exception(PyObject *module, const char *name,
                               const char *doc, PyObject *bases)
{
    char qualified[96];
    snprintf(qualified, sizeof(qualified), "memmanager.%s", name);
    PyObject *exc = PyErr_NewExceptionWithDoc(qualified, doc, bases, NULL);
    if (exc != NULL && PyModule_AddObjectRef(module, name, exc) < 0) {
        Py_CLEAR(exc);
    }
    return exc;
}

static PyObject *derived_exception(PyObject *module, const char *name,
                                   const char *doc, PyObject *base, PyObject *other)
{
    PyObject *bases = PyTuple_Pack(2, base, other);
    if (bases == NULL) {
        return NULL;
    }
    PyObject *exc = new_exception(module, name, doc, bases);
    Py_DECREF(bases);
    return exc;
}

static int add_exceptions(PyObject *module, mm_state *st)
{
    st->MemManagerError = new_exception(
        module, "MemManagerError", "Base class of memmanager's own errors.", NULL);
    if (st->MemManagerError == NULL) {
        return -1;
    }
    st->UnknownAllocatorError = derived_exception(
        module, "UnknownAllocatorError", "No allocator is registered under that name.",
        st->MemManagerError, PyExc_LookupError);
    st->OverlapError = derived_exception(
        module, "OverlapError", "The memory overlaps a live managed region.",
        st->MemManagerError, PyExc_ValueError);
    st->DeviceUnavailableError = derived_exception(
        module, "DeviceUnavailableError", "The device (GPU) cannot be used.",
        st->MemManagerError, PyExc_RuntimeError);
    st->LimitExceededError = derived_exception(
        module, "LimitExceededError",
        "A Limit adaptor's max_bytes would be passed (a MemoryError).",
        st->MemManagerError, PyExc_MemoryError);
    return (st->UnknownAllocatorError && st->OverlapError &&
            st->DeviceUnavailableError && st->LimitExceededError) ? 0 : -1;
}

/* The adaptor types (adaptors/), in st->adaptor_types order. */
static PyType_Spec *const adaptor_specs[MM_ADAPTOR_KINDS] = {
    [MM_ADAPTOR_LIMIT] = &mm_limit_type_spec,
    [MM_ADAPTOR_POOL] = &mm_pool_type_spec,
    [MM_ADAPTOR_LOG] = &mm_log_type_spec,
};

static int add_adaptor_types(PyObject *module, mm_state *st)
{
    for (int i = 0; i < MM_ADAPTOR_KINDS; i++) {
        PyObject *type = PyType_FromModuleAndSpec(module, adaptor_specs[i], NULL);
        if (type == NULL) {
            return -1;
        }
        st->adaptor_types[i] = (PyTypeObject *)type;
        if (PyModule_AddObjectRef(module, strrchr(adaptor_specs[i]->name, '.') + 1,
                                  type) < 0) {
            return -1;
        }
    }
    return 0;
}

static int add_types(PyObject *module, mm_state *st)
{
    st->allocator_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &mm_allocator_type_spec, NULL);
    st->cached_classmethod_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &mm_cached_classmethod_spec, NULL);
    st->buffer_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &mm_buffer_type_spec, NULL);
    st->device_view_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &mm_device_view_type_spec, NULL);
    if (st->allocator_type == NULL || st->cached_classmethod_type == NULL ||
        st->buffer_type == NULL || st->device_view_type == NULL ||
        mm_buffer_finish_type(st, st->buffer_type) < 0) {
        return -1;
    }
    if (PyModule_AddType(module, st->buffer_type) < 0 ||
        PyModule_AddType(module, st->allocator_type) < 0 ||
        PyModule_AddType(module, st->device_view_type) < 0) {
        return -1;
    }
    return 0;
}

static int intern_option_names(mm_state *st)
{
    struct { PyObject **slot; const char *text; } names[] = {
        {&st->str_allocator, "allocator"},
        {&st->str_init_value, "init_value"},
        {&st->str_delayed_gc, "delayed_gc"},
        {&st->str_death_stub, "death_stub"},
        {&st->str_copy, "copy"},
        {&st->str_readonly, "readonly"},
        {&st->str_owner, "owner"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if ((*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL) {
            return -1;
        }
    }
    return 0;
}

/* Every allocator kind, in the order allocators() lists them: each
 * registers its own allocators, so allocators/allocator.c names none. */
static int (*const allocator_kinds[])(mm_state *st) = {
    mm_builtin_kinds_register,     /* PyAlloc, CMalloc, Borrowed */
    mm_aligned_kind_register,      /* Aligned */
    mm_mmap_kind_register,         /* Mmap */
    mm_shm_kind_register,          /* SharedMemory */
    mm_mapped_file_kind_register,  /* MappedFile */
    mm_cuda_register_allocators,   /* CudaHost, CudaDevice, CudaManaged */
};

static int register_allocator_kinds(mm_state *st)
{
    for (size_t i = 0; i < sizeof(allocator_kinds) / sizeof(allocator_kinds[0]); i++) {
        if (allocator_kinds[i](st) < 0) {
            return -1;
        }
    }
    return 0;
}

static int module_exec(PyObject *module)
{
    mm_state *st = module_state(module);
    const char *debug = getenv("MEMMANAGER_DEBUG");
    st->debug = debug != NULL && debug[0] != '\0' && debug[0] != '0';
    /* MEMMANAGER_HUGEPAGES=0: no automatic huge-page advice (allocators.h). */
    const char *hugepages = getenv("MEMMANAGER_HUGEPAGES");
    st->auto_hugepages = hugepages == NULL || hugepages[0] != '0';
    if (mm_region_registry_init() < 0) {
        PyErr_SetString(PyExc_RuntimeError, "cannot install the registry's fork handlers");
        return -1;
    }
    /* The registry is process-wide: in a subinterpreter, which may have a
     * GIL of its own, the GIL no longer keeps every caller out. */
    if (PyInterpreterState_Get() != PyInterpreterState_Main()) {
        mm_region_registry_use_without_gil();
    }
    if (mm_interp_attach(st) < 0 || intern_option_names(st) < 0 ||
        add_exceptions(module, st) < 0 || add_types(module, st) < 0 ||
        mm_views_add_types(module, st) < 0 || add_adaptor_types(module, st) < 0 ||
        mm_statistics_add_types(module, st) < 0) {
        return -1;
    }
    if ((st->allocators = PyDict_New()) == NULL ||
        (st->pinned = PyDict_New()) == NULL ||
        register_allocator_kinds(st) < 0) {
        return -1;
    }
    if (PyModule_AddIntConstant(module, "TRACEMALLOC_DOMAIN",
                                MEMMANAGER_TRACEMALLOC_DOMAIN) < 0 ||
        PyModule_AddIntConstant(module, "DEBUG", st->debug) < 0 ||
        PyModule_AddIntConstant(module, "AUTO_HUGEPAGES", st->auto_hugepages) < 0) {
        return -1;
    }
    return 0;
}

/* The values of a private dict (untracked, held only by the module state),
 * reported as the module's own references: the dict itself is never
 * handed to the collector, so gc.get_referents(module) cannot reach it. */
static int visit_private_dict(PyObject *dict, visitproc visit, void *arg)
{
    if (dict != NULL) {
        PyObject *key, *value;
        Py_ssize_t pos = 0;
        while (PyDict_Next(dict, &pos, &key, &value)) {
            Py_VISIT(value);
        }
    }
    return 0;
}

/* `allocators` (allocator.c) and `pinned` (delayed_gc.c) are private: a
 * Python object stored in either would be read back as an allocator or a
 * Buffer.  Their values are visited instead of the dicts. */
static int module_traverse(PyObject *module, visitproc visit, void *arg)
{
    mm_state *st = module_state(module);
    int rc;
    Py_VISIT(st->buffer_type);
    Py_VISIT(st->allocator_type);
    Py_VISIT(st->cached_classmethod_type);
    Py_VISIT(st->view_entry_type);
    Py_VISIT(st->view_export_type);
    if ((rc = visit_private_dict(st->allocators, visit, arg)) != 0 ||
        (rc = visit_private_dict(st->pinned, visit, arg)) != 0) {
        return rc;
    }
    for (size_t i = 0; i < MM_PYTHON_METHOD_COUNT; i++) {
        Py_VISIT(st->python_methods[i]);
    }
    Py_VISIT(st->default_allocator);
    Py_VISIT(st->last_allocator);
    Py_VISIT(st->MemManagerError);
    Py_VISIT(st->UnknownAllocatorError);
    Py_VISIT(st->OverlapError);
    Py_VISIT(st->DeviceUnavailableError);
    Py_VISIT(st->LimitExceededError);
    for (size_t i = 0; i < MM_ADAPTOR_TYPE_COUNT; i++) {
        Py_VISIT(st->adaptor_types[i]);
    }
    Py_VISIT(st->address_resolver);
    Py_VISIT(st->cmalloc_allocator);
    Py_VISIT(st->device_view_type);
    Py_VISIT(st->statistics_type);
    Py_VISIT(st->statistics_counts_type);
    Py_VISIT(st->statistics_var);
    Py_VISIT(st->cuda_driver);
    return 0;
}

static int module_clear(PyObject *module)
{
    mm_state *st = module_state(module);
    mm_interp_detach(st);      /* first: runs queued DLPack releases */
    Py_CLEAR(st->pinned);
    Py_CLEAR(st->address_resolver);
    for (size_t i = 0; i < MM_PYTHON_METHOD_COUNT; i++) {
        Py_CLEAR(st->python_methods[i]);
    }
    Py_CLEAR(st->cmalloc_allocator);
    Py_CLEAR(st->str_allocator);
    Py_CLEAR(st->str_init_value);
    Py_CLEAR(st->str_delayed_gc);
    Py_CLEAR(st->str_death_stub);
    Py_CLEAR(st->str_copy);
    Py_CLEAR(st->str_readonly);
    Py_CLEAR(st->str_owner);
    mm_allocator_registry_clear(st);
    mm_buffer_args_forget_kwnames(st);
    Py_CLEAR(st->default_allocator);
    Py_CLEAR(st->MemManagerError);
    Py_CLEAR(st->UnknownAllocatorError);
    Py_CLEAR(st->OverlapError);
    Py_CLEAR(st->DeviceUnavailableError);
    Py_CLEAR(st->LimitExceededError);
    for (size_t i = 0; i < MM_ADAPTOR_TYPE_COUNT; i++) {
        Py_CLEAR(st->adaptor_types[i]);
    }
    Py_CLEAR(st->buffer_type);
    Py_CLEAR(st->allocator_type);
    Py_CLEAR(st->cached_classmethod_type);
    Py_CLEAR(st->view_entry_type);
    Py_CLEAR(st->view_export_type);
    Py_CLEAR(st->device_view_type);
    Py_CLEAR(st->statistics_type);
    Py_CLEAR(st->statistics_counts_type);
    Py_CLEAR(st->statistics_var);
    Py_CLEAR(st->cuda_driver);
    return 0;
}

static void module_free(void *module)
{
    module_clear((PyObject *)module);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
#ifdef Py_mod_multiple_interpreters
    /* Several interpreters sharing a GIL, not one GIL each. */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_SUPPORTED},
#endif
    {0, NULL},
};

/* The definition itself is the core's (core/state.c): its identity is how
 * every layer finds the state.  What the module does is filled in here. */
PyMODINIT_FUNC PyInit__core(void)
{
    mm_module_def.m_methods = module_methods;
    mm_module_def.m_slots = module_slots;
    mm_module_def.m_traverse = module_traverse;
    mm_module_def.m_clear = module_clear;
    mm_module_def.m_free = module_free;
    return PyModuleDef_Init(&mm_module_def);
}
