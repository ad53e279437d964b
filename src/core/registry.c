/*
 * core/registry.c -- the process-wide live-region registry (see the
 * header for the idea).  The only mutable C globals of the extension live
 * here, behind `registry_lock`.
 *
 * Treap: a binary search tree on `start` that is also a max-heap on
 * `priority`.  Priorities are a 64-bit mix of a counter, so the tree's
 * shape does not depend on the addresses the allocators hand out and its
 * depth is O(log n) with high probability.  split/merge are iterative.
 *
 * Lock: a spinlock (one atomic exchange to take, one release store to
 * give back).  Critical sections are a few dozen instructions and never
 * block, so spinning beats a mutex here: an uncontended pass costs less
 * than pthread_mutex_lock + unlock on the create/destroy path.
 * A waiter yields the CPU after a short spin.
 *
 * Every caller holds the GIL, except code that has said, through
 * mm_region_registry_use_without_gil() (with the GIL held), that it will
 * come without it.  Until something has, the GIL alone keeps callers out
 * of each other's way, and the lock is not taken: its atomic exchanges,
 * two per buffer created and destroyed, would be a visible share of the
 * hot path (docs/benchmarks.md has the measurement).  From the first such
 * call on, every caller takes the lock.
 * The flag only ever goes from 0 to 1, and it is set under the GIL, so no
 * caller is inside the registry at that moment and every later GIL holder
 * sees it.  (A build without the GIL locks from the start.)
 *
 * Fork: the lock is taken before fork() and released in both parent and
 * child, so a child can allocate even if another thread of the parent was
 * inside the registry when fork() happened.
 *
 * Layer: core.  Calls the C API only.
 */
#include "core/compat.h"

#include <pthread.h>
#include <sched.h>
#include <assert.h>
#include <string.h>
#include <limits.h>

#include "core/registry.h"

#if defined(__GNUC__)
#define MM_REGISTRY_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define MM_REGISTRY_UNLIKELY(x) (x)
#endif

static int registry_lock = 0;
#ifdef Py_GIL_DISABLED
static int registry_locking = 1;
#else
static int registry_locking = 0;    /* see the top of the file */
#endif
static pthread_once_t registry_once = PTHREAD_ONCE_INIT;
static int registry_fork_handlers_ok = 0;

static region_node *tree_root = NULL;      /* owned regions */
static ptrdiff_t tree_size = 0;
static region_node *shared_root = NULL;    /* non-owning regions */
static ptrdiff_t shared_size = 0;
static uint64_t priority_counter = 0;

/* The counters of each allocator name, in a table that grows with the
 * names (nothing but memory limits them), and an open-addressing index
 * over the names: slot + 1, or 0 for an empty entry.  A node refers to
 * its slot by index, so the table may move when it grows (under the
 * lock, like every access).  Names and slots are never freed. */
typedef struct {
    char *name;                 /* NUL-terminated copy */
    size_t length;
    uint64_t hash;
    region_stats stats;
} stats_slot_entry;

static stats_slot_entry *stats_slots = NULL;
static int stats_slot_count = 0;
static int stats_slot_capacity = 0;
static int *stats_index = NULL;
static size_t stats_index_size = 0;     /* a power of two, or 0 */
static region_stats stats_total;

/* ------------------------------------------------------------------ */
/* Lock and fork handling                                              */
/* ------------------------------------------------------------------ */

static void take_spinlock(void)
{
    unsigned spins = 0;
    while (__atomic_exchange_n(&registry_lock, 1, __ATOMIC_ACQUIRE) != 0) {
        while (__atomic_load_n(&registry_lock, __ATOMIC_RELAXED) != 0) {
            if (++spins % 64 == 0) {
                sched_yield();
            }
        }
    }
}

static void give_back_spinlock(void)
{
    __atomic_store_n(&registry_lock, 0, __ATOMIC_RELEASE);
}

/* Whether the lock is taken is decided once per critical section, and the
 * flag cannot change inside one (it is set under the GIL).  Debug builds
 * check that a caller who skips the lock holds the GIL. */
static int lock_registry(void)
{
    int locking = __atomic_load_n(&registry_locking, __ATOMIC_ACQUIRE);
    assert(locking || mm_thread_state_unchecked() != NULL);
    if (locking) {
        take_spinlock();
    }
    return locking;
}

