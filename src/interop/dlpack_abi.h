/*
 * dlpack_abi.h -- our own declarations of the DLPack data-exchange ABI.
 *
 * DLPack (https://dmlc.github.io/dlpack/) is a C struct layout plus a
 * Python convention (a PyCapsule named "dltensor_versioned" or, for the
 * legacy ABI, "dltensor"; a consumer renames it "used_..." when it takes
 * ownership).  Only the layout and the constant values are the standard's;
 * these declarations are written for memmanager and cover what it needs:
 * byte tensors on the CPU here, and on CUDA devices for the GPU code.
 *
 * Layout facts this file encodes (DLPack 1.x):
 *   - a device is (device_type: 32-bit enum, device_id: int32);
 *   - a data type is (code: uint8, bits: uint8, lanes: uint16);
 *   - a tensor is data, device, ndim, dtype, shape, strides, byte_offset,
 *     in that order; shape and strides count elements, not bytes;
 *   - the versioned managed tensor starts with its version, then
 *     manager_ctx, deleter and flags, then the tensor, so that a consumer
 *     of any 1.x minor version can at least call the deleter;
 *   - the legacy managed tensor is the tensor, then manager_ctx and
 *     deleter.
 * The deleter releases the producer's resources and frees the managed
 * struct itself; the consumer calls it exactly once, from any thread.
 *
 * Layer: interop.  May call buffer/, allocators/ and core/.
 */
#ifndef MEMMANAGER_DLPACK_ABI_H
#define MEMMANAGER_DLPACK_ABI_H

#include <stdint.h>

/* The version memmanager produces: every field and value it uses exists in
 * 1.0, so it claims no later minor version. */
#define MM_DLPACK_MAJOR 1
#define MM_DLPACK_MINOR 0

/* Capsule names of the Python exchange protocol. */
#define MM_DLPACK_CAPSULE_VERSIONED "dltensor_versioned"
#define MM_DLPACK_CAPSULE_VERSIONED_USED "used_dltensor_versioned"
#define MM_DLPACK_CAPSULE_LEGACY "dltensor"
#define MM_DLPACK_CAPSULE_LEGACY_USED "used_dltensor"

/* Device types (the subset memmanager produces or recognises). */
typedef enum {
    MM_DL_CPU = 1,
    MM_DL_CUDA = 2,
    MM_DL_CUDA_HOST = 3,
    MM_DL_CUDA_MANAGED = 13,
} mm_dl_device_type;

/* Data type codes (the subset memmanager produces). */
enum {
    MM_DL_INT = 0,
    MM_DL_UINT = 1,
    MM_DL_FLOAT = 2,
};

/* Flags of the versioned managed tensor. */
#define MM_DLPACK_FLAG_READ_ONLY ((uint64_t)1 << 0)
#define MM_DLPACK_FLAG_IS_COPIED ((uint64_t)1 << 1)

typedef struct {
    uint32_t major;
    uint32_t minor;
} mm_dlpack_version;

typedef struct {
    mm_dl_device_type device_type;   /* an int-sized enum */
    int32_t device_id;
} mm_dl_device;

typedef struct {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
} mm_dl_data_type;

typedef struct {
    void *data;
    mm_dl_device device;
    int32_t ndim;
    mm_dl_data_type dtype;
    int64_t *shape;
    int64_t *strides;        /* NULL is legal only in old versions: always set */
    uint64_t byte_offset;
} mm_dl_tensor;

typedef struct mm_dl_managed_tensor {
    mm_dl_tensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct mm_dl_managed_tensor *self);
} mm_dl_managed_tensor;

typedef struct mm_dl_managed_tensor_versioned {
    mm_dlpack_version version;
    void *manager_ctx;
    void (*deleter)(struct mm_dl_managed_tensor_versioned *self);
    uint64_t flags;
    mm_dl_tensor dl_tensor;
} mm_dl_managed_tensor_versioned;

/* The enum must be int-sized for the layout above to be the standard's. */
_Static_assert(sizeof(mm_dl_device_type) == sizeof(int32_t),
               "DLPack device type must be 32 bits");
_Static_assert(sizeof(mm_dl_device) == 8, "DLPack device layout");
_Static_assert(sizeof(mm_dl_data_type) == 4, "DLPack data type layout");

#endif /* MEMMANAGER_DLPACK_ABI_H */
