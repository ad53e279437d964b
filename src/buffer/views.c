/*
 * views.c -- where a Buffer keeps its named views, and how the cyclic
 * garbage collector sees them.
 *
 * The public methods (create_view, get_view, delete_view, clone_view) and
 * the view kinds are Python code, memmanager/_views.py: making a view is a
 * cold path.  What must be C is the storage, because release() has to
 * forget the stored views before it checks the export count, and because
 * of the collector:
 *
 *     buffer -> views dict -> ViewEntry -> view -> (export) -> buffer
 *
 * is a reference cycle.  For memoryview and ctypes views every link is
 * visible to the collector and the cycle is collected like any other.  A
 * NumPy array, though, is not tracked by the collector, so its reference
 * to its base is invisible.  A view made by numpy.frombuffer(...).reshape()
 * is a chain of arrays, view -> link -> anchor, ending in the memoryview
 * NumPy made of the buffer (the anchor, which holds the export): the
 * anchor looks referenced from outside, and a buffer dropped with a stored
 * array would never be freed.  The ViewEntry therefore reports that last
 * reference itself: it holds the anchor, and its tp_traverse visits the
 * anchor a second time -- on behalf of the chain -- whenever nothing but
 * the entry can reach the chain (so the chain is reachable exactly when
 * the entry is).  This is sound because:
 *
 *   - a chain is recorded only through exact numpy.ndarray objects (a
 *     static type whose `base` is set once, at creation, and holds one
 *     reference), untracked, ending in a tracked object;
 *   - entries are made only here (the type cannot be instantiated from
 *     Python) and are immutable, so no Python code can pair a view with an
 *     object it does not reference;
 *   - the extra visit is made only while every array of the chain is
 *     untracked and has exactly the one reference the chain accounts for:
 *     the view the entry's, each link the base reference of the array
 *     above it.  If anybody else holds any of them (the user keeps the
 *     array, or its .base), the visit is not made, and the array keeps
 *     its buffer alive as it should.
 *   - the chain is walked again, from the view the entry owns, each time
 *     the collector asks: nothing about it is remembered but the anchor
 *     (owned).  Python code can change an array's base under us
 *     (ndarray.__setstate__ drops it and frees the arrays below), so a
 *     remembered link would be a dangling pointer, and a remembered chain
 *     a reference that is no longer there.  The walk reads each array's
 *     `base` field at the offset of NumPy's public struct layout, checked
 *     against the `base` attribute when the view is stored; an array of
 *     another layout is simply never given the extra visit.
 *
 * A third-party view type that is tracked but hides its reference to the
 * buffer from the collector makes a cycle the collector cannot see;
 * release() or delete_view() still breaks it (documented in docs/views.md).
 *
 * Ownership: Buffer.views (a dict, or NULL until the first view) owns the
 * entries; an entry owns its kind, view and anchor.  release() and
 * tp_clear drop the dict; tp_dealloc drops it before the memory is freed.
 *
 * Nothing Python code can reach may change the store behind C's back (the
 * re-entrancy rule of DESIGN section 10):
 *   - names and kinds are stored as exact str (a subclass is copied), so
 *     no __hash__ or __eq__ of the caller's runs inside a dict operation;
 *   - the dict is private: the buffer's tp_traverse visits the entries,
 *     not the dict, and the dict is untracked after every insert, so
 *     neither gc.get_referents(buffer) nor gc.get_objects() hands it out
 *     (this is sound because the buffer holds the only reference to it);
 *   - every operation holds the dict, and an entry it replaces or deletes,
 *     by a strong reference until the dict is consistent: the entry's
 *     destructor may run Python code (a view's __del__, a weakref
 *     callback), which may release the buffer and drop the dict;
 *   - anything that allocates may run the collector, and with it Python
 *     code: the buffer is checked to be live again after it.
 *
 * Layer: buffer.  May call allocators/ and core/.
 */
#include "buffer/buffer.h"

#include <string.h>

/* The longest chain of arrays between a view and its anchor we follow. */
#define VIEW_CHAIN_MAX 4

typedef struct {
    PyObject_HEAD
    PyObject *kind;     /* exact str: the kind that made the view (clone_view) */
    PyObject *view;     /* the view object */
    PyObject *anchor;   /* NULL, or the tracked end of an untracked NumPy chain */
} ViewEntry;

/* The head of NumPy's PyArrayObject_fields (numpy/ndarraytypes.h), the
 * layout NumPy has kept since 1.7 and keeps in 2.x.  Only `base` is read,
 * and only after find_anchor() saw that it matches the attribute. */
