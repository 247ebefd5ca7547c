/* moetheory._core: the binding between NumPy and the pure-C core in csrc/.
 *
 * It only converts, checks and dispatches: arguments are checked for dtype, shape,
 * contiguity and finiteness with messages that name the argument; C status codes become
 * Python exceptions through one table; the GIL is released around every call that loops
 * over data. Nothing is written to a caller's array unless the call succeeds. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "mt_moe.h"
#include "mt_train.h"
#include "mt_deep.h"
#include "mt_em.h"
#include "mt_cluster.h"
#include "mt_names.h"
#include "mt_parallel.h"
#include "mt_size.h"

#include <time.h>

/* ---- status codes to exceptions: the one table ---- */

/* Raise the exception of status st for the call `what`; why (may be NULL) is the core's reason
 * for an MT_EINVAL, which becomes the message as it is (it names the field). Returns NULL. */
static PyObject *raise_status_why(mt_status st, const char *what, const mt_why *why)
{
    switch (st) {
    case MT_OK: return NULL;
    case MT_EINVAL:
        if (why && why->text[0]) PyErr_SetString(PyExc_ValueError, why->text);
        else PyErr_Format(PyExc_ValueError, "%s: invalid argument", what);
        break;
    case MT_ENOMEM: PyErr_Format(PyExc_MemoryError, "%s: out of memory", what); break;
    case MT_EINTERRUPTED: PyErr_SetNone(PyExc_KeyboardInterrupt); break;
    case MT_ENONFINITE:
        PyErr_Format(PyExc_FloatingPointError, "%s: a NaN or infinity appeared", what);
        break;
    case MT_ENOTCONVERGED: PyErr_Format(PyExc_RuntimeError, "%s: did not converge", what); break;
    default: PyErr_Format(PyExc_RuntimeError, "%s: unknown status %d", what, (int)st);
    }
    return NULL;
}

static PyObject *raise_status(mt_status st, const char *what)
{
    return raise_status_why(st, what, NULL);
}

/* ---- scalar converters: the one rule of each kind ----
 * For PyArg_Parse's "O&": each takes a struct holding the argument's name (set by the caller)
 * and receives the value. Numbers are Python or NumPy numbers: a bool (True, numpy.True_) is
 * never taken for a number, a string never for anything but a name, a number never for a bool.
 * Range rules belong to whoever computes with the value (mostly the C core's checks). */

typedef struct { const char *name; size_t value; } size_arg;                /* an int >= 0 */
typedef struct { const char *name; size_t value; int given; } opt_size_arg; /* None or a size */
typedef struct { const char *name; uint64_t value; } seed_arg;              /* [0, 2**64) */
typedef struct { const char *name; double value; } real_arg;                /* NaN passes */
typedef struct { const char *name; int value; } bool_arg;                   /* True, False */
typedef struct {                                                            /* a table name */
    const char *name;
    const char *const *table;
    size_t count;
    int value;
} name_arg;

static int is_bool(PyObject *obj) { return PyBool_Check(obj) || PyArray_IsScalar(obj, Bool); }

static int is_integer(PyObject *obj)
{
    return (PyLong_Check(obj) && !PyBool_Check(obj)) || PyArray_IsScalar(obj, Integer);
}

/* obj as a Python int (new reference), or NULL with TypeError naming the argument. */
static PyObject *integer_of(PyObject *obj, const char *name, const char *what)
{
    if (!is_integer(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be %s, got %.80s %.200R", name, what,
                     Py_TYPE(obj)->tp_name, obj);
        return NULL;
    }
    return PyNumber_Index(obj);
}

static int conv_size(PyObject *obj, void *out)
{
    size_arg *a = out;
    PyObject *v = integer_of(obj, a->name, "an integer");
    if (!v) return 0;
    PyObject *zero = PyLong_FromLong(0);
    int negative = zero ? PyObject_RichCompareBool(v, zero, Py_LT) : -1;
    Py_XDECREF(zero);
    if (negative < 0) {
        Py_DECREF(v);
        return 0;
    }
    size_t value = negative ? 0 : PyLong_AsSize_t(v);
    if (negative || (value == (size_t)-1 && PyErr_Occurred())) {
        PyErr_Clear();
        if (negative)
            PyErr_Format(PyExc_ValueError, "%s must not be negative, got %S", a->name, v);
        else
            PyErr_Format(PyExc_ValueError, "%s must be at most %zu, got %S", a->name, MT_MAX_SIZE,
                         v);
        Py_DECREF(v);
        return 0;
    }
    Py_DECREF(v);
    a->value = value;
    return 1;
}

static int conv_opt_size(PyObject *obj, void *out)
{
    opt_size_arg *a = out;
    a->given = obj != Py_None;
    a->value = 0;
    if (!a->given) return 1;
    size_arg s = {a->name, 0};
    if (!conv_size(obj, &s)) return 0;
    a->value = s.value;
    return 1;
}

static int conv_seed(PyObject *obj, void *out)
{
    seed_arg *a = out;
    PyObject *v = integer_of(obj, a->name, "an integer in [0, 2**64)");
    if (!v) return 0;
    unsigned long long value = PyLong_AsUnsignedLongLong(v); /* OverflowError if < 0 or large */
    if (value == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be an integer in [0, 2**64), got %S", a->name, v);
        Py_DECREF(v);
        return 0;
    }
    Py_DECREF(v);
    a->value = (uint64_t)value;
    return 1;
}

static int conv_real(PyObject *obj, void *out)
{
    real_arg *a = out;
    if (is_bool(obj) || !(PyFloat_Check(obj) || PyLong_Check(obj) ||
                          PyArray_IsScalar(obj, Floating) || PyArray_IsScalar(obj, Integer))) {
        PyErr_Format(PyExc_TypeError, "%s must be a real number, got %.80s %.200R", a->name,
                     Py_TYPE(obj)->tp_name, obj);
        return 0;
    }
    double v = PyFloat_AsDouble(obj); /* an int too large for a double: OverflowError */
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be a real number representable as a float, got "
                     "%.200R", a->name, obj);
        return 0;
    }
    a->value = v;
    return 1;
}

static int conv_bool(PyObject *obj, void *out)
{
    bool_arg *a = out;
    if (!is_bool(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be True or False, got %.80s %.200R", a->name,
                     Py_TYPE(obj)->tp_name, obj);
        return 0;
    }
    a->value = PyObject_IsTrue(obj);
    return a->value >= 0;
}

/* The choices of a name table as "'a', 'b', 'c'" (new reference). */
static PyObject *choices_text(const char *const *table, size_t count)
{
    PyObject *parts = PyList_New(0), *sep = NULL, *text = NULL;
    if (!parts) return NULL;
    for (size_t i = 0; i < count; i++) {
        PyObject *item = PyUnicode_FromFormat("'%s'", table[i]);
        if (!item || PyList_Append(parts, item) < 0) {
            Py_XDECREF(item);
            goto done;
        }
        Py_DECREF(item);
    }
    sep = PyUnicode_FromString(", ");
    if (sep) text = PyUnicode_Join(sep, parts);
done:
    Py_XDECREF(sep);
    Py_DECREF(parts);
    return text;
}

static int conv_name(PyObject *obj, void *out)
{
    name_arg *a = out;
    const char *s = PyUnicode_Check(obj) ? PyUnicode_AsUTF8(obj) : NULL;
    a->value = s ? mt_name_index(a->table, a->count, s) : -1;
    if (a->value < 0) {
        PyErr_Clear();
        PyObject *choices = choices_text(a->table, a->count);
        if (choices) {
            PyErr_Format(PyUnicode_Check(obj) ? PyExc_ValueError : PyExc_TypeError,
                         "%s must be one of %U; got %.200R", a->name, choices, obj);
            Py_DECREF(choices);
        }
        return 0;
    }
    return 1;
}

/* ---- the converters for Python: check_int, check_real, check_bool, check_seed ----
 * The Python layer coerces the numbers it uses itself (steps, restarts, tolerances) with these,
 * so a number means the same on both sides of the boundary. */

static PyObject *check_int(PyObject *Py_UNUSED(m), PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"value", "name", "low", "high", NULL};
    PyObject *value, *low = Py_None, *high = Py_None;
    const char *name;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Os|OO", kwlist, &value, &name, &low, &high))
        return NULL;
    PyObject *v = integer_of(value, name, "an integer");
    if (!v) return NULL;
    int below = low != Py_None ? PyObject_RichCompareBool(v, low, Py_LT) : 0;
    int above = high != Py_None ? PyObject_RichCompareBool(v, high, Py_GT) : 0;
    if (below < 0 || above < 0) {
        Py_DECREF(v);
        return NULL;
    }
    if (below || above) {
        if (high == Py_None)
            PyErr_Format(PyExc_ValueError, "%s must be an integer >= %S, got %S", name, low, v);
        else if (low == Py_None)
            PyErr_Format(PyExc_ValueError, "%s must be an integer <= %S, got %S", name, high, v);
        else
            PyErr_Format(PyExc_ValueError, "%s must be an integer in [%S, %S], got %S", name, low,
                         high, v);
        Py_DECREF(v);
        return NULL;
    }
    return v;
}

static PyObject *check_real(PyObject *Py_UNUSED(m), PyObject *args)
{
    real_arg a = {NULL, 0.0};
    PyObject *value;
    if (!PyArg_ParseTuple(args, "Os", &value, &a.name) || !conv_real(value, &a)) return NULL;
    return PyFloat_FromDouble(a.value);
}

static PyObject *check_bool(PyObject *Py_UNUSED(m), PyObject *args)
{
    bool_arg a = {NULL, 0};
    PyObject *value;
    if (!PyArg_ParseTuple(args, "Os", &value, &a.name) || !conv_bool(value, &a)) return NULL;
    return PyBool_FromLong(a.value);
}

static PyObject *check_seed(PyObject *Py_UNUSED(m), PyObject *args)
{
    seed_arg a = {NULL, 0};
    PyObject *value;
    if (!PyArg_ParseTuple(args, "Os", &value, &a.name) || !conv_seed(value, &a)) return NULL;
    return PyLong_FromUnsignedLongLong(a.value);
}

/* ---- array checks ---- */

/* Index of the first NaN or infinity of p[0..n), or n. Blocks are screened by an integer test
 * on the exponent bits, which the compiler vectorises (isfinite in a loop with an early exit is
 * not); only a block that fails is searched. On small models this check of X was 4% of a
 * loss_and_grad call. */
static size_t first_non_finite(const double *p, size_t n)
{
    enum { BLOCK = 256 };
    const uint64_t exponent = 0x7ff0000000000000ULL;
    for (size_t start = 0; start < n; start += BLOCK) {
        size_t end = start + BLOCK < n ? start + BLOCK : n;
        uint64_t bad = 0;
        for (size_t i = start; i < end; i++) {
            uint64_t u;
            memcpy(&u, p + i, sizeof u);
            /* bit 63 set exactly when the exponent is all ones: adds and ors, which SSE2 has
             * for 64-bit lanes (it has no 64-bit compare) */
            bad |= (u & exponent) + ((uint64_t)1 << 52);
        }
        if (bad >> 63)
            for (size_t i = start; i < end; i++)
                if (!isfinite(p[i])) return i;
    }
    return n;
}

/* Convert obj to a C-contiguous float64 array of ndim dims whose shape matches `shape`
 * (an entry < 0 matches any size; `shape_text` is how the expected shape is shown, e.g.
 * "(n, 3)"). Integer and float arrays are converted; other dtypes are a TypeError.
 * Empty arrays and non-finite values are a ValueError. Returns a new reference or NULL. */
