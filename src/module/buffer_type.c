/*
 * buffer_type.c -- the memmanager.Buffer type as Python sees it: its
 * attributes, its methods and its slots, gathered from every layer (the
 * life of a buffer is buffer/'s, its buffer protocol buffer/access.c's,
 * consume() and __dlpack__ interop/'s, the device methods cuda/'s).
 *
 * The type is immutable (Py_TPFLAGS_IMMUTABLETYPE) like every type of the
 * module: nothing can rebind Buffer.release.  The methods written in
 * Python (views, pickling) are C methods here too, which call the
 * functions memmanager/__init__.py hands to _set_python_methods() once,
 * at import.
 *
 * Layer: module.  May call every layer.
 */
#include "module/module.h"

#include <inttypes.h>
#include <stdio.h>

/* ------------------------------------------------------------------ */
/* Methods written in Python                                           */
/* ------------------------------------------------------------------ */

/* The names _set_python_methods() must be given, one per forwarder, in
 * the order of st->python_methods. */
enum {
    PM_CREATE_VIEW, PM_GET_VIEW, PM_DELETE_VIEW, PM_CLONE_VIEW, PM_VIEW_NAMES,
    PM_REDUCE_EX, PM_COPY, PM_DEEPCOPY, PM_COUNT
};
static const char *const python_method_names[] = {
    "create_view", "get_view", "delete_view", "clone_view", "view_names",
    "__reduce_ex__", "__copy__", "__deepcopy__",
};
_Static_assert(PM_COUNT == MM_PYTHON_METHOD_COUNT &&
               sizeof(python_method_names) / sizeof(python_method_names[0]) == PM_COUNT,
               "one name per Python-written method");

/* Calls the Python function installed for method with (self, *args,
 * **kwargs). */
static PyObject *call_python_method(PyObject *self, int method,
                                    PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames)
{
    mm_state *st = mm_state_from_type(Py_TYPE(self));
    if (st == NULL) {
        return NULL;
    }
    PyObject *function = st->python_methods[method];
    if (function == NULL) {
        PyErr_Format(PyExc_RuntimeError,
                     "Buffer.%s is not available: memmanager was not imported",
                     python_method_names[method]);
        return NULL;
    }
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject **stack = PyMem_Malloc(sizeof(PyObject *) * (size_t)(nargs + nkw + 1));
    if (stack == NULL) {
        return PyErr_NoMemory();
    }
    Py_INCREF(function);   /* the table may be replaced while it runs */
    stack[0] = self;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++) {
        stack[i + 1] = args[i];
    }
    PyObject *result = PyObject_Vectorcall(function, stack, (size_t)nargs + 1, kwnames);
    Py_DECREF(function);
    PyMem_Free(stack);
    return result;
}

#define PYTHON_METHOD(cname, method)                                          \
    static PyObject *forward_##cname(PyObject *self, PyObject *const *args,   \
                                     Py_ssize_t nargs, PyObject *kwnames)     \
    {                                                                         \
        return call_python_method(self, method, args, nargs, kwnames);        \
    }

PYTHON_METHOD(create_view, PM_CREATE_VIEW)
PYTHON_METHOD(get_view, PM_GET_VIEW)
PYTHON_METHOD(delete_view, PM_DELETE_VIEW)
PYTHON_METHOD(clone_view, PM_CLONE_VIEW)
PYTHON_METHOD(view_names, PM_VIEW_NAMES)
PYTHON_METHOD(reduce_ex, PM_REDUCE_EX)
PYTHON_METHOD(copy, PM_COPY)
PYTHON_METHOD(deepcopy, PM_DEEPCOPY)

/* _set_python_methods(table): table maps each name above to a callable.
 * The functions are kept in the state's array, which the module visits:
 * no container of them reaches the collector or Python code.  Nothing
 * changes unless every name is there; the functions replaced go last,
 * once the array is whole (their destructors may run Python code). */
