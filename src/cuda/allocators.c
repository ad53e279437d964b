/*
 * cuda/allocators.c -- the GPU allocators, registered always:
 *
 *   CudaHost     pinned (page-locked) host memory, cuMemHostAlloc: an
 *                ordinary buffer on the CPU whose copies to and from the
 *                GPU run at full bus speed;
 *   CudaDevice   device memory, cuMemAlloc: the host cannot read or write
 *                it (mm_buffer_check_host_access refuses); the device sees it
 *                through device_view();
 *   CudaManaged  unified memory, cuMemAllocManaged: host and devices share
 *                one address.
 *
 * They are MemManagerAllocator vtables like any other, embedded in the
 * driver table (cuda_driver.h) with the table as their ctx, and their
 * Allocator objects keep the table's capsule as keeper.  Two hooks tell
 * allocator.c what differs: `prepare` loads the driver before each
 * allocation (so a machine without a GPU gets DeviceUnavailableError with
 * the loader's reason, never MemoryError), and `fill` sets device memory
 * with cuMemsetD8 where the host cannot memset.  Until allocators take
 * options they all use device CUDA_ALLOCATOR_DEVICE.
 *
 * The vtable functions may run without the GIL (allocator.c frees large
 * blocks without it): they only read the table and call the driver.
 *
 * Layer: cuda.  May call interop/, buffer/, allocators/ and core/.
 */
#include "cuda/driver.h"

#include <string.h>

#define DEVICE CUDA_ALLOCATOR_DEVICE

/* Memsets on device memory are asynchronous to the host; wait for them so
 * that a consumer on any stream sees the bytes. */
static cu_result set_device_bytes(mm_cuda_driver *d, cu_device_ptr target,
                                  int byte, size_t size)
{
    cu_result rc = d->api.memset_d8(target, (unsigned char)byte, size);
    return rc != CU_SUCCESS ? rc : d->api.stream_synchronize(NULL);
}

/* ------------------------------------------------------------------ */
/* CudaHost                                                            */
/* ------------------------------------------------------------------ */

static void *host_malloc(void *ctx, size_t size)
{
    mm_cuda_driver *d = ctx;
    void *block = NULL;
    if (mm_cuda_enter(d, DEVICE) != CU_SUCCESS) {
        return NULL;
    }
    cu_result rc = d->api.mem_host_alloc(&block, size, CU_HOST_ALLOC_PORTABLE);
    mm_cuda_leave(d);
    return rc == CU_SUCCESS ? block : NULL;
}

static void *host_calloc(void *ctx, size_t count, size_t size)
{
    void *block = host_malloc(ctx, count * size);
    if (block != NULL) {
        memset(block, 0, count * size);
    }
    return block;
}

static void host_free(void *ctx, void *ptr, size_t size)
{
    mm_cuda_driver *d = ctx;
    (void)size;
    if (mm_cuda_enter(d, DEVICE) == CU_SUCCESS) {
        (void)d->api.mem_free_host(ptr);
        mm_cuda_leave(d);
    }
}

/* ------------------------------------------------------------------ */
/* CudaDevice and CudaManaged                                          */
/* ------------------------------------------------------------------ */

static void *device_allocate(mm_cuda_driver *d, size_t size, int managed, int zero)
{
    cu_device_ptr block = 0;
    if (mm_cuda_enter(d, DEVICE) != CU_SUCCESS) {
        return NULL;
    }
    cu_result rc = managed
        ? d->api.mem_alloc_managed(&block, size, CU_MANAGED_ATTACH_GLOBAL)
        : d->api.mem_alloc(&block, size);
    if (rc == CU_SUCCESS && zero && set_device_bytes(d, block, 0, size) != CU_SUCCESS) {
        (void)d->api.mem_free(block);
        rc = CU_ERROR_OUT_OF_MEMORY;
    }
    mm_cuda_leave(d);
    return rc == CU_SUCCESS ? (void *)(uintptr_t)block : NULL;
}

static void device_free(void *ctx, void *ptr, size_t size)
{
    mm_cuda_driver *d = ctx;
    (void)size;
    if (mm_cuda_enter(d, DEVICE) == CU_SUCCESS) {
        (void)d->api.mem_free((cu_device_ptr)(uintptr_t)ptr);
        mm_cuda_leave(d);
    }
}

static void *device_malloc(void *ctx, size_t size)
{
    return device_allocate(ctx, size, 0, 0);
}

static void *device_calloc(void *ctx, size_t count, size_t size)
{
    return device_allocate(ctx, count * size, 0, 1);
}

static void *managed_malloc(void *ctx, size_t size)
{
    return device_allocate(ctx, size, 1, 0);
}

static void *managed_calloc(void *ctx, size_t count, size_t size)
{
    return device_allocate(ctx, count * size, 1, 1);
}

