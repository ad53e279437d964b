/*
 * log.c -- the Log adaptor: one line per allocate and free, appended to a
 * file, for replay() (replay.c) to play again elsewhere.
 *
 *   log = memmanager.Log("PyAlloc", "/tmp/alloc.log")
 *   memmanager.register_allocator("Logged", log)
 *   ...
 *   log.flush()                 # OSError if a line could not be written
 *   log.events, log.lost, log.path, log.upstream
 *
 * The file (format version 1; docs/allocators.md, "Log and replay"):
 *
 *   # memmanager-log 1 time_ns pid tid event size address allocator
 *   18254093811462 4242 4242 a 4096 0x7f12a4c01000 Logged
 *   18254093922907 4242 4243 f 4096 0x7f12a4c01000 Logged
 *
 * one event a line, fields separated by one space: CLOCK_MONOTONIC in
 * nanoseconds, the process, the thread (threading.get_native_id()), `a`
 * or `f`, the bytes the allocator was asked for (those of the buffer,
 * plus its guard bytes under MEMMANAGER_DEBUG), the block's address in
 * hex, and the name of the Allocator object the block went through
 * (UTF-8; every byte up to the space, DEL and '%' written as %XX, so a
 * line always splits into seven fields).  The header is written when the
 * file is empty at opening; replay accepts it again further on (two Logs
 * opening one empty file both write one).
 *
 * Ownership and states.  A Log owns its file descriptor (opened
 * O_WRONLY|O_APPEND|O_CREAT|O_CLOEXEC when it is made, so Logs and
 * processes can share a file: each write(2) of the buffer lands whole at
 * the end) and its buffer.  Lines are formatted into the buffer under the
 * Log's lock, the time taken under it too, so a Log's lines are in time
 * order; the buffer is written out when the next line does not fit, by
 * flush(), when the Log is deallocated, and at process exit (the C atexit
 * hook below, after Python's finalisation) for Logs still alive.  A free
 * is logged before its block goes back upstream and an allocation after
 * it came, so an address is never live twice in one Log's lines.
 *
 * Release never raises: a failed write loses the lines of the buffer; they
 * are counted (`lost`) and the next flush() raises OSError with the errno
 * and how many lines were lost since the last flush() said so.  A Log
 * deallocated with lost lines no flush() reported writes that OSError to
 * sys.unraisablehook.  An allocation the upstream refuses writes no line.
 *
 * Every live Log is in one process-wide list (its own lock), for the exit
 * hook and for fork: in a child, the lines the parent buffered are
 * dropped (the parent writes them) and every lock is made anew.
 *
 * Layer: adaptors.  May call allocators/ and core/.
 */
#include "adaptors/adaptors.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOG_BUFFER_SIZE ((size_t)64 << 10)
/* A line without its allocator name: 5 numbers of at most 20 digits, the
 * event, "0x", 7 separators and the newline. */
#define LOG_LINE_FIXED ((size_t)(5 * 20 + 1 + 2 + 7 + 1))
#define LOG_HEADER "# memmanager-log 1 time_ns pid tid event size address allocator\n"

typedef struct LogObject {
    AdaptorObject base;
    PyObject *path;            /* os.fspath() of the path given: str or bytes */
    int fd;                    /* -1 when not open */
    int lock_ready;            /* `lock` was initialised */
    pthread_mutex_t lock;      /* everything below, and writes to fd */
    char *buffer;              /* PyMem_RawMalloc'd, capacity bytes */
    size_t capacity;
    size_t used;
    uint64_t events;           /* lines logged (the header not counted) */
    uint64_t lost;             /* lines write errors lost, ever */
    uint64_t unreported;       /* of those, the ones no flush() raised for */
    int last_errno;            /* the errno of the last failed write */
    struct LogObject *prev, *next;   /* the live list, under list_lock */
    int listed;
} LogObject;

static LogObject *log_of(AllocatorObject *alloc)
{
    return (LogObject *)mm_adaptor_of(alloc);
}

/* ------------------------------------------------------------------ */
/* The process-wide list, the exit hook, fork                          */
/* ------------------------------------------------------------------ */

static pthread_mutex_t list_lock = PTHREAD_MUTEX_INITIALIZER;
static LogObject *live_logs = NULL;
static pthread_once_t hooks_once = PTHREAD_ONCE_INIT;
static int hooks_ready = 0;

