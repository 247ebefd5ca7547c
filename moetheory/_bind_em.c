/* The EM of csrc/mt_em.h for the softmax-gated Gaussian MoE: em_fit, em_loglik and em_sample.
 * The flat parameter vector is mt_em.h's: beta0 (K,), beta1 (K, d), a (K, d), b (K,), [c (K,)],
 * sigma2 (K,). Arguments are checked here so that errors name the argument; sizes and options
 * by the core's own checks (mt_em_check_sizes, mt_em_options_validate). */
#include "_bind.h"

#include <limits.h>
#include <string.h>

#include "mt_em.h"
#include "mt_rng.h"

/* em_fit, em_loglik and em_sample: the softmax-gated Gaussian MoE EM of csrc/mt_em.h. The flat
 * parameter vector is mt_em.h's: beta0 (K,), beta1 (K, d), a (K, d), b (K,), [c (K,)],
 * sigma2 (K,). Arguments are checked here so that errors name the argument; sizes and options
 * by the core's own checks (mt_em_check_sizes, mt_em_options_validate). */

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
    if (mt_em_options_validate(opt, &why) != MT_OK) {
        bind_raise(MT_EINVAL, "em", &why);
        return -1;
    }
    npy_intp xs[2] = {-1, -1};
    *X_out = bind_float_array(X_obj, "X", 2, xs, "(n, d)");
    if (!*X_out) return -1;
    const size_t n = (size_t)PyArray_DIM(*X_out, 0), d = (size_t)PyArray_DIM(*X_out, 1);
    const size_t K = m->K.value;
    /* before any size is computed from d and K */
    if (mt_em_check_sizes(n, d, K, &why) != MT_OK) {
        bind_raise(MT_EINVAL, "em", &why);
        return -1;
    }
    char text[80];
    npy_intp ys[1] = {(npy_intp)n};
    snprintf(text, sizeof text, "(%zu,)", n);
    if (y_obj) {
        *y_out = bind_float_array(y_obj, "y", 1, ys, text);
        if (!*y_out) return -1;
    }
    const int outer_scale = opt->outer_scale;
    size_t P = mt_em_params_size(d, K, outer_scale);
    npy_intp ts[1] = {(npy_intp)P};
    snprintf(text, sizeof text, "(%zu,) = (K (2 d + 3)%s,)", P, outer_scale ? " + K" : "");
    *theta_out = bind_float_array(theta_obj, theta_name, 1, ts, text);
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
                             "tol", "gate_steps", "expert_steps", "accelerate", "theta_name",
                             NULL};
    PyObject *theta_obj, *X_obj, *y_obj, *result = NULL;
    PyArrayObject *theta = NULL, *X = NULL, *y = NULL, *fitted = NULL, *trace = NULL;
    PyArrayObject *flags = NULL;
    PyObject *trace_done = NULL;
    mt_em_workspace *ws = NULL;
    em_model_args ma = EM_MODEL_ARGS_INIT;
    size_arg max_iter = {"max_iter", 2000}, gate_steps = {"gate_steps", MT_EM_GATE_STEPS};
    size_arg expert_steps = {"expert_steps", MT_EM_EXPERT_STEPS};
    real_arg tol = {"tol", 1e-6};
    bool_arg accelerate = {"accelerate", 0};
    const char *theta_name = "theta";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO&|O&O&O&O&O&O&O&O&s", kwlist, &theta_obj,
                                     &X_obj, &y_obj, conv_size, &ma.K, conv_name, &ma.expert,
                                     conv_name, &ma.act, conv_bool, &ma.outer_scale, conv_size,
                                     &max_iter, conv_real, &tol, conv_size, &gate_steps,
                                     conv_size, &expert_steps, conv_bool, &accelerate,
                                     &theta_name))
        return NULL;
    mt_em_options opt;
    mt_em_options_default(&opt);
    if (em_count(&opt.max_iter, &max_iter) < 0 || em_count(&opt.gate_steps, &gate_steps) < 0 ||
        em_count(&opt.expert_steps, &expert_steps) < 0)
        return NULL;
    opt.tol = tol.value;
    opt.accelerate = accelerate.value;
    if (em_parse(theta_obj, theta_name, X_obj, y_obj, &ma, &opt, &theta, &X, &y) < 0) goto done;
    opt.interrupt = bind_poll_signals;
    const size_t n = (size_t)PyArray_DIM(X, 0), d = (size_t)PyArray_DIM(X, 1), K = ma.K.value;
    /* the fit works on a copy: the caller's theta is never written */
    fitted = (PyArrayObject *)PyArray_NewCopy(theta, NPY_CORDER);
    npy_intp trs[1] = {(npy_intp)opt.max_iter}, fs[1] = {(npy_intp)K};
    trace = (PyArrayObject *)PyArray_SimpleNew(1, trs, NPY_DOUBLE);
    flags = (PyArrayObject *)PyArray_SimpleNew(1, fs, NPY_INT);
    if (!fitted || !trace || !flags) goto done;
    mt_status st = mt_em_workspace_alloc(&ws, n, d, K);
    if (st != MT_OK) {
        bind_raise(st, "em_fit workspace", NULL);
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
        bind_raise(st, "em_fit", NULL);
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
        bind_raise(st, "em_loglik workspace", NULL);
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
        bind_raise(st, "em_loglik", NULL);
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
        bind_raise(st, "em_sample", NULL);
        Py_CLEAR(y);
    }
done:
    Py_XDECREF(theta);
    Py_XDECREF(X);
    Py_XDECREF(no_y);
    return (PyObject *)y;
}

static PyMethodDef em_methods[] = {
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

int mt_bind_em(PyObject *module)
{
    if (PyModule_AddFunctions(module, em_methods) < 0) return -1;
    return PyModule_AddObject(module, "EM_MAX_DIM", PyLong_FromLong(MT_EM_MAX_DIM));
}
