/* The one place that says how BLAS is reached.
 *
 * By default the core links the scipy-openblas32 wheel, whose symbols carry a
 * "scipy_" prefix; building with MT_SYSTEM_BLAS defined uses a system OpenBLAS
 * with the plain names instead. The rest of the core calls mt_gemm with shapes
 * in words, so it never spells out leading dimensions or CBLAS constants. */
#ifndef MT_BLAS_H
#define MT_BLAS_H

#include <stddef.h>

#ifdef MT_SYSTEM_BLAS
#define MT_CBLAS(name) cblas_##name
#define MT_CBLAS_THREADS(name) openblas_##name
#else
#define MT_CBLAS(name) scipy_cblas_##name
#define MT_CBLAS_THREADS(name) scipy_openblas_##name
#endif

/* The three BLAS entry points the core uses, declared here rather than taken from a cblas.h, so
 * the core compiles with no BLAS header on the include path (which cblas.h a machine has, and
 * with which prefix, varies; the library is chosen at link time). The CBLAS ABI is stable: the
 * enum arguments are ints with the values below, and both supported BLAS builds use 32-bit
 * integers (scipy-openblas32, Debian's LP64 OpenBLAS). */
enum { MT_CBLAS_ROW_MAJOR = 101, MT_CBLAS_NO_TRANS = 111, MT_CBLAS_TRANS = 112 };
void MT_CBLAS(dgemm)(int order, int trans_a, int trans_b, int m, int n, int k, double alpha,
                     const double *A, int lda, const double *B, int ldb, double beta, double *C,
                     int ldc);
void MT_CBLAS_THREADS(set_num_threads)(int n);
int MT_CBLAS_THREADS(get_num_threads)(void);

/* C (m, n) = alpha * op(A) op(B) + beta * C, all row-major.
 * op(A) is (m, k): A is stored (m, k) when trans_a == 0, (k, m) when 1.
 * op(B) is (k, n): B is stored (k, n) when trans_b == 0, (n, k) when 1.
 * lda/ldb/ldc are the row strides of the stored matrices; mt_gemm passes
 * the dense ones, mt_gemm_strided lets a block of columns be addressed. */
static inline void mt_gemm_strided(int trans_a, int trans_b, size_t m, size_t n, size_t k,
                                   double alpha, const double *A, size_t lda,
                                   const double *B, size_t ldb, double beta,
                                   double *C, size_t ldc)
{
    if (m == 0 || n == 0) return;
    if (k == 0) {  /* BLAS would still scale C by beta; do it ourselves for clarity */
        for (size_t i = 0; i < m; i++)
            for (size_t j = 0; j < n; j++) C[i * ldc + j] = beta == 0.0 ? 0.0 : beta * C[i * ldc + j];
        return;
    }
    MT_CBLAS(dgemm)(MT_CBLAS_ROW_MAJOR, trans_a ? MT_CBLAS_TRANS : MT_CBLAS_NO_TRANS,
                    trans_b ? MT_CBLAS_TRANS : MT_CBLAS_NO_TRANS, (int)m, (int)n, (int)k, alpha, A,
                    (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

static inline void mt_gemm(int trans_a, int trans_b, size_t m, size_t n, size_t k, double alpha,
                           const double *A, const double *B, double beta, double *C)
{
    mt_gemm_strided(trans_a, trans_b, m, n, k, alpha, A, trans_a ? m : k, B, trans_b ? k : n,
                    beta, C, n);
}

/* BLAS threads for this process (OpenBLAS's own pool). */
static inline void mt_blas_set_num_threads(int n) { MT_CBLAS_THREADS(set_num_threads)(n); }
static inline int mt_blas_get_num_threads(void) { return MT_CBLAS_THREADS(get_num_threads)(); }

#endif