/* Caches of getpid() and the thread's native id (both system calls). */
static pid_t cached_pid = 0;
static _Thread_local unsigned long cached_tid = 0;

static int flush_locked(LogObject *self);

/* At exit: what the Logs still alive buffered.  No Python: it runs after
 * the interpreter is finalised. */
static void flush_all_at_exit(void)
{
    pthread_mutex_lock(&list_lock);
    for (LogObject *l = live_logs; l != NULL; l = l->next) {
        pthread_mutex_lock(&l->lock);
        (void)flush_locked(l);
        pthread_mutex_unlock(&l->lock);
    }
    pthread_mutex_unlock(&list_lock);
}

static void before_fork(void)
{
    pthread_mutex_lock(&list_lock);
}

static void after_fork_in_parent(void)
{
    pthread_mutex_unlock(&list_lock);
}

/* The child's only thread is the one that forked: the locks are made anew
 * (another thread may have held one), and the parent's buffered lines are
 * its own to write. */
static void after_fork_in_child(void)
{
    pthread_mutex_init(&list_lock, NULL);
    __atomic_store_n(&cached_pid, 0, __ATOMIC_RELAXED);
    cached_tid = 0;
    for (LogObject *l = live_logs; l != NULL; l = l->next) {
        pthread_mutex_init(&l->lock, NULL);
        l->used = 0;
    }
}

static void install_hooks(void)
{
    hooks_ready = atexit(flush_all_at_exit) == 0 &&
                  pthread_atfork(before_fork, after_fork_in_parent,
                                 after_fork_in_child) == 0;
}

static void list_add(LogObject *self)
{
    pthread_mutex_lock(&list_lock);
    self->prev = NULL;
    self->next = live_logs;
    if (live_logs != NULL) {
        live_logs->prev = self;
    }
    live_logs = self;
    self->listed = 1;
    pthread_mutex_unlock(&list_lock);
}

static void list_remove(LogObject *self)
{
    pthread_mutex_lock(&list_lock);
    if (self->listed) {
        if (self->prev != NULL) {
            self->prev->next = self->next;
        }
        else {
            live_logs = self->next;
        }
        if (self->next != NULL) {
            self->next->prev = self->prev;
        }
        self->listed = 0;
    }
    pthread_mutex_unlock(&list_lock);
}

static unsigned long current_pid(void)
{
    pid_t pid = __atomic_load_n(&cached_pid, __ATOMIC_RELAXED);
    if (pid == 0) {
        pid = getpid();
        __atomic_store_n(&cached_pid, pid, __ATOMIC_RELAXED);
    }
    return (unsigned long)pid;
}

static unsigned long current_tid(void)
{
    if (cached_tid == 0) {
        cached_tid = PyThread_get_thread_native_id();
    }
    return cached_tid;
}

/* ------------------------------------------------------------------ */
/* Lines                                                               */
/* ------------------------------------------------------------------ */

static char *put_decimal(char *p, uint64_t value)
{
    char digits[20];
    int n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value != 0);
    while (n > 0) {
        *p++ = digits[--n];
    }
    return p;
}

static const char hex_digits[] = "0123456789abcdef";

static char *put_hex(char *p, uint64_t value)
{
    char digits[16];
    int n = 0;
    do {
        digits[n++] = hex_digits[value & 15];
        value >>= 4;
    } while (value != 0);
    *p++ = '0';
    *p++ = 'x';
    while (n > 0) {
        *p++ = digits[--n];
    }
    return p;
}

static char *put_name(char *p, const char *name, Py_ssize_t length)
{
    for (Py_ssize_t i = 0; i < length; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c <= ' ' || c == 0x7f || c == '%') {
            *p++ = '%';
            *p++ = hex_digits[c >> 4];
            *p++ = hex_digits[c & 15];
        }
        else {
            *p++ = (char)c;
        }
    }
    return p;
}

static uint64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t count_lines(const char *data, size_t size)
{
    uint64_t lines = 0;
    for (const char *p = data; (p = memchr(p, '\n', size - (size_t)(p - data))) != NULL; p++) {
        lines++;
    }
    return lines;
}

