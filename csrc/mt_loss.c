#include "mt_loss.h"

double mt_loss_mse_forward(const double *f, const double *y, size_t len)
{
    double sum = 0.0;
    for (size_t i = 0; i < len; i++) {
        double r = f[i] - y[i];
        sum += r * r;
    }
    return len ? sum / (double)len : 0.0;
}

void mt_loss_mse_backward(double *df, const double *f, const double *y, size_t len)
{
    double scale = 2.0 / (double)len;
    for (size_t i = 0; i < len; i++) df[i] = scale * (f[i] - y[i]);
}