int mm_region_registry_locking(void)
{
    return __atomic_load_n(&registry_locking, __ATOMIC_ACQUIRE);
}

static void unlock_registry(int locked)
{
    if (locked) {
        give_back_spinlock();
    }
}

void mm_region_registry_use_without_gil(void)
{
    __atomic_store_n(&registry_locking, 1, __ATOMIC_RELEASE);
}

/* fork() takes the spinlock whatever the flag says: a thread without the
 * GIL may fork while another is inside the registry. */
static void install_fork_handlers(void)
{
    registry_fork_handlers_ok =
        pthread_atfork(take_spinlock, give_back_spinlock, give_back_spinlock) == 0;
}

int mm_region_registry_init(void)
{
    pthread_once(&registry_once, install_fork_handlers);
    return registry_fork_handlers_ok ? 0 : -1;
}

/* ------------------------------------------------------------------ */
/* Treap primitives (callers hold the lock)                            */
/* ------------------------------------------------------------------ */

static uint64_t next_priority(void)
{
    /* splitmix64 of a counter: cheap, well mixed, deterministic. */
    uint64_t z = (priority_counter += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Splits t into nodes with start < key (*less) and the rest (*rest); the
 * roots of both halves get `parent`.  Along the way it sees the greatest
 * start below key (*below) and the smallest start at or above it
 * (*above), when they are in t. */
static void split(region_node *t, uintptr_t key, region_node *parent,
                  region_node **less, region_node **rest,
                  region_node **below, region_node **above)
{
    region_node *less_parent = parent, *rest_parent = parent;
    while (t != NULL) {
        if (t->start < key) {
            *below = t;
            *less = t;
            t->parent = less_parent;
            less_parent = t;
            less = &t->right;
            t = t->right;
        }
        else {
            *above = t;
            *rest = t;
            t->parent = rest_parent;
            rest_parent = t;
            rest = &t->left;
            t = t->left;
        }
    }
    *less = NULL;
    *rest = NULL;
}

/* Joins two treaps where every start in a is below every start in b; the
 * root of the result gets `parent`.  *deepest (when not NULL) receives the
 * last node linked on the spine, or `parent`: the lowest node whose
 * subtree changed (the shared treap fixes its max_end from there up). */
static region_node *merge_to(region_node *a, region_node *b, region_node *parent,
                             region_node **deepest)
{
    region_node *root = NULL;
    region_node **link = &root;
    while (a != NULL && b != NULL) {
        if (a->priority > b->priority) {
            *link = a;
            a->parent = parent;
            parent = a;
            link = &a->right;
            a = a->right;
        }
        else {
            *link = b;
            b->parent = parent;
            parent = b;
            link = &b->left;
            b = b->left;
        }
    }
    *link = (a != NULL) ? a : b;
    if (*link != NULL) {
        (*link)->parent = parent;
    }
    if (deepest != NULL) {
        *deepest = parent;
    }
    return root;
}

static region_node *merge(region_node *a, region_node *b, region_node *parent)
{
    return merge_to(a, b, parent, NULL);
}

/* The live region with the greatest start below `end`, if it reaches
 * past `start`: the only candidate for an overlap with [start, end). */
static region_node *tree_find_overlap(uintptr_t start, uintptr_t end)
{
    region_node *t = tree_root;
    region_node *below = NULL;
    while (t != NULL) {
        if (t->start < end) {
            below = t;
            t = t->right;
        }
        else {
            t = t->left;
        }
    }
    return (below != NULL && below->end > start) ? below : NULL;
}

/* One descent: find the node's place by priority, split what hangs there
 * by start, and check the two neighbours met on the way (the only regions
 * that can overlap).  On overlap the split is undone and the neighbour in
 * the way is returned; otherwise the node is linked in and NULL returned. */
static region_node *tree_insert_unless_overlap(region_node *node)
{
    region_node **link = &tree_root;
    region_node *parent = NULL;
    region_node *below = NULL, *above = NULL, *less, *rest;
    while (*link != NULL && (*link)->priority >= node->priority) {
        parent = *link;
        if (node->start < parent->start) {
            above = parent;
            link = &parent->left;
        }
        else {
            below = parent;
            link = &parent->right;
        }
    }
    split(*link, node->start, node, &less, &rest, &below, &above);
    region_node *in_the_way =
        (below != NULL && below->end > node->start) ? below :
        (above != NULL && above->start < node->end) ? above : NULL;
    if (in_the_way != NULL) {
        *link = merge(less, rest, parent);
        return in_the_way;
    }
    node->left = less;
    node->right = rest;
    node->parent = parent;
    *link = node;
    tree_size++;
    return NULL;
}

/* O(1) expected: the parent pointer finds the link, and merging a random
 * node's two subtrees walks two spines of expected constant length. */
static void tree_remove(region_node *node)
{
    region_node *parent = node->parent;
    region_node **link = parent == NULL ? &tree_root
                       : parent->left == node ? &parent->left : &parent->right;
    *link = merge(node->left, node->right, parent);
    node->left = node->right = node->parent = NULL;
    tree_size--;
}

/* ------------------------------------------------------------------ */
/* The non-owning tree: an interval treap (callers hold the lock)      */
/* ------------------------------------------------------------------ */

/* Regions here may overlap and even be equal, so the order is (start,
 * node address): a total order, whatever the ranges. */
static int shared_before(const region_node *a, const region_node *b)
{
    return a->start < b->start ||
           (a->start == b->start && (uintptr_t)a < (uintptr_t)b);
}

static uintptr_t max_end_of(const region_node *t)
{
    return t == NULL ? 0 : t->max_end;
}

static void shared_fix(region_node *t)
{
    uintptr_t m = t->end;
    if (max_end_of(t->left) > m) {
        m = t->left->max_end;
    }
    if (max_end_of(t->right) > m) {
        m = t->right->max_end;
    }
    t->max_end = m;
}

/* Recomputes max_end from t up to (and without) `stop`. */
static void shared_fix_up(region_node *t, const region_node *stop)
{
    for (; t != NULL && t != stop; t = t->parent) {
        shared_fix(t);
    }
}

/* Splits t into the nodes ordered before `key` and the rest, both rooted
 * under `key` (which is not in t), and fixes max_end along both spines. */
static void shared_split(region_node *t, region_node *key,
                         region_node **less, region_node **rest)
{
    region_node *less_parent = key, *rest_parent = key;
    while (t != NULL) {
        if (shared_before(t, key)) {
            *less = t;
            t->parent = less_parent;
            less_parent = t;
            less = &t->right;
            t = t->right;
        }
        else {
            *rest = t;
            t->parent = rest_parent;
            rest_parent = t;
            rest = &t->left;
            t = t->left;
        }
    }
    *less = NULL;
    *rest = NULL;
    shared_fix_up(less_parent, key);
    shared_fix_up(rest_parent, key);
}

static void shared_insert(region_node *node)
{
    region_node **link = &shared_root;
    region_node *parent = NULL;
    while (*link != NULL && (*link)->priority >= node->priority) {
        parent = *link;
        if (node->end > parent->max_end) {
            parent->max_end = node->end;   /* node ends up below it */
        }
        link = shared_before(node, parent) ? &parent->left : &parent->right;
    }
    shared_split(*link, node, &node->left, &node->right);
    node->parent = parent;
    shared_fix(node);
    *link = node;
    shared_size++;
}

static void shared_remove(region_node *node)
{
    region_node *parent = node->parent;
    region_node **link = parent == NULL ? &shared_root
                       : parent->left == node ? &parent->left : &parent->right;
    /* max_end is fixed from the deepest node merge linked up to the root. */
    region_node *deepest;
    *link = merge_to(node->left, node->right, parent, &deepest);
    shared_fix_up(deepest, NULL);
    node->left = node->right = node->parent = NULL;
    shared_size--;
}

/* Any non-owning region overlapping [start, end), or NULL.  Going left
 * whenever something on the left reaches past start is enough: if nothing
 * there also starts before end, nothing on the right (which starts later)
 * does either. */
static region_node *shared_find_overlap(uintptr_t start, uintptr_t end)
{
    region_node *t = shared_root;
    while (t != NULL) {
        if (t->start < end && t->end > start) {
            return t;
        }
        t = (t->left != NULL && t->left->max_end > start) ? t->left : t->right;
    }
    return NULL;
}

static void describe(const region_node *node, region_info *info)
{
    info->start = node->start;
    info->end = node->end;
    info->owner_id = node->owner_id;
}

/* ------------------------------------------------------------------ */
/* Statistics (callers hold the lock)                                  */
/* ------------------------------------------------------------------ */

static void stats_add(region_stats *s, uint64_t nbytes)
{
    s->live_buffers++;
    s->live_bytes += nbytes;
    s->allocations++;
    s->allocated_bytes += nbytes;
    if (s->live_bytes > s->peak_bytes) {
        s->peak_bytes = s->live_bytes;
    }
}

static void stats_sub(region_stats *s, uint64_t nbytes)
{
    s->live_buffers--;
    s->live_bytes -= nbytes;
}

/* An array counts as a block in the five counters, and apart. */
static void stats_add_array(region_stats *s, uint64_t nbytes)
{
    stats_add(s, nbytes);
    s->live_arrays++;
    s->live_array_bytes += nbytes;
    s->array_allocations++;
    s->array_allocated_bytes += nbytes;
}

static void stats_sub_array(region_stats *s, uint64_t nbytes)
{
    stats_sub(s, nbytes);
    s->live_arrays--;
    s->live_array_bytes -= nbytes;
}

/* ------------------------------------------------------------------ */
/* Public operations                                                   */
/* ------------------------------------------------------------------ */

void mm_region_registry_count_array(int stats_slot, size_t nbytes)
{
    int locked = lock_registry();
    stats_add_array(&stats_slots[stats_slot].stats, nbytes);
    stats_add_array(&stats_total, nbytes);
    unlock_registry(locked);
}

void mm_region_registry_uncount_array(int stats_slot, size_t nbytes)
{
    int locked = lock_registry();
    stats_sub_array(&stats_slots[stats_slot].stats, nbytes);
    stats_sub_array(&stats_total, nbytes);
    unlock_registry(locked);
}

int mm_region_registry_insert(region_node *node, uintptr_t start, uintptr_t end,
                           uint64_t owner_id, int stats_slot,
                           region_info *conflict)
{
    node->start = start;
    node->end = end;
    node->owner_id = owner_id;
    node->stats_slot = stats_slot;
    node->shared = 0;
    int locked = lock_registry();
    node->priority = next_priority();
    region_node *other = tree_insert_unless_overlap(node);
    if (other != NULL) {
        describe(other, conflict);
        unlock_registry(locked);
        return 1;
    }
    node->linked = 1;
    stats_add(&stats_slots[stats_slot].stats, end - start);
    stats_add(&stats_total, end - start);
    unlock_registry(locked);
    return 0;
}

int mm_region_registry_insert_shared(region_node *node, uintptr_t start,
                                  uintptr_t end, uint64_t owner_id,
                                  int stats_slot, const region_node *exporter,
                                  region_info *conflict)
{
    node->start = start;
    node->end = end;
    node->owner_id = owner_id;
    node->stats_slot = stats_slot;
    node->shared = 1;
    node->left = node->right = node->parent = NULL;
    int locked = lock_registry();
    /* The owned region reaching into [start, end) with the greatest start;
     * when that is the exporter, the only others can be before it. */
    region_node *other = tree_find_overlap(start, end);
    if (other != NULL && other == exporter && exporter->linked && !exporter->shared) {
        other = tree_find_overlap(start, exporter->start);
    }
    if (other != NULL) {
        describe(other, conflict);
        unlock_registry(locked);
        return 1;
    }
    node->priority = next_priority();
    shared_insert(node);
    node->linked = 1;
    stats_add(&stats_slots[stats_slot].stats, end - start);
    stats_add(&stats_total, end - start);
    unlock_registry(locked);
    return 0;
}

void mm_region_registry_remove(region_node *node)
{
    int locked = lock_registry();
    if (node->linked) {
        if (MM_REGISTRY_UNLIKELY(node->shared)) {
            shared_remove(node);
        }
        else {
            tree_remove(node);
        }
        node->linked = 0;
        stats_sub(&stats_slots[node->stats_slot].stats, node->end - node->start);
        stats_sub(&stats_total, node->end - node->start);
    }
    unlock_registry(locked);
}

int mm_region_registry_find_overlap(uintptr_t start, uintptr_t end,
                                 region_info *conflict)
{
    int locked = lock_registry();
    region_node *other = tree_find_overlap(start, end);
    if (other != NULL) {
        describe(other, conflict);
    }
    unlock_registry(locked);
    return other != NULL;
}

int mm_region_registry_find_any_overlap(uintptr_t start, uintptr_t end,
                                     region_info *conflict)
{
    int locked = lock_registry();
    region_node *other = tree_find_overlap(start, end);
    if (other == NULL) {
        other = shared_find_overlap(start, end);
    }
    if (other != NULL) {
        describe(other, conflict);
    }
    unlock_registry(locked);
    return other != NULL;
}

/* FNV-1a: names are short, and registering one is rare. */
static uint64_t name_hash(const char *name, size_t length)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < length; i++) {
        h = (h ^ (unsigned char)name[i]) * 0x100000001b3ull;
    }
    return h;
}

