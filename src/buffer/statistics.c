/*
 * statistics.c -- memmanager.statistics(): counters of the buffers made
 * inside a with block, per allocator, nestable, per thread or context.
 *
 * In Python terms:
 *
 *     _innermost = contextvars.ContextVar("memmanager.statistics")
 *
 *     class Statistics:               # made by memmanager.statistics()
 *         def __enter__(self):        # once
 *             self.parent = _innermost.get(None)
 *             self.token = _innermost.set(self)
 *             return self
 *         def __exit__(self, *exc):   # only the innermost, in its context
 *             if _innermost.get(None) is not self: raise RuntimeError
 *             _innermost.reset(self.token)      # counters stay readable
 *
 *     # Every buffer that owns its memory, once registered (buffer.c):
 *     scopes = [s for s in chain(_innermost.get(None)) if s.active]
 *     for s in scopes: s.count_allocation(buffer)
 *     buffer.statistics = scopes[0]          # and at release, the same
 *     # walk from buffer.statistics counts the free in the active ones.
 *
 * The context variable is what makes the scopes per thread (a new thread
 * starts in a context of its own) and per asyncio task (a task runs in a
 * copy of the context it was created in).  A process-wide count of the
 * active scopes lets the create and release paths of a program that uses
 * no scope skip all of this with one load and branch.
 *
 * Ownership rules
 * ---------------
 * - A scope holds its parent (the scope innermost in its context when it
 *   was entered) for its whole life, so the chain a buffer walks at its
 *   release is the one it walked at its creation.  The chain only points
 *   outwards: no cycle runs through parents.
 * - While active, a scope holds the token of its PyContextVar_Set, which
 *   holds the context, which holds the scope: a cycle, seen by the
 *   collector (traverse visits the token) and broken by tp_clear, which
 *   drops the token and ends the scope.  Exit drops the token too.
 * - A buffer counted in a scope holds the innermost scope it was counted
 *   in (BufferObject.statistics), and drops it at the end of its release
 *   (mm_statistics_count_free), where dropping its `source` may run
 *   arbitrary code already: the buffer is consistent by then.
 * - A scope's counters are plain integers, its slot names str: its
 *   dealloc runs Python code only when it holds a token still (a scope
 *   entered and never exited whose context dies with it), and then only
 *   the deallocs of what that context held.
 *
 * Legal states
 * ------------
 *   new       made, never entered                      (counts nothing)
 *   entering  inside __enter__ (the context calls may start a collection,
 *             whose finalizers must not enter it again)
 *   active    entered, token held, in the active count  (counts)
 *   exiting   inside __exit__                          (counts nothing)
 *   exited    terminal: exited, or ended by the collector; frozen counters
 * new -> entering -> active -> exiting -> exited; a failed enter goes back
 * to new, a refused exit back to active.
 *
 * What counts: a buffer whose memory it owns, or a NumPy array allocated
 * through memmanager (interop/numpy_handler.c; live_buffers counts both),
 * while the scope is active in the context that creates it; its free counts in each scope of its chain
 * that is still active when it is released.  (A scope active at the free
 * was entered before the allocation and not exited since, so it counted
 * the allocation too: live_* never go below zero.)
 *
 * Layer: buffer.  May call allocators/ and core/.
 */
#include "buffer/buffer.h"

#include <stddef.h>
#include <string.h>

enum {
    SCOPE_NEW,
    SCOPE_ENTERING,
    SCOPE_ACTIVE,
    SCOPE_EXITING,
    SCOPE_EXITED,
};

/* The counters, in the order of the attributes and of AllocatorStatistics:
 * X(name, doc) for each. */
#define SCOPE_COUNTERS(X) \
    X(allocations, "Buffers made while the scope was active.") \
    X(allocated_bytes, "Bytes of those buffers.") \
    X(frees, "Counted buffers freed while the scope was active.") \
    X(freed_bytes, "Bytes of those frees.") \
    X(live_buffers, "Counted buffers not freed (as of the exit, once exited).") \
    X(live_bytes, "Bytes of those buffers.") \
    X(peak_bytes, "The highest live_bytes while the scope was active.")

typedef struct {
#define DECLARE_COUNTER(name, doc) uint64_t name;
    SCOPE_COUNTERS(DECLARE_COUNTER)
#undef DECLARE_COUNTER
} scope_counts;

