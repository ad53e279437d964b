/*
 * replay.c -- memmanager.replay(path, allocator): a Log's file (log.c has
 * the format) played against one allocator, to time it and to reproduce
 * what a program asked of its allocators elsewhere.
 *
 *   result = memmanager.replay("/tmp/alloc.log", allocator="CMalloc")
 *   result.seconds, result.peak_bytes, result.unfreed, ...
 *
 * In three steps, the first two without the GIL and without allocating
 * anything of the allocator's:
 *
 *   1. read:  the whole file into memory (OSError with its name);
 *   2. parse: every line checked (ValueError naming the file and line);
 *             the events put in time order (lines of several Logs or
 *             processes sharing a file can be out of it: each Log writes
 *             its buffer whole, and its own lines are in order), ties in
 *             file order; each free matched to the live allocation of the
 *             same (process, allocator, address), a free with none being
 *             a ValueError, as is an allocation at an address still live
 *             or a free of another size.  What comes out is the plan: one
 *             op per event, each block given a slot (slots of freed
 *             blocks are used again, so the plan's working set is the
 *             log's live set), and the peak of live requested bytes.
 *   3. play:  with the GIL (a Python plug-in may be the allocator), each
 *             op is one mm_allocator_alloc_block (uninitialised memory,
 *             no options) or mm_allocator_free_block; only this loop is
 *             timed (CLOCK_MONOTONIC).  Blocks the log never frees are
 *             freed after the timing and reported.  If an allocation
 *             fails, or a signal handler raises (checked every 65536
 *             events), every live block is freed and the exception
 *             propagates.
 *
 * Replayed blocks are not buffers: they are not in the region registry
 * and not counted in stats() under the allocator's name, but what an
 * adaptor takes from its upstream is (its upstream_blocks/bytes).
 *
 * Allocator names are told apart by a 64-bit FNV-1a hash of their text:
 * only which lines belong together matters here.
 *
 * Layer: adaptors.  May call allocators/ and core/.
 */
#include "adaptors/adaptors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define REPLAY_FORMAT_VERSION 1
#define REPLAY_HEADER "# memmanager-log "
#define REPLAY_SIGNAL_EVERY ((size_t)1 << 16)

/* One event line as parsed. */
typedef struct {
    uint64_t time;
    uint64_t pid;
    uint64_t name;          /* hash of the allocator's name */
    uint64_t address;
    uint64_t size;
    uint64_t line;          /* 1-based line number in the file */
    int is_free;
} parsed_event;

/* One step of the plan. */
typedef struct {
    size_t size;
    uint32_t slot;
    uint32_t is_free;
} replay_op;

/* What parsing found, or why it stopped. */
typedef struct {
    char *data;             /* the file, PyMem_RawMalloc'd */
    size_t length;
    parsed_event *events;   /* PyMem_RawMalloc'd */
    size_t count, capacity;
    replay_op *ops;         /* PyMem_RawMalloc'd, count of them */
    size_t slots;           /* blocks live at once, at most */
    size_t allocations, frees;
    uint64_t peak_bytes;
    int read_errno;         /* a read failed: its errno */
    uint64_t error_line;    /* a line is malformed: its number (0: none) */
    char error[160];        /* and why */
} replay_plan;

static void plan_clear(replay_plan *plan)
{
    PyMem_RawFree(plan->data);
    PyMem_RawFree(plan->events);
    PyMem_RawFree(plan->ops);
    plan->data = NULL;
    plan->events = NULL;
    plan->ops = NULL;
}

