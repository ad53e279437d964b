/*
 * interop.h -- the interop layer: memory that crosses into memmanager
 * from other objects, and out of it to other libraries.
 *
 *   consume.c      Buffer.consume: adopting memory that exists already
 *                  (an address, a buffer-protocol object, a memoryview
 *                  chain), zero-copy or copied
 *   dlpack.c       DLPack export for every exporter (request parsing and
 *                  rules, capsules, deleters that run in the capsule's
 *                  interpreter); Buffer.__dlpack__
 *   dlpack_abi.h   our declarations of the DLPack structs (the only ones)
 *   numpy_handler.c  NumPy's own arrays through memmanager: NumPy memory
 *                  handlers (NEP 49) over registered allocators
 *
 * Layer: interop.  May call buffer/, allocators/ and core/.
 */
#ifndef MEMMANAGER_INTEROP_H
#define MEMMANAGER_INTEROP_H

#include "buffer/buffer.h"
#include "interop/dlpack_abi.h"

/* consume.c */
PyObject *mm_buffer_consume(PyObject *cls, PyObject *const *args,
                            Py_ssize_t nargs, PyObject *kwnames);

/* dlpack.c: the one DLPack implementation, a capsule over any memory
 * (Buffer.__dlpack__ here, DeviceView.__dlpack__ in cuda/view.c). */
typedef struct {
    void *data;
    int64_t nbytes;                     /* exported as a 1-D uint8 tensor */
    mm_dl_device device;                /* kDLCPU 0, kDLCUDA n, ... */
    int readonly;                       /* versioned: the READ_ONLY flag */
    int copied;                         /* versioned: the IS_COPIED flag */
    PyObject *owner;                    /* the capsule takes a reference */
    void (*unexport)(PyObject *owner);  /* gives the export back (GIL held);
                                           NULL: the owner counts none */
} mm_dlpack_source;

/* The arguments of __dlpack__, parsed but not judged. */
typedef struct {
    PyObject *stream;     /* borrowed; NULL for None */
    int versioned;        /* max_version given with major >= 1 */
    int has_device;       /* dl_device given */
    long device_type;
    long device_id;
    int copy;             /* -1: None, 0: False, 1: True */
} mm_dlpack_request;

int mm_dlpack_parse_request(const char *funcname, PyObject *const *args,
                         Py_ssize_t nargs, PyObject *kwnames,
                         mm_dlpack_request *out);
int mm_dlpack_check_device(const mm_dlpack_request *req, mm_dl_device here,
                        const char *what);
int mm_dlpack_check_readonly(int readonly, int versioned, const char *what,
                          const char *remedy);
PyObject *mm_dlpack_capsule_new(const mm_dlpack_source *src, int versioned);
PyObject *mm_buffer_dlpack(PyObject *self, PyObject *const *args,
                        Py_ssize_t nargs, PyObject *kwnames);
PyObject *mm_buffer_dlpack_device(PyObject *self, PyObject *unused);

/* numpy_handler.c: the module's _numpy_* functions (memmanager.numpy). */
PyObject *mm_numpy_bind(PyObject *module, PyObject *unused);
PyObject *mm_numpy_handler(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *mm_numpy_set_handler(PyObject *module, PyObject *handler);
PyObject *mm_numpy_get_handler(PyObject *module, PyObject *unused);
PyObject *mm_numpy_handler_allocator(PyObject *module, PyObject *capsule);
PyObject *mm_numpy_live_blocks(PyObject *module, PyObject *unused);

#endif /* MEMMANAGER_INTEROP_H */
