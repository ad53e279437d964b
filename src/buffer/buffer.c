/*
 * buffer.c -- the life of a memmanager.Buffer: construction, release,
 * the death stub, GC support, dealloc and the context manager.  (Its
 * buffer protocol, regions and item access live in access.c; consume() in
 * interop/consume.c; the type's attribute and method tables, which gather
 * every layer's methods, in module/buffer_type.c.)
 *
 * In Python terms:
 *
 *     class Buffer:
 *         def __init__(self, num_items, item_size, options=None, /, **kw):
 *             self.allocator = allocators[kw.get("allocator", "PyAlloc")]
 *             self.data = self.allocator.malloc(num_items * item_size, init)
 *             registry.insert(self.data, self.nbytes)   # OverlapError
 *             if kw.get("delayed_gc"): pinned[self.identifier] = self
 *         def release(self):
 *             if self.exports: raise BufferError
 *             self.death_stub(info); registry.remove(self); allocator.free(...)
 *
 * Ownership rules
 * ---------------
 * - A Buffer owns one block (`data`, `nbytes`) and frees it exactly once,
 *   through `allocator`, which it holds a strong reference to.  Adopted
 *   memory is freed by whoever owns it: a zero-copy consume holds an export
 *   of `source` (`source_view`) and releases that export instead; a
 *   Borrowed buffer frees nothing and holds `source` (the owner) alive.
 * - While `exports > 0` the memory is never freed: release() raises
 *   BufferError, and dealloc cannot happen because every export holds a
 *   reference to the Buffer (Py_buffer.obj).
 * - A pinned Buffer is referenced by the module's `pinned` dict; only
 *   collect_delayed(), release() or interpreter exit drop that reference.
 * - The death stub runs at most once, before the memory is freed, from
 *   release() or tp_finalize; its errors go to sys.unraisablehook.
 * - The registry entry (`node`) is removed before the memory is freed, so
 *   another thread can never see a stale region for a reused address.
 *
 * Legal states
 * ------------
 *   live      data != NULL, exports == 0, not pinned
 *   exported  data != NULL, exports > 0      (release refused)
 *   pinned    data != NULL, in the pinned dict (may also be exported)
 *   released  data == NULL, released == 1    (terminal; accessors raise)
 * Stored views (views.c) are exports like any other, except that release()
 * first drops them, and only then checks the export count.
 * Transitions: live <-> exported by getbuffer/releasebuffer; live <->
 * pinned by construction with delayed_gc and collect_delayed(); live or
 * pinned -> released by release() or, for unpinned ones, deallocation.
 *
 * Layer: buffer.  May call allocators/, core/, and below it in this
 * layer args.c, delayed_gc.c and views.c.
 */
#include "buffer/buffer.h"

/* Identifiers: a process-wide 64-bit counter, so one is never reused
 * (id() is, and a stale one would then name an unrelated buffer to
 * collect_delayed or an OverlapError).  Every caller holds the GIL, which
 * the subinterpreters share (the module does not claim a GIL of its own);
 * a free-threaded build counts atomically.  2**64 buffers do not happen. */
static uint64_t last_identifier = 0;

static uint64_t next_identifier(void)
{
#ifdef Py_GIL_DISABLED
    return __atomic_add_fetch(&last_identifier, 1, __ATOMIC_RELAXED);
#else
    return ++last_identifier;
#endif
}

static void adopt_subclass_finalizer(PyTypeObject *type);

/* A new, empty buffer object of the sizes in a (checked by mm_parse_sizes). */
BufferObject *mm_buffer_alloc_object(PyTypeObject *type, const buffer_args *a)
{
    if (MM_UNLIKELY(type->tp_finalize != mm_buffer_finalize)) {
        adopt_subclass_finalizer(type);   /* a subclass with __del__ */
    }
    BufferObject *self = (BufferObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->identifier = next_identifier();
        self->stub_done = 1;   /* no stub until construction completes */
        self->num_items = a->num_items;
        self->item_size = a->item_size;
        self->nbytes = a->num_items * a->item_size;
    }
    return self;
}

