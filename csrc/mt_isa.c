#include "mt_isa.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

int mt_isa_supported(mt_isa isa)
{
    switch (isa) {
    case MT_ISA_BASELINE: return 1;
#if MT_HAVE_ISA_VARIANTS
    /* __builtin_cpu_supports also checks that the OS saves the vector registers (XCR0). */
    case MT_ISA_AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case MT_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512dq") && mt_isa_supported(MT_ISA_AVX2);
#endif
    default: return 0;
    }
}

const char *mt_isa_name(mt_isa isa)
{
    switch (isa) {
    case MT_ISA_AVX2: return "avx2";
    case MT_ISA_AVX512: return "avx512";
    default: return "baseline";
    }
}

/* The cap MOETHEORY_ISA sets; the best variant when it is unset or unknown. */
static mt_isa requested(void)
{
    const char *v = getenv("MOETHEORY_ISA");
    if (v)
        for (int i = 0; i < MT_ISA_COUNT; i++)
            if (!strcmp(v, mt_isa_name((mt_isa)i))) return (mt_isa)i;
    return (mt_isa)(MT_ISA_COUNT - 1);
}

/* -1 until the first call decides; every thread that races there decides the same. */
static atomic_int selected = -1;

mt_isa mt_isa_selected(void)
{
    int s = atomic_load_explicit(&selected, memory_order_relaxed);
    if (s >= 0) return (mt_isa)s;
    int isa = (int)requested();
    while (isa > 0 && !mt_isa_supported((mt_isa)isa)) isa--;
    atomic_store_explicit(&selected, isa, memory_order_relaxed);
    return (mt_isa)isa;
}

mt_status mt_isa_select(mt_isa isa)
{
    if ((int)isa < 0 || isa >= MT_ISA_COUNT || !mt_isa_supported(isa)) return MT_EINVAL;
    atomic_store_explicit(&selected, (int)isa, memory_order_relaxed);
    return MT_OK;
}
