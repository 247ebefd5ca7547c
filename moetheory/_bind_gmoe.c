/* moetheory._core's functions for the Gaussian-gated MoE of csrc/mt_gmoe.h: gmoe_loglik,
 * gmoe_fit and gmoe_sample. _core.c's module init calls mt_bind_gmoe(module), which registers
 * them. The flat parameter vector is mt_gmoe.h's: pi (K,), c (K, d), Gamma (K, d, d) or (K, d),
 * A (K, d), b (K,), nu (K,).
 *
 * Arrays are checked here for dtype, shape and finiteness (errors name the argument); the
 * values of the parameters (pi a probability vector, Gamma positive definite, nu > 0) are
 * checked by moetheory/gaussian_gating.py with messages naming the block, and again by the C
 * core (MT_EINVAL). The GIL is released around every call that loops over the data.
 *
 * TEMPORARY COPIES (until the binding's shared converters exist): status_error, first_bad,
 * float_array, poll_signals and cov_lookup repeat _core.c's raise_status, first_non_finite,
 * as_float_array, em_poll_signals and lookup, trimmed to what these wrappers use. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "mt_gmoe.h"

int mt_bind_gmoe(PyObject *module);

static const char *const COV_NAMES[] = {"full", "diag"};  /* in mt_gmoe_cov order */

/* ---- copies of _core.c's helpers (see the header comment) ---- */

static PyObject *status_error(mt_status st, const char *what)
{
    switch (st) {
    case MT_OK: return NULL;
    case MT_EINVAL: PyErr_Format(PyExc_ValueError, "%s: invalid argument", what); break;
    case MT_ENOMEM: PyErr_Format(PyExc_MemoryError, "%s: out of memory", what); break;
    case MT_EINTERRUPTED: PyErr_SetNone(PyExc_KeyboardInterrupt); break;
    case MT_ENONFINITE:
        PyErr_Format(PyExc_FloatingPointError, "%s: a NaN or infinity appeared", what);
        break;
    default: PyErr_Format(PyExc_RuntimeError, "%s: unknown status %d", what, (int)st);
    }
    return NULL;
}

static size_t first_bad(const double *p, size_t n)
{
    for (size_t i = 0; i < n; i++) if (!isfinite(p[i])) return i;
    return n;
}

/* obj as a C-contiguous, finite, non-empty float64 array of ndim dims matching shape (entries
 * < 0 match any size; shape_text shows the expected shape). New reference or NULL. */
static PyArrayObject *float_array(PyObject *obj, const char *name, int ndim,
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
        PyErr_Format(PyExc_TypeError,
                     "%s must have a real numeric dtype (float64 preferred), got %S", name,
                     (PyObject *)PyArray_DESCR(in));
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
    size_t size = (size_t)PyArray_SIZE(out), i = first_bad(PyArray_DATA(out), size);
    if (i < size) {
        PyErr_Format(PyExc_ValueError,
                     "%s must be finite, found a NaN or infinity at flat index %zd", name,
                     (Py_ssize_t)i);
        Py_CLEAR(out);
        goto fail;
    }
    Py_DECREF(in);
    return out;
fail:
    Py_XDECREF(in);
    return NULL;
}

/* Polled by mt_gmoe_fit without the GIL: takes it and runs the signal handlers; a raised
 * exception (KeyboardInterrupt) stays set and stops the fit. */
static int poll_signals(void *Py_UNUSED(ctx))
{
    PyGILState_STATE g = PyGILState_Ensure();
    int stop = PyErr_CheckSignals() != 0;
    PyGILState_Release(g);
    return stop;
}

static int cov_lookup(const char *name, mt_gmoe_cov *cov)
{
    for (int i = 0; i < 2; i++)
        if (strcmp(name, COV_NAMES[i]) == 0) {
            *cov = (mt_gmoe_cov)i;
            return 0;
        }
    PyErr_Format(PyExc_ValueError, "cov must be 'full' or 'diag', got '%s'", name);
    return -1;
}

/* ---- shared parsing ---- */

