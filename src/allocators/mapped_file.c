/*
 * mapped_file.c -- the MappedFile allocator kind: a buffer whose memory
 * is a file, mapped MAP_SHARED, so what is written is in the file and a
 * file bigger than memory can be worked on in place:
 *
 *   buf = Buffer(n, s, allocator="MappedFile", path="data.bin",
 *                mode="r+", offset=0, hugepages=None, numa_node=None)
 *   buf.flush()        # msync: the bytes are on disk (release does it too)
 *
 *   mode  the file                               the buffer
 *   ----  -------------------------------------  ----------
 *   "r+"  exists, holds offset + n*s bytes       read-write   (default)
 *   "r"   exists, holds offset + n*s bytes       read-only
 *   "w+"  created or truncated to offset + n*s   read-write
 *         (ftruncate: sparse, every byte 0)
 *
 * The file is never grown or shrunk in "r+"/"r"; a file that is too short
 * is ValueError.  offset is any int >= 0: the mapping starts at the page
 * below it and the buffer at offset's byte; the cookie keeps the mapping
 * for release.  init_value: with "w+" the file is zero already (0 costs
 * nothing, another byte is written over it); with "r+" and "r" the data
 * is the file's, so an init_value is ValueError (it would overwrite the
 * file, or cannot be written).
 *
 * Every option is checked before anything is opened (no file is created
 * by a call that fails on its options); path= (str, bytes or
 * os.PathLike) is converted first thing in allocate, before the open.  A
 * file that cannot be opened is the OSError for errno with the filename
 * (FileNotFoundError, PermissionError, IsADirectoryError); only regular
 * files are mapped.  The descriptor is closed as soon as the file is
 * mapped, or on any failure: none is left open.  The mapping is
 * MAP_NORESERVE (the file is its backing store: no swap is reserved).
 *
 * hugepages=True advises huge pages on the mapping (the kernel uses them
 * for page cache where the file system supports it, tmpfs with
 * shmem_enabled=advise); automatically it is never advised, the page
 * cache decides.  numa_node= binds the mapping (numa.c); for a file on
 * tmpfs that places its pages, while a disk file's page cache follows the
 * process's own policy.  Guard bytes (MEMMANAGER_DEBUG) never apply: they
 * would shift the file's bytes.
 *
 * A file this process has mapped through MappedFile is never truncated
 * by it: a "w+" buffer on a file that a live buffer maps is ValueError
 * (the live mappings are counted per file, by device and inode, in a
 * table under its own lock, taken from the open to the mmap).  Were it
 * truncated, touching the old buffer past the new end would be a SIGBUS.
 * SharedMemory's mappings (created or attached) are in the table too: a
 * /dev/shm object is a file path= can name.
 * Inherent: another process, or Python's own open(path, "w"), may still
 * truncate a mapped file, as with the mmap module and numpy.memmap; that
 * SIGBUS no library can turn into an exception.
 *
 * Layer: allocators.  May call core/.
 */
#include "allocators/allocators.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MAP_NORESERVE
#define MAP_NORESERVE 0
#endif

/* From this size on, msync runs without the GIL (as big frees do). */
#define SYNC_WITHOUT_GIL ((size_t)1 << 20)

/* Per-block state: the mapping, which starts at or below the block, and
 * the file it maps. */
typedef struct {
    char *map;
    size_t length;
    dev_t device;
    ino_t inode;
} mapped_cookie;

/* ------------------------------------------------------------------ */
/* The files mapped now                                                */
/* ------------------------------------------------------------------ */

/* One entry per file with live mappings: few files, so a short array. */
typedef struct {
    dev_t device;
    ino_t inode;
    size_t mappings;
} mapped_entry;

static pthread_mutex_t mapped_lock = PTHREAD_MUTEX_INITIALIZER;
static mapped_entry *mapped_files = NULL;
static size_t mapped_count = 0, mapped_capacity = 0;

/* The entry of the file, or NULL; under mapped_lock. */
static mapped_entry *find_mapped(dev_t device, ino_t inode)
{
    for (size_t i = 0; i < mapped_count; i++) {
        if (mapped_files[i].device == device && mapped_files[i].inode == inode) {
            return &mapped_files[i];
        }
    }
    return NULL;
}

/* One more mapping of the file; -1 when out of memory.  Under the lock. */
static int count_mapping(dev_t device, ino_t inode)
{
    mapped_entry *entry = find_mapped(device, inode);
    if (entry == NULL) {
        if (mapped_count == mapped_capacity) {
            size_t capacity = mapped_capacity < 8 ? 8 : mapped_capacity * 2;
            mapped_entry *grown = realloc(mapped_files, capacity * sizeof(*grown));
            if (grown == NULL) {
                return -1;
            }
            mapped_files = grown;
            mapped_capacity = capacity;
        }
        entry = &mapped_files[mapped_count++];
        entry->device = device;
        entry->inode = inode;
        entry->mappings = 0;
    }
    entry->mappings++;
    return 0;
}

