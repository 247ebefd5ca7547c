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

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "mt_moe.h"
#include "mt_train.h"
#include "mt_deep.h"
#include "mt_em.h"
#include "mt_cluster.h"
#include "mt_parallel.h"

#include <time.h>

/* ---- names of the C enums, in enum order (the Python layer looks names up here) ---- */

static const char *const ACT_NAMES[] = {"identity", "relu", "leaky_relu", "gelu", "tanh",
                                        "sigmoid", "he1", "he2", "he3", "he4", "he5", "he6",
                                        "he7", "he8"};
static const char *const GATE_NAMES[] = {"softmax", "topk", "temperature", "hierarchical",
                                         "sigmoid"};
static const char *const EXPERT_NAMES[] = {"ffn", "linear"};
static const char *const INPUT_NAMES[] = {"gaussian", "mixture", "uniform", "grid"};

/* ---- status codes to exceptions: the one table ---- */

static PyObject *raise_status(mt_status st, const char *what)
{
    switch (st) {
    case MT_OK: return NULL;
    case MT_EINVAL: PyErr_Format(PyExc_ValueError, "%s: invalid argument", what); break;
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

/* ---- the Layer type: one MoE layer's configuration and its workspace ---- */

typedef struct {
    PyObject_HEAD
    mt_moe_config cfg;
    mt_moe_layout layout;
    mt_moe_workspace *ws;
    int busy; /* set while a call runs without the GIL: a second thread gets an error, not a race */
} LayerObject;

static int lookup(const char *const *names, size_t count, const char *name)
{
    for (size_t i = 0; i < count; i++)
        if (!strcmp(names[i], name)) return (int)i;
    return -1;
}

static int Layer_init(LayerObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"d_in", "n_experts", "expert", "hidden", "activation", "gate",
                             "top_k", "temperature", "gate_activation", "groups", "d_out",
                             "bias", "normalize", "depth", NULL};
    Py_ssize_t d_in, E, hidden, top_k, groups, d_out, depth = 1;
    const char *expert, *act, *gate, *gate_act;
    double temperature;
    int bias, normalize = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "nnsnssndsnnp|pn", kwlist, &d_in, &E, &expert,
                                     &hidden, &act, &gate, &top_k, &temperature, &gate_act,
                                     &groups, &d_out, &bias, &normalize, &depth))
        return -1;
    int ie = lookup(EXPERT_NAMES, 2, expert), ia = lookup(ACT_NAMES, MT_ACT_COUNT, act);
    int ig = lookup(GATE_NAMES, 5, gate), iga = lookup(ACT_NAMES, MT_ACT_COUNT, gate_act);
    if (ie < 0 || ia < 0 || ig < 0 || iga < 0 || d_in < 1 || E < 1 || hidden < 0 || top_k < 0 ||
        groups < 0 || d_out < 1) {
        PyErr_SetString(PyExc_ValueError, "invalid MoE configuration (names or sizes)");
        return -1;
    }
    if (depth < 1) {
        PyErr_Format(PyExc_ValueError, "depth must be a positive integer (>= 1), got %zd", depth);
        return -1;
    }
    if (ie == MT_EXPERT_LINEAR && depth != 1) {
        PyErr_Format(PyExc_ValueError, "depth applies to expert='ffn' only; linear experts "
                     "need depth=1, got %zd", depth);
        return -1;
    }
    mt_moe_config c = {
        .d_in = (size_t)d_in, .n_experts = (size_t)E, .hidden = (size_t)hidden,
        .depth = (size_t)depth, .d_out = (size_t)d_out, .groups = (size_t)groups,
        .top_k = (size_t)top_k,
        .gate = (mt_gate_kind)ig, .expert = (mt_expert_kind)ie, .activation = (mt_act)ia,
        .gate_activation = (mt_act)iga, .temperature = temperature, .bias = bias,
        .normalize = normalize};
    if (mt_moe_config_check(&c) != MT_OK) {
        PyErr_SetString(PyExc_ValueError, "invalid MoE configuration");
        return -1;
    }
    mt_moe_workspace_free(self->ws);
    self->ws = NULL;
    self->cfg = c;
    mt_moe_layout_of(&self->layout, &c);
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
    unsigned long long seed, stream = 0;
    if (!PyArg_ParseTuple(args, "O!K|K", &PyArray_Type, &theta, &seed, &stream)) return NULL;
    if (PyArray_TYPE(theta) != NPY_DOUBLE || PyArray_NDIM(theta) != 1 ||
        !PyArray_IS_C_CONTIGUOUS(theta) || !PyArray_ISWRITEABLE(theta) ||
        (size_t)PyArray_DIM(theta, 0) != self->layout.n_params) {
        PyErr_Format(PyExc_ValueError, "theta must be a writable float64 vector of length %zu",
                     self->layout.n_params);
        return NULL;
    }
    mt_status st = mt_moe_init(PyArray_DATA(theta), &self->cfg, seed, stream);
    if (st != MT_OK) return raise_status(st, "init");
    Py_RETURN_NONE;
}

