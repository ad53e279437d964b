/*
 * cuda/view.c -- Buffer.device_view(device_id) and the DeviceView type: a
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
 *   __cuda_array_interface__ they read; a DLPack capsule (made by
 *   dlpack.c's mm_dlpack_capsule_new, kDLCUDA) holds a strong reference to
 *   the view until the consumer's deleter, and no count of its own: the
 *   view is already the buffer's export.  The deleter's thread and
 *   shutdown rules are dlpack.c's.
 * - detach() is the one way a view lets go (dealloc, or tp_clear when the
 *   collector breaks a cycle through a death stub).
 *
 * Layer: cuda.  May call interop/, buffer/, allocators/ and core/.
 */
#include "cuda/driver.h"

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
    self->buffer = NULL;
    mm_buffer_export_ended(buffer);
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

PyObject *mm_buffer_device_view(PyObject *op, PyObject *const *args,
                             Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"device_id", NULL};
    BufferObject *self = (BufferObject *)op;
    PyObject *value;
    int device_id;
    mm_state *st = mm_buffer_state(self);
    if (st == NULL ||
        mm_unpack_arguments("device_view", args, nargs, kwnames, names, 1, &value) < 0 ||
        mm_device_parse_id(value, &device_id) < 0 ||
        mm_buffer_check_live(self) < 0) {
        return NULL;
    }
    mm_cuda_driver *d = mm_device_driver(self);
    if (d == NULL || mm_cuda_driver_require(st, d, device_id) < 0) {
        return NULL;
    }
    mm_device_mapping *mapping = mm_device_mapping_find(self, device_id);
    if (mapping == NULL && !mm_device_memory_is_native(self, device_id)) {
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
/* DLPack: the request, the rules and the capsule are dlpack.c's       */
/* ------------------------------------------------------------------ */

static mm_dl_device view_device(const DeviceViewObject *self)
{
    mm_dl_device device = {MM_DL_CUDA, self->device_id};
    return device;
}

/* Every copy completed before device_movement returned, so any stream
 * will do: only its type is checked. */
static int check_stream(PyObject *stream)
{
    if (stream != NULL && !PyLong_Check(stream)) {
        PyErr_Format(PyExc_TypeError, "stream must be None or an int, not %.100s",
                     Py_TYPE(stream)->tp_name);
        return -1;
    }
    return 0;
}

static PyObject *view_dlpack(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    DeviceViewObject *self = (DeviceViewObject *)op;
    mm_dlpack_request req;
    /* Parse first (may run __index__ or __bool__), then look at the view. */
    if (mm_dlpack_parse_request("__dlpack__", args, nargs, kwnames, &req) < 0 ||
        check_stream(req.stream) < 0 ||
        mm_dlpack_check_device(&req, view_device(self), "device view") < 0) {
        return NULL;
    }
    if (req.copy == 1) {
        PyErr_SetString(PyExc_BufferError,
                        "copy=True is not supported: a device view exports its memory");
        return NULL;
    }
    if (check_attached(self) < 0 ||
        mm_dlpack_check_readonly(self->readonly, req.versioned, "device view", "") < 0) {
        return NULL;
    }
    mm_dlpack_source src = {
        .data = (void *)(uintptr_t)self->device_address,
        .nbytes = self->nbytes,
        .device = view_device(self),
        .readonly = self->readonly,
        .owner = op,        /* the view already counts as the buffer's export */
        .unexport = NULL,
    };
    return mm_dlpack_capsule_new(&src, req.versioned);
}

static PyObject *view_dlpack_device(PyObject *op, PyObject *Py_UNUSED(unused))
{
    mm_dl_device device = view_device((DeviceViewObject *)op);
    return Py_BuildValue("(ii)", (int)device.device_type, (int)device.device_id);
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

PyType_Spec mm_device_view_type_spec = {
    .name = "memmanager.DeviceView",
    .basicsize = sizeof(DeviceViewObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = view_slots,
};
