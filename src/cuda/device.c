/*
 * cuda/device.c -- Buffer.device_movement(): a buffer's copies on NVIDIA
 * GPUs, with the OpenMP target-data meaning of each (action, direction)
 * pair, and device_mappings().
 *
 * In Python terms (one mapping per (buffer, device_id); `rc` is the
 * OpenMP reference count, [start, end) the bytes that are copied):
 *
 *     def device_movement(action, direction, *, device_id=0, start=0, end=None):
 *         validate(...)                  # ValueError/TypeError, no device touched
 *         require_gpu(device_id)         # DeviceUnavailableError
 *         m = mappings.get(device_id)
 *         if action == "enter":          # to, tofrom, alloc
 *             if m: m.rc += 1            # present: no copy
 *             else: m = allocate(); m.rc = 1; copy_to(m) unless "alloc"
 *         elif action == "exit":         # from, tofrom, release, delete
 *             m.rc = 0 if "delete" else m.rc - 1
 *             if m.rc == 0: copy_from(m) if from/tofrom; free(m)
 *         else:                          # update: to, from
 *             copy_to(m) or copy_from(m)
 *
 * Ownership rules
 * ---------------
 * - The device copy always spans the whole buffer (so device offsets equal
 *   host offsets); [start, end) only limits what is copied.
 * - Mappings hang off the Buffer (BufferObject.device, a struct
 *   mm_device_state) together with a strong reference to the driver
 *   capsule that made them.  mm_buffer_release_memory() frees them all, so a
 *   buffer's death or release() frees its device memory.
 * - CudaManaged memory (on any device) and CudaDevice memory (on its own
 *   device) are the device copy already: their mapping *aliases* the
 *   buffer; it allocates, copies and frees nothing, and "from" only waits
 *   for the device (cuCtxSynchronize) so the host sees kernels' writes.
 * - A mapping with live DeviceViews (or a copy in flight without the GIL)
 *   is never freed: an exit that would free it raises BufferError and
 *   changes nothing.  Each view also counts as an export of the buffer.
 * - Every copy has completed when device_movement() returns (a copy to
 *   the device is followed by a synchronisation of the legacy default
 *   stream), so consumers need no stream synchronisation.
 *
 * Layer: cuda.  May call interop/, buffer/, allocators/ and core/.
 */
#include "cuda/driver.h"

#include <limits.h>

/* Copies of at least this size run without the GIL. */
#define COPY_WITHOUT_GIL_THRESHOLD ((size_t)1 << 20)

enum { ACTION_ENTER, ACTION_EXIT, ACTION_UPDATE };
enum { DIR_TO, DIR_FROM, DIR_TOFROM, DIR_ALLOC, DIR_RELEASE, DIR_DELETE };

static const char *const action_names[] = {"enter", "exit", "update", NULL};
static const char *const direction_names[] = {
    "to", "from", "tofrom", "alloc", "release", "delete", NULL};

#define BIT(d) (1u << (d))
static const unsigned valid_directions[] = {
    [ACTION_ENTER] = BIT(DIR_TO) | BIT(DIR_TOFROM) | BIT(DIR_ALLOC),
    [ACTION_EXIT] = BIT(DIR_FROM) | BIT(DIR_TOFROM) | BIT(DIR_RELEASE) | BIT(DIR_DELETE),
    [ACTION_UPDATE] = BIT(DIR_TO) | BIT(DIR_FROM),
};

typedef struct {
    int action;
    int direction;
    int device_id;
    Py_ssize_t start;
    Py_ssize_t end;
} movement;

/* ------------------------------------------------------------------ */
/* Argument parsing (no device is touched)                             */
/* ------------------------------------------------------------------ */

