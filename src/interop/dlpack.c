/*
 * dlpack.c -- DLPack export: a buffer's bytes as a DLPack capsule, so that
 * numpy.from_dlpack(buf), torch.from_dlpack(buf) and friends alias them.
 *
 * In Python terms:
 *
 *     def __dlpack__(self, *, stream=None, max_version=None,
 *                    dl_device=None, copy=None):
 *         device = where(self, dl_device)  # CudaDevice: (kDLCUDA, 0), never the CPU
 *         source = copy_of(self) if copy else self     # host memory only
 *         source.exports += 1          # release() is refused from now on
 *         return capsule(source.data, device, shape=(nbytes,), dtype=uint8,
 *                        readonly=source.readonly,
 *                        versioned=max_version is not None and max_version[0] >= 1)
 *     def __dlpack_device__(self):
 *         return {CudaDevice: (kDLCUDA, 0), CudaManaged: (kDLCUDAManaged, 0)}
 *                .get(self.allocator, (kDLCPU, 0))
 *
 * Two layers:
 *
 *   - the exporter-neutral part, which every __dlpack__ of memmanager uses
 *     (Buffer here, DeviceView in cuda/view.c): mm_dlpack_parse_request()
 *     parses the arguments, mm_dlpack_check_device() and
 *     mm_dlpack_check_readonly() are the two rules every exporter applies,
 *     and mm_dlpack_capsule_new() turns any (data, nbytes, device, owner)
 *     into a capsule, versioned or legacy.  The export a capsule stands
 *     for is given back by the source's `unexport` hook; an owner that
 *     counts nothing (a DeviceView) passes NULL and is only referenced.
 *   - mm_buffer_dlpack() and mm_buffer_dlpack_device() are the Buffer methods.
 *
 * Lifetime rules (what makes the export airtight):
 *
 *   - From the moment __dlpack__ succeeds, the capsule owns one export of
 *     its owner (counted in Buffer.exports) and one strong reference to it.
 *     Both are dropped by the deleter, exactly once: either by the capsule's
 *     destructor when nobody consumed it (the name is still "dltensor..."),
 *     or by the consumer (NumPy, PyTorch) when it is done with the tensor.
 *     A second deleter call is ignored while the capsule lives, so a
 *     consumer that calls the deleter but does not rename the capsule
 *     causes no double release (a call after both are gone cannot be
 *     guarded: the block is freed).
 *   - The deleter may be called from any thread, with or without a thread
 *     state, in any interpreter: the release runs inside the interpreter
 *     the capsule was made in, through mm_interp_call_soon()
 *     (interpreters.c), never PyGILState_Ensure, which only knows the main
 *     interpreter and deadlocks in a subinterpreter.  Once that
 *     interpreter or the runtime is finalised it never touches Python: the
 *     owner is left to the operating system and only the C block, which
 *     came from malloc, is freed.  Any exception being raised meanwhile is
 *     kept as it was.
 *   - The export block (managed tensor, shape, strides, owner) is one
 *     malloc'd allocation with two references, the capsule's and the
 *     tensor's, so it can be freed without the interpreter.
 *   - Device memory never reaches the host: a CudaDevice buffer is
 *     exported as kDLCUDA memory (dl_device=(kDLCPU, 0) and copy=True are
 *     refused), a CudaManaged one as kDLCUDAManaged, or as what dl_device
 *     asks of kDLCPU and kDLCUDA (unified memory is valid on both).
 *
 * Layer: interop.  May call buffer/, allocators/ and core/.
 */
#include "interop/interop.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define COPY_WITHOUT_GIL_THRESHOLD ((Py_ssize_t)1 << 20)

/* One export: the managed tensor first, so a pointer to the managed tensor
 * (what the deleter receives) is a pointer to the whole block. */
typedef struct {
    union {
        mm_dl_managed_tensor_versioned versioned;
        mm_dl_managed_tensor legacy;
    } managed;
    int64_t shape[1];
    int64_t strides[1];
    PyObject *owner;                    /* strong */
    void (*unexport)(PyObject *owner);  /* undoes the owner's export count */
    mm_interp *interp;                  /* strong: where owner lives */
    mm_interp_call call;                /* the release, run inside interp */
    int refs;                           /* atomic: the capsule's, the tensor's */
    int tensor_released;                /* atomic: the deleter has run */
} dlpack_export;