PyObject *mm_set_python_methods(mm_state *st, PyObject *table)
{
    PyObject *functions[PM_COUNT] = {NULL};
    PyObject *result = NULL;
    if (!PyDict_Check(table)) {
        PyErr_SetString(PyExc_TypeError, "_set_python_methods() takes a dict");
        return NULL;
    }
    for (size_t i = 0; i < PM_COUNT; i++) {
        PyObject *key = PyUnicode_FromString(python_method_names[i]);
        if (key == NULL) {
            goto done;
        }
        /* A strong reference at once: a hostile key's __eq__, run by the
         * next lookup, may empty the table. */
        functions[i] = Py_XNewRef(PyDict_GetItemWithError(table, key));
        Py_DECREF(key);
        if (functions[i] == NULL && PyErr_Occurred()) {
            goto done;
        }
        if (functions[i] == NULL || !PyCallable_Check(functions[i])) {
            PyErr_Format(PyExc_TypeError, "_set_python_methods() needs a callable "
                         "for %s", python_method_names[i]);
            goto done;
        }
    }
    for (size_t i = 0; i < PM_COUNT; i++) {
        PyObject *previous = st->python_methods[i];
        st->python_methods[i] = functions[i];
        functions[i] = previous;
    }
    result = Py_NewRef(Py_None);
done:
    for (size_t i = 0; i < PM_COUNT; i++) {
        Py_XDECREF(functions[i]);
    }
    return result;
}

/* ------------------------------------------------------------------ */
/* Accessors                                                           */
/* ------------------------------------------------------------------ */

#define LIVE_OR_NULL(op) \
    if (mm_buffer_check_live((BufferObject *)(op)) < 0) { return NULL; }

static PyObject *get_address(PyObject *op, void *Py_UNUSED(closure))
{
    LIVE_OR_NULL(op);
    return PyLong_FromVoidPtr(((BufferObject *)op)->data);
}

static PyObject *get_nbytes(PyObject *op, void *Py_UNUSED(closure))
{
    LIVE_OR_NULL(op);
    return PyLong_FromSsize_t(((BufferObject *)op)->nbytes);
}

static PyObject *get_itemsize(PyObject *op, void *Py_UNUSED(closure))
{
    LIVE_OR_NULL(op);
    return PyLong_FromSsize_t(((BufferObject *)op)->item_size);
}

static PyObject *get_num_items(PyObject *op, void *Py_UNUSED(closure))
{
    LIVE_OR_NULL(op);
    return PyLong_FromSsize_t(((BufferObject *)op)->num_items);
}

static PyObject *get_identifier(PyObject *op, void *Py_UNUSED(closure))
{
    return mm_buffer_identifier((BufferObject *)op);
}

static PyObject *get_allocator(PyObject *op, void *Py_UNUSED(closure))
{
    LIVE_OR_NULL(op);
    return Py_NewRef(((BufferObject *)op)->allocator->name);
}

static PyObject *get_readonly(PyObject *op, void *Py_UNUSED(closure))
{
    LIVE_OR_NULL(op);
    return PyBool_FromLong(((BufferObject *)op)->readonly);
}

static PyObject *get_delayed_gc(PyObject *op, void *Py_UNUSED(closure))
{
    LIVE_OR_NULL(op);
    return PyBool_FromLong(((BufferObject *)op)->pinned);
}

static PyObject *get_released(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((BufferObject *)op)->released);
}

static PyObject *get_exports(PyObject *op, void *Py_UNUSED(closure))
{
    LIVE_OR_NULL(op);
    return PyLong_FromSsize_t(((BufferObject *)op)->exports);
}

/* The Perl-named methods are the same getters, called. */
static PyObject *method_get_buffer(PyObject *op, PyObject *Py_UNUSED(a))
{
    return get_address(op, NULL);
}

static PyObject *method_get_buffer_size(PyObject *op, PyObject *Py_UNUSED(a))
{
    return get_nbytes(op, NULL);
}

static PyObject *method_get_element_size(PyObject *op, PyObject *Py_UNUSED(a))
{
    return get_itemsize(op, NULL);
}

static PyObject *method_get_num_of_elements(PyObject *op, PyObject *Py_UNUSED(a))
{
    return get_num_items(op, NULL);
}

