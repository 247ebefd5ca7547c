/* The model handle: Layer (one MoE layer) and Stack (a deep MoE) are ModelObjects of a kind,
 * and every operation and wrapper below exists once for both: the workspaces, the call's
 * configuration, forward, loss_and_grad, init, the trainer's model; layout, init_params,
 * forward, loss_and_grad, assign and the sizes.
 *
 * Concurrency (DESIGN.md): reads take a workspace of their own from the model's pool and may
 * run in any number of threads; writes are exclusive. */
#include "_bind.h"

#include <string.h>

#include "mt_size.h"

/* ---- the operations, one function each for both kinds ---- */

const char *bind_model_name(const ModelObject *m) { return m->kind == MODEL_STACK ? "Stack" : "Layer"; }

static mt_status ws_alloc(const ModelObject *m, void **ws, const any_config *cfg, size_t n)
{
    if (m->kind == MODEL_STACK)
        return mt_deep_workspace_alloc((mt_deep_workspace **)ws, &cfg->deep, n);
    return mt_moe_workspace_alloc((mt_moe_workspace **)ws, &cfg->moe, n);
}

void bind_ws_free(const ModelObject *m, void *ws)
{
    if (m->kind == MODEL_STACK) mt_deep_workspace_free(ws);
    else mt_moe_workspace_free(ws);
}

static size_t ws_capacity(const ModelObject *m, const void *ws)
{
    return m->kind == MODEL_STACK ? mt_deep_workspace_capacity(ws)
                                  : mt_moe_workspace_capacity(ws);
}

/* out (n, d_out); gates: one (n, E_l) buffer per layer; theta (P,); X (n, d_in) */
static mt_status model_forward(const ModelObject *m, const any_config *cfg, double *out,
                               double *const *gates, const double *theta, const double *X,
                               size_t n, void *ws)
{
    if (m->kind == MODEL_STACK) return mt_deep_forward(out, gates, theta, X, n, &cfg->deep, ws);
    return mt_moe_forward(out, gates[0], theta, X, n, &cfg->moe, ws);
}

static mt_status model_loss_and_grad(const ModelObject *m, const any_config *cfg, double *loss,
                                     double *grad, const double *theta, const double *X,
                                     const double *y, size_t n, void *ws)
{
    if (m->kind == MODEL_STACK)
        return mt_deep_mse_loss_and_grad(loss, grad, theta, X, y, n, &cfg->deep, ws);
    return mt_moe_mse_loss_and_grad(loss, grad, theta, X, y, n, &cfg->moe, ws);
}

/* theta (P,) as docs/model.md initialises it; a stack's layer l from stream l of the seed, so
 * layers are independent */
static mt_status model_init(const ModelObject *m, double *theta, uint64_t seed)
{
    if (m->kind == MODEL_LAYER) return mt_moe_init(theta, &m->cfg.moe, seed, 0);
    size_t off[MT_DEEP_MAX_LAYERS + 1];
    mt_deep_offsets(off, &m->cfg.deep);
    for (size_t l = 0; l < m->cfg.deep.n_layers; l++) {
        mt_status st = mt_moe_init(theta + off[l], &m->cfg.deep.layer[l], seed, l);
        if (st != MT_OK) return st;
    }
    return MT_OK;
}

const any_config *bind_configure(const ModelObject *m, const call_options *o,
                                 any_config *scratch, mt_why *why)
{
    if (m->kind == MODEL_STACK) {
        if (o->aux_switch != 0 || o->aux_z != 0) {
            mt_fail(why, "aux_switch", "aux_switch and aux_z apply to MoE layers only, not to "
                    "deep stacks");
            return NULL;
        }
        if (!o->has_temperature) return &m->cfg;
        scratch->deep = m->cfg.deep; /* one temperature for every layer, as DeepMoE has */
        for (size_t l = 0; l < scratch->deep.n_layers; l++)
            scratch->deep.layer[l].temperature = o->temperature;
        return mt_deep_config_validate(&scratch->deep, why) == MT_OK ? scratch : NULL;
    }
    const mt_moe_config *c = &m->cfg.moe;
    int same_t = !o->has_temperature || o->temperature == c->temperature;
    if (same_t && o->aux_switch == c->aux_switch && o->aux_z == c->aux_z) return &m->cfg;
    scratch->moe = *c;
    if (!same_t) scratch->moe.temperature = o->temperature;
    scratch->moe.aux_switch = o->aux_switch;
    scratch->moe.aux_z = o->aux_z;
    return mt_moe_config_validate(&scratch->moe, why) == MT_OK ? scratch : NULL;
}

