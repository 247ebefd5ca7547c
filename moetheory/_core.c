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
#include <string.h>

#include "mt_blas.h"
#include "mt_moe.h"

/* ---- names of the C enums, in enum order (the Python layer looks names up here) ---- */

static const char *const ACT_NAMES[] = {"identity", "relu", "leaky_relu", "gelu", "tanh",
                                        "sigmoid", "he1", "he2", "he3", "he4", "he5", "he6",
                                        "he7", "he8"};
static const char *const GATE_NAMES[] = {"softmax", "topk", "temperature", "hierarchical",
                                         "sigmoid"};
static const char *const EXPERT_NAMES[] = {"ffn", "linear"};

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
    npy_intp size = PyArray_SIZE(out);
    for (npy_intp i = 0; i < size; i++) {
        if (!isfinite(p[i])) {
            PyErr_Format(PyExc_ValueError, "%s must be finite, found %s at flat index %zd", name,
                         isnan(p[i]) ? "nan" : (p[i] > 0 ? "inf" : "-inf"), (Py_ssize_t)i);
            Py_CLEAR(out);
            goto fail;
        }
    }
    Py_DECREF(in);
    return out;
fail:
    Py_XDECREF(in);
    return NULL;
}

/* theta must be exactly the model's own vector: float64, 1-D, C-contiguous, length P, finite. */
static int check_theta(PyArrayObject *theta, size_t P)
{
    if (!PyArray_Check(theta) || PyArray_TYPE(theta) != NPY_DOUBLE || PyArray_NDIM(theta) != 1 ||
        !PyArray_IS_C_CONTIGUOUS(theta) || (size_t)PyArray_DIM(theta, 0) != P) {
        PyErr_Format(PyExc_ValueError,
                     "theta must be a C-contiguous float64 vector of length %zu", P);
        return -1;
    }
    const double *p = PyArray_DATA(theta);
    for (size_t i = 0; i < P; i++) {
        if (!isfinite(p[i])) {
            PyErr_Format(PyExc_ValueError, "theta must be finite, found a NaN or infinity at index %zu", i);
            return -1;
        }
    }
    return 0;
}

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
                             "bias", NULL};
    Py_ssize_t d_in, E, hidden, top_k, groups, d_out;
    const char *expert, *act, *gate, *gate_act;
    double temperature;
    int bias;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "nnsnssndsnnp", kwlist, &d_in, &E, &expert,
                                     &hidden, &act, &gate, &top_k, &temperature, &gate_act,
                                     &groups, &d_out, &bias))
        return -1;
    int ie = lookup(EXPERT_NAMES, 2, expert), ia = lookup(ACT_NAMES, MT_ACT_COUNT, act);
    int ig = lookup(GATE_NAMES, 5, gate), iga = lookup(ACT_NAMES, MT_ACT_COUNT, gate_act);
    if (ie < 0 || ia < 0 || ig < 0 || iga < 0 || d_in < 1 || E < 1 || hidden < 0 || top_k < 0 ||
        groups < 0 || d_out < 1) {
        PyErr_SetString(PyExc_ValueError, "invalid MoE configuration (names or sizes)");
        return -1;
    }
    mt_moe_config c = {
        .d_in = (size_t)d_in, .n_experts = (size_t)E, .hidden = (size_t)hidden,
        .d_out = (size_t)d_out, .groups = (size_t)groups, .top_k = (size_t)top_k,
        .gate = (mt_gate_kind)ig, .expert = (mt_expert_kind)ie, .activation = (mt_act)ia,
        .gate_activation = (mt_act)iga, .temperature = temperature, .bias = bias};
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

static int acquire(LayerObject *self)
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this model is in use by another thread; give each thread its own model");
        return -1;
    }
    self->busy = 1;
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

static void x_shape_error_text(char *buf, size_t len, size_t cols)
{
    snprintf(buf, len, "(n, %zu)", cols);
}