static PyArrayObject *as_float_array(PyObject *obj, const char *name, int ndim,
                                     const npy_intp *shape, const char *shape_text)
{
    PyArrayObject *in = (PyArrayObject *)PyArray_FromAny(obj, NULL, 0, 0, 0, NULL);
    PyArrayObject *out = NULL;
    if (!in) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be an array of real numbers", name);
        return NULL;
    }
    char kind = PyArray_DESCR(in)->kind;
    if (kind != 'i' && kind != 'u' && kind != 'f') {
        PyErr_Format(PyExc_TypeError, "%s must have a real numeric dtype (float64 preferred), got %S",
                     name, (PyObject *)PyArray_DESCR(in));
        goto fail;
    }
    int shape_ok = PyArray_NDIM(in) == ndim;
    for (int i = 0; shape_ok && i < ndim; i++)
        if (shape[i] >= 0 && PyArray_DIM(in, i) != shape[i]) shape_ok = 0;
    if (!shape_ok) {
        PyObject *got = PyObject_GetAttrString((PyObject *)in, "shape");
        if (got) {
            PyErr_Format(PyExc_ValueError, "%s must have shape %s, got %S", name, shape_text, got);
            Py_DECREF(got);
        }
        goto fail;
    }
    if (PyArray_SIZE(in) == 0) {
        PyErr_Format(PyExc_ValueError, "%s must not be empty (shape %s with every size >= 1)",
                     name, shape_text);
        goto fail;
    }
    out = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)in, NPY_DOUBLE,
                                            NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    if (!out) goto fail;
    const double *p = PyArray_DATA(out);
    size_t size = (size_t)PyArray_SIZE(out), i = first_non_finite(p, size);
    if (i < size) {
        PyErr_Format(PyExc_ValueError, "%s must be finite, found %s at flat index %zd", name,
                     isnan(p[i]) ? "nan" : (p[i] > 0 ? "inf" : "-inf"), (Py_ssize_t)i);
        Py_CLEAR(out);
        goto fail;
    }
    Py_DECREF(in);
    return out;
fail:
    Py_XDECREF(in);
    return NULL;
}

/* Targets may be (n,) when d_out == 1, else (n, d_out): the number of dimensions to expect. */
static int target_ndim(PyObject *y, size_t d_out)
{
    if (d_out != 1) return 2;
    PyArrayObject *arr = (PyArrayObject *)PyArray_FromAny(y, NULL, 0, 0, 0, NULL);
    if (!arr) {
        PyErr_Clear();
        return 2; /* as_float_array reports the problem */
    }
    int ndim = PyArray_NDIM(arr) == 1 ? 1 : 2;
    Py_DECREF(arr);
    return ndim;
}

/* X as the model's inputs: (n, d_in), float64, finite, non-empty. New reference or NULL. */
static PyArrayObject *as_inputs(PyObject *obj, size_t d_in)
{
    char text[64];
    snprintf(text, sizeof text, "(n, %zu)", d_in);
    npy_intp shape[2] = {-1, (npy_intp)d_in};
    return as_float_array(obj, "X", 2, shape, text);
}

/* y as the targets of n rows: (n, d_out), or (n,) when d_out == 1. New reference or NULL. */
static PyArrayObject *as_targets(PyObject *obj, size_t n, size_t d_out)
{
    char text[80];
    if (d_out == 1) snprintf(text, sizeof text, "(%zu,) or (%zu, 1)", n, n);
    else snprintf(text, sizeof text, "(%zu, %zu)", n, d_out);
    npy_intp shape[2] = {(npy_intp)n, (npy_intp)d_out};
    return as_float_array(obj, "y", target_ndim(obj, d_out), shape, text);
}

/* A parameter vector must be exactly the model's own: float64, 1-D, C-contiguous, length P,
 * finite. `name` is the argument named in the error. */
static int check_vector(PyArrayObject *theta, size_t P, const char *name)
{
    if (!PyArray_Check(theta) || PyArray_TYPE(theta) != NPY_DOUBLE || PyArray_NDIM(theta) != 1 ||
        !PyArray_IS_C_CONTIGUOUS(theta) || (size_t)PyArray_DIM(theta, 0) != P) {
        PyErr_Format(PyExc_ValueError,
                     "%s must be a C-contiguous float64 vector of length %zu", name, P);
        return -1;
    }
    size_t i = first_non_finite(PyArray_DATA(theta), P);
    if (i < P) {
        PyErr_Format(PyExc_ValueError, "%s must be finite, found a NaN or infinity at index %zu",
                     name, i);
        return -1;
    }
    return 0;
}

static int check_theta(PyArrayObject *theta, size_t P) { return check_vector(theta, P, "theta"); }

/* A result the core computed from finite inputs may still overflow (X around 1e300 makes the
 * scores, outputs or squared errors infinite): -1 with FloatingPointError rather than an inf or
 * NaN returned silently. what: the call; values: (count,). */
static int check_result(const char *what, const double *values, size_t count)
{
    if (first_non_finite(values, count) == count) return 0;
    PyErr_Format(PyExc_FloatingPointError, "%s: the result overflowed to inf or NaN for these "
                 "inputs (finite, but too large for float64 arithmetic: rescale X)", what);
    return -1;
}

/* ---- the Layer type: one MoE layer's configuration and its workspace ---- */

typedef struct {
    PyObject_HEAD
    mt_moe_config cfg;
    mt_moe_layout layout;
    mt_moe_workspace *ws;
    int busy; /* set while a call runs without the GIL: a second thread gets an error, not a race */
    int initialised; /* __init__ succeeded (it runs once: the workspace may be in use) */
} LayerObject;

static int Layer_init(LayerObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"d_in", "n_experts", "expert", "hidden", "activation", "gate",
                             "top_k", "temperature", "gate_activation", "groups", "d_out",
                             "bias", "normalize", "depth", NULL};
    size_arg d_in = {"d_in", 0}, E = {"n_experts", 0}, hidden = {"hidden", 0};
    size_arg d_out = {"d_out", 1}, depth = {"depth", 1};
    opt_size_arg top_k = {"top_k", 0, 0}, groups = {"groups", 0, 0};
    name_arg expert = {"expert", mt_expert_names, MT_EXPERT_COUNT, 0};
    name_arg act = {"activation", mt_act_names, MT_ACT_COUNT, 0};
    name_arg gate = {"gate", mt_gate_names, MT_GATE_COUNT, 0};
    name_arg gate_act = {"gate_activation", mt_act_names, MT_ACT_COUNT, MT_ACT_IDENTITY};
    real_arg temperature = {"temperature", 1.0};
    bool_arg bias = {"bias", 1}, normalize = {"normalize", 0};
    PyObject *gate_act_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(
            args, kw, "O&O&O&O&O&O&O&O&OO&O&O&|O&O&", kwlist, conv_size, &d_in, conv_size, &E,
            conv_name, &expert, conv_size, &hidden, conv_name, &act, conv_name, &gate,
            conv_opt_size, &top_k, conv_real, &temperature, &gate_act_obj, conv_opt_size,
            &groups, conv_size, &d_out, conv_bool, &bias, conv_bool, &normalize, conv_size,
            &depth))
        return -1;
    if (self->initialised) {
        PyErr_SetString(PyExc_RuntimeError, "Layer is already initialised");
        return -1;
    }
    if (gate_act_obj != Py_None && !conv_name(gate_act_obj, &gate_act)) return -1;
    /* 0 is the core's "no top-k"; a given top_k is a count of experts */
    if (top_k.given && top_k.value == 0) {
        PyErr_SetString(PyExc_ValueError, "top_k must satisfy 1 <= top_k <= n_experts (None for "
                                          "no top-k), got 0");
        return -1;
    }
    mt_moe_config c = {
        .d_in = d_in.value, .n_experts = E.value, .hidden = hidden.value, .depth = depth.value,
        .d_out = d_out.value, .groups = groups.value, .top_k = top_k.value,
        .gate = (mt_gate_kind)gate.value, .expert = (mt_expert_kind)expert.value,
        .activation = (mt_act)act.value, .gate_activation = (mt_act)gate_act.value,
        .temperature = temperature.value, .bias = bias.value, .normalize = normalize.value};
    mt_why why = {0};
    if (mt_moe_config_validate(&c, &why) != MT_OK) {
        raise_status_why(MT_EINVAL, "Layer", &why);
        return -1;
    }
    self->cfg = c;
    mt_moe_layout_of(&self->layout, &c);
    self->initialised = 1;
    return 0;
}

static void Layer_dealloc(LayerObject *self)
{
    mt_moe_workspace_free(self->ws);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Make sure the workspace holds n rows; grows only, so steady-state calls never allocate. */
static int ensure_workspace(LayerObject *self, size_t n)
{
    if (self->ws && mt_moe_workspace_capacity(self->ws) >= n) return 0;
    mt_moe_workspace *ws = NULL;
    mt_status st = mt_moe_workspace_alloc(&ws, &self->cfg, n);
    if (st != MT_OK) {
        raise_status(st, "workspace");
        return -1;
    }
    mt_moe_workspace_free(self->ws);
    self->ws = ws;
    return 0;
}

/* Claim a model's busy flag (held with the GIL, so the check and the set cannot interleave). */
static int acquire(int *busy)
{
    if (*busy) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this model is in use by another thread; give each thread its own model");
        return -1;
    }
    *busy = 1;
    return 0;
}

/* Claim the busy flag, then make sure the workspace holds n rows. In this order because
 * another thread that holds the flag may be using the workspace with the GIL released: growing
 * it first would free it under that thread. On failure the flag is left free. */
static int claim_workspace(LayerObject *self, size_t n)
{
    if (acquire(&self->busy) < 0) return -1;
    if (ensure_workspace(self, n) < 0) {
        self->busy = 0;
        return -1;
    }
    return 0;
}

