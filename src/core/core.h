/*
 * core.h -- the core layer: what every other layer stands on.
 *
 * The layers of src/, lowest first (docs/design.md draws them):
 *
 *   core/        module state and exceptions, argument primitives, the
 *                live-region registry, the interpreters memmanager is
 *                loaded in, the cached-classmethod descriptor, compat.h
 *   allocators/  the Allocator object and its kinds
 *   buffer/      the Buffer object: lifecycle, options, access, pinning,
 *                stored views, SharedMemory attach
 *   interop/     consume() and DLPack
 *   cuda/        the CUDA driver, its allocators, device mappings and views
 *   module/      the module and the Buffer type as Python sees them
 *
 * A file includes the header of its own layer and of the layers below it,
 * never above (tools/check_layers.py, run by `make lint`, enforces it).
 * The core knows no Buffer and no allocator: it holds their types in the
 * module state as plain PyTypeObject pointers.
 *
 *   state.c              module state lookup, mm_raise_overlap
 *   args.c               positional/keyword unpacking, sizes and flags
 *   registry.c (.h)      the process-wide registry of live regions, stats
 *   interpreters.c       entering an interpreter from any thread
 *   cached_classmethod.c a classmethod that allocates nothing per lookup
 *
 * Layer: core.  Calls the C API only.
 */
#ifndef MEMMANAGER_CORE_H
#define MEMMANAGER_CORE_H

#include "core/compat.h"
#include <structmember.h>
#include <stdint.h>

#include "core/registry.h"

/* The tracemalloc domain every non-PyMem allocation is reported under
 * ("memm" in ASCII). */
#define MEMMANAGER_TRACEMALLOC_DOMAIN 0x6d656d6du

/* Branch hints: MEMMANAGER_DEBUG checks stay off the hot paths' line. */
#if defined(__GNUC__)
#define MM_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define MM_UNLIKELY(x) (x)
#endif

/* a * b for non-negative sizes: 1 when it overflows Py_ssize_t. */
static inline int mm_mul_overflow(Py_ssize_t a, Py_ssize_t b, Py_ssize_t *product)
{
#if defined(__GNUC__)
    return __builtin_mul_overflow(a, b, product);
#else
    if (b != 0 && a > PY_SSIZE_T_MAX / b) {
        return 1;
    }
    *product = a * b;
    return 0;
#endif
}

/* ------------------------------------------------------------------ */
/* Module state (state.c)                                              */
/* ------------------------------------------------------------------ */

/* Which option each keyword of a call names, remembered for the tuple of
 * keyword names (buffer/args.c owns it): a call site passes the same
 * tuple, a constant of its code, every time. */
#define MM_KWNAMES_CACHED 8
typedef struct {
    PyObject *names;                      /* strong, or NULL */
    signed char option[MM_KWNAMES_CACHED]; /* known option index; -1: extra */
} mm_kwnames_cache;

/* interpreters.c: one interpreter memmanager is loaded in. */
typedef struct mm_interp mm_interp;

/* How many Buffer methods are written in Python (module/buffer_type.c
 * names them). */
#define MM_PYTHON_METHOD_COUNT 8

/* How many adaptor types adaptors/ adds (its MM_ADAPTOR_KINDS). */
#define MM_ADAPTOR_TYPE_COUNT 3

