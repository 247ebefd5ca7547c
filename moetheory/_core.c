/* moetheory._core: the module. Its init registers each concern's types and functions through
 * that file's hook (_bind.h lists them); the thread count, a process setting, lives here. */
#define MT_BIND_MAIN /* this file calls import_array for every binding file */
#include "_bind.h"

#include "mt_isa.h"
#include "mt_parallel.h"

/* The hooks, in the order they run; a new binding file adds its own here. */
static int (*const hooks[])(PyObject *) = {mt_bind_args, mt_bind_model, mt_bind_sample,
                                           mt_bind_train, mt_bind_em, mt_bind_gmoe};

static PyObject *set_num_threads(PyObject *Py_UNUSED(m), PyObject *arg)
{
    size_arg n = {"n_threads", 0};
    if (!conv_size(arg, &n)) return NULL;
    if (n.value < 1 || n.value > 1024) {
        PyErr_Format(PyExc_ValueError, "n_threads must be an integer in [1, 1024], got %zu",
                     n.value);
        return NULL;
    }
    mt_set_threads((int)n.value);
    Py_RETURN_NONE;
}

static PyObject *get_num_threads(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(mt_threads());
}

static PyObject *kernel_isa(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    return PyUnicode_FromString(mt_isa_name(mt_isa_selected()));
}

static PyMethodDef module_methods[] = {
    {"set_num_threads", set_num_threads, METH_O,
     "set_num_threads(n): the number of threads the core computes with (row blocks of a batch, "
     "and BLAS outside them), a process setting."},
    {"get_num_threads", get_num_threads, METH_NOARGS,
     "The number of threads the core computes with: the cores BLAS found at import, or what "
     "set_num_threads set last (never read back from BLAS, which concurrent calls change)."},
    {"kernel_isa", kernel_isa, METH_NOARGS,
     "The instruction-set variant the core's own kernels run on this machine, chosen at run "
     "time: 'baseline', 'avx2' (AVX2 + FMA) or 'avx512' (AVX-512F + FMA), capped by the "
     "environment variable MOETHEORY_ISA."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "moetheory._core",
                                        "The C core of moetheory.", -1, module_methods,
                                        NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__core(void)
{
    import_array();
    /* the default thread count, fixed now: BLAS's count is the cores it found until some
     * call's parallel section changes it */
    mt_threads_init();
    PyObject *m = PyModule_Create(&module_def);
    if (!m) return NULL;
    for (size_t i = 0; i < sizeof hooks / sizeof hooks[0]; i++)
        if (hooks[i](m) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    return m;
}