static const size_t counter_offsets[] = {
#define COUNTER_OFFSET(name, doc) offsetof(scope_counts, name),
    SCOPE_COUNTERS(COUNTER_OFFSET)
#undef COUNTER_OFFSET
};
#define COUNTER_COUNT ((Py_ssize_t)(sizeof(counter_offsets) / sizeof(counter_offsets[0])))

/* One allocator name's counters in one scope.  Entries are made before
 * a buffer of that allocator is registered (so that counting it cannot
 * fail), and never removed: one whose allocations are 0 is not shown. */
typedef struct {
    int stats_slot;           /* the registry's slot of the name */
    PyObject *name;           /* str, strong */
    scope_counts counts;
} scope_slot;

typedef struct {
    PyObject_HEAD
    PyObject *parent;         /* strong: the scope innermost at enter, or NULL */
    PyObject *token;          /* strong while active or exiting, else NULL */
    scope_counts total;
    scope_slot *slots;        /* PyMem_Malloc'd: slot_count used of slot_capacity */
    Py_ssize_t slot_count;
    Py_ssize_t slot_capacity;
    unsigned char state;      /* SCOPE_* */
} StatisticsObject;

#define SCOPE(op) ((StatisticsObject *)(op))

/* How many scopes are active in the process, every interpreter together:
 * 0 lets buffer.c skip the context lookup (mm_statistics_any_active). */
Py_ssize_t mm_statistics_active_scopes = 0;

static void count_scope_started(void)
{
    __atomic_add_fetch(&mm_statistics_active_scopes, 1, __ATOMIC_RELAXED);
}

static void count_scope_ended(void)
{
    __atomic_sub_fetch(&mm_statistics_active_scopes, 1, __ATOMIC_RELAXED);
}

/* A free-threaded build may count into one scope from several threads
 * (asyncio.to_thread copies the context): its counters are then updated
 * and read under the scope's critical section; with the GIL, the GIL is
 * the lock. */
#ifdef Py_GIL_DISABLED
#define SCOPE_LOCK(op) Py_BEGIN_CRITICAL_SECTION(op)
#define SCOPE_UNLOCK() Py_END_CRITICAL_SECTION()
#else
#define SCOPE_LOCK(op) {
#define SCOPE_UNLOCK() }
#endif

/* ------------------------------------------------------------------ */
/* Counting (called from buffer.c)                                     */
/* ------------------------------------------------------------------ */

/* self's entry for the registry's stats slot `slot`, or NULL.  A scope
 * sees a few allocators: a linear search. */
static scope_slot *find_slot(StatisticsObject *self, int slot)
{
    for (Py_ssize_t i = 0; i < self->slot_count; i++) {
        if (self->slots[i].stats_slot == slot) {
            return &self->slots[i];
        }
    }
    return NULL;
}

/* An entry for alloc in self (made now if missing); -1 with MemoryError. */
static int reserve_slot(StatisticsObject *self, AllocatorObject *alloc)
{
    if (alloc->stats_slot < 0 || find_slot(self, alloc->stats_slot) != NULL) {
        return 0;
    }
    if (self->slot_count == self->slot_capacity) {
        Py_ssize_t capacity = self->slot_capacity ? 2 * self->slot_capacity : 4;
        scope_slot *grown = PyMem_Realloc(self->slots, (size_t)capacity * sizeof(scope_slot));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->slots = grown;
        self->slot_capacity = capacity;
    }
    scope_slot *entry = &self->slots[self->slot_count++];
    memset(entry, 0, sizeof(*entry));
    entry->stats_slot = alloc->stats_slot;
    entry->name = Py_NewRef(alloc->name);
    return 0;
}

/* The innermost scope of the current context as a new reference, or NULL
 * (none, or something else stored in the variable by a hostile caller
 * that found it): -1 only when the lookup failed. */
static int current_scope(mm_state *st, PyObject **out)
{
    *out = NULL;
    if (st->statistics_var == NULL) {
        return 0;
    }
    if (PyContextVar_Get(st->statistics_var, NULL, out) < 0) {
        return -1;
    }
    if (*out != NULL && !Py_IS_TYPE(*out, st->statistics_type)) {
        Py_CLEAR(*out);
    }
    return 0;
}

