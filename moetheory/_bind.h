/* moetheory._core, the binding between NumPy and the pure-C core in csrc/: what its files share.
 *
 * The binding only converts, checks and dispatches. Arguments are converted by the converters
 * below (one rule per kind, the argument named in every message); C status codes become Python
 * exceptions through one table (bind_raise); the GIL is released around every call that loops
 * over data. Nothing is written to a caller's array unless the call succeeds.
 *
 * Files, one concern each, each registering its types and functions through one hook that the
 * module init (_core.c) calls:
 *   _bind_args.c    converters, array checks, the status table      mt_bind_args
 *   _bind_model.c   the model handle: Layer, Stack, their wrappers  mt_bind_model
 *   _bind_sample.c  online data (draw) and the ClusterTask source    mt_bind_sample
 *   _bind_train.c   the Trainer                                      mt_bind_train
 *   _bind_em.c      the EM                                           mt_bind_em
 *   _bind_gmoe.c    the Gaussian-gated MoE (density, EM, sampling)   mt_bind_gmoe
 * A new concern is a new file with its hook, added to the table in _core.c. */
#ifndef MT_BIND_H
#define MT_BIND_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL mt_bind_ARRAY_API
#ifndef MT_BIND_MAIN
#define NO_IMPORT_ARRAY /* only _core.c's module init calls import_array */
#endif
#include <numpy/arrayobject.h>

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "mt_cluster.h"
#include "mt_deep.h"
#include "mt_moe.h"
#include "mt_names.h"
#include "mt_status.h"
#include "mt_train.h"

/* The hooks: each adds its file's types and functions to the module; 0, or -1 with an
 * exception set. */
int mt_bind_args(PyObject *module);
int mt_bind_model(PyObject *module);
int mt_bind_sample(PyObject *module);
int mt_bind_train(PyObject *module);
int mt_bind_em(PyObject *module);
int mt_bind_gmoe(PyObject *module);

/* ---- status codes to exceptions: the one table (_bind_args.c) ---- */

/* Raise the exception of st for the call `what`; why (may be NULL) is the core's reason for an
 * MT_EINVAL, which becomes the message as it is (it names the field). Returns NULL:
 * MT_EINVAL -> ValueError, MT_ENOMEM -> MemoryError, MT_EINTERRUPTED -> KeyboardInterrupt,
 * MT_ENONFINITE -> FloatingPointError, MT_ENOTCONVERGED -> RuntimeError. */
PyObject *bind_raise(mt_status st, const char *what, const mt_why *why);

/* Polled by a long C loop (an EM fit) without the GIL: takes the GIL and runs the Python signal
 * handlers; a raised exception (KeyboardInterrupt) stays set in this thread and stops the loop.
 * Outside the main thread PyErr_CheckSignals does nothing. (_bind_args.c) */
int bind_poll_signals(void *ctx);

/* ---- scalar converters: the one rule of each kind (_bind_args.c) ----
 * For PyArg_Parse's "O&": each takes a struct holding the argument's name (set by the caller,
 * with the default value) and receives the value. Numbers are Python or NumPy numbers: a bool
 * (True, numpy.True_) is never taken for a number, a string never for anything but a name, a
 * number never for a bool. Ranges belong to whoever computes with the value (mostly the C
 * core's validating functions). */

typedef struct { const char *name; size_t value; } size_arg;                 /* int >= 0 */
typedef struct { const char *name; size_t value; int given; } opt_size_arg;  /* None or size */
typedef struct { const char *name; uint64_t value; } seed_arg;               /* [0, 2**64) */
typedef struct { const char *name; double value; } real_arg;                 /* NaN passes */
typedef struct { const char *name; double value; int given; } opt_real_arg;  /* None or real */
typedef struct { const char *name; int value; } bool_arg;                    /* True, False */
typedef struct {                                                             /* a table name */
    const char *name;
    const char *const *table;
    size_t count;
    int value;
} name_arg;

