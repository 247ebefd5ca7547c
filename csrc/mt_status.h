/* Status codes shared by every fallible function of the C core.
 * The core never prints, exits or aborts: it reports through these. */
#ifndef MT_STATUS_H
#define MT_STATUS_H

typedef enum {
    MT_OK = 0,
    MT_EINVAL = 1,        /* an argument is out of its documented range */
    MT_ENOMEM = 2,        /* an allocation failed */
    MT_EINTERRUPTED = 3,  /* a long loop was asked to stop (Ctrl-C or a callback) */
    MT_ENONFINITE = 4,    /* a NaN or infinity appeared in a loss or a parameter */
    MT_ENOTCONVERGED = 5  /* an iterative method hit its iteration cap */
} mt_status;

/* Why a check failed, for the caller's message: the field as the API spells it ("top_k",
 * "layers[1].d_in", "lr") and one sentence saying what was expected and what was seen. The
 * validating functions (mt_moe_config_validate, mt_opt_config_validate, ...) fill it when they
 * return MT_EINVAL and take NULL when the caller does not want it. */
typedef struct {
    const char *field;
    char text[240];
} mt_why;

/* Fill why (NULL: a no-op) with field and the printf-formatted text; returns MT_EINVAL, so a
 * check reads `return mt_fail(why, "d_in", "d_in must be >= 1, got %zu", d_in);`. */
mt_status mt_fail(mt_why *why, const char *field, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Prefix why->text (and nothing else) with `prefix`, e.g. "layers[2]: " for a stack's layer. */
void mt_why_prefix(mt_why *why, const char *prefix);

/* A long loop calls this every few milliseconds; a non-zero return stops it
 * with MT_EINTERRUPTED. The binding sets it to poll Python signals. */
typedef int (*mt_interrupt_fn)(void *ctx);

#endif