static int plan_fail(replay_plan *plan, uint64_t line, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

static int plan_fail(replay_plan *plan, uint64_t line, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(plan->error, sizeof(plan->error), format, args);
    va_end(args);
    plan->error_line = line;
    return -1;
}

/* ------------------------------------------------------------------ */
/* 1. read                                                             */
/* ------------------------------------------------------------------ */

static int read_file(const char *name, replay_plan *plan)
{
    int fd = open(name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        plan->read_errno = errno;
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        close(fd);
        plan->read_errno = EISDIR;
        return -1;
    }
    size_t capacity = (fstat(fd, &st) == 0 && st.st_size > 0)
                      ? (size_t)st.st_size + 1 : (size_t)1 << 16;
    char *data = PyMem_RawMalloc(capacity);
    size_t length = 0;
    while (data != NULL) {
        if (length == capacity) {
            char *bigger = PyMem_RawRealloc(data, capacity * 2);
            if (bigger == NULL) {
                break;
            }
            data = bigger;
            capacity *= 2;
        }
        ssize_t n = read(fd, data + length, capacity - length);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            plan->read_errno = errno;
            PyMem_RawFree(data);
            close(fd);
            return -1;
        }
        if (n == 0) {
            close(fd);
            plan->data = data;
            plan->length = length;
            return 0;
        }
        length += (size_t)n;
    }
    PyMem_RawFree(data);
    close(fd);
    plan->read_errno = ENOMEM;
    return -1;
}

/* ------------------------------------------------------------------ */
/* 2. parse                                                            */
/* ------------------------------------------------------------------ */

/* The fields of one line, each [start, end). */
#define FIELDS 7
typedef struct {
    const char *start[FIELDS];
    const char *end[FIELDS];
} line_fields;

static int split_fields(const char *p, const char *end, line_fields *f)
{
    for (int i = 0; i < FIELDS; i++) {
        const char *space = (i < FIELDS - 1) ? memchr(p, ' ', (size_t)(end - p)) : NULL;
        const char *stop = space != NULL ? space : end;
        if (stop == p || (i < FIELDS - 1 && space == NULL)) {
            return i;             /* fewer fields, or an empty one */
        }
        f->start[i] = p;
        f->end[i] = stop;
        p = stop + 1;
    }
    /* The last field (the name) holds no space. */
    return memchr(f->start[FIELDS - 1], ' ', (size_t)(end - f->start[FIELDS - 1])) == NULL
           ? FIELDS : FIELDS + 1;
}

static int parse_decimal(const char *p, const char *end, uint64_t *out)
{
    uint64_t value = 0;
    if (p == end || end - p > 20) {
        return -1;
    }
    for (; p < end; p++) {
        if (*p < '0' || *p > '9') {
            return -1;
        }
        unsigned digit = (unsigned)(*p - '0');
        if (value > (UINT64_MAX - digit) / 10) {
            return -1;
        }
        value = value * 10 + digit;
    }
    *out = value;
    return 0;
}

static int parse_hex(const char *p, const char *end, uint64_t *out)
{
    uint64_t value = 0;
    if (end - p < 3 || p[0] != '0' || (p[1] != 'x' && p[1] != 'X') || end - p > 18) {
        return -1;
    }
    for (p += 2; p < end; p++) {
        unsigned digit;
        if (*p >= '0' && *p <= '9') {
            digit = (unsigned)(*p - '0');
        }
        else if (*p >= 'a' && *p <= 'f') {
            digit = (unsigned)(*p - 'a' + 10);
        }
        else if (*p >= 'A' && *p <= 'F') {
            digit = (unsigned)(*p - 'A' + 10);
        }
        else {
            return -1;
        }
        value = (value << 4) | digit;
    }
    *out = value;
    return 0;
}

static uint64_t name_hash(const char *p, const char *end)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; p < end; p++) {
        h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
    }
    return h;
}

/* A header line: "# memmanager-log <version>[ ...]"; other lines that
 * start with '#' are comments. */
