/*
 * interpreters.c -- which interpreters memmanager is loaded in, and how C
 * code on any thread runs something inside one of them: what a DLPack
 * deleter needs, since a consumer may call it from any thread, with or
 * without a thread state, in any interpreter, or after shutdown.
 *
 * PyGILState_Ensure() is not the tool: it knows one thread state per
 * thread, of the main interpreter (or whichever the thread made first).
 * Called on a thread that runs a subinterpreter it tries to take the GIL
 * the thread already holds, and the process hangs.
 *
 * In Python terms:
 *
 *     class Interp:                 # one per module instance (module_exec)
 *         state = LIVE              # LIVE -> ENDING (its atexit) -> GONE (module clear)
 *         def call_soon(self, call):
 *             if current_thread_state().interp is self.interp:
 *                 call.run()                            # the usual case
 *             elif finalized or self.state is GONE:
 *                 call.abandon()                        # leave Python objects alone
 *             elif self.state is ENDING or runtime_ending:
 *                 self.queue.append(call)               # run by the interpreter itself
 *             else:
 *                 with fresh_thread_state(self.interp): # PyThreadState_New
 *                     call.run()
 *
 * Why that is safe:
 *
 *   - A foreign thread makes a thread state of the interpreter only under
 *     `lock`, while the interpreter is LIVE, and counts itself in
 *     `visitors` until that thread state is deleted again.
 *   - The interpreter's atexit callback (registered by mm_interp_attach)
 *     sets ENDING and waits, without the GIL, for its visitors to leave.
 *     Py_EndInterpreter runs atexit callbacks before it checks that its
 *     thread is the interpreter's last one, and before anything is freed;
 *     Py_FinalizeEx runs them before the runtime starts finalising (after
 *     which taking the GIL ends the thread).  The main interpreter's
 *     callback also sets `runtime_ending` and waits for every visitor.
 *   - From ENDING on, calls are queued and run by the interpreter itself:
 *     at that callback, at the module's clear (mm_interp_detach, which sets
 *     GONE), or at the next call_soon made from inside it.
 *   - GONE, or after Py_FinalizeEx: `abandon` only frees C memory; the
 *     Python objects are left to the operating system.
 *   - The token is reference-counted and freed by its last user, so a
 *     deleter never reads an interpreter pointer that has been freed: it
 *     only compares it, together with the interpreter's unique id.
 *
 * What remains: code that removes our atexit callback (atexit._clear())
 * and then ends a subinterpreter while another thread is inside a
 * deleter of one of its capsules is back to CPython's own rules.
 *
 * Layer: core.  Calls the C API only.
 */
#include "core/core.h"

#include <pthread.h>
#include <stdlib.h>


/* The thread state this thread holds the GIL with, or NULL.  Before 3.12
 * the "current" thread state is one global, the GIL holder's, whichever
 * thread that is: a thread that gave the GIL back (a ctypes call) reads
 * another thread's there, and must not take it for its own.  (A thread
 * state used on a thread other than the one that made it, as 3.11's
 * run_string does from a non-main thread, is then not recognised: a
 * deleter called inside it without giving the GIL back would wait for the
 * GIL it holds.) */
static PyThreadState *this_thread_state(void)
{
    PyThreadState *tstate = mm_thread_state_unchecked();
#if PY_VERSION_HEX < 0x030C0000
    if (tstate != NULL && tstate->thread_id != PyThread_get_thread_ident()) {
        return NULL;
    }
#endif
    return tstate;
}

enum { INTERP_LIVE, INTERP_ENDING, INTERP_GONE };

