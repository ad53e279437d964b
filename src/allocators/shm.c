/*
 * shm.c -- the SharedMemory allocator kind: POSIX shared memory
 * that another process can map by name.
 *
 *   buf = Buffer(n, s, allocator="SharedMemory", name=None, hugepages=None,
 *                numa_node=None)
 *   buf.name                                  # generated when not given
 *   other = Buffer.attach(buf.name, n, s, readonly=False)  # any process
 *   other = Buffer.attach(buf.name)           # n from the object's size
 *
 * The creator makes the object (shm_open with O_EXCL: an existing name is
 * FileExistsError), reserves its pages with posix_fallocate (tmpfs then
 * really holds them: a full /dev/shm is a MemoryError now, not a SIGBUS at
 * the first write of a page nothing backs; the pages are zeroed, so
 * init_value=0 costs nothing more) and maps it MAP_SHARED.  With
 * numa_node= the mapping is made first, while the object is still empty,
 * and bound (numa.c): on tmpfs the binding is the object's own policy, so
 * the pages posix_fallocate then reserves come from that node.
 * hugepages= is allocator.c's advice on the mapping.  Who unlinks
 * the name is shm_tracker.c's business: the creator's buffer when it
 * dies, the atexit hook for buffers still alive at exit, the tracker
 * process when the creator is killed.  An attached buffer only unmaps; a
 * forked child inherits the creator's buffer but never unlinks (the
 * cookie's link records the creating process).
 *
 * Inherent: another process may ftruncate the object smaller while it is
 * mapped; touching a page past the new end is then a SIGBUS, which no
 * library can turn into an exception.  attach() checks the size it maps
 * against the object's (fstat) at that moment only.
 *
 * Names are what Python's multiprocessing.shared_memory uses: without the
 * leading slash (which is added for shm_open), so both interoperate.  A
 * name given with a leading slash is used as it is.
 *
 * Layer: allocators.  May call core/.
 */
#include "allocators/allocators.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define SHM_NAME_MAX 255
#define GENERATED_NAME_TRIES 16

/* From this size on, posix_fallocate runs without the GIL. */
#define RESERVE_WITHOUT_GIL ((size_t)1 << 20)

/* Per-block state: which object this is and who unlinks it. */
typedef struct {
    mm_shm_link link;      /* creators: listed in shm_tracker.c; else unlisted */
    int slash_added;       /* buf.name is posix_name without its '/' */
    int noted;             /* the mapping is in mapped_file.c's table */
    dev_t device;          /* the object, as the table knows it */
    ino_t inode;
    char posix_name[];     /* as given to shm_open: "/..." */
} shm_cookie;

/* ------------------------------------------------------------------ */
/* Names                                                               */
/* ------------------------------------------------------------------ */

/* A malloc'd cookie for the name (a str), or NULL with ValueError. */
static shm_cookie *cookie_for_name(PyObject *name)
{
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "name must be a str, not %.100s",
                     Py_TYPE(name)->tp_name);
        return NULL;
    }
    PyObject *encoded = PyUnicode_EncodeFSDefault(name);
    if (encoded == NULL) {
        return NULL;
    }
    const char *raw = PyBytes_AS_STRING(encoded);
    size_t length = (size_t)PyBytes_GET_SIZE(encoded);
    int slash_added = length == 0 || raw[0] != '/';
    const char *rest = slash_added ? raw : raw + 1;
    size_t rest_length = slash_added ? length : length - 1;
    shm_cookie *cookie = NULL;
    if (rest_length == 0 || rest_length >= SHM_NAME_MAX ||
        memchr(rest, '/', rest_length) != NULL || memchr(rest, '\0', rest_length) != NULL) {
        PyErr_Format(PyExc_ValueError,
                     "invalid shared memory name %R: 1 to %d characters, "
                     "no '/' except a leading one, no NUL", name, SHM_NAME_MAX - 1);
        goto done;
    }
    cookie = malloc(sizeof(shm_cookie) + rest_length + 2);
    if (cookie == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memset(&cookie->link, 0, sizeof(cookie->link));
    cookie->link.posix_name = cookie->posix_name;
    cookie->slash_added = slash_added;
    cookie->noted = 0;
    cookie->posix_name[0] = '/';
    memcpy(cookie->posix_name + 1, rest, rest_length);
    cookie->posix_name[rest_length + 1] = '\0';
done:
    Py_DECREF(encoded);
    return cookie;
}