int mm_statistics_prepare(mm_state *st, AllocatorObject *alloc, PyObject **scope)
{
    PyObject *current;
    *scope = NULL;
    if (current_scope(st, &current) < 0) {
        return -1;
    }
    int rc = 0;
    for (PyObject *op = current; op != NULL; op = SCOPE(op)->parent) {
        if (SCOPE(op)->state != SCOPE_ACTIVE) {
            continue;
        }
        SCOPE_LOCK(op);
        rc = reserve_slot(SCOPE(op), alloc);
        SCOPE_UNLOCK();
        if (rc < 0) {
            break;
        }
        if (*scope == NULL) {
            *scope = Py_NewRef(op);
        }
    }
    if (rc < 0) {
        Py_CLEAR(*scope);
    }
    Py_XDECREF(current);
    return rc;
}

static void add_allocation(scope_counts *c, uint64_t nbytes)
{
    c->allocations++;
    c->allocated_bytes += nbytes;
    c->live_buffers++;
    c->live_bytes += nbytes;
    if (c->live_bytes > c->peak_bytes) {
        c->peak_bytes = c->live_bytes;
    }
}

static void add_free(scope_counts *c, uint64_t nbytes)
{
    c->frees++;
    c->freed_bytes += nbytes;
    if (c->live_buffers > 0) {   /* always: see "What counts" above */
        c->live_buffers--;
    }
    c->live_bytes = c->live_bytes >= nbytes ? c->live_bytes - nbytes : 0;
}

void mm_statistics_count_block(PyObject *scope, int slot, uint64_t nbytes)
{
    for (PyObject *op = scope; op != NULL; op = SCOPE(op)->parent) {
        StatisticsObject *s = SCOPE(op);
        if (s->state != SCOPE_ACTIVE) {
            continue;
        }
        SCOPE_LOCK(op);
        add_allocation(&s->total, nbytes);
        scope_slot *entry = find_slot(s, slot);   /* made by prepare */
        if (entry != NULL) {
            add_allocation(&entry->counts, nbytes);
        }
        SCOPE_UNLOCK();
    }
}

void mm_statistics_count_block_free(PyObject *scope, int slot, uint64_t nbytes)
{
    for (PyObject *op = scope; op != NULL; op = SCOPE(op)->parent) {
        StatisticsObject *s = SCOPE(op);
        if (s->state != SCOPE_ACTIVE) {
            continue;
        }
        SCOPE_LOCK(op);
        add_free(&s->total, nbytes);
        scope_slot *entry = find_slot(s, slot);
        if (entry != NULL) {
            add_free(&entry->counts, nbytes);
        }
        SCOPE_UNLOCK();
    }
    Py_XDECREF(scope);   /* last: see the ownership rules */
}

void mm_statistics_count_allocation(BufferObject *self, PyObject *scope)
{
    assert(self->statistics == NULL);
    self->statistics = scope;   /* the reference mm_statistics_prepare made */
    mm_statistics_count_block(scope, self->allocator->stats_slot,
                              (uint64_t)self->nbytes);
}

void mm_statistics_count_free(BufferObject *self)
{
    PyObject *scope = self->statistics;
    int slot = self->allocator != NULL ? self->allocator->stats_slot : -1;
    self->statistics = NULL;
    mm_statistics_count_block_free(scope, slot, (uint64_t)self->nbytes);
}

/* ------------------------------------------------------------------ */
/* Creation, enter and exit                                            */
/* ------------------------------------------------------------------ */

PyObject *mm_statistics_new(PyObject *module, PyObject *Py_UNUSED(unused))
{
    mm_state *st = (mm_state *)PyModule_GetState(module);
    if (st == NULL || st->statistics_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "memmanager is being torn down");
        return NULL;
    }
    StatisticsObject *self = PyObject_GC_New(StatisticsObject, st->statistics_type);
    if (self == NULL) {
        return NULL;
    }
    self->parent = NULL;
    self->token = NULL;
    memset(&self->total, 0, sizeof(self->total));
    self->slots = NULL;
    self->slot_count = 0;
    self->slot_capacity = 0;
    self->state = SCOPE_NEW;
    PyObject_GC_Track((PyObject *)self);
    return (PyObject *)self;
}

PyObject *mm_statistics_active_count(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(unused))
{
    return PyLong_FromSsize_t(
        __atomic_load_n(&mm_statistics_active_scopes, __ATOMIC_RELAXED));
}

static int refuse_state(StatisticsObject *self, const char *doing)
{
    const char *why;
    switch (self->state) {
    case SCOPE_NEW:
        why = "it was never entered";
        break;
    case SCOPE_ACTIVE:
        why = "it is active already: a scope is entered once";
        break;
    case SCOPE_EXITED:
        why = "it has ended: a scope is entered once; make a new one with "
              "memmanager.statistics()";
        break;
    default:
        why = "it is being entered or exited";
        break;
    }
    PyErr_Format(PyExc_RuntimeError, "cannot %s this statistics scope: %s", doing, why);
    return -1;
}

