/*
 * fake_cuda.c -- a test double of the CUDA driver library (libcuda), built
 * by the test suite (conftest.py) and loaded by memmanager through
 * MEMMANAGER_CUDA_LIBRARY, so that the GPU code runs without a GPU.
 *
 * It implements the driver entry points memmanager resolves, over host
 * memory, and checks how they are used:
 *
 *   - "device memory" is malloc'ed host memory behind synthetic addresses
 *     (from 2^52 up, with gaps) that no host instruction can reach: a
 *     host read or write of CudaDevice memory crashes instead of passing;
 *   - every memory call needs a current context (pushed, not leaked), and
 *     device memory must be reached from its own device's context;
 *   - copies must stay inside one allocation; frees must match an
 *     allocation of the right kind;
 *   - the pre-_v2 names exist too and count as misuse when called.
 *
 * Misuse makes the call fail and is counted ("errors"; the last message
 * in fake_last_error()); the fixture asserts the count stays 0.  Tests
 * read counters with fake_get(name), configure with fake_set(name, value)
 * (device count, a cuInit error, failures injected into the next call of
 * one kind), and play the kernel with fake_read/fake_write on device
 * addresses.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

typedef int CUresult;
typedef unsigned long long CUdeviceptr;

#define OK 0
#define ERR_INVALID_VALUE 1
#define ERR_OUT_OF_MEMORY 2
#define ERR_NOT_INITIALIZED 3
#define ERR_NO_DEVICE 100
#define ERR_INVALID_DEVICE 101
#define ERR_INVALID_CONTEXT 201
#define ERR_NOT_SUPPORTED 801

#define MAX_DEVICES 8
#define MAX_DEPTH 16
#define DEVICE_BASE ((CUdeviceptr)1 << 52)

enum { KIND_DEVICE, KIND_HOST, KIND_MANAGED };

typedef struct {
    CUdeviceptr address;
    char *backing;
    size_t size;
    int kind;
    int device;
} block;

struct fake_context { int device; };

/* Recursive: the counting helpers lock too, inside locked calls. */
static pthread_mutex_t lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static struct fake_context contexts[MAX_DEVICES];
static __thread struct fake_context *stack[MAX_DEPTH];
static __thread int depth;

static block *blocks;
static size_t nblocks, capacity;
static CUdeviceptr next_device_address = DEVICE_BASE;
static int initialised;
static char last_error[512];

/* Settings (fake_set) and counters (fake_get), by name. */
typedef struct { const char *name; long value; } entry;

static entry settings[] = {
    {"device_count", 2},
    {"init_error", 0},
    {"fail_next_alloc", 0},
    {"fail_next_host_alloc", 0},
    {"fail_next_managed_alloc", 0},
    {"fail_next_htod", 0},
    {"fail_next_dtoh", 0},
    {"fail_next_memset", 0},
    {"fail_next_retain", 0},
    {NULL, 0},
};

static entry counters[] = {
    {"errors", 0},
    {"legacy_calls", 0},
    {"init_calls", 0},
    {"retained", 0},
    {"device_live", 0},
    {"device_bytes", 0},
    {"host_live", 0},
    {"managed_live", 0},
    {"device_allocs", 0},
    {"frees", 0},
    {"htod_calls", 0},
    {"htod_bytes", 0},
    {"dtoh_calls", 0},
    {"dtoh_bytes", 0},
    {"memset_calls", 0},
    {"ctx_syncs", 0},
    {"stream_syncs", 0},
    {NULL, 0},
};

static entry *find_entry(entry *table, const char *name)
{
    for (entry *e = table; e->name != NULL; e++) {
        if (strcmp(e->name, name) == 0) {
            return e;
        }
    }
    return NULL;
}

static void count(const char *name, long delta)
{
    pthread_mutex_lock(&lock);
    find_entry(counters, name)->value += delta;
    pthread_mutex_unlock(&lock);
}

static long setting(const char *name)
{
    return find_entry(settings, name)->value;
}

/* An injected failure for the next call of this kind, or OK. */
static CUresult injected(const char *name)
{
    entry *e = find_entry(settings, name);
    CUresult rc = (CUresult)e->value;
    e->value = 0;
    return rc;
}

