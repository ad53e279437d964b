/*
 * adaptors.h -- the adaptors layer: allocators whose blocks come from
 * another registered allocator, their *upstream* (DESIGN section 12).
 *
 *   adaptor.c   what every adaptor shares: the Python object's common
 *               part (its upstream and the upstream's options, parsed
 *               once), registration under a name (with the cycle check)
 *   limit.c     Limit(upstream, max_bytes): a budget of live bytes
 *   pool.c      Pool(upstream, ...): size classes and coalescing ranges
 *   log.c       Log(upstream, path): one line per allocate and free
 *   replay.c    replay(path, allocator): a log played against an allocator
 *
 * An adaptor is a Python object (memmanager.Pool, ...) holding C state.
 * register_allocator(name, adaptor) makes an Allocator object whose kind
 * (mm_allocator_ops) is the adaptor's and whose keeper is the adaptor, so
 * every buffer made through it keeps the adaptor, and so its upstream,
 * alive.  Adaptors call their upstream through mm_allocator_take_block()
 * and mm_allocator_give_block() (raw blocks, counted in the upstream's
 * stats()); guard bytes and tracemalloc are the outermost allocator's
 * business (allocator.c), so a Pool's blocks are guarded one by one under
 * MEMMANAGER_DEBUG.  No adaptor calls Python on its hot path, and none
 * holds its own lock while calling its upstream (a Python plug-in there
 * may call back in).
 *
 * Layer: adaptors.  May call allocators/ and core/.
 */
#ifndef MEMMANAGER_ADAPTORS_H
#define MEMMANAGER_ADAPTORS_H

#include "allocators/allocators.h"

/* The first member of every adaptor object. */
typedef struct AdaptorObject {
    PyObject_HEAD
    AllocatorObject *upstream;      /* strong */
    PyObject *upstream_options;     /* private, untracked dict; or NULL */
    mm_request upstream_req;        /* those options, parsed by the upstream */
    const mm_allocator_ops *ops;    /* the kind registered for this adaptor */
    unsigned char passes_cookie;    /* blocks are the upstream's own */
    size_t upstream_blocks;         /* atomic: blocks held from the upstream */
    size_t upstream_bytes;          /* atomic: their bytes */
    unsigned char parsed;           /* upstream_req holds the parsed options;
                                       else each buffer's are parsed (an
                                       upstream that needs some, given none) */
} AdaptorObject;

/* The adaptor types, in st->adaptor_types order. */
enum { MM_ADAPTOR_LIMIT, MM_ADAPTOR_POOL, MM_ADAPTOR_LOG, MM_ADAPTOR_KINDS };
_Static_assert(MM_ADAPTOR_KINDS == MM_ADAPTOR_TYPE_COUNT,
               "core.h sizes st->adaptor_types");

extern PyType_Spec mm_limit_type_spec;
extern PyType_Spec mm_pool_type_spec;
extern PyType_Spec mm_log_type_spec;

/* adaptor.c */

/* Fills the common part of a new adaptor: looks its upstream up by name
 * and has it parse options (the constructor's leftover keywords, a dict
 * the adaptor may keep, or NULL).  Raises UnknownAllocatorError,
 * TypeError or ValueError; the adaptor's dealloc cleans up after a
 * failure. */
int mm_adaptor_init(AdaptorObject *self, const mm_allocator_ops *ops,
                    PyObject *upstream_name, PyObject *options);
/* tp_traverse and the release of the common part, for each kind's. */
int mm_adaptor_traverse(AdaptorObject *self, visitproc visit, void *arg);
void mm_adaptor_clear_common(AdaptorObject *self);
/* The adaptor behind an Allocator object of an adaptor kind. */
static inline AdaptorObject *mm_adaptor_of(AllocatorObject *alloc)
{
    return (AdaptorObject *)alloc->keeper;
}
/* Splits a constructor's keywords: own[i] receives the value of names[i]
 * (borrowed from *kept, or left alone when absent), *rest the others (a
 * new dict, or NULL when there are none).  *kept is a private copy of
 * kwargs (or NULL) that the caller releases once done with own[]. */
int mm_adaptor_split_keywords(PyObject *kwargs, const char *const *names,
                              PyObject **own, PyObject **rest, PyObject **kept);
/* parse_options of kinds that pass per-buffer options on (Limit, Log):
 * the upstream's options, or the per-buffer ones when the adaptor was
 * made without any. */
int mm_adaptor_parse_passed_options(AllocatorObject *alloc, PyObject *options,
                                    mm_request *req);
/* The upstream's request for `size` bytes of a pooled block. */
void mm_adaptor_upstream_request(const AdaptorObject *self, size_t size,
                                 mm_request *req);
/* A raw block of the upstream, counted in upstream_blocks/bytes (which
 * stats() shows under the adaptor's names); give never raises. */
int mm_adaptor_take(AdaptorObject *self, const mm_request *req, size_t size,
                    int zero, mm_raw *out);
void mm_adaptor_give(AdaptorObject *self, char *base, size_t size, void *cookie);

/* The getter of `upstream`: the upstream's name. */
PyObject *mm_adaptor_get_upstream(PyObject *op, void *closure);

/* 1 when obj is an adaptor object, else 0. */
int mm_adaptor_check(mm_state *st, PyObject *obj);
/* register_allocator(name, adaptor); the new Allocator object. */
PyObject *mm_adaptor_register(mm_state *st, PyObject *name, PyObject *adaptor);

/* replay.c: _replay(path, allocator) of the module (METH_FASTCALL |
 * METH_KEYWORDS): (events, allocations, frees, seconds, peak_bytes,
 * unfreed, unfreed_bytes), which memmanager.replay() names. */
PyObject *mm_replay(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                    PyObject *kwnames);

#endif /* MEMMANAGER_ADAPTORS_H */