static int parse_comment(replay_plan *plan, uint64_t line, const char *p,
                         const char *end)
{
    size_t prefix = sizeof(REPLAY_HEADER) - 1;
    int is_header = (size_t)(end - p) >= prefix && memcmp(p, REPLAY_HEADER, prefix) == 0;
    if (line == 1 && !is_header) {
        return plan_fail(plan, line, "not a memmanager log: the first line is not "
                         "the header \"# memmanager-log 1 ...\"");
    }
    if (!is_header) {
        return 0;
    }
    const char *version = p + prefix;
    const char *stop = memchr(version, ' ', (size_t)(end - version));
    uint64_t number;
    if (parse_decimal(version, stop != NULL ? stop : end, &number) < 0) {
        return plan_fail(plan, line, "the header has no format version");
    }
    if (number != REPLAY_FORMAT_VERSION) {
        return plan_fail(plan, line, "format version %llu; this memmanager reads "
                         "version %d", (unsigned long long)number,
                         REPLAY_FORMAT_VERSION);
    }
    return 0;
}

static const char *const field_names[FIELDS] = {
    "time", "process", "thread", "event", "size", "address", "allocator",
};

static int parse_event(replay_plan *plan, uint64_t line, const char *p,
                       const char *end)
{
    line_fields f;
    int n = split_fields(p, end, &f);
    if (n != FIELDS) {
        return plan_fail(plan, line, "%s fields, not 7 (time pid tid event size "
                         "address allocator, one space apart)",
                         n > FIELDS ? "more" : "fewer");
    }
    parsed_event ev;
    uint64_t tid;
    int bad = -1;
    if (parse_decimal(f.start[0], f.end[0], &ev.time) < 0) {
        bad = 0;
    }
    else if (parse_decimal(f.start[1], f.end[1], &ev.pid) < 0) {
        bad = 1;
    }
    else if (parse_decimal(f.start[2], f.end[2], &tid) < 0) {
        bad = 2;
    }
    else if (f.end[3] - f.start[3] != 1 || (*f.start[3] != 'a' && *f.start[3] != 'f')) {
        bad = 3;
    }
    else if (parse_decimal(f.start[4], f.end[4], &ev.size) < 0 ||
             ev.size > (uint64_t)PY_SSIZE_T_MAX) {
        bad = 4;
    }
    else if (parse_hex(f.start[5], f.end[5], &ev.address) < 0) {
        bad = 5;
    }
    if (bad >= 0) {
        int width = (int)(f.end[bad] - f.start[bad]);
        return plan_fail(plan, line, "bad %s '%.*s'", field_names[bad],
                         width > 40 ? 40 : width, f.start[bad]);
    }
    ev.is_free = *f.start[3] == 'f';
    ev.name = name_hash(f.start[6], f.end[6]);
    ev.line = line;
    if (plan->count == plan->capacity) {
        size_t capacity = plan->capacity ? plan->capacity * 2 : 4096;
        parsed_event *bigger = PyMem_RawRealloc(plan->events,
                                                capacity * sizeof(parsed_event));
        if (bigger == NULL) {
            plan->read_errno = ENOMEM;
            return -1;
        }
        plan->events = bigger;
        plan->capacity = capacity;
    }
    plan->events[plan->count++] = ev;
    return 0;
}

static int parse_lines(replay_plan *plan)
{
    const char *p = plan->data, *end = plan->data + plan->length;
    uint64_t line = 0;
    if (plan->length == 0) {
        return plan_fail(plan, 0, "not a memmanager log: the file is empty");
    }
    while (p < end) {
        line++;
        const char *newline = memchr(p, '\n', (size_t)(end - p));
        if (newline == NULL) {
            return plan_fail(plan, line, "the line is truncated (no newline at its end)");
        }
        if (memchr(p, '\0', (size_t)(newline - p)) != NULL) {
            return plan_fail(plan, line, "the line holds a NUL byte");
        }
        int rc = 0;
        if (line == 1 || *p == '#') {
            rc = parse_comment(plan, line, p, newline);
        }
        else if (newline > p) {              /* blank lines are skipped */
            rc = parse_event(plan, line, p, newline);
        }
        if (rc < 0) {
            return -1;
        }
        p = newline + 1;
    }
    return 0;
}

