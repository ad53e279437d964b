/*
 * numa.c -- numa_node=, the NUMA node a page-granular allocator's blocks
 * (Aligned, Mmap, SharedMemory, MappedFile) are placed on:
 *
 *   Buffer(n, s, allocator="Mmap", numa_node=0)
 *
 * The option is an int >= 0 (a bool or any other type is TypeError) and
 * must name a node this process may allocate on, the kernel's answer
 * (get_mempolicy with MPOL_F_MEMS_ALLOWED, which follows cpusets), or
 * when that call is refused the nodes with memory that sysfs lists.
 * Anything else is ValueError, naming the node and the nodes there are,
 * before anything is allocated.
 *
 * The kind binds each fresh mapping with mbind before a byte of it is
 * touched, so every page is allocated on the node.  The policy is
 * MPOL_PREFERRED, not MPOL_BIND: the kernel places the pages on the node
 * first, and when the node is full takes them from another one.  Under
 * MPOL_BIND a full node is an OOM kill or a SIGBUS at some later write,
 * which no exception can report; a buffer on a farther node is only
 * slower.  mbind refused (EPERM under a seccomp profile, ENOSYS on a
 * kernel without NUMA) is OSError, and the kind unmaps what it mapped.
 * The syscall is made directly: no libnuma.
 *
 * Layer: allocators.  May call core/.
 */
#include "allocators/allocators.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if defined(__linux__) && defined(SYS_mbind) && defined(SYS_get_mempolicy)
#define MM_HAVE_NUMA 1
#define MPOL_PREFERRED_MODE 1      /* <linux/mempolicy.h>: MPOL_PREFERRED */
#define MPOL_F_MEMS_ALLOWED_FLAG 4 /* <linux/mempolicy.h>: MPOL_F_MEMS_ALLOWED */
#endif

/* Node numbers the masks below can hold (the kernel's limit is 1024). */
#define MAX_NODES 1024
#define MASK_WORDS (MAX_NODES / (8 * sizeof(unsigned long)))

typedef struct {
    unsigned long bits[MASK_WORDS];
} node_mask;

static int mask_has(const node_mask *mask, long node)
{
    size_t word_bits = 8 * sizeof(unsigned long);
    return (mask->bits[(size_t)node / word_bits] >> ((size_t)node % word_bits)) & 1ul;
}

static void mask_set(node_mask *mask, long node)
{
    size_t word_bits = 8 * sizeof(unsigned long);
    mask->bits[(size_t)node / word_bits] |= 1ul << ((size_t)node % word_bits);
}

/* A sysfs node list ("0", "0-3,8") into mask; 0, or -1 when unreadable. */
static int read_node_list(const char *path, node_mask *mask)
{
    char text[4096];
    FILE *file = fopen(path, "re");
    if (file == NULL) {
        return -1;
    }
    size_t length = fread(text, 1, sizeof(text) - 1, file);
    fclose(file);
    text[length] = '\0';
    const char *p = text;
    while (*p != '\0' && *p != '\n') {
        char *end;
        long first = strtol(p, &end, 10);
        long last = first;
        if (end == p || first < 0) {
            return -1;
        }
        if (*end == '-') {
            p = end + 1;
            last = strtol(p, &end, 10);
            if (end == p || last < first) {
                return -1;
            }
        }
        for (long node = first; node <= last && node < MAX_NODES; node++) {
            mask_set(mask, node);
        }
        p = *end == ',' ? end + 1 : end;
    }
    return 0;
}

/* The nodes this process may place memory on. */
static void allowed_nodes(node_mask *mask)
{
    memset(mask, 0, sizeof(*mask));
#ifdef MM_HAVE_NUMA
    int mode = 0;
    if (syscall(SYS_get_mempolicy, &mode, mask->bits, (unsigned long)MAX_NODES,
                NULL, (unsigned long)MPOL_F_MEMS_ALLOWED_FLAG) == 0) {
        return;
    }
    memset(mask, 0, sizeof(*mask));
    if (read_node_list("/sys/devices/system/node/has_memory", mask) == 0 ||
        read_node_list("/sys/devices/system/node/online", mask) == 0) {
        return;
    }
    memset(mask, 0, sizeof(*mask));
#endif
    mask_set(mask, 0);   /* no NUMA to speak of: one node, 0 */
}

/* The mask as a sysfs-style list ("0-3,8"), for messages. */
static void format_nodes(const node_mask *mask, char *text, size_t size)
{
    size_t used = 0;
    text[0] = '\0';
    for (long node = 0; node < MAX_NODES && used + 24 < size; node++) {
        if (!mask_has(mask, node)) {
            continue;
        }
        long last = node;
        while (last + 1 < MAX_NODES && mask_has(mask, last + 1)) {
            last++;
        }
        int n = last == node
                ? snprintf(text + used, size - used, "%s%ld", used ? "," : "", node)
                : snprintf(text + used, size - used, "%s%ld-%ld", used ? "," : "",
                           node, last);
        used += n > 0 ? (size_t)n : 0;
        node = last;
    }
}

static int raise_no_such_node(PyObject *value, const node_mask *allowed)
{
    char nodes[512];
    format_nodes(allowed, nodes, sizeof(nodes));
    PyErr_Format(PyExc_ValueError,
                 "numa_node=%R: no such NUMA node here (this process can "
                 "place memory on node(s) %s)", value, nodes);
    return -1;
}

int mm_numa_option(PyObject *options, mm_request *req)
{
    PyObject *value;
    mm_option_get(options, "numa_node", &value);   /* None: no binding */
    if (value == NULL) {
        return 0;
    }
    if (PyBool_Check(value) || !PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "numa_node must be an int, not %.100s",
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    int overflow = 0;
    long node = PyLong_AsLongAndOverflow(value, &overflow);
    if (node == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow < 0 || (overflow == 0 && node < 0)) {
        PyErr_Format(PyExc_ValueError, "numa_node must be >= 0, got %R", value);
        return -1;
    }
    node_mask allowed;
    allowed_nodes(&allowed);
    if (overflow > 0 || node >= MAX_NODES || !mask_has(&allowed, node)) {
        return raise_no_such_node(value, &allowed);
    }
#ifndef MM_HAVE_NUMA
    PyErr_SetString(PyExc_OSError, "numa_node= needs Linux (mbind)");
    return -1;
#else
    req->numa_node = (int)node;
    return 0;
#endif
}

int mm_numa_bind(AllocatorObject *alloc, void *base, size_t length, int node)
{
#ifdef MM_HAVE_NUMA
    node_mask mask;
    memset(&mask, 0, sizeof(mask));
    mask_set(&mask, node);
    /* maxnode counts one past the highest bit the kernel may read. */
    if (syscall(SYS_mbind, base, (unsigned long)length,
                (unsigned long)MPOL_PREFERRED_MODE, mask.bits,
                (unsigned long)MAX_NODES + 1, 0ul) == 0) {
        return 0;
    }
    /* OSError(errno, text): EPERM is a PermissionError, and so on. */
    int saved = errno;
    PyObject *args = Py_BuildValue(
        "(iN)", saved,
        PyUnicode_FromFormat("allocator %U could not bind %zu bytes to NUMA "
                             "node %d: mbind: %s", alloc->name, length, node,
                             strerror(saved)));
    if (args != NULL) {
        PyErr_SetObject(PyExc_OSError, args);
        Py_DECREF(args);
    }
    return -1;
#else
    (void)base;
    (void)length;
    (void)node;
    PyErr_Format(PyExc_OSError, "allocator %U: numa_node= needs Linux (mbind)",
                 alloc->name);
    return -1;
#endif
}