static uint64_t random_bits(void)
{
    uint64_t bits = 0;
    if (getentropy(&bits, sizeof(bits)) != 0) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        bits = (uint64_t)now.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)now.tv_sec;
    }
    return bits;
}

/* MEMMANAGER_SHM_PREFIX when it is 1 to 64 of [A-Za-z0-9_.-], else "mm_"
 * (read with the GIL, as os.environ writes it). */
static const char *generated_prefix(void)
{
    const char *prefix = getenv("MEMMANAGER_SHM_PREFIX");
    size_t length = prefix == NULL ? 0 : strlen(prefix);
    if (length == 0 || length > 64 ||
        strspn(prefix, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                       "0123456789_.-") != length) {
        return "mm_";
    }
    return prefix;
}

static shm_cookie *cookie_for_generated_name(void)
{
    char name[128];
    snprintf(name, sizeof(name), "%s%ld_%012llx", generated_prefix(), (long)getpid(),
             (unsigned long long)(random_bits() & 0xffffffffffffull));
    PyObject *str = PyUnicode_FromString(name);
    if (str == NULL) {
        return NULL;
    }
    shm_cookie *cookie = cookie_for_name(str);
    Py_DECREF(str);
    return cookie;
}

static PyObject *display_name(const shm_cookie *cookie)
{
    const char *name = cookie->posix_name + (cookie->slash_added ? 1 : 0);
    return PyUnicode_DecodeFSDefault(name);
}

/* OSError (FileNotFoundError, FileExistsError, ...) for errno, naming
 * the object; MemoryError when there is no room for it. */
static void raise_for_name(const shm_cookie *cookie)
{
    int saved = errno;
    PyObject *name = display_name(cookie);
    if (name == NULL) {
        return;
    }
    if (saved == ENOSPC || saved == ENOMEM) {
        PyErr_Format(PyExc_MemoryError, "no room for shared memory %R: %s",
                     name, strerror(saved));
    }
    else {
        errno = saved;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
    }
    Py_DECREF(name);
}

/* ------------------------------------------------------------------ */
/* Creating                                                            */
/* ------------------------------------------------------------------ */

static int shm_parse_options(AllocatorObject *self, PyObject *options,
                             mm_request *req)
{
    static const char *const known[] = {"name", "hugepages", "numa_node", NULL};
    req->alignment = mm_page_size();
    if (options == NULL) {
        return 0;
    }
    if (mm_option_refuse_others(self, options, known) < 0 ||
        mm_option_hugepages(options, req) < 0 ||
        mm_numa_option(options, req) < 0) {
        return -1;
    }
    mm_option_get(options, "name", &req->shm_name);   /* None: generated */
    return 0;
}

/* An open, new, exclusive object for the request's name (or a generated
 * one, retried on a clash); -1 with an exception. */
static int create_object(const mm_request *req, shm_cookie **cookie_out)
{
    for (int attempt = 0; attempt < GENERATED_NAME_TRIES; attempt++) {
        shm_cookie *cookie = req->shm_name != NULL ? cookie_for_name(req->shm_name)
                                                   : cookie_for_generated_name();
        if (cookie == NULL) {
            return -1;
        }
        int fd = shm_open(cookie->posix_name, O_CREAT | O_EXCL | O_RDWR, 0600);
        if (fd >= 0) {
            *cookie_out = cookie;
            return fd;
        }
        if (errno != EEXIST || req->shm_name != NULL) {
            raise_for_name(cookie);
            free(cookie);
            return -1;
        }
        free(cookie);
    }
    PyErr_SetString(PyExc_FileExistsError,
                    "could not find a free shared memory name");
    return -1;
}

/* Refuses at once sizes /dev/shm cannot hold now (posix_fallocate would
 * refuse them too, after zeroing what fits). */