mt_status bind_as_model(const ModelObject *m, const any_config *cfg, model_ctx *ctx,
                        mt_model *model, int project, void *ws)
{
    if (m->kind == MODEL_STACK) {
        if (project) return MT_EINVAL;
        ctx->deep.cfg = cfg->deep;
        ctx->deep.ws = ws;
        mt_deep_as_model(model, &ctx->deep);
        return MT_OK;
    }
    ctx->moe.cfg = cfg->moe;
    ctx->moe.ws = ws;
    ctx->moe.project_sphere = project;
    mt_moe_as_model(model, &ctx->moe);
    return MT_OK;
}

/* ---- claims ---- */

int bind_begin_read(ModelObject *m)
{
    if (m->writer) {
        PyErr_SetString(PyExc_RuntimeError, "this model is being written (trained or assigned) "
                                            "by another thread; read it after that finishes");
        return -1;
    }
    m->readers++;
    return 0;
}

void bind_end_read(ModelObject *m) { m->readers--; }

int bind_begin_write(ModelObject *m)
{
    if (m->writer || m->readers) {
        PyErr_Format(PyExc_RuntimeError, "this model is in use by another thread (%s); it can "
                     "be trained or assigned only while no other thread reads or writes it",
                     m->writer ? "being trained" : "being read");
        return -1;
    }
    m->writer = 1;
    return 0;
}

void bind_end_write(ModelObject *m) { m->writer = 0; }

/* ---- workspaces ---- */

int bind_fit_ws(const ModelObject *m, const any_config *cfg, void **ws, size_t n)
{
    if (*ws && ws_capacity(m, *ws) >= n) return 0;
    void *fresh = NULL;
    mt_status st = ws_alloc(m, &fresh, cfg, n);
    if (st != MT_OK) {
        bind_raise(st, "workspace", NULL);
        return -1;
    }
    bind_ws_free(m, *ws);
    *ws = fresh;
    return 0;
}

void *bind_take_ws(ModelObject *m, size_t n)
{
    void *ws = NULL;
    for (int i = m->pooled - 1; i >= 0; i--) /* the most recently used first */
        if (ws_capacity(m, m->pool[i]) >= n) {
            ws = m->pool[i];
            m->pool[i] = m->pool[--m->pooled];
            return ws;
        }
    if (m->pooled) ws = m->pool[--m->pooled]; /* too small: replaced below */
    if (bind_fit_ws(m, &m->cfg, &ws, n) < 0) {
        bind_ws_free(m, ws);
        return NULL;
    }
    return ws;
}

void bind_give_ws(ModelObject *m, void *ws)
{
    if (m->pooled < MODEL_POOL) m->pool[m->pooled++] = ws;
    else bind_ws_free(m, ws);
}

/* ---- the base type ---- */

