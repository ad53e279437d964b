/*
 * buffer/args.c -- turning what Python passed into C values, for the
 * Buffer constructor and consume():
 *
 *   Buffer(num_items, item_size, options=None, /, *, allocator=...,
 *          init_value=..., delayed_gc=..., death_stub=..., **allocator_options)
 *
 * The options mapping and the keywords carry the same keys; a keyword
 * wins over the mapping.  Keys the constructor does not know are gathered
 * into one dict for the allocator.  The caller's mapping is only read.
 *
 * Everything here validates and raises; nothing allocates buffer memory.
 *
 * Layer: buffer.  May call allocators/ and core/.
 */
#include "buffer/buffer.h"

#include <string.h>

int mm_parse_sizes(PyObject *n_obj, PyObject *s_obj, buffer_args *a)
{
    if ((!mm_positive_int(n_obj, &a->num_items) &&
         mm_parse_size(n_obj, "num_items", &a->num_items) < 0) ||
        (!mm_positive_int(s_obj, &a->item_size) &&
         mm_parse_size(s_obj, "item_size", &a->item_size) < 0)) {
        return -1;
    }
    Py_ssize_t nbytes;
    if (mm_mul_overflow(a->num_items, a->item_size, &nbytes)) {
        PyErr_Format(PyExc_OverflowError,
                     "num_items * item_size (%zd * %zd) does not fit in memory sizes",
                     a->num_items, a->item_size);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* init_value                                                          */
/* ------------------------------------------------------------------ */

static int is_zero_word(PyObject *s)
{
    static const char word[] = "zero";
    if (PyUnicode_GET_LENGTH(s) != 4) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < 4; i++) {
        Py_UCS4 c = PyUnicode_READ_CHAR(s, i);
        if (c >= 128 || (char)(c | 0x20) != word[i]) {
            return 0;
        }
    }
    return 1;
}

/* ASCII decimal digits naming 0..255: 1 and *value; not all digits: 0;
 * digits naming a larger number: -1 with ValueError. */
static int parse_decimal_byte(PyObject *s, int *value)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    long acc = 0;
    if (n == 0) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ_CHAR(s, i);
        if (c < '0' || c > '9') {
            return 0;
        }
        if (acc <= 255) {
            acc = acc * 10 + (long)(c - '0');
        }
    }
    if (acc > 255) {
        PyErr_Format(PyExc_ValueError,
                     "init_value %R is outside 0..255", s);
        return -1;
    }
    *value = (int)acc;
    return 1;
}

static int parse_init_str(PyObject *value, int *init_byte)
{
    if (is_zero_word(value)) {
        *init_byte = 0;
        return 0;
    }
    int rc = parse_decimal_byte(value, init_byte);
    if (rc != 0) {
        return rc < 0 ? -1 : 0;
    }
    if (PyUnicode_GET_LENGTH(value) == 1 && PyUnicode_READ_CHAR(value, 0) < 256) {
        *init_byte = (int)PyUnicode_READ_CHAR(value, 0);
        return 0;
    }
    PyErr_Format(PyExc_ValueError,
                 "init_value %R is not 'zero', a number 0..255 or one "
                 "character below U+0100", value);
    return -1;
}

int mm_parse_init_value(PyObject *value, int *init_byte)
{
    *init_byte = MM_INIT_UNINITIALISED;
    if (value == NULL || value == Py_None) {
        return 0;
    }
    if (PyBool_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "init_value must not be a bool");
        return -1;
    }
    if (PyLong_Check(value)) {
        int overflow = 0;
        long v = PyLong_AsLongAndOverflow(value, &overflow);
        if (overflow != 0 || v < 0 || v > 255) {
            PyErr_Format(PyExc_ValueError,
                         "init_value %R is outside 0..255", value);
            return -1;
        }
        *init_byte = (int)v;
        return 0;
    }
    if (PyBytes_Check(value)) {
        if (PyBytes_GET_SIZE(value) != 1) {
            PyErr_Format(PyExc_ValueError,
                         "init_value bytes must be exactly one byte, got %zd",
                         PyBytes_GET_SIZE(value));
            return -1;
        }
        *init_byte = (unsigned char)PyBytes_AS_STRING(value)[0];
        return 0;
    }
    if (PyUnicode_Check(value)) {
        return parse_init_str(value, init_byte);
    }
    PyErr_Format(PyExc_TypeError,
                 "init_value must be None, 'zero', an int 0..255, one byte "
                 "or one character, not %.100s", Py_TYPE(value)->tp_name);
    return -1;
}

/* ------------------------------------------------------------------ */
/* The options mapping and keywords                                    */
/* ------------------------------------------------------------------ */

/* Known option names: where the interned name lives in the module state,
 * and which field of buffer_args receives the value.  The first four are
 * the constructor's; the rest are consume()'s. */