static PyObject *Layer_layout(LayerObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *list = PyList_New((Py_ssize_t)self->layout.n_blocks);
    if (!list) return NULL;
    for (size_t i = 0; i < self->layout.n_blocks; i++) {
        const mt_param_block *b = &self->layout.block[i];
        PyObject *shape = PyTuple_New((Py_ssize_t)b->ndim);
        if (!shape) goto fail;
        for (size_t j = 0; j < b->ndim; j++)
            PyTuple_SET_ITEM(shape, (Py_ssize_t)j, PyLong_FromSize_t(b->shape[j]));
        PyObject *item = Py_BuildValue("(snN)", b->name, (Py_ssize_t)b->offset, shape);
        if (!item) goto fail;
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    return list;
fail:
    Py_DECREF(list);
    return NULL;
}

static PyObject *Layer_init_params(LayerObject *self, PyObject *args)
{
    PyArrayObject *theta;
    seed_arg seed = {"seed", 0}, stream = {"stream", 0};
    if (!PyArg_ParseTuple(args, "O!O&|O&", &PyArray_Type, &theta, conv_seed, &seed, conv_seed,
                          &stream))
        return NULL;
    if (PyArray_TYPE(theta) != NPY_DOUBLE || PyArray_NDIM(theta) != 1 ||
        !PyArray_IS_C_CONTIGUOUS(theta) || !PyArray_ISWRITEABLE(theta) ||
        (size_t)PyArray_DIM(theta, 0) != self->layout.n_params) {
        PyErr_Format(PyExc_ValueError, "theta must be a writable float64 vector of length %zu",
                     self->layout.n_params);
        return NULL;
    }
    mt_status st = mt_moe_init(PyArray_DATA(theta), &self->cfg, seed.value, stream.value);
    if (st != MT_OK) return raise_status(st, "init");
    Py_RETURN_NONE;
}

static PyObject *Layer_set_temperature(LayerObject *self, PyObject *arg)
{
    real_arg t = {"temperature", 0.0};
    if (!conv_real(arg, &t)) return NULL;
    mt_moe_config c = self->cfg;
    c.temperature = t.value;
    mt_why why = {0};
    if (mt_moe_config_validate(&c, &why) != MT_OK) return raise_status_why(MT_EINVAL, "", &why);
    self->cfg.temperature = t.value;
    Py_RETURN_NONE;
}


static PyObject *Layer_forward(LayerObject *self, PyObject *args)
{
    PyObject *theta_obj, *X_obj, *result = NULL;
    PyArrayObject *X = NULL, *out = NULL, *gates = NULL;
    if (!PyArg_ParseTuple(args, "O!O", &PyArray_Type, &theta_obj, &X_obj)) return NULL;
    PyArrayObject *theta = (PyArrayObject *)theta_obj;
    if (check_theta(theta, self->layout.n_params) < 0) return NULL;
    X = as_inputs(X_obj, self->cfg.d_in);
    if (!X) goto done;
    size_t n = (size_t)PyArray_DIM(X, 0);
    npy_intp os[2] = {(npy_intp)n, (npy_intp)self->cfg.d_out};
    npy_intp gs[2] = {(npy_intp)n, (npy_intp)self->cfg.n_experts};
    out = (PyArrayObject *)PyArray_SimpleNew(2, os, NPY_DOUBLE);
    gates = (PyArrayObject *)PyArray_SimpleNew(2, gs, NPY_DOUBLE);
    if (!out || !gates || claim_workspace(self, n) < 0) goto done;
    mt_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mt_moe_forward(PyArray_DATA(out), PyArray_DATA(gates), PyArray_DATA(theta),
                        PyArray_DATA(X), n, &self->cfg, self->ws);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (st != MT_OK) {
        raise_status(st, "forward");
        goto done;
    }
    if (check_result("forward", PyArray_DATA(out), n * self->cfg.d_out) < 0 ||
        check_result("forward", PyArray_DATA(gates), n * self->cfg.n_experts) < 0)
        goto done;
    result = PyTuple_Pack(2, (PyObject *)out, (PyObject *)gates);
done:
    Py_XDECREF(X);
    Py_XDECREF(out);
    Py_XDECREF(gates);
    return result;
}

static PyObject *Layer_loss_and_grad(LayerObject *self, PyObject *args)
{
    PyObject *theta_obj, *X_obj, *y_obj, *result = NULL;
    PyArrayObject *X = NULL, *y = NULL, *grad = NULL;
    real_arg aux_switch = {"aux_switch", 0.0}, aux_z = {"aux_z", 0.0};
    if (!PyArg_ParseTuple(args, "O!OO|O&O&", &PyArray_Type, &theta_obj, &X_obj, &y_obj,
                          conv_real, &aux_switch, conv_real, &aux_z))
        return NULL;
    /* the auxiliary losses are this call's arguments: the layer's config is never changed */
    mt_moe_config cfg = self->cfg;
    cfg.aux_switch = aux_switch.value;
    cfg.aux_z = aux_z.value;
    mt_why why = {0};
    if (mt_moe_config_validate(&cfg, &why) != MT_OK)
        return raise_status_why(MT_EINVAL, "loss_and_grad", &why);
    PyArrayObject *theta = (PyArrayObject *)theta_obj;
    if (check_theta(theta, self->layout.n_params) < 0) return NULL;
    X = as_inputs(X_obj, self->cfg.d_in);
    if (!X) goto done;
    size_t n = (size_t)PyArray_DIM(X, 0);
    y = as_targets(y_obj, n, self->cfg.d_out);
    if (!y) goto done;
    npy_intp gs[1] = {(npy_intp)self->layout.n_params};
    grad = (PyArrayObject *)PyArray_SimpleNew(1, gs, NPY_DOUBLE);
    if (!grad || claim_workspace(self, n) < 0) goto done;
    double loss = 0.0;
    mt_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mt_moe_mse_loss_and_grad(&loss, PyArray_DATA(grad), PyArray_DATA(theta), PyArray_DATA(X),
                                  PyArray_DATA(y), n, &cfg, self->ws);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (st != MT_OK) {
        raise_status(st, "loss_and_grad");
        goto done;
    }
    if (check_result("loss_and_grad", &loss, 1) < 0 ||
        check_result("loss_and_grad", PyArray_DATA(grad), self->layout.n_params) < 0)
        goto done;
    result = Py_BuildValue("(dO)", loss, (PyObject *)grad);
done:
    Py_XDECREF(X);
    Py_XDECREF(y);
    Py_XDECREF(grad);
    return result;
}

static PyObject *Layer_get_n_params(LayerObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(self->layout.n_params);
}

static PyMethodDef Layer_methods[] = {
    {"layout", (PyCFunction)Layer_layout, METH_NOARGS,
     "layout() -> list of (name, offset, shape) of the blocks of theta, in order."},
    {"init_params", (PyCFunction)Layer_init_params, METH_VARARGS,
     "init_params(theta, seed, stream=0): fill theta with the documented initialisation."},
    {"set_temperature", (PyCFunction)Layer_set_temperature, METH_O,
     "set_temperature(t): the temperature gate's temperature, t > 0."},
    {"forward", (PyCFunction)Layer_forward, METH_VARARGS,
     "forward(theta, X) -> (out (n, d_out), gates (n, E))."},
    {"loss_and_grad", (PyCFunction)Layer_loss_and_grad, METH_VARARGS,
     "loss_and_grad(theta, X, y, aux_switch=0, aux_z=0) -> (loss, grad (P,)): the mean squared "
     "error plus the auxiliary router losses of these coefficients."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Layer_getset[] = {
    {"n_params", (getter)Layer_get_n_params, NULL, "number of parameters P", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject LayerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "moetheory._core.Layer",
    .tp_basicsize = sizeof(LayerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One MoE layer of the C core: configuration, parameter layout and workspace.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Layer_init,
    .tp_dealloc = (destructor)Layer_dealloc,
    .tp_methods = Layer_methods,
    .tp_getset = Layer_getset,
};


/* ---- clustered single-index task ---- */
/* ClusterTask: the task of csrc/mt_cluster.h over private copies of its arrays (so it cannot
 * change under a running trainer), with draw(n, seed) for evaluation and its mt_source for
 * Trainer(source=...). The object is read-only after __init__, so several trainers may share it
 * from several threads. */

typedef struct {
    PyObject_HEAD
    mt_cluster_task task;
    mt_source src;
    PyArrayObject *centres, *w, *coef, *w_g, *s, *g_coef; /* owned copies */
} ClusterTaskObject;

static void ClusterTask_dealloc(ClusterTaskObject *self)
{
    Py_XDECREF(self->centres);
    Py_XDECREF(self->w);
    Py_XDECREF(self->coef);
    Py_XDECREF(self->w_g);
    Py_XDECREF(self->s);
    Py_XDECREF(self->g_coef);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A checked float64 copy that nobody else holds (as_float_array may return obj itself). */
static PyArrayObject *private_copy(PyObject *obj, const char *name, int ndim, const npy_intp *shape,
                                   const char *text)
{
    PyArrayObject *a = as_float_array(obj, name, ndim, shape, text);
    if (!a) return NULL;
    PyArrayObject *copy = (PyArrayObject *)PyArray_NewCopy(a, NPY_CORDER);
    Py_DECREF(a);
    return copy;
}

static int ClusterTask_init(ClusterTaskObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"centres", "w", "coef", "rho", "noise_sd", "w_g", "s", "g_coef",
                             NULL};
    PyObject *centres, *w, *coef, *w_g = Py_None, *s = Py_None, *g_coef = Py_None;
    real_arg rho_arg = {"rho", 0.0}, noise_arg = {"noise_sd", 0.0};
    char text[80];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO&|O&OOO", kwlist, &centres, &w, &coef,
                                     conv_real, &rho_arg, conv_real, &noise_arg, &w_g, &s,
                                     &g_coef))
        return -1;
    const double rho = rho_arg.value, noise_sd = noise_arg.value;
    if (self->centres) {
        PyErr_SetString(PyExc_RuntimeError, "ClusterTask is already initialised");
        return -1;
    }
    npy_intp cs[2] = {-1, -1};
    self->centres = private_copy(centres, "centres", 2, cs, "(C, d)");
    if (!self->centres) return -1;
    npy_intp C = PyArray_DIM(self->centres, 0), d = PyArray_DIM(self->centres, 1);
    npy_intp ws[2] = {C, d};
    snprintf(text, sizeof text, "(%zd, %zd)", (Py_ssize_t)C, (Py_ssize_t)d);
    self->w = private_copy(w, "w", 2, ws, text);
    if (!self->w) return -1;
    npy_intp ks[2] = {C, -1};
    snprintf(text, sizeof text, "(%zd, degree + 1)", (Py_ssize_t)C);
    self->coef = private_copy(coef, "coef", 2, ks, text);
    if (!self->coef) return -1;
    if (PyArray_DIM(self->coef, 1) > MT_CLUSTER_MAX_DEGREE + 1) {
        PyErr_Format(PyExc_ValueError, "coef: the link degree must be at most %d, got %zd",
                     MT_CLUSTER_MAX_DEGREE, (Py_ssize_t)PyArray_DIM(self->coef, 1) - 1);
        return -1;
    }
    if (!isfinite(rho)) {
        PyErr_Format(PyExc_ValueError, "rho must be finite, got %g", rho);
        return -1;
    }
    if (!(isfinite(noise_sd) && noise_sd >= 0)) {
        PyErr_Format(PyExc_ValueError, "noise_sd must be a finite number >= 0, got %g", noise_sd);
        return -1;
    }
    int global = w_g != Py_None;
    if (global != (s != Py_None) || global != (g_coef != Py_None)) {
        PyErr_SetString(PyExc_ValueError, "w_g, s and g_coef must be given together (or none)");
        return -1;
    }
    if (global) {
        npy_intp gs[1] = {d};
        snprintf(text, sizeof text, "(%zd,)", (Py_ssize_t)d);
        self->w_g = private_copy(w_g, "w_g", 1, gs, text);
        if (!self->w_g) return -1;
        npy_intp ss[1] = {C};
        snprintf(text, sizeof text, "(%zd,)", (Py_ssize_t)C);
        self->s = private_copy(s, "s", 1, ss, text);
        if (!self->s) return -1;
        npy_intp gcs[1] = {-1};
        self->g_coef = private_copy(g_coef, "g_coef", 1, gcs, "(degree + 1,)");
        if (!self->g_coef) return -1;
        if (PyArray_DIM(self->g_coef, 0) > MT_CLUSTER_MAX_DEGREE + 1) {
            PyErr_Format(PyExc_ValueError, "g_coef: the link degree must be at most %d, got %zd",
                         MT_CLUSTER_MAX_DEGREE, (Py_ssize_t)PyArray_DIM(self->g_coef, 0) - 1);
            return -1;
        }
    }
    mt_cluster_task t = {.d = (size_t)d, .C = (size_t)C, .rho = rho, .noise_sd = noise_sd,
                         .centres = PyArray_DATA(self->centres), .w = PyArray_DATA(self->w),
                         .coef = PyArray_DATA(self->coef),
                         .degree = (size_t)PyArray_DIM(self->coef, 1) - 1};
    if (global) {
        t.w_g = PyArray_DATA(self->w_g);
        t.s = PyArray_DATA(self->s);
        t.g_coef = PyArray_DATA(self->g_coef);
        t.g_degree = (size_t)PyArray_DIM(self->g_coef, 0) - 1;
    }
    if (mt_cluster_check(&t) != MT_OK) {
        raise_status(MT_EINVAL, "ClusterTask");
        return -1;
    }
    self->task = t;
    mt_cluster_as_source(&self->src, &self->task);
    return 0;
}

static int cluster_ready(ClusterTaskObject *self)
{
    if (!self->task.centres) { /* set only when __init__ succeeded */
        PyErr_SetString(PyExc_ValueError, "ClusterTask was not initialised");
        return -1;
    }
    return 0;
}

static PyObject *ClusterTask_draw(ClusterTaskObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"n", "seed", "stream", NULL};
    size_arg n_arg = {"n", 0};
    seed_arg seed = {"seed", 0}, stream = {"stream", 0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&|O&", kwlist, conv_size, &n_arg, conv_seed,
                                     &seed, conv_seed, &stream))
        return NULL;
    if (cluster_ready(self) < 0) return NULL;
    if (n_arg.value > MT_MAX_SIZE) {
        PyErr_Format(PyExc_ValueError, "n must be at most %zu, got %zu", MT_MAX_SIZE, n_arg.value);
        return NULL;
    }
    const npy_intp n = (npy_intp)n_arg.value;
    npy_intp xs[2] = {n, (npy_intp)self->task.d}, ys[1] = {n};
    PyArrayObject *X = (PyArrayObject *)PyArray_SimpleNew(2, xs, NPY_DOUBLE);
    PyArrayObject *y = (PyArrayObject *)PyArray_SimpleNew(1, ys, NPY_DOUBLE);
    PyArrayObject *c = (PyArrayObject *)PyArray_SimpleNew(1, ys, NPY_INT);
    PyObject *result = NULL, *c64 = NULL;
    if (!X || !y || !c) goto done;
    mt_rng r;
    mt_rng_init(&r, seed.value, stream.value);
    mt_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mt_cluster_draw(PyArray_DATA(X), PyArray_DATA(y), PyArray_DATA(c), &r, &self->task,
                         (size_t)n);
    Py_END_ALLOW_THREADS
    if (st != MT_OK) {
        raise_status(st, "ClusterTask.draw");
        goto done;
    }
    c64 = PyArray_Cast(c, NPY_INT64);
    if (!c64) goto done;
    result = PyTuple_Pack(3, (PyObject *)X, (PyObject *)y, c64);
done:
    Py_XDECREF(X);
    Py_XDECREF(y);
    Py_XDECREF(c);
    Py_XDECREF(c64);
    return result;
}

static PyObject *ClusterTask_get_d(ClusterTaskObject *self, void *Py_UNUSED(closure))
{
    if (cluster_ready(self) < 0) return NULL;
    return PyLong_FromSize_t(self->task.d);
}

static PyObject *ClusterTask_get_C(ClusterTaskObject *self, void *Py_UNUSED(closure))
{
    if (cluster_ready(self) < 0) return NULL;
    return PyLong_FromSize_t(self->task.C);
}

static PyMethodDef ClusterTask_methods[] = {
    {"draw", (PyCFunction)(void (*)(void))ClusterTask_draw, METH_VARARGS | METH_KEYWORDS,
     "draw(n, seed, stream=0) -> (X (n, d), y (n,), c (n,) int64): n samples from the "
     "generator keyed by (seed, stream), in the draw order of csrc/mt_cluster.h."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef ClusterTask_getset[] = {
    {"d", (getter)ClusterTask_get_d, NULL, "input dimension", NULL},
    {"n_clusters", (getter)ClusterTask_get_C, NULL, "number of clusters C", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject ClusterTaskType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "moetheory._core.ClusterTask",
    .tp_basicsize = sizeof(ClusterTaskObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ClusterTask(centres (C, d), w (C, d), coef (C, p + 1), rho, noise_sd=0, w_g=None, "
              "s=None, g_coef=None): the clustered single-index task of csrc/mt_cluster.h.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ClusterTask_init,
    .tp_dealloc = (destructor)ClusterTask_dealloc,
    .tp_methods = ClusterTask_methods,
    .tp_getset = ClusterTask_getset,
};

/* ---- end clustered single-index task ---- */

/* ---- the Stack type: a deep MoE, a plain stack of Layers ---- */

typedef struct {
    PyObject_HEAD
    mt_deep_config cfg;
    size_t offsets[MT_DEEP_MAX_LAYERS + 1];
    mt_moe_layout layout[MT_DEEP_MAX_LAYERS];
    mt_deep_workspace *ws;
    int busy;
} StackObject;

static int Stack_init(StackObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"layers", NULL};
    PyObject *layers;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", kwlist, &layers)) return -1;
    PyObject *seq = PySequence_Fast(layers, "layers must be a sequence of moetheory._core.Layer");
    if (!seq) return -1;
    Py_ssize_t L = PySequence_Fast_GET_SIZE(seq);
    int rc = -1;
    if (L < 1 || L > MT_DEEP_MAX_LAYERS) {
        PyErr_Format(PyExc_ValueError, "layers must hold 1 to %d layers, got %zd",
                     MT_DEEP_MAX_LAYERS, L);
        goto done;
    }
    mt_deep_config cfg = {.n_layers = (size_t)L};
    for (Py_ssize_t l = 0; l < L; l++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, l);
        if (!PyObject_TypeCheck(item, &LayerType)) {
            PyErr_Format(PyExc_TypeError, "layers[%zd] must be a moetheory._core.Layer", l);
            goto done;
        }
        cfg.layer[l] = ((LayerObject *)item)->cfg;
        if (l > 0 && cfg.layer[l].d_in != cfg.layer[l - 1].d_out) {
            PyErr_Format(PyExc_ValueError,
                         "layer %zd takes d_in = %zu inputs but layer %zd gives d_out = %zu",
                         l, cfg.layer[l].d_in, l - 1, cfg.layer[l - 1].d_out);
            goto done;
        }
    }
    mt_why why = {0};
    if (mt_deep_config_validate(&cfg, &why) != MT_OK) {
        raise_status_why(MT_EINVAL, "Stack", &why);
        goto done;
    }
    mt_deep_workspace_free(self->ws);
    self->ws = NULL;
    self->cfg = cfg;
    mt_deep_offsets(self->offsets, &cfg);
    for (size_t l = 0; l < cfg.n_layers; l++) mt_moe_layout_of(&self->layout[l], &cfg.layer[l]);
    rc = 0;
done:
    Py_DECREF(seq);
    return rc;
}

static void Stack_dealloc(StackObject *self)
{
    mt_deep_workspace_free(self->ws);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static size_t stack_params(const StackObject *self) { return self->offsets[self->cfg.n_layers]; }
static size_t stack_d_in(const StackObject *self) { return self->cfg.layer[0].d_in; }
static size_t stack_d_out(const StackObject *self)
{
    return self->cfg.layer[self->cfg.n_layers - 1].d_out;
}

static int stack_ensure_workspace(StackObject *self, size_t n)
{
    if (self->ws && mt_deep_workspace_capacity(self->ws) >= n) return 0;
    mt_deep_workspace *ws = NULL;
    mt_status st = mt_deep_workspace_alloc(&ws, &self->cfg, n);
    if (st != MT_OK) {
        raise_status(st, "workspace");
        return -1;
    }
    mt_deep_workspace_free(self->ws);
    self->ws = ws;
    return 0;
}

/* As claim_workspace, for a stack. */
static int stack_claim_workspace(StackObject *self, size_t n)
{
    if (acquire(&self->busy) < 0) return -1;
    if (stack_ensure_workspace(self, n) < 0) {
        self->busy = 0;
        return -1;
    }
    return 0;
}

static PyObject *Stack_layout(StackObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *list = PyList_New(0);
    if (!list) return NULL;
    for (size_t l = 0; l < self->cfg.n_layers; l++) {
        const mt_moe_layout *lay = &self->layout[l];
        for (size_t i = 0; i < lay->n_blocks; i++) {
            const mt_param_block *b = &lay->block[i];
            PyObject *shape = PyTuple_New((Py_ssize_t)b->ndim);
            if (!shape) goto fail;
            for (size_t j = 0; j < b->ndim; j++)
                PyTuple_SET_ITEM(shape, (Py_ssize_t)j, PyLong_FromSize_t(b->shape[j]));
            PyObject *name = PyUnicode_FromFormat("layers.%zu.%s", l, b->name);
            if (!name) {
                Py_DECREF(shape);
                goto fail;
            }
            /* "N" steals the references to name and shape */
            PyObject *item = Py_BuildValue("(NnN)", name,
                                           (Py_ssize_t)(self->offsets[l] + b->offset), shape);
            if (!item) goto fail;
            int rc = PyList_Append(list, item);
            Py_DECREF(item);
            if (rc < 0) goto fail;
        }
    }
    return list;
fail:
    Py_DECREF(list);
    return NULL;
}

static PyObject *Stack_init_params(StackObject *self, PyObject *args)
{
    PyArrayObject *theta;
    seed_arg seed = {"seed", 0};
    if (!PyArg_ParseTuple(args, "O!O&", &PyArray_Type, &theta, conv_seed, &seed)) return NULL;
    if (PyArray_TYPE(theta) != NPY_DOUBLE || PyArray_NDIM(theta) != 1 ||
        !PyArray_IS_C_CONTIGUOUS(theta) || !PyArray_ISWRITEABLE(theta) ||
        (size_t)PyArray_DIM(theta, 0) != stack_params(self)) {
        PyErr_Format(PyExc_ValueError, "theta must be a writable float64 vector of length %zu",
                     stack_params(self));
        return NULL;
    }
    double *p = PyArray_DATA(theta);
    for (size_t l = 0; l < self->cfg.n_layers; l++) {
        /* Layer l draws from stream l of the seed, so layers are independent. */
        mt_status st = mt_moe_init(p + self->offsets[l], &self->cfg.layer[l], seed.value, l);
        if (st != MT_OK) return raise_status(st, "init");
    }
    Py_RETURN_NONE;
}

static PyObject *Stack_forward(StackObject *self, PyObject *args)
{
    PyObject *theta_obj, *X_obj, *result = NULL, *gate_list = NULL;
    PyArrayObject *X = NULL, *out = NULL;
    if (!PyArg_ParseTuple(args, "O!O", &PyArray_Type, &theta_obj, &X_obj)) return NULL;
    PyArrayObject *theta = (PyArrayObject *)theta_obj;
    if (check_theta(theta, stack_params(self)) < 0) return NULL;
    X = as_inputs(X_obj, stack_d_in(self));
    if (!X) goto done;
    size_t n = (size_t)PyArray_DIM(X, 0);
    npy_intp os[2] = {(npy_intp)n, (npy_intp)stack_d_out(self)};
    out = (PyArrayObject *)PyArray_SimpleNew(2, os, NPY_DOUBLE);
    gate_list = PyList_New((Py_ssize_t)self->cfg.n_layers);
    if (!out || !gate_list) goto done;
    double *gate_ptrs[MT_DEEP_MAX_LAYERS];
    for (size_t l = 0; l < self->cfg.n_layers; l++) {
        npy_intp gs[2] = {(npy_intp)n, (npy_intp)self->cfg.layer[l].n_experts};
        PyObject *g = PyArray_SimpleNew(2, gs, NPY_DOUBLE);
        if (!g) goto done;
        PyList_SET_ITEM(gate_list, (Py_ssize_t)l, g);
        gate_ptrs[l] = PyArray_DATA((PyArrayObject *)g);
    }
    if (stack_claim_workspace(self, n) < 0) goto done;
    mt_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mt_deep_forward(PyArray_DATA(out), gate_ptrs, PyArray_DATA(theta), PyArray_DATA(X), n,
                         &self->cfg, self->ws);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (st != MT_OK) {
        raise_status(st, "forward");
        goto done;
    }
    if (check_result("forward", PyArray_DATA(out), n * stack_d_out(self)) < 0) goto done;
    for (size_t l = 0; l < self->cfg.n_layers; l++)
        if (check_result("forward", gate_ptrs[l], n * self->cfg.layer[l].n_experts) < 0)
            goto done;
    result = PyTuple_Pack(2, (PyObject *)out, gate_list);
done:
    Py_XDECREF(X);
    Py_XDECREF(out);
    Py_XDECREF(gate_list);
    return result;
}

static PyObject *Stack_loss_and_grad(StackObject *self, PyObject *args)
{
    PyObject *theta_obj, *X_obj, *y_obj, *result = NULL;
    PyArrayObject *X = NULL, *y = NULL, *grad = NULL;
    if (!PyArg_ParseTuple(args, "O!OO", &PyArray_Type, &theta_obj, &X_obj, &y_obj)) return NULL;
    PyArrayObject *theta = (PyArrayObject *)theta_obj;
    if (check_theta(theta, stack_params(self)) < 0) return NULL;
    X = as_inputs(X_obj, stack_d_in(self));
    if (!X) goto done;
    size_t n = (size_t)PyArray_DIM(X, 0);
    y = as_targets(y_obj, n, stack_d_out(self));
    if (!y) goto done;
    npy_intp gs[1] = {(npy_intp)stack_params(self)};
    grad = (PyArrayObject *)PyArray_SimpleNew(1, gs, NPY_DOUBLE);
    if (!grad || stack_claim_workspace(self, n) < 0) goto done;
    double loss = 0.0;
    mt_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mt_deep_mse_loss_and_grad(&loss, PyArray_DATA(grad), PyArray_DATA(theta), PyArray_DATA(X),
                                   PyArray_DATA(y), n, &self->cfg, self->ws);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (st != MT_OK) {
        raise_status(st, "loss_and_grad");
        goto done;
    }
    if (check_result("loss_and_grad", &loss, 1) < 0 ||
        check_result("loss_and_grad", PyArray_DATA(grad), stack_params(self)) < 0)
        goto done;
    result = Py_BuildValue("(dO)", loss, (PyObject *)grad);
done:
    Py_XDECREF(X);
    Py_XDECREF(y);
    Py_XDECREF(grad);
    return result;
}

static PyObject *Stack_get_n_params(StackObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(stack_params(self));
}

static PyMethodDef Stack_methods[] = {
    {"layout", (PyCFunction)Stack_layout, METH_NOARGS,
     "layout() -> list of (name, offset, shape), names prefixed 'layers.<l>.'."},
    {"init_params", (PyCFunction)Stack_init_params, METH_VARARGS,
     "init_params(theta, seed): each layer initialised from stream l of the seed."},
    {"forward", (PyCFunction)Stack_forward, METH_VARARGS,
     "forward(theta, X) -> (out (n, d_out), [gates of each layer (n, E_l)])."},
    {"loss_and_grad", (PyCFunction)Stack_loss_and_grad, METH_VARARGS,
     "loss_and_grad(theta, X, y) -> (mse, grad (P,))."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Stack_getset[] = {
    {"n_params", (getter)Stack_get_n_params, NULL, "number of parameters P", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject StackType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "moetheory._core.Stack",
    .tp_basicsize = sizeof(StackObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A deep MoE of the C core: a plain stack of Layers with one flat theta.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Stack_init,
    .tp_dealloc = (destructor)Stack_dealloc,
    .tp_methods = Stack_methods,
    .tp_getset = Stack_getset,
};

/* ---- online data: a teacher and an input distribution, or a ClusterTask source ---- */
/* Trainer(...) and draw(...) take the same description of online data and parse it here, once.
 * online_spec holds what the C core reads while it draws: the mt_train_data filled by
 * online_parse points into it (teacher_model, teacher_ctx), so it must not move while that data
 * is in use (a Trainer embeds it; draw keeps it on its stack for the call). */

typedef struct {
    LayerObject *teacher;                              /* strong references, or NULL */
    PyArrayObject *teacher_theta, *centres, *weights;
    PyObject *source;                                  /* a ClusterTask, or NULL */
    mt_moe_model_ctx teacher_ctx;                      /* ws is set before each C call */
    mt_model teacher_model;
} online_spec;

static void online_clear(online_spec *o)
{
    Py_CLEAR(o->teacher);
    Py_CLEAR(o->teacher_theta);
    Py_CLEAR(o->centres);
    Py_CLEAR(o->weights);
    Py_CLEAR(o->source);
}

static PyArrayObject *optional_array(PyObject *obj, const char *name, int ndim, const npy_intp *shape,
                                     const char *text)
{
    if (obj == Py_None) return NULL;
    return as_float_array(obj, name, ndim, shape, text);
}

/* Check the online arguments and fill o and *data (data->online = 1) from them: a ClusterTask
 * `source` when it is not None, else `teacher` (a Layer), `teacher_theta` (its own float64
 * vector), `input` (an mt_input_kind), `scale` (GAUSSIAN, MIXTURE), `low`, `high` (UNIFORM,
 * GRID), `centres` (C, d_in) and `weights` (C,) or None (MIXTURE) and `noise_sd`. d_in, d_out:
 * what the teacher or source must map, or 0 for whatever it maps. Returns 0, or -1 with an
 * exception naming the argument (o may then hold references: online_clear releases them). */
static int online_parse(online_spec *o, mt_train_data *data, PyObject *source, PyObject *teacher,
                        PyObject *teacher_theta, int input, double scale, double low,
                        double high, PyObject *centres, PyObject *weights, double noise_sd,
                        size_t d_in, size_t d_out)
{
    char text[80];
    online_clear(o);
    if (source != Py_None) {
        if (!PyObject_TypeCheck(source, &ClusterTaskType)) {
            PyErr_Format(PyExc_TypeError, "source must be a moetheory._core.ClusterTask, got %s",
                         Py_TYPE(source)->tp_name);
            return -1;
        }
        ClusterTaskObject *S = (ClusterTaskObject *)source;
        if (cluster_ready(S) < 0) return -1;
        if (d_in && (S->src.d_in != d_in || S->src.d_out != d_out)) {
            PyErr_Format(PyExc_ValueError,
                         "source must map %zu inputs to %zu outputs like the model, got %zu -> %zu",
                         d_in, d_out, S->src.d_in, S->src.d_out);
            return -1;
        }
        Py_INCREF(source);
        o->source = source;
        data->online = 1;
        data->source = &S->src;
        return 0;
    }
    if (!PyObject_TypeCheck(teacher, &LayerType)) {
        PyErr_Format(PyExc_TypeError, "teacher must be a moetheory model (a moetheory._core.Layer),"
                     " got %s", Py_TYPE(teacher)->tp_name);
        return -1;
    }
    LayerObject *T = (LayerObject *)teacher;
    if (!PyArray_Check(teacher_theta)) {
        PyErr_Format(PyExc_TypeError, "teacher_theta must be a float64 array, got %s",
                     Py_TYPE(teacher_theta)->tp_name);
        return -1;
    }
    if (check_vector((PyArrayObject *)teacher_theta, T->layout.n_params, "teacher_theta") < 0)
        return -1;
    if (d_in && (T->cfg.d_in != d_in || T->cfg.d_out != d_out)) {
        PyErr_Format(PyExc_ValueError,
                     "teacher must map %zu inputs to %zu outputs like the model, got %zu -> %zu",
                     d_in, d_out, T->cfg.d_in, T->cfg.d_out);
        return -1;
    }
    d_in = T->cfg.d_in;
    if (!(isfinite(noise_sd) && noise_sd >= 0)) {
        PyErr_Format(PyExc_ValueError, "noise_sd must be a finite number >= 0, got %g", noise_sd);
        return -1;
    }
    if ((input == MT_INPUT_GAUSSIAN || input == MT_INPUT_MIXTURE) &&
        !(isfinite(scale) && scale >= 0)) {
        PyErr_Format(PyExc_ValueError, "scale must be a finite number >= 0, got %g", scale);
        return -1;
    }
    if ((input == MT_INPUT_UNIFORM || input == MT_INPUT_GRID) &&
        !(isfinite(low) && isfinite(high) && low < high && isfinite(high - low))) {
        PyErr_Format(PyExc_ValueError, "low and high must be finite with low < high, got %g and "
                     "%g", low, high);
        return -1;
    }
    if (input == MT_INPUT_GRID && d_in != 1) {
        PyErr_Format(PyExc_ValueError, "input 'grid' needs a teacher with d_in = 1, got %zu",
                     d_in);
        return -1;
    }
    if (input == MT_INPUT_MIXTURE) {
        npy_intp cs[2] = {-1, (npy_intp)d_in};
        snprintf(text, sizeof text, "(C, %zu)", d_in);
        o->centres = optional_array(centres, "centres", 2, cs, text);
        if (!o->centres) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "a mixture input needs centres");
            return -1;
        }
        npy_intp ws_[1] = {PyArray_DIM(o->centres, 0)};
        snprintf(text, sizeof text, "(%zd,)", (Py_ssize_t)ws_[0]);
        o->weights = optional_array(weights, "weights", 1, ws_, text);
        if (!o->weights && PyErr_Occurred()) return -1;
        if (o->weights) {
            const double *w = PyArray_DATA(o->weights);
            double sum = 0.0;
            int nonneg = 1;
            for (npy_intp c = 0; c < ws_[0]; c++) {
                nonneg &= w[c] >= 0;
                sum += w[c];
            }
            if (!nonneg || !(sum > 0) || !isfinite(sum)) {
                PyErr_SetString(PyExc_ValueError,
                                "weights must be >= 0 with a positive finite sum");
                return -1;
            }
        }
        data->centres = PyArray_DATA(o->centres);
        data->weights = o->weights ? PyArray_DATA(o->weights) : NULL;
        data->n_clusters = (size_t)ws_[0];
    }
    Py_INCREF(teacher);
    o->teacher = T;
    Py_INCREF(teacher_theta);
    o->teacher_theta = (PyArrayObject *)teacher_theta;
    o->teacher_ctx.cfg = T->cfg;
    o->teacher_ctx.ws = NULL;
    mt_moe_as_model(&o->teacher_model, &o->teacher_ctx);
    data->online = 1;
    data->input = (mt_input_kind)input;
    data->scale = scale;
    data->low = low;
    data->high = high;
    data->noise_sd = noise_sd;
    data->teacher = &o->teacher_model;
    data->teacher_theta = PyArray_DATA(o->teacher_theta);
    return 0;
}

/* ---- the Trainer type: a training loop over a Layer or a Stack, run in chunks ---- */

typedef struct {
    PyObject_HEAD
    mt_trainer *trainer;
    LayerObject *layer;                   /* strong reference */
    PyArrayObject *theta;                 /* strong reference; updated in place */
    PyArrayObject *X, *y, *lr_scale;      /* kept alive for the C loop */
    online_spec online;                   /* the online data's teacher or source */
    StackObject *stack;                   /* strong reference when training a deep stack */
    mt_moe_model_ctx ctx;
    mt_deep_model_ctx deep_ctx;
    mt_model model;
    size_t batch;
    int init_called; /* __init__ runs once: a second call would leak the first one's state */
} TrainerObject;

static void Trainer_dealloc(TrainerObject *self)
{
    mt_trainer_free(self->trainer);
    Py_XDECREF(self->layer);
    Py_XDECREF(self->stack);
    Py_XDECREF(self->theta);
    Py_XDECREF(self->X);
    Py_XDECREF(self->y);
    Py_XDECREF(self->lr_scale);
    online_clear(&self->online);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Trainer_init(TrainerObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"layer", "theta", "X", "y", "teacher", "teacher_theta", "input",
                             "scale", "centres", "weights", "noise_sd", "batch_size", "lr_scale",
                             "seed", "project", "optimizer", "lr", "momentum", "beta1", "beta2",
                             "eps", "weight_decay", "decoupled", "schedule", "step_size", "gamma",
                             "total_steps", "lr_min", "t0", "source", "low", "high",
                             "aux_switch", "aux_z", NULL};
    PyObject *layer, *theta, *X = Py_None, *y = Py_None, *teacher = Py_None;
    PyObject *teacher_theta = Py_None, *source = Py_None;
    PyObject *centres = Py_None, *weights = Py_None, *lr_scale = Py_None;
    name_arg input_arg = {"input", mt_input_names, MT_INPUT_COUNT, MT_INPUT_GAUSSIAN};
    name_arg kind_arg = {"optimizer", mt_opt_names, MT_OPT_COUNT, MT_OPT_SGD};
    name_arg schedule_arg = {"schedule", mt_schedule_names, MT_SCHEDULE_COUNT, MT_LR_CONSTANT};
    bool_arg project_arg = {"project", 0}, decoupled_arg = {"decoupled", 0};
    real_arg scale_arg = {"scale", 1.0}, noise_arg = {"noise_sd", 0.0}, lr_arg = {"lr", 1e-3};
    real_arg momentum_arg = {"momentum", 0.0}, beta1_arg = {"beta1", 0.9};
    real_arg beta2_arg = {"beta2", 0.999}, eps_arg = {"eps", 1e-8};
    real_arg wd_arg = {"weight_decay", 0.0}, gamma_arg = {"gamma", 1.0};
    real_arg lr_min_arg = {"lr_min", 0.0}, t0_arg = {"t0", 1.0};
    real_arg low_arg = {"low", -1.0}, high_arg = {"high", 1.0};
    size_arg batch_arg = {"batch_size", 0}, step_size_arg = {"step_size", 1};
    size_arg total_steps_arg = {"total_steps", 1};
    seed_arg seed_arg_ = {"seed", 0};
    real_arg aux_switch = {"aux_switch", 0.0}, aux_z = {"aux_z", 0.0};
    if (!PyArg_ParseTupleAndKeywords(
            args, kw, "OO!|OOOOO&O&OOO&O&OO&O&O&O&O&O&O&O&O&O&O&O&O&O&O&O&OO&O&O&O&", kwlist,
            &layer, &PyArray_Type, &theta, &X, &y, &teacher, &teacher_theta, conv_name,
            &input_arg, conv_real, &scale_arg, &centres, &weights, conv_real, &noise_arg,
            conv_size, &batch_arg, &lr_scale, conv_seed, &seed_arg_, conv_bool, &project_arg,
            conv_name, &kind_arg, conv_real, &lr_arg, conv_real, &momentum_arg, conv_real,
            &beta1_arg, conv_real, &beta2_arg, conv_real, &eps_arg, conv_real, &wd_arg,
            conv_bool, &decoupled_arg, conv_name, &schedule_arg, conv_size, &step_size_arg,
            conv_real, &gamma_arg, conv_size, &total_steps_arg, conv_real, &lr_min_arg,
            conv_real, &t0_arg, &source, conv_real, &low_arg, conv_real, &high_arg, conv_real,
            &aux_switch, conv_real, &aux_z))
        return -1;
    const int input = input_arg.value, project = project_arg.value;
    const double scale = scale_arg.value, noise_sd = noise_arg.value;
    const double low = low_arg.value, high = high_arg.value;
    const size_t batch = batch_arg.value;
    const uint64_t seed = seed_arg_.value;
    if (self->init_called) {
        PyErr_SetString(PyExc_RuntimeError, "Trainer is already initialised");
        return -1;
    }
    self->init_called = 1;
    LayerObject *L = NULL;
    StackObject *K = NULL;
    size_t d_in = 0, d_out = 0, P = 0;
    if (PyObject_TypeCheck(layer, &LayerType)) {
        L = (LayerObject *)layer;
        d_in = L->cfg.d_in;
        d_out = L->cfg.d_out;
        P = L->layout.n_params;
    } else if (PyObject_TypeCheck(layer, &StackType)) {
        K = (StackObject *)layer;
        d_in = stack_d_in(K);
        d_out = stack_d_out(K);
        P = stack_params(K);
    } else {
        PyErr_Format(PyExc_TypeError, "layer must be a moetheory._core.Layer or Stack, got %s",
                     Py_TYPE(layer)->tp_name);
        return -1;
    }
    if (check_theta((PyArrayObject *)theta, P) < 0) return -1;
    if (!PyArray_ISWRITEABLE((PyArrayObject *)theta)) {
        PyErr_SetString(PyExc_ValueError, "theta must be writable");
        return -1;
    }
    mt_train_data data = {0};
    char text[80];
    int online = teacher != Py_None || source != Py_None;
    if (online) {
        if ((teacher != Py_None && source != Py_None) || X != Py_None || y != Py_None) {
            PyErr_SetString(PyExc_ValueError, "give either source, or teacher, or X and y");
            return -1;
        }
        if (online_parse(&self->online, &data, source, teacher, teacher_theta, input, scale, low,
                         high, centres, weights, noise_sd, d_in, d_out) < 0)
            return -1;
        if (batch < 1) {
            PyErr_SetString(PyExc_ValueError, "online training needs batch_size >= 1");
            return -1;
        }
    } else {
        self->X = as_inputs(X, d_in);
        if (!self->X) return -1;
        npy_intp n = PyArray_DIM(self->X, 0);
        self->y = as_targets(y, (size_t)n, d_out);
        if (!self->y) return -1;
        if (batch > (size_t)n) {
            PyErr_Format(PyExc_ValueError, "batch_size must be at most n = %zd, got %zu",
                         (Py_ssize_t)n, batch);
            return -1;
        }
        data.X = PyArray_DATA(self->X);
        data.y = PyArray_DATA(self->y);
        data.n = (size_t)n;
    }
    if (lr_scale != Py_None) {
        npy_intp ps[1] = {(npy_intp)P};
        snprintf(text, sizeof text, "(%zu,)", P);
        self->lr_scale = as_float_array(lr_scale, "lr_scale", 1, ps, text);
        if (!self->lr_scale) return -1;
        const double *f = PyArray_DATA(self->lr_scale);
        for (size_t i = 0; i < P; i++)
            if (!(f[i] >= 0)) {
                PyErr_Format(PyExc_ValueError, "lr_scale must be >= 0, got %g at index %zu", f[i],
                             i);
                return -1;
            }
    }
    if (K && (aux_switch.value != 0 || aux_z.value != 0)) {
        PyErr_SetString(PyExc_ValueError, "aux_switch and aux_z apply to MoE layers only, not "
                                          "to deep stacks");
        return -1;
    }
    if (K && project) {
        PyErr_SetString(PyExc_ValueError, "project='sphere' is not available for deep stacks");
        return -1;
    }
    Py_INCREF(layer);
    Py_INCREF(theta);
    self->theta = (PyArrayObject *)theta;
    if (L) {
        self->layer = L;
        self->ctx.cfg = L->cfg;
        self->ctx.cfg.aux_switch = aux_switch.value;
        self->ctx.cfg.aux_z = aux_z.value;
        mt_why aux_why = {0};
        if (mt_moe_config_validate(&self->ctx.cfg, &aux_why) != MT_OK) {
            raise_status_why(MT_EINVAL, "Trainer", &aux_why);
            return -1;
        }
        self->ctx.project_sphere = project;
        mt_moe_as_model(&self->model, &self->ctx);
    } else {
        self->stack = K;
        self->deep_ctx.cfg = K->cfg;
        mt_deep_as_model(&self->model, &self->deep_ctx);
    }
    self->batch = batch ? batch : data.n;
    mt_opt_config opt = {.kind = (mt_opt_kind)kind_arg.value, .lr = lr_arg.value,
                         .momentum = momentum_arg.value, .beta1 = beta1_arg.value,
                         .beta2 = beta2_arg.value, .eps = eps_arg.value,
                         .weight_decay = wd_arg.value, .decoupled_decay = decoupled_arg.value,
                         .schedule = (mt_lr_schedule)schedule_arg.value,
                         .step_size = step_size_arg.value, .gamma = gamma_arg.value,
                         .total_steps = total_steps_arg.value, .lr_min = lr_min_arg.value,
                         .t0 = t0_arg.value};
    mt_why why = {0};
    if (mt_opt_config_validate(&opt, &why) != MT_OK) {
        raise_status_why(MT_EINVAL, "optimizer", &why);
        return -1;
    }
    if (self->batch > MT_MAX_SIZE) {
        PyErr_Format(PyExc_ValueError, "batch_size must be at most %zu, got %zu", MT_MAX_SIZE,
                     self->batch);
        return -1;
    }
    mt_status st = mt_trainer_alloc(&self->trainer, &self->model, &opt, &data, batch,
                                    self->lr_scale ? PyArray_DATA(self->lr_scale) : NULL, seed);
    if (st != MT_OK) {
        raise_status(st, "trainer");
        return -1;
    }
    return 0;
}

typedef struct {
    struct timespec deadline;
} chunk_budget;

/* Ends a chunk when its wall-clock budget is spent, so the caller regains control (progress,
 * callbacks, Ctrl-C) every few tens of milliseconds whatever the step cost. */
static int budget_spent(void *ctx)
{
    chunk_budget *b = ctx;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > b->deadline.tv_sec ||
           (now.tv_sec == b->deadline.tv_sec && now.tv_nsec >= b->deadline.tv_nsec);
}

/* The most a chunk runs: a year of wall time, and 2**20 steps (its losses take 8 MiB). */
#define MAX_CHUNK_SECONDS 3.15e7
#define MAX_CHUNK_STEPS ((size_t)1 << 20)

static PyObject *Trainer_run(TrainerObject *self, PyObject *args)
{
    size_arg steps_arg = {"steps", 0};
    real_arg seconds_arg = {"chunk_seconds", 0.0};
    if (!PyArg_ParseTuple(args, "O&O&", conv_size, &steps_arg, conv_real, &seconds_arg))
        return NULL;
    const double seconds = seconds_arg.value;
    /* finite: the deadline is a time_t, and casting an infinity to it is undefined */
    if (!(seconds >= 0) || !(seconds <= MAX_CHUNK_SECONDS)) {
        PyErr_Format(PyExc_ValueError, "chunk_seconds must be a number in [0, %g] (0: no limit), "
                     "got %g", MAX_CHUNK_SECONDS, seconds);
        return NULL;
    }
    /* a chunk's losses are one array: a huge step count runs as several chunks instead */
    const Py_ssize_t steps = (Py_ssize_t)(steps_arg.value < MAX_CHUNK_STEPS ? steps_arg.value
                                                                            : MAX_CHUNK_STEPS);
    size_t P = self->layer ? self->layer->layout.n_params : stack_params(self->stack);
    if (check_theta(self->theta, P) < 0) return NULL;
    npy_intp ls[1] = {steps};
    PyArrayObject *losses = (PyArrayObject *)PyArray_SimpleNew(1, ls, NPY_DOUBLE);
    if (!losses) return NULL;
    /* Claim both models before growing a workspace (see claim_workspace). */
    LayerObject *teacher = self->online.teacher;
    int *busy = self->layer ? &self->layer->busy : &self->stack->busy;
    if (acquire(busy) < 0) {
        Py_DECREF(losses);
        return NULL;
    }
    int *teacher_busy = teacher && teacher != self->layer ? &teacher->busy : NULL;
    if (teacher_busy && acquire(teacher_busy) < 0) {
        *busy = 0;
        Py_DECREF(losses);
        return NULL;
    }
    int ok = self->layer ? ensure_workspace(self->layer, self->batch) == 0
                         : stack_ensure_workspace(self->stack, self->batch) == 0;
    if (!ok || (teacher && ensure_workspace(teacher, self->batch) < 0)) {
        *busy = 0;
        if (teacher_busy) *teacher_busy = 0;
        Py_DECREF(losses);
        return NULL;
    }
    /* The workspaces may have been replaced by calls since the last chunk. */
    if (self->layer) {
        self->ctx.ws = self->layer->ws;
        self->ctx.cfg.temperature = self->layer->cfg.temperature;
    } else {
        self->deep_ctx.ws = self->stack->ws;
    }
    if (teacher) self->online.teacher_ctx.ws = teacher->ws;
    chunk_budget budget;
    clock_gettime(CLOCK_MONOTONIC, &budget.deadline);
    budget.deadline.tv_sec += (time_t)seconds;
    budget.deadline.tv_nsec += (long)((seconds - (double)(time_t)seconds) * 1e9);
    if (budget.deadline.tv_nsec >= 1000000000L) {
        budget.deadline.tv_sec++;
        budget.deadline.tv_nsec -= 1000000000L;
    }
    size_t done = 0;
    mt_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mt_trainer_run(self->trainer, PyArray_DATA(self->theta), PyArray_DATA(losses),
                        (size_t)steps, &done, seconds > 0 ? budget_spent : NULL, &budget);
    Py_END_ALLOW_THREADS
    *busy = 0;
    if (teacher) teacher->busy = 0;
    if (st != MT_OK && st != MT_EINTERRUPTED) {
        Py_DECREF(losses);
        if (st == MT_ENONFINITE) {
            PyErr_Format(PyExc_FloatingPointError,
                         "training diverged: a loss or gradient was not finite after %zu steps of "
                         "this chunk (the model holds the last finite parameters); lower the "
                         "learning rate", done);
            return NULL;
        }
        return raise_status(st, "train");
    }
    /* A copy of the completed prefix: the chunk may have stopped early on its budget. */
    PyObject *slice = PySequence_GetSlice((PyObject *)losses, 0, (Py_ssize_t)done);
    Py_DECREF(losses);
    if (!slice) return NULL;
    PyObject *copy = PyArray_NewCopy((PyArrayObject *)slice, NPY_CORDER);
    Py_DECREF(slice);
    return copy;
}

static PyObject *Trainer_get_steps(TrainerObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(mt_trainer_steps(self->trainer));
}

static PyMethodDef Trainer_methods[] = {
    {"run", (PyCFunction)Trainer_run, METH_VARARGS,
     "run(steps, chunk_seconds) -> losses: up to `steps` steps (at most 2**20 per call), "
     "stopping early once `chunk_seconds` of wall time are spent (0 = no limit); returns the "
     "losses of the steps done."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Trainer_getset[] = {
    {"steps", (getter)Trainer_get_steps, NULL, "steps completed", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject TrainerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "moetheory._core.Trainer",
    .tp_basicsize = sizeof(TrainerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A training loop in C over one Layer, run in chunks.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Trainer_init,
    .tp_dealloc = (destructor)Trainer_dealloc,
    .tp_methods = Trainer_methods,
    .tp_getset = Trainer_getset,
};

/* ---- draw: online data outside a trainer ---- */

/* draw(n, teacher=..., ..., seed=0, stream=0): n samples drawn by mt_train_data_draw from the
 * generator keyed by (seed, stream), with the Trainer's online arguments. The trainer draws
 * from (seed, stream 0) and nothing else does, so draw(n, ..., seed=s) is exactly the first
 * batch of a Trainer(..., seed=s, batch_size=n) on the same data. */
static PyObject *draw(PyObject *Py_UNUSED(m), PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"n", "teacher", "teacher_theta", "input", "scale", "low", "high",
                             "centres", "weights", "noise_sd", "source", "seed", "stream", NULL};
    PyObject *teacher = Py_None, *teacher_theta = Py_None, *centres = Py_None;
    PyObject *weights = Py_None, *source = Py_None, *result = NULL;
    PyArrayObject *X = NULL, *y = NULL;
    int busy = 0;
    size_arg n_arg = {"n", 0};
    name_arg input_arg = {"input", mt_input_names, MT_INPUT_COUNT, MT_INPUT_GAUSSIAN};
    real_arg scale = {"scale", 1.0}, low = {"low", -1.0}, high = {"high", 1.0};
    real_arg noise_sd = {"noise_sd", 0.0};
    seed_arg seed = {"seed", 0}, stream = {"stream", 0};
    online_spec o = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|OOO&O&O&O&OOO&OO&O&", kwlist, conv_size,
                                     &n_arg, &teacher, &teacher_theta, conv_name, &input_arg,
                                     conv_real, &scale, conv_real, &low, conv_real, &high,
                                     &centres, &weights, conv_real, &noise_sd, &source, conv_seed,
                                     &seed, conv_seed, &stream))
        return NULL;
    if (n_arg.value < 1 || n_arg.value > MT_MAX_SIZE) {
        PyErr_Format(PyExc_ValueError, "n must be an integer in [1, %zu], got %zu", MT_MAX_SIZE,
                     n_arg.value);
        return NULL;
    }
    const npy_intp n = (npy_intp)n_arg.value;
    if ((teacher == Py_None) == (source == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "draw needs exactly one of teacher and source");
        return NULL;
    }
    mt_train_data data = {0};
    if (online_parse(&o, &data, source, teacher, teacher_theta, input_arg.value, scale.value,
                     low.value, high.value, centres, weights, noise_sd.value, 0, 0) < 0)
        goto done;
    size_t d_in = o.source ? data.source->d_in : data.teacher->d_in;
    size_t d_out = o.source ? data.source->d_out : data.teacher->d_out;
    npy_intp xs[2] = {n, (npy_intp)d_in}, ys[2] = {n, (npy_intp)d_out};
    X = (PyArrayObject *)PyArray_SimpleNew(2, xs, NPY_DOUBLE);
    y = (PyArrayObject *)PyArray_SimpleNew(2, ys, NPY_DOUBLE);
    if (!X || !y) goto done;
    if (o.teacher) {
        /* claimed before the workspace may be replaced: another thread may be using it */
        if (acquire(&o.teacher->busy) < 0) goto done;
        busy = 1;
        if (ensure_workspace(o.teacher, (size_t)n) < 0) goto done;
        o.teacher_ctx.ws = o.teacher->ws;
    }
    mt_rng r;
    mt_rng_init(&r, seed.value, stream.value);
    mt_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mt_train_data_draw(PyArray_DATA(X), PyArray_DATA(y), &r, &data, (size_t)n, d_in, d_out);
    Py_END_ALLOW_THREADS
    if (st != MT_OK) {
        raise_status(st, "draw");
        goto done;
    }
    result = PyTuple_Pack(2, (PyObject *)X, (PyObject *)y);
done:
    if (busy) o.teacher->busy = 0;
    online_clear(&o);
    Py_XDECREF(X);
    Py_XDECREF(y);
    return result;
}

/* ---- EM ---- */
/* em_fit, em_loglik and em_sample: the softmax-gated Gaussian MoE EM of csrc/mt_em.h. The flat
 * parameter vector is mt_em.h's: beta0 (K,), beta1 (K, d), a (K, d), b (K,), [c (K,)],
 * sigma2 (K,). Arguments are checked here so that errors name the argument; sizes and options
 * by the core's own checks (mt_em_check_sizes, mt_em_options_validate). */

/* Polled by mt_em_fit without the GIL every MT_EM_POLL_EVERY iterations: takes the GIL and
 * runs the Python signal handlers; a raised exception (KeyboardInterrupt) stays set in this
 * thread and stops the fit. Outside the main thread PyErr_CheckSignals does nothing. */
static int em_poll_signals(void *Py_UNUSED(ctx))
{
    PyGILState_STATE g = PyGILState_Ensure();
    int stop = PyErr_CheckSignals() != 0;
    PyGILState_Release(g);
    return stop;
}

/* The model arguments every EM call takes, as converters fill them. */
typedef struct {
    size_arg K;
    name_arg expert, act;
    bool_arg outer_scale;
} em_model_args;

#define EM_MODEL_ARGS_INIT                                                                     \
    {{"K", 0}, {"expert", mt_em_expert_names, MT_EM_EXPERT_COUNT, MT_EM_LINEAR},               \
     {"act", mt_em_act_names, MT_EM_ACT_COUNT, MT_EM_SIGMOID}, {"outer_scale", 0}}

/* Shared checks of (theta, X, y) for the model args m: fills opt's model fields and returns 0,
 * or sets an exception and returns -1. *theta_out, *X_out, *y_out: new references.
 * y_obj == NULL (em_sample: no data y, y is drawn): *y_out stays NULL and sigma2 may be 0. */
static int em_parse(PyObject *theta_obj, const char *theta_name, PyObject *X_obj,
                    PyObject *y_obj, const em_model_args *m, mt_em_options *opt,
                    PyArrayObject **theta_out, PyArrayObject **X_out, PyArrayObject **y_out)
{
    *theta_out = *X_out = *y_out = NULL;
    opt->expert = (mt_em_expert)m->expert.value;
    opt->act = (mt_em_act)m->act.value;
    opt->outer_scale = m->outer_scale.value;
    mt_why why = {0};
    if (mt_em_options_validate(opt, &why) != MT_OK) return raise_status_why(MT_EINVAL, "", &why), -1;
    npy_intp xs[2] = {-1, -1};
    *X_out = as_float_array(X_obj, "X", 2, xs, "(n, d)");
    if (!*X_out) return -1;
    const size_t n = (size_t)PyArray_DIM(*X_out, 0), d = (size_t)PyArray_DIM(*X_out, 1);
    const size_t K = m->K.value;
    /* before any size is computed from d and K */
    if (mt_em_check_sizes(n, d, K, &why) != MT_OK)
        return raise_status_why(MT_EINVAL, "", &why), -1;
    char text[80];
    npy_intp ys[1] = {(npy_intp)n};
    snprintf(text, sizeof text, "(%zu,)", n);
    if (y_obj) {
        *y_out = as_float_array(y_obj, "y", 1, ys, text);
        if (!*y_out) return -1;
    }
    const int outer_scale = opt->outer_scale;
    size_t P = mt_em_params_size(d, K, outer_scale);
    npy_intp ts[1] = {(npy_intp)P};
    snprintf(text, sizeof text, "(%zu,) = (K (2 d + 3)%s,)", P, outer_scale ? " + K" : "");
    *theta_out = as_float_array(theta_obj, theta_name, 1, ts, text);
    if (!*theta_out) return -1;
    mt_em_params p;
    mt_em_params_view(&p, PyArray_DATA(*theta_out), d, K, outer_scale);
    for (size_t k = 0; k < K; k++) {
        if (!(p.sigma2[k] > 0 || (!y_obj && p.sigma2[k] == 0))) {
            PyErr_Format(PyExc_ValueError, "%s: sigma2[%zu] must be %s, got %g", theta_name, k,
                         y_obj ? "> 0" : ">= 0", p.sigma2[k]);
            return -1;
        }
    }
    int ref_ok = p.beta0[K - 1] == 0.0;
    for (size_t j = 0; j < d; j++) ref_ok = ref_ok && p.beta1[(K - 1) * d + j] == 0.0;
    if (!ref_ok) {
        PyErr_Format(PyExc_ValueError, "%s: the reference gate row (beta0[K-1], beta1[K-1]) "
                     "must be zero", theta_name);
        return -1;
    }
    return 0;
}

/* A count option of mt_em_options (an int in C). */
static int em_count(int *out, const size_arg *a)
{
    if (a->value > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "%s must be at most %d, got %zu", a->name, INT_MAX,
                     a->value);
        return -1;
    }
    *out = (int)a->value;
    return 0;
}

static PyObject *em_fit(PyObject *Py_UNUSED(m), PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"theta", "X", "y", "K", "expert", "act", "outer_scale", "max_iter",
                             "tol", "gate_steps", "expert_steps", "theta_name", NULL};
    PyObject *theta_obj, *X_obj, *y_obj, *result = NULL;
    PyArrayObject *theta = NULL, *X = NULL, *y = NULL, *fitted = NULL, *trace = NULL;
    PyArrayObject *flags = NULL;
    PyObject *trace_done = NULL;
    mt_em_workspace *ws = NULL;
    em_model_args ma = EM_MODEL_ARGS_INIT;
    size_arg max_iter = {"max_iter", 2000}, gate_steps = {"gate_steps", MT_EM_GATE_STEPS};
    size_arg expert_steps = {"expert_steps", MT_EM_EXPERT_STEPS};
    real_arg tol = {"tol", 1e-6};
    const char *theta_name = "theta";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO&|O&O&O&O&O&O&O&s", kwlist, &theta_obj,
                                     &X_obj, &y_obj, conv_size, &ma.K, conv_name, &ma.expert,
                                     conv_name, &ma.act, conv_bool, &ma.outer_scale, conv_size,
                                     &max_iter, conv_real, &tol, conv_size, &gate_steps,
                                     conv_size, &expert_steps, &theta_name))
        return NULL;
    mt_em_options opt;
    mt_em_options_default(&opt);
    if (em_count(&opt.max_iter, &max_iter) < 0 || em_count(&opt.gate_steps, &gate_steps) < 0 ||
        em_count(&opt.expert_steps, &expert_steps) < 0)
        return NULL;
    opt.tol = tol.value;
    if (em_parse(theta_obj, theta_name, X_obj, y_obj, &ma, &opt, &theta, &X, &y) < 0) goto done;
    opt.interrupt = em_poll_signals;
    const size_t n = (size_t)PyArray_DIM(X, 0), d = (size_t)PyArray_DIM(X, 1), K = ma.K.value;
    /* the fit works on a copy: the caller's theta is never written */
    fitted = (PyArrayObject *)PyArray_NewCopy(theta, NPY_CORDER);
    npy_intp trs[1] = {(npy_intp)opt.max_iter}, fs[1] = {(npy_intp)K};
    trace = (PyArrayObject *)PyArray_SimpleNew(1, trs, NPY_DOUBLE);
    flags = (PyArrayObject *)PyArray_SimpleNew(1, fs, NPY_INT);
    if (!fitted || !trace || !flags) goto done;
    mt_status st = mt_em_workspace_alloc(&ws, n, d, K);
    if (st != MT_OK) {
        raise_status(st, "em_fit workspace");
        goto done;
    }
    mt_em_params p;
    mt_em_params_view(&p, PyArray_DATA(fitted), d, K, opt.outer_scale);
    int n_iter = 0, converged = 0;
    Py_BEGIN_ALLOW_THREADS
    st = mt_em_fit(&p, PyArray_DATA(trace), &n_iter, &converged, PyArray_DATA(X),
                   PyArray_DATA(y), n, d, K, &opt, ws);
    if (st == MT_OK) mt_em_degeneracy(PyArray_DATA(flags), &p, d, K, ws);
    Py_END_ALLOW_THREADS
    if (st != MT_OK) {
        if (st == MT_EINTERRUPTED && PyErr_Occurred()) goto done; /* the handler's exception */
        raise_status(st, "em_fit");
        goto done;
    }
    trace_done = PySequence_GetSlice((PyObject *)trace, 0, (Py_ssize_t)n_iter);
    if (!trace_done) goto done;
    result = Py_BuildValue("(NNiON)", (PyObject *)fitted,
                           PyArray_NewCopy((PyArrayObject *)trace_done, NPY_CORDER), n_iter,
                           converged ? Py_True : Py_False,
                           PyArray_Cast(flags, NPY_INT64));
    if (result) fitted = NULL; /* the tuple owns it now */
done:
    mt_em_workspace_free(ws);
    Py_XDECREF(theta);
    Py_XDECREF(X);
    Py_XDECREF(y);
    Py_XDECREF(fitted);
    Py_XDECREF(trace);
    Py_XDECREF(flags);
    Py_XDECREF(trace_done);
    return result;
}

static PyObject *em_loglik(PyObject *Py_UNUSED(m), PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"theta", "X", "y", "K", "expert", "act", "outer_scale", NULL};
    PyObject *theta_obj, *X_obj, *y_obj, *result = NULL;
    PyArrayObject *theta = NULL, *X = NULL, *y = NULL, *resp = NULL;
    mt_em_workspace *ws = NULL;
    em_model_args ma = EM_MODEL_ARGS_INIT;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO&|O&O&O&", kwlist, &theta_obj, &X_obj,
                                     &y_obj, conv_size, &ma.K, conv_name, &ma.expert, conv_name,
                                     &ma.act, conv_bool, &ma.outer_scale))
        return NULL;
    mt_em_options opt;
    mt_em_options_default(&opt);
    if (em_parse(theta_obj, "theta", X_obj, y_obj, &ma, &opt, &theta, &X, &y) < 0) goto done;
    const size_t n = (size_t)PyArray_DIM(X, 0), d = (size_t)PyArray_DIM(X, 1), K = ma.K.value;
    npy_intp rs[2] = {(npy_intp)n, (npy_intp)K};
    resp = (PyArrayObject *)PyArray_SimpleNew(2, rs, NPY_DOUBLE);
    if (!resp) goto done;
    mt_status st = mt_em_workspace_alloc(&ws, n, d, K);
    if (st != MT_OK) {
        raise_status(st, "em_loglik workspace");
        goto done;
    }
    mt_em_params p;
    mt_em_params_view(&p, PyArray_DATA(theta), d, K, opt.outer_scale);
    double ll = 0.0;
    Py_BEGIN_ALLOW_THREADS
    st = mt_em_loglik(&ll, PyArray_DATA(resp), &p, PyArray_DATA(X), PyArray_DATA(y), n, d, K,
                      &opt, ws);
    Py_END_ALLOW_THREADS
    if (st != MT_OK) {
        raise_status(st, "em_loglik");
        goto done;
    }
    result = Py_BuildValue("(dO)", ll, (PyObject *)resp);
done:
    mt_em_workspace_free(ws);
    Py_XDECREF(theta);
    Py_XDECREF(X);
    Py_XDECREF(y);
    Py_XDECREF(resp);
    return result;
}

static PyObject *em_sample(PyObject *Py_UNUSED(m), PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"theta", "X", "K", "expert", "act", "outer_scale", "seed", "stream",
                             NULL};
    PyObject *theta_obj, *X_obj;
    PyArrayObject *theta = NULL, *X = NULL, *no_y = NULL, *y = NULL;
    em_model_args ma = EM_MODEL_ARGS_INIT;
    seed_arg seed = {"seed", 0}, stream = {"stream", 0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO&|O&O&O&O&O&", kwlist, &theta_obj, &X_obj,
                                     conv_size, &ma.K, conv_name, &ma.expert, conv_name, &ma.act,
                                     conv_bool, &ma.outer_scale, conv_seed, &seed, conv_seed,
                                     &stream))
        return NULL;
    mt_em_options opt;
    mt_em_options_default(&opt);
    if (em_parse(theta_obj, "theta", X_obj, NULL, &ma, &opt, &theta, &X, &no_y) < 0) goto done;
    const size_t n = (size_t)PyArray_DIM(X, 0), d = (size_t)PyArray_DIM(X, 1), K = ma.K.value;
    npy_intp ys[1] = {(npy_intp)n};
    y = (PyArrayObject *)PyArray_SimpleNew(1, ys, NPY_DOUBLE);
    if (!y) goto done;
    mt_em_params p;
    mt_em_params_view(&p, PyArray_DATA(theta), d, K, opt.outer_scale);
    mt_rng r;
    mt_rng_init(&r, seed.value, stream.value);
    mt_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mt_em_sample(PyArray_DATA(y), &r, &p, &opt, PyArray_DATA(X), n, d, K);
    Py_END_ALLOW_THREADS
    if (st != MT_OK) {
        raise_status(st, "em_sample");
        Py_CLEAR(y);
    }