/* A child of fork() must not inherit the lock taken by another thread. */
static void lock_before_fork(void) { pthread_mutex_lock(&mapped_lock); }
static void unlock_after_fork(void) { pthread_mutex_unlock(&mapped_lock); }
static pthread_once_t fork_handlers_once = PTHREAD_ONCE_INIT;
static void install_fork_handlers(void)
{
    (void)pthread_atfork(lock_before_fork, unlock_after_fork, unlock_after_fork);
}

/* Any thread, no Python. */
static void forget_mapping(dev_t device, ino_t inode)
{
    pthread_mutex_lock(&mapped_lock);
    mapped_entry *entry = find_mapped(device, inode);
    if (entry != NULL && --entry->mappings == 0) {
        *entry = mapped_files[--mapped_count];
    }
    pthread_mutex_unlock(&mapped_lock);
}

int mm_mapped_files_note(int fd, dev_t *device, ino_t *inode)
{
    struct stat info;
    if (fstat(fd, &info) != 0) {
        return -1;
    }
    pthread_mutex_lock(&mapped_lock);
    int rc = count_mapping(info.st_dev, info.st_ino);
    pthread_mutex_unlock(&mapped_lock);
    if (rc < 0) {
        errno = ENOMEM;
        return -1;
    }
    *device = info.st_dev;
    *inode = info.st_ino;
    return 0;
}

void mm_mapped_files_forget(dev_t device, ino_t inode)
{
    forget_mapping(device, inode);
}

/* ------------------------------------------------------------------ */
/* Options                                                             */
/* ------------------------------------------------------------------ */

