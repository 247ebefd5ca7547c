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

/* A long loop calls this every few milliseconds; a non-zero return stops it
 * with MT_EINTERRUPTED. The binding sets it to poll Python signals. */
typedef int (*mt_interrupt_fn)(void *ctx);

#endif
