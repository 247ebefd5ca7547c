/* The fused kernel (mt_fused_kernel.h) for the x86-64 baseline and every other target: vectors
 * of 4 doubles (two SSE2 registers), no FMA. */
#define MT_FUSED_KERNEL mt_fused_rows_baseline
#define MT_VL 4
#define MT_FMA 0
#include "mt_fused_kernel.h"
