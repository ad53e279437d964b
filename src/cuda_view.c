/*
 * cuda_view.c -- Buffer.device_view(device_id) and the DeviceView type: a
 * buffer's copy on one GPU, handed to CuPy, PyTorch or Numba without a
 * copy through __cuda_array_interface__ (version 3) and DLPack (kDLCUDA).
 *
 * In Python terms:
 *
 *     class DeviceView:
 *         def __init__(self, buffer, mapping):
 *             self.buffer = buffer; buffer.exports += 1; mapping.views += 1
 *         __cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1",
 *             "data": (device_address, readonly), "version": 3, ...}
 *         def __dlpack__(self, *, stream=None, max_version=None,
 *                        dl_device=None, copy=None): return capsule
 *         def __dlpack_device__(self): return (kDLCUDA, device_id)
 *
 * Ownership rules
 * ---------------
 * - A view holds a strong reference to its Buffer and counts as one of its
 *   exports, so the buffer can neither die nor be released while the view
 *   lives; the view also counts in its mapping's `views`, so an exit that
 *   would free the device copy is refused (BufferError).  A view of memory
 *   that is already on the device (CudaDevice, CudaManaged) has no mapping.
 * - Consumers keep the view alive: CuPy and Numba hold the object whose
 *   __cuda_array_interface__ they read; a DLPack capsule's manager_ctx
 *   holds a strong reference to the view until the consumer's deleter.
 * - The deleter may run on any thread (it takes the GIL) and after the
 *   interpreter is gone (it then does nothing: the process is ending).
 * - detach() is the one way a view lets go (dealloc, or tp_clear when the
 *   collector breaks a cycle through a death stub).
 */
#include "cuda_driver.h"

typedef struct {
    PyObject_HEAD
    BufferObject *buffer;          /* strong; NULL once detached */
    mm_device_mapping *mapping;    /* counted in its views; NULL: native memory */
    cu_device_ptr device_address;
    Py_ssize_t nbytes;
    int device_id;
    int readonly;
} DeviceViewObject;

/* ------------------------------------------------------------------ */
/* Creation and lifetime                                               */
/* ------------------------------------------------------------------ */

static void detach(DeviceViewObject *self)
{
    BufferObject *buffer = self->buffer;
    if (buffer == NULL) {
        return;
    }
    if (self->mapping != NULL) {
        self->mapping->views--;
        self->mapping = NULL;
    }
    buffer->exports--;
    assert(buffer->exports >= 0);
    self->buffer = NULL;
    Py_DECREF(buffer);
}

static PyObject *view_new(mm_state *st, BufferObject *buffer,
                          mm_device_mapping *mapping, int device_id)
{
    DeviceViewObject *self = PyObject_GC_New(DeviceViewObject, st->device_view_type);
    if (self == NULL) {
        return NULL;
    }
    self->buffer = (BufferObject *)Py_NewRef(buffer);
    self->mapping = mapping;
    self->device_address = mapping ? mapping->device_address
                                   : (cu_device_ptr)(uintptr_t)buffer->data;
    self->nbytes = buffer->nbytes;
    self->device_id = device_id;
    self->readonly = buffer->readonly;
    buffer->exports++;
    if (mapping != NULL) {
        mapping->views++;
    }
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

PyObject *buffer_device_view(PyObject *op, PyObject *const *args,
                             Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"device_id", NULL};
    BufferObject *self = (BufferObject *)op;
    PyObject *value;
    int device_id;
    mm_state *st = buffer_state(self);
    if (st == NULL ||
        unpack_arguments("device_view", args, nargs, kwnames, names, 1, &value) < 0 ||
        device_parse_id(value, &device_id) < 0 ||
        buffer_check_live(self) < 0) {
        return NULL;
    }
    mm_cuda_driver *d = device_driver(self);
    if (d == NULL || cuda_driver_require(st, d, device_id) < 0) {
        return NULL;
    }
    mm_device_mapping *mapping = device_mapping_find(self, device_id);
    if (mapping == NULL && !device_memory_is_native(self, device_id)) {
        PyErr_Format(PyExc_ValueError,
                     "the buffer is not mapped to device %d: call "
                     "device_movement('enter', 'to', device_id=%d) first",
                     device_id, device_id);
        return NULL;
    }
    return view_new(st, self, mapping, device_id);
}

