/*
 * class_methods.c -- Buffer's class methods (consume, attach,
 * get_delayed_gc_objects), stored in each class as functions already
 * bound to it.
 *
 * A classmethod makes a new bound method object on every `Buffer.consume`
 * lookup, and the interpreter cannot specialise the lookup of an attribute
 * whose type has __get__.  A function bound once and stored in the class's
 * own __dict__ is a plain callable: the interpreter's attribute cache
 * hands it out as it is, and the call goes straight to the C function.
 * For a call that costs under a hundred nanoseconds that is a tenth of it.
 *
 * Subclasses must still get themselves as `cls` (`Sub.consume(...)` makes
 * a Sub), so Buffer.__init_subclass__ stores copies bound to each new
 * subclass, unless the subclass (or a class between it and Buffer)
 * defines the name itself: a user's override is left alone.
 *
 * In Python terms:
 *
 *     class Buffer:
 *         def __init_subclass__(cls, **kwargs):
 *             super().__init_subclass__(**kwargs)
 *             for name, function in CLASS_METHODS.items():
 *                 if name not in vars(cls) and inherited(cls, name) is a
 *                         copy of function bound to a base:
 *                     setattr(cls, name, MethodType(function, cls))
 *
 * A subclass whose own __init_subclass__ does not call super() (which
 * Python asks every __init_subclass__ to do) stops that chain: its
 * subclasses then get its copies, bound to it.
 */
#include "memmanager.h"

/* Stores def bound to cls in cls's __dict__. */
static int bind_one(PyTypeObject *cls, PyMethodDef *def)
{
    PyObject *bound = PyCMethod_New(def, (PyObject *)cls, NULL, NULL);
    if (bound == NULL) {
        return -1;
    }
    int rc = PyObject_SetAttrString((PyObject *)cls, def->ml_name, bound);
    Py_DECREF(bound);
    return rc;
}

int install_class_methods(PyTypeObject *owner, PyMethodDef *defs)
{
    for (PyMethodDef *def = defs; def->ml_name != NULL; def++) {
        if (bind_one(owner, def) < 0) {
            return -1;
        }
    }
    return 0;
}

/* What cls inherits under name: the first entry along its MRO after cls
 * itself (borrowed), or NULL with no error when none has it. */
static PyObject *inherited(PyTypeObject *cls, PyObject *name)
{
    PyObject *mro = cls->tp_mro;
    for (Py_ssize_t i = 1; mro != NULL && i < PyTuple_GET_SIZE(mro); i++) {
        PyObject *dict = ((PyTypeObject *)PyTuple_GET_ITEM(mro, i))->tp_dict;
        PyObject *found = dict ? PyDict_GetItemWithError(dict, name) : NULL;
        if (found != NULL || PyErr_Occurred()) {
            return found;
        }
    }
    return NULL;
}

/* 1 when cls should get its own copy of def: it does not define the name,
 * and what it inherits is a bound copy of def (not a user's override). */
static int needs_own_copy(PyTypeObject *cls, PyMethodDef *def)
{
    PyObject *name = PyUnicode_InternFromString(def->ml_name);
    if (name == NULL) {
        return -1;
    }
    int own = PyDict_Contains(cls->tp_dict, name);
    PyObject *base_copy = own == 0 ? inherited(cls, name) : NULL;
    int rc = own < 0 || (base_copy == NULL && PyErr_Occurred()) ? -1
             : base_copy != NULL && PyCFunction_Check(base_copy) &&
               PyCFunction_GetFunction(base_copy) == def->ml_meth;
    Py_DECREF(name);
    return rc;
}

/* object.__init_subclass__ and the like, for the classes after Buffer in
 * cls's MRO: super(Buffer, cls).__init_subclass__(**kwargs). */
static int init_subclass_of_bases(PyTypeObject *buffer_type, PyObject *cls,
                                  PyObject *kwargs)
{
    PyObject *super = PyObject_CallFunctionObjArgs((PyObject *)&PySuper_Type,
                                                   (PyObject *)buffer_type, cls, NULL);
    if (super == NULL) {
        return -1;
    }
    PyObject *method = PyObject_GetAttrString(super, "__init_subclass__");
    Py_DECREF(super);
    if (method == NULL) {
        return -1;
    }
    PyObject *empty = PyTuple_New(0);
    PyObject *result = empty ? PyObject_Call(method, empty, kwargs) : NULL;
    Py_XDECREF(empty);
    Py_DECREF(method);
    Py_XDECREF(result);
    return result == NULL ? -1 : 0;
}

PyObject *buffer_init_subclass(PyObject *cls, PyObject *args, PyObject *kwargs)
{
    mm_state *st = mm_state_from_type((PyTypeObject *)cls);
    if (st == NULL) {
        return NULL;
    }
    if (PyTuple_GET_SIZE(args) != 0) {
        PyErr_SetString(PyExc_TypeError,
                        "__init_subclass__() takes keyword arguments only");
        return NULL;
    }
    if (init_subclass_of_bases(st->buffer_type, cls, kwargs) < 0) {
        return NULL;
    }
    for (PyMethodDef *def = buffer_class_methods; def->ml_name != NULL; def++) {
        int needed = needs_own_copy((PyTypeObject *)cls, def);
        if (needed < 0 || (needed && bind_one((PyTypeObject *)cls, def) < 0)) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}