/* The context variable holds a scope that was never entered only when
 * code that found the variable stored it there.  Taking such a scope as
 * the parent could make a scope its own ancestor (var.set(s); s.__enter__()),
 * and every walk of the chain endless: RuntimeError.  So a scope's parent
 * was always entered before it, and no chain has a cycle. */
static int refuse_unentered_parent(PyObject *parent)
{
    if (parent != NULL && (SCOPE(parent)->state == SCOPE_NEW ||
                           SCOPE(parent)->state == SCOPE_ENTERING)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot enter this statistics scope: the context "
                        "variable holds a scope that was never entered (other "
                        "code set it)");
        return -1;
    }
    return 0;
}

static PyObject *scope_enter(PyObject *op, PyObject *Py_UNUSED(unused))
{
    StatisticsObject *self = SCOPE(op);
    mm_state *st = mm_state_from_type(Py_TYPE(op));
    PyObject *parent, *token = NULL;
    if (st == NULL) {
        return NULL;
    }
    if (self->state != SCOPE_NEW) {
        refuse_state(self, "enter");
        return NULL;
    }
    if (st->statistics_var == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "memmanager is being torn down");
        return NULL;
    }
    /* The context calls allocate, so a collection may run finalizers
     * between them: `entering` keeps them from entering or exiting self. */
    self->state = SCOPE_ENTERING;
    if (current_scope(st, &parent) < 0 || refuse_unentered_parent(parent) < 0 ||
        (token = PyContextVar_Set(st->statistics_var, op)) == NULL) {
        Py_XDECREF(parent);
        self->state = SCOPE_NEW;
        return NULL;
    }
    self->parent = parent;
    self->token = token;
    self->state = SCOPE_ACTIVE;
    count_scope_started();
    return Py_NewRef(op);
}

/* __exit__(*exc_info): the exception leaving the block (if any) is left to
 * go on; the arguments are not looked at. */
static PyObject *scope_exit(PyObject *op, PyObject *const *Py_UNUSED(args),
                            Py_ssize_t nargs)
{
    StatisticsObject *self = SCOPE(op);
    mm_state *st = mm_state_from_type(Py_TYPE(op));
    PyObject *current;
    if (st == NULL) {
        return NULL;
    }
    if (nargs > 3) {
        PyErr_Format(PyExc_TypeError,
                     "__exit__ takes at most 3 arguments (%zd given)", nargs);
        return NULL;
    }
    if (self->state != SCOPE_ACTIVE) {
        refuse_state(self, "exit");
        return NULL;
    }
    self->state = SCOPE_EXITING;
    if (current_scope(st, &current) < 0) {
        self->state = SCOPE_ACTIVE;
        return NULL;
    }
    int innermost = current == op;
    Py_XDECREF(current);   /* the context holds it */
    if (!innermost) {
        self->state = SCOPE_ACTIVE;
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot exit this statistics scope here: it is not the "
                        "innermost active scope of this context (exit the scopes "
                        "entered inside it first, in the context that entered them)");
        return NULL;
    }
    if (PyContextVar_Reset(st->statistics_var, self->token) < 0) {
        /* A copy of the entering context (an asyncio task made inside
         * the block): the token belongs to the original. */
        self->state = SCOPE_ACTIVE;
        PyErr_Clear();
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot exit this statistics scope here: it was entered in "
                        "another context (a copy of a context cannot exit it)");
        return NULL;
    }
    self->state = SCOPE_EXITED;
    Py_CLEAR(self->token);
    count_scope_ended();
    Py_RETURN_FALSE;
}

static PyObject *scope_reduce(PyObject *op, PyObject *Py_UNUSED(unused))
{
    PyErr_Format(PyExc_TypeError,
                 "cannot pickle or copy a %s scope: read its counters instead",
                 Py_TYPE(op)->tp_name);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Reading the counters                                                */
/* ------------------------------------------------------------------ */

static uint64_t counter_at(const scope_counts *c, Py_ssize_t field)
{
    return *(const uint64_t *)((const char *)c + counter_offsets[field]);
}

/* An AllocatorStatistics of *c (a copy the caller took under the lock). */
static PyObject *counts_object(mm_state *st, const scope_counts *c)
{
    if (st->statistics_counts_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "memmanager is being torn down");
        return NULL;
    }
    PyObject *result = PyStructSequence_New(st->statistics_counts_type);
    if (result == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < COUNTER_COUNT; i++) {
        PyObject *value = PyLong_FromUnsignedLongLong(counter_at(c, i));
        if (value == NULL) {
            Py_DECREF(result);
            return NULL;
        }
        PyStructSequence_SET_ITEM(result, i, value);
    }
    return result;
}