ModelObject *bind_model(PyObject *obj, const char *name)
{
    if (!PyObject_TypeCheck(obj, &bind_ModelType)) {
        PyErr_Format(PyExc_TypeError, "%s must be a moetheory model (a moetheory._core.Layer or "
                     "Stack), got %.80s", name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    ModelObject *m = (ModelObject *)obj;
    if (!m->ready) {
        PyErr_Format(PyExc_ValueError, "%s: the %s was not initialised", name, bind_model_name(m));
        return NULL;
    }
    return m;
}

static void Model_dealloc(ModelObject *self)
{
    for (int i = 0; i < self->pooled; i++) bind_ws_free(self, self->pool[i]);
    Py_XDECREF(self->layout);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The parsed options of a call, as the model computes with them. */
static const any_config *call_config(ModelObject *m, const opt_real_arg *temperature,
                                     double aux_switch, double aux_z, any_config *scratch)
{
    call_options o = {temperature->given, temperature->value, aux_switch, aux_z};
    mt_why why = {0};
    const any_config *cfg = bind_configure(m, &o, scratch, &why);
    if (!cfg) bind_raise(MT_EINVAL, bind_model_name(m), &why);
    return cfg;
}

/* The call's inputs: theta the model's length, X (n, d_in). X: new reference, or NULL. */
static PyArrayObject *call_inputs(ModelObject *m, PyObject *theta, PyObject *X)
{
    if (bind_check_vector((PyArrayObject *)theta, m->n_params, "theta") < 0) return NULL;
    return bind_inputs(X, m->d_in);
}

/* The arguments of a read of (theta, X[, temperature]), forward's and jacobian's: the call's
   config, with *X a new reference; NULL with the exception set. */
static const any_config *read_call(ModelObject *self, PyObject *args, PyObject **theta,
                                   PyArrayObject **X, any_config *scratch)
{
    PyObject *X_obj;
    opt_real_arg temperature = {"temperature", NAN, 0};
    if (!PyArg_ParseTuple(args, "O!O|O&", &PyArray_Type, theta, &X_obj, conv_opt_real,
                          &temperature) ||
        !bind_model((PyObject *)self, "model"))
        return NULL;
    const any_config *cfg = call_config(self, &temperature, 0.0, 0.0, scratch);
    if (!cfg || !(*X = call_inputs(self, *theta, X_obj))) return NULL;
    return cfg;
}

static PyObject *Model_forward(ModelObject *self, PyObject *args)
{
    PyObject *theta, *result = NULL, *gates = NULL;
    PyArrayObject *X = NULL, *out = NULL;
    any_config scratch;
    const any_config *cfg = read_call(self, args, &theta, &X, &scratch);
    if (!cfg) return NULL;
    const size_t n = (size_t)PyArray_DIM(X, 0), L = self->n_layers;
    npy_intp os[2] = {(npy_intp)n, (npy_intp)self->d_out};
    out = (PyArrayObject *)PyArray_SimpleNew(2, os, NPY_DOUBLE);
    gates = PyList_New((Py_ssize_t)L);
    if (!out || !gates) goto done;
    double *gate_ptrs[MT_DEEP_MAX_LAYERS];
    for (size_t l = 0; l < L; l++) {
        npy_intp gs[2] = {(npy_intp)n, (npy_intp)self->n_experts[l]};
        PyObject *g = PyArray_SimpleNew(2, gs, NPY_DOUBLE);
        if (!g) goto done;
        PyList_SET_ITEM(gates, (Py_ssize_t)l, g);
        gate_ptrs[l] = PyArray_DATA((PyArrayObject *)g);
    }
    if (bind_begin_read(self) < 0) goto done;
    void *ws = bind_take_ws(self, n);
    if (!ws) {
        bind_end_read(self);
        goto done;
    }
    mt_status st;
    Py_BEGIN_ALLOW_THREADS
    st = model_forward(self, cfg, PyArray_DATA(out), gate_ptrs,
                       PyArray_DATA((PyArrayObject *)theta), PyArray_DATA(X), n, ws);
    Py_END_ALLOW_THREADS
    bind_give_ws(self, ws);
    bind_end_read(self);
    if (st != MT_OK) {
        bind_raise(st, "forward", NULL);
        goto done;
    }
    if (bind_check_result("forward", PyArray_DATA(out), n * self->d_out) < 0) goto done;
    for (size_t l = 0; l < L; l++)
        if (bind_check_result("forward", gate_ptrs[l], n * self->n_experts[l]) < 0) goto done;
    result = PyTuple_Pack(2, (PyObject *)out,
                          self->gates_as_list ? gates : PyList_GET_ITEM(gates, 0));
done:
    Py_XDECREF(X);
    Py_XDECREF(out);
    Py_XDECREF(gates);
    return result;
}

static PyObject *Model_loss_and_grad(ModelObject *self, PyObject *args)
{
    PyObject *theta, *X_obj, *y_obj, *result = NULL;
    PyArrayObject *X = NULL, *y = NULL, *grad = NULL;
    opt_real_arg temperature = {"temperature", NAN, 0};
    real_arg aux_switch = {"aux_switch", 0.0}, aux_z = {"aux_z", 0.0};
    any_config scratch;
    if (!PyArg_ParseTuple(args, "O!OO|O&O&O&", &PyArray_Type, &theta, &X_obj, &y_obj,
                          conv_opt_real, &temperature, conv_real, &aux_switch, conv_real, &aux_z) ||
        !bind_model((PyObject *)self, "model"))
        return NULL;
    const any_config *cfg = call_config(self, &temperature, aux_switch.value, aux_z.value,
                                        &scratch);
    if (!cfg || !(X = call_inputs(self, theta, X_obj))) return NULL;
    const size_t n = (size_t)PyArray_DIM(X, 0), P = self->n_params;
    y = bind_targets(y_obj, n, self->d_out);
    npy_intp gs[1] = {(npy_intp)P};
    if (y) grad = (PyArrayObject *)PyArray_SimpleNew(1, gs, NPY_DOUBLE);
    if (!grad || bind_begin_read(self) < 0) goto done;
    void *ws = bind_take_ws(self, n);
    if (!ws) {
        bind_end_read(self);
        goto done;
    }
    double loss = 0.0;
    mt_status st;
    Py_BEGIN_ALLOW_THREADS
    st = model_loss_and_grad(self, cfg, &loss, PyArray_DATA(grad),
                             PyArray_DATA((PyArrayObject *)theta), PyArray_DATA(X),
                             PyArray_DATA(y), n, ws);
    Py_END_ALLOW_THREADS
    bind_give_ws(self, ws);
    bind_end_read(self);
    if (st != MT_OK) {
        bind_raise(st, "loss_and_grad", NULL);
        goto done;
    }
    if (bind_check_result("loss_and_grad", &loss, 1) < 0 ||
        bind_check_result("loss_and_grad", PyArray_DATA(grad), P) < 0)
        goto done;
    result = Py_BuildValue("(dO)", loss, (PyObject *)grad);
done:
    Py_XDECREF(X);
    Py_XDECREF(y);
    Py_XDECREF(grad);
    return result;
}

/* J (n, P): the residual Jacobian d f(x_i) / d theta of a layer with one output (a read). */
static PyObject *Model_jacobian(ModelObject *self, PyObject *args)
{
    PyObject *theta;
    PyArrayObject *X = NULL, *J = NULL;
    any_config scratch;
    const any_config *cfg = read_call(self, args, &theta, &X, &scratch);
    if (!cfg) return NULL;
    if (self->kind != MODEL_LAYER || self->d_out != 1) {
        PyErr_SetString(PyExc_ValueError, "jacobian is defined for a one-layer model with "
                        "d_out = 1 (the residuals of a least-squares fit)");
        goto fail;
    }
    const size_t n = (size_t)PyArray_DIM(X, 0), P = self->n_params;
    size_t entries;
    if (!mt_size_mul(&entries, n, P, MT_MAX_SIZE)) {
        PyErr_Format(PyExc_ValueError, "X: the Jacobian of %zu rows and %zu parameters exceeds "
                     "the core's size limit of %zu entries; pass fewer rows", n, P,
                     (size_t)MT_MAX_SIZE);
        goto fail;
    }
    npy_intp js[2] = {(npy_intp)n, (npy_intp)P};
    J = (PyArrayObject *)PyArray_SimpleNew(2, js, NPY_DOUBLE);
    if (!J || bind_begin_read(self) < 0) goto fail;
    void *ws = bind_take_ws(self, n);
    if (!ws) {
        bind_end_read(self);
        goto fail;
    }
    mt_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mt_moe_jacobian(PyArray_DATA(J), PyArray_DATA((PyArrayObject *)theta), PyArray_DATA(X),
                         n, &cfg->moe, ws);
    Py_END_ALLOW_THREADS
    bind_give_ws(self, ws);
    bind_end_read(self);
    if (st != MT_OK) {
        bind_raise(st, "jacobian", NULL);
        goto fail;
    }
    if (bind_check_result("jacobian", PyArray_DATA(J), entries) < 0) goto fail;
    Py_DECREF(X);
    return (PyObject *)J;
fail:
    Py_XDECREF(X);
    Py_XDECREF(J);
    return NULL;
}

/* theta must be the model's own kind of vector and writable (init_params, assign). */
static int writable_theta(ModelObject *m, PyArrayObject *theta)
{
    if (PyArray_TYPE(theta) != NPY_DOUBLE || PyArray_NDIM(theta) != 1 ||
        !PyArray_IS_C_CONTIGUOUS(theta) || !PyArray_ISWRITEABLE(theta) ||
        (size_t)PyArray_DIM(theta, 0) != m->n_params) {
        PyErr_Format(PyExc_ValueError, "theta must be a writable float64 vector of length %zu",
                     m->n_params);
        return -1;
    }
    return 0;
}

static PyObject *Model_init_params(ModelObject *self, PyObject *args)
{
    PyArrayObject *theta;
    seed_arg seed = {"seed", 0};
    if (!PyArg_ParseTuple(args, "O!O&", &PyArray_Type, &theta, conv_seed, &seed) ||
        !bind_model((PyObject *)self, "model") || writable_theta(self, theta) < 0 ||
        bind_begin_write(self) < 0)
        return NULL;
    mt_status st = model_init(self, PyArray_DATA(theta), seed.value);
    bind_end_write(self);
    if (st != MT_OK) return bind_raise(st, "init_params", NULL);
    Py_RETURN_NONE;
}

/* assign(theta, value): theta[...] = value, checked (shape, real dtype, finite) and exclusive:
 * refused while another thread reads or trains the model. The copy runs with the GIL held, so
 * no read can start in the middle of it. */
static PyObject *Model_assign(ModelObject *self, PyObject *args)
{
    PyArrayObject *theta, *value = NULL;
    PyObject *value_obj;
    if (!PyArg_ParseTuple(args, "O!O", &PyArray_Type, &theta, &value_obj) ||
        !bind_model((PyObject *)self, "model") || writable_theta(self, theta) < 0)
        return NULL;
    char text[48];
    snprintf(text, sizeof text, "(%zu,)", self->n_params);
    npy_intp shape[1] = {(npy_intp)self->n_params};
    value = bind_float_array(value_obj, "theta", 1, shape, text);
    if (!value) return NULL;
    if (bind_begin_write(self) < 0) {
        Py_DECREF(value);
        return NULL;
    }
    memmove(PyArray_DATA(theta), PyArray_DATA(value), self->n_params * sizeof(double));
    bind_end_write(self);
    Py_DECREF(value);
    Py_RETURN_NONE;
}

static PyObject *Model_layout(ModelObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!bind_model((PyObject *)self, "model")) return NULL;
    return PyList_GetSlice(self->layout, 0, PyList_GET_SIZE(self->layout)); /* a copy */
}

static PyObject *Model_get_n_params(ModelObject *self, void *Py_UNUSED(closure))
{
    return bind_model((PyObject *)self, "model") ? PyLong_FromSize_t(self->n_params) : NULL;
}

static PyObject *Model_get_d_in(ModelObject *self, void *Py_UNUSED(closure))
{
    return bind_model((PyObject *)self, "model") ? PyLong_FromSize_t(self->d_in) : NULL;
}

static PyObject *Model_get_d_out(ModelObject *self, void *Py_UNUSED(closure))
{
    return bind_model((PyObject *)self, "model") ? PyLong_FromSize_t(self->d_out) : NULL;
}

static PyObject *Model_get_in_use(ModelObject *self, void *Py_UNUSED(closure))
{
    return Py_BuildValue("(ii)", self->readers, self->writer);
}

/* check_options(temperature=None, aux_switch=0, aux_z=0): the call options' rules, for a
 * Python setter that keeps an option for later calls. */
static PyObject *Model_check_options(ModelObject *self, PyObject *args)
{
    opt_real_arg temperature = {"temperature", NAN, 0};
    real_arg aux_switch = {"aux_switch", 0.0}, aux_z = {"aux_z", 0.0};
    any_config scratch;
    if (!PyArg_ParseTuple(args, "|O&O&O&", conv_opt_real, &temperature, conv_real, &aux_switch,
                          conv_real, &aux_z) ||
        !bind_model((PyObject *)self, "model") ||
        !call_config(self, &temperature, aux_switch.value, aux_z.value, &scratch))
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef Model_methods[] = {
    {"check_options", (PyCFunction)Model_check_options, METH_VARARGS,
     "check_options(temperature=None, aux_switch=0, aux_z=0): raise ValueError or TypeError "
     "naming the option if a call with these options would."},
    {"layout", (PyCFunction)Model_layout, METH_NOARGS,
     "layout() -> list of (name, offset, shape) of the blocks of theta, in order (a stack's "
     "names prefixed 'layers.<l>.')."},
    {"init_params", (PyCFunction)Model_init_params, METH_VARARGS,
     "init_params(theta, seed): fill theta with the documented initialisation (a stack's layer l "
     "from stream l of the seed)."},
    {"forward", (PyCFunction)Model_forward, METH_VARARGS,
     "forward(theta, X, temperature=None) -> (out (n, d_out), gates): gates (n, E) for a layer, "
     "a list of each layer's (n, E_l) for a stack; temperature None: the model's own."},
    {"loss_and_grad", (PyCFunction)Model_loss_and_grad, METH_VARARGS,
     "loss_and_grad(theta, X, y, temperature=None, aux_switch=0, aux_z=0) -> (loss, grad (P,)): "
     "the mean squared error plus the auxiliary router losses of these coefficients."},
    {"jacobian", (PyCFunction)Model_jacobian, METH_VARARGS,
     "jacobian(theta, X[, temperature]) -> J (n, P): d f(x_i) / d theta (one layer, d_out = 1)"},
    {"assign", (PyCFunction)Model_assign, METH_VARARGS,
     "assign(theta, value): theta[...] = value (shape (P,), real, finite), refused while "
     "another thread reads or trains the model."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Model_getset[] = {
    {"n_params", (getter)Model_get_n_params, NULL, "number of parameters P", NULL},
    {"d_in", (getter)Model_get_d_in, NULL, "input dimension", NULL},
    {"d_out", (getter)Model_get_d_out, NULL, "output dimension", NULL},
    {"in_use", (getter)Model_get_in_use, NULL, "(readers, writer) now: calls holding the model",
     NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyObject *Model_repr(ModelObject *self)
{
    return PyUnicode_FromFormat("<moetheory._core.Model: %s, P=%zu, %zu -> %zu>",
                                bind_model_name(self), self->n_params, self->d_in, self->d_out);
}

PyTypeObject bind_ModelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "moetheory._core.Model",
    .tp_basicsize = sizeof(ModelObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A model of the C core, made by Layer(...) or Stack(...): its configuration "
              "(immutable), parameter layout and workspaces.",
    .tp_repr = (reprfunc)Model_repr,
    .tp_dealloc = (destructor)Model_dealloc,
    .tp_methods = Model_methods,
    .tp_getset = Model_getset,
};

/* The (name, offset, shape) tuple of one block; prefix "" or "layers.<l>.". */
static PyObject *block_item(const mt_param_block *b, const char *prefix, size_t offset)
{
    PyObject *shape = PyTuple_New((Py_ssize_t)b->ndim);
    if (!shape) return NULL;
    for (size_t j = 0; j < b->ndim; j++) {
        PyObject *s = PyLong_FromSize_t(b->shape[j]);
        if (!s) {
            Py_DECREF(shape);
            return NULL;
        }
        PyTuple_SET_ITEM(shape, (Py_ssize_t)j, s);
    }
    return Py_BuildValue("(NnN)", PyUnicode_FromFormat("%s%s", prefix, b->name),
                         (Py_ssize_t)(offset + b->offset), shape);
}

/* Append the blocks of layer cfg at offset to list. 0 or -1. */
static int add_layout(PyObject *list, const mt_moe_config *cfg, const char *prefix,
                      size_t offset)
{
    mt_moe_layout L;
    mt_moe_layout_of(&L, cfg);
    for (size_t i = 0; i < L.n_blocks; i++) {
        PyObject *item = block_item(&L.block[i], prefix, offset);
        int rc = item ? PyList_Append(list, item) : -1;
        Py_XDECREF(item);
        if (rc < 0) return -1;
    }
    return 0;
}

/* ---- Layer: one MoE layer ---- */

static int layer_init(ModelObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"d_in", "n_experts", "expert", "hidden", "activation", "gate",
                             "top_k", "temperature", "gate_activation", "groups", "d_out",
                             "bias", "normalize", "depth", "n_shared", NULL};
    size_arg d_in = {"d_in", 0}, E = {"n_experts", 0}, hidden = {"hidden", 0};
    size_arg d_out = {"d_out", 1}, depth = {"depth", 1}, n_shared = {"n_shared", 0};
    opt_size_arg top_k = {"top_k", 0, 0}, groups = {"groups", 0, 0};
    name_arg expert = {"expert", mt_expert_names, MT_EXPERT_COUNT, 0};
    name_arg act = {"activation", mt_act_names, MT_ACT_COUNT, 0};
    name_arg gate = {"gate", mt_gate_names, MT_GATE_COUNT, 0};
    name_arg gate_act = {"gate_activation", mt_act_names, MT_ACT_COUNT, MT_ACT_IDENTITY};
    real_arg temperature = {"temperature", 1.0};
    bool_arg bias = {"bias", 1}, normalize = {"normalize", 0};
    PyObject *gate_act_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(
            args, kw, "O&O&O&O&O&O&O&O&OO&O&O&|O&O&O&", kwlist, conv_size, &d_in, conv_size, &E,
            conv_name, &expert, conv_size, &hidden, conv_name, &act, conv_name, &gate,
            conv_opt_size, &top_k, conv_real, &temperature, &gate_act_obj, conv_opt_size,
            &groups, conv_size, &d_out, conv_bool, &bias, conv_bool, &normalize, conv_size,
            &depth, conv_size, &n_shared))
        return -1;
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
        .n_shared = n_shared.value,
        .gate = (mt_gate_kind)gate.value, .expert = (mt_expert_kind)expert.value,
        .activation = (mt_act)act.value, .gate_activation = (mt_act)gate_act.value,
        .temperature = temperature.value, .bias = bias.value, .normalize = normalize.value};
    mt_why why = {0};
    if (mt_moe_config_validate(&c, &why) != MT_OK) {
        bind_raise(MT_EINVAL, "Layer", &why);
        return -1;
    }
    PyObject *layout = PyList_New(0);
    if (!layout || add_layout(layout, &c, "", 0) < 0) {
        Py_XDECREF(layout);
        return -1;
    }
    mt_moe_layout L;
    mt_moe_layout_of(&L, &c);
    self->cfg.moe = c;
    self->layout = layout;
    self->n_params = L.n_params;
    self->d_in = c.d_in;
    self->d_out = c.d_out;
    self->n_layers = 1;
    self->n_experts[0] = c.n_experts;
    self->ready = 1;
    return 0;
}

/* ---- Stack: a deep MoE, a plain stack of Layers ---- */

static int stack_init(ModelObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"layers", NULL};
    PyObject *layers;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", kwlist, &layers)) return -1;
    PyObject *seq = PySequence_Fast(layers, "layers must be a sequence of moetheory._core.Layer");
    if (!seq) return -1;
    PyObject *layout = NULL;
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
        ModelObject *layer = PyObject_TypeCheck(item, &bind_ModelType) ? (ModelObject *)item
                                                                        : NULL;
        if (!layer || !layer->ready || layer->kind != MODEL_LAYER) {
            PyErr_Format(PyExc_TypeError, "layers[%zd] must be an initialised "
                         "moetheory._core.Layer", l);
            goto done;
        }
        cfg.layer[l] = layer->cfg.moe;
    }
    mt_why why = {0};
    if (mt_deep_config_validate(&cfg, &why) != MT_OK) {
        bind_raise(MT_EINVAL, "Stack", &why);
        goto done;
    }
    size_t off[MT_DEEP_MAX_LAYERS + 1];
    mt_deep_offsets(off, &cfg);
    layout = PyList_New(0);
    if (!layout) goto done;
    for (size_t l = 0; l < cfg.n_layers; l++) {
        char prefix[32];
        snprintf(prefix, sizeof prefix, "layers.%zu.", l);
        if (add_layout(layout, &cfg.layer[l], prefix, off[l]) < 0) goto done;
        self->n_experts[l] = cfg.layer[l].n_experts;
    }
    self->cfg.deep = cfg;
    self->layout = layout;
    layout = NULL;
    self->n_params = off[cfg.n_layers];
    self->d_in = cfg.layer[0].d_in;
    self->d_out = cfg.layer[cfg.n_layers - 1].d_out;
    self->n_layers = cfg.n_layers;
    self->gates_as_list = 1;
    self->ready = 1;
    rc = 0;
done:
    Py_XDECREF(layout);
    Py_DECREF(seq);
    return rc;
}

/* ---- the constructors: Layer(...) and Stack(...) make a Model of their kind ---- */

static PyObject *make_model(model_kind kind, PyObject *args, PyObject *kw)
{
    ModelObject *self = (ModelObject *)bind_ModelType.tp_alloc(&bind_ModelType, 0);
    if (!self) return NULL;
    self->kind = kind;
    if ((kind == MODEL_STACK ? stack_init : layer_init)(self, args, kw) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static PyObject *Layer(PyObject *Py_UNUSED(m), PyObject *args, PyObject *kw)
{
    return make_model(MODEL_LAYER, args, kw);
}

static PyObject *Stack(PyObject *Py_UNUSED(m), PyObject *args, PyObject *kw)
{
    return make_model(MODEL_STACK, args, kw);
}

static PyMethodDef model_functions[] = {
    {"Layer", (PyCFunction)(void (*)(void))Layer, METH_VARARGS | METH_KEYWORDS,
     "Layer(d_in, n_experts, expert, hidden, activation, gate, top_k, temperature, "
     "gate_activation, groups, d_out, bias, normalize=False, depth=1, n_shared=0) -> Model: one "
     "MoE layer "
     "of the C core (top_k, gate_activation and groups may be None)."},
    {"Stack", (PyCFunction)(void (*)(void))Stack, METH_VARARGS | METH_KEYWORDS,
     "Stack(layers) -> Model: a deep MoE, a plain stack of Layer models with one flat theta."},
    {NULL, NULL, 0, NULL}};

/* ---- registration ---- */

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

/* module.name = value, stealing value (NULL: the error of making it). 0 or -1. */
static int add_object(PyObject *module, const char *name, PyObject *value)
{
    if (!value || PyModule_AddObject(module, name, value) < 0) {
        Py_XDECREF(value);
        return -1;
    }
    return 0;
}

int mt_bind_model(PyObject *module)
{
    if (bind_add_type(module, "Model", &bind_ModelType) < 0 ||
        PyModule_AddFunctions(module, model_functions) < 0)
        return -1;
    /* the core's name tables, in enum order: Python passes names, never their indices */
    const struct {
        const char *name;
        const char *const *table;
        size_t count;
    } tables[] = {{"ACTIVATIONS", mt_act_names, MT_ACT_COUNT},
                  {"GATES", mt_gate_names, MT_GATE_COUNT},
                  {"EXPERTS", mt_expert_names, MT_EXPERT_COUNT},
                  {"INPUTS", mt_input_names, MT_INPUT_COUNT},
                  {"OPTIMIZERS", mt_opt_names, MT_OPT_COUNT},
                  {"SCHEDULES", mt_schedule_names, MT_SCHEDULE_COUNT},
                  {"EM_EXPERTS", mt_em_expert_names, MT_EM_EXPERT_COUNT},
                  {"EM_ACTIVATIONS", mt_em_act_names, MT_EM_ACT_COUNT}};
    for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++)
        if (add_object(module, tables[i].name, names_tuple(tables[i].table, tables[i].count)) < 0)
            return -1;
    return 0;
}