static int by_time(const void *a, const void *b)
{
    const parsed_event *x = a, *y = b;
    if (x->time != y->time) {
        return x->time < y->time ? -1 : 1;
    }
    return x->line < y->line ? -1 : (x->line > y->line);
}

static void sort_by_time(replay_plan *plan)
{
    for (size_t i = 1; i < plan->count; i++) {
        if (plan->events[i].time < plan->events[i - 1].time) {
            qsort(plan->events, plan->count, sizeof(parsed_event), by_time);
            return;
        }
    }
}

/* The live blocks while matching: (pid, name, address) -> slot, open
 * addressing with linear probing and backward-shift deletion. */
typedef struct {
    uint64_t pid, name, address, size, line;
    uint32_t slot;
    uint32_t used;
} live_entry;

typedef struct {
    live_entry *entries;
    size_t mask;            /* capacity - 1 (a power of two) */
    size_t count;
} live_map;

static size_t live_hash(uint64_t pid, uint64_t name, uint64_t address)
{
    uint64_t h = address ^ (name * 0x9e3779b97f4a7c15ull) ^ (pid * 0xc2b2ae3d27d4eb4full);
    h ^= h >> 31;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 29;
    return (size_t)h;
}

static live_entry *live_find(live_map *map, const parsed_event *ev)
{
    size_t i = live_hash(ev->pid, ev->name, ev->address) & map->mask;
    while (map->entries[i].used) {
        live_entry *e = &map->entries[i];
        if (e->address == ev->address && e->name == ev->name && e->pid == ev->pid) {
            return e;
        }
        i = (i + 1) & map->mask;
    }
    return &map->entries[i];        /* the free entry where it would go */
}

static int live_grow(live_map *map)
{
    size_t capacity = (map->mask + 1) * 2;
    live_entry *old = map->entries;
    size_t old_capacity = map->mask + 1;
    map->entries = PyMem_RawCalloc(capacity, sizeof(live_entry));
    if (map->entries == NULL) {
        map->entries = old;
        return -1;
    }
    map->mask = capacity - 1;
    for (size_t i = 0; i < old_capacity; i++) {
        if (old[i].used) {
            parsed_event key = {.pid = old[i].pid, .name = old[i].name,
                                .address = old[i].address};
            *live_find(map, &key) = old[i];
        }
    }
    PyMem_RawFree(old);
    return 0;
}

static void live_remove(live_map *map, live_entry *e)
{
    size_t hole = (size_t)(e - map->entries);
    size_t i = hole;
    e->used = 0;
    map->count--;
    for (;;) {
        i = (i + 1) & map->mask;
        live_entry *next = &map->entries[i];
        if (!next->used) {
            return;
        }
        size_t home = live_hash(next->pid, next->name, next->address) & map->mask;
        /* next may move into the hole when its home is not in (hole, i]. */
        if (((i - home) & map->mask) >= ((i - hole) & map->mask)) {
            map->entries[hole] = *next;
            next->used = 0;
            hole = i;
        }
    }
}