struct mm_interp {
    PyInterpreterState *interp;   /* compared, never dereferenced once GONE */
    int64_t id;                   /* unique for the life of the process */
    int is_main;
    /* Under `lock`: */
    int state;
    Py_ssize_t visitors;          /* foreign threads inside it now */
    Py_ssize_t refs;              /* the module state's, and one per user */
    mm_interp_call *queue;        /* to run inside it (LIFO); stored
                                     atomically, so it may be peeked at */
    struct mm_interp *next;       /* the list of every token */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t visitor_left = PTHREAD_COND_INITIALIZER;
static Py_ssize_t all_visitors = 0;   /* under lock */
static int runtime_ending = 0;        /* under lock */
static mm_interp *all_tokens = NULL;  /* under lock */

/* This thread's visits in progress, innermost first (a visit's code may
 * release a tensor of another interpreter, and visit that one too).  The
 * atexit callback does not wait for visits of its own thread, and the
 * child of a fork counts what its one thread is visiting. */
typedef struct visit {
    mm_interp *it;
    struct visit *outer;
} visit;
static __thread visit *my_visits = NULL;

static Py_ssize_t my_visits_of(const mm_interp *it)   /* NULL: all */
{
    Py_ssize_t n = 0;
    for (visit *v = my_visits; v != NULL; v = v->outer) {
        n += it == NULL || v->it == it;
    }
    return n;
}
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void take_lock(void) { pthread_mutex_lock(&lock); }
static void give_back_lock(void) { pthread_mutex_unlock(&lock); }

/* The child of a fork has one thread: the visitors of the parent are not
 * in it.  (The lock was taken before the fork, so nobody was half-way.) */
static void reset_after_fork(void)
{
    for (mm_interp *it = all_tokens; it != NULL; it = it->next) {
        it->visitors = 0;
    }
    all_visitors = 0;
    for (visit *v = my_visits; v != NULL; v = v->outer) {
        v->it->visitors++;
        all_visitors++;
    }
    pthread_cond_init(&visitor_left, NULL);
    pthread_mutex_unlock(&lock);
}

static void install_fork_handlers(void)
{
    (void)pthread_atfork(take_lock, give_back_lock, reset_after_fork);
}

/* ------------------------------------------------------------------ */
/* Tokens                                                              */
/* ------------------------------------------------------------------ */

mm_interp *mm_interp_ref(mm_interp *it)
{
    take_lock();
    it->refs++;
    give_back_lock();
    return it;
}

void mm_interp_unref(mm_interp *it)
{
    take_lock();
    Py_ssize_t left = --it->refs;
    if (left == 0) {
        mm_interp **link = &all_tokens;
        while (*link != it) {
            link = &(*link)->next;
        }
        *link = it->next;
    }
    give_back_lock();
    if (left == 0) {
        free(it);
    }
}

/* Whether this thread holds a thread state of `it` (and with it the GIL). */
static int is_current(const mm_interp *it)
{
    PyThreadState *tstate = this_thread_state();
    if (tstate == NULL) {
        return 0;
    }
    PyInterpreterState *interp = PyThreadState_GetInterpreter(tstate);
    return interp == it->interp && PyInterpreterState_GetID(interp) == it->id;
}

/* Takes what was queued for `it`.  `gone`: set GONE first, so nothing
 * more is queued. */
static mm_interp_call *take_queue(mm_interp *it, int gone)
{
    take_lock();
    if (gone) {
        it->state = INTERP_GONE;
    }
    mm_interp_call *call = it->queue;
    __atomic_store_n(&it->queue, NULL, __ATOMIC_RELAXED);
    give_back_lock();
    return call;
}

/* Runs what was queued for `it`; the caller is inside it. */
static void run_queue(mm_interp *it, int gone)
{
    mm_interp_call *call = take_queue(it, gone);
    while (call != NULL) {
        mm_interp_call *next = call->next;
        call->run(call);
        call = next;
    }
}

/* A peek without the lock; run_queue reads the queue again under it. */
static int queue_waiting(mm_interp *it)
{
    return __atomic_load_n(&it->queue, __ATOMIC_RELAXED) != NULL;
}

static void visitor_leaves(mm_interp *it)
{
    take_lock();
    my_visits = my_visits->outer;
    it->visitors--;
    all_visitors--;
    pthread_cond_broadcast(&visitor_left);
    give_back_lock();
}

/* The thread state of `it` this thread made first and has given the GIL
 * back from (none is current), or NULL.  PyGILState_GetThisThreadState()
 * names the first thread state made on this thread, of whichever
 * interpreter; only one of `it` is used. */
static PyThreadState *detached_state_of(const mm_interp *it)
{
    if (this_thread_state() != NULL) {
        return NULL;
    }
    PyThreadState *own = PyGILState_GetThisThreadState();
    if (own == NULL) {
        return NULL;
    }
    PyInterpreterState *interp = PyThreadState_GetInterpreter(own);
    if (interp != it->interp || PyInterpreterState_GetID(interp) != it->id) {
        return NULL;
    }
    return own;
}

void mm_interp_call_soon(mm_interp *it, mm_interp_call *call)
{
    call->next = NULL;
    if (is_current(it)) {
        call->run(call);
        if (queue_waiting(it)) {
            run_queue(it, 0);
        }
        return;
    }
    if (!Py_IsInitialized() || mm_runtime_finalizing()) {
        call->abandon(call);
        return;
    }
    take_lock();
    if (it->state == INTERP_GONE) {
        give_back_lock();
        call->abandon(call);
        return;
    }
    if (it->state == INTERP_ENDING || runtime_ending) {
        call->next = it->queue;
        __atomic_store_n(&it->queue, call, __ATOMIC_RELAXED);
        give_back_lock();
        return;
    }
    /* LIVE: the interpreter cannot end before this visitor leaves (its
     * atexit callback waits), so its thread state may be made and used.
     * A thread of that interpreter whose GIL was given back (a ctypes call,
     * say) has a thread state of it already: a second one on the same OS
     * thread confuses CPython 3.11 (a crash in the interpreter's own thread
     * moments later), so that one is taken back instead. */
    PyThreadState *own = detached_state_of(it);
    if (own != NULL) {
        it->visitors++;
        all_visitors++;
        visit mine = {it, my_visits};
        my_visits = &mine;
        give_back_lock();
        PyEval_RestoreThread(own);
        call->run(call);
        if (queue_waiting(it)) {
            run_queue(it, 0);
        }
        PyEval_SaveThread();
        visitor_leaves(it);
        return;
    }
    PyThreadState *tstate = PyThreadState_New(it->interp);
    visit me = {it, my_visits};
    if (tstate != NULL) {
        it->visitors++;
        all_visitors++;
        my_visits = &me;
    }
    give_back_lock();
    if (tstate == NULL) {
        call->abandon(call);
        return;
    }
    /* Holding another interpreter's GIL (or this one's, through another
     * thread state): give it back while we are away. */
    PyThreadState *saved = this_thread_state() ? PyEval_SaveThread() : NULL;
    PyEval_RestoreThread(tstate);
    call->run(call);
    if (queue_waiting(it)) {
        run_queue(it, 0);
    }
    PyThreadState_Clear(tstate);
    PyThreadState_DeleteCurrent();
    if (saved != NULL) {
        PyEval_RestoreThread(saved);
    }
    visitor_leaves(it);
}

/* ------------------------------------------------------------------ */
/* The module's side: attach at exec, the atexit callback, detach       */
/* ------------------------------------------------------------------ */

#define TOKEN_CAPSULE "memmanager._core.interpreter"

/* Under `lock`: whether threads other than this one are visiting `it`
 * (or, for the main interpreter, any interpreter). */
static int visitors_inside(mm_interp *it)
{
    return it->is_main ? all_visitors > my_visits_of(NULL)
                       : it->visitors > my_visits_of(it);
}

static PyObject *interpreter_exiting(PyObject *capsule, PyObject *Py_UNUSED(unused))
{
    mm_interp *it = PyCapsule_GetPointer(capsule, TOKEN_CAPSULE);
    if (it == NULL || !is_current(it)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    /* The lock is never held by a thread waiting for a GIL, so it may be
     * taken with ours. */
    take_lock();
    if (it->state == INTERP_LIVE) {
        it->state = INTERP_ENDING;
    }
    if (it->is_main) {
        runtime_ending = 1;
    }
    int must_wait = visitors_inside(it);
    give_back_lock();
    /* The GIL is given back only when a visitor needs it to leave: while
     * the runtime finalises (a subinterpreter ended by Py_FinalizeEx), a
     * thread state other than the finalising one that takes the GIL again
     * ends its thread, and with it the process's exit status.  No visitor
     * can enter then (mm_interp_call_soon abandons). */
    if (must_wait && !mm_runtime_finalizing()) {
        Py_BEGIN_ALLOW_THREADS
        take_lock();
        while (visitors_inside(it)) {
            pthread_cond_wait(&visitor_left, &lock);
        }
        give_back_lock();
        Py_END_ALLOW_THREADS
    }
    run_queue(it, 0);
    Py_RETURN_NONE;
}

static PyMethodDef exiting_def = {
    "_memmanager_interpreter_exiting", interpreter_exiting, METH_NOARGS,
    "memmanager: stop other threads from entering this interpreter, which "
    "is ending (registered with atexit)."};

static void token_capsule_destructor(PyObject *capsule)
{
    mm_interp *it = PyCapsule_GetPointer(capsule, TOKEN_CAPSULE);
    if (it != NULL) {
        mm_interp_unref(it);
    }
    else {
        PyErr_Clear();
    }
}

static int register_atexit(mm_interp *it)
{
    PyObject *capsule = PyCapsule_New(it, TOKEN_CAPSULE, token_capsule_destructor);
    if (capsule == NULL) {
        return -1;
    }
    mm_interp_ref(it);      /* the capsule's */
    PyObject *callback = PyCFunction_New(&exiting_def, capsule);
    Py_DECREF(capsule);
    if (callback == NULL) {
        return -1;
    }
    PyObject *atexit = PyImport_ImportModule("atexit");
    PyObject *done = atexit ? PyObject_CallMethod(atexit, "register", "O", callback)
                            : NULL;
    Py_XDECREF(atexit);
    Py_DECREF(callback);
    Py_XDECREF(done);
    return done == NULL ? -1 : 0;
}

int mm_interp_attach(mm_state *st)
{
    pthread_once(&fork_once, install_fork_handlers);
    mm_interp *it = calloc(1, sizeof(*it));
    if (it == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    it->interp = PyInterpreterState_Get();
    it->id = PyInterpreterState_GetID(it->interp);
    it->is_main = it->interp == PyInterpreterState_Main();
    it->state = INTERP_LIVE;
    it->refs = 1;           /* the module state's */
    take_lock();
    it->next = all_tokens;
    all_tokens = it;
    give_back_lock();
    st->interp = it;
    return register_atexit(it);
}

void mm_interp_detach(mm_state *st)
{
    mm_interp *it = st->interp;
    if (it == NULL) {
        return;
    }
    st->interp = NULL;
    if (is_current(it)) {
        run_queue(it, 1);
    }
    else {                  /* not expected: leave what is queued alone */
        mm_interp_call *call = take_queue(it, 1);
        while (call != NULL) {
            mm_interp_call *next = call->next;
            call->abandon(call);
            call = next;
        }
    }
    mm_interp_unref(it);
}
