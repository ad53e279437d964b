/*
 * cuda.h -- the cuda layer, as the module sees it: the NVIDIA GPU.
 *
 *   loader.c      the driver table: dlopen at first use, symbols, devices,
 *                 primary contexts, error text; _cuda_probe
 *   allocators.c  the CudaHost, CudaDevice and CudaManaged kinds, the
 *                 table they live in (_cuda_reset makes a new one)
 *   device.c      device_movement(): per-(buffer, device) mappings, hung
 *                 on the buffer as its mm_buffer_attachment
 *   view.c        device_view(): DeviceView, __cuda_array_interface__ and
 *                 DLPack through interop/dlpack.c
 *
 * Inside the layer the files share driver.h (and abi.h, our declarations
 * of the driver's ABI); in that order, each calls only the ones before.
 *
 * Layer: cuda.  May call interop/, buffer/, allocators/ and core/.
 */
#ifndef MEMMANAGER_CUDA_H
#define MEMMANAGER_CUDA_H

#include "interop/interop.h"

/* allocators.c: the table of the driver and the three allocators over it. */
int mm_cuda_register_allocators(mm_state *st);
PyObject *mm_cuda_reset(PyObject *module, PyObject *unused);

/* loader.c */
PyObject *mm_cuda_probe(PyObject *module, PyObject *unused);

/* device.c */
PyObject *mm_buffer_device_movement(PyObject *self, PyObject *const *args,
                                    Py_ssize_t nargs, PyObject *kwnames);
PyObject *mm_buffer_device_mappings(PyObject *self, PyObject *unused);

/* view.c */
extern PyType_Spec mm_device_view_type_spec;
PyObject *mm_buffer_device_view(PyObject *self, PyObject *const *args,
                                Py_ssize_t nargs, PyObject *kwnames);

#endif /* MEMMANAGER_CUDA_H */
