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

/* The thread count (default: OpenBLAS's, i.e. the cores it found; 1 without OpenMP). */
int mt_threads(void);
/* Set it (n >= 1); also the BLAS thread count used outside data-parallel sections. */
void mt_set_threads(int n);

/* Rows [start, start + count) of n owned by thread t of a team of T (contiguous, balanced). */
void mt_rows_of(size_t n, int T, int t, size_t *start, size_t *count);

/* Enter/leave a data-parallel section: BLAS to one thread and back. Returns the BLAS count
 * to restore. */
int mt_parallel_enter(void);
void mt_parallel_leave(int blas_threads);

#endif