static const struct {
    size_t name_offset;
    size_t slot_offset;
} known_options[] = {
    {offsetof(mm_state, str_allocator), offsetof(buffer_args, allocator)},
    {offsetof(mm_state, str_init_value), offsetof(buffer_args, init_value)},
    {offsetof(mm_state, str_delayed_gc), offsetof(buffer_args, delayed_gc)},
    {offsetof(mm_state, str_death_stub), offsetof(buffer_args, death_stub)},
    {offsetof(mm_state, str_copy), offsetof(buffer_args, copy)},
    {offsetof(mm_state, str_readonly), offsetof(buffer_args, readonly)},
    {offsetof(mm_state, str_owner), offsetof(buffer_args, owner)},
};
#define CONSTRUCTOR_OPTION_COUNT 4
#define CONSUME_OPTION_COUNT (sizeof(known_options) / sizeof(known_options[0]))

static PyObject *known_name(mm_state *st, size_t i)
{
    return *(PyObject **)((char *)st + known_options[i].name_offset);
}

/* The index in known_options of a str key; -1: not a known name, so an
 * allocator option.  Keyword names are interned, so the identity test
 * almost always decides; equal but distinct strings (from a mapping built
 * at run time) take the slower comparison, which runs no Python code. */
static int known_index(mm_state *st, PyObject *key, int consume_keys)
{
    int count = consume_keys ? (int)CONSUME_OPTION_COUNT : CONSTRUCTOR_OPTION_COUNT;
    for (int i = 0; i < count; i++) {
        if (key == known_name(st, (size_t)i)) {
            return i;
        }
    }
    for (int i = 0; i < count; i++) {
        if (PyUnicode_Compare(key, known_name(st, (size_t)i)) == 0) {
            return i;
        }
    }
    return -1;
}

/* Stores value under the option known_options[index] (a new reference:
 * the value must stay whatever Python code runs later, and the mapping it
 * came from may be emptied meanwhile), or, for index -1, under key in the
 * allocator options.  Dropping a value the keywords override may run its
 * destructor; nothing is borrowed then, so that is harmless. */
static int store_option(buffer_args *a, int index, PyObject *key, PyObject *value)
{
    if (index >= 0) {
        PyObject **slot = (PyObject **)((char *)a + known_options[index].slot_offset);
        Py_XSETREF(*slot, Py_NewRef(value));
        return 0;
    }
    if (a->extra == NULL && (a->extra = PyDict_New()) == NULL) {
        return -1;
    }
    /* An exact str key: no __hash__ or __eq__ of the caller's runs in the
     * dict.  The dict is private (plug-ins get a copy) and kept out of
     * gc.get_objects(): kinds borrow values from it (SharedMemory's name)
     * while Python code (a flag's __bool__) runs. */
    PyObject *exact = PyUnicode_FromObject(key);
    if (exact == NULL) {
        return -1;
    }
    int rc = PyDict_SetItem(a->extra, exact, value);
    Py_DECREF(exact);
    PyObject_GC_UnTrack(a->extra);
    return rc;
}

static int assign_option(mm_state *st, buffer_args *a, PyObject *key,
                         PyObject *value, int consume_keys)
{
    if (!PyUnicode_Check(key)) {
        PyErr_Format(PyExc_TypeError, "option names must be str, not %.100s",
                     Py_TYPE(key)->tp_name);
        return -1;
    }
    return store_option(a, known_index(st, key, consume_keys), key, value);
}

/* 1 when kwnames holds the very str objects of the cached tuple, in
 * order: a call through a **kwargs dict (f(*args, **kwargs), functools.
 * partial) makes a new tuple each time, of the same interned names. */
static int same_names(PyObject *kwnames, PyObject *cached, Py_ssize_t n)
{
    if (cached == NULL || PyTuple_GET_SIZE(cached) != n) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyTuple_GET_ITEM(kwnames, i) != PyTuple_GET_ITEM(cached, i)) {
            return 0;
        }
    }
    return 1;
}

/* The known_options index of each keyword name, into out: from the cache
 * when kwnames is the tuple seen last, else worked out and remembered.
 * 0: out is filled; -1: kwnames is not cacheable (too many names, or one
 * that is not an exact str), and the caller assigns name by name.  Only
 * tuples of exact strs are kept, so dropping one runs no Python code. */