/* theta for (d, K, cov): a new reference to a float64 copy, or NULL with an exception. */
static PyArrayObject *as_theta(PyObject *obj, size_t d, Py_ssize_t K, mt_gmoe_cov cov)
{
    if (K < 1) {
        PyErr_Format(PyExc_ValueError, "K must be >= 1, got %zd", K);
        return NULL;
    }
    size_t P = mt_gmoe_params_size(d, (size_t)K, cov);
    char text[96];
    snprintf(text, sizeof text, "(%zu,) = (K (3 + 2 d + %s),)", P,
             cov == MT_GMOE_FULL ? "d^2" : "d");
    npy_intp shape[1] = {(npy_intp)P};
    return float_array(obj, "theta", 1, shape, text);
}

/* X (n, d) and y (n,): new references in *X_out, *y_out, or -1 with an exception. */
static int as_data(PyObject *X_obj, PyObject *y_obj, PyArrayObject **X_out,
                   PyArrayObject **y_out)
{
    npy_intp xs[2] = {-1, -1};
    *X_out = float_array(X_obj, "X", 2, xs, "(n, d)");
    if (!*X_out) return -1;
    char text[48];
    npy_intp ys[1] = {PyArray_DIM(*X_out, 0)};
    snprintf(text, sizeof text, "(%zd,)", (Py_ssize_t)ys[0]);
    *y_out = float_array(y_obj, "y", 1, ys, text);
    return *y_out ? 0 : -1;
}

#define PARAMS_HINT "theta: pi >= 0 summing to 1, each Gamma symmetric positive definite, nu > 0"

/* ---- the wrappers ---- */

static PyObject *gmoe_loglik(PyObject *Py_UNUSED(m), PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"theta", "X", "y", "K", "cov", NULL};
    PyObject *theta_obj, *X_obj, *y_obj, *result = NULL;
    PyArrayObject *theta = NULL, *X = NULL, *y = NULL, *resp = NULL, *gate = NULL;
    mt_gmoe_workspace *ws = NULL;
    Py_ssize_t K;
    const char *cov_name = "full";
    mt_gmoe_cov cov;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOn|s", kwlist, &theta_obj, &X_obj, &y_obj, &K,
                                     &cov_name))
        return NULL;
    if (cov_lookup(cov_name, &cov) < 0 || as_data(X_obj, y_obj, &X, &y) < 0) goto done;
    size_t n = (size_t)PyArray_DIM(X, 0), d = (size_t)PyArray_DIM(X, 1);
    if (!(theta = as_theta(theta_obj, d, K, cov))) goto done;
    npy_intp rs[2] = {(npy_intp)n, K};
    resp = (PyArrayObject *)PyArray_SimpleNew(2, rs, NPY_DOUBLE);
    gate = (PyArrayObject *)PyArray_SimpleNew(2, rs, NPY_DOUBLE);
    if (!resp || !gate) goto done;
    mt_status st = mt_gmoe_workspace_alloc(&ws, n, d, (size_t)K);
    if (st != MT_OK) {
        status_error(st, "gmoe_loglik workspace");
        goto done;
    }
    mt_gmoe_params p;
    mt_gmoe_params_view(&p, PyArray_DATA(theta), d, (size_t)K, cov);
    double joint = 0.0, cond = 0.0;
    Py_BEGIN_ALLOW_THREADS
    st = mt_gmoe_loglik(&joint, &cond, PyArray_DATA(resp), PyArray_DATA(gate), &p,
                        PyArray_DATA(X), PyArray_DATA(y), n, d, (size_t)K, cov, ws);
    Py_END_ALLOW_THREADS
    if (st != MT_OK) {
        status_error(st, st == MT_EINVAL ? "gmoe_loglik: " PARAMS_HINT : "gmoe_loglik");
        goto done;
    }
    result = Py_BuildValue("(ddOO)", joint, cond, (PyObject *)resp, (PyObject *)gate);
done:
    mt_gmoe_workspace_free(ws);
    Py_XDECREF(theta);
    Py_XDECREF(X);
    Py_XDECREF(y);
    Py_XDECREF(resp);
    Py_XDECREF(gate);
    return result;
}

