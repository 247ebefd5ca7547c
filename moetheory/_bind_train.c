/* The Trainer: a training loop of csrc/mt_train.h over any model (a Layer or a Stack), run in
 * chunks so that Python regains control between them.
 *
 * The trainer computes with a configuration of its own (the model's, with this trainer's
 * temperature and auxiliary losses: explicit arguments, never written into the model) and owns
 * its workspaces (the model's and the teacher's), allocated before the first step and
 * reallocated between chunks only when the thread count has grown. A chunk writes the model
 * (exclusive: refused while another thread reads or trains it) and reads its teacher (shared:
 * any number of trainers may read one teacher at once). */
#include "_bind.h"

#include <math.h>
#include <string.h>
#include <time.h>

#include "mt_size.h"

typedef struct {
    PyObject_HEAD
    mt_trainer *trainer;
    ModelObject *model;                /* strong reference */
    PyArrayObject *theta;              /* strong reference; updated in place */
    PyArrayObject *X, *y, *lr_scale;   /* kept alive for the C loop */
    online_spec online;                /* the online data's teacher or source */
    any_config cfg;                    /* what the model computes with in this trainer */
    model_ctx ctx;
    mt_model mt_model;
    void *ws, *teacher_ws;             /* owned */
    int project;
    size_t batch;
    int init_called; /* __init__ runs once: a second call would leak the first one's state */
} TrainerObject;

