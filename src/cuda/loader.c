/*
 * cuda/loader.c -- the CUDA driver, loaded at run time.
 *
 * Building memmanager needs no CUDA toolkit: the driver library
 * (libcuda.so.1, or the path in MEMMANAGER_CUDA_LIBRARY) is opened with
 * dlopen the first time a GPU feature is used, and the few entry points
 * the GPU files call are resolved once into a table (cuda_api), preferring
 * the `_v2` name of each entry point that has one (the 64-bit ABI).  Then
 * cuInit, the device count, and the device handles.  Whatever goes wrong
 * is kept, in the loader's own words, as the reason every later
 * DeviceUnavailableError gives; a failed load is not retried.
 *
 * Memory operations run in the device's *primary* context, the one the
 * CUDA runtime uses, so device pointers are shared with CuPy, PyTorch and
 * Numba.  It is retained the first time a device is used and released
 * when the table dies; each operation pushes it and pops it again, so the
 * caller's current context is left alone.
 *
 * The table lives in a capsule (see cuda_driver.h for who holds it).  The
 * library handle is never closed: other libraries in the process share
 * the driver, and unloading it under them is unsafe.
 *
 * In Python terms:
 *
 *     def require(device_id):
 *         if state == NOT_LOADED: load()         # dlopen, dlsym, cuInit
 *         if state == FAILED: raise DeviceUnavailableError(reason)
 *         if not 0 <= device_id < device_count: raise ValueError
 *         contexts[device_id] = contexts[device_id] or retain_primary()
 *
 * Layer: cuda.  May call interop/, buffer/, allocators/ and core/.
 */
#include "cuda/driver.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <string.h>

#define DEFAULT_CUDA_LIBRARY "libcuda.so.1"
#define LIBRARY_VARIABLE "MEMMANAGER_CUDA_LIBRARY"

/* ------------------------------------------------------------------ */
/* The symbol table                                                    */
/* ------------------------------------------------------------------ */

typedef struct {
    const char *name;
    size_t offset;             /* of the slot in cuda_api */
    unsigned char has_v2;      /* try name "_v2" first */
    unsigned char optional;
} symbol_entry;

#define SYMBOL(name, field, v2, optional) \
    {name, offsetof(cuda_api, field), v2, optional}

static const symbol_entry symbols[] = {
    SYMBOL("cuInit", init, 0, 0),
    SYMBOL("cuDriverGetVersion", driver_get_version, 0, 0),
    SYMBOL("cuDeviceGetCount", device_get_count, 0, 0),
    SYMBOL("cuDeviceGet", device_get, 0, 0),
    SYMBOL("cuDevicePrimaryCtxRetain", primary_ctx_retain, 0, 0),
    SYMBOL("cuDevicePrimaryCtxRelease", primary_ctx_release, 1, 0),
    SYMBOL("cuCtxPushCurrent", ctx_push, 1, 0),
    SYMBOL("cuCtxPopCurrent", ctx_pop, 1, 0),
    SYMBOL("cuCtxSynchronize", ctx_synchronize, 0, 0),
    SYMBOL("cuStreamSynchronize", stream_synchronize, 0, 0),
    SYMBOL("cuMemAlloc", mem_alloc, 1, 0),
    SYMBOL("cuMemFree", mem_free, 1, 0),
    SYMBOL("cuMemcpyHtoD", memcpy_htod, 1, 0),
    SYMBOL("cuMemcpyDtoH", memcpy_dtoh, 1, 0),
    SYMBOL("cuMemsetD8", memset_d8, 1, 0),
    SYMBOL("cuMemHostAlloc", mem_host_alloc, 0, 0),
    SYMBOL("cuMemFreeHost", mem_free_host, 0, 0),
    SYMBOL("cuMemAllocManaged", mem_alloc_managed, 0, 0),
    SYMBOL("cuGetErrorName", get_error_name, 0, 1),
    SYMBOL("cuGetErrorString", get_error_string, 0, 1),
};

static void fail(mm_cuda_driver *d, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(d->reason, sizeof(d->reason), format, args);
    va_end(args);
    d->state = CUDA_FAILED;
}