static int kwnames_options(mm_state *st, PyObject *kwnames, int consume_keys,
                           signed char *out)
{
    mm_kwnames_cache *cache = &st->kwnames_cache[consume_keys];
    Py_ssize_t n = PyTuple_GET_SIZE(kwnames);
    if (kwnames == cache->names || same_names(kwnames, cache->names, n)) {
        memcpy(out, cache->option, MM_KWNAMES_CACHED);   /* one 8-byte move */
        return 0;
    }
    if (n > MM_KWNAMES_CACHED) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        if (!PyUnicode_CheckExact(key)) {
            return -1;
        }
        out[i] = (signed char)known_index(st, key, consume_keys);
    }
    memcpy(cache->option, out, (size_t)n);
    Py_XSETREF(cache->names, Py_NewRef(kwnames));
    return 0;
}

void mm_buffer_args_forget_kwnames(mm_state *st)
{
    Py_CLEAR(st->kwnames_cache[0].names);
    Py_CLEAR(st->kwnames_cache[1].names);
}

static int assign_keywords(mm_state *st, buffer_args *a, PyObject *const *kwvalues,
                           PyObject *kwnames, int consume_keys)
{
    signed char option[MM_KWNAMES_CACHED];
    Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
    if (kwnames_options(st, kwnames, consume_keys, option) < 0) {
        for (Py_ssize_t i = 0; i < nkw; i++) {
            if (assign_option(st, a, PyTuple_GET_ITEM(kwnames, i), kwvalues[i],
                              consume_keys) < 0) {
                return -1;
            }
        }
        return 0;
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        if (store_option(a, option[i], PyTuple_GET_ITEM(kwnames, i), kwvalues[i]) < 0) {
            return -1;
        }
    }
    return 0;
}

static int assign_mapping(mm_state *st, buffer_args *a, PyObject *options,
                          int consume_keys)
{
    /* As dict.update() decides: a mapping is what has keys().  The name is
     * interned: a fresh str per call would pile up in the type attribute
     * cache, which keeps the names it saw. */
    int has_keys = 1;
    if (!PyDict_Check(options)) {
        PyObject *keys = PyUnicode_InternFromString("keys");
        if (keys == NULL) {
            return -1;
        }
        has_keys = PyObject_HasAttr(options, keys);
        Py_DECREF(keys);
    }
    if (!has_keys || !PyMapping_Check(options)) {
        PyErr_Format(PyExc_TypeError, "options must be a mapping, not %.100s",
                     Py_TYPE(options)->tp_name);
        return -1;
    }
    /* The list of pairs must be ours alone while it is read: a mapping's
     * items() may hand out a list it keeps, so anything but dict's fresh
     * list is copied.  The options hold their own references
     * (store_option), so it goes as soon as it has been read. */
    PyObject *items = PyMapping_Items(options);
    if (items == NULL) {
        return -1;
    }
    if (PyDict_CheckExact(options)) {
        a->items = items;
    }
    else {
        a->items = PyList_GetSlice(items, 0, PyList_GET_SIZE(items));
        Py_DECREF(items);
        if (a->items == NULL) {
            return -1;
        }
    }
    /* Out of gc.get_objects() (code run by a collection that an
     * allocation below starts must not empty it), and each pair held
     * while its key and value are in use. */
    PyObject_GC_UnTrack(a->items);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(a->items); i++) {
        PyObject *pair = PyList_GET_ITEM(a->items, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "options.items() must yield pairs");
            return -1;
        }
        Py_INCREF(pair);
        int rc = assign_option(st, a, PyTuple_GET_ITEM(pair, 0),
                               PyTuple_GET_ITEM(pair, 1), consume_keys);
        Py_DECREF(pair);
        if (rc < 0) {
            return -1;
        }
    }
    Py_CLEAR(a->items);
    return 0;
}

int mm_parse_options(mm_state *st, PyObject *options, PyObject *const *kwvalues,
                  PyObject *kwnames, int accept_consume_keys, buffer_args *a)
{
    if (options != NULL && options != Py_None &&
        assign_mapping(st, a, options, accept_consume_keys) < 0) {
        return -1;
    }
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0 &&
        assign_keywords(st, a, kwvalues, kwnames, accept_consume_keys != 0) < 0) {
        return -1;
    }
    if (a->death_stub == Py_None) {
        Py_CLEAR(a->death_stub);
    }
    if (a->death_stub != NULL && !PyCallable_Check(a->death_stub)) {
        PyErr_Format(PyExc_TypeError,
                     "death_stub must be callable or None, not %.100s",
                     Py_TYPE(a->death_stub)->tp_name);
        return -1;
    }
    return 0;
}

void mm_buffer_args_clear(buffer_args *a)
{
    Py_CLEAR(a->allocator);
    Py_CLEAR(a->init_value);
    Py_CLEAR(a->death_stub);
    Py_CLEAR(a->delayed_gc);
    Py_CLEAR(a->copy);
    Py_CLEAR(a->readonly);
    Py_CLEAR(a->owner);
    Py_CLEAR(a->items);
    Py_CLEAR(a->extra);
}