static void Trainer_dealloc(TrainerObject *self)
{
    mt_trainer_free(self->trainer);
    if (self->model) bind_ws_free(self->model, self->ws);
    if (self->online.teacher) bind_ws_free(self->online.teacher, self->teacher_ws);
    Py_XDECREF(self->model);
    Py_XDECREF(self->theta);
    Py_XDECREF(self->X);
    Py_XDECREF(self->y);
    Py_XDECREF(self->lr_scale);
    bind_online_clear(&self->online);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* lr_scale: (P,) with every entry >= 0 (0 freezes a parameter). */
static int trainer_lr_scale(TrainerObject *self, PyObject *lr_scale, size_t P)
{
    if (lr_scale == Py_None) return 0;
    char text[48];
    npy_intp ps[1] = {(npy_intp)P};
    snprintf(text, sizeof text, "(%zu,)", P);
    self->lr_scale = bind_float_array(lr_scale, "lr_scale", 1, ps, text);
    if (!self->lr_scale) return -1;
    const double *f = PyArray_DATA(self->lr_scale);
    for (size_t i = 0; i < P; i++)
        if (!(f[i] >= 0)) {
            PyErr_Format(PyExc_ValueError, "lr_scale must be >= 0, got %g at index %zu", f[i], i);
            return -1;
        }
    return 0;
}

/* Fixed data X (n, d_in), y: the batch at most n rows. */
static int trainer_fixed_data(TrainerObject *self, mt_train_data *data, PyObject *X, PyObject *y,
                              size_t batch)
{
    self->X = bind_inputs(X, self->model->d_in);
    if (!self->X) return -1;
    npy_intp n = PyArray_DIM(self->X, 0);
    self->y = bind_targets(y, (size_t)n, self->model->d_out);
    if (!self->y) return -1;
    if (batch > (size_t)n) {
        PyErr_Format(PyExc_ValueError, "batch_size must be at most n = %zd, got %zu",
                     (Py_ssize_t)n, batch);
        return -1;
    }
    data->X = PyArray_DATA(self->X);
    data->y = PyArray_DATA(self->y);
    data->n = (size_t)n;
    return 0;
}

static int Trainer_init(TrainerObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"layer", "theta", "X", "y", "teacher", "teacher_theta", "input",
                             "scale", "centres", "weights", "noise_sd", "batch_size", "lr_scale",
                             "seed", "project", "optimizer", "lr", "momentum", "beta1", "beta2",
                             "eps", "weight_decay", "decoupled", "schedule", "step_size", "gamma",
                             "total_steps", "lr_min", "t0", "source", "low", "high",
                             "aux_switch", "aux_z", "temperature", "teacher_temperature", NULL};
    PyObject *layer, *theta, *X = Py_None, *y = Py_None, *lr_scale = Py_None;
    online_args a = ONLINE_ARGS_INIT;
    name_arg kind = {"optimizer", mt_opt_names, MT_OPT_COUNT, MT_OPT_SGD};
    name_arg schedule = {"schedule", mt_schedule_names, MT_SCHEDULE_COUNT, MT_LR_CONSTANT};
    bool_arg project = {"project", 0}, decoupled = {"decoupled", 0};
    real_arg lr = {"lr", 1e-3}, momentum = {"momentum", 0.0}, beta1 = {"beta1", 0.9};
    real_arg beta2 = {"beta2", 0.999}, eps = {"eps", 1e-8}, wd = {"weight_decay", 0.0};
    real_arg gamma = {"gamma", 1.0}, lr_min = {"lr_min", 0.0}, t0 = {"t0", 1.0};
    real_arg aux_switch = {"aux_switch", 0.0}, aux_z = {"aux_z", 0.0};
    opt_real_arg temperature = {"temperature", NAN, 0};
    size_arg batch = {"batch_size", 0}, step_size = {"step_size", 1};
    size_arg total_steps = {"total_steps", 1};
    seed_arg seed = {"seed", 0};
    if (!PyArg_ParseTupleAndKeywords(
            args, kw, "OO!|OOOOO&O&OOO&O&OO&O&O&O&O&O&O&O&O&O&O&O&O&O&O&O&OO&O&O&O&O&O&", kwlist,
            &layer, &PyArray_Type, &theta, &X, &y, &a.teacher, &a.teacher_theta, conv_name,
            &a.input, conv_real, &a.scale, &a.centres, &a.weights, conv_real, &a.noise_sd,
            conv_size, &batch, &lr_scale, conv_seed, &seed, conv_bool, &project, conv_name,
            &kind, conv_real, &lr, conv_real, &momentum, conv_real, &beta1, conv_real, &beta2,
            conv_real, &eps, conv_real, &wd, conv_bool, &decoupled, conv_name, &schedule,
            conv_size, &step_size, conv_real, &gamma, conv_size, &total_steps, conv_real,
            &lr_min, conv_real, &t0, &a.source, conv_real, &a.low, conv_real, &a.high,
            conv_real, &aux_switch, conv_real, &aux_z, conv_opt_real, &temperature,
            conv_opt_real, &a.teacher_temperature))
        return -1;
    if (self->init_called) {
        PyErr_SetString(PyExc_RuntimeError, "Trainer is already initialised");
        return -1;
    }
    self->init_called = 1;
    ModelObject *model = bind_model(layer, "layer");
    if (!model) return -1;
    Py_INCREF(model);
    self->model = model;
    const size_t P = model->n_params;
    if (bind_check_vector((PyArrayObject *)theta, P, "theta") < 0) return -1;
    if (!PyArray_ISWRITEABLE((PyArrayObject *)theta)) {
        PyErr_SetString(PyExc_ValueError, "theta must be writable");
        return -1;
    }
    Py_INCREF(theta);
    self->theta = (PyArrayObject *)theta;
    /* the model's configuration with this trainer's options, kept by the trainer */
    call_options opts = {temperature.given, temperature.value, aux_switch.value, aux_z.value};
    mt_why why = {0};
    const any_config *cfg = bind_configure(model, &opts, &self->cfg, &why);
    if (!cfg) {
        bind_raise(MT_EINVAL, "Trainer", &why);
        return -1;
    }
    if (cfg != &self->cfg) self->cfg = *cfg;
    self->project = project.value;
    if (bind_as_model(model, &self->cfg, &self->ctx, &self->mt_model, self->project, NULL) !=
        MT_OK) {
        PyErr_SetString(PyExc_ValueError, "project='sphere' is not available for deep stacks");
        return -1;
    }
    mt_train_data data = {0};
    if (a.teacher != Py_None || a.source != Py_None) {
        if ((a.teacher != Py_None && a.source != Py_None) || X != Py_None || y != Py_None) {
            PyErr_SetString(PyExc_ValueError, "give either source, or teacher, or X and y");
            return -1;
        }
        if (bind_online_parse(&self->online, &data, &a, model->d_in, model->d_out) < 0)
            return -1;
        if (batch.value < 1) {
            PyErr_SetString(PyExc_ValueError, "online training needs batch_size >= 1");
            return -1;
        }
    } else if (trainer_fixed_data(self, &data, X, y, batch.value) < 0) {
        return -1;
    }
    if (trainer_lr_scale(self, lr_scale, P) < 0) return -1;
    self->batch = batch.value ? batch.value : data.n;
    if (self->batch > MT_MAX_SIZE) {
        PyErr_Format(PyExc_ValueError, "batch_size must be at most %zu, got %zu", MT_MAX_SIZE,
                     self->batch);
        return -1;
    }
    mt_opt_config opt = {.kind = (mt_opt_kind)kind.value, .lr = lr.value,
                         .momentum = momentum.value, .beta1 = beta1.value, .beta2 = beta2.value,
                         .eps = eps.value, .weight_decay = wd.value,
                         .decoupled_decay = decoupled.value,
                         .schedule = (mt_lr_schedule)schedule.value,
                         .step_size = step_size.value, .gamma = gamma.value,
                         .total_steps = total_steps.value, .lr_min = lr_min.value,
                         .t0 = t0.value};
    if (mt_opt_config_validate(&opt, &why) != MT_OK) {
        bind_raise(MT_EINVAL, "optimizer", &why);
        return -1;
    }
    mt_status st = mt_trainer_alloc(&self->trainer, &self->mt_model, &opt, &data, batch.value,
                                    self->lr_scale ? PyArray_DATA(self->lr_scale) : NULL,
                                    seed.value);
    if (st != MT_OK) {
        bind_raise(st, "Trainer", NULL);
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

/* Claim the model (write) and its teacher (read, unless it is the model itself), and make the
 * workspaces hold a batch. 0, or -1 with nothing claimed. */
static int trainer_claim(TrainerObject *self)
{
    ModelObject *teacher = self->online.teacher;
    int reads = teacher && teacher != self->model;
    if (bind_begin_write(self->model) < 0) return -1;
    if (reads && bind_begin_read(teacher) < 0) {
        bind_end_write(self->model);
        return -1;
    }
    if (bind_fit_ws(self->model, &self->cfg, &self->ws, self->batch) < 0 ||
        (teacher && bind_fit_ws(teacher, &self->online.teacher_cfg, &self->teacher_ws,
                                self->batch) < 0)) {
        if (reads) bind_end_read(teacher);
        bind_end_write(self->model);
        return -1;
    }
    /* the workspaces may have been replaced since the last chunk */
    (void)bind_as_model(self->model, &self->cfg, &self->ctx, &self->mt_model, self->project,
                        self->ws);
    bind_online_set_ws(&self->online, self->teacher_ws);
    return 0;
}

static void trainer_release(TrainerObject *self)
{
    ModelObject *teacher = self->online.teacher;
    if (teacher && teacher != self->model) bind_end_read(teacher);
    bind_end_write(self->model);
}

static PyObject *Trainer_run(TrainerObject *self, PyObject *args)
{
    size_arg steps_arg = {"steps", 0};
    real_arg seconds_arg = {"chunk_seconds", 0.0};
    if (!PyArg_ParseTuple(args, "O&O&", conv_size, &steps_arg, conv_real, &seconds_arg))
        return NULL;
    if (!self->trainer) {
        PyErr_SetString(PyExc_ValueError, "Trainer was not initialised");
        return NULL;
    }
    const double seconds = seconds_arg.value;
    /* finite: the deadline is a time_t, and casting an infinity to it is undefined */
    if (!(seconds >= 0) || !(seconds <= MAX_CHUNK_SECONDS)) {
        PyErr_Format(PyExc_ValueError, "chunk_seconds must be a number in [0, %g] (0: no limit), "
                     "got %g", MAX_CHUNK_SECONDS, seconds);
        return NULL;
    }
    /* a chunk's losses are one array: a huge step count runs as several chunks instead */
    const size_t steps = steps_arg.value < MAX_CHUNK_STEPS ? steps_arg.value : MAX_CHUNK_STEPS;
    if (bind_check_vector(self->theta, self->model->n_params, "theta") < 0) return NULL;
    npy_intp ls[1] = {(npy_intp)steps};
    PyArrayObject *losses = (PyArrayObject *)PyArray_SimpleNew(1, ls, NPY_DOUBLE);
    if (!losses) return NULL;
    if (trainer_claim(self) < 0) {
        Py_DECREF(losses);
        return NULL;
    }
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
    st = mt_trainer_run(self->trainer, PyArray_DATA(self->theta), PyArray_DATA(losses), steps,
                        &done, seconds > 0 ? budget_spent : NULL, &budget);
    Py_END_ALLOW_THREADS
    trainer_release(self);
    if (st != MT_OK && st != MT_EINTERRUPTED) {
        Py_DECREF(losses);
        if (st == MT_ENONFINITE) {
            PyErr_Format(PyExc_FloatingPointError,
                         "training diverged: a loss or gradient was not finite after %zu steps of "
                         "this chunk (the model holds the last finite parameters); lower the "
                         "learning rate", done);
            return NULL;
        }
        return bind_raise(st, "train", NULL);
    }
    /* a copy of the completed prefix: the chunk may have stopped early on its budget */
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
    .tp_doc = "Trainer(layer, theta, X=None, y=None, <online data: teacher, teacher_theta, input, "
              "scale, low, high, centres, weights, noise_sd, source, teacher_temperature>, "
              "batch_size=0, lr_scale=None, seed=0, project=False, optimizer='sgd', lr, "
              "momentum, beta1, beta2, eps, weight_decay, decoupled, schedule='constant', "
              "step_size, gamma, total_steps, lr_min, t0, aux_switch=0, aux_z=0, "
              "temperature=None): a training loop in C over a Layer or a Stack, run in chunks.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Trainer_init,
    .tp_dealloc = (destructor)Trainer_dealloc,
    .tp_methods = Trainer_methods,
    .tp_getset = Trainer_getset,
};

int mt_bind_train(PyObject *module)
{
    return bind_add_type(module, "Trainer", &TrainerType);
}