done:
    Py_XDECREF(theta);
    Py_XDECREF(X);
    Py_XDECREF(no_y);
    return (PyObject *)y;
}
/* ---- end EM ---- */

/* ---- module functions ---- */

static PyObject *set_num_threads(PyObject *Py_UNUSED(m), PyObject *arg)
{
    size_arg n = {"n_threads", 0};
    if (!conv_size(arg, &n)) return NULL;
    if (n.value < 1 || n.value > 1024) {
        PyErr_Format(PyExc_ValueError, "n_threads must be an integer in [1, 1024], got %zu",
                     n.value);
        return NULL;
    }
    mt_set_threads((int)n.value);
    Py_RETURN_NONE;
}

static PyObject *get_num_threads(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(mt_threads());
}

static PyMethodDef module_methods[] = {
    {"check_int", (PyCFunction)(void (*)(void))check_int, METH_VARARGS | METH_KEYWORDS,
     "check_int(value, name, low=None, high=None) -> int: value as an int (a Python or NumPy "
     "integer, not a bool, float or string) in [low, high], else TypeError or ValueError "
     "naming `name`."},
    {"check_real", check_real, METH_VARARGS,
     "check_real(value, name) -> float: a Python or NumPy real number (not a bool or string), "
     "else TypeError naming `name`; NaN and infinities pass (ranges are the user's rule)."},
    {"check_bool", check_bool, METH_VARARGS,
     "check_bool(value, name) -> bool: True, False, numpy.True_ or numpy.False_, else "
     "TypeError naming `name`."},
    {"check_seed", check_seed, METH_VARARGS,
     "check_seed(value, name) -> int: an integer in [0, 2**64) (the one seed rule), else "
     "TypeError or ValueError naming `name`."},
    {"set_num_threads", set_num_threads, METH_O,
     "Set the number of threads the core computes with (row blocks of a batch, and BLAS)."},
    {"get_num_threads", get_num_threads, METH_NOARGS,
     "The number of threads the core computes with."},
    {"draw", (PyCFunction)(void (*)(void))draw, METH_VARARGS | METH_KEYWORDS,
     "draw(n, teacher=None, teacher_theta=None, input=0, scale=1.0, low=-1.0, high=1.0, "
     "centres=None, weights=None, noise_sd=0.0, source=None, seed=0, stream=0) -> "
     "(X (n, d_in), y (n, d_out)): n online samples as a Trainer draws them (the Trainer's "
     "online arguments), from the generator keyed by (seed, stream); stream 0 is the trainer's, "
     "so this is the first batch of a Trainer with this seed and batch_size n "
     "(csrc/mt_train.h, mt_train_data_draw, gives the draw order)."},
    {"em_fit", (PyCFunction)(void (*)(void))em_fit, METH_VARARGS | METH_KEYWORDS,
     "em_fit(theta, X, y, K, expert='linear', act='sigmoid', outer_scale=False, max_iter=2000, "
     "tol=1e-6, gate_steps=5, expert_steps=5, theta_name='theta') -> (theta_fitted, "
     "trace (n_iter,), n_iter, converged, flags (K,) int64): EM for the softmax-gated Gaussian "
     "MoE (csrc/mt_em.h); theta is not modified; flags are each component's degeneracy bits "
     "(1: variance at the floor, 2: empty), and a degenerate fit is not converged. theta_name: "
     "what errors call theta."},
    {"em_loglik", (PyCFunction)(void (*)(void))em_loglik, METH_VARARGS | METH_KEYWORDS,
     "em_loglik(theta, X, y, K, expert='linear', act='sigmoid', outer_scale=False) -> "
     "(loglik, resp (n, K)): the summed log-likelihood and the responsibilities."},
    {"em_sample", (PyCFunction)(void (*)(void))em_sample, METH_VARARGS | METH_KEYWORDS,
     "em_sample(theta, X, K, expert='linear', act='sigmoid', outer_scale=False, seed=0, "
     "stream=0) -> y (n,): y drawn from the model at X from the generator keyed by "
     "(seed, stream); sigma2 = 0 is allowed (draw order: csrc/mt_em.h, mt_em_sample)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "moetheory._core",
                                        "The C core of moetheory.", -1, module_methods,
                                        NULL, NULL, NULL, NULL};

/* moetheory/_bind_gmoe.c: registers the Gaussian-gated MoE's functions on the module */
int mt_bind_gmoe(PyObject *module);

static PyObject *names_tuple(const char *const *names, size_t count)
{
    PyObject *t = PyTuple_New((Py_ssize_t)count);
    if (!t) return NULL;
    for (size_t i = 0; i < count; i++) {
        PyObject *name = PyUnicode_FromString(names[i]);
        if (!name) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, (Py_ssize_t)i, name);
    }
    return t;
}

