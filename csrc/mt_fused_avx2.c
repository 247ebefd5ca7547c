/* The fused kernel (mt_fused_kernel.h) for AVX2 with FMA: vectors of 4 doubles (mt_isa.h). */
#include "mt_isa.h"

#if MT_HAVE_ISA_VARIANTS
#pragma GCC target("avx2,fma")
#define MT_FUSED_KERNEL mt_fused_rows_avx2
#define MT_FUSED_FORWARD mt_fused_forward_avx2
#define MT_FUSED_JACOBIAN mt_fused_jacobian_avx2
#define MT_VL 4
#define MT_FMA 1
#include "mt_fused_kernel.h"
#else
typedef int mt_fused_avx2_absent; /* ISO C wants a declaration in every file */
#endif
