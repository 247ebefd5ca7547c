/* Losses on model outputs. */
#ifndef MT_LOSS_H
#define MT_LOSS_H

#include <stddef.h>

/* mean over len entries of (f - y)^2; f, y: (len,) */
double mt_loss_mse_forward(const double *f, const double *y, size_t len);
/* df: (len,) = d loss / d f = 2 (f - y) / len (written, not accumulated: df is intermediate) */
void mt_loss_mse_backward(double *df, const double *f, const double *y, size_t len);

#endif
