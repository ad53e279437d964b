/*
 * cached_classmethod.c -- a classmethod that allocates nothing when looked
 * up on the class it was defined on.
 *
 * A plain METH_CLASS method makes a new bound method object on every
 * `Buffer.consume` lookup; for a call as cheap as consume() that object
 * is a large share of the cost.  This descriptor binds the
 * C function to its defining class once and hands that same object out;
 * looked up on a subclass (or an instance of one) it binds afresh, so
 * subclasses still get themselves as `cls`.
 *
 * In Python terms:
 *
 *     class cached_classmethod:
 *         def __init__(self, function, owner):
 *             self.owner, self.bound = owner, function.__get__(owner)
 *         def __get__(self, obj, cls=None):
 *             cls = cls or type(obj)
 *             return self.bound if cls is self.owner else function.__get__(cls)
 *
 * Layer: core.  Calls the C API only.
 */
#include "core/core.h"

typedef struct {
    PyObject_HEAD
    PyMethodDef *def;      /* static, METH_CLASS-style signature */
    PyObject *owner;       /* strong: the defining class */
    PyObject *bound;       /* strong: def bound to owner */
} CachedClassMethod;

/* The class a lookup binds to: cls, or the type of obj; refused unless it
 * is the owner or a subclass of it.  The C functions behind these
 * descriptors take cls for a Buffer type (they allocate through
 * cls->tp_alloc and read the module state from it), so binding an int, or
 * another type of the module, would build objects of the wrong layout.
 * (The `__get__` wrapper refuses (None, None); a NULL pair is refused here
 * too, for C callers.) */
static PyObject *ccm_get(PyObject *op, PyObject *obj, PyObject *cls)
{
    CachedClassMethod *self = (CachedClassMethod *)op;
    if (cls == NULL || cls == Py_None) {
        if (obj == NULL || obj == Py_None) {
            PyErr_SetString(PyExc_TypeError, "__get__(None, None) is invalid");
            return NULL;
        }
        cls = (PyObject *)Py_TYPE(obj);
    }
    if (self->owner == NULL || self->bound == NULL) {   /* cleared by the collector */
        PyErr_SetString(PyExc_TypeError, "the class method is being collected");
        return NULL;
    }
    if (cls == self->owner) {
        return Py_NewRef(self->bound);
    }
    if (!PyType_Check(cls) ||
        !PyType_IsSubtype((PyTypeObject *)cls, (PyTypeObject *)self->owner)) {
        PyErr_Format(PyExc_TypeError,
                     "descriptor '%s' of '%.100s' binds only to it or a "
                     "subclass, not %s'%.100s'",
                     self->def->ml_name, ((PyTypeObject *)self->owner)->tp_name,
                     PyType_Check(cls) ? "the type " : "an object of type ",
                     PyType_Check(cls) ? ((PyTypeObject *)cls)->tp_name
                                       : Py_TYPE(cls)->tp_name);
        return NULL;
    }
    return PyCMethod_New(self->def, cls, NULL, NULL);
}

static int ccm_traverse(PyObject *op, visitproc visit, void *arg)
{
    CachedClassMethod *self = (CachedClassMethod *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->owner);
    Py_VISIT(self->bound);
    return 0;
}

static int ccm_clear(PyObject *op)
{
    CachedClassMethod *self = (CachedClassMethod *)op;
    Py_CLEAR(self->owner);
    Py_CLEAR(self->bound);
    return 0;
}

static void ccm_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    ccm_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *ccm_doc(PyObject *op, void *Py_UNUSED(closure))
{
    PyObject *bound = ((CachedClassMethod *)op)->bound;
    if (bound == NULL) {
        Py_RETURN_NONE;
    }
    return PyObject_GetAttrString(bound, "__doc__");
}

static PyGetSetDef ccm_getset[] = {
    {"__doc__", ccm_doc, NULL, NULL, NULL},
    {NULL},
};

static PyType_Slot ccm_slots[] = {
    {Py_tp_descr_get, ccm_get},
    {Py_tp_traverse, ccm_traverse},
    {Py_tp_clear, ccm_clear},
    {Py_tp_dealloc, ccm_dealloc},
    {Py_tp_getset, ccm_getset},
    {0, NULL},
};

PyType_Spec mm_cached_classmethod_spec = {
    .name = "memmanager._core.cached_classmethod",
    .basicsize = sizeof(CachedClassMethod),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = ccm_slots,
};

static int install_one(mm_state *st, PyTypeObject *owner, PyMethodDef *def)
{
    CachedClassMethod *self = PyObject_GC_New(CachedClassMethod,
                                              st->cached_classmethod_type);
    if (self == NULL) {
        return -1;
    }
    self->def = def;
    self->owner = Py_NewRef(owner);
    self->bound = PyCMethod_New(def, (PyObject *)owner, NULL, NULL);
    PyObject_GC_Track(self);
    int rc = self->bound == NULL ? -1
             : PyDict_SetItemString(owner->tp_dict, def->ml_name, (PyObject *)self);
    Py_DECREF(self);
    return rc;
}

int mm_install_cached_classmethods(mm_state *st, PyTypeObject *owner, PyMethodDef *defs)
{
    for (PyMethodDef *def = defs; def->ml_name != NULL; def++) {
        if (install_one(st, owner, def) < 0) {
            return -1;
        }
    }
    PyType_Modified(owner);
    return 0;
}
