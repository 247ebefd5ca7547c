#include "mt_status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

mt_status mt_fail(mt_why *why, const char *field, const char *fmt, ...)
{
    if (!why) return MT_EINVAL;
    why->field = field;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why->text, sizeof why->text, fmt, ap);
    va_end(ap);
    return MT_EINVAL;
}

void mt_why_prefix(mt_why *why, const char *prefix)
{
    if (!why) return;
    char old[sizeof why->text];
    memcpy(old, why->text, sizeof old);
    snprintf(why->text, sizeof why->text, "%s%s", prefix, old);
}