static int parse_choice(PyObject *obj, const char *const *names, const char *what,
                        int *out)
{
    if (!PyUnicode_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a str, not %.100s",
                     what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    for (int i = 0; names[i] != NULL; i++) {
        if (PyUnicode_CompareWithASCIIString(obj, names[i]) == 0) {
            *out = i;
            return 0;
        }
    }
    PyErr_Format(PyExc_ValueError, "unknown %s %R: expected one of %s", what, obj,
                 names == action_names ? "enter, exit, update"
                                       : "to, from, tofrom, alloc, release, delete");
    return -1;
}

static int parse_device(PyObject *obj)
{
    if (obj == NULL) {
        return 0;
    }
    if (!PyUnicode_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "device must be a str, not %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (PyUnicode_CompareWithASCIIString(obj, "NVIDIA_GPU") != 0) {
        PyErr_Format(PyExc_ValueError,
                     "unknown device %R: the only device is 'NVIDIA_GPU'", obj);
        return -1;
    }
    return 0;
}

static int parse_integer(PyObject *obj, const char *what, Py_ssize_t *out)
{
    if (PyBool_Check(obj) || !PyIndex_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s",
                     what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    *out = PyNumber_AsSsize_t(obj, NULL);   /* clamps huge values */
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

int mm_device_parse_id(PyObject *obj, int *device_id)
{
    Py_ssize_t value = 0;
    if (obj != NULL && parse_integer(obj, "device_id", &value) < 0) {
        return -1;
    }
    if (value < 0 || value > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "device_id must be >= 0, not %zd", value);
        return -1;
    }
    *device_id = (int)value;
    return 0;
}

static int parse_bound(PyObject *obj, const char *what, Py_ssize_t default_value,
                       Py_ssize_t *out)
{
    if (obj == NULL || obj == Py_None) {
        *out = default_value;
        return 0;
    }
    return parse_integer(obj, what, out);
}

/* Everything that can be said about the arguments without a device.
 * Conversions may run Python code (__index__) that releases the buffer:
 * it is checked to be live only after them. */
static int parse_movement(BufferObject *self, PyObject *const *args,
                          Py_ssize_t nargs, PyObject *kwnames, movement *mv)
{
    static const char *const names[] = {
        "action", "direction", "device", "device_id", "start", "end", NULL};
    PyObject *v[6];
    if (mm_unpack_arguments("device_movement", args, nargs, kwnames, names, 2, v) < 0) {
        return -1;
    }
    if (v[0] == NULL || v[1] == NULL) {
        PyErr_Format(PyExc_TypeError, "device_movement() missing required argument %s",
                     v[0] == NULL ? "'action'" : "'direction'");
        return -1;
    }
    if (parse_choice(v[0], action_names, "action", &mv->action) < 0 ||
        parse_choice(v[1], direction_names, "direction", &mv->direction) < 0 ||
        parse_device(v[2]) < 0 ||
        mm_device_parse_id(v[3], &mv->device_id) < 0 ||
        parse_bound(v[4], "start", 0, &mv->start) < 0 ||
        parse_bound(v[5], "end", PY_SSIZE_T_MAX, &mv->end) < 0 ||
        mm_buffer_check_live(self) < 0) {
        return -1;
    }
    if (!(valid_directions[mv->action] & BIT(mv->direction))) {
        PyErr_Format(PyExc_ValueError, "%R with %R is not a valid pair: use enter "
                     "to/tofrom/alloc, exit from/tofrom/release/delete or "
                     "update to/from", v[0], v[1]);
        return -1;
    }
    if (v[5] == NULL || v[5] == Py_None) {
        mv->end = self->nbytes;
    }
    if (mv->start < 0 || mv->end > self->nbytes || mv->start > mv->end) {
        PyErr_Format(PyExc_ValueError, "range [%zd, %zd) is outside the buffer [0, %zd)",
                     mv->start, mv->end, self->nbytes);
        return -1;
    }
    return 0;
}

static int copies_to_host(const movement *mv)
{
    return mv->direction == DIR_FROM || mv->direction == DIR_TOFROM;
}

/* What only depends on the buffer: read-only memory cannot receive a copy
 * back, and CudaDevice memory belongs to its own device. */
static int check_buffer_allows(BufferObject *self, const movement *mv)
{
    if (self->readonly && copies_to_host(mv)) {
        PyErr_Format(PyExc_TypeError, "buffer is read-only: %s from the device "
                     "would write to it", action_names[mv->action]);
        return -1;
    }
    if (self->allocator->memory_kind == MM_MEMORY_CUDA_DEVICE &&
        !mm_device_memory_is_native(self, mv->device_id)) {
        PyErr_Format(PyExc_ValueError, "a %U buffer lives on device %d; it cannot "
                     "be mapped to device %d", self->allocator->name,
                     CUDA_ALLOCATOR_DEVICE, mv->device_id);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Mappings                                                            */
/* ------------------------------------------------------------------ */

int mm_device_memory_is_native(BufferObject *self, int device_id)
{
    switch (self->allocator->memory_kind) {
    case MM_MEMORY_CUDA_MANAGED:
        return 1;
    case MM_MEMORY_CUDA_DEVICE:
        return device_id == CUDA_ALLOCATOR_DEVICE;
    default:
        return 0;
    }
}

/* The buffer's device state (its attachment is the first member). */
static struct mm_device_state *device_state(BufferObject *self)
{
    return (struct mm_device_state *)self->device;
}

mm_device_mapping *mm_device_mapping_find(BufferObject *self, int device_id)
{
    if (self->device == NULL) {
        return NULL;
    }
    for (mm_device_mapping *m = device_state(self)->mappings; m != NULL; m = m->next) {
        if (m->device_id == device_id) {
            return m;
        }
    }
    return NULL;
}

/* The driver that made the buffer's mappings, else its CUDA allocator's,
 * else the module's current one (borrowed; NULL with an exception). */
PyObject *mm_device_driver_capsule(BufferObject *self)
{
    if (self->device != NULL) {
        return device_state(self)->driver;
    }
    if (self->allocator->device_hooks != NULL) {
        return mm_allocator_leaf(self->allocator)->keeper;
    }
    mm_state *st = mm_buffer_state(self);
    if (st != NULL && st->cuda_driver == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot use the GPU: memmanager is shutting down");
    }
    return st ? st->cuda_driver : NULL;
}

mm_cuda_driver *mm_device_driver(BufferObject *self)
{
    PyObject *capsule = mm_device_driver_capsule(self);
    return capsule ? mm_cuda_driver_of(capsule) : NULL;
}

static void free_device_state(BufferObject *self);

static int ensure_device_state(BufferObject *self, PyObject *driver)
{
    if (self->device != NULL) {
        return 0;
    }
    struct mm_device_state *state = PyMem_RawCalloc(1, sizeof(struct mm_device_state));
    if (state == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    state->attachment.free = free_device_state;
    state->driver = Py_NewRef(driver);
    self->device = &state->attachment;
    return 0;
}

static void free_device_memory(mm_cuda_driver *d, mm_device_mapping *m)
{
    if (!m->aliases_buffer && mm_cuda_enter(d, m->device_id) == CU_SUCCESS) {
        (void)d->api.mem_free(m->device_address);
        mm_cuda_leave(d);
    }
}

static void unlink_mapping(BufferObject *self, mm_device_mapping *m)
{
    mm_device_mapping **link = &device_state(self)->mappings;
    while (*link != m) {
        link = &(*link)->next;
    }
    *link = m->next;
}

/* Drops the state once the last mapping is gone (and with it the driver). */
static void drop_empty_state(BufferObject *self)
{
    if (self->device != NULL && device_state(self)->mappings == NULL) {
        struct mm_device_state *state = device_state(self);
        self->device = NULL;
        Py_DECREF(state->driver);
        PyMem_RawFree(state);
    }
}

/* The attachment's free(): the buffer's memory is going, so are its
 * device copies.  Never raises. */
static void free_device_state(BufferObject *self)
{
    struct mm_device_state *state = device_state(self);
    mm_cuda_driver *d = mm_cuda_driver_of(state->driver);
    while (state->mappings != NULL) {
        mm_device_mapping *m = state->mappings;
        state->mappings = m->next;
        assert(m->views == 0);
        if (d != NULL) {
            free_device_memory(d, m);
        }
        PyMem_RawFree(m);
    }
    if (d == NULL) {
        PyErr_Clear();
    }
    drop_empty_state(self);
}

/* ------------------------------------------------------------------ */
/* Copies                                                              */
/* ------------------------------------------------------------------ */

static cu_result run_copy(mm_cuda_driver *d, mm_device_mapping *m, char *host,
                          cu_device_ptr device, size_t size, int to_device)
{
    cu_result rc = mm_cuda_enter(d, m->device_id);
    if (rc != CU_SUCCESS) {
        return rc;
    }
    if (m->aliases_buffer) {
        /* One copy only: "from" waits for the kernels that wrote it. */
        rc = to_device ? CU_SUCCESS : d->api.ctx_synchronize();
    }
    else if (to_device) {
        rc = d->api.memcpy_htod(device, host, size);
        if (rc == CU_SUCCESS) {
            rc = d->api.stream_synchronize(NULL);
        }
    }
    else {
        rc = d->api.memcpy_dtoh(host, device, size);
    }
    mm_cuda_leave(d);
    return rc;
}

/* Copies [start, end) between the buffer and its mapping m.  While a
 * large copy (or a wait for the device) runs without the GIL, an export
 * keeps release() away from the host memory and a view count keeps exit
 * from freeing m. */
static int copy_range(mm_state *st, mm_cuda_driver *d, BufferObject *self,
                      mm_device_mapping *m, const movement *mv, int to_device)
{
    size_t size = (size_t)(mv->end - mv->start);
    char *host = self->data + mv->start;
    cu_device_ptr device = m->device_address + (cu_device_ptr)mv->start;
    cu_result rc;
    /* An aliasing mapping copies nothing; its "from" waits for kernels. */
    int without_gil = m->aliases_buffer ? !to_device
                                        : size >= COPY_WITHOUT_GIL_THRESHOLD;
    if (size == 0 && !m->aliases_buffer) {
        return 0;
    }
    if (!without_gil) {
        rc = run_copy(d, m, host, device, size, to_device);
    }
    else {
        self->exports++;
        m->views++;
        Py_BEGIN_ALLOW_THREADS
        rc = run_copy(d, m, host, device, size, to_device);
        Py_END_ALLOW_THREADS
        m->views--;
        self->exports--;
    }
    if (rc != CU_SUCCESS) {
        char what[96];
        snprintf(what, sizeof(what), "copying %zu bytes %s device %d", size,
                 to_device ? "to" : "from", m->device_id);
        mm_cuda_raise(st, d, rc, what);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* The three actions                                                   */
/* ------------------------------------------------------------------ */

static mm_device_mapping *new_mapping(mm_state *st, mm_cuda_driver *d,
                                      BufferObject *self, int device_id)
{
    mm_device_mapping *m = PyMem_RawCalloc(1, sizeof(mm_device_mapping));
    if (m == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    m->device_id = device_id;
    m->size = (size_t)self->nbytes;
    m->refcount = 1;
    if (mm_device_memory_is_native(self, device_id)) {
        m->aliases_buffer = 1;
        m->device_address = (cu_device_ptr)(uintptr_t)self->data;
        return m;
    }
    cu_result rc = mm_cuda_enter(d, device_id);
    if (rc == CU_SUCCESS) {
        rc = d->api.mem_alloc(&m->device_address, m->size);
        mm_cuda_leave(d);
    }
    if (rc != CU_SUCCESS) {
        char what[96];
        snprintf(what, sizeof(what), "allocating %zu bytes on device %d", m->size,
                 device_id);
        mm_cuda_raise(st, d, rc, what);
        PyMem_RawFree(m);
        return NULL;
    }
    return m;
}

static int enter(mm_state *st, mm_cuda_driver *d, BufferObject *self,
                 const movement *mv)
{
    mm_device_mapping *m = mm_device_mapping_find(self, mv->device_id);
    if (m != NULL) {
        m->refcount++;            /* present: OpenMP copies nothing */
        return 0;
    }
    if (ensure_device_state(self, mm_device_driver_capsule(self)) < 0) {
        return -1;
    }
    if ((m = new_mapping(st, d, self, mv->device_id)) == NULL) {
        drop_empty_state(self);
        return -1;
    }
    /* Linked before the copy, which may let other threads run: they then
     * find it present rather than mapping the device a second time. */
    m->next = device_state(self)->mappings;
    device_state(self)->mappings = m;
    if (mv->direction != DIR_ALLOC && copy_range(st, d, self, m, mv, 1) < 0) {
        /* Undo our reference; a mapping another thread took up meanwhile
         * (entered or viewed) stays for it. */
        if (m->refcount > 1 || m->views > 0) {
            m->refcount = m->refcount > 1 ? m->refcount - 1 : 1;
            return -1;
        }
        unlink_mapping(self, m);
        free_device_memory(d, m);
        PyMem_RawFree(m);
        drop_empty_state(self);
        return -1;
    }
    return 0;
}

static int refuse_if_viewed(const mm_device_mapping *m)
{
    if (m->views > 0) {
        PyErr_Format(PyExc_BufferError,
                     "cannot unmap: the copy on device %d has %zd live device "
                     "view(s)", m->device_id, m->views);
        return -1;
    }
    return 0;
}

static Py_ssize_t remaining_refcount(const mm_device_mapping *m, const movement *mv)
{
    return mv->direction == DIR_DELETE ? 0 : m->refcount - 1;
}

static int exit_mapping(mm_state *st, mm_cuda_driver *d, BufferObject *self,
                        mm_device_mapping *m, const movement *mv)
{
    if (remaining_refcount(m, mv) > 0) {
        m->refcount = remaining_refcount(m, mv);
        return 0;
    }
    if (refuse_if_viewed(m) < 0) {
        return -1;
    }
    if (copies_to_host(mv)) {
        if (copy_range(st, d, self, m, mv, 0) < 0) {
            return -1;            /* still mapped, as before */
        }
        /* Another thread may have entered or viewed it meanwhile. */
        if (remaining_refcount(m, mv) > 0) {
            m->refcount = remaining_refcount(m, mv);
            return 0;
        }
        if (refuse_if_viewed(m) < 0) {
            return -1;
        }
    }
    unlink_mapping(self, m);
    free_device_memory(d, m);
    PyMem_RawFree(m);
    drop_empty_state(self);
    return 0;
}

static mm_device_mapping *find_present(BufferObject *self, const movement *mv)
{
    mm_device_mapping *m = mm_device_mapping_find(self, mv->device_id);
    if (m == NULL) {
        PyErr_Format(PyExc_ValueError,
                     "%s: the buffer is not mapped to device %d (device_movement"
                     "('enter', ...) maps it)", action_names[mv->action], mv->device_id);
    }
    return m;
}

static int perform(mm_state *st, mm_cuda_driver *d, BufferObject *self,
                   const movement *mv)
{
    if (mv->action == ACTION_ENTER) {
        return enter(st, d, self, mv);
    }
    mm_device_mapping *m = find_present(self, mv);
    if (m == NULL) {
        return -1;
    }
    if (mv->action == ACTION_EXIT) {
        return exit_mapping(st, d, self, m, mv);
    }
    return copy_range(st, d, self, m, mv, mv->direction == DIR_TO);
}

/* ------------------------------------------------------------------ */
/* The methods                                                         */
/* ------------------------------------------------------------------ */

PyObject *mm_buffer_device_movement(PyObject *op, PyObject *const *args,
                                 Py_ssize_t nargs, PyObject *kwnames)
{
    BufferObject *self = (BufferObject *)op;
    movement mv;
    mm_state *st = mm_buffer_state(self);
    if (st == NULL || parse_movement(self, args, nargs, kwnames, &mv) < 0 ||
        check_buffer_allows(self, &mv) < 0) {
        return NULL;
    }
    mm_cuda_driver *d = mm_device_driver(self);
    if (d == NULL || mm_cuda_driver_require(st, d, mv.device_id) < 0 ||
        perform(st, d, self, &mv) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *mapping_info(const mm_device_mapping *m)
{
    return Py_BuildValue("{s:K,s:n,s:n,s:n}",
                         "device_address", (unsigned long long)m->device_address,
                         "nbytes", (Py_ssize_t)m->size,
                         "refcount", m->refcount,
                         "views", m->views);
}

PyObject *mm_buffer_device_mappings(PyObject *op, PyObject *Py_UNUSED(unused))
{
    BufferObject *self = (BufferObject *)op;
    if (mm_buffer_check_live(self) < 0) {
        return NULL;
    }
    PyObject *result = PyDict_New();
    if (result == NULL || self->device == NULL) {
        return result;
    }
    for (mm_device_mapping *m = device_state(self)->mappings; m != NULL; m = m->next) {
        PyObject *key = PyLong_FromLong(m->device_id);
        PyObject *info = key ? mapping_info(m) : NULL;
        int rc = info ? PyDict_SetItem(result, key, info) : -1;
        Py_XDECREF(key);
        Py_XDECREF(info);
        if (rc < 0) {
            Py_DECREF(result);
            return NULL;
        }
    }
    return result;
}