int conv_size(PyObject *obj, void *out);
int conv_opt_size(PyObject *obj, void *out);
int conv_seed(PyObject *obj, void *out);
int conv_real(PyObject *obj, void *out);
int conv_opt_real(PyObject *obj, void *out);
int conv_bool(PyObject *obj, void *out);
int conv_name(PyObject *obj, void *out);

/* module.name = type, readied and added (its reference kept by the module). 0 or -1. */
int bind_add_type(PyObject *module, const char *name, PyTypeObject *type);

/* ---- arrays (_bind_args.c) ---- */

/* Index of the first NaN or infinity of p[0..n), or n. */
size_t bind_first_non_finite(const double *p, size_t n);

/* obj as a C-contiguous float64 array of ndim dims whose shape matches `shape` (an entry < 0
 * matches any size; `shape_text` is how the expected shape is shown, e.g. "(n, 3)"). Integer
 * and float arrays are converted; other dtypes are a TypeError; empty arrays, non-finite values
 * and sizes above MT_MAX_SIZE a ValueError. New reference, or NULL. */
PyArrayObject *bind_float_array(PyObject *obj, const char *name, int ndim, const npy_intp *shape,
                                const char *shape_text);
/* X as a model's inputs: (n, d_in). */
PyArrayObject *bind_inputs(PyObject *obj, size_t d_in);
/* y as the targets of n rows: (n, d_out), or (n,) when d_out == 1. */
PyArrayObject *bind_targets(PyObject *obj, size_t n, size_t d_out);
/* 0 when theta is exactly a parameter vector of length P (float64, 1-D, C-contiguous, finite),
 * else -1 with ValueError naming `name`. */
int bind_check_vector(PyArrayObject *theta, size_t P, const char *name);
/* 0 when values (count,) are finite, else -1 with FloatingPointError: a result computed from
 * finite inputs may still overflow (X around 1e300 makes scores or squared errors infinite). */
int bind_check_result(const char *what, const double *values, size_t count);

/* ---- the model handle (_bind_model.c) ----
 * Layer and Stack are one type to every wrapper: a ModelObject of a kind, whose operations
 * (bind_configure, bind_as_model, the workspaces, forward, loss_and_grad) are each one
 * function for both kinds.
 * Reading a model (forward, loss_and_grad, serving as a teacher) is safe from any number of
 * threads at once: each call takes a workspace of its own from the model's pool (a call that
 * finds none allocates one, so steady single-threaded use never allocates). Writing (training,
 * assigning theta) is exclusive: refused while another thread reads or writes. The counts are
 * changed with the GIL held, so a check and its change cannot interleave. */

/* A call's options: the temperature gate's temperature (when has_temperature; else the
 * model's own) and the auxiliary router losses; explicit arguments, never written into the
 * model. */
typedef struct {
    int has_temperature;
    double temperature;
    double aux_switch, aux_z;
} call_options;

#define CALL_OPTIONS_DEFAULT {0, 1.0, 0.0, 0.0}

/* What a call computes with: a layer's or a stack's configuration. */
typedef union {
    mt_moe_config moe;
    mt_deep_config deep;
} any_config;

/* The context an mt_model (mt_train.h) points to, for the trainer and for teachers. */
typedef union {
    mt_moe_model_ctx moe;
    mt_deep_model_ctx deep;
} model_ctx;

typedef enum { MODEL_LAYER, MODEL_STACK } model_kind;

typedef struct ModelObject ModelObject;

#define MODEL_POOL 8 /* idle workspaces kept; more concurrent calls free theirs after use */

struct ModelObject {
    PyObject_HEAD
    model_kind kind;
    any_config cfg;     /* immutable once the model is initialised */
    int ready;          /* __init__ succeeded (it runs once) */
    size_t n_params, d_in, d_out, n_layers;
    size_t n_experts[MT_DEEP_MAX_LAYERS]; /* the width of each layer's gates */
    int gates_as_list;  /* forward returns a list of the layers' gates (a Stack) */
    PyObject *layout;   /* list of (name, offset, shape), built once */
    void *pool[MODEL_POOL];
    int pooled;
    int readers, writer;
};