/* The index entry where name is, or the empty one where it would go. */
static size_t index_probe(const int *index, size_t size, const char *name,
                          size_t length, uint64_t hash)
{
    size_t mask = size - 1;
    size_t at = (size_t)hash & mask;
    while (index[at] != 0) {
        const stats_slot_entry *e = &stats_slots[index[at] - 1];
        if (e->hash == hash && e->length == length &&
            memcmp(e->name, name, length) == 0) {
            break;
        }
        at = (at + 1) & mask;
    }
    return at;
}

/* Room for one more name: the table and (kept at most half full) the
 * index.  -1 when out of memory, with nothing changed. */
static int stats_reserve(void)
{
    if (stats_slot_count == INT_MAX - 1) {
        return -1;
    }
    if (stats_slot_count == stats_slot_capacity) {
        int capacity = stats_slot_capacity < 16 ? 16
                     : stats_slot_capacity > INT_MAX / 2 ? INT_MAX - 1
                     : stats_slot_capacity * 2;
        stats_slot_entry *grown = PyMem_RawRealloc(
            stats_slots, sizeof(stats_slot_entry) * (size_t)capacity);
        if (grown == NULL) {
            return -1;
        }
        stats_slots = grown;
        stats_slot_capacity = capacity;
    }
    if ((size_t)(stats_slot_count + 1) * 2 > stats_index_size) {
        size_t size = stats_index_size < 32 ? 32 : stats_index_size * 2;
        if (size > SIZE_MAX / sizeof(int)) {
            return -1;
        }
        int *index = PyMem_RawCalloc(size, sizeof(int));
        if (index == NULL) {
            return -1;
        }
        for (int i = 0; i < stats_slot_count; i++) {
            const stats_slot_entry *e = &stats_slots[i];
            index[index_probe(index, size, e->name, e->length, e->hash)] = i + 1;
        }
        PyMem_RawFree(stats_index);
        stats_index = index;
        stats_index_size = size;
    }
    return 0;
}