typedef struct {
    PyObject_HEAD
    char *data;
    int nd;
    Py_ssize_t *dimensions;
    Py_ssize_t *strides;
    PyObject *base;
} numpy_array_head;

/* An exact numpy.ndarray: a static type, so the name cannot be forged by
 * a Python class. */
static int is_numpy_ndarray(PyObject *obj)
{
    PyTypeObject *tp = Py_TYPE(obj);
    return !(tp->tp_flags & Py_TPFLAGS_HEAPTYPE) &&
           strcmp(tp->tp_name, "numpy.ndarray") == 0 &&
           tp->tp_basicsize >= (Py_ssize_t)sizeof(numpy_array_head);
}

static int is_untracked_array(PyObject *obj)
{
    return is_numpy_ndarray(obj) && !PyObject_GC_IsTracked(obj);
}

/* The base of an exact numpy.ndarray (borrowed: the array holds it). */
static PyObject *array_base(PyObject *array)
{
    return ((numpy_array_head *)array)->base;
}

/* ------------------------------------------------------------------ */
/* The ViewEntry type                                                  */
/* ------------------------------------------------------------------ */

/* True while only the entry can reach the chain view -> links -> anchor:
 * then the chain's one reference to the anchor is the entry's to report.
 * Walked afresh each time, from the view the entry owns: each array read
 * is alive because the one above it holds it. */
static int entry_reports_chain_reference(ViewEntry *self)
{
    PyObject *current = self->view;
    if (self->anchor == NULL || current == NULL) {
        return 0;
    }
    for (int depth = 0; depth <= VIEW_CHAIN_MAX; depth++) {
        if (!is_untracked_array(current) || Py_REFCNT(current) != 1) {
            return 0;
        }
        PyObject *base = array_base(current);
        if (base == self->anchor) {
            return 1;
        }
        if (base == NULL) {
            return 0;
        }
        current = base;
    }
    return 0;
}

static int view_entry_traverse(PyObject *op, visitproc visit, void *arg)
{
    ViewEntry *self = (ViewEntry *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->kind);
    Py_VISIT(self->view);
    Py_VISIT(self->anchor);
    if (entry_reports_chain_reference(self)) {
        Py_VISIT(self->anchor);   /* the chain's reference, see the top */
    }
    return 0;
}

/* The view first: its death drops the chain's reference to the anchor. */
static int view_entry_clear(PyObject *op)
{
    ViewEntry *self = (ViewEntry *)op;
    Py_CLEAR(self->view);
    Py_CLEAR(self->anchor);
    Py_CLEAR(self->kind);
    return 0;
}

static void view_entry_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    view_entry_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyType_Slot view_entry_slots[] = {
    {Py_tp_traverse, view_entry_traverse},
    {Py_tp_clear, view_entry_clear},
    {Py_tp_dealloc, view_entry_dealloc},
    {0, NULL},
};

PyType_Spec mm_view_entry_type_spec = {
    .name = "memmanager._ViewEntry",
    .basicsize = sizeof(ViewEntry),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = view_entry_slots,
};

/* Follows `base` from an untracked NumPy view through untracked arrays to
 * the first tracked object: the anchor (stored as a new reference).
 * Leaves anchor NULL, with no error, when there is no such chain to
 * report, or when an array's `base` field is not where numpy_array_head
 * says (another NumPy layout: then the collector is never told). */
static void find_anchor(ViewEntry *entry)
{
    PyObject *current = entry->view;
    entry->anchor = NULL;
    for (int depth = 0; depth <= VIEW_CHAIN_MAX && is_untracked_array(current); depth++) {
        /* An exact ndarray's attributes are C getters: no Python code. */
        PyObject *base = PyObject_GetAttrString(current, "base");
        if (base == NULL) {
            PyErr_Clear();
            return;
        }
        Py_DECREF(base);   /* still alive: `current` holds it */
        if (base != array_base(current)) {
            return;        /* not the layout we know */
        }
        if (PyObject_GC_IsTracked(base)) {
            entry->anchor = Py_NewRef(base);
            return;
        }
        current = base;
    }
}

static PyObject *view_entry_new(mm_state *st, PyObject *kind, PyObject *view)
{
    ViewEntry *self = PyObject_GC_New(ViewEntry, st->view_entry_type);
    if (self == NULL) {
        return NULL;
    }
    self->kind = Py_NewRef(kind);
    self->view = Py_NewRef(view);
    self->anchor = NULL;
    find_anchor(self);
    PyObject_GC_Track((PyObject *)self);
    return (PyObject *)self;
}