static PyObject *Layer_set_aux(LayerObject *self, PyObject *args)
{
    double sw, z;
    if (!PyArg_ParseTuple(args, "dd", &sw, &z)) return NULL;
    if (!(sw >= 0) || !isfinite(sw) || !(z >= 0) || !isfinite(z)) {
        PyErr_Format(PyExc_ValueError,
                     "aux_switch and aux_z must be finite numbers >= 0, got %g and %g", sw, z);
        return NULL;
    }
    self->cfg.aux_switch = sw;
    self->cfg.aux_z = z;
    Py_RETURN_NONE;
}

static PyObject *Layer_set_temperature(LayerObject *self, PyObject *arg)
{
    double t = PyFloat_AsDouble(arg);
    if (t == -1.0 && PyErr_Occurred()) return NULL;
    if (!(t > 0) || !isfinite(t)) {
        PyErr_Format(PyExc_ValueError, "temperature must be a finite number > 0, got %R", arg);
        return NULL;
    }
    self->cfg.temperature = t;
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
    if (!PyArg_ParseTuple(args, "O!OO", &PyArray_Type, &theta_obj, &X_obj, &y_obj)) return NULL;
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
                                  PyArray_DATA(y), n, &self->cfg, self->ws);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (st != MT_OK) {
        raise_status(st, "loss_and_grad");
        goto done;
    }
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
    {"set_aux", (PyCFunction)Layer_set_aux, METH_VARARGS,
     "set_aux(switch, z): coefficients of the auxiliary router losses (0 = off)."},
    {"set_temperature", (PyCFunction)Layer_set_temperature, METH_O,
     "set_temperature(t): the temperature gate's temperature, t > 0."},
    {"forward", (PyCFunction)Layer_forward, METH_VARARGS,
     "forward(theta, X) -> (out (n, d_out), gates (n, E))."},
    {"loss_and_grad", (PyCFunction)Layer_loss_and_grad, METH_VARARGS,
     "loss_and_grad(theta, X, y) -> (mse, grad (P,))."},
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
    double rho, noise_sd = 0.0;
    char text[80];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOd|dOOO", kwlist, &centres, &w, &coef, &rho,
                                     &noise_sd, &w_g, &s, &g_coef))
        return -1;
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
    Py_ssize_t n;
    unsigned long long seed, stream = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "nK|K", kwlist, &n, &seed, &stream)) return NULL;
    if (cluster_ready(self) < 0) return NULL;
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "n must be >= 0, got %zd", n);
        return NULL;
    }
    npy_intp xs[2] = {n, (npy_intp)self->task.d}, ys[1] = {n};
    PyArrayObject *X = (PyArrayObject *)PyArray_SimpleNew(2, xs, NPY_DOUBLE);
    PyArrayObject *y = (PyArrayObject *)PyArray_SimpleNew(1, ys, NPY_DOUBLE);
    PyArrayObject *c = (PyArrayObject *)PyArray_SimpleNew(1, ys, NPY_INT);
    PyObject *result = NULL, *c64 = NULL;
    if (!X || !y || !c) goto done;
    mt_rng r;
    mt_rng_init(&r, (uint64_t)seed, (uint64_t)stream);
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
    if (mt_deep_config_check(&cfg) != MT_OK) {
        PyErr_SetString(PyExc_ValueError, "invalid deep MoE configuration");
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
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "O!K", &PyArray_Type, &theta, &seed)) return NULL;
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
        mt_status st = mt_moe_init(p + self->offsets[l], &self->cfg.layer[l], seed, l);
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
    if (input < 0 || input > MT_INPUT_GRID) {
        PyErr_Format(PyExc_ValueError, "input must be 0 (gaussian), 1 (mixture), 2 (uniform) or "
                     "3 (grid), got %d", input);
        return -1;
    }
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
        PyErr_Format(PyExc_ValueError, "input 3 (grid) needs a teacher with d_in = 1, got %zu",
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
                             "total_steps", "lr_min", "t0", "source", "low", "high", NULL};
    PyObject *layer, *theta, *X = Py_None, *y = Py_None, *teacher = Py_None, *teacher_theta = Py_None;
    PyObject *source = Py_None;
    PyObject *centres = Py_None, *weights = Py_None, *lr_scale = Py_None;
    int input = 0, project = 0, kind = 0, decoupled = 0, schedule = 0;
    double scale = 1.0, noise_sd = 0.0, lr = 1e-3, momentum = 0.0, beta1 = 0.9, beta2 = 0.999;
    double eps = 1e-8, wd = 0.0, gamma = 1.0, lr_min = 0.0, t0 = 1.0, low = -1.0, high = 1.0;
    Py_ssize_t batch = 0, step_size = 1, total_steps = 1;
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO!|OOOOidOOdnOKpiddddddpindnddOdd", kwlist,
                                     &layer, &PyArray_Type, &theta, &X, &y, &teacher,
                                     &teacher_theta, &input, &scale, &centres, &weights, &noise_sd,
                                     &batch, &lr_scale, &seed, &project, &kind, &lr, &momentum,
                                     &beta1, &beta2, &eps, &wd, &decoupled, &schedule, &step_size,
                                     &gamma, &total_steps, &lr_min, &t0, &source, &low, &high))
        return -1;
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
    if (batch < 0 || step_size < 1 || total_steps < 1) {
        PyErr_SetString(PyExc_ValueError, "batch_size, step_size and total_steps must be positive");
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
        if ((size_t)batch > (size_t)n) {
            PyErr_Format(PyExc_ValueError, "batch_size must be at most n = %zd, got %zd",
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
        self->ctx.project_sphere = project;
        mt_moe_as_model(&self->model, &self->ctx);
    } else {
        self->stack = K;
        self->deep_ctx.cfg = K->cfg;
        mt_deep_as_model(&self->model, &self->deep_ctx);
    }
    self->batch = batch ? (size_t)batch : data.n;
    mt_opt_config opt = {.kind = (mt_opt_kind)kind, .lr = lr, .momentum = momentum,
                         .beta1 = beta1, .beta2 = beta2, .eps = eps, .weight_decay = wd,
                         .decoupled_decay = decoupled, .schedule = (mt_lr_schedule)schedule,
                         .step_size = (size_t)step_size, .gamma = gamma,
                         .total_steps = (size_t)total_steps, .lr_min = lr_min, .t0 = t0};
    if (mt_opt_config_check(&opt) != MT_OK) {
        PyErr_SetString(PyExc_ValueError, "invalid optimizer settings (learning rate, momentum, "
                                          "betas, eps, weight decay or schedule out of range)");
        return -1;
    }
    mt_status st = mt_trainer_alloc(&self->trainer, &self->model, &opt, &data, (size_t)batch,
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

static PyObject *Trainer_run(TrainerObject *self, PyObject *args)
{
    Py_ssize_t steps;
    double seconds;
    if (!PyArg_ParseTuple(args, "nd", &steps, &seconds)) return NULL;
    if (steps < 0) {
        PyErr_SetString(PyExc_ValueError, "steps must be >= 0");
        return NULL;
    }
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
     "run(steps, seconds) -> losses: up to `steps` steps, stopping early once `seconds` of wall "
     "time are spent (0 = no limit); returns the losses of the steps done."},
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
    Py_ssize_t n;
    int input = 0, busy = 0;
    double scale = 1.0, low = -1.0, high = 1.0, noise_sd = 0.0;
    unsigned long long seed = 0, stream = 0;
    online_spec o = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "n|OOidddOOdOKK", kwlist, &n, &teacher,
                                     &teacher_theta, &input, &scale, &low, &high, &centres,
                                     &weights, &noise_sd, &source, &seed, &stream))
        return NULL;
    if (n < 1) {
        PyErr_Format(PyExc_ValueError, "n must be >= 1, got %zd", n);
        return NULL;
    }
    if ((teacher == Py_None) == (source == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "draw needs exactly one of teacher and source");
        return NULL;
    }
    mt_train_data data = {0};
    if (online_parse(&o, &data, source, teacher, teacher_theta, input, scale, low, high, centres,
                     weights, noise_sd, 0, 0) < 0)
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
    mt_rng_init(&r, (uint64_t)seed, (uint64_t)stream);
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
/* em_fit and em_loglik: the softmax-gated Gaussian MoE EM of csrc/mt_em.h. The flat parameter
 * vector is mt_em.h's: beta0 (K,), beta1 (K, d), a (K, d), b (K,), [c (K,)], sigma2 (K,).
 * Arguments are checked here so that errors name the argument; the C core checks again. */

static const char *const EM_EXPERT_NAMES[] = {"linear", "ffn"};
static const char *const EM_ACT_NAMES[] = {"sigmoid", "tanh"};

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

/* Shared parsing of (theta, X, y, K, expert, act, outer_scale): fills opt's model fields and
 * returns 0, or sets an exception and returns -1. *theta_out, *X_out, *y_out: new references.
 * y_obj == NULL (em_sample: no data y, y is drawn): *y_out stays NULL and sigma2 may be 0. */
static int em_parse(PyObject *theta_obj, PyObject *X_obj, PyObject *y_obj, Py_ssize_t K,
                    const char *expert, const char *act, int outer_scale, mt_em_options *opt,
                    PyArrayObject **theta_out, PyArrayObject **X_out, PyArrayObject **y_out)
{
    *theta_out = *X_out = *y_out = NULL;
    int ie = lookup(EM_EXPERT_NAMES, 2, expert), ia = lookup(EM_ACT_NAMES, 2, act);
    if (ie < 0) {
        PyErr_Format(PyExc_ValueError, "expert must be 'linear' or 'ffn', got '%s'", expert);
        return -1;
    }
    if (ia < 0) {
        PyErr_Format(PyExc_ValueError, "act must be 'sigmoid' or 'tanh', got '%s'", act);
        return -1;
    }
    if (outer_scale && ie != MT_EM_FFN) {
        PyErr_SetString(PyExc_ValueError, "outer_scale needs expert='ffn'");
        return -1;
    }
    if (K < 1) {
        PyErr_Format(PyExc_ValueError, "K must be >= 1, got %zd", K);
        return -1;
    }
    npy_intp xs[2] = {-1, -1};
    *X_out = as_float_array(X_obj, "X", 2, xs, "(n, d)");
    if (!*X_out) return -1;
    size_t n = (size_t)PyArray_DIM(*X_out, 0), d = (size_t)PyArray_DIM(*X_out, 1);
    char text[80];
    npy_intp ys[1] = {(npy_intp)n};
    snprintf(text, sizeof text, "(%zu,)", n);
    if (y_obj) {
        *y_out = as_float_array(y_obj, "y", 1, ys, text);
        if (!*y_out) return -1;
    }
    size_t P = mt_em_params_size(d, (size_t)K, outer_scale);
    npy_intp ts[1] = {(npy_intp)P};
    snprintf(text, sizeof text, "(%zu,) = (K (2 d + 3)%s,)", P, outer_scale ? " + K" : "");
    *theta_out = as_float_array(theta_obj, "theta", 1, ts, text);
    if (!*theta_out) return -1;
    mt_em_params p;
    mt_em_params_view(&p, PyArray_DATA(*theta_out), d, (size_t)K, outer_scale);
    for (size_t k = 0; k < (size_t)K; k++) {
        if (!(p.sigma2[k] > 0 || (!y_obj && p.sigma2[k] == 0))) {
            PyErr_Format(PyExc_ValueError, "theta: sigma2[%zu] must be %s, got %g", k,
                         y_obj ? "> 0" : ">= 0", p.sigma2[k]);
            return -1;
        }
    }
    int ref_ok = p.beta0[K - 1] == 0.0;
    for (size_t j = 0; j < d; j++) ref_ok = ref_ok && p.beta1[(size_t)(K - 1) * d + j] == 0.0;
    if (!ref_ok) {
        PyErr_SetString(PyExc_ValueError, "theta: the reference gate row (beta0[K-1], "
                                          "beta1[K-1]) must be zero");
        return -1;
    }
    opt->expert = (mt_em_expert)ie;
    opt->act = (mt_em_act)ia;
    opt->outer_scale = outer_scale;
    return 0;
}

static PyObject *em_fit(PyObject *Py_UNUSED(m), PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"theta", "X", "y", "K", "expert", "act", "outer_scale", "max_iter",
                             "tol", "gate_steps", "expert_steps", NULL};
    PyObject *theta_obj, *X_obj, *y_obj, *result = NULL;
    PyArrayObject *theta = NULL, *X = NULL, *y = NULL, *fitted = NULL, *trace = NULL;
    PyObject *trace_done = NULL;
    mt_em_workspace *ws = NULL;
    Py_ssize_t K;
    const char *expert = "linear", *act = "sigmoid";
    int outer_scale = 0, max_iter = 2000, gate_steps = MT_EM_GATE_STEPS;
    int expert_steps = MT_EM_EXPERT_STEPS;
    double tol = 1e-6;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOn|sspidii", kwlist, &theta_obj, &X_obj,
                                     &y_obj, &K, &expert, &act, &outer_scale, &max_iter, &tol,
                                     &gate_steps, &expert_steps))
        return NULL;
    mt_em_options opt;
    mt_em_options_default(&opt);
    if (max_iter < 1) {
        PyErr_Format(PyExc_ValueError, "max_iter must be >= 1, got %d", max_iter);
        return NULL;
    }
    if (!(tol >= 0) || !isfinite(tol)) {
        PyErr_Format(PyExc_ValueError, "tol must be a finite number >= 0, got %g", tol);
        return NULL;
    }
    if (gate_steps < 0 || expert_steps < 0) {
        PyErr_Format(PyExc_ValueError, "gate_steps and expert_steps must be >= 0, got %d and %d",
                     gate_steps, expert_steps);
        return NULL;
    }
    if (em_parse(theta_obj, X_obj, y_obj, K, expert, act, outer_scale, &opt, &theta, &X, &y) < 0)
        goto done;
    opt.max_iter = max_iter;
    opt.tol = tol;
    opt.gate_steps = gate_steps;
    opt.expert_steps = expert_steps;
    opt.interrupt = em_poll_signals;
    size_t n = (size_t)PyArray_DIM(X, 0), d = (size_t)PyArray_DIM(X, 1);
    /* the fit works on a copy: the caller's theta is never written */
    fitted = (PyArrayObject *)PyArray_NewCopy(theta, NPY_CORDER);
    npy_intp trs[1] = {(npy_intp)max_iter};
    trace = (PyArrayObject *)PyArray_SimpleNew(1, trs, NPY_DOUBLE);
    if (!fitted || !trace) goto done;
    mt_status st = mt_em_workspace_alloc(&ws, n, d, (size_t)K);
    if (st != MT_OK) {
        raise_status(st, "em_fit workspace");
        goto done;
    }
    mt_em_params p;
    mt_em_params_view(&p, PyArray_DATA(fitted), d, (size_t)K, outer_scale);
    int n_iter = 0, converged = 0;
    Py_BEGIN_ALLOW_THREADS
    st = mt_em_fit(&p, PyArray_DATA(trace), &n_iter, &converged, PyArray_DATA(X),
                   PyArray_DATA(y), n, d, (size_t)K, &opt, ws);
    Py_END_ALLOW_THREADS
    if (st != MT_OK) {
        if (st == MT_EINTERRUPTED && PyErr_Occurred()) goto done; /* the handler's exception */
        raise_status(st, "em_fit");
        goto done;
    }
    trace_done = PySequence_GetSlice((PyObject *)trace, 0, (Py_ssize_t)n_iter);
    if (!trace_done) goto done;
    result = Py_BuildValue("(NNiO)", (PyObject *)fitted,
                           PyArray_NewCopy((PyArrayObject *)trace_done, NPY_CORDER), n_iter,
                           converged ? Py_True : Py_False);
    if (result) fitted = NULL; /* the tuple owns it now */