/* Pairs the frees with their allocations and writes the plan. */
static int match_events(replay_plan *plan)
{
    live_map map = {NULL, 1023, 0};
    uint32_t *free_slots = NULL;     /* a stack of slots given back */
    size_t free_count = 0;
    uint64_t live_bytes = 0;
    int rc = -1;
    map.entries = PyMem_RawCalloc(map.mask + 1, sizeof(live_entry));
    plan->ops = PyMem_RawMalloc((plan->count ? plan->count : 1) * sizeof(replay_op));
    free_slots = PyMem_RawMalloc((plan->count ? plan->count : 1) * sizeof(uint32_t));
    if (map.entries == NULL || plan->ops == NULL || free_slots == NULL) {
        plan->read_errno = ENOMEM;
        goto done;
    }
    for (size_t i = 0; i < plan->count; i++) {
        const parsed_event *ev = &plan->events[i];
        live_entry *e = live_find(&map, ev);
        replay_op *op = &plan->ops[i];
        op->size = (size_t)ev->size;
        op->is_free = (uint32_t)ev->is_free;
        if (ev->is_free) {
            if (!e->used) {
                plan_fail(plan, ev->line, "free of 0x%llx, which no earlier line "
                          "of its process and allocator allocated",
                          (unsigned long long)ev->address);
                goto done;
            }
            if (e->size != ev->size) {
                plan_fail(plan, ev->line, "free of %llu bytes at 0x%llx, allocated "
                          "with %llu at line %llu", (unsigned long long)ev->size,
                          (unsigned long long)ev->address, (unsigned long long)e->size,
                          (unsigned long long)e->line);
                goto done;
            }
            op->slot = e->slot;
            free_slots[free_count++] = e->slot;
            live_bytes -= ev->size;
            live_remove(&map, e);
            plan->frees++;
            continue;
        }
        if (e->used) {
            plan_fail(plan, ev->line, "allocation at 0x%llx, which is still live "
                      "(allocated at line %llu)", (unsigned long long)ev->address,
                      (unsigned long long)e->line);
            goto done;
        }
        if (plan->slots >= UINT32_MAX) {
            plan_fail(plan, ev->line, "more than %u blocks live at once", UINT32_MAX);
            goto done;
        }
        uint32_t slot = free_count > 0 ? free_slots[--free_count] : (uint32_t)plan->slots++;
        *e = (live_entry){ev->pid, ev->name, ev->address, ev->size, ev->line, slot, 1};
        op->slot = slot;
        map.count++;
        plan->allocations++;
        live_bytes += ev->size;
        if (live_bytes > plan->peak_bytes) {
            plan->peak_bytes = live_bytes;
        }
        if (map.count * 2 > map.mask && live_grow(&map) < 0) {
            plan->read_errno = ENOMEM;
            goto done;
        }
    }
    rc = 0;
done:
    PyMem_RawFree(map.entries);
    PyMem_RawFree(free_slots);
    return rc;
}

/* Steps 1 and 2, without the GIL. */
static int make_plan(const char *name, replay_plan *plan)
{
    if (read_file(name, plan) < 0 || parse_lines(plan) < 0) {
        return -1;
    }
    sort_by_time(plan);
    if (match_events(plan) < 0) {
        return -1;
    }
    PyMem_RawFree(plan->events);   /* the plan is all that is needed now */
    plan->events = NULL;
    PyMem_RawFree(plan->data);
    plan->data = NULL;
    return 0;
}

static void raise_plan_error(const replay_plan *plan, PyObject *path)
{
    if (plan->read_errno == ENOMEM) {
        PyErr_NoMemory();
    }
    else if (plan->read_errno != 0) {
        errno = plan->read_errno;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
    }
    else if (plan->error_line == 0) {
        PyErr_Format(PyExc_ValueError, "%R: %s", path, plan->error);
    }
    else {
        PyErr_Format(PyExc_ValueError, "%R, line %llu: %s", path,
                     (unsigned long long)plan->error_line, plan->error);
    }
}

/* ------------------------------------------------------------------ */
/* 3. play                                                             */
/* ------------------------------------------------------------------ */

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Frees every live block; returns how many and their bytes. */
static size_t free_live(AllocatorObject *alloc, mm_block *blocks,
                        unsigned char *live, size_t slots, uint64_t *bytes)
{
    size_t count = 0;
    *bytes = 0;
    for (size_t s = 0; s < slots; s++) {
        if (live[s]) {
            count++;
            *bytes += blocks[s].size;
            live[s] = 0;
            mm_allocator_free_block(alloc, &blocks[s]);
        }
    }
    return count;
}