static PyObject *scope_get_counter(PyObject *op, void *closure)
{
    size_t offset = (size_t)(uintptr_t)closure;
    uint64_t value;
    SCOPE_LOCK(op);
    value = *(const uint64_t *)((const char *)&SCOPE(op)->total + offset);
    SCOPE_UNLOCK();
    return PyLong_FromUnsignedLongLong(value);
}

static PyObject *scope_get_active(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(SCOPE(op)->state == SCOPE_ACTIVE);
}

/* Entry i's name (a new reference) and counters, copied under the lock;
 * 0 when there is no entry i.  Entries are only ever appended. */
static int entry_at(StatisticsObject *self, Py_ssize_t i, PyObject **name,
                    scope_counts *counts)
{
    int found = 0;
    SCOPE_LOCK(self);
    if (i < self->slot_count) {
        *name = Py_NewRef(self->slots[i].name);
        *counts = self->slots[i].counts;
        found = 1;
    }
    SCOPE_UNLOCK();
    return found;
}

static PyObject *scope_get_allocators(PyObject *op, void *Py_UNUSED(closure))
{
    StatisticsObject *self = SCOPE(op);
    mm_state *st = mm_state_from_type(Py_TYPE(op));
    if (st == NULL) {
        return NULL;
    }
    PyObject *result = PyDict_New();
    if (result == NULL) {
        return NULL;
    }
    /* The table may grow while the dict is filled (a collection during
     * an allocation here may make buffers): entry_at reads it afresh. */
    PyObject *name;
    scope_counts c;
    for (Py_ssize_t i = 0; entry_at(self, i, &name, &c); i++) {
        if (c.allocations == 0) {   /* made for a buffer that was refused */
            Py_DECREF(name);
            continue;
        }
        PyObject *entry = counts_object(st, &c);
        int rc = entry == NULL ? -1 : PyDict_SetItem(result, name, entry);
        Py_XDECREF(entry);
        Py_DECREF(name);
        if (rc < 0) {
            Py_DECREF(result);
            return NULL;
        }
    }
    return result;
}

/* s[name]: that allocator's counters in this scope, zeros when the scope
 * counted none of its buffers (or no allocator has that name). */
static PyObject *scope_subscript(PyObject *op, PyObject *key)
{
    StatisticsObject *self = SCOPE(op);
    mm_state *st = mm_state_from_type(Py_TYPE(op));
    if (st == NULL) {
        return NULL;
    }
    if (!PyUnicode_Check(key)) {
        PyErr_Format(PyExc_TypeError, "allocator names are str, not %.100s",
                     Py_TYPE(key)->tp_name);
        return NULL;
    }
    PyObject *name;
    scope_counts c;
    for (Py_ssize_t i = 0; entry_at(self, i, &name, &c); i++) {
        /* str against str compares the characters: no Python code runs. */
        int same = PyUnicode_Compare(name, key) == 0;
        Py_DECREF(name);
        if (same) {
            return counts_object(st, &c);
        }
    }
    memset(&c, 0, sizeof(c));
    return counts_object(st, &c);
}

static PyObject *scope_repr(PyObject *op)
{
    static const char *const states[] = {"new", "entering", "active", "exiting", "exited"};
    StatisticsObject *self = SCOPE(op);
    scope_counts c;
    SCOPE_LOCK(op);
    c = self->total;
    SCOPE_UNLOCK();
    return PyUnicode_FromFormat(
        "<memmanager.Statistics %s: allocations=%llu allocated_bytes=%llu "
        "frees=%llu freed_bytes=%llu live_buffers=%llu live_bytes=%llu "
        "peak_bytes=%llu>", states[self->state],
        (unsigned long long)c.allocations, (unsigned long long)c.allocated_bytes,
        (unsigned long long)c.frees, (unsigned long long)c.freed_bytes,
        (unsigned long long)c.live_buffers, (unsigned long long)c.live_bytes,
        (unsigned long long)c.peak_bytes);
}

