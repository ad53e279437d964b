/*
 * driver.h -- what the four files of cuda/ share with each other (and
 * with nobody else; the module sees only cuda.h): loader.c, allocators.c,
 * device.c, view.c, in that order, each calling only the ones before.
 *
 * Lifetime: one mm_cuda_driver lives in a PyCapsule held by the module
 * state, by each CUDA allocator (as its keeper, since the vtables live in
 * the driver) and by each buffer that has device mappings, so the table
 * outlives every block and mapping made through it.  The table is filled
 * once, with the GIL held, at first use; afterwards it is only read, so
 * the allocator vtables may use it without the GIL.
 *
 * Layer: cuda.  May call interop/, buffer/, allocators/ and core/.
 */
#ifndef MEMMANAGER_CUDA_DRIVER_H
#define MEMMANAGER_CUDA_DRIVER_H

#include "cuda/cuda.h"
#include "cuda/abi.h"

#define CUDA_DRIVER_CAPSULE "memmanager._cuda_driver"

/* The CUDA allocators allocate on this device until allocators take
 * options (a device_id= option then selects another). */
#define CUDA_ALLOCATOR_DEVICE 0

typedef struct {
    cu_init_fn init;
    cu_driver_get_version_fn driver_get_version;
    cu_device_get_count_fn device_get_count;
    cu_device_get_fn device_get;
    cu_primary_ctx_retain_fn primary_ctx_retain;
    cu_primary_ctx_release_fn primary_ctx_release;
    cu_ctx_push_fn ctx_push;
    cu_ctx_pop_fn ctx_pop;
    cu_ctx_synchronize_fn ctx_synchronize;
    cu_stream_synchronize_fn stream_synchronize;
    cu_mem_alloc_fn mem_alloc;
    cu_mem_free_fn mem_free;
    cu_memcpy_htod_fn memcpy_htod;
    cu_memcpy_dtoh_fn memcpy_dtoh;
    cu_memset_d8_fn memset_d8;
    cu_mem_host_alloc_fn mem_host_alloc;
    cu_mem_free_host_fn mem_free_host;
    cu_mem_alloc_managed_fn mem_alloc_managed;
    cu_get_error_text_fn get_error_name;     /* optional: may stay NULL */
    cu_get_error_text_fn get_error_string;   /* optional: may stay NULL */
} cuda_api;

enum { CUDA_NOT_LOADED = 0, CUDA_READY = 1, CUDA_FAILED = -1 };

/* The three allocator vtables embedded in the driver (ctx = the driver). */
enum { CUDA_VTABLE_HOST = 0, CUDA_VTABLE_DEVICE, CUDA_VTABLE_MANAGED, CUDA_VTABLE_COUNT };

typedef struct mm_cuda_driver {
    int state;                    /* CUDA_NOT_LOADED, CUDA_READY, CUDA_FAILED */
    char reason[512];             /* why it failed: the loader's own words */
    char library[256];            /* the path given to dlopen */
    void *handle;                 /* dlopen handle; never closed */
    cuda_api api;
    int device_count;
    int driver_version;
    cu_device *devices;           /* device_count handles */
    cu_context *contexts;         /* primary contexts; NULL until retained */
    MemManagerAllocator vtables[CUDA_VTABLE_COUNT];
} mm_cuda_driver;

/* loader.c */
/* A new, unloaded driver table in a capsule; *out is the table, for the
 * caller to finish (allocators.c fills in the vtables). */
PyObject *mm_cuda_driver_new(mm_cuda_driver **out);
mm_cuda_driver *mm_cuda_driver_of(PyObject *capsule);
/* Loads on first use; DeviceUnavailableError with the reason when there
 * is no usable GPU.  device_id >= 0 also checks the ordinal (ValueError)
 * and retains that device's primary context. */
int mm_cuda_driver_require(mm_state *st, mm_cuda_driver *d, int device_id);
/* Make device_id's primary context current on this thread / undo it.
 * Callable without the GIL once the context is retained. */
cu_result mm_cuda_enter(mm_cuda_driver *d, int device_id);
void mm_cuda_leave(mm_cuda_driver *d);
/* Raise for a failed driver call: MemoryError for out-of-memory, else
 * DeviceUnavailableError; `what` says what was being done. */
void mm_cuda_raise(mm_state *st, mm_cuda_driver *d, cu_result rc, const char *what);

/* device.c: one mapping of a buffer on one device. */
typedef struct mm_device_mapping {
    struct mm_device_mapping *next;
    int device_id;
    cu_device_ptr device_address;
    size_t size;                  /* always the buffer's nbytes */
    Py_ssize_t refcount;          /* the OpenMP reference count, >= 1 */
    Py_ssize_t views;             /* DeviceViews and in-flight copies */
    unsigned char aliases_buffer; /* the buffer's own (managed/device) memory */
} mm_device_mapping;

/* A buffer's device state; allocated at its first mapping, freed with
 * the buffer's memory (through `attachment`, its first member). */
struct mm_device_state {
    mm_buffer_attachment attachment;
    PyObject *driver;             /* strong: the capsule of the mappings' driver */
    mm_device_mapping *mappings;
};

mm_device_mapping *mm_device_mapping_find(BufferObject *self, int device_id);
/* The driver capsule device work on this buffer goes through (borrowed),
 * and its table; NULL with an exception (at shutdown). */
PyObject *mm_device_driver_capsule(BufferObject *self);
mm_cuda_driver *mm_device_driver(BufferObject *self);
int mm_device_parse_id(PyObject *obj, int *device_id);
/* Whether the buffer's own memory is usable on device_id without a map. */
int mm_device_memory_is_native(BufferObject *self, int device_id);

#endif /* MEMMANAGER_CUDA_DRIVER_H */