/* Writes the buffer out, under the lock; a failure loses what was not
 * written (counted).  0, or -1 with last_errno set.  No Python. */
static int flush_locked(LogObject *self)
{
    size_t done = 0;
    int rc = 0;
    while (done < self->used && self->fd >= 0) {
        ssize_t n = write(self->fd, self->buffer + done, self->used - done);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            uint64_t lines = count_lines(self->buffer + done, self->used - done);
            self->lost += lines;
            self->unreported += lines;
            self->last_errno = n < 0 ? errno : EIO;
            rc = -1;
            break;
        }
        done += (size_t)n;
    }
    self->used = 0;
    return rc;
}

/* Room for `need` more bytes, under the lock; 0, or -1 when there is none
 * (out of memory: the line is lost). */
static int make_room(LogObject *self, size_t need)
{
    if (self->capacity - self->used >= need) {
        return 0;
    }
    (void)flush_locked(self);
    if (self->capacity >= need) {
        return 0;
    }
    char *bigger = PyMem_RawRealloc(self->buffer, need);
    if (bigger == NULL) {
        self->lost++;
        self->unreported++;
        self->last_errno = ENOMEM;
        return -1;
    }
    self->buffer = bigger;
    self->capacity = need;
    return 0;
}

/* The UTF-8 of the allocator's name.  Once log_allocate has asked for it,
 * the str caches it, so the call in a release cannot fail; if it did,
 * the line says "?" rather than raise. */
static const char *name_of(AllocatorObject *alloc, Py_ssize_t *length)
{
    const char *name = PyUnicode_AsUTF8AndSize(alloc->name, length);
    if (name == NULL) {
        PyErr_Clear();
        *length = 1;
        return "?";
    }
    return name;
}

static void log_event(LogObject *self, AllocatorObject *alloc, char event,
                      size_t size, const char *address)
{
    Py_ssize_t name_length;
    const char *name = name_of(alloc, &name_length);
    size_t need = LOG_LINE_FIXED + 3 * (size_t)name_length;
    unsigned long pid = current_pid(), tid = current_tid();
    pthread_mutex_lock(&self->lock);
    if (make_room(self, need) == 0) {
        char *p = self->buffer + self->used;
        p = put_decimal(p, monotonic_ns());
        *p++ = ' ';
        p = put_decimal(p, pid);
        *p++ = ' ';
        p = put_decimal(p, tid);
        *p++ = ' ';
        *p++ = event;
        *p++ = ' ';
        p = put_decimal(p, size);
        *p++ = ' ';
        p = put_hex(p, (uint64_t)(uintptr_t)address);
        *p++ = ' ';
        p = put_name(p, name, name_length);
        *p++ = '\n';
        self->used = (size_t)(p - self->buffer);
        self->events++;
    }
    pthread_mutex_unlock(&self->lock);
}

/* ------------------------------------------------------------------ */
/* The kind                                                            */
/* ------------------------------------------------------------------ */

static int log_allocate(AllocatorObject *alloc, const mm_request *req,
                        size_t size, int zero, mm_raw *out)
{
    LogObject *self = log_of(alloc);
    if (PyUnicode_AsUTF8AndSize(alloc->name, NULL) == NULL ||  /* cached now */
        mm_adaptor_take(&self->base, req, size, zero, out) < 0) {
        return -1;
    }
    log_event(self, alloc, 'a', size, out->base);
    return 0;
}

static void log_release(AllocatorObject *alloc, char *base, size_t size,
                        void *cookie)
{
    LogObject *self = log_of(alloc);
    log_event(self, alloc, 'f', size, base);
    mm_adaptor_give(&self->base, base, size, cookie);
}

static const mm_allocator_ops log_ops = {
    .kind = "Log",
    .parse_options = mm_adaptor_parse_passed_options,
    .allocate = log_allocate,
    .release = log_release,
};

/* ------------------------------------------------------------------ */
/* The Python type                                                     */
/* ------------------------------------------------------------------ */