static int view_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(((DeviceViewObject *)op)->buffer);
    return 0;
}

static int view_clear(PyObject *op)
{
    detach((DeviceViewObject *)op);
    return 0;
}

static void view_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    detach((DeviceViewObject *)op);
    PyObject_GC_Del(op);
    Py_DECREF(tp);
}

static int check_attached(DeviceViewObject *self)
{
    if (self->buffer == NULL) {
        PyErr_SetString(PyExc_ValueError, "the device view was detached from its buffer");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* __cuda_array_interface__ and plain properties                       */
/* ------------------------------------------------------------------ */

static PyObject *get_cuda_array_interface(PyObject *op, void *Py_UNUSED(closure))
{
    DeviceViewObject *self = (DeviceViewObject *)op;
    if (check_attached(self) < 0) {
        return NULL;
    }
    return Py_BuildValue("{s:(n),s:s,s:(KO),s:i,s:O,s:O}",
                         "shape", self->nbytes,
                         "typestr", "|u1",
                         "data", (unsigned long long)self->device_address,
                         self->readonly ? Py_True : Py_False,
                         "version", 3,
                         "strides", Py_None,
                         "stream", Py_None);
}

static PyObject *get_address(PyObject *op, void *Py_UNUSED(closure))
{
    DeviceViewObject *self = (DeviceViewObject *)op;
    return check_attached(self) < 0 ? NULL
           : PyLong_FromUnsignedLongLong(self->device_address);
}

static PyObject *get_nbytes(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(((DeviceViewObject *)op)->nbytes);
}

static PyObject *get_device_id(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(((DeviceViewObject *)op)->device_id);
}

static PyObject *get_readonly(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((DeviceViewObject *)op)->readonly);
}

static PyObject *get_buffer(PyObject *op, void *Py_UNUSED(closure))
{
    DeviceViewObject *self = (DeviceViewObject *)op;
    return check_attached(self) < 0 ? NULL : Py_NewRef((PyObject *)self->buffer);
}

static PyObject *view_repr(PyObject *op)
{
    DeviceViewObject *self = (DeviceViewObject *)op;
    char address[32];
    snprintf(address, sizeof(address), "0x%llx",
             (unsigned long long)self->device_address);
    return PyUnicode_FromFormat("<memmanager.DeviceView device_id=%d address=%s "
                                "nbytes=%zd%s>", self->device_id, address,
                                self->nbytes, self->buffer ? "" : " detached");
}

/* ------------------------------------------------------------------ */
/* DLPack                                                              */
/* ------------------------------------------------------------------ */

/* One allocation per capsule: the managed tensor first (the deleter gets
 * its address back), then what its pointers point to. */
typedef struct {
    union {
        dlpack_managed_tensor legacy;
        dlpack_managed_tensor_versioned versioned;
    } managed;
    int64_t shape[1];
    int64_t strides[1];
    PyObject *owner;               /* strong: the DeviceView */
} dlpack_holder;

static void holder_free(dlpack_holder *holder)
{
    if (!Py_IsInitialized()) {
        return;    /* after shutdown: touch nothing, the process is ending */
    }
    PyGILState_STATE gil = PyGILState_Ensure();
    Py_XDECREF(holder->owner);
    PyMem_RawFree(holder);
    PyGILState_Release(gil);
}

static void legacy_deleter(dlpack_managed_tensor *tensor)
{
    holder_free(tensor->manager_ctx);
}

static void versioned_deleter(dlpack_managed_tensor_versioned *tensor)
{
    holder_free(tensor->manager_ctx);
}

/* A capsule nobody consumed still owns its tensor. */
static void capsule_destructor(PyObject *capsule)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    if (PyCapsule_IsValid(capsule, DLPACK_CAPSULE_VERSIONED)) {
        dlpack_managed_tensor_versioned *t =
            PyCapsule_GetPointer(capsule, DLPACK_CAPSULE_VERSIONED);
        t->deleter(t);
    }
    else if (PyCapsule_IsValid(capsule, DLPACK_CAPSULE_LEGACY)) {
        dlpack_managed_tensor *t = PyCapsule_GetPointer(capsule, DLPACK_CAPSULE_LEGACY);
        t->deleter(t);
    }
    PyErr_Restore(type, value, traceback);
}

