/*
 * shm_tracker.c -- who unlinks a SharedMemory name, whatever way its
 * creator ends.
 *
 *   created -> mm_shm_tracker_created(link)   listed; b"R<name>" to the tracker
 *   dies    -> mm_shm_tracker_forget(link)    unlisted; unlinked; b"U<name>"
 *   exits   -> _shm_unlink_at_exit()       every listed name of this
 *                                          interpreter unlinked, even while
 *                                          exports keep its buffer alive
 *   killed  -> the tracker process         unlinks what the dead pid left
 *
 * The list holds the names this process created and has not unlinked yet
 * (the links live in the SharedMemory cookies of shm.c).  A
 * child made by fork() inherits the list, but its entries name the parent
 * as creator: the child unlists them and never unlinks them.
 *
 * The tracker (memmanager/_shm_tracker.py) is started at the first
 * creation, by posix_spawn, on one end of a SOCK_SEQPACKET socket pair:
 * each message is one send(), atomic, and carries the sender's pid (the
 * kernel's SCM_CREDENTIALS), so children made by fork() share it.  If it
 * ever dies, the next creation starts another and lists this process's
 * names to it again.  MEMMANAGER_SHM_TRACKER=0 (read at first creation)
 * runs without one: then a killed creator leaves its names.
 *
 * These are the process-wide mutable globals of the SharedMemory kind,
 * under one mutex, as the region registry has its lock: release() may run
 * without the GIL.  Lock order: the GIL, then this lock; nothing holding
 * this lock waits for the GIL.  pthread_atfork handlers take it around
 * fork(), so a child never inherits it held.  posix_spawn runs no fork
 * handlers, so the tracker can be spawned with the lock held.
 *
 * Layer: allocators.  May call core/.
 */
#include "allocators/allocators.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define TRACKER_READY_TIMEOUT_MS 10000
#define TRACKER_MESSAGE_MAX 1024

static pthread_mutex_t tracker_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static mm_shm_link *listed_head;       /* names to unlink, newest first */
static int tracker_fd = -1;            /* our end of the socket, or -1 */
static int tracker_disabled = -1;      /* -1: MEMMANAGER_SHM_TRACKER unread */
static char **tracker_argv;            /* the command, kept for restarts */

static void lock_before_fork(void) { pthread_mutex_lock(&tracker_lock); }
static void unlock_after_fork(void) { pthread_mutex_unlock(&tracker_lock); }

static void install_atfork(void)
{
    (void)pthread_atfork(lock_before_fork, unlock_after_fork, unlock_after_fork);
}

/* ------------------------------------------------------------------ */
/* Messages (with the lock held)                                       */
/* ------------------------------------------------------------------ */

/* Sends kind + name; on failure the tracker is taken for dead (the next
 * creation starts another). */
static void send_locked(char kind, const char *posix_name)
{
    char message[TRACKER_MESSAGE_MAX];
    size_t length = strlen(posix_name);
    if (tracker_fd < 0 || length + 1 > sizeof(message)) {
        return;
    }
    message[0] = kind;
    memcpy(message + 1, posix_name, length);
    ssize_t sent;
    do {
        sent = send(tracker_fd, message, length + 1, MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    if (sent != (ssize_t)(length + 1)) {
        close(tracker_fd);
        tracker_fd = -1;
    }
}

/* ------------------------------------------------------------------ */
/* Starting the tracker                                                */
/* ------------------------------------------------------------------ */

/* A NULL-terminated malloc'd copy of argv (a list of str), or NULL with
 * an exception. */
static char **argv_from_list(PyObject *list)
{
    if (!PyList_Check(list) || PyList_GET_SIZE(list) < 1) {
        PyErr_SetString(PyExc_TypeError,
                        "the shared memory tracker's command must be a non-empty list");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(list);
    char **argv = calloc((size_t)count + 1, sizeof(char *));
    if (argv == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        PyObject *encoded = PyUnicode_Check(item) ? PyUnicode_EncodeFSDefault(item) : NULL;
        if (encoded == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError,
                                "the shared memory tracker's command must hold str");
            }
            goto error;
        }
        argv[i] = strdup(PyBytes_AS_STRING(encoded));
        Py_DECREF(encoded);
        if (argv[i] == NULL) {
            PyErr_NoMemory();
            goto error;
        }
    }
    return argv;
error:
    for (Py_ssize_t i = 0; i < count; i++) {
        free(argv[i]);
    }
    free(argv);
    return NULL;
}

static void free_argv(char **argv)
{
    for (char **arg = argv; *arg != NULL; arg++) {
        free(*arg);
    }
    free(argv);
}

/* The tracker's argv, from memmanager._shm_tracker.command() (Python:
 * called before the lock is taken). */
static char **tracker_command(void)
{
    PyObject *module = PyImport_ImportModule("memmanager._shm_tracker");
    if (module == NULL) {
        return NULL;
    }
    PyObject *list = PyObject_CallMethod(module, "command", NULL);
    Py_DECREF(module);
    if (list == NULL) {
        return NULL;
    }
    char **argv = argv_from_list(list);
    Py_DECREF(list);
    return argv;
}

/* Spawns the tracker and waits for its b"ok"; our end of the socket, or
 * -1 with errno.  With the lock held: no Python. */
static int spawn_tracker(char **argv)
{
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0) {
        return -1;
    }
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    sigset_t none, defaults;
    sigemptyset(&none);
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGCHLD);
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, pair[1], 0);
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    posix_spawnattr_init(&attr);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0], &actions, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    close(pair[1]);
    if (rc != 0) {
        close(pair[0]);
        errno = rc;
        return -1;
    }
    /* The spawned process forks the tracker and exits: reap it. */
    int status = 0;
    pid_t waited;
    do {
        waited = waitpid(pid, &status, 0);
    } while (waited < 0 && errno == EINTR);
    if (waited == pid && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
        close(pair[0]);
        errno = ECHILD;
        return -1;
    }
    struct pollfd ready = {pair[0], POLLIN, 0};
    char answer[4] = {0};
    ssize_t got = -1;
    int polled;
    do {
        polled = poll(&ready, 1, TRACKER_READY_TIMEOUT_MS);
    } while (polled < 0 && errno == EINTR);
    if (polled == 1) {
        do {
            got = recv(pair[0], answer, sizeof(answer), 0);
        } while (got < 0 && errno == EINTR);
    }
    if (got != 2 || memcmp(answer, "ok", 2) != 0) {
        close(pair[0]);
        errno = polled == 0 ? ETIMEDOUT : ECONNREFUSED;
        return -1;
    }
    return pair[0];
}