static PyObject *gmoe_fit(PyObject *Py_UNUSED(m), PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"theta", "X", "y", "K", "cov", "max_iter", "tol", "var_floor",
                             NULL};
    PyObject *theta_obj, *X_obj, *y_obj, *result = NULL;
    PyArrayObject *theta = NULL, *X = NULL, *y = NULL, *fitted = NULL, *trace = NULL;
    mt_gmoe_workspace *ws = NULL;
    Py_ssize_t K;
    const char *cov_name = "full";
    mt_gmoe_options opt;
    mt_gmoe_options_default(&opt);
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOn|sidd", kwlist, &theta_obj, &X_obj, &y_obj,
                                     &K, &cov_name, &opt.max_iter, &opt.tol, &opt.var_floor))
        return NULL;
    if (opt.max_iter < 1) {
        PyErr_Format(PyExc_ValueError, "max_iter must be >= 1, got %d", opt.max_iter);
        return NULL;
    }
    if (!(opt.tol >= 0) || !isfinite(opt.tol)) {
        PyErr_Format(PyExc_ValueError, "tol must be a finite number >= 0, got %g", opt.tol);
        return NULL;
    }
    if (!(opt.var_floor > 0) || !isfinite(opt.var_floor)) {
        PyErr_Format(PyExc_ValueError, "var_floor must be a finite number > 0, got %g",
                     opt.var_floor);
        return NULL;
    }
    if (cov_lookup(cov_name, &opt.cov) < 0 || as_data(X_obj, y_obj, &X, &y) < 0) goto done;
    size_t n = (size_t)PyArray_DIM(X, 0), d = (size_t)PyArray_DIM(X, 1);
    if (!(theta = as_theta(theta_obj, d, K, opt.cov))) goto done;
    opt.interrupt = poll_signals;
    /* the fit works on a copy: the caller's theta is never written */
    fitted = (PyArrayObject *)PyArray_NewCopy(theta, NPY_CORDER);
    npy_intp trs[1] = {(npy_intp)opt.max_iter};
    trace = (PyArrayObject *)PyArray_SimpleNew(1, trs, NPY_DOUBLE);
    if (!fitted || !trace) goto done;
    mt_status st = mt_gmoe_workspace_alloc(&ws, n, d, (size_t)K);
    if (st != MT_OK) {
        status_error(st, "gmoe_fit workspace");
        goto done;
    }
    mt_gmoe_params p;
    mt_gmoe_params_view(&p, PyArray_DATA(fitted), d, (size_t)K, opt.cov);
    int n_iter = 0, converged = 0, degenerate = 0;
    Py_BEGIN_ALLOW_THREADS
    st = mt_gmoe_fit(&p, PyArray_DATA(trace), &n_iter, &converged, &degenerate,
                     PyArray_DATA(X), PyArray_DATA(y), n, d, (size_t)K, &opt, ws);
    Py_END_ALLOW_THREADS
    if (st != MT_OK) {
        if (st == MT_EINTERRUPTED && PyErr_Occurred()) goto done; /* the handler's exception */
        status_error(st, st == MT_EINVAL ? "gmoe_fit: " PARAMS_HINT : "gmoe_fit");
        goto done;
    }
    PyObject *head = PySequence_GetSlice((PyObject *)trace, 0, (Py_ssize_t)n_iter);
    if (!head) goto done;
    PyObject *trace_copy = PyArray_NewCopy((PyArrayObject *)head, NPY_CORDER);
    Py_DECREF(head);
    if (!trace_copy) goto done;
    result = Py_BuildValue("(NNiOO)", (PyObject *)fitted, trace_copy, n_iter,
                           converged ? Py_True : Py_False, degenerate ? Py_True : Py_False);
    if (result) fitted = NULL; /* the tuple owns it now */
done:
    mt_gmoe_workspace_free(ws);
    Py_XDECREF(theta);
    Py_XDECREF(X);
    Py_XDECREF(y);
    Py_XDECREF(fitted);
    Py_XDECREF(trace);
    return result;
}

