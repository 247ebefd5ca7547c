/* The binding's arguments: the status table, the scalar converters (one rule per kind) and the
 * array checks that every other binding file uses (declared in _bind.h), and check_int,
 * check_real, check_bool and check_seed, the same rules for the Python layer. */
#include "_bind.h"

#include <math.h>
#include <string.h>

#include "mt_size.h"

/* ---- status codes to exceptions: the one table ---- */

PyObject *bind_raise(mt_status st, const char *what, const mt_why *why)
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

int bind_poll_signals(void *Py_UNUSED(ctx))
{
    PyGILState_STATE g = PyGILState_Ensure();
    int stop = PyErr_CheckSignals() != 0;
    PyGILState_Release(g);
    return stop;
}

/* ---- scalar converters ---- */

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

int conv_size(PyObject *obj, void *out)
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

int conv_opt_size(PyObject *obj, void *out)
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

int conv_seed(PyObject *obj, void *out)
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

int conv_real(PyObject *obj, void *out)
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

int conv_opt_real(PyObject *obj, void *out)
{
    opt_real_arg *a = out;
    a->given = obj != Py_None;
    if (!a->given) return 1;
    real_arg r = {a->name, 0.0};
    if (!conv_real(obj, &r)) return 0;
    a->value = r.value;
    return 1;
}

int conv_bool(PyObject *obj, void *out)
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

int conv_name(PyObject *obj, void *out)
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

int bind_add_type(PyObject *module, const char *name, PyTypeObject *type)
{
    if (PyType_Ready(type) < 0) return -1;
    Py_INCREF(type);
    if (PyModule_AddObject(module, name, (PyObject *)type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

/* ---- arrays ---- */

/* Index of the first NaN or infinity of p[0..n), or n. Blocks are screened by an integer test
 * on the exponent bits, which the compiler vectorises (isfinite in a loop with an early exit is
 * not); only a block that fails is searched. On small models this check of X was 4% of a
 * loss_and_grad call. */
size_t bind_first_non_finite(const double *p, size_t n)
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

PyArrayObject *bind_float_array(PyObject *obj, const char *name, int ndim, const npy_intp *shape,
                                const char *shape_text)
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
    for (int i = 0; i < ndim; i++)
        if ((size_t)PyArray_DIM(in, i) > MT_MAX_SIZE) { /* the core's BLAS takes int sizes */
            PyErr_Format(PyExc_ValueError, "%s: every size must be at most %zu, got %zd on axis "
                         "%d", name, MT_MAX_SIZE, (Py_ssize_t)PyArray_DIM(in, i), i);
            goto fail;
        }
    out = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)in, NPY_DOUBLE,
                                            NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    if (!out) goto fail;
    const double *p = PyArray_DATA(out);
    size_t size = (size_t)PyArray_SIZE(out), i = bind_first_non_finite(p, size);
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
        return 2; /* bind_float_array reports the problem */
    }
    int ndim = PyArray_NDIM(arr) == 1 ? 1 : 2;
    Py_DECREF(arr);
    return ndim;
}

/* X as the model's inputs: (n, d_in), float64, finite, non-empty. New reference or NULL. */
PyArrayObject *bind_inputs(PyObject *obj, size_t d_in)
{
    char text[64];
    snprintf(text, sizeof text, "(n, %zu)", d_in);
    npy_intp shape[2] = {-1, (npy_intp)d_in};
    return bind_float_array(obj, "X", 2, shape, text);
}

/* y as the targets of n rows: (n, d_out), or (n,) when d_out == 1. New reference or NULL. */
PyArrayObject *bind_targets(PyObject *obj, size_t n, size_t d_out)
{
    char text[80];
    if (d_out == 1) snprintf(text, sizeof text, "(%zu,) or (%zu, 1)", n, n);
    else snprintf(text, sizeof text, "(%zu, %zu)", n, d_out);
    npy_intp shape[2] = {(npy_intp)n, (npy_intp)d_out};
    return bind_float_array(obj, "y", target_ndim(obj, d_out), shape, text);
}

/* A parameter vector must be exactly the model's own: float64, 1-D, C-contiguous, length P,
 * finite. `name` is the argument named in the error. */
int bind_check_vector(PyArrayObject *theta, size_t P, const char *name)
{
    if (!PyArray_Check(theta) || PyArray_TYPE(theta) != NPY_DOUBLE || PyArray_NDIM(theta) != 1 ||
        !PyArray_IS_C_CONTIGUOUS(theta) || (size_t)PyArray_DIM(theta, 0) != P) {
        PyErr_Format(PyExc_ValueError,
                     "%s must be a C-contiguous float64 vector of length %zu", name, P);
        return -1;
    }
    size_t i = bind_first_non_finite(PyArray_DATA(theta), P);
    if (i < P) {
        PyErr_Format(PyExc_ValueError, "%s must be finite, found a NaN or infinity at index %zu",
                     name, i);
        return -1;
    }
    return 0;
}

int bind_check_result(const char *what, const double *values, size_t count)
{
    if (bind_first_non_finite(values, count) == count) return 0;
    PyErr_Format(PyExc_FloatingPointError, "%s: the result overflowed to inf or NaN for these "
                 "inputs (finite, but too large for float64 arithmetic: rescale X)", what);
    return -1;
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

static PyMethodDef args_methods[] = {
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
    {NULL, NULL, 0, NULL}};

int mt_bind_args(PyObject *module)
{
    if (PyModule_AddFunctions(module, args_methods) < 0) return -1;
    return PyModule_AddObject(module, "MAX_SIZE", PyLong_FromSize_t(MT_MAX_SIZE));
}
