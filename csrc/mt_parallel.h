/* How many threads the core computes with, and how a batch's rows are shared among them.
 *
 * A batch is data-parallel: each thread runs a layer's forward and backward on its own block
 * of rows (its own slice of the workspace, its own gradient buffer), and the gradient blocks
 * are summed in a fixed order, so results are bitwise reproducible for a given thread count.
 * Inside such a team BLAS runs on one thread: the GEMMs of a row block and the elementwise
 * passes around them (bias, activation, gates, column sums) then all use every core, where
 * threaded BLAS alone leaves the elementwise passes on one core. */
#ifndef MT_PARALLEL_H
#define MT_PARALLEL_H

#include <stddef.h>

/* MT_OMP(directive): an OpenMP pragma when the core is built with OpenMP (setup.py passes
 * -fopenmp), nothing otherwise, so the core also compiles cleanly without it (one thread). */
#define MT_STRINGIFY(x) #x
#ifdef _OPENMP
#define MT_OMP(directive) _Pragma(MT_STRINGIFY(omp directive))
#else
#define MT_OMP(directive)
#endif

/* The thread count: a process setting, the cores BLAS found when the count was first fixed
 * (mt_threads_init, called by the binding at import; 1 without OpenMP), or what mt_set_threads
 * set last. Never read back from BLAS's current state, which concurrent sections change. */
int mt_threads(void);
/* Fix the default now (a no-op once the count is fixed). */
void mt_threads_init(void);
/* Set it (n >= 1); also the BLAS thread count used outside data-parallel sections. */
void mt_set_threads(int n);

/* Rows [start, start + count) of n owned by thread t of a team of T (contiguous, balanced). */
void mt_rows_of(size_t n, int T, int t, size_t *start, size_t *count);

/* Enter/leave a data-parallel section: BLAS runs on one thread while any section of any
 * thread runs, and on mt_threads() once none does (a count of sections in flight, so concurrent
 * calls cannot leave BLAS at 1 or raise it under a running section). enter returns a token for
 * leave (kept for the callers' symmetry; it carries nothing). */
int mt_parallel_enter(void);
void mt_parallel_leave(int token);

#endif