/* module.name = value, stealing value (NULL: the error of making it). */
static int add_object(PyObject *m, const char *name, PyObject *value)
{
    if (!value || PyModule_AddObject(m, name, value) < 0) {
        Py_XDECREF(value);
        return -1;
    }
    return 0;
}

PyMODINIT_FUNC PyInit__core(void)
{
    import_array();
    /* the default thread count, fixed now: BLAS's count is the cores it found until some
     * call's parallel section changes it */
    mt_threads_init();
    if (PyType_Ready(&LayerType) < 0 || PyType_Ready(&TrainerType) < 0 ||
        PyType_Ready(&StackType) < 0 || PyType_Ready(&ClusterTaskType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (!m) return NULL;
    Py_INCREF(&LayerType);
    Py_INCREF(&TrainerType);
    Py_INCREF(&ClusterTaskType);
    Py_INCREF(&StackType);
    if (add_object(m, "Layer", (PyObject *)&LayerType) < 0 ||
        add_object(m, "Stack", (PyObject *)&StackType) < 0 ||
        add_object(m, "Trainer", (PyObject *)&TrainerType) < 0 ||
        add_object(m, "ClusterTask", (PyObject *)&ClusterTaskType) < 0 ||
        add_object(m, "ACTIVATIONS", names_tuple(mt_act_names, MT_ACT_COUNT)) < 0 ||
        add_object(m, "GATES", names_tuple(mt_gate_names, MT_GATE_COUNT)) < 0 ||
        add_object(m, "EXPERTS", names_tuple(mt_expert_names, MT_EXPERT_COUNT)) < 0 ||
        add_object(m, "INPUTS", names_tuple(mt_input_names, MT_INPUT_COUNT)) < 0 ||
        add_object(m, "OPTIMIZERS", names_tuple(mt_opt_names, MT_OPT_COUNT)) < 0 ||
        add_object(m, "SCHEDULES", names_tuple(mt_schedule_names, MT_SCHEDULE_COUNT)) < 0 ||
        add_object(m, "EM_EXPERTS", names_tuple(mt_em_expert_names, MT_EM_EXPERT_COUNT)) < 0 ||
        add_object(m, "EM_ACTIVATIONS", names_tuple(mt_em_act_names, MT_EM_ACT_COUNT)) < 0 ||
        add_object(m, "MAX_SIZE", PyLong_FromSize_t(MT_MAX_SIZE)) < 0 ||
        add_object(m, "EM_MAX_DIM", PyLong_FromLong(MT_EM_MAX_DIM)) < 0 ||
        mt_bind_gmoe(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
