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
 *     its buffer alive as it should.  The links are not visited (and not
 *     owned: the view keeps them alive), so gc.get_referents() cannot
 *     hand them out.
 *
 * A third-party view type that is tracked but hides its reference to the
 * buffer from the collector makes a cycle the collector cannot see;
 * release() or delete_view() still breaks it (documented in docs/views.md).
 *
 * Ownership: Buffer.views (a dict, or NULL until the first view) owns the
 * entries; an entry owns its kind, view and anchor.  release() and
 * tp_clear drop the dict; tp_dealloc drops it before the memory is freed.
 */
#include "memmanager.h"

#include <string.h>

/* The longest chain of arrays between a view and its anchor we follow. */
#define VIEW_CHAIN_MAX 4

typedef struct {
    PyObject_HEAD
    PyObject *kind;     /* str: the kind that made the view (for clone_view) */
    PyObject *view;     /* the view object */
    PyObject *anchor;   /* NULL, or the tracked end of an untracked NumPy chain */
    int nlinks;         /* arrays between view and anchor */
    PyObject *links[VIEW_CHAIN_MAX];  /* borrowed: the view keeps them alive */
} ViewEntry;

/* ------------------------------------------------------------------ */
/* The ViewEntry type                                                  */
/* ------------------------------------------------------------------ */

/* True while only the entry can reach the chain view -> links -> anchor:
 * then the chain's one reference to the anchor is the entry's to report. */
static int entry_reports_chain_reference(ViewEntry *self)
{
    if (self->anchor == NULL || self->view == NULL ||
        Py_REFCNT(self->view) != 1 || PyObject_GC_IsTracked(self->view)) {
        return 0;
    }
    for (int i = 0; i < self->nlinks; i++) {
        if (Py_REFCNT(self->links[i]) != 1 || PyObject_GC_IsTracked(self->links[i])) {
            return 0;
        }
    }
    return 1;
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
    self->nlinks = 0;
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

PyType_Spec view_entry_type_spec = {
    .name = "memmanager._ViewEntry",
    .basicsize = sizeof(ViewEntry),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = view_entry_slots,
};

/* An exact numpy.ndarray: a static type, so the name cannot be forged by
 * a Python class. */
static int is_numpy_ndarray(PyObject *obj)
{
    PyTypeObject *tp = Py_TYPE(obj);
    return !(tp->tp_flags & Py_TPFLAGS_HEAPTYPE) &&
           strcmp(tp->tp_name, "numpy.ndarray") == 0;
}

static int is_untracked_array(PyObject *obj)
{
    return is_numpy_ndarray(obj) && !PyObject_GC_IsTracked(obj);
}

/* Follows `base` from an untracked NumPy view through untracked arrays to
 * the first tracked object: the anchor (stored as a new reference), with
 * the arrays in between as links.  Leaves anchor NULL, with no error, when
 * there is no such chain to report. */
static void find_anchor(ViewEntry *entry)
{
    PyObject *current = entry->view;
    entry->anchor = NULL;
    entry->nlinks = 0;
    while (is_untracked_array(current)) {
        PyObject *base = PyObject_GetAttrString(current, "base");
        if (base == NULL) {
            PyErr_Clear();
            break;
        }
        Py_DECREF(base);   /* still alive: `current` holds it */
        if (PyObject_GC_IsTracked(base)) {
            entry->anchor = Py_NewRef(base);
            return;
        }
        if (entry->nlinks == VIEW_CHAIN_MAX || !is_untracked_array(base)) {
            break;
        }
        entry->links[entry->nlinks++] = base;
        current = base;
    }
    entry->nlinks = 0;
}

static PyObject *view_entry_new(mm_state *st, PyObject *kind, PyObject *view)
{
    ViewEntry *self = PyObject_GC_New(ViewEntry, st->view_entry_type);
    if (self == NULL) {
        return NULL;
    }
    self->kind = Py_NewRef(kind);
    self->view = Py_NewRef(view);
    find_anchor(self);
    PyObject_GC_Track((PyObject *)self);
    return (PyObject *)self;
}

int views_add_types(PyObject *module, mm_state *st)
{
    st->view_entry_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &view_entry_type_spec, NULL);
    return st->view_entry_type == NULL ? -1 : 0;
}

/* ------------------------------------------------------------------ */
/* The storage, for buffer.c                                           */
/* ------------------------------------------------------------------ */

int buffer_views_traverse(BufferObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->views);
    return 0;
}

/* Drops every stored view (and with it the exports they hold). */
void buffer_views_clear(BufferObject *self)
{
    Py_CLEAR(self->views);
}

/* ------------------------------------------------------------------ */
/* The private methods used by memmanager/_views.py                    */
/* ------------------------------------------------------------------ */

static int check_name(PyObject *name)
{
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "a view name must be a str, not %.100s",
                     Py_TYPE(name)->tp_name);
        return -1;
    }
    return 0;
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
PyObject *buffer_store_view(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    BufferObject *self = (BufferObject *)op;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError,
                     "_store_view() takes name, kind and view (%zd given)", nargs);
        return NULL;
    }
    if (check_name(args[0]) < 0 || check_name(args[1]) < 0 ||
        buffer_check_live(self) < 0) {
        return NULL;
    }
    PyObject *entry = view_entry_new(buffer_state(self), args[1], args[2]);
    if (entry == NULL) {
        return NULL;
    }
    if (self->views == NULL && (self->views = PyDict_New()) == NULL) {
        Py_DECREF(entry);
        return NULL;
    }
    /* Replacing an entry may run a destructor; the new one is in first. */
    int rc = PyDict_SetItem(self->views, args[0], entry);
    Py_DECREF(entry);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static ViewEntry *lookup_entry(BufferObject *self, PyObject *name)
{
    if (check_name(name) < 0 || buffer_check_live(self) < 0) {
        return NULL;
    }
    PyObject *entry = self->views ? PyDict_GetItemWithError(self->views, name) : NULL;
    if (entry == NULL) {
        if (!PyErr_Occurred()) {
            missing_view(name);
        }
        return NULL;
    }
    return (ViewEntry *)entry;   /* borrowed */
}

/* _stored_view(name) -> (kind, view); KeyError when there is none. */
PyObject *buffer_stored_view(PyObject *op, PyObject *name)
{
    ViewEntry *entry = lookup_entry((BufferObject *)op, name);
    if (entry == NULL) {
        return NULL;
    }
    return PyTuple_Pack(2, entry->kind, entry->view);
}

/* _forget_view(name): drop the stored view; KeyError when there is none. */
PyObject *buffer_forget_view(PyObject *op, PyObject *name)
{
    BufferObject *self = (BufferObject *)op;
    if (lookup_entry(self, name) == NULL || PyDict_DelItem(self->views, name) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* _view_names() -> list of the stored names, in creation order. */
PyObject *buffer_view_names(PyObject *op, PyObject *Py_UNUSED(unused))
{
    BufferObject *self = (BufferObject *)op;
    if (buffer_check_live(self) < 0) {
        return NULL;
    }
    return self->views ? PyDict_Keys(self->views) : PyList_New(0);
}