static PyObject *gmoe_sample(PyObject *Py_UNUSED(m), PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"theta", "n", "d", "K", "cov", "seed", "stream", NULL};
    PyObject *theta_obj, *result = NULL;
    PyArrayObject *theta = NULL, *X = NULL, *y = NULL, *z = NULL;
    mt_gmoe_workspace *ws = NULL;
    Py_ssize_t n, d, K;
    const char *cov_name = "full";
    mt_gmoe_cov cov;
    unsigned long long seed = 0, stream = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Onnn|sKK", kwlist, &theta_obj, &n, &d, &K,
                                     &cov_name, &seed, &stream))
        return NULL;
    if (n < 1 || d < 1) {
        PyErr_Format(PyExc_ValueError, "n and d must be >= 1, got %zd and %zd", n, d);
        return NULL;
    }
    if (cov_lookup(cov_name, &cov) < 0) return NULL;
    if (!(theta = as_theta(theta_obj, (size_t)d, K, cov))) return NULL;
    npy_intp xs[2] = {n, d}, ys[1] = {n};
    X = (PyArrayObject *)PyArray_SimpleNew(2, xs, NPY_DOUBLE);
    y = (PyArrayObject *)PyArray_SimpleNew(1, ys, NPY_DOUBLE);
    z = (PyArrayObject *)PyArray_SimpleNew(1, ys, NPY_INT);
    if (!X || !y || !z) goto done;
    mt_status st = mt_gmoe_workspace_alloc(&ws, 1, (size_t)d, (size_t)K);
    if (st != MT_OK) {
        status_error(st, "gmoe_sample workspace");
        goto done;
    }
    mt_gmoe_params p;
    mt_gmoe_params_view(&p, PyArray_DATA(theta), (size_t)d, (size_t)K, cov);
    mt_rng r;
    mt_rng_init(&r, (uint64_t)seed, (uint64_t)stream);
    Py_BEGIN_ALLOW_THREADS
    st = mt_gmoe_sample(PyArray_DATA(X), PyArray_DATA(y), PyArray_DATA(z), &r, &p, (size_t)n,
                        (size_t)d, (size_t)K, cov, ws);
    Py_END_ALLOW_THREADS
    if (st != MT_OK) {
        status_error(st, st == MT_EINVAL ? "gmoe_sample: theta: pi >= 0 summing to 1, each Gamma "
                                           "symmetric positive definite, nu >= 0"
                                         : "gmoe_sample");
        goto done;
    }
    result = PyTuple_Pack(3, (PyObject *)X, (PyObject *)y, (PyObject *)z);
done:
    mt_gmoe_workspace_free(ws);
    Py_XDECREF(theta);
    Py_XDECREF(X);
    Py_XDECREF(y);
    Py_XDECREF(z);
    return result;
}

static PyMethodDef gmoe_methods[] = {
    {"gmoe_loglik", (PyCFunction)(void (*)(void))gmoe_loglik, METH_VARARGS | METH_KEYWORDS,
     "gmoe_loglik(theta, X, y, K, cov='full') -> (joint, conditional, resp (n, K), gate (n, K)): "
     "the summed log p(x, y) and log p(y | x) of the Gaussian-gated MoE (csrc/mt_gmoe.h), the "
     "posteriors of z given (x, y) and the gate g(x)."},
    {"gmoe_fit", (PyCFunction)(void (*)(void))gmoe_fit, METH_VARARGS | METH_KEYWORDS,
     "gmoe_fit(theta, X, y, K, cov='full', max_iter=2000, tol=1e-5, var_floor=1e-10) -> "
     "(theta_fitted, trace (n_iter,), n_iter, converged, degenerate): closed-form EM on the "
     "joint likelihood (csrc/mt_gmoe.h); theta is not modified."},
    {"gmoe_sample", (PyCFunction)(void (*)(void))gmoe_sample, METH_VARARGS | METH_KEYWORDS,
     "gmoe_sample(theta, n, d, K, cov='full', seed=0, stream=0) -> (X (n, d), y (n,), "
     "z (n,) int32): draws from the joint, generator keyed by (seed, stream) (draw order: "
     "csrc/mt_gmoe.h, mt_gmoe_sample)."},
    {NULL, NULL, 0, NULL}};

int mt_bind_gmoe(PyObject *module)
{
    /* this file has its own copy of NumPy's API table (no PY_ARRAY_UNIQUE_SYMBOL) */
    if (_import_array() < 0) return -1;
    return PyModule_AddFunctions(module, gmoe_methods);
}
