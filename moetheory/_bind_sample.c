/* Online data: the ClusterTask source (the clustered single-index task of csrc/mt_cluster.h),
 * the online arguments Trainer and draw share (bind_online_parse), and draw, online samples
 * outside a trainer. */
#include "_bind.h"

#include <math.h>
#include <string.h>

#include "mt_rng.h"
#include "mt_size.h"

/* ---- the clustered single-index task ---- */
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

/* A checked float64 copy that nobody else holds (bind_float_array may return obj itself). */
static PyArrayObject *private_copy(PyObject *obj, const char *name, int ndim, const npy_intp *shape,
                                   const char *text)
{
    PyArrayObject *a = bind_float_array(obj, name, ndim, shape, text);
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
        bind_raise(MT_EINVAL, "ClusterTask", NULL);
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
        bind_raise(st, "ClusterTask.draw", NULL);
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

/* ---- online data: a teacher and an input distribution, or a ClusterTask source ---- */

void bind_online_clear(online_spec *o)
{
    Py_CLEAR(o->teacher);
    Py_CLEAR(o->teacher_theta);
    Py_CLEAR(o->centres);
    Py_CLEAR(o->weights);
    Py_CLEAR(o->source);
}

void bind_online_set_ws(online_spec *o, void *ws)
{
    if (o->teacher)
        (void)bind_as_model(o->teacher, &o->teacher_cfg, &o->teacher_ctx, &o->teacher_model,
                            0, ws);
}

static int online_source(online_spec *o, mt_train_data *data, PyObject *source, size_t d_in,
                         size_t d_out)
{
    if (!PyObject_TypeCheck(source, &ClusterTaskType)) {
        PyErr_Format(PyExc_TypeError, "source must be a moetheory._core.ClusterTask, got %.80s",
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

/* The mixture's centres (C, d_in) and weights (C,) or None. */
static int online_mixture(online_spec *o, mt_train_data *data, const online_args *a,
                          size_t d_in)
{
    char text[80];
    if (a->centres == Py_None) {
        PyErr_SetString(PyExc_ValueError, "a mixture input needs centres");
        return -1;
    }
    npy_intp cs[2] = {-1, (npy_intp)d_in};
    snprintf(text, sizeof text, "(C, %zu)", d_in);
    o->centres = bind_float_array(a->centres, "centres", 2, cs, text);
    if (!o->centres) return -1;
    npy_intp C = PyArray_DIM(o->centres, 0);
    if (a->weights != Py_None) {
        npy_intp ws[1] = {C};
        snprintf(text, sizeof text, "(%zd,)", (Py_ssize_t)C);
        o->weights = bind_float_array(a->weights, "weights", 1, ws, text);
        if (!o->weights) return -1;
        const double *w = PyArray_DATA(o->weights);
        double sum = 0.0;
        int nonneg = 1;
        for (npy_intp c = 0; c < C; c++) {
            nonneg &= w[c] >= 0;
            sum += w[c];
        }
        if (!nonneg || !(sum > 0) || !isfinite(sum)) {
            PyErr_SetString(PyExc_ValueError, "weights must be >= 0 with a positive finite sum");
            return -1;
        }
    }
    data->centres = PyArray_DATA(o->centres);
    data->weights = o->weights ? PyArray_DATA(o->weights) : NULL;
    data->n_clusters = (size_t)C;
    return 0;
}

int bind_online_parse(online_spec *o, mt_train_data *data, const online_args *a, size_t d_in,
                      size_t d_out)
{
    bind_online_clear(o);
    if (a->source != Py_None) return online_source(o, data, a->source, d_in, d_out);
    ModelObject *T = bind_model(a->teacher, "teacher");
    if (!T) return -1;
    if (!PyArray_Check(a->teacher_theta)) {
        PyErr_Format(PyExc_TypeError, "teacher_theta must be a float64 array, got %.80s",
                     Py_TYPE(a->teacher_theta)->tp_name);
        return -1;
    }
    if (bind_check_vector((PyArrayObject *)a->teacher_theta, T->n_params, "teacher_theta") < 0)
        return -1;
    if (d_in && (T->d_in != d_in || T->d_out != d_out)) {
        PyErr_Format(PyExc_ValueError,
                     "teacher must map %zu inputs to %zu outputs like the model, got %zu -> %zu",
                     d_in, d_out, T->d_in, T->d_out);
        return -1;
    }
    d_in = T->d_in;
    const int input = a->input.value;
    const double scale = a->scale.value, low = a->low.value, high = a->high.value;
    const double noise_sd = a->noise_sd.value;
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
    if (input == MT_INPUT_MIXTURE && online_mixture(o, data, a, d_in) < 0) return -1;
    /* the teacher computes with its own configuration and this temperature */
    call_options opts = CALL_OPTIONS_DEFAULT;
    opts.has_temperature = a->teacher_temperature.given;
    opts.temperature = a->teacher_temperature.value;
    mt_why why = {0};
    const any_config *cfg = bind_configure(T, &opts, &o->teacher_cfg, &why);
    if (!cfg) {
        bind_raise(MT_EINVAL, "teacher", &why);
        return -1;
    }
    if (cfg != &o->teacher_cfg) o->teacher_cfg = *cfg;
    Py_INCREF(T);
    o->teacher = T;
    Py_INCREF(a->teacher_theta);
    o->teacher_theta = (PyArrayObject *)a->teacher_theta;
    bind_online_set_ws(o, NULL);
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

/* ---- draw: online data outside a trainer ---- */

/* draw(n, teacher=..., ..., seed=0, stream=0): n samples drawn by mt_train_data_draw from the
 * generator keyed by (seed, stream), with the Trainer's online arguments. The trainer draws
 * from (seed, stream 0) and nothing else does, so draw(n, ..., seed=s) is exactly the first
 * batch of a Trainer(..., seed=s, batch_size=n) on the same data. The teacher is read, so any
 * number of threads may draw from one teacher at once. */
static PyObject *draw(PyObject *Py_UNUSED(m), PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"n", "teacher", "teacher_theta", "input", "scale", "low", "high",
                             "centres", "weights", "noise_sd", "source", "seed", "stream",
                             "teacher_temperature", NULL};
    PyObject *result = NULL;
    PyArrayObject *X = NULL, *y = NULL;
    void *ws = NULL;
    size_arg n_arg = {"n", 0};
    online_args a = ONLINE_ARGS_INIT;
    seed_arg seed = {"seed", 0}, stream = {"stream", 0};
    online_spec o = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|OOO&O&O&O&OOO&OO&O&O&", kwlist, conv_size,
                                     &n_arg, &a.teacher, &a.teacher_theta, conv_name, &a.input,
                                     conv_real, &a.scale, conv_real, &a.low, conv_real, &a.high,
                                     &a.centres, &a.weights, conv_real, &a.noise_sd, &a.source,
                                     conv_seed, &seed, conv_seed, &stream, conv_opt_real,
                                     &a.teacher_temperature))
        return NULL;
    if (n_arg.value < 1 || n_arg.value > MT_MAX_SIZE) {
        PyErr_Format(PyExc_ValueError, "n must be an integer in [1, %zu], got %zu", MT_MAX_SIZE,
                     n_arg.value);
        return NULL;
    }
    const npy_intp n = (npy_intp)n_arg.value;
    if ((a.teacher == Py_None) == (a.source == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "draw needs exactly one of teacher and source");
        return NULL;
    }
    mt_train_data data = {0};
    if (bind_online_parse(&o, &data, &a, 0, 0) < 0) goto done;
    size_t d_in = o.source ? data.source->d_in : data.teacher->d_in;
    size_t d_out = o.source ? data.source->d_out : data.teacher->d_out;
    npy_intp xs[2] = {n, (npy_intp)d_in}, ys[2] = {n, (npy_intp)d_out};
    X = (PyArrayObject *)PyArray_SimpleNew(2, xs, NPY_DOUBLE);
    y = (PyArrayObject *)PyArray_SimpleNew(2, ys, NPY_DOUBLE);
    if (!X || !y) goto done;
    if (o.teacher) {
        if (bind_begin_read(o.teacher) < 0) goto done;
        ws = bind_take_ws(o.teacher, (size_t)n);
        if (!ws) {
            bind_end_read(o.teacher);
            goto done;
        }
        bind_online_set_ws(&o, ws);
    }
    mt_rng r;
    mt_rng_init(&r, seed.value, stream.value);
    mt_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mt_train_data_draw(PyArray_DATA(X), PyArray_DATA(y), &r, &data, (size_t)n, d_in, d_out);
    Py_END_ALLOW_THREADS
    if (o.teacher) {
        bind_give_ws(o.teacher, ws);
        bind_end_read(o.teacher);
    }
    if (st != MT_OK) {
        bind_raise(st, "draw", NULL);
        goto done;
    }
    if (bind_check_result("draw", PyArray_DATA(y), (size_t)n * d_out) < 0) goto done;
    result = PyTuple_Pack(2, (PyObject *)X, (PyObject *)y);
done:
    bind_online_clear(&o);
    Py_XDECREF(X);
    Py_XDECREF(y);
    return result;
}

static PyMethodDef sample_methods[] = {
    {"draw", (PyCFunction)(void (*)(void))draw, METH_VARARGS | METH_KEYWORDS,
     "draw(n, teacher=None, teacher_theta=None, input='gaussian', scale=1.0, low=-1.0, "
     "high=1.0, centres=None, weights=None, noise_sd=0.0, source=None, seed=0, stream=0, "
     "teacher_temperature=None) -> (X (n, d_in), y (n, d_out)): n online samples as a Trainer "
     "draws them (the Trainer's online arguments), from the generator keyed by (seed, stream); "
     "stream 0 is the trainer's, so this is the first batch of a Trainer with this seed and "
     "batch_size n (csrc/mt_train.h, mt_train_data_draw, gives the draw order)."},
    {NULL, NULL, 0, NULL}};

int mt_bind_sample(PyObject *module)
{
    if (bind_add_type(module, "ClusterTask", &ClusterTaskType) < 0) return -1;
    return PyModule_AddFunctions(module, sample_methods);
}