static int check_room(int fd, size_t size)
{
    struct statvfs fs;
    if (size > (size_t)INT64_MAX ||
        (fstatvfs(fd, &fs) == 0 && fs.f_bsize > 0 &&
         size / fs.f_bsize >= (size_t)fs.f_bavail)) {
        errno = ENOSPC;
        return -1;
    }
    return 0;
}

/* Gives the object its size with every page allocated: 0, or -1 with
 * errno (ENOSPC when /dev/shm is full).  ftruncate alone would leave the
 * pages to be found at the first touch, which is a SIGBUS when there are
 * none left by then. */
static int reserve_pages(int fd, size_t size)
{
    int rc;
    if (size >= RESERVE_WITHOUT_GIL) {
        Py_BEGIN_ALLOW_THREADS
        do {
            rc = posix_fallocate(fd, 0, (off_t)size);
        } while (rc == EINTR);
        Py_END_ALLOW_THREADS
    }
    else {
        do {
            rc = posix_fallocate(fd, 0, (off_t)size);
        } while (rc == EINTR);
    }
    if (rc != 0) {
        errno = (rc == EFBIG) ? ENOSPC : rc;
        return -1;
    }
    return 0;
}

/* Maps the new, empty object, binds the mapping to the request's node
 * if it names one and reserves the pages; -1 with errno, or with OSError
 * set (*raised) when the binding failed. */
static char *map_new_object(AllocatorObject *self, const mm_request *req,
                            int fd, size_t size, shm_cookie *cookie, int *raised)
{
    size_t length = mm_round_to_pages(size);
    *raised = 0;
    if (check_room(fd, size) < 0) {
        return MAP_FAILED;
    }
    char *map = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        return MAP_FAILED;
    }
    /* Noted before the pages are reserved: MappedFile's 'w+' on the
     * object's /dev/shm path must not truncate it under this mapping. */
    if (mm_mapped_files_note(fd, &cookie->device, &cookie->inode) < 0) {
        int saved = errno;
        munmap(map, length);
        errno = saved;
        return MAP_FAILED;
    }
    cookie->noted = 1;
    if (req->numa_node >= 0 && mm_numa_bind(self, map, length, req->numa_node) < 0) {
        *raised = 1;
    }
    else if (reserve_pages(fd, size) == 0) {
        return map;
    }
    int saved = errno;
    munmap(map, length);
    mm_mapped_files_forget(cookie->device, cookie->inode);
    cookie->noted = 0;
    errno = saved;
    return MAP_FAILED;
}

static int shm_allocate(AllocatorObject *self, const mm_request *req,
                        size_t size, int Py_UNUSED(zero), mm_raw *out)
{
    shm_cookie *cookie = NULL;
    int raised;
    if (mm_shm_tracker_ensure() < 0) {
        return -1;
    }
    int fd = create_object(req, &cookie);
    if (fd < 0) {
        return -1;
    }
    char *map = map_new_object(self, req, fd, size, cookie, &raised);
    if (map == MAP_FAILED) {
        int saved = errno;
        close(fd);
        shm_unlink(cookie->posix_name);
        errno = saved;
        if (!raised) {
            raise_for_name(cookie);
        }
        free(cookie);
        return -1;
    }
    close(fd);
    mm_shm_tracker_created(&cookie->link);
    out->base = map;
    out->cookie = cookie;
    return 0;
}

/* Never calls into Python: may run without the GIL. */
static void shm_release(AllocatorObject *Py_UNUSED(self), char *base,
                        size_t size, void *cookie_ptr)
{
    shm_cookie *cookie = cookie_ptr;
    mm_unmap(base, size);
    if (cookie != NULL && cookie->noted) {
        mm_mapped_files_forget(cookie->device, cookie->inode);
    }
    if (cookie != NULL) {
        mm_shm_tracker_forget(&cookie->link);   /* unlinks, for the creator */
        free(cookie);
    }
}

static const mm_allocator_ops mm_shm_ops = {
    .kind = "SharedMemory",
    .parse_options = shm_parse_options,
    .allocate = shm_allocate,
    .release = shm_release,
};