typedef struct {
    PyTypeObject *buffer_type;
    PyTypeObject *allocator_type;
    PyTypeObject *cached_classmethod_type;
    PyTypeObject *view_entry_type; /* buffer/views.c: one stored view */
    PyTypeObject *view_export_type; /* buffer/views.c: a NumPy view's export */
    PyObject *allocators;      /* dict: name -> AllocatorObject; private
                                  (untracked, see allocators/allocator.c) */
    PyObject *default_allocator; /* the PyAlloc AllocatorObject */
    PyObject *pinned;          /* dict: identifier (int) -> Buffer */
    PyObject *MemManagerError;
    PyObject *UnknownAllocatorError;
    PyObject *OverlapError;
    PyObject *DeviceUnavailableError;
    PyObject *address_resolver; /* Python callable for foreign pointers, or NULL */
    /* The Buffer methods written in Python (module/buffer_type.c), one
     * strong reference per name, NULL until _set_python_methods().  An
     * array, not a dict: nothing of it can reach the collector or Python
     * code (a dict re-tracks itself when a function is stored in it). */
    PyObject *python_methods[MM_PYTHON_METHOD_COUNT];
    PyObject *cmalloc_allocator; /* the CMalloc AllocatorObject */
    /* Interned option names, compared by identity on the hot path. */
    PyObject *str_allocator;
    PyObject *str_init_value;
    PyObject *str_delayed_gc;
    PyObject *str_death_stub;
    PyObject *str_copy;
    PyObject *str_readonly;
    PyObject *str_owner;
    PyTypeObject *device_view_type;
    /* buffer/statistics.c: memmanager.statistics() scopes, their
     * per-allocator counters, and the context variable holding the
     * innermost active scope of each context. */
    PyTypeObject *statistics_type;
    PyTypeObject *statistics_counts_type;
    PyObject *statistics_var;
    PyObject *cuda_driver;     /* capsule: the CUDA loader, loaded at first use */
    /* mm_allocator_lookup's memory of the last name it found and what it
     * named (both strong); forgotten by every change to `allocators`
     * (mm_allocator_registry_set). */
    PyObject *last_allocator_name;
    PyObject *last_allocator;
    /* mm_parse_options' memory of the last keyword-name tuple, one for the
     * constructor's names and one for consume()'s (buffer/args.c). */
    mm_kwnames_cache kwnames_cache[2];
    /* adaptors/: the types Limit, Pool and Log, and the exception. */
    PyTypeObject *adaptor_types[MM_ADAPTOR_TYPE_COUNT];
    PyObject *LimitExceededError;
    int debug;                 /* MEMMANAGER_DEBUG was set at import */
    int auto_hugepages;        /* MEMMANAGER_HUGEPAGES was not "0" at import */
    mm_interp *interp;         /* the interpreter this module instance is in */
} mm_state;

/* The module's definition: its identity, by which a type finds its module
 * (PyType_GetModuleByDef).  It is defined here with its name and state
 * size; module/module.c gives it its functions and slots before the
 * first import, so the core never refers to a layer above it. */
extern PyModuleDef mm_module_def;

/* The state of the module that made type (or a base of it); NULL with
 * TypeError when it is none of ours. */
mm_state *mm_state_from_type(PyTypeObject *type);

/* OverlapError for [start, end) against the live region `other`. */
void mm_raise_overlap(mm_state *st, uintptr_t start, uintptr_t end,
                      const region_info *other);

/* ------------------------------------------------------------------ */
/* Argument primitives (args.c)                                        */
/* ------------------------------------------------------------------ */

/* Fills out[i] (borrowed, NULL when absent) for each of names from a
 * vectorcall's arguments; at most max_positional of them positional. */
int mm_unpack_arguments(const char *funcname, PyObject *const *args,
                        Py_ssize_t nargs, PyObject *kwnames,
                        const char *const *names, Py_ssize_t max_positional,
                        PyObject **out);
/* The common case, an int >= 1, with no conversion: 1 and *out set;
 * else 0 and no error set. */
static inline int mm_positive_int(PyObject *obj, Py_ssize_t *out)
{
    if (!PyLong_CheckExact(obj)) {
        return 0;
    }
    Py_ssize_t value = PyLong_AsSsize_t(obj);
    if (value >= 1) {
        *out = value;
        return 1;
    }
    PyErr_Clear();
    return 0;
}

/* A positive size (an exact int, or an object with __index__). */
int mm_parse_size(PyObject *obj, const char *what, Py_ssize_t *out);
/* A truth value: default_value for NULL or None, else 0/1; -1 raises. */
int mm_parse_flag(PyObject *value, int default_value);

/* ------------------------------------------------------------------ */
/* cached_classmethod.c                                                */
/* ------------------------------------------------------------------ */

extern PyType_Spec mm_cached_classmethod_spec;
int mm_install_cached_classmethods(mm_state *st, PyTypeObject *owner,
                                   PyMethodDef *defs);

/* ------------------------------------------------------------------ */
/* interpreters.c                                                      */
/* ------------------------------------------------------------------ */

/* Something to run inside an interpreter (with its GIL): exactly one of
 * run or abandon is called, once; abandon when the interpreter is gone or
 * the runtime finalised, and then only C memory may be touched.  Either
 * may free the node. */
typedef struct mm_interp_call {
    struct mm_interp_call *next;
    void (*run)(struct mm_interp_call *call);
    void (*abandon)(struct mm_interp_call *call);
} mm_interp_call;

int mm_interp_attach(mm_state *st);      /* module exec */
void mm_interp_detach(mm_state *st);     /* module clear; idempotent */
mm_interp *mm_interp_ref(mm_interp *it);
void mm_interp_unref(mm_interp *it);     /* any thread, no GIL needed */
/* From any thread, with or without the GIL: see interpreters.c. */
void mm_interp_call_soon(mm_interp *it, mm_interp_call *call);

#endif /* MEMMANAGER_CORE_H */