/* ------------------------------------------------------------------ */
/* Deleters and the capsule destructor                                 */
/* ------------------------------------------------------------------ */

static void export_unref(dlpack_export *export)
{
    if (__atomic_sub_fetch(&export->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        mm_interp_unref(export->interp);
        free(export);
    }
}

/* Inside the owner's interpreter, with its GIL. */
static void release_run(mm_interp_call *call)
{
    dlpack_export *export = (dlpack_export *)((char *)call - offsetof(dlpack_export, call));
    /* Dropping the owner may run its finaliser: keep the exception that
     * may be propagating (a capsule dies during unwinding). */
    mm_saved_error raised;
    mm_err_save(&raised);
    if (export->unexport != NULL) {
        export->unexport(export->owner);
    }
    Py_DECREF(export->owner);
    mm_err_restore(&raised);
    export_unref(export);
}

/* The interpreter is gone (or the runtime finalised): the owner is left
 * to the operating system, only the C block is freed. */
static void release_abandon(mm_interp_call *call)
{
    export_unref((dlpack_export *)((char *)call - offsetof(dlpack_export, call)));
}

/* The tensor's half: gives the export back, once.  A second call (a buggy
 * consumer, or the capsule destructor after a consumer that called the
 * deleter without renaming the capsule) does nothing while the capsule
 * still holds the block. */
static void release_tensor(dlpack_export *export)
{
    if (__atomic_exchange_n(&export->tensor_released, 1, __ATOMIC_ACQ_REL)) {
        return;
    }
    mm_interp_call_soon(export->interp, &export->call);
}

static void deleter_versioned(mm_dl_managed_tensor_versioned *managed)
{
    release_tensor((dlpack_export *)managed);
}

static void deleter_legacy(mm_dl_managed_tensor *managed)
{
    release_tensor((dlpack_export *)managed);
}

/* Runs when the capsule dies.  A consumer renames the capsule when it
 * takes the tensor, and then owns the deleter call; an unconsumed capsule
 * gives the export back here.  The block lives until both the capsule and
 * the tensor are done with it. */
static void capsule_destructor(PyObject *capsule)
{
    mm_saved_error raised;
    mm_err_save(&raised);
    dlpack_export *export = PyCapsule_GetContext(capsule);
    if (export != NULL) {
        if (PyCapsule_IsValid(capsule, MM_DLPACK_CAPSULE_VERSIONED) ||
            PyCapsule_IsValid(capsule, MM_DLPACK_CAPSULE_LEGACY)) {
            release_tensor(export);
        }
        export_unref(export);
    }
    PyErr_Clear();
    mm_err_restore(&raised);
}

/* ------------------------------------------------------------------ */
/* The generic capsule maker                                           */
/* ------------------------------------------------------------------ */

static void fill_tensor(mm_dl_tensor *tensor, dlpack_export *export,
                        const mm_dlpack_source *src)
{
    export->shape[0] = src->nbytes;
    export->strides[0] = 1;
    tensor->data = src->data;
    tensor->device = src->device;
    tensor->ndim = 1;
    tensor->dtype.code = MM_DL_UINT;
    tensor->dtype.bits = 8;
    tensor->dtype.lanes = 1;
    tensor->shape = export->shape;
    tensor->strides = export->strides;
    tensor->byte_offset = 0;
}

static dlpack_export *export_new(const mm_dlpack_source *src, mm_interp *interp,
                                 int versioned)
{
    dlpack_export *export = calloc(1, sizeof(*export));
    if (export == NULL) {
        return NULL;
    }
    export->owner = Py_NewRef(src->owner);
    export->unexport = src->unexport;
    export->interp = mm_interp_ref(interp);
    export->call.run = release_run;
    export->call.abandon = release_abandon;
    export->refs = 2;       /* the capsule's and the tensor's */
    if (versioned) {
        mm_dl_managed_tensor_versioned *m = &export->managed.versioned;
        m->version.major = MM_DLPACK_MAJOR;
        m->version.minor = MM_DLPACK_MINOR;
        m->manager_ctx = export;
        m->deleter = deleter_versioned;
        m->flags = (src->readonly ? MM_DLPACK_FLAG_READ_ONLY : 0) |
                   (src->copied ? MM_DLPACK_FLAG_IS_COPIED : 0);
        fill_tensor(&m->dl_tensor, export, src);
    }
    else {
        mm_dl_managed_tensor *m = &export->managed.legacy;
        m->manager_ctx = export;
        m->deleter = deleter_legacy;
        fill_tensor(&m->dl_tensor, export, src);
    }
    return export;
}

/* The caller has counted one export of src->owner (if it counts any); the
 * capsule owns it from now on.  On failure the export is given back
 * (src->unexport, when not NULL). */
PyObject *mm_dlpack_capsule_new(const mm_dlpack_source *src, int versioned)
{
    mm_state *st = mm_state_from_type(Py_TYPE(src->owner));
    dlpack_export *export = NULL;
    if (st == NULL || st->interp == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError,
                            "cannot export to DLPack: memmanager is shutting down");
        }
    }
    else if ((export = export_new(src, st->interp, versioned)) == NULL) {
        PyErr_NoMemory();
    }
    if (export == NULL) {
        if (src->unexport != NULL) {
            src->unexport(src->owner);
        }
        return NULL;
    }
    /* The destructor is set last: until then the capsule owns nothing. */
    PyObject *capsule = PyCapsule_New(
        &export->managed,
        versioned ? MM_DLPACK_CAPSULE_VERSIONED : MM_DLPACK_CAPSULE_LEGACY,
        NULL);
    if (capsule == NULL || PyCapsule_SetContext(capsule, export) < 0 ||
        PyCapsule_SetDestructor(capsule, capsule_destructor) < 0) {
        Py_XDECREF(capsule);
        export_unref(export);       /* the capsule's share */
        release_tensor(export);     /* the export back, and the tensor's share */
        return NULL;
    }
    return capsule;
}