static CUresult misuse(CUresult rc, const char *format, ...)
{
    va_list args;
    pthread_mutex_lock(&lock);
    va_start(args, format);
    vsnprintf(last_error, sizeof(last_error), format, args);
    va_end(args);
    count("errors", 1);
    pthread_mutex_unlock(&lock);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Test hooks                                                          */
/* ------------------------------------------------------------------ */

EXPORT long fake_get(const char *name)
{
    if (strcmp(name, "ctx_depth") == 0) {
        return depth;
    }
    pthread_mutex_lock(&lock);
    entry *e = find_entry(counters, name);
    if (e == NULL) {
        e = find_entry(settings, name);
    }
    long value = e ? e->value : -1;
    pthread_mutex_unlock(&lock);
    return value;
}

EXPORT int fake_set(const char *name, long value)
{
    pthread_mutex_lock(&lock);
    entry *e = find_entry(settings, name);
    if (e != NULL) {
        e->value = value;
    }
    pthread_mutex_unlock(&lock);
    return e ? 0 : -1;
}

EXPORT const char *fake_last_error(void)
{
    return last_error;
}

/* Back to the defaults; counters of misuse restart, live blocks stay. */
EXPORT void fake_reset(void)
{
    pthread_mutex_lock(&lock);
    for (entry *e = settings; e->name != NULL; e++) {
        e->value = strcmp(e->name, "device_count") == 0 ? 2 : 0;
    }
    find_entry(counters, "errors")->value = 0;
    find_entry(counters, "legacy_calls")->value = 0;
    last_error[0] = '\0';
    pthread_mutex_unlock(&lock);
}

/* The block holding [address, address + size), or NULL. */
static block *find_range(CUdeviceptr address, size_t size)
{
    for (size_t i = 0; i < nblocks; i++) {
        block *b = &blocks[i];
        if (address >= b->address && address - b->address <= b->size &&
            size <= b->size - (address - b->address)) {
            return b;
        }
    }
    return NULL;
}

static block *find_start(CUdeviceptr address)
{
    for (size_t i = 0; i < nblocks; i++) {
        if (blocks[i].address == address) {
            return &blocks[i];
        }
    }
    return NULL;
}

/* What a kernel would do: read or write device (or managed) memory. */
static int kernel_access(CUdeviceptr address, void *host, size_t size, int write)
{
    pthread_mutex_lock(&lock);
    block *b = find_range(address, size);
    int rc = -1;
    if (b != NULL && b->kind != KIND_HOST) {
        char *target = b->backing + (address - b->address);
        if (write) {
            memcpy(target, host, size);
        }
        else {
            memcpy(host, target, size);
        }
        rc = 0;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

EXPORT int fake_read(CUdeviceptr address, void *target, size_t size)
{
    return kernel_access(address, target, size, 0);
}

EXPORT int fake_write(CUdeviceptr address, const void *source, size_t size)
{
    return kernel_access(address, (void *)source, size, 1);
}

/* ------------------------------------------------------------------ */
/* Initialisation, devices, contexts                                   */
/* ------------------------------------------------------------------ */

EXPORT CUresult cuInit(unsigned int flags)
{
    pthread_mutex_lock(&lock);
    count("init_calls", 1);
    CUresult rc = flags != 0 ? misuse(ERR_INVALID_VALUE, "cuInit flags %u", flags)
                             : (CUresult)setting("init_error");
    if (rc == OK) {
        initialised = 1;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

EXPORT CUresult cuDriverGetVersion(int *version)
{
    *version = 12040;
    return OK;
}

EXPORT CUresult cuDeviceGetCount(int *n)
{
    if (!initialised) {
        return misuse(ERR_NOT_INITIALIZED, "cuDeviceGetCount before cuInit");
    }
    *n = (int)setting("device_count");
    return OK;
}

EXPORT CUresult cuDeviceGet(int *device, int ordinal)
{
    if (ordinal < 0 || ordinal >= setting("device_count") || ordinal >= MAX_DEVICES) {
        return misuse(ERR_INVALID_DEVICE, "cuDeviceGet(%d)", ordinal);
    }
    *device = ordinal;
    return OK;
}

EXPORT CUresult cuDevicePrimaryCtxRetain(struct fake_context **context, int device)
{
    pthread_mutex_lock(&lock);
    CUresult rc = injected("fail_next_retain");
    if (rc == OK && (device < 0 || device >= MAX_DEVICES)) {
        rc = misuse(ERR_INVALID_DEVICE, "retain of device %d", device);
    }
    if (rc == OK) {
        contexts[device].device = device;
        *context = &contexts[device];
        count("retained", 1);
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

EXPORT CUresult cuDevicePrimaryCtxRelease_v2(int device)
{
    pthread_mutex_lock(&lock);
    CUresult rc = OK;
    if (device < 0 || device >= MAX_DEVICES || find_entry(counters, "retained")->value <= 0) {
        rc = misuse(ERR_INVALID_CONTEXT, "release of device %d not retained", device);
    }
    else {
        count("retained", -1);
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

EXPORT CUresult cuCtxPushCurrent_v2(struct fake_context *context)
{
    if (context == NULL || depth == MAX_DEPTH) {
        return misuse(ERR_INVALID_CONTEXT, "push of %p at depth %d", (void *)context, depth);
    }
    stack[depth++] = context;
    return OK;
}

EXPORT CUresult cuCtxPopCurrent_v2(struct fake_context **context)
{
    if (depth == 0) {
        return misuse(ERR_INVALID_CONTEXT, "pop of an empty context stack");
    }
    *context = stack[--depth];
    return OK;
}

/* The device of the current context, or -1 (misuse counted). */
static int current_device(const char *what)
{
    if (!initialised || depth == 0) {
        misuse(ERR_INVALID_CONTEXT, "%s without a current context", what);
        return -1;
    }
    return stack[depth - 1]->device;
}

EXPORT CUresult cuCtxSynchronize(void)
{
    if (current_device("cuCtxSynchronize") < 0) {
        return ERR_INVALID_CONTEXT;
    }
    pthread_mutex_lock(&lock);
    count("ctx_syncs", 1);
    pthread_mutex_unlock(&lock);
    return OK;
}

EXPORT CUresult cuStreamSynchronize(void *stream)
{
    if (current_device("cuStreamSynchronize") < 0) {
        return ERR_INVALID_CONTEXT;
    }
    if (stream != NULL) {
        return misuse(ERR_INVALID_VALUE, "cuStreamSynchronize of stream %p", stream);
    }
    pthread_mutex_lock(&lock);
    count("stream_syncs", 1);
    pthread_mutex_unlock(&lock);
    return OK;
}

/* ------------------------------------------------------------------ */
/* Allocation                                                          */
/* ------------------------------------------------------------------ */

static CUresult add_block(int kind, size_t size, int device, CUdeviceptr *out)
{
    if (size == 0) {
        return misuse(ERR_INVALID_VALUE, "allocation of 0 bytes");
    }
    if (nblocks == capacity) {
        size_t grown = capacity ? 2 * capacity : 64;
        block *more = realloc(blocks, grown * sizeof(block));
        if (more == NULL) {
            return ERR_OUT_OF_MEMORY;
        }
        blocks = more;
        capacity = grown;
    }
    char *backing = NULL;
    if (posix_memalign((void **)&backing, 4096, size) != 0) {
        return ERR_OUT_OF_MEMORY;
    }
    memset(backing, 0xA5, size);   /* device memory starts as garbage */
    CUdeviceptr address = (CUdeviceptr)(uintptr_t)backing;
    if (kind == KIND_DEVICE) {
        address = next_device_address;
        next_device_address += ((size + 255) & ~(CUdeviceptr)255) + 4096;
        count("device_live", 1);
        count("device_bytes", (long)size);
        count("device_allocs", 1);
    }
    else {
        count(kind == KIND_HOST ? "host_live" : "managed_live", 1);
    }
    blocks[nblocks++] = (block){address, backing, size, kind, device};
    *out = address;
    return OK;
}

static CUresult allocate(int kind, const char *failure, size_t size, CUdeviceptr *out)
{
    int device = current_device("allocation");
    if (device < 0) {
        return ERR_INVALID_CONTEXT;
    }
    pthread_mutex_lock(&lock);
    CUresult rc = injected(failure);
    if (rc == OK) {
        rc = add_block(kind, size, device, out);
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

static CUresult remove_block(CUdeviceptr address, int host_kind, const char *what)
{
    if (current_device(what) < 0) {
        return ERR_INVALID_CONTEXT;
    }
    pthread_mutex_lock(&lock);
    CUresult rc = OK;
    block *b = find_start(address);
    if (b == NULL || (b->kind == KIND_HOST) != host_kind) {
        rc = misuse(ERR_INVALID_VALUE, "%s of 0x%llx, which is no such allocation",
                    what, address);
    }
    else {
        if (b->kind == KIND_DEVICE) {
            count("device_live", -1);
            count("device_bytes", -(long)b->size);
        }
        else {
            count(b->kind == KIND_HOST ? "host_live" : "managed_live", -1);
        }
        count("frees", 1);
        free(b->backing);
        *b = blocks[--nblocks];
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *pointer, size_t size)
{
    return allocate(KIND_DEVICE, "fail_next_alloc", size, pointer);
}

EXPORT CUresult cuMemAllocManaged(CUdeviceptr *pointer, size_t size, unsigned int flags)
{
    if (flags != 1) {
        return misuse(ERR_INVALID_VALUE, "cuMemAllocManaged flags %u", flags);
    }
    return allocate(KIND_MANAGED, "fail_next_managed_alloc", size, pointer);
}

EXPORT CUresult cuMemHostAlloc(void **pointer, size_t size, unsigned int flags)
{
    CUdeviceptr address;
    if (flags & ~7u) {
        return misuse(ERR_INVALID_VALUE, "cuMemHostAlloc flags %u", flags);
    }
    CUresult rc = allocate(KIND_HOST, "fail_next_host_alloc", size, &address);
    if (rc == OK) {
        *pointer = (void *)(uintptr_t)address;
    }
    return rc;
}

EXPORT CUresult cuMemFree_v2(CUdeviceptr pointer)
{
    return remove_block(pointer, 0, "cuMemFree");
}

EXPORT CUresult cuMemFreeHost(void *pointer)
{
    return remove_block((CUdeviceptr)(uintptr_t)pointer, 1, "cuMemFreeHost");
}

/* ------------------------------------------------------------------ */
/* Copies and memset                                                   */
/* ------------------------------------------------------------------ */

/* The backing of [address, address + size) on the device side, checked. */
static char *device_side(CUdeviceptr address, size_t size, const char *what)
{
    int device = current_device(what);
    if (device < 0) {
        return NULL;
    }
    block *b = find_range(address, size);
    if (b == NULL || b->kind == KIND_HOST) {
        misuse(ERR_INVALID_VALUE, "%s of [0x%llx, +%zu) outside any device allocation",
               what, address, size);
        return NULL;
    }
    if (b->kind == KIND_DEVICE && b->device != device) {
        misuse(ERR_INVALID_CONTEXT, "%s of device %d memory from device %d's context",
               what, b->device, device);
        return NULL;
    }
    return b->backing + (address - b->address);
}

EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr target, const void *source, size_t size)
{
    pthread_mutex_lock(&lock);
    CUresult rc = injected("fail_next_htod");
    char *backing = rc == OK ? device_side(target, size, "cuMemcpyHtoD") : NULL;
    if (rc == OK && backing == NULL) {
        rc = ERR_INVALID_VALUE;
    }
    if (rc == OK) {
        memcpy(backing, source, size);
        count("htod_calls", 1);
        count("htod_bytes", (long)size);
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

EXPORT CUresult cuMemcpyDtoH_v2(void *target, CUdeviceptr source, size_t size)
{
    pthread_mutex_lock(&lock);
    CUresult rc = injected("fail_next_dtoh");
    char *backing = rc == OK ? device_side(source, size, "cuMemcpyDtoH") : NULL;
    if (rc == OK && backing == NULL) {
        rc = ERR_INVALID_VALUE;
    }
    if (rc == OK) {
        memcpy(target, backing, size);
        count("dtoh_calls", 1);
        count("dtoh_bytes", (long)size);
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

EXPORT CUresult cuMemsetD8_v2(CUdeviceptr target, unsigned char value, size_t size)
{
    pthread_mutex_lock(&lock);
    CUresult rc = injected("fail_next_memset");
    char *backing = rc == OK ? device_side(target, size, "cuMemsetD8") : NULL;
    if (rc == OK && backing == NULL) {
        rc = ERR_INVALID_VALUE;
    }
    if (rc == OK) {
        memset(backing, value, size);
        count("memset_calls", 1);
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Error text                                                          */
/* ------------------------------------------------------------------ */

static const struct { CUresult code; const char *name; const char *text; } names[] = {
    {OK, "CUDA_SUCCESS", "no error"},
    {ERR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {ERR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {ERR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {ERR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {ERR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {ERR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {ERR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
};

static CUresult lookup(CUresult code, const char **out, int text)
{
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (names[i].code == code) {
            *out = text ? names[i].text : names[i].name;
            return OK;
        }
    }
    *out = NULL;
    return ERR_INVALID_VALUE;
}

EXPORT CUresult cuGetErrorName(CUresult code, const char **name)
{
    return lookup(code, name, 0);
}

EXPORT CUresult cuGetErrorString(CUresult code, const char **text)
{
    return lookup(code, text, 1);
}

/* ------------------------------------------------------------------ */
/* The pre-_v2 names: memmanager must prefer the _v2 ones              */
/* ------------------------------------------------------------------ */

#define LEGACY(name) \
    EXPORT CUresult name(void) \
    { \
        pthread_mutex_lock(&lock); \
        count("legacy_calls", 1); \
        CUresult rc = misuse(ERR_NOT_SUPPORTED, "legacy entry point %s called", #name); \
        pthread_mutex_unlock(&lock); \
        return rc; \
    }

LEGACY(cuMemAlloc)
LEGACY(cuMemFree)
LEGACY(cuMemcpyHtoD)
LEGACY(cuMemcpyDtoH)
LEGACY(cuMemsetD8)
LEGACY(cuCtxPushCurrent)
LEGACY(cuCtxPopCurrent)
LEGACY(cuDevicePrimaryCtxRelease)
