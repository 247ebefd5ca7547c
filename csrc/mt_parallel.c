#include "mt_parallel.h"

#include <stdatomic.h>

#include "mt_blas.h"

/* 0 until set: then the BLAS library's own count (the cores it detected) is the default. */
static atomic_int threads = 0;

int mt_threads(void)
{
#ifdef _OPENMP
    int t = atomic_load(&threads);
    return t > 0 ? t : mt_blas_get_num_threads();
#else
    return 1; /* no team without OpenMP; set_num_threads still sets BLAS's count */
#endif
}

void mt_set_threads(int n)
{
    if (n < 1) n = 1;
    atomic_store(&threads, n);
    mt_blas_set_num_threads(n);
}

void mt_rows_of(size_t n, int T, int t, size_t *start, size_t *count)
{
    size_t base = n / (size_t)T, extra = n % (size_t)T, ti = (size_t)t;
    *start = ti * base + (ti < extra ? ti : extra);
    *count = base + (ti < extra ? 1 : 0);
}

int mt_parallel_enter(void)
{
    int blas = mt_blas_get_num_threads();
    if (blas != 1) mt_blas_set_num_threads(1);
    return blas;
}

void mt_parallel_leave(int blas_threads)
{
    if (blas_threads != 1) mt_blas_set_num_threads(blas_threads);
}
