/*
 * python.c -- the allocator kind behind Python plug-ins: every
 * call into the plug-in, and the validation of what comes back.
 *
 * A plug-in is any object (module, class, instance) with
 *
 *     malloc(num_items, item_size, init_byte, options) -> handle
 *     free(address)
 *     get_buffer_address(handle) -> int
 *     consume(source, length, options) -> handle        (optional)
 *
 * (the Perl Task::MemManager allocator contract).  init_byte is None or
 * 0..255 and the plug-in writes it; options is a fresh dict holding
 * exactly the extra keywords.  The handle is kept, as the block's cookie,
 * until free() has been called, so a handle that owns the memory (a
 * ctypes array, a bytearray) keeps it alive.
 *
 * Validation: malloc() returning None is a MemoryError, consume()
 * returning None a ValueError; the address must be an int (TypeError
 * otherwise), positive
 * and a valid pointer for the whole block (ValueError), and must not
 * overlap a live buffer (OverlapError).  A refused result is dropped
 * without calling free(): memmanager never frees an address it did not
 * accept.  Exceptions raised by the plug-in propagate unchanged, except
 * from free(), which goes to sys.unraisablehook (freeing never raises).
 *
 * All of this runs with the GIL held (the allocator has needs_gil).
 *
 * Layer: allocators.  May call core/.
 */
#include "allocators/allocators.h"

enum { METHOD_MALLOC, METHOD_FREE, METHOD_ADDRESS, METHOD_CONSUME };

static PyObject *plugin_method(AllocatorObject *self, int which)
{
    if (self->plugin_methods == NULL) {
        PyErr_Format(PyExc_RuntimeError,
                     "the plug-in of allocator %U has been cleared", self->name);
        return NULL;
    }
    return PyTuple_GET_ITEM(self->plugin_methods, which);
}

static PyObject *options_or_empty(PyObject *options)
{
    return options != NULL ? PyDict_Copy(options) : PyDict_New();
}

/* The address the plug-in gave, checked to be a usable block start. */
static int validate_address(AllocatorObject *self, PyObject *value, size_t size,
                            uintptr_t *out)
{
    if (PyBool_Check(value) || !PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError,
                     "plug-in allocator %U: get_buffer_address() returned "
                     "%.100s, not an int", self->name, Py_TYPE(value)->tp_name);
        return -1;
    }
    if (mm_long_sign(value) <= 0) {
        PyErr_Format(PyExc_ValueError,
                     "plug-in allocator %U: get_buffer_address() returned %R, "
                     "not a valid address", self->name, value);
        return -1;
    }
    unsigned long long address = PyLong_AsUnsignedLongLong(value);
    if ((address == (unsigned long long)-1 && PyErr_Occurred()) ||
        address > UINTPTR_MAX || (uintptr_t)address > UINTPTR_MAX - size) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError,
                     "plug-in allocator %U: get_buffer_address() returned %R, "
                     "beyond the address space for %zu bytes", self->name, value, size);
        return -1;
    }
    *out = (uintptr_t)address;
    return 0;
}

static int refuse_overlap(AllocatorObject *self, uintptr_t start, size_t size)
{
    region_info other;
    if (!mm_region_registry_find_overlap(start, start + size, &other)) {
        return 0;
    }
    mm_state *st = mm_state_from_type(Py_TYPE(self));
    if (st != NULL) {
        mm_raise_overlap(st, start, start + size, &other);
    }
    return -1;
}

/* A block's cookie: the plug-in's handle, and an export of it when it has
 * the buffer protocol.  The export keeps the handle's memory where it is:
 * a bytearray handle, say, reachable through gc.get_referents(buffer),
 * cannot be cleared or resized under the buffer while it is held. */
typedef struct {
    PyObject *handle;       /* strong */
    Py_buffer view;         /* valid when has_view */
    int has_view;
} python_cookie;

static void python_cookie_free(python_cookie *cookie)
{
    if (cookie->has_view) {
        PyBuffer_Release(&cookie->view);
    }
    Py_DECREF(cookie->handle);
    PyMem_Free(cookie);
}

/* Steals handle; NULL with an exception when out of memory. */
static python_cookie *python_cookie_new(PyObject *handle)
{
    python_cookie *cookie = PyMem_Malloc(sizeof(*cookie));
    if (cookie == NULL) {
        Py_DECREF(handle);
        PyErr_NoMemory();
        return NULL;
    }
    cookie->handle = handle;
    cookie->has_view = 0;
    if (PyObject_CheckBuffer(handle)) {
        if (PyObject_GetBuffer(handle, &cookie->view, PyBUF_SIMPLE) == 0) {
            cookie->has_view = 1;
        }
        else {
            PyErr_Clear();   /* a handle that will not export: as before */
        }
    }
    return cookie;
}

/* Turns a handle into a block: its address, validated.  Steals handle. */
static int take_handle(AllocatorObject *self, PyObject *handle, size_t size,
                       mm_raw *out)
{
    uintptr_t address;
    python_cookie *cookie = python_cookie_new(handle);
    if (cookie == NULL) {
        return -1;
    }
    PyObject *get_address = plugin_method(self, METHOD_ADDRESS);
    PyObject *value = get_address ? PyObject_CallOneArg(get_address, handle) : NULL;
    if (value == NULL || validate_address(self, value, size, &address) < 0 ||
        refuse_overlap(self, address, size) < 0) {
        Py_XDECREF(value);
        python_cookie_free(cookie);
        return -1;
    }
    Py_DECREF(value);
    out->base = (char *)address;
    out->cookie = cookie;
    return 0;
}