static int insert_region(mm_state *st, BufferObject *self)
{
    region_info other;
    uintptr_t start = (uintptr_t)self->data;
    uintptr_t end = start + (uintptr_t)self->nbytes;
    if (mm_region_registry_insert(&self->node, start, end, self->identifier,
                               self->allocator->stats_slot, &other) != 0) {
        mm_raise_overlap(st, start, end, &other);
        return -1;
    }
    if (MM_UNLIKELY(self->allocator->debug)) {
        mm_debug_check_registry("an insert");
    }
    return 0;
}

/* Keeps the rare paths out of the hot functions' instruction stream. */
#if defined(__GNUC__)
#define MM_NOINLINE __attribute__((noinline))
#else
#define MM_NOINLINE
#endif

/* A statistics scope is active somewhere: the buffer is counted in the
 * current context's scopes once it is registered (statistics.c). */
static MM_NOINLINE int insert_counted_region(mm_state *st, BufferObject *self)
{
    PyObject *scope;
    if (mm_statistics_prepare(st, self->allocator, &scope) < 0) {
        return -1;
    }
    if (insert_region(st, self) < 0) {
        Py_XDECREF(scope);
        return -1;
    }
    if (scope != NULL) {
        mm_statistics_count_allocation(self, scope);
    }
    return 0;
}

/* mm_buffer_register_region, inlined into mm_buffer_create: with no scope
 * active, the statistics cost one load and branch. */
#if defined(__GNUC__)
#define MM_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define MM_ALWAYS_INLINE inline
#endif

static MM_ALWAYS_INLINE int register_owned_region(mm_state *st, BufferObject *self)
{
    assert(self->owns_memory);   /* non-owning ones: interop/consume.c */
    if (MM_UNLIKELY(mm_statistics_any_active())) {
        return insert_counted_region(st, self);
    }
    return insert_region(st, self);
}

int mm_buffer_register_region(mm_state *st, BufferObject *self)
{
    return register_owned_region(st, self);
}

/* The buffer owns block from here on and frees it through alloc. */
void mm_buffer_adopt_block(BufferObject *self, AllocatorObject *alloc,
                        const mm_block *block)
{
    self->data = block->address;
    self->block_cookie = block->cookie;
    self->block_guard = block->guard;
    self->owns_memory = 1;
    self->released = 0;
    self->host_inaccessible = (alloc->memory_kind == MM_MEMORY_CUDA_DEVICE);
    if (self->allocator == NULL) {
        self->allocator = (AllocatorObject *)Py_NewRef(alloc);
    }
}