static PyObject *method_get_delayed_gc_objects(PyObject *cls, PyObject *Py_UNUSED(a))
{
    mm_state *st = mm_state_from_type((PyTypeObject *)cls);
    return st ? mm_delayed_gc_identifiers(st) : NULL;
}

static const char *state_name(BufferObject *self, char *scratch, size_t size)
{
    if (self->exports > 0) {
        snprintf(scratch, size, "exported(%zd)", self->exports);
        return scratch;
    }
    return self->pinned ? "pinned" : "live";
}

static PyObject *buffer_repr(PyObject *op)
{
    BufferObject *self = (BufferObject *)op;
    const char *type_name = Py_TYPE(op)->tp_name;
    if (self->released) {
        return PyUnicode_FromFormat("<%s allocator=%R state=released>",
                                    type_name, self->allocator->name);
    }
    char scratch[48], address[32];
    snprintf(address, sizeof(address), "0x%" PRIxPTR, (uintptr_t)self->data);
    return PyUnicode_FromFormat("<%s allocator=%R address=%s nbytes=%zd state=%s>",
                                type_name, self->allocator->name, address,
                                self->nbytes, state_name(self, scratch, sizeof(scratch)));
}

/* ------------------------------------------------------------------ */
/* Type definition                                                     */
/* ------------------------------------------------------------------ */

static PyGetSetDef buffer_getset[] = {
    {"address", get_address, NULL, "Start address of the memory, an int.", NULL},
    {"nbytes", get_nbytes, NULL, "Size in bytes: num_items * item_size.", NULL},
    {"itemsize", get_itemsize, NULL, "Size of one item in bytes.", NULL},
    {"num_items", get_num_items, NULL, "Number of items.", NULL},
    {"identifier", get_identifier, NULL,
     "An int unique for the life of the process, never reused (not id()):\n"
     "the key used by death stubs, delayed GC and live_buffers().", NULL},
    {"allocator", get_allocator, NULL, "Name of the allocator that made the memory.", NULL},
    {"readonly", get_readonly, NULL, "True when the memory may not be written.", NULL},
    {"delayed_gc", get_delayed_gc, NULL, "True while the buffer is pinned.", NULL},
    {"released", get_released, NULL, "True once the memory has been freed.", NULL},
    {"exports", get_exports, NULL, "Number of live buffer-protocol exports.", NULL},
    {"name", mm_buffer_get_name, NULL,
     "The shared memory name (SharedMemory buffers); None for the others.", NULL},
    {NULL},
};

