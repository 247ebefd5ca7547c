/* The fused kernel (mt_fused_kernel.h) for AVX-512 (F, VL, DQ) with FMA: vectors of 8 doubles
 * (mt_isa.h). */
#include "mt_isa.h"

#if MT_HAVE_ISA_VARIANTS
#pragma GCC target("avx512f,avx512vl,avx512dq,avx2,fma")
#define MT_FUSED_KERNEL mt_fused_rows_avx512
#define MT_FUSED_FORWARD mt_fused_forward_avx512
#define MT_FUSED_JACOBIAN mt_fused_jacobian_avx512
#define MT_VL 8
#define MT_FMA 1
#include "mt_fused_kernel.h"
#else
typedef int mt_fused_avx512_absent; /* ISO C wants a declaration in every file */
#endif
