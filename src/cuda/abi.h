/*
 * abi.h -- the few facts of the CUDA driver API (libcuda) that the GPU
 * code needs, written out by hand so that building memmanager needs no CUDA
 * toolkit: handle and result types, the handful of constants we pass or
 * test, and one function-pointer type per entry point loader.c
 * resolves.  (DLPack, which the device views also speak, has its one set of
 * declarations in dlpack_abi.h.)
 *
 * Only values are taken from the published interface; a name here says
 * what the value means to us.  Nothing in this file allocates or calls.
 *
 * Layer: cuda.  May call interop/, buffer/, allocators/ and core/.
 */
#ifndef MEMMANAGER_CUDA_ABI_H
#define MEMMANAGER_CUDA_ABI_H

#include <stddef.h>

typedef int cu_result;                    /* CUresult: 0 is success */
typedef int cu_device;                    /* CUdevice: an ordinal handle */
typedef struct cu_context_opaque *cu_context;   /* CUcontext */
typedef struct cu_stream_opaque *cu_stream;     /* CUstream; NULL: legacy default */
typedef unsigned long long cu_device_ptr; /* CUdeviceptr (64-bit, the _v2 ABI) */

#define CU_SUCCESS 0
#define CU_ERROR_OUT_OF_MEMORY 2
#define CU_ERROR_NO_DEVICE 100

/* cuMemHostAlloc flag: the pinned block is pinned for every context. */
#define CU_HOST_ALLOC_PORTABLE 0x01u
/* cuMemAllocManaged flag: the block is reachable from every stream. */
#define CU_MANAGED_ATTACH_GLOBAL 0x01u

typedef cu_result (*cu_init_fn)(unsigned int flags);
typedef cu_result (*cu_driver_get_version_fn)(int *version);
typedef cu_result (*cu_device_get_count_fn)(int *count);
typedef cu_result (*cu_device_get_fn)(cu_device *device, int ordinal);
typedef cu_result (*cu_primary_ctx_retain_fn)(cu_context *context, cu_device device);
typedef cu_result (*cu_primary_ctx_release_fn)(cu_device device);
typedef cu_result (*cu_ctx_push_fn)(cu_context context);
typedef cu_result (*cu_ctx_pop_fn)(cu_context *context);
typedef cu_result (*cu_ctx_synchronize_fn)(void);
typedef cu_result (*cu_stream_synchronize_fn)(cu_stream stream);
typedef cu_result (*cu_mem_alloc_fn)(cu_device_ptr *pointer, size_t size);
typedef cu_result (*cu_mem_free_fn)(cu_device_ptr pointer);
typedef cu_result (*cu_memcpy_htod_fn)(cu_device_ptr target, const void *source,
                                       size_t size);
typedef cu_result (*cu_memcpy_dtoh_fn)(void *target, cu_device_ptr source,
                                       size_t size);
typedef cu_result (*cu_memset_d8_fn)(cu_device_ptr target, unsigned char value,
                                     size_t size);
typedef cu_result (*cu_mem_host_alloc_fn)(void **pointer, size_t size,
                                          unsigned int flags);
typedef cu_result (*cu_mem_free_host_fn)(void *pointer);
typedef cu_result (*cu_mem_alloc_managed_fn)(cu_device_ptr *pointer, size_t size,
                                             unsigned int flags);
typedef cu_result (*cu_get_error_text_fn)(cu_result error, const char **text);

#endif /* MEMMANAGER_CUDA_ABI_H */