static void fill_tensor(DeviceViewObject *self, dlpack_holder *holder,
                        dlpack_tensor *tensor)
{
    holder->shape[0] = (int64_t)self->nbytes;
    holder->strides[0] = 1;
    tensor->data = (void *)(uintptr_t)self->device_address;
    tensor->device.device_type = DLPACK_DEVICE_CUDA;
    tensor->device.device_id = self->device_id;
    tensor->ndim = 1;
    tensor->dtype.code = DLPACK_DTYPE_UINT;
    tensor->dtype.bits = 8;
    tensor->dtype.lanes = 1;
    tensor->shape = holder->shape;
    tensor->strides = holder->strides;
    tensor->byte_offset = 0;
}

static PyObject *make_capsule(DeviceViewObject *self, int versioned)
{
    dlpack_holder *holder = PyMem_RawCalloc(1, sizeof(dlpack_holder));
    if (holder == NULL) {
        return PyErr_NoMemory();
    }
    holder->owner = Py_NewRef((PyObject *)self);
    const char *name;
    if (versioned) {
        dlpack_managed_tensor_versioned *t = &holder->managed.versioned;
        t->version.major = DLPACK_PRODUCED_MAJOR;
        t->version.minor = DLPACK_PRODUCED_MINOR;
        t->manager_ctx = holder;
        t->deleter = versioned_deleter;
        t->flags = self->readonly ? DLPACK_FLAG_READ_ONLY : 0;
        fill_tensor(self, holder, &t->tensor);
        name = DLPACK_CAPSULE_VERSIONED;
    }
    else {
        dlpack_managed_tensor *t = &holder->managed.legacy;
        t->manager_ctx = holder;
        t->deleter = legacy_deleter;
        fill_tensor(self, holder, &t->tensor);
        name = DLPACK_CAPSULE_LEGACY;
    }
    PyObject *capsule = PyCapsule_New(&holder->managed, name, capsule_destructor);
    if (capsule == NULL) {
        Py_DECREF(holder->owner);
        PyMem_RawFree(holder);
    }
    return capsule;
}

/* max_version: None (legacy capsule) or (major, minor). */
static int wants_versioned(PyObject *max_version)
{
    if (max_version == NULL || max_version == Py_None) {
        return 0;
    }
    if (!PyTuple_Check(max_version) || PyTuple_GET_SIZE(max_version) != 2) {
        PyErr_SetString(PyExc_TypeError,
                        "max_version must be None or a (major, minor) tuple");
        return -1;
    }
    long major = PyLong_AsLong(PyTuple_GET_ITEM(max_version, 0));
    if (major == -1 && PyErr_Occurred()) {
        return -1;
    }
    return major >= 1;
}

static int check_dl_device(DeviceViewObject *self, PyObject *dl_device)
{
    if (dl_device == NULL || dl_device == Py_None) {
        return 0;
    }
    long type, id;
    if (!PyTuple_Check(dl_device) || PyTuple_GET_SIZE(dl_device) != 2) {
        PyErr_SetString(PyExc_TypeError,
                        "dl_device must be None or a (device_type, device_id) tuple");
        return -1;
    }
    type = PyLong_AsLong(PyTuple_GET_ITEM(dl_device, 0));
    id = type == -1 && PyErr_Occurred() ? -1 : PyLong_AsLong(PyTuple_GET_ITEM(dl_device, 1));
    if (PyErr_Occurred()) {
        return -1;
    }
    if (type != DLPACK_DEVICE_CUDA || id != self->device_id) {
        PyErr_Format(PyExc_BufferError, "cannot export to device (%ld, %ld) without a "
                     "copy: this view is on (%d, %d)", type, id, DLPACK_DEVICE_CUDA,
                     self->device_id);
        return -1;
    }
    return 0;
}