/* Starts a tracker when there is none (the first, or one that replaces a
 * dead one, which learns this process's names); with the lock held. */
static int respawn_locked(void)
{
    if (tracker_fd >= 0 || tracker_argv == NULL) {
        return 0;
    }
    tracker_fd = spawn_tracker(tracker_argv);
    if (tracker_fd < 0) {
        return -1;
    }
    pid_t self = getpid();
    for (mm_shm_link *link = listed_head; link != NULL; link = link->next) {
        if (link->creator == self) {
            send_locked('R', link->posix_name);
        }
    }
    return 0;
}

int mm_shm_tracker_ensure(void)
{
    (void)pthread_once(&atfork_once, install_atfork);
    pthread_mutex_lock(&tracker_lock);
    if (tracker_disabled < 0) {
        const char *setting = getenv("MEMMANAGER_SHM_TRACKER");
        tracker_disabled = setting != NULL && strcmp(setting, "0") == 0;
    }
    int needed = !tracker_disabled && tracker_fd < 0;
    int have_command = tracker_argv != NULL;
    pthread_mutex_unlock(&tracker_lock);
    if (!needed) {
        return 0;
    }
    char **argv = have_command ? NULL : tracker_command();  /* Python */
    if (!have_command && argv == NULL) {
        return -1;
    }
    pthread_mutex_lock(&tracker_lock);
    int adopted = 0;
    if (tracker_argv == NULL) {
        tracker_argv = argv;           /* kept, once it worked, for restarts */
        argv = NULL;
        adopted = 1;
    }
    int rc = respawn_locked();
    int saved = errno;
    if (rc < 0 && adopted) {
        argv = tracker_argv;           /* a command that failed is not kept */
        tracker_argv = NULL;
    }
    pthread_mutex_unlock(&tracker_lock);
    if (argv != NULL) {
        free_argv(argv);               /* failed, or another thread's was kept */
    }
    if (rc < 0) {
        PyErr_Format(PyExc_OSError,
                     "could not start the shared memory tracker: %s "
                     "(MEMMANAGER_SHM_TRACKER=0 runs without one)",
                     strerror(saved));
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* The list                                                            */
/* ------------------------------------------------------------------ */

void mm_shm_tracker_created(mm_shm_link *link)
{
    PyInterpreterState *interp = PyInterpreterState_Get();
    link->creator = getpid();
    link->interpreter = PyInterpreterState_GetID(interp);
    pthread_mutex_lock(&tracker_lock);
    link->prev = NULL;
    link->next = listed_head;
    if (listed_head != NULL) {
        listed_head->prev = link;
    }
    listed_head = link;
    link->listed = 1;
    if (tracker_fd >= 0) {
        send_locked('R', link->posix_name);
        (void)respawn_locked();        /* the send found it dead */
    }
    pthread_mutex_unlock(&tracker_lock);
}

static void unlist_locked(mm_shm_link *link)
{
    if (link->prev != NULL) {
        link->prev->next = link->next;
    }
    else {
        listed_head = link->next;
    }
    if (link->next != NULL) {
        link->next->prev = link->prev;
    }
    link->prev = link->next = NULL;
    link->listed = 0;
}

/* Unlinks the name when this process created it and has not unlinked it
 * yet.  Never calls into Python: may run without the GIL. */
void mm_shm_tracker_forget(mm_shm_link *link)
{
    pthread_mutex_lock(&tracker_lock);
    if (link->listed) {
        unlist_locked(link);
        if (link->creator == getpid()) {
            (void)shm_unlink(link->posix_name);
            send_locked('U', link->posix_name);
        }
    }
    pthread_mutex_unlock(&tracker_lock);
}

/* _shm_unlink_at_exit(): the memory stays mapped for whoever still uses
 * it; only the names go. */
PyObject *mm_shm_unlink_at_exit(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(arg))
{
    int64_t interpreter = PyInterpreterState_GetID(PyInterpreterState_Get());
    pid_t self = getpid();
    long count = 0;
    pthread_mutex_lock(&tracker_lock);
    mm_shm_link *link = listed_head;
    while (link != NULL) {
        mm_shm_link *next = link->next;
        if (link->creator == self && link->interpreter == interpreter) {
            unlist_locked(link);
            (void)shm_unlink(link->posix_name);
            send_locked('U', link->posix_name);
            count++;
        }
        link = next;
    }
    pthread_mutex_unlock(&tracker_lock);
    return PyLong_FromLong(count);
}