/* The two arguments, positional or by keyword; the rest go upstream. */
static int split_arguments(PyObject *args, PyObject *kwargs, PyObject **own,
                           PyObject **rest, PyObject **kept)
{
    static const char *const names[] = {"upstream", "path", NULL};
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError,
                     "Log() takes upstream and path (%zd positional arguments "
                     "given)", nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        own[i] = PyTuple_GET_ITEM(args, i);
        PyObject *also = kwargs != NULL ? PyDict_GetItemString(kwargs, names[i]) : NULL;
        if (also != NULL) {
            PyErr_Format(PyExc_TypeError,
                         "Log() got multiple values for argument '%s'", names[i]);
            return -1;
        }
    }
    if (mm_adaptor_split_keywords(kwargs, names, own, rest, kept) < 0) {
        return -1;
    }
    for (int i = 0; i < 2; i++) {
        if (own[i] == NULL) {
            PyErr_Format(PyExc_TypeError,
                         "Log() missing required argument '%s'", names[i]);
            return -1;
        }
    }
    return 0;
}

/* Opens self->path for appending; buffers the header when it is empty. */
static int open_file(LogObject *self)
{
    PyObject *encoded = NULL;
    if (!PyUnicode_FSConverter(self->path, &encoded)) {
        return -1;
    }
    const char *name = PyBytes_AS_STRING(encoded);
    int fd, saved_errno = 0;
    off_t size = 0;
    Py_BEGIN_ALLOW_THREADS
    fd = open(name, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
    if (fd >= 0) {
        size = lseek(fd, 0, SEEK_END);
    }
    saved_errno = errno;
    Py_END_ALLOW_THREADS
    Py_DECREF(encoded);
    if (fd < 0) {
        errno = saved_errno;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, self->path);
        return -1;
    }
    self->fd = fd;
    if (size == 0) {   /* also a FIFO or a device: lseek answers 0 or -1 */
        /* Written now, not buffered: a child forked before the first flush
         * drops the buffer, and its lines must come after the header.  A
         * failure is lost lines, for flush() to report. */
        memcpy(self->buffer, LOG_HEADER, sizeof(LOG_HEADER) - 1);
        self->used = sizeof(LOG_HEADER) - 1;
        (void)flush_locked(self);
    }
    return 0;
}

static PyObject *log_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *own[2] = {NULL, NULL}, *rest = NULL, *kept = NULL;
    if (split_arguments(args, kwargs, own, &rest, &kept) < 0) {
        Py_XDECREF(rest);
        Py_XDECREF(kept);
        return NULL;
    }
    PyObject *path = PyOS_FSPath(own[1]);
    if (path == NULL) {
        Py_XDECREF(rest);
        Py_XDECREF(kept);
        return NULL;
    }
    LogObject *self = (LogObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(path);
        Py_XDECREF(rest);
        Py_XDECREF(kept);
        return NULL;
    }
    self->fd = -1;
    self->path = path;
    pthread_once(&hooks_once, install_hooks);
    if (!hooks_ready) {
        PyErr_SetString(PyExc_RuntimeError,
                        "Log(): could not install the exit and fork hooks");
        goto error;
    }
    if (pthread_mutex_init(&self->lock, NULL) != 0) {
        PyErr_NoMemory();
        goto error;
    }
    self->lock_ready = 1;
    self->buffer = PyMem_RawMalloc(LOG_BUFFER_SIZE);
    if (self->buffer == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    self->capacity = LOG_BUFFER_SIZE;
    if (mm_adaptor_init(&self->base, &log_ops, own[0], rest) < 0 ||
        open_file(self) < 0) {
        goto error;
    }
    self->base.passes_cookie = 1;
    list_add(self);
    Py_XDECREF(rest);
    Py_XDECREF(kept);
    return (PyObject *)self;
error:
    Py_DECREF(self);
    Py_XDECREF(rest);
    Py_XDECREF(kept);
    return NULL;
}

/* OSError(errno, message, path) for `lost` lines; NULL with another
 * exception when even that cannot be made. */
static PyObject *lost_lines_error(LogObject *self, uint64_t lost, int error)
{
    PyObject *message = PyUnicode_FromFormat(
        "Log: %llu lines could not be written to %R: %s",
        (unsigned long long)lost, self->path, strerror(error));
    if (message == NULL) {
        return NULL;
    }
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "iOO", error, message,
                                          self->path);
    Py_DECREF(message);
    return exc;
}