static void fill_vtables(mm_cuda_driver *d)
{
    static const struct {
        const char *name;
        void *(*malloc)(void *, size_t);
        void *(*calloc)(void *, size_t, size_t);
        void (*free)(void *, void *, size_t);
    } kinds[CUDA_VTABLE_COUNT] = {
        [CUDA_VTABLE_HOST] = {"CudaHost", host_malloc, host_calloc, host_free},
        [CUDA_VTABLE_DEVICE] = {"CudaDevice", device_malloc, device_calloc, device_free},
        [CUDA_VTABLE_MANAGED] = {"CudaManaged", managed_malloc, managed_calloc, device_free},
    };
    for (int i = 0; i < CUDA_VTABLE_COUNT; i++) {
        d->vtables[i] = (MemManagerAllocator){
            .name = kinds[i].name,
            .abi_version = MEMMANAGER_ALLOCATOR_ABI_VERSION,
            .struct_size = sizeof(MemManagerAllocator),
            .ctx = d,
            .malloc = kinds[i].malloc,
            .calloc = kinds[i].calloc,
            .free = kinds[i].free,
            .realloc = NULL,     /* so consume() never adopts into them */
        };
    }
}

/* ------------------------------------------------------------------ */
/* The hooks allocator.c calls                                         */
/* ------------------------------------------------------------------ */

static mm_cuda_driver *driver_of_allocator(AllocatorObject *alloc)
{
    return mm_cuda_driver_of(alloc->keeper);
}

static int prepare(AllocatorObject *alloc)
{
    mm_state *st = mm_state_from_type(Py_TYPE(alloc));
    mm_cuda_driver *d = driver_of_allocator(alloc);
    if (st == NULL || d == NULL) {
        return -1;
    }
    return mm_cuda_driver_require(st, d, DEVICE);
}

static int fill(AllocatorObject *alloc, void *ptr, int byte, size_t size)
{
    mm_state *st = mm_state_from_type(Py_TYPE(alloc));
    mm_cuda_driver *d = driver_of_allocator(alloc);
    if (st == NULL || d == NULL) {
        return -1;
    }
    cu_result rc = mm_cuda_enter(d, DEVICE);
    if (rc == CU_SUCCESS) {
        rc = set_device_bytes(d, (cu_device_ptr)(uintptr_t)ptr, byte, size);
        mm_cuda_leave(d);
    }
    if (rc != CU_SUCCESS) {
        mm_cuda_raise(st, d, rc, "setting the init_value of device memory");
        return -1;
    }
    return 0;
}

static const mm_device_hooks cuda_hooks = {
    .prepare = prepare,
    .fill = fill,
};

/* ------------------------------------------------------------------ */
/* Registration                                                        */
/* ------------------------------------------------------------------ */

static int register_one(mm_state *st, mm_cuda_driver *d, int which, int memory_kind)
{
    const MemManagerAllocator *vtable = &d->vtables[which];
    AllocatorObject *alloc = mm_allocator_new(st, vtable->name, &mm_vtable_ops,
                                           vtable, st->cuda_driver);
    if (alloc == NULL) {
        return -1;
    }
    alloc->device_hooks = &cuda_hooks;
    alloc->memory_kind = memory_kind;
    alloc->device_id = CUDA_ALLOCATOR_DEVICE;
    PyObject *name = PyUnicode_InternFromString(vtable->name);
    int rc = name == NULL ? -1 : mm_allocator_registry_set(st, name, alloc);
    Py_XDECREF(name);
    Py_DECREF(alloc);
    return rc;
}

/* A new driver table (unloaded) with its three vtables. */
static PyObject *new_driver(void)
{
    mm_cuda_driver *d;
    PyObject *capsule = mm_cuda_driver_new(&d);
    if (capsule != NULL) {
        fill_vtables(d);
    }
    return capsule;
}

int mm_cuda_register_allocators(mm_state *st)
{
    if (st->cuda_driver == NULL && (st->cuda_driver = new_driver()) == NULL) {
        return -1;
    }
    mm_cuda_driver *d = mm_cuda_driver_of(st->cuda_driver);
    if (d == NULL ||
        register_one(st, d, CUDA_VTABLE_HOST, MM_MEMORY_HOST) < 0 ||
        register_one(st, d, CUDA_VTABLE_DEVICE, MM_MEMORY_CUDA_DEVICE) < 0 ||
        register_one(st, d, CUDA_VTABLE_MANAGED, MM_MEMORY_CUDA_MANAGED) < 0) {
        return -1;
    }
    return 0;
}

/* _cuda_reset(): forget the loaded driver (for tests).  A new table is
 * made and the CUDA allocators re-registered over it; buffers made
 * before keep the old table alive through their allocator and mappings. */
PyObject *mm_cuda_reset(PyObject *module, PyObject *Py_UNUSED(unused))
{
    mm_state *st = (mm_state *)PyModule_GetState(module);
    PyObject *fresh = new_driver();
    if (fresh == NULL) {
        return NULL;
    }
    Py_XSETREF(st->cuda_driver, fresh);
    if (mm_cuda_register_allocators(st) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}