static PyMethodDef buffer_methods[] = {
    {"get_buffer", method_get_buffer, METH_NOARGS,
     "get_buffer($self, /)\n--\n\nStart address of the memory (the Perl name of .address)."},
    {"get_buffer_size", method_get_buffer_size, METH_NOARGS,
     "get_buffer_size($self, /)\n--\n\nSize in bytes (the Perl name of .nbytes)."},
    {"get_element_size", method_get_element_size, METH_NOARGS,
     "get_element_size($self, /)\n--\n\nItem size in bytes (the Perl name of .itemsize)."},
    {"get_num_of_elements", method_get_num_of_elements, METH_NOARGS,
     "get_num_of_elements($self, /)\n--\n\nNumber of items (the Perl name of .num_items)."},
    {"extract_buffer_region", (PyCFunction)(void (*)(void))mm_buffer_extract_region,
     METH_FASTCALL | METH_KEYWORDS,
     "extract_buffer_region($self, start=None, end=None)\n--\n\n"
     "A bytes copy of [start, end], end inclusive (the Perl method).\n"
     "Returns None when end >= nbytes, start > end or either is negative."},
    {"region", (PyCFunction)(void (*)(void))mm_buffer_region,
     METH_FASTCALL | METH_KEYWORDS,
     "region($self, start=0, stop=None, *, readonly=False)\n--\n\n"
     "A zero-copy memoryview of [start, stop).  It holds an export."},
    {"__dlpack__", (PyCFunction)(void (*)(void))mm_buffer_dlpack,
     METH_FASTCALL | METH_KEYWORDS,
     "__dlpack__($self, /, *, stream=None, max_version=None, dl_device=None, "
     "copy=None)\n--\n\n"
     "The bytes as a DLPack capsule (1-D uint8 on the CPU); it holds an export."},
    {"__dlpack_device__", mm_buffer_dlpack_device, METH_NOARGS,
     "__dlpack_device__($self, /)\n--\n\n(kDLCPU, 0), that is (1, 0)."},
    {"_store_view", (PyCFunction)(void (*)(void))mm_buffer_store_view, METH_FASTCALL,
     "_store_view($self, name, kind, view, /)\n--\n\nStore a view (create_view)."},
    {"_stored_view", mm_buffer_stored_view, METH_O,
     "_stored_view($self, name, /)\n--\n\n(kind, view) stored under name."},
    {"_forget_view", mm_buffer_forget_view, METH_O,
     "_forget_view($self, name, /)\n--\n\nDrop the view stored under name."},
    {"_view_names", mm_buffer_view_names, METH_NOARGS,
     "_view_names($self, /)\n--\n\nNames of the stored views."},
    {"_view_export", mm_buffer_view_export, METH_NOARGS,
     "_view_export($self, /)\n--\n\nAn export no Python code can end early (NumPy views)."},
    {"device_movement", (PyCFunction)(void (*)(void))mm_buffer_device_movement,
     METH_FASTCALL | METH_KEYWORDS,
     "device_movement($self, action, direction, *, device='NVIDIA_GPU', "
     "device_id=0, start=0, end=None)\n--\n\n"
     "Map [start, end) of the buffer to a GPU, with the OpenMP target-data\n"
     "meaning of (action, direction): enter to/tofrom/alloc, exit\n"
     "from/tofrom/release/delete, update to/from.  See docs/gpu.md."},
    {"device_view", (PyCFunction)(void (*)(void))mm_buffer_device_view,
     METH_FASTCALL | METH_KEYWORDS,
     "device_view($self, device_id=0)\n--\n\n"
     "The device copy on device_id, with __cuda_array_interface__ and DLPack.\n"
     "It counts as an export while it lives."},
    {"device_mappings", mm_buffer_device_mappings, METH_NOARGS,
     "device_mappings($self, /)\n--\n\n"
     "{device_id: {'device_address', 'nbytes', 'refcount', 'views'}} of the\n"
     "buffer's device copies."},
    /* Written in Python (memmanager/_views.py, _pickle.py), called
     * through the table _set_python_methods() installed. */
    {"create_view", (PyCFunction)(void (*)(void))forward_create_view,
     METH_FASTCALL | METH_KEYWORDS,
     "create_view($self, kind, *, view_name=None, **options)\n--\n\n"
     "Make a zero-copy view of kind, store it under view_name, return it."},
    {"get_view", (PyCFunction)(void (*)(void))forward_get_view,
     METH_FASTCALL | METH_KEYWORDS,
     "get_view($self, name)\n--\n\nThe view stored under name (KeyError if none)."},
    {"delete_view", (PyCFunction)(void (*)(void))forward_delete_view,
     METH_FASTCALL | METH_KEYWORDS,
     "delete_view($self, name)\n--\n\nForget the view stored under name."},
    {"clone_view", (PyCFunction)(void (*)(void))forward_clone_view,
     METH_FASTCALL | METH_KEYWORDS,
     "clone_view($self, name)\n--\n\nAn independent copy of the view stored under name."},
    {"view_names", (PyCFunction)(void (*)(void))forward_view_names,
     METH_FASTCALL | METH_KEYWORDS,
     "view_names($self, /)\n--\n\nNames of the stored views, oldest first."},
    {"__reduce_ex__", (PyCFunction)(void (*)(void))forward_reduce_ex,
     METH_FASTCALL | METH_KEYWORDS,
     "__reduce_ex__($self, protocol)\n--\n\n"
     "SharedMemory buffers pickle by name, the others by value."},
    {"__copy__", (PyCFunction)(void (*)(void))forward_copy,
     METH_FASTCALL | METH_KEYWORDS,
     "__copy__($self, /)\n--\n\nA private copy, whatever the allocator."},
    {"__deepcopy__", (PyCFunction)(void (*)(void))forward_deepcopy,
     METH_FASTCALL | METH_KEYWORDS,
     "__deepcopy__($self, memo)\n--\n\nA private copy, whatever the allocator."},
    {"flush", mm_buffer_flush, METH_NOARGS,
     "flush($self, /)\n--\n\nWrite the buffer's changes to its file and wait "
     "for them (msync):\nMappedFile buffers.  Memory that is not file-backed "
     "has nothing to flush:\nfor every other allocator this does nothing.  "
     "ValueError once released."},
    {"release", mm_buffer_release_method, METH_NOARGS,
     "release($self, /)\n--\n\nRun the death stub and free the memory now. Idempotent."},
    {"__enter__", mm_buffer_enter, METH_NOARGS, "__enter__($self, /)\n--\n\n"},
    {"__exit__", (PyCFunction)(void (*)(void))mm_buffer_exit, METH_FASTCALL,
     "__exit__($self, *exc_info)\n--\n\nRelease the buffer."},
    {NULL},
};

