/* calm.c — thinning the GIL's waiters; see calm.h for the contract. The decision itself
 * is inline in calm.h (the GIL hook's wait wrapper runs it); here are its state, its
 * settings and its fork handler. */
#include "calm.h"

_Atomic int gla_calm_keep;
_Atomic int gla_calm_above;
_Atomic uint64_t gla_calm_stretched;
int gla_calm_gil_waiters;
int gla_calm_short_waiters;
__thread uint64_t gla_calm_wanted_since __attribute__((tls_model("initial-exec")));

int gla_hook_set_calm(int keep)
{
    if (keep < 0)
        keep = 0;
    return atomic_exchange(&gla_calm_keep, keep);
}

int gla_hook_set_calm_above(int above)
{
    if (above < 0)
        above = 0;
    return atomic_exchange(&gla_calm_above, above);
}

int gla_hook_calm_above(void)
{
    return atomic_load_explicit(&gla_calm_above, memory_order_relaxed);
}

int gla_hook_calm(uint64_t *stretched)
{
    if (stretched)
        *stretched = atomic_load_explicit(&gla_calm_stretched, memory_order_relaxed);
    return atomic_load_explicit(&gla_calm_keep, memory_order_relaxed);
}

void gla_calm_atfork_child(void)
{
    gla_calm_short_waiters = 0;
    gla_calm_gil_waiters = 0;
    gla_calm_wanted_since = 0;
}