/* ------------------------------------------------------------------ */
/* Mapping an existing object (Buffer.attach), and the name of a block */
/* ------------------------------------------------------------------ */

/* Opens an existing object: its descriptor and size, or -1 with an
 * exception (FileNotFoundError when it does not exist). */
static int open_existing(const shm_cookie *cookie, int readonly, off_t *size_out)
{
    struct stat info;
    int fd = shm_open(cookie->posix_name, readonly ? O_RDONLY : O_RDWR, 0);
    if (fd < 0) {
        raise_for_name(cookie);
        return -1;
    }
    if (fstat(fd, &info) != 0) {
        raise_for_name(cookie);
        close(fd);
        return -1;
    }
    *size_out = info.st_size;
    return fd;
}

/* The number of items to map: as asked (ValueError when the object is
 * smaller), or, with *num_items 0, as many as the object holds. */
static int attach_sizes(const shm_cookie *cookie, off_t object_size,
                        Py_ssize_t item_size, Py_ssize_t *num_items)
{
    int sizes_from_object = *num_items == 0;
    if (sizes_from_object) {
        *num_items = (Py_ssize_t)(object_size / item_size);
        if (*num_items > 0) {
            return 0;
        }
    }
    else if ((uintmax_t)object_size >= (uintmax_t)(*num_items * item_size)) {
        return 0;
    }
    PyObject *name = display_name(cookie);
    if (name != NULL) {
        PyErr_Format(PyExc_ValueError,
                     "shared memory %R has %lld bytes, %zd are needed", name,
                     (long long)object_size,
                     sizes_from_object ? item_size : *num_items * item_size);
        Py_DECREF(name);
    }
    return -1;
}

static int map_cookie(shm_cookie *cookie, int readonly, Py_ssize_t item_size,
                      Py_ssize_t *num_items, mm_block *out)
{
    off_t object_size = 0;
    int fd = open_existing(cookie, readonly, &object_size);
    if (fd < 0) {
        return -1;
    }
    if (attach_sizes(cookie, object_size, item_size, num_items) < 0) {
        close(fd);
        return -1;
    }
    size_t nbytes = (size_t)(*num_items * item_size);
    int prot = PROT_READ | (readonly ? 0 : PROT_WRITE);
    char *map = mmap(NULL, mm_round_to_pages(nbytes), prot, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        raise_for_name(cookie);   /* before close(), which may change errno */
        close(fd);
        return -1;
    }
    if (mm_mapped_files_note(fd, &cookie->device, &cookie->inode) < 0) {
        raise_for_name(cookie);
        munmap(map, mm_round_to_pages(nbytes));
        close(fd);
        return -1;
    }
    cookie->noted = 1;
    close(fd);
    *out = (mm_block){map, nbytes, cookie, 0};
    return 0;
}

int mm_shm_map_existing(PyObject *name, int readonly, Py_ssize_t item_size,
                        Py_ssize_t *num_items, mm_block *out)
{
    shm_cookie *cookie = cookie_for_name(name);
    if (cookie == NULL) {
        return -1;
    }
    if (map_cookie(cookie, readonly, item_size, num_items, out) < 0) {
        free(cookie);
        return -1;
    }
    return 0;
}

AllocatorObject *mm_shm_allocator(mm_state *st)
{
    PyObject *name = PyUnicode_FromString("SharedMemory");
    if (name == NULL) {
        return NULL;
    }
    AllocatorObject *alloc = mm_allocator_lookup(st, name);
    Py_DECREF(name);
    return alloc;
}

PyObject *mm_shm_block_name(const AllocatorObject *alloc, void *cookie)
{
    if (alloc->ops != &mm_shm_ops || cookie == NULL) {
        Py_RETURN_NONE;
    }
    return display_name(cookie);
}

/* SharedMemory memory is ours alone (huge pages), but a guard byte would
 * be seen by every process that attaches. */
int mm_shm_kind_register(mm_state *st)
{
    return mm_allocator_register_kind(st, "SharedMemory", &mm_shm_ops, NULL,
                                      MM_KIND_HUGEPAGES);
}