/* ------------------------------------------------------------------ */
/* Parsing __dlpack__(*, stream, max_version, dl_device, copy)         */
/* ------------------------------------------------------------------ */

static int parse_int_pair(PyObject *obj, const char *what, long *first, long *second)
{
    if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) != 2) {
        PyErr_Format(PyExc_TypeError, "%s must be a 2-tuple of ints or None, not %R",
                     what, obj);
        return -1;
    }
    *first = PyLong_AsLong(PyTuple_GET_ITEM(obj, 0));
    if (*first == -1 && PyErr_Occurred()) {
        return -1;
    }
    *second = PyLong_AsLong(PyTuple_GET_ITEM(obj, 1));
    return (*second == -1 && PyErr_Occurred()) ? -1 : 0;
}

int mm_dlpack_parse_request(const char *funcname, PyObject *const *args,
                         Py_ssize_t nargs, PyObject *kwnames,
                         mm_dlpack_request *out)
{
    static const char *const names[] = {"stream", "max_version", "dl_device",
                                        "copy", NULL};
    PyObject *values[4];
    long major, minor, device_type, device_id;

    memset(out, 0, sizeof(*out));
    out->copy = -1;
    if (mm_unpack_arguments(funcname, args, nargs, kwnames, names, 0, values) < 0) {
        return -1;
    }
    out->stream = values[0] == Py_None ? NULL : values[0];
    if (values[1] != NULL && values[1] != Py_None) {
        if (parse_int_pair(values[1], "max_version", &major, &minor) < 0) {
            return -1;
        }
        out->versioned = major >= MM_DLPACK_MAJOR;
    }
    if (values[2] != NULL && values[2] != Py_None) {
        if (parse_int_pair(values[2], "dl_device", &device_type, &device_id) < 0) {
            return -1;
        }
        out->has_device = 1;
        out->device_type = device_type;
        out->device_id = device_id;
    }
    if (values[3] != NULL && values[3] != Py_None &&
        (out->copy = PyObject_IsTrue(values[3])) < 0) {
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* The rules every exporter applies to a parsed request                */
/* ------------------------------------------------------------------ */

/* dl_device, when given, must be where the memory is: memmanager never
 * copies across devices for a consumer.  `what` names the exporter. */
int mm_dlpack_check_device(const mm_dlpack_request *req, mm_dl_device here,
                        const char *what)
{
    if (req->has_device && (req->device_type != here.device_type ||
                            req->device_id != here.device_id)) {
        PyErr_Format(PyExc_BufferError,
                     "cannot export to DLPack device (%ld, %ld): the %s is on "
                     "DLPack device (%d, %d)", req->device_type, req->device_id, what,
                     (int)here.device_type, (int)here.device_id);
        return -1;
    }
    return 0;
}

/* Only the versioned capsule has a READ_ONLY flag, so read-only memory is
 * never handed out in a legacy one.  `remedy` ends the message ("" or a
 * way out the exporter offers). */
int mm_dlpack_check_readonly(int readonly, int versioned, const char *what,
                          const char *remedy)
{
    if (readonly && !versioned) {
        PyErr_Format(PyExc_BufferError,
                     "a read-only %s is exported only as a versioned DLPack "
                     "capsule (max_version >= (1, 0)), which can say "
                     "read-only; the legacy one cannot%s", what, remedy);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Buffer.__dlpack__ and Buffer.__dlpack_device__                      */
/* ------------------------------------------------------------------ */

/* A capsule's export ends like a buffer-protocol one (whatever that
 * does besides counting, e.g. a release deferred until the last export). */
static void buffer_unexport(PyObject *owner)
{
    mm_buffer_export_ended((BufferObject *)owner);
}

static const mm_dl_device cpu_device = {MM_DL_CPU, 0};

/* Where a buffer's memory is, as DLPack says it. */
static mm_dl_device buffer_device(BufferObject *self)
{
    mm_dl_device device = cpu_device;
    /* A Borrowed or zero-copy view of device memory is device memory too. */
    int kind = self->host_inaccessible ? MM_MEMORY_CUDA_DEVICE
                                       : self->allocator->memory_kind;
    int device_id = self->allocator->device_id;
    switch (kind) {
    case MM_MEMORY_CUDA_DEVICE:
        device.device_type = MM_DL_CUDA;
        device.device_id = device_id;
        break;
    case MM_MEMORY_CUDA_MANAGED:
        device.device_type = MM_DL_CUDA_MANAGED;
        device.device_id = device_id;
        break;
    default:
        break;
    }
    return device;
}

/* The device the capsule will name: where the memory is, or for unified
 * memory what dl_device asks of the CPU or its GPU.  Then the stream: None
 * for the CPU; for a GPU None or an int (every write to the memory was
 * complete when the call that made it returned, so any stream may read
 * it; only the type is checked, and no method of the object is called). */
static int buffer_export_device(BufferObject *self, const mm_dlpack_request *req,
                                mm_dl_device *out)
{
    mm_dl_device here = buffer_device(self);
    if (here.device_type == MM_DL_CUDA_MANAGED && req->has_device &&
        ((req->device_type == MM_DL_CPU && req->device_id == 0) ||
         (req->device_type == MM_DL_CUDA && req->device_id == here.device_id))) {
        here.device_type = (mm_dl_device_type)req->device_type;
        here.device_id = (int32_t)req->device_id;
    }
    if (mm_dlpack_check_device(req, here, "buffer") < 0) {
        return -1;
    }
    if (req->stream != NULL) {
        if (here.device_type == MM_DL_CPU) {
            PyErr_Format(PyExc_BufferError,
                         "a buffer exported to the CPU takes stream=None, not "
                         "an object of type %.100s", Py_TYPE(req->stream)->tp_name);
            return -1;
        }
        if (!PyLong_Check(req->stream)) {
            PyErr_Format(PyExc_TypeError, "stream must be None or an int, not %.100s",
                         Py_TYPE(req->stream)->tp_name);
            return -1;
        }
    }
    *out = here;
    return 0;
}

/* A fresh, writable PyAlloc buffer with the same bytes (copy=True). */
static PyObject *copy_of(BufferObject *self)
{
    mm_state *st = mm_buffer_state(self);
    if (st == NULL) {
        return NULL;
    }
    if (self->host_inaccessible) {
        PyErr_Format(PyExc_BufferError,
                     "copy=True is not supported for a %U buffer: its memory is "
                     "on the GPU, and memmanager does not copy it to the host",
                     self->allocator->name);
        return NULL;
    }
    PyObject *copy = PyObject_CallFunction((PyObject *)st->buffer_type, "nn",
                                           self->nbytes, (Py_ssize_t)1);
    /* Allocating may have run the collector, and with it arbitrary code
     * that released this buffer: look again before reading it. */
    if (copy == NULL || mm_buffer_check_host_access(self) < 0) {
        Py_XDECREF(copy);
        return NULL;
    }
    char *target = ((BufferObject *)copy)->data;
    if (self->nbytes < COPY_WITHOUT_GIL_THRESHOLD) {
        memcpy(target, self->data, (size_t)self->nbytes);
        return copy;
    }
    /* release() of either must wait for the copy: the copy is already
     * tracked by the collector, so another thread may find it through
     * gc.get_objects() while the GIL is given back. */
    self->exports++;
    ((BufferObject *)copy)->exports++;
    Py_BEGIN_ALLOW_THREADS
    memcpy(target, self->data, (size_t)self->nbytes);
    Py_END_ALLOW_THREADS
    mm_buffer_export_ended((BufferObject *)copy);
    mm_buffer_export_ended(self);   /* may finish a release __exit__ deferred */
    return copy;
}

static PyObject *export_buffer(BufferObject *source, mm_dl_device device,
                               int copied, int versioned)
{
    mm_dlpack_source src = {
        .data = source->data,
        .nbytes = source->nbytes,
        .device = device,
        .readonly = source->readonly,
        .copied = copied,
        .owner = (PyObject *)source,
        .unexport = buffer_unexport,
    };
    /* Counted before anything can run the collector, so that code run
     * meanwhile cannot release the memory the capsule points to. */
    source->exports++;
    return mm_dlpack_capsule_new(&src, versioned);
}

PyObject *mm_buffer_dlpack(PyObject *op, PyObject *const *args,
                        Py_ssize_t nargs, PyObject *kwnames)
{
    BufferObject *self = (BufferObject *)op;
    mm_dlpack_request req;
    mm_dl_device device;
    /* Parse first (may run __index__ or __bool__), then look at the buffer;
     * nothing after this runs Python code before the export is counted. */
    if (mm_dlpack_parse_request("__dlpack__", args, nargs, kwnames, &req) < 0 ||
        mm_buffer_check_live(self) < 0 ||
        buffer_export_device(self, &req, &device) < 0) {
        return NULL;
    }
    if (req.copy == 1) {
        /* The copy is ordinary host memory (device memory is refused by
         * copy_of): only a CPU request, without a stream, fits it. */
        if (!self->host_inaccessible) {
            if (mm_dlpack_check_device(&req, cpu_device, "copy") < 0) {
                return NULL;
            }
            if (req.stream != NULL) {
                PyErr_SetString(PyExc_BufferError,
                                "copy=True makes a CPU copy, which takes stream=None");
                return NULL;
            }
        }
        PyObject *copy = copy_of(self);
        if (copy == NULL) {
            return NULL;
        }
        PyObject *capsule = export_buffer((BufferObject *)copy, cpu_device, 1,
                                          req.versioned);
        Py_DECREF(copy);   /* the capsule holds it now */
        return capsule;
    }
    if (mm_dlpack_check_readonly(self->readonly, req.versioned, "buffer",
                              " (or pass copy=True)") < 0) {
        return NULL;
    }
    return export_buffer(self, device, 0, req.versioned);
}

PyObject *mm_buffer_dlpack_device(PyObject *op, PyObject *Py_UNUSED(unused))
{
    BufferObject *self = (BufferObject *)op;
    if (mm_buffer_check_live(self) < 0) {
        return NULL;
    }
    mm_dl_device device = buffer_device(self);
    return Py_BuildValue("(ii)", (int)device.device_type, (int)device.device_id);
}