static PyObject *Layer_forward(LayerObject *self, PyObject *args)
{
    PyObject *theta_obj, *X_obj, *result = NULL;
    PyArrayObject *X = NULL, *out = NULL, *gates = NULL;
    if (!PyArg_ParseTuple(args, "O!O", &PyArray_Type, &theta_obj, &X_obj)) return NULL;
    PyArrayObject *theta = (PyArrayObject *)theta_obj;
    if (check_theta(theta, self->layout.n_params) < 0) return NULL;
    char text[64];
    x_shape_error_text(text, sizeof text, self->cfg.d_in);
    npy_intp xs[2] = {-1, (npy_intp)self->cfg.d_in};
    X = as_float_array(X_obj, "X", 2, xs, text);
    if (!X) goto done;
    size_t n = (size_t)PyArray_DIM(X, 0);
    npy_intp os[2] = {(npy_intp)n, (npy_intp)self->cfg.d_out};
    npy_intp gs[2] = {(npy_intp)n, (npy_intp)self->cfg.n_experts};
    out = (PyArrayObject *)PyArray_SimpleNew(2, os, NPY_DOUBLE);
    gates = (PyArrayObject *)PyArray_SimpleNew(2, gs, NPY_DOUBLE);
    if (!out || !gates || ensure_workspace(self, n) < 0 || acquire(self) < 0) goto done;
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
    char text[64];
    x_shape_error_text(text, sizeof text, self->cfg.d_in);
    npy_intp xs[2] = {-1, (npy_intp)self->cfg.d_in};
    X = as_float_array(X_obj, "X", 2, xs, text);
    if (!X) goto done;
    size_t n = (size_t)PyArray_DIM(X, 0);
    /* y is (n, d_out), or (n,) when d_out == 1 */
    npy_intp ys[2] = {(npy_intp)n, (npy_intp)self->cfg.d_out};
    int y_ndim = 2;
    if (self->cfg.d_out == 1 && PyArray_Check(y_obj) && PyArray_NDIM((PyArrayObject *)y_obj) == 1)
        y_ndim = 1;
    else if (self->cfg.d_out == 1 && !PyArray_Check(y_obj))
        y_ndim = 1;
    char ytext[80];
    if (self->cfg.d_out == 1)
        snprintf(ytext, sizeof ytext, "(%zu,) or (%zu, 1)", n, n);
    else
        snprintf(ytext, sizeof ytext, "(%zu, %zu)", n, self->cfg.d_out);
    y = as_float_array(y_obj, "y", y_ndim, ys, ytext);
    if (!y) goto done;
    npy_intp gs[1] = {(npy_intp)self->layout.n_params};
    grad = (PyArrayObject *)PyArray_SimpleNew(1, gs, NPY_DOUBLE);
    if (!grad || ensure_workspace(self, n) < 0 || acquire(self) < 0) goto done;
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

/* ---- module functions ---- */

static PyObject *set_num_threads(PyObject *Py_UNUSED(m), PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1) {
        PyErr_Format(PyExc_ValueError, "n_threads must be >= 1, got %ld", n);
        return NULL;
    }
    mt_blas_set_num_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *get_num_threads(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(mt_blas_get_num_threads());
}

static PyMethodDef module_methods[] = {
    {"set_num_threads", set_num_threads, METH_O, "Set the number of BLAS threads."},
    {"get_num_threads", get_num_threads, METH_NOARGS, "The number of BLAS threads."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "moetheory._core",
                                        "The C core of moetheory.", -1, module_methods,
                                        NULL, NULL, NULL, NULL};

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
    if (PyType_Ready(&LayerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (!m) return NULL;
    Py_INCREF(&LayerType);
    if (PyModule_AddObject(m, "Layer", (PyObject *)&LayerType) < 0 ||
        PyModule_AddObject(m, "ACTIVATIONS", names_tuple(ACT_NAMES, MT_ACT_COUNT)) < 0 ||
        PyModule_AddObject(m, "GATES", names_tuple(GATE_NAMES, 5)) < 0 ||
        PyModule_AddObject(m, "EXPERTS", names_tuple(EXPERT_NAMES, 2)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