static int python_parse_options(AllocatorObject *Py_UNUSED(self),
                                PyObject *options, mm_request *req)
{
    req->options = options;   /* all of them go to the plug-in */
    return 0;
}

static int call_malloc(AllocatorObject *self, const mm_request *req,
                       size_t size, mm_raw *out)
{
    PyObject *malloc_method = plugin_method(self, METHOD_MALLOC);
    if (malloc_method == NULL) {
        return -1;
    }
    PyObject *init = req->init_byte < 0 ? Py_NewRef(Py_None)
                                        : PyLong_FromLong(req->init_byte);
    PyObject *options = options_or_empty(req->options);
    PyObject *handle = NULL;
    if (init != NULL && options != NULL) {
        handle = PyObject_CallFunction(malloc_method, "nnOO", req->num_items,
                                       req->item_size, init, options);
    }
    Py_XDECREF(init);
    Py_XDECREF(options);
    if (handle == Py_None) {   /* the Perl convention for "no memory" */
        Py_DECREF(handle);
        PyErr_Format(PyExc_MemoryError,
                     "plug-in allocator %U: malloc() returned None for %zu bytes",
                     self->name, size);
        return -1;
    }
    return handle == NULL ? -1 : take_handle(self, handle, size, out);
}

/* The plug-in's code may re-register the name, dropping the registry's
 * reference to self: hold one of our own while it runs. */
static int python_allocate(AllocatorObject *self, const mm_request *req,
                           size_t size, int Py_UNUSED(zero), mm_raw *out)
{
    Py_INCREF(self);
    Py_XINCREF(self->plugin_methods);
    PyObject *methods = self->plugin_methods;
    int rc = call_malloc(self, req, size, out);
    Py_XDECREF(methods);
    Py_DECREF(self);
    return rc;
}

static int call_consume(AllocatorObject *self, PyObject *source, size_t size,
                        PyObject *options, mm_raw *out)
{
    PyObject *consume_method = plugin_method(self, METHOD_CONSUME);
    if (consume_method == NULL) {
        return -1;
    }
    if (consume_method == Py_None) {
        PyErr_Format(PyExc_TypeError,
                     "Allocator %U cannot consume: its plug-in has no consume()",
                     self->name);
        return -1;
    }
    PyObject *opts = options_or_empty(options);
    PyObject *handle = opts ? PyObject_CallFunction(consume_method, "OnO", source,
                                                    (Py_ssize_t)size, opts)
                            : NULL;
    Py_XDECREF(opts);
    if (handle == Py_None) {
        Py_DECREF(handle);
        PyErr_Format(PyExc_ValueError,
                     "plug-in allocator %U: consume() returned None", self->name);
        return -1;
    }
    return handle == NULL ? -1 : take_handle(self, handle, size, out);
}

static int python_consume(AllocatorObject *self, PyObject *source, size_t size,
                          PyObject *options, mm_raw *out)
{
    Py_INCREF(self);
    Py_XINCREF(self->plugin_methods);
    PyObject *methods = self->plugin_methods;
    int rc = call_consume(self, source, size, options, out);
    Py_XDECREF(methods);
    Py_DECREF(self);
    return rc;
}

/* Never raises: the plug-in's errors go to sys.unraisablehook, and the
 * caller's exception, if any, is kept. */
static void python_release(AllocatorObject *self, char *base,
                           size_t Py_UNUSED(size), void *cookie)
{
    mm_saved_error raised;
    mm_err_save(&raised);
    PyObject *free_method = self->plugin_methods
        ? PyTuple_GET_ITEM(self->plugin_methods, METHOD_FREE) : NULL;
    if (free_method != NULL) {
        Py_INCREF(free_method);
        PyObject *address = PyLong_FromVoidPtr(base);
        PyObject *result = address ? PyObject_CallOneArg(free_method, address) : NULL;
        if (result == NULL) {
            PyErr_WriteUnraisable(free_method);
        }
        Py_XDECREF(result);
        Py_XDECREF(address);
        Py_DECREF(free_method);
    }
    if (cookie != NULL) {
        python_cookie_free(cookie);   /* the handle, after free() */
    }
    mm_err_restore(&raised);
}

/* A handle we hold an export of is not shown to the collector, which
 * could clear it (a memoryview drops its memory in tp_clear even while
 * exported): it looks referenced from outside, and a cycle through it is
 * not collected.  Other handles take part in cycles as usual. */
static int python_visit_cookie(void *cookie, visitproc visit, void *arg)
{
    python_cookie *c = cookie;
    if (!c->has_view) {
        Py_VISIT(c->handle);
    }
    return 0;
}

const mm_allocator_ops mm_python_ops = {
    .kind = "python",
    .parse_options = python_parse_options,
    .allocate = python_allocate,
    .release = python_release,
    .consume = python_consume,
    .visit_cookie = python_visit_cookie,
};
