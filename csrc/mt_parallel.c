#include "mt_parallel.h"

#include <stdatomic.h>

#include "mt_blas.h"

/* The process's thread count: 0 until mt_threads_init or mt_set_threads fixes it. It is never
 * read back from BLAS afterwards, because BLAS's current count is not a setting: the
 * data-parallel sections of other threads set it to 1 while they run (82 of 120 concurrent
 * calls on separate models once ran on one thread when the default was read from BLAS). */
static atomic_int threads = 0;

void mt_threads_init(void)
{
#ifdef _OPENMP
    const int found = mt_blas_get_num_threads();
#else
    const int found = 1; /* no team without OpenMP; set_num_threads still sets BLAS's count */
#endif
    int unset = 0;
    atomic_compare_exchange_strong(&threads, &unset, found > 0 ? found : 1);
}

int mt_threads(void)
{
#ifndef _OPENMP
    return 1;
#endif
    int t = atomic_load(&threads);
    if (t > 0) return t;
    mt_threads_init();
    return atomic_load(&threads);
}

/* Data-parallel sections in flight, and the lock that makes entering or leaving one and setting
 * BLAS's count a single step: BLAS runs on one thread while any section runs, and on the
 * process's count once none does, whatever order concurrent calls enter and leave in. */
static int sections = 0;
static atomic_flag sections_lock = ATOMIC_FLAG_INIT;

static void lock(void)
{
    while (atomic_flag_test_and_set_explicit(&sections_lock, memory_order_acquire)) {
    }
}

static void unlock(void) { atomic_flag_clear_explicit(&sections_lock, memory_order_release); }

void mt_set_threads(int n)
{
    if (n < 1) n = 1;
    lock();
    atomic_store(&threads, n);
    if (sections == 0) mt_blas_set_num_threads(n);
    unlock();
}

void mt_rows_of(size_t n, int T, int t, size_t *start, size_t *count)
{
    size_t base = n / (size_t)T, extra = n % (size_t)T, ti = (size_t)t;
    *start = ti * base + (ti < extra ? ti : extra);
    *count = base + (ti < extra ? 1 : 0);
}

int mt_parallel_enter(void)
{
    lock();
    if (sections++ == 0) mt_blas_set_num_threads(1);
    unlock();
    return 1;
}

void mt_parallel_leave(int blas_threads)
{
    (void)blas_threads;
    lock();
    if (--sections == 0) mt_blas_set_num_threads(mt_threads());
    unlock();
}
