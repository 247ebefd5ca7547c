/* The fused kernel (mt_fused_kernel.h) for the x86-64 baseline and every other target: vectors
 * of 2 doubles (one SSE2 register; NEON's too), no FMA. */
#define MT_FUSED_KERNEL mt_fused_rows_baseline
#define MT_FUSED_FORWARD mt_fused_forward_baseline
#define MT_FUSED_JACOBIAN mt_fused_jacobian_baseline
#define MT_VL 2
#define MT_FMA 0
#include "mt_fused_kernel.h"