int mm_buffer_finish_construction(mm_state *st, BufferObject *self,
                               PyObject *death_stub, int delayed_gc)
{
    if (delayed_gc && mm_delayed_gc_pin(st, self) < 0) {
        return -1;
    }
    if (death_stub != NULL) {
        self->death_stub = Py_NewRef(death_stub);
        self->stub_done = 0;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Freeing and the death stub                                          */
/* ------------------------------------------------------------------ */

/* Leaves the registry, then frees (or gives back) the memory.  Never
 * raises; idempotent. */
int mm_buffer_release_memory(BufferObject *self)
{
    if (self->released) {
        return 0;
    }
    char *data = self->data;
    self->released = 1;
    self->release_deferred = 0;
    self->data = NULL;
    if (self->device != NULL) {
        self->device->free(self);   /* the device copies go first */
    }
    mm_region_registry_remove(&self->node);
    if (MM_UNLIKELY(self->allocator != NULL && self->allocator->debug)) {
        mm_debug_check_registry("a remove");
    }
    if (self->owns_memory && data != NULL) {
        mm_block block = {data, (size_t)self->nbytes, self->block_cookie,
                          self->block_guard};
        self->block_cookie = NULL;
        mm_allocator_free_block(self->allocator, &block);
    }
    if (self->holds_source_view) {
        self->holds_source_view = 0;
        PyBuffer_Release(&self->source_view);
    }
    Py_CLEAR(self->source);
    if (MM_UNLIKELY(self->statistics != NULL)) {
        mm_statistics_count_free(self);   /* last: it may run a dealloc */
    }
    return 0;
}

static PyObject *death_stub_info(BufferObject *self)
{
    return Py_BuildValue("{s:N,s:n,s:n,s:n,s:K}",
                         "buffer_address", PyLong_FromVoidPtr(self->data),
                         "buffer_size", self->nbytes,
                         "element_size", self->item_size,
                         "num_of_elements", self->num_items,
                         "identifier", (unsigned long long)self->identifier);
}

/* Calls the stub once, with the memory still there; errors go to
 * sys.unraisablehook.  The caller's exception state is preserved. */
void mm_buffer_run_death_stub(BufferObject *self)
{
    if (self->stub_done || self->death_stub == NULL || self->released) {
        self->stub_done = 1;
        return;
    }
    self->stub_done = 1;
    PyObject *stub = self->death_stub;
    self->death_stub = NULL;

    mm_saved_error raised;
    mm_err_save(&raised);
    PyObject *info = death_stub_info(self);
    PyObject *result = info ? PyObject_CallOneArg(stub, info) : NULL;
    if (result == NULL) {
        PyErr_WriteUnraisable(stub);
    }
    Py_XDECREF(result);
    Py_XDECREF(info);
    Py_DECREF(stub);
    mm_err_restore(&raised);
}

void mm_buffer_finalize(PyObject *op)
{
    mm_buffer_run_death_stub((BufferObject *)op);
}

/* A subclass's __del__ replaces the finalizer (tp_finalize) it inherits,
 * and would keep the death stub from running, in a collected cycle above
 * all, where nothing else may call it safely (by the time tp_clear runs,
 * the collector may have cleared the stub's function).  So a Python
 * subclass that defines __del__ gets this finalizer instead, patched in
 * when an instance is made: the stub first, then __del__, as CPython's
 * own slot would call it.  The collector and dealloc then handle a
 * resurrection by either, as for any finalizer. */
static PyObject *find_subclass_del(PyTypeObject *type)
{
    PyObject *mro = type->tp_mro;
    mm_state *st = mm_state_from_type(type);
    if (st == NULL || mro == NULL || !PyTuple_Check(mro)) {
        PyErr_Clear();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mro); i++) {
        PyTypeObject *base = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
        if (base == st->buffer_type || !PyType_Check(base)) {
            return NULL;   /* Buffer's own __del__ is buffer_finalize */
        }
#if PY_VERSION_HEX >= 0x030C0000
        PyObject *dict = PyType_GetDict(base);
#else
        PyObject *dict = Py_XNewRef(base->tp_dict);
#endif
        if (dict == NULL) {
            continue;
        }
        PyObject *del = Py_XNewRef(PyDict_GetItemString(dict, "__del__"));
        Py_DECREF(dict);
        if (del != NULL) {
            return del;
        }
    }
    return NULL;
}

static void buffer_subclass_finalize(PyObject *op)
{
    mm_buffer_run_death_stub((BufferObject *)op);
    mm_saved_error raised;
    mm_err_save(&raised);
    PyObject *del = find_subclass_del(Py_TYPE(op));
    if (del != NULL) {
        descrgetfunc get = Py_TYPE(del)->tp_descr_get;
        PyObject *bound = get ? get(del, op, (PyObject *)Py_TYPE(op)) : Py_NewRef(del);
        PyObject *result = bound ? PyObject_CallNoArgs(bound) : NULL;
        if (result == NULL) {
            PyErr_WriteUnraisable(del);
        }
        Py_XDECREF(result);
        Py_XDECREF(bound);
        Py_DECREF(del);
    }
    mm_err_restore(&raised);
}

static void adopt_subclass_finalizer(PyTypeObject *type)
{
    if (type->tp_finalize == buffer_subclass_finalize ||
        !(type->tp_flags & Py_TPFLAGS_HEAPTYPE)) {
        return;
    }
    PyObject *del = find_subclass_del(type);
    if (del != NULL) {   /* else a C subclass's own finalizer: dealloc covers it */
        type->tp_finalize = buffer_subclass_finalize;
        Py_DECREF(del);
    }
}

/* dealloc found the stub not run: a subclass whose finalizer was not ours
 * (a C subclass's, or __del__ assigned after the instance was made).  As
 * PyObject_CallFinalizerFromDealloc does, the object is alive (one
 * reference) while the stub runs; -1 when the stub resurrected it. */
static int run_stub_from_dealloc(BufferObject *self)
{
    PyObject *op = (PyObject *)self;
    Py_SET_REFCNT(op, 1);
    mm_buffer_run_death_stub(self);
    if (Py_REFCNT(op) == 1) {
        Py_SET_REFCNT(op, 0);
        return 0;
    }
    Py_SET_REFCNT(op, Py_REFCNT(op) - 1);
    return -1;
}

/* ------------------------------------------------------------------ */
/* GC support and deallocation                                         */
/* ------------------------------------------------------------------ */

int mm_buffer_traverse(PyObject *op, visitproc visit, void *arg)
{
    BufferObject *self = (BufferObject *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->death_stub);
    Py_VISIT(self->allocator);
    Py_VISIT(self->source);
    Py_VISIT(self->statistics);
    if (self->block_cookie != NULL) {
        int rc = mm_allocator_visit_block(self->allocator, self->block_cookie, visit, arg);
        if (rc != 0) {
            return rc;
        }
    }
    /* The exporter of a held export is shown to the collector only when
     * consume() judged that safe (source_view_visible: interop/consume.c
     * says why a memoryview, for one, must not be). */
    if (self->holds_source_view && self->source_view_visible) {
        Py_VISIT(self->source_view.obj);
    }
    return mm_buffer_views_traverse(self, visit, arg);
}

/* Breaks cycles through the stub and the stored views only: the memory,
 * its allocator and its source stay until dealloc, so a buffer is never
 * freed while exported. */
int mm_buffer_clear(PyObject *op)
{
    Py_CLEAR(((BufferObject *)op)->death_stub);
    mm_buffer_views_clear((BufferObject *)op);
    return 0;
}

void mm_buffer_dealloc(PyObject *op)
{
    BufferObject *self = (BufferObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    /* The stub runs while the object is still tracked, so a buffer it
     * resurrects (through a weak reference) stays under the collector. */
    if (self->death_stub != NULL && PyObject_CallFinalizerFromDealloc(op) < 0) {
        return;   /* resurrected by the death stub */
    }
    /* A subclass's finalizer ran instead of ours (or none did): the stub
     * still runs, exactly once (stub_done). */
    if (self->death_stub != NULL && !self->stub_done && !self->released &&
        run_stub_from_dealloc(self) < 0) {
        return;   /* resurrected by the death stub */
    }
    PyObject_GC_UnTrack(op);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs(op);
    }
    mm_buffer_views_clear(self);
    mm_buffer_release_memory(self);
    Py_CLEAR(self->death_stub);
    Py_CLEAR(self->allocator);
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* ------------------------------------------------------------------ */
/* Construction                                                        */
/* ------------------------------------------------------------------ */

PyObject *mm_buffer_create(PyTypeObject *type, PyObject *const *args,
                        Py_ssize_t nargs, PyObject *kwnames)
{
    buffer_args a = {0};
    BufferObject *self = NULL;
    mm_request req;
    mm_block block;
    int init_byte, delayed_gc;
    AllocatorObject *alloc = NULL;
    mm_state *st = mm_state_from_type(type);
    if (st == NULL) {
        return NULL;
    }
    if (nargs < 2 || nargs > 3) {
        PyErr_Format(PyExc_TypeError,
                     "Buffer() takes num_items, item_size and an optional "
                     "options mapping (%zd positional arguments given)", nargs);
        return NULL;
    }
    if (mm_parse_sizes(args[0], args[1], &a) < 0 ||
        mm_parse_options(st, nargs == 3 ? args[2] : NULL, args + nargs, kwnames, 0, &a) < 0) {
        goto error;
    }
    /* A strong reference: the checks below can run Python code (__bool__,
     * a plug-in's options), which could register another allocator under
     * this name and drop the registry's reference to this one. */
    alloc = (AllocatorObject *)Py_XNewRef(mm_allocator_lookup(st, a.allocator));
    if (alloc == NULL || mm_parse_init_value(a.init_value, &init_byte) < 0 ||
        mm_allocator_parse_options(alloc, a.extra, a.num_items, a.item_size,
                                init_byte, &req) < 0 ||
        (delayed_gc = mm_parse_flag(a.delayed_gc, 0)) < 0) {
        goto error;
    }
    self = mm_buffer_alloc_object(type, &a);
    if (self == NULL) {
        goto error;
    }
    /* Until its memory is there the buffer reads as released, in case an
     * allocator's Python code finds it (gc.get_objects()); it holds the
     * allocator, in case that code replaces it in the registry. */
    self->allocator = (AllocatorObject *)Py_NewRef(alloc);
    self->released = 1;
    if (mm_allocator_alloc_block(alloc, &req, (size_t)self->nbytes, init_byte, &block) < 0) {
        goto error;
    }
    mm_buffer_adopt_block(self, alloc, &block);
    self->readonly = req.readonly;   /* MappedFile mode="r" */
    if (register_owned_region(st, self) < 0 ||
        mm_buffer_finish_construction(st, self, a.death_stub, delayed_gc) < 0) {
        goto error;
    }
    Py_DECREF(alloc);
    mm_buffer_args_clear(&a);
    return (PyObject *)self;
error:
    Py_XDECREF(self);
    Py_XDECREF(alloc);
    mm_buffer_args_clear(&a);
    return NULL;
}

PyObject *mm_buffer_vectorcall(PyObject *type, PyObject *const *args,
                               size_t nargsf, PyObject *kwnames)
{
    return mm_buffer_create((PyTypeObject *)type, args,
                         PyVectorcall_NARGS(nargsf), kwnames);
}

/* tp_new, used by subclasses (tp_vectorcall is not inherited).  The
 * keyword values are held here: mm_buffer_create borrows its arguments, and
 * the kwargs dict could be emptied by code that runs meanwhile. */
PyObject *mm_buffer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    Py_ssize_t nkw = kwargs ? PyDict_GET_SIZE(kwargs) : 0;
    PyObject **stack = PyMem_Malloc(sizeof(PyObject *) * (size_t)(nargs + nkw + 1));
    PyObject *kwnames = NULL, *result = NULL;
    Py_ssize_t held = 0;
    if (stack == NULL) {
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        stack[i] = PyTuple_GET_ITEM(args, i);   /* the tuple cannot change */
    }
    if (nkw > 0) {
        if ((kwnames = PyTuple_New(nkw)) == NULL) {
            goto done;
        }
        PyObject *key, *value;
        Py_ssize_t pos = 0;
        while (held < nkw && PyDict_Next(kwargs, &pos, &key, &value)) {
            PyTuple_SET_ITEM(kwnames, held, Py_NewRef(key));
            stack[nargs + held++] = Py_NewRef(value);
        }
    }
    result = mm_buffer_create(type, stack, nargs, kwnames);
done:
    for (Py_ssize_t k = 0; k < held; k++) {
        Py_DECREF(stack[nargs + k]);
    }
    Py_XDECREF(kwnames);
    PyMem_Free(stack);
    return result;
}

/* ------------------------------------------------------------------ */
/* release() and the context manager                                   */
/* ------------------------------------------------------------------ */

static int refuse_if_exported(BufferObject *self)
{
    if (self->exports > 0) {
        PyErr_Format(PyExc_BufferError,
                     "cannot release: the buffer has %zd live export(s)",
                     self->exports);
        return -1;
    }
    return 0;
}

PyObject *mm_buffer_release_method(PyObject *op, PyObject *Py_UNUSED(unused))
{
    BufferObject *self = (BufferObject *)op;
    if (self->released) {
        Py_RETURN_NONE;
    }
    mm_buffer_views_clear(self);   /* forget the stored views first */
    if (self->released) {       /* a view's destructor released it */
        Py_RETURN_NONE;
    }
    if (refuse_if_exported(self) < 0) {
        return NULL;
    }
    mm_buffer_run_death_stub(self);
    if (refuse_if_exported(self) < 0) {   /* the stub kept a view */
        return NULL;
    }
    if (self->pinned && mm_delayed_gc_unpin(mm_buffer_state(self), self) < 0) {
        return NULL;
    }
    mm_buffer_release_memory(self);
    Py_RETURN_NONE;
}

PyObject *mm_buffer_enter(PyObject *op, PyObject *Py_UNUSED(unused))
{
    if (mm_buffer_check_live((BufferObject *)op) < 0) {
        return NULL;
    }
    return Py_NewRef(op);
}

/* The last export of a buffer whose release __exit__ deferred ended:
 * release it now.  This runs inside whoever gave the export back
 * (PyBuffer_Release in a memoryview's dealloc or tp_clear, a capsule's
 * deleter, another buffer's release): the buffer is held, the caller's
 * exception is kept, and nothing is raised; if the death stub took a new
 * export, the release waits for that one in turn. */
static void finish_deferred_release(BufferObject *self)
{
    Py_INCREF(self);
    mm_saved_error raised;
    mm_err_save(&raised);
    PyObject *result = mm_buffer_release_method((PyObject *)self, NULL);
    if (result == NULL) {
        if (self->exports > 0 && !self->released &&
            PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_Clear();   /* still deferred, to the new last export */
        }
        else {
            self->release_deferred = 0;
            PyErr_WriteUnraisable((PyObject *)self);
        }
    }
    Py_XDECREF(result);
    mm_err_restore(&raised);
    Py_DECREF(self);
}

void mm_buffer_export_ended(BufferObject *self)
{
    self->exports--;
    assert(self->exports >= 0);
    if (MM_UNLIKELY(self->release_deferred) && self->exports == 0 &&
        !self->released) {
        finish_deferred_release(self);
    }
}

/* Says on the exception leaving the with block that the release waits
 * for the exports (a note, PEP 678).  Never raises. */
static void note_deferred_release(PyObject *exc, Py_ssize_t exports)
{
    PyObject *note = PyUnicode_FromFormat(
        "memmanager: the Buffer's release was deferred: it has %zd live "
        "export(s); its memory is freed when the last one ends", exports);
    PyObject *result = note ? PyObject_CallMethod(exc, "add_note", "O", note) : NULL;
    if (result == NULL) {
        PyErr_Clear();   /* e.g. __notes__ replaced by something else */
    }
    Py_XDECREF(result);
    Py_XDECREF(note);
}

/* __exit__ never replaces an exception that is leaving the block: if the
 * release cannot happen now because of live exports, it is deferred to
 * the last export's end; any other failure goes to sys.unraisablehook.
 * Without an exception, a failed release raises as release() does. */
PyObject *mm_buffer_exit(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    BufferObject *self = (BufferObject *)op;
    /* The block raised when exc_type is not None, whatever the other two
     * arguments are; the note goes on the exception instance, if any. */
    int raised = nargs > 0 && args[0] != Py_None;
    PyObject *leaving = NULL;
    for (Py_ssize_t i = 0; raised && i < nargs && i < 2; i++) {
        if (PyExceptionInstance_Check(args[i])) {
            leaving = args[i];   /* (type, value, tb): value, or a lone exception */
        }
    }
    Py_XINCREF(leaving);
    PyObject *result = mm_buffer_release_method(op, NULL);
    if (result != NULL) {
        Py_DECREF(result);
        Py_XDECREF(leaving);
        Py_RETURN_FALSE;
    }
    if (!raised) {
        return NULL;
    }
    if (!self->released && self->exports > 0 &&
        PyErr_ExceptionMatches(PyExc_BufferError)) {
        PyErr_Clear();
        self->release_deferred = 1;
        if (leaving != NULL) {
            note_deferred_release(leaving, self->exports);
        }
        /* the note's code may have ended the exports meanwhile */
        if (self->exports == 0 && self->release_deferred && !self->released) {
            finish_deferred_release(self);
        }
    }
    else {
        PyErr_WriteUnraisable(op);
    }
    Py_XDECREF(leaving);
    Py_RETURN_FALSE;
}

/* At exit: release every pinned buffer; one that is still exported is
 * unpinned after its stub ran, and freed when its last export goes. */
PyObject *mm_buffer_release_all_pinned(mm_state *st)
{
    /* A stub may pin new buffers: a few more rounds release those too;
     * whatever a stub keeps pinning after that is freed (stub and all)
     * when the module state is cleared. */
    for (int round = 0; round < 8 && st != NULL && st->pinned != NULL &&
                        PyDict_GET_SIZE(st->pinned) > 0; round++) {
        PyObject *buffers = PyDict_Values(st->pinned);
        if (buffers == NULL) {
            return NULL;
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(buffers); i++) {
            PyObject *buffer = PyList_GET_ITEM(buffers, i);   /* held by the list */
            if (!PyObject_TypeCheck(buffer, st->buffer_type)) {
                continue;
            }
            PyObject *result = mm_buffer_release_method(buffer, NULL);
            if (result == NULL) {
                PyErr_Clear();
                mm_buffer_run_death_stub((BufferObject *)buffer);
                if (mm_delayed_gc_unpin(st, (BufferObject *)buffer) < 0) {
                    PyErr_Clear();
                }
            }
            Py_XDECREF(result);
        }
        Py_DECREF(buffers);
    }
    Py_RETURN_NONE;
}