done:
    mt_em_workspace_free(ws);
    Py_XDECREF(theta);
    Py_XDECREF(X);
    Py_XDECREF(y);
    Py_XDECREF(fitted);
    Py_XDECREF(trace);
    Py_XDECREF(trace_done);
    return result;
}

static PyObject *em_loglik(PyObject *Py_UNUSED(m), PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"theta", "X", "y", "K", "expert", "act", "outer_scale", NULL};
    PyObject *theta_obj, *X_obj, *y_obj, *result = NULL;
    PyArrayObject *theta = NULL, *X = NULL, *y = NULL, *resp = NULL;
    mt_em_workspace *ws = NULL;
    Py_ssize_t K;
    const char *expert = "linear", *act = "sigmoid";
    int outer_scale = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOn|ssp", kwlist, &theta_obj, &X_obj, &y_obj,
                                     &K, &expert, &act, &outer_scale))
        return NULL;
    mt_em_options opt;
    mt_em_options_default(&opt);
    if (em_parse(theta_obj, X_obj, y_obj, K, expert, act, outer_scale, &opt, &theta, &X, &y) < 0)
        goto done;
    size_t n = (size_t)PyArray_DIM(X, 0), d = (size_t)PyArray_DIM(X, 1);
    npy_intp rs[2] = {(npy_intp)n, (npy_intp)K};
    resp = (PyArrayObject *)PyArray_SimpleNew(2, rs, NPY_DOUBLE);
    if (!resp) goto done;
    mt_status st = mt_em_workspace_alloc(&ws, n, d, (size_t)K);
    if (st != MT_OK) {
        raise_status(st, "em_loglik workspace");
        goto done;
    }
    mt_em_params p;
    mt_em_params_view(&p, PyArray_DATA(theta), d, (size_t)K, outer_scale);
    double ll = 0.0;
    Py_BEGIN_ALLOW_THREADS
    st = mt_em_loglik(&ll, PyArray_DATA(resp), &p, PyArray_DATA(X), PyArray_DATA(y), n, d,
                      (size_t)K, &opt, ws);
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
    Py_ssize_t K;
    const char *expert = "linear", *act = "sigmoid";
    int outer_scale = 0;
    unsigned long long seed = 0, stream = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOn|sspKK", kwlist, &theta_obj, &X_obj, &K,
                                     &expert, &act, &outer_scale, &seed, &stream))
        return NULL;
    mt_em_options opt;
    mt_em_options_default(&opt);
    if (em_parse(theta_obj, X_obj, NULL, K, expert, act, outer_scale, &opt, &theta, &X, &no_y) < 0)
        goto done;
    size_t n = (size_t)PyArray_DIM(X, 0), d = (size_t)PyArray_DIM(X, 1);
    npy_intp ys[1] = {(npy_intp)n};
    y = (PyArrayObject *)PyArray_SimpleNew(1, ys, NPY_DOUBLE);
    if (!y) goto done;
    mt_em_params p;
    mt_em_params_view(&p, PyArray_DATA(theta), d, (size_t)K, outer_scale);
    mt_rng r;
    mt_rng_init(&r, (uint64_t)seed, (uint64_t)stream);
    mt_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mt_em_sample(PyArray_DATA(y), &r, &p, &opt, PyArray_DATA(X), n, d, (size_t)K);
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
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1) {
        PyErr_Format(PyExc_ValueError, "n_threads must be >= 1, got %ld", n);
        return NULL;
    }
    mt_set_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *get_num_threads(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(mt_threads());
}