/* ------------------------------------------------------------------ */
/* The _ViewExport type: an export of a buffer nobody can end early    */
/* ------------------------------------------------------------------ */

/* NumPy keeps the memory of an array made with numpy.frombuffer(obj)
 * through its `base`: a memoryview of obj when obj's type ends exports
 * (bf_releasebuffer), as a Buffer's does.  That memoryview is public
 * (view.base) and memoryview.release() ends the export while the array
 * still points at the memory: release() would then free it under the
 * array.  A NumPy view is therefore made over a _ViewExport: it takes one
 * export of the buffer when made and ends it only when it dies, and hands
 * the same memory out without counting (no bf_releasebuffer), so NumPy
 * keeps the object itself as the base.  It has no methods: no Python code
 * can end the export while an array refers to it.  It has no tp_clear
 * either: the collector breaks cycles through it at the buffer (which
 * forgets its views) and at the ViewEntry. */
typedef struct {
    PyObject_HEAD
    Py_buffer view;    /* an export of the buffer (view.obj holds it) */
} ViewExport;

static int view_export_getbuffer(PyObject *op, Py_buffer *view, int flags)
{
    ViewExport *self = (ViewExport *)op;
    return PyBuffer_FillInfo(view, op, self->view.buf, self->view.len,
                             self->view.readonly, flags);
}

static int view_export_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(((ViewExport *)op)->view.obj);
    return 0;
}

static void view_export_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (((ViewExport *)op)->view.obj != NULL) {
        PyBuffer_Release(&((ViewExport *)op)->view);
    }
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyType_Slot view_export_slots[] = {
    {Py_tp_traverse, view_export_traverse},
    {Py_tp_dealloc, view_export_dealloc},
    {Py_bf_getbuffer, view_export_getbuffer},
    {0, NULL},
};

PyType_Spec mm_view_export_type_spec = {
    .name = "memmanager._ViewExport",
    .basicsize = sizeof(ViewExport),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = view_export_slots,
};

/* _view_export() -> an export of the whole buffer, writable unless the
 * buffer is read-only (for memmanager/_views.py's NumPy kind). */
PyObject *mm_view_export_exporter(mm_state *st, PyObject *obj)
{
    if (Py_TYPE(obj) != st->view_export_type) {
        return NULL;
    }
    return ((ViewExport *)obj)->view.obj;
}

PyObject *mm_buffer_view_export(PyObject *op, PyObject *Py_UNUSED(unused))
{
    BufferObject *self = (BufferObject *)op;
    mm_state *st = mm_buffer_state(self);
    if (st == NULL) {
        return NULL;
    }
    ViewExport *export = PyObject_GC_New(ViewExport, st->view_export_type);
    if (export == NULL) {
        return NULL;
    }
    export->view.obj = NULL;
    /* After the allocation (it may have run Python code): the export
     * checks that the buffer is live. */
    if (PyObject_GetBuffer(op, &export->view,
                           self->readonly ? PyBUF_SIMPLE : PyBUF_WRITABLE) < 0) {
        Py_DECREF(export);
        return NULL;
    }
    PyObject_GC_Track((PyObject *)export);
    return (PyObject *)export;
}

int mm_views_add_types(PyObject *module, mm_state *st)
{
    st->view_entry_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &mm_view_entry_type_spec, NULL);
    st->view_export_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &mm_view_export_type_spec, NULL);
    return (st->view_entry_type == NULL || st->view_export_type == NULL) ? -1 : 0;
}

/* ------------------------------------------------------------------ */
/* The storage, for buffer.c                                           */
/* ------------------------------------------------------------------ */

/* The entries, not the dict: the dict is private (see the top). */
int mm_buffer_views_traverse(BufferObject *self, visitproc visit, void *arg)
{
    if (self->views != NULL) {
        PyObject *name, *entry;
        Py_ssize_t pos = 0;
        while (PyDict_Next(self->views, &pos, &name, &entry)) {
            Py_VISIT(entry);
        }
    }
    return 0;
}

/* Drops every stored view (and with it the exports they hold). */
void mm_buffer_views_clear(BufferObject *self)
{
    Py_CLEAR(self->views);
}

/* ------------------------------------------------------------------ */
/* The private methods used by memmanager/_views.py                    */
/* ------------------------------------------------------------------ */

/* name as an exact str (a new reference): a subclass is copied, so that
 * no __hash__ or __eq__ of the caller's runs inside the dict. */
static PyObject *exact_name(PyObject *name, const char *what)
{
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "a view %s must be a str, not %.100s",
                     what, Py_TYPE(name)->tp_name);
        return NULL;
    }
    return PyUnicode_FromObject(name);
}