int mm_region_registry_stats_slot(const char *name, size_t length)
{
    int slot = -1;
    uint64_t hash = name_hash(name, length);
    int locked = lock_registry();
    size_t at = 0;
    if (stats_index_size > 0) {
        at = index_probe(stats_index, stats_index_size, name, length, hash);
        slot = stats_index[at] - 1;
    }
    if (slot < 0 && length < SIZE_MAX && stats_reserve() == 0) {
        char *copy = PyMem_RawMalloc(length + 1);
        if (copy != NULL) {
            memcpy(copy, name, length);
            copy[length] = '\0';
            slot = stats_slot_count++;
            stats_slot_entry *e = &stats_slots[slot];
            e->name = copy;
            e->length = length;
            e->hash = hash;
            memset(&e->stats, 0, sizeof(e->stats));
            /* the index may have been rebuilt: probe again */
            at = index_probe(stats_index, stats_index_size, name, length, hash);
            stats_index[at] = slot + 1;
        }
    }
    unlock_registry(locked);
    return slot;
}

region_named_stats *mm_region_registry_stats(ptrdiff_t *count, region_stats *total)
{
    region_named_stats *out = NULL;
    ptrdiff_t written = 0;
    int locked = lock_registry();
    *total = stats_total;
    if (stats_slot_count > 0) {
        out = PyMem_RawMalloc(sizeof(region_named_stats) * (size_t)stats_slot_count);
        if (out == NULL) {
            written = -1;
        }
    }
    for (int i = 0; out != NULL && i < stats_slot_count; i++) {
        if (stats_slots[i].stats.allocations == 0) {
            continue;   /* registered but never used */
        }
        out[written].name = stats_slots[i].name;
        out[written].stats = stats_slots[i].stats;
        written++;
    }
    unlock_registry(locked);
    *count = written;
    if (written == 0) {
        PyMem_RawFree(out);
        out = NULL;
    }
    return out;
}