static PyMethodDef module_methods[] = {
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
     "tol=1e-6, gate_steps=5, expert_steps=5) -> (theta_fitted, trace (n_iter,), n_iter, "
     "converged): EM for the softmax-gated Gaussian MoE (csrc/mt_em.h); theta is not modified."},
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
    for (size_t i = 0; i < count; i++)
        PyTuple_SET_ITEM(t, (Py_ssize_t)i, PyUnicode_FromString(names[i]));
    return t;
}

PyMODINIT_FUNC PyInit__core(void)
{
    import_array();
    if (PyType_Ready(&LayerType) < 0 || PyType_Ready(&TrainerType) < 0 ||
        PyType_Ready(&StackType) < 0 ||
        PyType_Ready(&ClusterTaskType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (!m) return NULL;
    Py_INCREF(&LayerType);
    Py_INCREF(&TrainerType);
    Py_INCREF(&ClusterTaskType);
    Py_INCREF(&StackType);
    if (PyModule_AddObject(m, "Layer", (PyObject *)&LayerType) < 0 ||
        PyModule_AddObject(m, "Stack", (PyObject *)&StackType) < 0 ||
        PyModule_AddObject(m, "Trainer", (PyObject *)&TrainerType) < 0 ||
        PyModule_AddObject(m, "ClusterTask", (PyObject *)&ClusterTaskType) < 0 ||
        PyModule_AddObject(m, "ACTIVATIONS", names_tuple(ACT_NAMES, MT_ACT_COUNT)) < 0 ||
        PyModule_AddObject(m, "GATES", names_tuple(GATE_NAMES, 5)) < 0 ||
        PyModule_AddObject(m, "EXPERTS", names_tuple(EXPERT_NAMES, 2)) < 0 ||
        PyModule_AddObject(m, "INPUTS", names_tuple(INPUT_NAMES, MT_INPUT_GRID + 1)) < 0 ||
        mt_bind_gmoe(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