/* Class methods, installed as cached_classmethod descriptors (no bound
 * method object per lookup on Buffer itself). */
static PyMethodDef buffer_class_methods[] = {
    {"get_delayed_gc_objects", method_get_delayed_gc_objects, METH_NOARGS,
     "get_delayed_gc_objects($cls, /)\n--\n\nIdentifiers of the pinned buffers."},
    {"consume", (PyCFunction)(void (*)(void))mm_buffer_consume,
     METH_FASTCALL | METH_KEYWORDS,
     "consume($cls, source, num_items, item_size, options=None, /, *, "
     "allocator=None, delayed_gc=True, death_stub=None, copy=False, "
     "**allocator_options)\n--\n\n"
     "Adopt memory that exists already (see the ownership guide)."},
    {"attach", (PyCFunction)(void (*)(void))mm_buffer_attach,
     METH_FASTCALL | METH_KEYWORDS,
     "attach($cls, name, num_items=None, item_size=1, *, readonly=False)\n--\n\n"
     "Map the shared memory called name (made by a SharedMemory buffer,\n"
     "here or in another process); num_items=None takes as many items as it\n"
     "holds.  FileNotFoundError when it does not exist."},
    {NULL},
};

static PyMemberDef buffer_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(BufferObject, weakreflist), READONLY},
    {NULL},
};

PyDoc_STRVAR(buffer_doc,
"Buffer(num_items, item_size, options=None, /, *, allocator='PyAlloc',\n"
"       init_value=None, delayed_gc=False, death_stub=None, **allocator_options)\n"
"--\n\n"
"A block of num_items * item_size bytes from a pluggable allocator.");

static PyType_Slot buffer_slots[] = {
    {Py_tp_doc, (void *)buffer_doc},
    {Py_tp_new, mm_buffer_new},
    {Py_tp_dealloc, mm_buffer_dealloc},
    {Py_tp_finalize, mm_buffer_finalize},
    {Py_tp_traverse, mm_buffer_traverse},
    {Py_tp_clear, mm_buffer_clear},
    {Py_tp_repr, buffer_repr},
    {Py_tp_getset, buffer_getset},
    {Py_tp_methods, buffer_methods},
    {Py_tp_members, buffer_members},
    {Py_bf_getbuffer, mm_buffer_getbuffer},
    {Py_bf_releasebuffer, mm_buffer_releasebuffer},
    {Py_mp_length, mm_buffer_length},
    {Py_mp_subscript, mm_buffer_subscript},
    {Py_mp_ass_subscript, mm_buffer_ass_subscript},
    {Py_sq_length, mm_buffer_length},
    {Py_sq_item, mm_buffer_item},
    {0, NULL},
};

PyType_Spec mm_buffer_type_spec = {
    .name = "memmanager.Buffer",
    .basicsize = sizeof(BufferObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = buffer_slots,
};

/* What PyType_FromModuleAndSpec cannot express: vectorcall construction
 * and the cached class methods. */
int mm_buffer_finish_type(mm_state *st, PyTypeObject *type)
{
    type->tp_vectorcall = mm_buffer_vectorcall;
    return mm_install_cached_classmethods(st, type, buffer_class_methods);
}