static void collect_nodes(region_node *t, region_node **out, ptrdiff_t *n)
{
    while (t != NULL) {
        collect_nodes(t->left, out, n);
        out[(*n)++] = t;
        t = t->right;
    }
}

region_node **mm_region_registry_nodes(ptrdiff_t *count)
{
    int locked = lock_registry();
    region_node **nodes = NULL;
    *count = 0;
    if (tree_size + shared_size > 0) {
        nodes = PyMem_RawMalloc(sizeof(region_node *) *
                                (size_t)(tree_size + shared_size));
        if (nodes == NULL) {
            *count = -1;
        }
        else {
            collect_nodes(tree_root, nodes, count);
            collect_nodes(shared_root, nodes, count);
        }
    }
    unlock_registry(locked);
    return nodes;
}

/* In-order walk checking order, disjointness, heap order; counts nodes. */
static int check_subtree(const region_node *t, uintptr_t *last_end,
                         ptrdiff_t *count, const char **why)
{
    if (t == NULL) {
        return 0;
    }
    if ((t->left && t->left->priority > t->priority) ||
        (t->right && t->right->priority > t->priority)) {
        *why = "heap order violated";
        return -1;
    }
    if ((t->left && t->left->parent != t) || (t->right && t->right->parent != t)) {
        *why = "parent pointer does not match";
        return -1;
    }
    if (check_subtree(t->left, last_end, count, why) < 0) {
        return -1;
    }
    if (t->start >= t->end) {
        *why = "empty or inverted region";
        return -1;
    }
    if (t->start < *last_end) {
        *why = "regions out of order or overlapping";
        return -1;
    }
    if (!t->linked || t->shared) {
        *why = "node in the owned tree not marked linked and owned";
        return -1;
    }
    *last_end = t->end;
    (*count)++;
    return check_subtree(t->right, last_end, count, why);
}