static int parse_mode(PyObject *value, int *mode)
{
    if (value == NULL) {
        *mode = MM_FILE_READ_WRITE;
        return 0;
    }
    if (!PyUnicode_Check(value)) {
        PyErr_Format(PyExc_TypeError, "mode must be a str, not %.100s",
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    static const struct {
        const char *text;
        int mode;
    } modes[] = {
        {"r+", MM_FILE_READ_WRITE},
        {"r", MM_FILE_READ_ONLY},
        {"w+", MM_FILE_CREATE},
    };
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        if (PyUnicode_CompareWithASCIIString(value, modes[i].text) == 0) {
            *mode = modes[i].mode;
            return 0;
        }
    }
    PyErr_Format(PyExc_ValueError, "mode must be 'r+', 'r' or 'w+', not %R", value);
    return -1;
}

static int parse_offset(PyObject *value, const mm_request *req, uint64_t *offset)
{
    *offset = 0;
    if (value == NULL) {
        return 0;
    }
    if (PyBool_Check(value) || !PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "offset must be an int, not %.100s",
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow < 0 || (overflow == 0 && v < 0)) {
        PyErr_Format(PyExc_ValueError, "offset must be >= 0, got %R", value);
        return -1;
    }
    /* offset + nbytes must be a file size (off_t, 64 bits). */
    uint64_t nbytes = (uint64_t)req->num_items * (uint64_t)req->item_size;
    if (overflow > 0 || (uint64_t)v > (uint64_t)INT64_MAX - nbytes) {
        PyErr_Format(PyExc_ValueError,
                     "offset %R + %llu bytes is past the largest file size",
                     value, (unsigned long long)nbytes);
        return -1;
    }
    *offset = (uint64_t)v;
    return 0;
}

/* The largest power of two the address base + offset is a multiple of,
 * base being page-aligned. */
static size_t alignment_at(uint64_t offset)
{
    size_t page = mm_page_size();
    size_t delta = (size_t)(offset & (page - 1));
    return delta == 0 ? page : delta & (~delta + 1);
}

static int mapped_parse_options(AllocatorObject *self, PyObject *options,
                                mm_request *req)
{
    static const char *const known[] = {"path", "mode", "offset", "hugepages",
                                        "numa_node", NULL};
    PyObject *mode, *offset;
    mm_option_get(options, "path", &req->path);
    if (req->path == NULL) {
        PyErr_Format(PyExc_TypeError,
                     "allocator %U needs path= (a str, bytes or os.PathLike)",
                     self->name);
        return -1;
    }
    mm_option_get(options, "mode", &mode);
    mm_option_get(options, "offset", &offset);
    if (mm_option_refuse_others(self, options, known) < 0 ||
        parse_mode(mode, &req->file_mode) < 0 ||
        parse_offset(offset, req, &req->file_offset) < 0 ||
        mm_option_hugepages(options, req) < 0 ||
        mm_numa_option(options, req) < 0) {
        return -1;
    }
    if (req->file_mode != MM_FILE_CREATE && req->init_byte != MM_INIT_UNINITIALISED) {
        PyErr_Format(PyExc_ValueError,
                     "init_value with mode=%s: the data is the file's (an init "
                     "value would %s it); use mode='w+' for a fresh file",
                     req->file_mode == MM_FILE_READ_ONLY ? "'r'" : "'r+'",
                     req->file_mode == MM_FILE_READ_ONLY ? "have to write"
                                                        : "overwrite");
        return -1;
    }
    req->readonly = req->file_mode == MM_FILE_READ_ONLY;
    req->alignment = alignment_at(req->file_offset);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Mapping                                                             */
/* ------------------------------------------------------------------ */

/* What map_file found wrong, besides errno. */
enum {
    MAP_OK = 0,
    MAP_ERRNO,          /* errno says; the filename goes with it */
    MAP_NOT_REGULAR,    /* not a regular file */
    MAP_TOO_SHORT,      /* "r+"/"r": the file holds fewer bytes */
    MAP_NO_ROOM,        /* mmap: ENOMEM */
    MAP_IN_USE,         /* "w+": a live buffer maps the file */
};

typedef struct {
    int fd;
    off_t file_size;    /* the file's size as found */
    dev_t device;
    ino_t inode;
} opened_file;

/* Opens the file and checks it; no Python (runs without the GIL). */
static int open_file(const char *path, const mm_request *req, uint64_t end,
                     opened_file *file)
{
    static const int flags[] = {
        [MM_FILE_READ_WRITE] = O_RDWR,
        [MM_FILE_READ_ONLY] = O_RDONLY,
        [MM_FILE_CREATE] = O_RDWR | O_CREAT,   /* truncated once checked */
    };
    struct stat info;
    /* O_NONBLOCK: opening a FIFO must not wait for a writer. */
    file->fd = open(path, flags[req->file_mode] | O_CLOEXEC | O_NOCTTY | O_NONBLOCK,
                    0666);
    if (file->fd < 0) {
        return MAP_ERRNO;
    }
    if (fstat(file->fd, &info) != 0) {
        return MAP_ERRNO;
    }
    if (S_ISDIR(info.st_mode)) {
        errno = EISDIR;
        return MAP_ERRNO;
    }
    if (!S_ISREG(info.st_mode)) {
        return MAP_NOT_REGULAR;
    }
    file->file_size = info.st_size;
    file->device = info.st_dev;
    file->inode = info.st_ino;
    if (req->file_mode == MM_FILE_CREATE) {
        if (find_mapped(info.st_dev, info.st_ino) != NULL) {
            return MAP_IN_USE;
        }
        /* The size first: a size the file system refuses (EFBIG) leaves
         * the file as it was.  Then every byte 0, as a fresh file's. */
        if (ftruncate(file->fd, (off_t)end) != 0 || ftruncate(file->fd, 0) != 0 ||
            ftruncate(file->fd, (off_t)end) != 0) {
            return MAP_ERRNO;
        }
        file->file_size = (off_t)end;
    }
    else if ((uint64_t)info.st_size < end) {
        return MAP_TOO_SHORT;
    }
    return MAP_OK;
}

/* Opens, sizes and maps the file (no Python); closes the descriptor.
 * *error: errno for MAP_ERRNO. */
static int map_file(const char *path, const mm_request *req, size_t size,
                    mapped_cookie *cookie, off_t *file_size, int *error)
{
    opened_file file = {-1, 0, 0, 0};
    size_t page = mm_page_size();
    uint64_t start = req->file_offset & ~(uint64_t)(page - 1);
    size_t delta = (size_t)(req->file_offset - start);
    pthread_mutex_lock(&mapped_lock);   /* from the check to the count */
    int rc = open_file(path, req, req->file_offset + size, &file);
    *file_size = file.file_size;
    if (rc == MAP_OK) {
        int prot = PROT_READ | (req->readonly ? 0 : PROT_WRITE);
        cookie->length = delta > SIZE_MAX - size ? 0 : mm_round_to_pages(delta + size);
        cookie->map = cookie->length == 0 ? MAP_FAILED
                      : mmap(NULL, cookie->length, prot, MAP_SHARED | MAP_NORESERVE,
                             file.fd, (off_t)start);
        if (cookie->map == MAP_FAILED) {
            rc = (cookie->length == 0 || errno == ENOMEM) ? MAP_NO_ROOM : MAP_ERRNO;
        }
        else if (count_mapping(file.device, file.inode) < 0) {
            munmap(cookie->map, cookie->length);
            rc = MAP_NO_ROOM;
        }
        cookie->device = file.device;
        cookie->inode = file.inode;
    }
    pthread_mutex_unlock(&mapped_lock);
    *error = errno;
    if (file.fd >= 0) {
        close(file.fd);
    }
    return rc;
}

static void raise_map_error(AllocatorObject *self, int rc, int error, PyObject *path,
                            uint64_t end, off_t file_size, size_t size)
{
    switch (rc) {
    case MAP_NOT_REGULAR:
        PyErr_Format(PyExc_ValueError, "allocator %U maps regular files; %R is not one",
                     self->name, path);
        break;
    case MAP_TOO_SHORT:
        PyErr_Format(PyExc_ValueError,
                     "file %R holds %lld bytes; offset + nbytes = %llu are needed "
                     "(mode 'r+' and 'r' never grow a file; 'w+' makes one)",
                     path, (long long)file_size, (unsigned long long)end);
        break;
    case MAP_IN_USE:
        PyErr_Format(PyExc_ValueError,
                     "file %R is mapped by a live buffer: mode 'w+' would truncate "
                     "it under that buffer (use mode 'r+', or release it first)",
                     path);
        break;
    case MAP_NO_ROOM:
        PyErr_Format(PyExc_MemoryError, "Allocator %U could not map %zu bytes of %R",
                     self->name, size, path);
        break;
    default:
        errno = error;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
        break;
    }
}

static int mapped_allocate(AllocatorObject *self, const mm_request *req,
                           size_t size, int Py_UNUSED(zero), mm_raw *out)
{
    PyObject *encoded = NULL;
    off_t file_size = 0;
    int rc, error = 0;
    /* Calls __fspath__: Python code, before anything is opened. */
    if (!PyUnicode_FSConverter(req->path, &encoded)) {
        return -1;
    }
    mapped_cookie *cookie = malloc(sizeof(mapped_cookie));
    if (cookie == NULL) {
        Py_DECREF(encoded);
        PyErr_NoMemory();
        return -1;
    }
    const char *path = PyBytes_AS_STRING(encoded);
    Py_BEGIN_ALLOW_THREADS
    rc = map_file(path, req, size, cookie, &file_size, &error);
    Py_END_ALLOW_THREADS
    Py_DECREF(encoded);
    if (rc != MAP_OK) {
        raise_map_error(self, rc, error, req->path, req->file_offset + size,
                        file_size, size);
        free(cookie);
        return -1;
    }
    if (req->numa_node >= 0 &&
        mm_numa_bind(self, cookie->map, cookie->length, req->numa_node) < 0) {
        munmap(cookie->map, cookie->length);
        forget_mapping(cookie->device, cookie->inode);
        free(cookie);
        return -1;
    }
    if (req->hugepages == 1) {
        mm_advise_hugepages(cookie->map, cookie->length);
    }
    out->base = cookie->map + (req->file_offset & (mm_page_size() - 1));
    out->cookie = cookie;
    return 0;
}

/* msync(MS_SYNC) of the whole mapping; 0 or -1 with errno.  No Python. */
static int sync_mapping(const mapped_cookie *cookie)
{
    int rc;
    do {
        rc = msync(cookie->map, cookie->length, MS_SYNC);
    } while (rc != 0 && errno == EINTR);
    return rc;
}

static int mapped_flush(AllocatorObject *Py_UNUSED(self), char *Py_UNUSED(base),
                        size_t Py_UNUSED(size), void *cookie_ptr)
{
    const mapped_cookie *cookie = cookie_ptr;
    int rc;
    if (cookie->length >= SYNC_WITHOUT_GIL) {
        Py_BEGIN_ALLOW_THREADS
        rc = sync_mapping(cookie);
        Py_END_ALLOW_THREADS
    }
    else {
        rc = sync_mapping(cookie);
    }
    if (rc != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

/* Never raises and never calls into Python: may run without the GIL.
 * A failing msync (EIO) is not reported here: flush() is the call that
 * can say so. */
static void mapped_release(AllocatorObject *Py_UNUSED(self), char *Py_UNUSED(base),
                           size_t Py_UNUSED(size), void *cookie_ptr)
{
    mapped_cookie *cookie = cookie_ptr;
    (void)sync_mapping(cookie);
    munmap(cookie->map, cookie->length);
    forget_mapping(cookie->device, cookie->inode);
    free(cookie);
}

static const mm_allocator_ops mm_mapped_file_ops = {
    .kind = "MappedFile",
    .parse_options = mapped_parse_options,
    .allocate = mapped_allocate,
    .release = mapped_release,
    .flush = mapped_flush,
};

/* No guard bytes (they would shift the file's bytes) and no automatic
 * huge pages (the page cache decides): the kind advises itself. */
int mm_mapped_file_kind_register(mm_state *st)
{
    pthread_once(&fork_handlers_once, install_fork_handlers);
    return mm_allocator_register_kind(st, "MappedFile", &mm_mapped_file_ops, NULL, 0);
}