/* The timed loop; 0, or -1 with an exception and every block freed. */
static int play(AllocatorObject *alloc, const replay_plan *plan, mm_block *blocks,
                unsigned char *live, double *seconds)
{
    mm_request req;
    memset(&req, 0, sizeof(req));
    if (mm_allocator_parse_options(alloc, NULL, 1, 1, MM_INIT_UNINITIALISED, &req) < 0) {
        return -1;
    }
    double start = now_seconds();
    for (size_t i = 0; i < plan->count; i++) {
        const replay_op *op = &plan->ops[i];
        mm_block *block = &blocks[op->slot];
        if (op->is_free) {
            live[op->slot] = 0;
            mm_allocator_free_block(alloc, block);
        }
        else {
            req.num_items = (Py_ssize_t)op->size;
            req.item_size = 1;
            if (mm_allocator_alloc_block(alloc, &req, op->size, MM_INIT_UNINITIALISED,
                                         block) < 0) {
                goto error;
            }
            live[op->slot] = 1;
        }
        if ((i & (REPLAY_SIGNAL_EVERY - 1)) == REPLAY_SIGNAL_EVERY - 1 &&
            PyErr_CheckSignals() < 0) {
            goto error;
        }
    }
    *seconds = now_seconds() - start;
    return 0;
error:;
    /* The frees run with the exception saved: a Python plug-in's free is
     * called with none pending. */
    mm_saved_error saved;
    uint64_t ignored;
    mm_err_save(&saved);
    (void)free_live(alloc, blocks, live, plan->slots, &ignored);
    mm_err_restore(&saved);
    return -1;
}

PyObject *mm_replay(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                    PyObject *kwnames)
{
    static const char *const names[] = {"path", "allocator", NULL};
    PyObject *given[2];
    if (mm_unpack_arguments("replay", args, nargs, kwnames, names, 2, given) < 0) {
        return NULL;
    }
    if (given[0] == NULL) {
        PyErr_SetString(PyExc_TypeError, "replay() missing required argument 'path'");
        return NULL;
    }
    mm_state *st = PyModule_GetState(module);
    PyObject *path = PyOS_FSPath(given[0]);
    if (path == NULL) {
        return NULL;
    }
    PyObject *encoded = NULL, *result = NULL;
    AllocatorObject *alloc = NULL;
    mm_block *blocks = NULL;
    unsigned char *live = NULL;
    replay_plan plan;
    memset(&plan, 0, sizeof(plan));
    /* The allocator first: an unknown name is refused before any reading.
     * A strong reference: a plug-in's code could replace it meanwhile. */
    alloc = (AllocatorObject *)Py_XNewRef(mm_allocator_lookup(st, given[1]));
    if (alloc == NULL || !PyUnicode_FSConverter(path, &encoded)) {
        goto done;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = make_plan(PyBytes_AS_STRING(encoded), &plan);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        raise_plan_error(&plan, path);
        goto done;
    }
    size_t slots = plan.slots ? plan.slots : 1;
    blocks = PyMem_RawCalloc(slots, sizeof(mm_block));
    live = PyMem_RawCalloc(slots, 1);
    if (blocks == NULL || live == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    double seconds = 0.0;
    if (play(alloc, &plan, blocks, live, &seconds) < 0) {
        goto done;
    }
    uint64_t unfreed_bytes;
    size_t unfreed = free_live(alloc, blocks, live, plan.slots, &unfreed_bytes);
    result = Py_BuildValue("(nnndKnK)", (Py_ssize_t)plan.count,
                           (Py_ssize_t)plan.allocations, (Py_ssize_t)plan.frees,
                           seconds, (unsigned long long)plan.peak_bytes,
                           (Py_ssize_t)unfreed, (unsigned long long)unfreed_bytes);
done:
    PyMem_RawFree(blocks);
    PyMem_RawFree(live);
    plan_clear(&plan);
    Py_XDECREF(encoded);
    Py_XDECREF(alloc);
    Py_DECREF(path);
    return result;
}