/* ------------------------------------------------------------------ */
/* GC and deallocation                                                 */
/* ------------------------------------------------------------------ */

static int scope_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(SCOPE(op)->parent);
    Py_VISIT(SCOPE(op)->token);
    return 0;
}

/* Ends the scope and drops its token: that breaks every cycle through it
 * (the parent chain has none), and the parent stays for the buffers that
 * still walk it. */
static int scope_clear(PyObject *op)
{
    StatisticsObject *self = SCOPE(op);
    if (self->state == SCOPE_ACTIVE || self->state == SCOPE_EXITING) {
        count_scope_ended();
    }
    if (self->state != SCOPE_NEW) {
        self->state = SCOPE_EXITED;
    }
    Py_CLEAR(self->token);
    return 0;
}

static void scope_dealloc(PyObject *op)
{
    StatisticsObject *self = SCOPE(op);
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    Py_TRASHCAN_BEGIN(op, scope_dealloc)
    scope_clear(op);
    Py_CLEAR(self->parent);   /* a long chain: the trashcan bounds the depth */
    for (Py_ssize_t i = 0; i < self->slot_count; i++) {
        Py_CLEAR(self->slots[i].name);
    }
    PyMem_Free(self->slots);
    self->slots = NULL;
    self->slot_count = self->slot_capacity = 0;
    tp->tp_free(op);
    Py_DECREF(tp);
    Py_TRASHCAN_END
}

/* ------------------------------------------------------------------ */
/* The types                                                           */
/* ------------------------------------------------------------------ */

static PyGetSetDef scope_getset[] = {
#define COUNTER_GETTER(name, doc) \
    {#name, scope_get_counter, NULL, doc, (void *)(uintptr_t)offsetof(scope_counts, name)},
    SCOPE_COUNTERS(COUNTER_GETTER)
#undef COUNTER_GETTER
    {"allocators", scope_get_allocators, NULL,
     "{allocator name: AllocatorStatistics} for each allocator counted.", NULL},
    {"active", scope_get_active, NULL, "True between __enter__ and __exit__.", NULL},
    {NULL},
};

static PyMethodDef scope_methods[] = {
    {"__enter__", scope_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nStart counting in this context; returns the scope."},
    {"__exit__", (PyCFunction)(void (*)(void))scope_exit, METH_FASTCALL,
     "__exit__($self, /, *exc_info)\n--\n\n"
     "Stop counting; the counters stay readable.  Returns False."},
    {"__reduce__", scope_reduce, METH_NOARGS,
     "__reduce__($self, /)\n--\n\nRefused: a scope is not pickled or copied."},
    {NULL},
};

static PyType_Slot scope_slots[] = {
    {Py_tp_doc, "Statistics()\n--\n\n"
                "Counters of the buffers made while this scope is active "
                "(memmanager.statistics())."},
    {Py_tp_dealloc, scope_dealloc},
    {Py_tp_traverse, scope_traverse},
    {Py_tp_clear, scope_clear},
    {Py_tp_repr, scope_repr},
    {Py_tp_getset, scope_getset},
    {Py_tp_methods, scope_methods},
    {Py_mp_subscript, scope_subscript},
    {0, NULL},
};

static PyType_Spec scope_spec = {
    .name = "memmanager.Statistics",
    .basicsize = sizeof(StatisticsObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = scope_slots,
};

static PyStructSequence_Field counts_fields[] = {
#define COUNTS_FIELD(name, doc) {#name, doc},
    SCOPE_COUNTERS(COUNTS_FIELD)
#undef COUNTS_FIELD
    {NULL, NULL},
};

static PyStructSequence_Desc counts_desc = {
    .name = "memmanager.AllocatorStatistics",
    .doc = "One allocator's counters in a statistics scope (read-only).",
    .fields = counts_fields,
    .n_in_sequence = (int)COUNTER_COUNT,
};

int mm_statistics_add_types(PyObject *module, mm_state *st)
{
    st->statistics_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &scope_spec, NULL);
    st->statistics_counts_type = PyStructSequence_NewType(&counts_desc);
    st->statistics_var = PyContextVar_New("memmanager.statistics", NULL);
    if (st->statistics_type == NULL || st->statistics_counts_type == NULL ||
        st->statistics_var == NULL ||
        PyModule_AddType(module, st->statistics_type) < 0 ||
        PyModule_AddType(module, st->statistics_counts_type) < 0) {
        return -1;
    }
    return 0;
}