static int check_stream(PyObject *stream)
{
    if (stream != NULL && stream != Py_None && !PyLong_Check(stream)) {
        PyErr_Format(PyExc_TypeError, "stream must be None or an int, not %.100s",
                     Py_TYPE(stream)->tp_name);
        return -1;
    }
    return 0;   /* every copy completed before device_movement returned */
}

static PyObject *view_dlpack(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    static const char *const names[] = {"stream", "max_version", "dl_device", "copy", NULL};
    DeviceViewObject *self = (DeviceViewObject *)op;
    PyObject *v[4];
    int versioned, copy;
    if (unpack_arguments("__dlpack__", args, nargs, kwnames, names, 0, v) < 0 ||
        check_stream(v[0]) < 0 ||
        (versioned = wants_versioned(v[1])) < 0 ||
        check_dl_device(self, v[2]) < 0 ||
        (copy = (v[3] == NULL || v[3] == Py_None) ? 0 : PyObject_IsTrue(v[3])) < 0 ||
        check_attached(self) < 0) {
        return NULL;
    }
    if (copy) {
        PyErr_SetString(PyExc_BufferError,
                        "copy=True is not supported: a device view exports its memory");
        return NULL;
    }
    if (self->readonly && !versioned) {
        PyErr_SetString(PyExc_BufferError,
                        "a read-only device view needs a versioned DLPack capsule "
                        "(max_version >= (1, 0)) to say it is read-only");
        return NULL;
    }
    return make_capsule(self, versioned);
}

static PyObject *view_dlpack_device(PyObject *op, PyObject *Py_UNUSED(unused))
{
    return Py_BuildValue("(ii)", DLPACK_DEVICE_CUDA, ((DeviceViewObject *)op)->device_id);
}

/* ------------------------------------------------------------------ */
/* Type definition                                                     */
/* ------------------------------------------------------------------ */

static PyGetSetDef view_getset[] = {
    {"__cuda_array_interface__", get_cuda_array_interface, NULL,
     "The CUDA Array Interface (version 3): the bytes as a 1-D uint8 array.", NULL},
    {"address", get_address, NULL, "The device address, an int.", NULL},
    {"nbytes", get_nbytes, NULL, "Size in bytes (the buffer's nbytes).", NULL},
    {"device_id", get_device_id, NULL, "The GPU the memory is on.", NULL},
    {"readonly", get_readonly, NULL, "True for the copy of a read-only buffer.", NULL},
    {"buffer", get_buffer, NULL, "The Buffer this is a device copy of.", NULL},
    {NULL},
};

static PyMethodDef view_methods[] = {
    {"__dlpack__", (PyCFunction)(void (*)(void))view_dlpack,
     METH_FASTCALL | METH_KEYWORDS,
     "__dlpack__($self, /, *, stream=None, max_version=None, dl_device=None, "
     "copy=None)\n--\n\n"
     "A DLPack capsule (kDLCUDA, uint8, 1-D) over the device memory;\n"
     "versioned when max_version >= (1, 0)."},
    {"__dlpack_device__", view_dlpack_device, METH_NOARGS,
     "__dlpack_device__($self, /)\n--\n\n(kDLCUDA, device_id)."},
    {NULL},
};

static PyType_Slot view_slots[] = {
    {Py_tp_doc, "A buffer's memory on one GPU, for CuPy, PyTorch and Numba "
                "(from Buffer.device_view())."},
    {Py_tp_dealloc, view_dealloc},
    {Py_tp_traverse, view_traverse},
    {Py_tp_clear, view_clear},
    {Py_tp_repr, view_repr},
    {Py_tp_getset, view_getset},
    {Py_tp_methods, view_methods},
    {0, NULL},
};

PyType_Spec device_view_type_spec = {
    .name = "memmanager.DeviceView",
    .basicsize = sizeof(DeviceViewObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = view_slots,
};