static PyObject *missing_view(PyObject *name)
{
    PyObject *message = PyUnicode_FromFormat("no view named %R", name);
    if (message != NULL) {
        PyErr_SetObject(PyExc_KeyError, message);
        Py_DECREF(message);
    }
    return NULL;
}

/* _store_view(name, kind, view): store view under name, replacing any. */
PyObject *mm_buffer_store_view(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    BufferObject *self = (BufferObject *)op;
    PyObject *name = NULL, *kind = NULL, *entry = NULL, *views = NULL;
    PyObject *previous = NULL, *result = NULL;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError,
                     "_store_view() takes name, kind and view (%zd given)", nargs);
        return NULL;
    }
    if ((name = exact_name(args[0], "name")) == NULL ||
        (kind = exact_name(args[1], "kind")) == NULL ||
        (entry = view_entry_new(mm_buffer_state(self), kind, args[2])) == NULL) {
        goto done;
    }
    /* The allocations above may have run the collector, and with it any
     * Python code: only now is the buffer's state looked at. */
    if (mm_buffer_check_live(self) < 0) {
        goto done;
    }
    if (self->views == NULL) {
        if ((views = PyDict_New()) == NULL) {
            goto done;
        }
        if (self->views == NULL) {
            self->views = Py_NewRef(views);
        }
        Py_DECREF(views);
        if (mm_buffer_check_live(self) < 0) {
            goto done;
        }
    }
    views = Py_NewRef(self->views);
    /* The entry replaced leaves only after the dict is consistent and
     * private again: its destructor may run Python code. */
    previous = Py_XNewRef(PyDict_GetItemWithError(views, name));
    if (previous == NULL && PyErr_Occurred()) {
        goto done;
    }
    if (PyDict_SetItem(views, name, entry) < 0) {
        goto done;
    }
    PyObject_GC_UnTrack(views);
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(views);
    Py_XDECREF(name);
    Py_XDECREF(kind);
    Py_XDECREF(entry);
    Py_XDECREF(previous);
    return result;
}

/* The entry stored under name, as a new reference; KeyError when there is
 * none.  With the exact name, the lookup runs no Python code. */
static ViewEntry *lookup_entry(BufferObject *self, PyObject *name)
{
    if (mm_buffer_check_live(self) < 0) {
        return NULL;
    }
    PyObject *entry = self->views ? PyDict_GetItemWithError(self->views, name) : NULL;
    if (entry == NULL) {
        if (!PyErr_Occurred()) {
            missing_view(name);
        }
        return NULL;
    }
    return (ViewEntry *)Py_NewRef(entry);
}

/* _stored_view(name) -> (kind, view); KeyError when there is none. */
PyObject *mm_buffer_stored_view(PyObject *op, PyObject *name)
{
    PyObject *exact = exact_name(name, "name");
    if (exact == NULL) {
        return NULL;
    }
    ViewEntry *entry = lookup_entry((BufferObject *)op, exact);
    Py_DECREF(exact);
    if (entry == NULL) {
        return NULL;
    }
    PyObject *result = NULL;
    if (entry->kind == NULL || entry->view == NULL) {   /* cleared by the collector */
        PyErr_SetString(PyExc_ValueError, "the view is being collected");
    }
    else {
        result = PyTuple_Pack(2, entry->kind, entry->view);
    }
    Py_DECREF(entry);
    return result;
}

/* _forget_view(name): drop the stored view; KeyError when there is none. */
PyObject *mm_buffer_forget_view(PyObject *op, PyObject *name)
{
    BufferObject *self = (BufferObject *)op;
    PyObject *exact = exact_name(name, "name");
    if (exact == NULL) {
        return NULL;
    }
    ViewEntry *entry = lookup_entry(self, exact);
    if (entry == NULL) {
        Py_DECREF(exact);
        return NULL;
    }
    /* lookup_entry ran no Python code: self->views is the dict it read.
     * The entry (held) is dropped after the dict is consistent. */
    PyObject *views = Py_NewRef(self->views);
    int rc = PyDict_DelItem(views, exact);
    Py_DECREF(views);
    Py_DECREF(exact);
    Py_DECREF(entry);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* _view_names() -> list of the stored names, in creation order. */
PyObject *mm_buffer_view_names(PyObject *op, PyObject *Py_UNUSED(unused))
{
    BufferObject *self = (BufferObject *)op;
    if (mm_buffer_check_live(self) < 0) {
        return NULL;
    }
    return self->views ? PyDict_Keys(self->views) : PyList_New(0);
}
