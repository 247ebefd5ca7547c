/* gmoe_loglik, gmoe_fit and gmoe_sample: the Gaussian-gated MoE of csrc/mt_gmoe.h. The flat
 * parameter vector is mt_gmoe.h's: pi (K,), c (K, d), Gamma (K, d, d) or (K, d), A (K, d),
 * b (K,), nu (K,).
 *
 * Arrays are checked here for dtype, shape and finiteness (errors name the argument); the
 * values of the parameters (pi a probability vector, Gamma positive definite, nu > 0) are
 * checked by moetheory/gaussian_gating.py with messages naming the block, and again by the C
 * core (MT_EINVAL). The GIL is released around every call that loops over the data. */
#include "_bind.h"

#include <limits.h>

#include "mt_gmoe.h"
#include "mt_rng.h"

#define COV_ARG {"cov", mt_gmoe_cov_names, MT_GMOE_COV_COUNT, MT_GMOE_FULL}

/* ---- shared parsing ---- */

/* theta for (d, K, cov): a new reference to a float64 copy, or NULL with an exception. */
static PyArrayObject *as_theta(PyObject *obj, size_t d, size_t K, mt_gmoe_cov cov)
{
    if (K < 1) {
        PyErr_Format(PyExc_ValueError, "K must be >= 1, got %zu", K);
        return NULL;
    }
    size_t P = mt_gmoe_params_size(d, K, cov);
    char text[96];
    snprintf(text, sizeof text, "(%zu,) = (K (3 + 2 d + %s),)", P,
             cov == MT_GMOE_FULL ? "d^2" : "d");
    npy_intp shape[1] = {(npy_intp)P};
    return bind_float_array(obj, "theta", 1, shape, text);
}

