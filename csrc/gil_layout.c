/* gil_layout.c — CPython's GIL state layout; see gil_layout.h for the contract. */
#include "gil_layout.h"

/* The layout as words before and after `cond` (what the calibration and the hook rely
 * on), the same in every version gil_layout.h lists. */
_Static_assert(offsetof(gla_gil_state, cond) - offsetof(gla_gil_state, interval) ==
                   4 * sizeof(unsigned long),
               "interval lies 4 words before cond");
_Static_assert(offsetof(gla_gil_state, cond) - offsetof(gla_gil_state, locked) ==
                   2 * sizeof(unsigned long),
               "locked lies 2 words before cond");
_Static_assert(offsetof(gla_gil_state, cond) - offsetof(gla_gil_state, switch_number) ==
                   sizeof(unsigned long),
               "switch_number lies 1 word before cond");
_Static_assert(offsetof(gla_gil_state, mutex) - offsetof(gla_gil_state, cond) ==
                   sizeof(pthread_cond_t),
               "mutex follows cond");
_Static_assert(offsetof(gla_gil_state, switch_cond) - offsetof(gla_gil_state, cond) ==
                   sizeof(pthread_cond_t) + sizeof(pthread_mutex_t),
               "switch_cond follows cond and mutex");

int gla_gil_layout_ok(const void *cond, unsigned long switch_interval_us, const void *lo,
                      const void *hi)
{
    const char *c = cond;
    if (!c)
        return 0;
    if (hi > lo && (c < (const char *)lo || c >= (const char *)hi))
        return 0;
    unsigned long interval = gla_gil_interval(cond);
    int locked = gla_gil_locked(cond);
    return interval == switch_interval_us && (locked == 0 || locked == 1);
}