/* The same for the shared tree: order by (start, node), heap order,
 * parent links and max_end; regions may overlap. */
static int check_shared(const region_node *t, const region_node **last,
                        ptrdiff_t *count, const char **why)
{
    if (t == NULL) {
        return 0;
    }
    if ((t->left && t->left->priority > t->priority) ||
        (t->right && t->right->priority > t->priority)) {
        *why = "shared tree: heap order violated";
        return -1;
    }
    if ((t->left && t->left->parent != t) || (t->right && t->right->parent != t)) {
        *why = "shared tree: parent pointer does not match";
        return -1;
    }
    if (check_shared(t->left, last, count, why) < 0) {
        return -1;
    }
    if (t->start >= t->end || !t->linked || !t->shared) {
        *why = "shared tree: empty region or node not marked linked and shared";
        return -1;
    }
    if (*last != NULL && !shared_before(*last, t)) {
        *why = "shared tree: regions out of order";
        return -1;
    }
    uintptr_t m = t->end;
    if (max_end_of(t->left) > m) {
        m = t->left->max_end;
    }
    if (max_end_of(t->right) > m) {
        m = t->right->max_end;
    }
    if (t->max_end != m) {
        *why = "shared tree: max_end is stale";
        return -1;
    }
    *last = t;
    (*count)++;
    return check_shared(t->right, last, count, why);
}

ptrdiff_t mm_region_registry_check(const char **why)
{
    uintptr_t last_end = 0;
    ptrdiff_t count = 0, shared_count = 0;
    const region_node *last = NULL;
    int locked = lock_registry();
    int rc = 0;
    if ((tree_root != NULL && tree_root->parent != NULL) ||
        (shared_root != NULL && shared_root->parent != NULL)) {
        *why = "the root has a parent";
        rc = -1;
    }
    if (rc == 0) {
        rc = check_subtree(tree_root, &last_end, &count, why);
    }
    if (rc == 0) {
        rc = check_shared(shared_root, &last, &shared_count, why);
    }
    if (rc == 0 && (count != tree_size || shared_count != shared_size)) {
        *why = "node count does not match the tree size";
        rc = -1;
    }
    if (rc == 0 && (ptrdiff_t)(stats_total.live_buffers - stats_total.live_arrays) !=
                   tree_size + shared_size) {
        *why = "total live_buffers does not match the tree size";
        rc = -1;
    }
    unlock_registry(locked);
    return rc < 0 ? -1 : count + shared_count;
}