/* X (n, d) and y (n,): new references in *X_out, *y_out, or -1 with an exception. */
static int as_data(PyObject *X_obj, PyObject *y_obj, PyArrayObject **X_out,
                   PyArrayObject **y_out)
{
    npy_intp xs[2] = {-1, -1};
    *X_out = bind_float_array(X_obj, "X", 2, xs, "(n, d)");
    if (!*X_out) return -1;
    char text[48];
    npy_intp ys[1] = {PyArray_DIM(*X_out, 0)};
    snprintf(text, sizeof text, "(%zd,)", (Py_ssize_t)ys[0]);
    *y_out = bind_float_array(y_obj, "y", 1, ys, text);
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
    size_arg K_arg = {"K", 0};
    name_arg cov_arg = COV_ARG;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO&|O&", kwlist, &theta_obj, &X_obj, &y_obj,
                                     conv_size, &K_arg, conv_name, &cov_arg))
        return NULL;
    size_t K = K_arg.value;
    mt_gmoe_cov cov = (mt_gmoe_cov)cov_arg.value;
    if (as_data(X_obj, y_obj, &X, &y) < 0) goto done;
    size_t n = (size_t)PyArray_DIM(X, 0), d = (size_t)PyArray_DIM(X, 1);
    if (!(theta = as_theta(theta_obj, d, K, cov))) goto done;
    npy_intp rs[2] = {(npy_intp)n, (npy_intp)K};
    resp = (PyArrayObject *)PyArray_SimpleNew(2, rs, NPY_DOUBLE);
    gate = (PyArrayObject *)PyArray_SimpleNew(2, rs, NPY_DOUBLE);
    if (!resp || !gate) goto done;
    mt_status st = mt_gmoe_workspace_alloc(&ws, n, d, K);
    if (st != MT_OK) {
        bind_raise(st, "gmoe_loglik workspace", NULL);
        goto done;
    }
    mt_gmoe_params p;
    mt_gmoe_params_view(&p, PyArray_DATA(theta), d, K, cov);
    double joint = 0.0, cond = 0.0;
    Py_BEGIN_ALLOW_THREADS
    st = mt_gmoe_loglik(&joint, &cond, PyArray_DATA(resp), PyArray_DATA(gate), &p,
                        PyArray_DATA(X), PyArray_DATA(y), n, d, K, cov, ws);
    Py_END_ALLOW_THREADS
    if (st != MT_OK) {
        bind_raise(st, st == MT_EINVAL ? "gmoe_loglik: " PARAMS_HINT : "gmoe_loglik", NULL);
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
                             "accelerate", NULL};
    PyObject *theta_obj, *X_obj, *y_obj, *result = NULL;
    PyArrayObject *theta = NULL, *X = NULL, *y = NULL, *fitted = NULL, *trace = NULL;
    mt_gmoe_workspace *ws = NULL;
    mt_gmoe_options opt;
    mt_gmoe_options_default(&opt);
    size_arg K_arg = {"K", 0}, iter_arg = {"max_iter", (size_t)opt.max_iter};
    name_arg cov_arg = COV_ARG;
    real_arg tol_arg = {"tol", opt.tol}, floor_arg = {"var_floor", opt.var_floor};
    bool_arg accelerate = {"accelerate", 0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO&|O&O&O&O&O&", kwlist, &theta_obj, &X_obj,
                                     &y_obj, conv_size, &K_arg, conv_name, &cov_arg, conv_size,
                                     &iter_arg, conv_real, &tol_arg, conv_real, &floor_arg,
                                     conv_bool, &accelerate))
        return NULL;
    opt.accelerate = accelerate.value;
    size_t K = K_arg.value;
    if (iter_arg.value < 1 || iter_arg.value > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "max_iter must be an integer in [1, %d], got %zu", INT_MAX,
                     iter_arg.value);
        return NULL;
    }
    opt.max_iter = (int)iter_arg.value;
    opt.cov = (mt_gmoe_cov)cov_arg.value;
    opt.tol = tol_arg.value;
    opt.var_floor = floor_arg.value;
    if (!(opt.tol >= 0) || !isfinite(opt.tol)) {
        PyErr_Format(PyExc_ValueError, "tol must be a finite number >= 0, got %g", opt.tol);
        return NULL;
    }
    if (!(opt.var_floor > 0) || !isfinite(opt.var_floor)) {
        PyErr_Format(PyExc_ValueError, "var_floor must be a finite number > 0, got %g",
                     opt.var_floor);
        return NULL;
    }
    if (as_data(X_obj, y_obj, &X, &y) < 0) goto done;
    size_t n = (size_t)PyArray_DIM(X, 0), d = (size_t)PyArray_DIM(X, 1);
    if (!(theta = as_theta(theta_obj, d, K, opt.cov))) goto done;
    opt.interrupt = bind_poll_signals;
    /* the fit works on a copy: the caller's theta is never written */
    fitted = (PyArrayObject *)PyArray_NewCopy(theta, NPY_CORDER);
    npy_intp trs[1] = {(npy_intp)opt.max_iter};
    trace = (PyArrayObject *)PyArray_SimpleNew(1, trs, NPY_DOUBLE);
    if (!fitted || !trace) goto done;
    mt_status st = mt_gmoe_workspace_alloc(&ws, n, d, K);
    if (st != MT_OK) {
        bind_raise(st, "gmoe_fit workspace", NULL);
        goto done;
    }
    mt_gmoe_params p;
    mt_gmoe_params_view(&p, PyArray_DATA(fitted), d, K, opt.cov);
    int n_iter = 0, converged = 0, degenerate = 0;
    Py_BEGIN_ALLOW_THREADS
    st = mt_gmoe_fit(&p, PyArray_DATA(trace), &n_iter, &converged, &degenerate,
                     PyArray_DATA(X), PyArray_DATA(y), n, d, K, &opt, ws);
    Py_END_ALLOW_THREADS
    if (st != MT_OK) {
        if (st == MT_EINTERRUPTED && PyErr_Occurred()) goto done; /* the handler's exception */
        bind_raise(st, st == MT_EINVAL ? "gmoe_fit: " PARAMS_HINT : "gmoe_fit", NULL);
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
    size_arg n_arg = {"n", 0}, d_arg = {"d", 0}, K_arg = {"K", 0};
    name_arg cov_arg = COV_ARG;
    seed_arg seed_a = {"seed", 0}, stream_a = {"stream", 0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO&O&O&|O&O&O&", kwlist, &theta_obj, conv_size,
                                     &n_arg, conv_size, &d_arg, conv_size, &K_arg, conv_name,
                                     &cov_arg, conv_seed, &seed_a, conv_seed, &stream_a))
        return NULL;
    size_t n = n_arg.value, d = d_arg.value, K = K_arg.value;
    mt_gmoe_cov cov = (mt_gmoe_cov)cov_arg.value;
    if (n < 1 || d < 1) {
        PyErr_Format(PyExc_ValueError, "n and d must be >= 1, got %zu and %zu", n, d);
        return NULL;
    }
    if (!(theta = as_theta(theta_obj, d, K, cov))) return NULL;
    npy_intp xs[2] = {(npy_intp)n, (npy_intp)d}, ys[1] = {(npy_intp)n};
    X = (PyArrayObject *)PyArray_SimpleNew(2, xs, NPY_DOUBLE);
    y = (PyArrayObject *)PyArray_SimpleNew(1, ys, NPY_DOUBLE);
    z = (PyArrayObject *)PyArray_SimpleNew(1, ys, NPY_INT);
    if (!X || !y || !z) goto done;
    mt_status st = mt_gmoe_workspace_alloc(&ws, 1, d, K);
    if (st != MT_OK) {
        bind_raise(st, "gmoe_sample workspace", NULL);
        goto done;
    }
    mt_gmoe_params p;
    mt_gmoe_params_view(&p, PyArray_DATA(theta), d, K, cov);
    mt_rng r;
    mt_rng_init(&r, seed_a.value, stream_a.value);
    Py_BEGIN_ALLOW_THREADS
    st = mt_gmoe_sample(PyArray_DATA(X), PyArray_DATA(y), PyArray_DATA(z), &r, &p, n, d, K, cov,
                        ws);
    Py_END_ALLOW_THREADS
    if (st != MT_OK) {
        bind_raise(st, st == MT_EINVAL ? "gmoe_sample: theta: pi >= 0 summing to 1, each Gamma "
                                         "symmetric positive definite, nu >= 0"
                                       : "gmoe_sample", NULL);
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
     "gmoe_fit(theta, X, y, K, cov='full', max_iter=2000, tol=1e-5, var_floor=1e-10, "
     "accelerate=False) -> "
     "(theta_fitted, trace (n_iter,), n_iter, converged, degenerate): closed-form EM on the "
     "joint likelihood (csrc/mt_gmoe.h); theta is not modified."},
    {"gmoe_sample", (PyCFunction)(void (*)(void))gmoe_sample, METH_VARARGS | METH_KEYWORDS,
     "gmoe_sample(theta, n, d, K, cov='full', seed=0, stream=0) -> (X (n, d), y (n,), "
     "z (n,) int32): draws from the joint, generator keyed by (seed, stream) (draw order: "
     "csrc/mt_gmoe.h, mt_gmoe_sample)."},
    {NULL, NULL, 0, NULL}};

int mt_bind_gmoe(PyObject *module) { return PyModule_AddFunctions(module, gmoe_methods); }