static PyObject *log_flush(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    LogObject *self = (LogObject *)op;
    pthread_mutex_lock(&self->lock);
    (void)flush_locked(self);
    uint64_t unreported = self->unreported;
    int error = self->last_errno;
    self->unreported = 0;
    pthread_mutex_unlock(&self->lock);
    if (unreported == 0) {
        Py_RETURN_NONE;
    }
    PyObject *exc = lost_lines_error(self, unreported, error);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* Lost lines nobody was told of go to sys.unraisablehook. */
static void report_at_dealloc(LogObject *self)
{
    if (self->unreported == 0) {
        return;
    }
    mm_saved_error saved;
    mm_err_save(&saved);
    PyObject *exc = lost_lines_error(self, self->unreported, self->last_errno);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    PyErr_WriteUnraisable(self->path);   /* not self: the hook could keep it */
    mm_err_restore(&saved);
}

static int log_traverse(PyObject *op, visitproc visit, void *arg)
{
    return mm_adaptor_traverse((AdaptorObject *)op, visit, arg);
}

static void log_dealloc(PyObject *op)
{
    LogObject *self = (LogObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    list_remove(self);
    if (self->lock_ready) {
        pthread_mutex_lock(&self->lock);
        (void)flush_locked(self);
        pthread_mutex_unlock(&self->lock);
        if (self->path != NULL) {
            report_at_dealloc(self);
        }
        pthread_mutex_destroy(&self->lock);
    }
    if (self->fd >= 0) {
        close(self->fd);
        self->fd = -1;
    }
    PyMem_RawFree(self->buffer);
    self->buffer = NULL;
    Py_CLEAR(self->path);
    mm_adaptor_clear_common(&self->base);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static uint64_t read_locked(LogObject *self, const uint64_t *field)
{
    pthread_mutex_lock(&self->lock);
    uint64_t value = *field;
    pthread_mutex_unlock(&self->lock);
    return value;
}

static PyObject *log_repr(PyObject *op)
{
    LogObject *self = (LogObject *)op;
    return PyUnicode_FromFormat("<memmanager.Log over %R to %R: %llu events>",
                                self->base.upstream->name, self->path,
                                (unsigned long long)read_locked(self, &self->events));
}

static PyObject *log_get_events(PyObject *op, void *Py_UNUSED(closure))
{
    LogObject *self = (LogObject *)op;
    return PyLong_FromUnsignedLongLong(read_locked(self, &self->events));
}

static PyObject *log_get_lost(PyObject *op, void *Py_UNUSED(closure))
{
    LogObject *self = (LogObject *)op;
    return PyLong_FromUnsignedLongLong(read_locked(self, &self->lost));
}

static PyObject *log_get_path(PyObject *op, void *Py_UNUSED(closure))
{
    return Py_NewRef(((LogObject *)op)->path);
}

static PyGetSetDef log_getset[] = {
    {"events", log_get_events, NULL,
     "Lines logged so far (allocations and frees; written or buffered).", NULL},
    {"lost", log_get_lost, NULL,
     "Lines that write errors lost (flush() raises OSError for new ones).", NULL},
    {"path", log_get_path, NULL,
     "The file the lines are appended to (os.fspath() of the path given).", NULL},
    {"upstream", mm_adaptor_get_upstream, NULL,
     "The name of the allocator the blocks come from.", NULL},
    {NULL},
};

static PyMethodDef log_methods[] = {
    {"flush", log_flush, METH_NOARGS,
     "flush($self, /)\n--\n\n"
     "Write the buffered lines to the file.  OSError when a write failed\n"
     "since the last flush() (lines were lost; `lost` counts them)."},
    {NULL},
};

static PyType_Slot log_slots[] = {
    {Py_tp_doc,
     "Log(upstream, path, **upstream_options)\n--\n\n"
     "An allocator adaptor: blocks from the allocator named upstream, each\n"
     "allocation and free appending one line to the file at path (for\n"
     "memmanager.replay()).  Register it with register_allocator(name, log)."},
    {Py_tp_new, log_new},
    {Py_tp_dealloc, log_dealloc},
    {Py_tp_traverse, log_traverse},
    {Py_tp_repr, log_repr},
    {Py_tp_getset, log_getset},
    {Py_tp_methods, log_methods},
    {0, NULL},
};

PyType_Spec mm_log_type_spec = {
    .name = "memmanager.Log",
    .basicsize = sizeof(LogObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = log_slots,
};