static void *find_symbol(void *handle, const symbol_entry *entry)
{
    char versioned[64];
    if (entry->has_v2) {
        snprintf(versioned, sizeof(versioned), "%s_v2", entry->name);
        void *address = dlsym(handle, versioned);
        if (address != NULL) {
            return address;
        }
    }
    return dlsym(handle, entry->name);
}

static int resolve_symbols(mm_cuda_driver *d)
{
    for (size_t i = 0; i < sizeof(symbols) / sizeof(symbols[0]); i++) {
        void *address = find_symbol(d->handle, &symbols[i]);
        if (address == NULL && !symbols[i].optional) {
            fail(d, "the CUDA driver %s has no entry point %s%s", d->library,
                 symbols[i].name, symbols[i].has_v2 ? " (nor its _v2)" : "");
            return -1;
        }
        /* POSIX guarantees a data pointer from dlsym converts to a
         * function pointer; copy the bytes to say so without a cast. */
        memcpy((char *)&d->api + symbols[i].offset, &address, sizeof(address));
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Error text                                                          */
/* ------------------------------------------------------------------ */

static void describe(mm_cuda_driver *d, cu_result rc, char *out, size_t size)
{
    const char *name = NULL, *text = NULL;
    if (d->api.get_error_name == NULL ||
        d->api.get_error_name(rc, &name) != CU_SUCCESS || name == NULL) {
        name = "CUDA error";
    }
    if (d->api.get_error_string == NULL ||
        d->api.get_error_string(rc, &text) != CU_SUCCESS || text == NULL) {
        text = "no description";
    }
    snprintf(out, size, "%s (%d: %s)", name, rc, text);
}

void mm_cuda_raise(mm_state *st, mm_cuda_driver *d, cu_result rc, const char *what)
{
    char text[256];
    describe(d, rc, text, sizeof(text));
    PyErr_Format(rc == CU_ERROR_OUT_OF_MEMORY ? PyExc_MemoryError
                                              : st->DeviceUnavailableError,
                 "%s failed: %s", what, text);
}

/* ------------------------------------------------------------------ */
/* Loading                                                             */
/* ------------------------------------------------------------------ */

static int load_devices(mm_cuda_driver *d)
{
    char text[256];
    cu_result rc = d->api.device_get_count(&d->device_count);
    if (rc != CU_SUCCESS || d->device_count <= 0) {
        if (rc != CU_SUCCESS) {
            describe(d, rc, text, sizeof(text));
        }
        fail(d, "the CUDA driver %s finds no device%s%s", d->library,
             rc != CU_SUCCESS ? ": " : "", rc != CU_SUCCESS ? text : "");
        return -1;
    }
    size_t n = (size_t)d->device_count;
    d->devices = PyMem_RawCalloc(n, sizeof(cu_device));
    d->contexts = PyMem_RawCalloc(n, sizeof(cu_context));
    if (d->devices == NULL || d->contexts == NULL) {
        fail(d, "out of memory while loading the CUDA driver");
        return -1;
    }
    for (int i = 0; i < d->device_count; i++) {
        if ((rc = d->api.device_get(&d->devices[i], i)) != CU_SUCCESS) {
            describe(d, rc, text, sizeof(text));
            fail(d, "cuDeviceGet(%d) failed: %s", i, text);
            return -1;
        }
    }
    return 0;
}

static void load(mm_cuda_driver *d)
{
    char text[256];
    const char *path = getenv(LIBRARY_VARIABLE);
    if (path == NULL || path[0] == '\0') {
        path = DEFAULT_CUDA_LIBRARY;
    }
    snprintf(d->library, sizeof(d->library), "%s", path);
    d->handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (d->handle == NULL) {
        const char *why = dlerror();
        fail(d, "cannot load the CUDA driver %s: %s", path, why ? why : "unknown error");
        return;
    }
    if (resolve_symbols(d) < 0) {
        return;
    }
    cu_result rc = d->api.init(0);
    if (rc != CU_SUCCESS) {
        describe(d, rc, text, sizeof(text));
        fail(d, "cuInit failed in the CUDA driver %s: %s", d->library, text);
        return;
    }
    if (d->api.driver_get_version(&d->driver_version) != CU_SUCCESS) {
        d->driver_version = 0;
    }
    if (load_devices(d) < 0) {
        return;
    }
    d->state = CUDA_READY;
}

static int retain_context(mm_state *st, mm_cuda_driver *d, int device_id)
{
    if (d->contexts[device_id] != NULL) {
        return 0;
    }
    cu_context context = NULL;
    cu_result rc = d->api.primary_ctx_retain(&context, d->devices[device_id]);
    if (rc != CU_SUCCESS || context == NULL) {
        char what[64];
        snprintf(what, sizeof(what), "retaining the primary context of device %d",
                 device_id);
        mm_cuda_raise(st, d, rc != CU_SUCCESS ? rc : CU_ERROR_NO_DEVICE, what);
        return -1;
    }
    d->contexts[device_id] = context;
    return 0;
}

int mm_cuda_driver_require(mm_state *st, mm_cuda_driver *d, int device_id)
{
    if (d->state == CUDA_NOT_LOADED) {
        load(d);
    }
    if (d->state != CUDA_READY) {
        PyErr_Format(st->DeviceUnavailableError, "NVIDIA GPU unavailable: %s",
                     d->reason);
        return -1;
    }
    if (device_id < 0) {
        return 0;
    }
    if (device_id >= d->device_count) {
        PyErr_Format(PyExc_ValueError, "no NVIDIA GPU %d: device_id must be in "
                     "range(0, %d)", device_id, d->device_count);
        return -1;
    }
    return retain_context(st, d, device_id);
}

cu_result mm_cuda_enter(mm_cuda_driver *d, int device_id)
{
    return d->api.ctx_push(d->contexts[device_id]);
}

void mm_cuda_leave(mm_cuda_driver *d)
{
    cu_context popped;
    (void)d->api.ctx_pop(&popped);
}

/* ------------------------------------------------------------------ */
/* The capsule                                                         */
/* ------------------------------------------------------------------ */

static void release_contexts(mm_cuda_driver *d)
{
    if (d->contexts == NULL) {
        return;
    }
    for (int i = 0; i < d->device_count; i++) {
        if (d->contexts[i] != NULL) {
            (void)d->api.primary_ctx_release(d->devices[i]);
        }
    }
}

static void driver_capsule_destructor(PyObject *capsule)
{
    mm_cuda_driver *d = PyCapsule_GetPointer(capsule, CUDA_DRIVER_CAPSULE);
    if (d == NULL) {
        PyErr_Clear();
        return;
    }
    release_contexts(d);
    PyMem_RawFree(d->contexts);
    PyMem_RawFree(d->devices);
    PyMem_RawFree(d);
}

PyObject *mm_cuda_driver_new(mm_cuda_driver **out)
{
    mm_cuda_driver *d = PyMem_RawCalloc(1, sizeof(mm_cuda_driver));
    if (d == NULL) {
        return PyErr_NoMemory();
    }
    PyObject *capsule = PyCapsule_New(d, CUDA_DRIVER_CAPSULE,
                                      driver_capsule_destructor);
    if (capsule == NULL) {
        PyMem_RawFree(d);
        return NULL;
    }
    *out = d;
    return capsule;
}

mm_cuda_driver *mm_cuda_driver_of(PyObject *capsule)
{
    return PyCapsule_GetPointer(capsule, CUDA_DRIVER_CAPSULE);
}

/* ------------------------------------------------------------------ */
/* Module functions                                                    */
/* ------------------------------------------------------------------ */

/* _cuda_probe() -> (device_count, reason, library, driver_version):
 * loads the driver if needed; reason is None when a GPU is usable. */
PyObject *mm_cuda_probe(PyObject *module, PyObject *Py_UNUSED(unused))
{
    mm_state *st = (mm_state *)PyModule_GetState(module);
    mm_cuda_driver *d = mm_cuda_driver_of(st->cuda_driver);
    if (d == NULL) {
        return NULL;
    }
    if (d->state == CUDA_NOT_LOADED) {
        load(d);
    }
    const char *library = d->library[0] != '\0' ? d->library : NULL;
    if (d->state != CUDA_READY) {
        return Py_BuildValue("(iszO)", 0, d->reason, library, Py_None);
    }
    return Py_BuildValue("(iOzi)", d->device_count, Py_None, library,
                         d->driver_version);
}