extern PyTypeObject bind_ModelType; /* moetheory._core.Model, made by Layer(...), Stack(...) */

/* obj as a model (a Layer or a Stack), or NULL with TypeError naming `name`. */
ModelObject *bind_model(PyObject *obj, const char *name);

/* Claims, with the GIL held: 0, or -1 with RuntimeError saying who holds the model. */
int bind_begin_read(ModelObject *m);
void bind_end_read(ModelObject *m);
int bind_begin_write(ModelObject *m);
void bind_end_write(ModelObject *m);

/* The operations of a model of either kind (_bind_model.c), each one function for both.
 * bind_configure: the configuration a call computes with, the model's own when the options
 * change nothing (no copy on the common path), else `scratch` filled with them; NULL with why
 * set when an option is out of range. bind_as_model: fill ctx and model so that the C trainer
 * (or a teacher's draw) computes with cfg on workspace ws (project: a layer's sphere
 * projection; MT_EINVAL for a stack). */
const char *bind_model_name(const ModelObject *m);
const any_config *bind_configure(const ModelObject *m, const call_options *o,
                                 any_config *scratch, mt_why *why);
mt_status bind_as_model(const ModelObject *m, const any_config *cfg, model_ctx *ctx,
                        mt_model *model, int project, void *ws);
void bind_ws_free(const ModelObject *m, void *ws);

/* A workspace of the model's kind for n rows with the current thread count, owned by the
 * caller until bind_give_ws (GIL held for both): from the pool, else newly allocated. NULL
 * with an exception. */
void *bind_take_ws(ModelObject *m, size_t n);
void bind_give_ws(ModelObject *m, void *ws);
/* *ws (owned by the caller, may be NULL) made to hold n rows: kept, or replaced. 0 or -1. */
int bind_fit_ws(const ModelObject *m, const any_config *cfg, void **ws, size_t n);

/* ---- online data (_bind_sample.c) ----
 * Trainer(...) and draw(...) take the same description of online data and parse it once. The
 * mt_train_data filled by bind_online_parse points into the online_spec (teacher_model,
 * teacher_ctx), so the spec must not move while that data is in use (a Trainer embeds it; draw
 * keeps it on its stack for the call). */
typedef struct {
    ModelObject *teacher;           /* strong references, or NULL */
    PyArrayObject *teacher_theta, *centres, *weights;
    PyObject *source;               /* a ClusterTask, or NULL */
    any_config teacher_cfg;         /* the teacher's configuration with its options */
    model_ctx teacher_ctx;          /* its workspace is set before each C call */
    mt_model teacher_model;
} online_spec;

/* The online arguments of Trainer and draw, as converters fill them. */
typedef struct {
    PyObject *source, *teacher, *teacher_theta, *centres, *weights;
    name_arg input;
    real_arg scale, low, high, noise_sd;
    opt_real_arg teacher_temperature;
} online_args;

#define ONLINE_ARGS_INIT                                                                       \
    {Py_None, Py_None, Py_None, Py_None, Py_None,                                             \
     {"input", mt_input_names, MT_INPUT_COUNT, MT_INPUT_GAUSSIAN}, {"scale", 1.0},            \
     {"low", -1.0}, {"high", 1.0}, {"noise_sd", 0.0}, {"teacher_temperature", NAN, 0}}

/* Check the online arguments a and fill o and *data (data->online = 1) from them: a ClusterTask
 * source, or a teacher model with its own theta and an input distribution. d_in, d_out: what
 * the teacher or source must map, or 0 for whatever it maps. Returns 0, or -1 with an exception
 * naming the argument (o may then hold references: bind_online_clear releases them). */
int bind_online_parse(online_spec *o, mt_train_data *data, const online_args *a, size_t d_in,
                      size_t d_out);
void bind_online_clear(online_spec *o);
/* Point the teacher's mt_model at workspace ws (a teacher's, sized for the batch). */
void bind_online_set_ws(online_spec *o, void *ws);

#endif
