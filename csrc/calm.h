/* calm.h — thinning the GIL's waiters (act).
 *
 * Contract
 * --------
 * Purpose: CPython's GIL waiters each wake every switch interval (5 ms) to ask the
 * holder to drop the GIL; with hundreds of waiters on a few cores those wake-ups take the
 * cores from the holder, and past a point the interpreter finishes almost nothing (the
 * saturation cliff). With keep > 0, only `keep` waiters at a time wait the interpreter's
 * interval; any further waiter waits GLA_CALM_STRETCH (20) times as long.
 *
 * Guarantees:
 *  - the hand-off order is unchanged (drop_gil's signal still wakes a waiter at once)
 *    and the holder is still asked to drop within an interval while a short waiter
 *    exists (a dropped holder waiting again is one); a stretched waiter that times out
 *    does what a short one does;
 *  - no waiter starves: glibc's condition variable signals its longest waiters first, so
 *    a waiter re-waiting every interval is always among the youngest; a waiter that has
 *    waited GLA_CALM_STRETCH intervals in one take waits stretched from then on, however
 *    few short waiters there are;
 *  - thinning applies only while more than `above` threads wait for the GIL (counting
 *    the one about to wait): below that every waiter waits the interpreter's interval,
 *    so a small pool's hand-offs are CPython's own. Waits begun then count as short
 *    ones, so once more than `above` threads wait, a new waiter waits short only while
 *    fewer than `keep` short waits are under way;
 *  - it applies to every thread of the process while the GIL hook is installed, and only
 *    to waits on the GIL's own condition (not its switch condition), with a deadline no
 *    more than one second ahead.
 *
 * Design: the thinning lives inside the GIL hook's timed condition-wait wrapper
 * (gilhook.c), which runs with the GIL's mutex held before and after the wait; that
 * mutex guards the waiter counts below. The wrapper calls gla_calm_begin before its
 * wait (which may hand it a later deadline) and gla_calm_end after it. Both are inline
 * and the state they use is hidden to other objects, so the decision costs what it would
 * written inside the wrapper: relaxed loads and plain counter updates under the GIL's
 * mutex, initial-exec TLS, no system call, no allocation. fork(): the GIL hook's
 * handler calls gla_calm_atfork_child (no thread waits for the GIL in the child).
 */
#ifndef GIL_ADAPT_CALM_H
#define GIL_ADAPT_CALM_H

#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the settings (public) ---------------------------------------------------------- */

/* Sets how many GIL waiters keep the interpreter's interval. Returns the previous
 * setting (0 = off, the default; keep < 0 counts as 0). */
int gla_hook_set_calm(int keep);
/* The setting, and (if stretched != NULL) how many waits were stretched so far. */
int gla_hook_calm(uint64_t *stretched);
/* Thinning applies only while more than `above` threads wait for the GIL (see above).
 * 0 (the default) thins at any count; above < 0 counts as 0. Returns the previous
 * setting. */
int gla_hook_set_calm_above(int above);
int gla_hook_calm_above(void);

/* ---- the wait wrapper's interface (gilhook.c) ---------------------------------------- */

#define GLA_CALM_STRETCH 20

#define GLA_CALM_HIDDEN __attribute__((visibility("hidden")))
extern GLA_CALM_HIDDEN _Atomic int gla_calm_keep;     /* gla_hook_set_calm */
extern GLA_CALM_HIDDEN _Atomic int gla_calm_above;    /* gla_hook_set_calm_above */
extern GLA_CALM_HIDDEN _Atomic uint64_t gla_calm_stretched;
/* Guarded by the GIL's mutex: waits for the GIL under way, and those of them short. */
extern GLA_CALM_HIDDEN int gla_calm_gil_waiters;
extern GLA_CALM_HIDDEN int gla_calm_short_waiters;
/* When the calling thread began wanting the GIL (0: it does not). */
extern __thread uint64_t gla_calm_wanted_since
    __attribute__((tls_model("initial-exec"), visibility("hidden")));

/* One wait's part in the counts, and its stretched deadline. */
typedef struct {
    int waiting;            /* a wait for the GIL (counted in gla_calm_gil_waiters) */
    int counted;            /* a short one (counted in gla_calm_short_waiters) */
    struct timespec later;  /* the stretched deadline, if stretched */
} gla_calm_wait;

static inline uint64_t gla_calm_ns(const struct timespec *ts)
{
    return (uint64_t)ts->tv_sec * 1000000000ull + (uint64_t)ts->tv_nsec;
}

/* Before a timed wait that began at t0 (CLOCK_MONOTONIC ns) on the GIL's condition
 * (waiting = 1) or its switch condition (0), the GIL's mutex held: returns the deadline
 * to wait until, abstime or a stretched one (in w->later). */
static inline const struct timespec *gla_calm_begin(gla_calm_wait *w, int waiting, uint64_t t0,
                                                    const struct timespec *abstime)
{
    int keep = atomic_load_explicit(&gla_calm_keep, memory_order_relaxed);
    w->counted = 0;
    w->waiting = waiting;
    gla_calm_gil_waiters += waiting;
    if (keep > 0 && waiting) {
        uint64_t due = gla_calm_ns(abstime);
        if (!gla_calm_wanted_since)
            gla_calm_wanted_since = t0;
        /* The hand-off's signal reaches the longest-waiting waiters first (glibc's
         * condition groups), so a waiter that re-waits every interval is always among
         * the youngest and can starve: a waiter that has waited a stretched wait's
         * length already waits stretched from then on (new arrivals keep the count). */
        int starving = t0 - gla_calm_wanted_since >= (due - t0) * GLA_CALM_STRETCH;
        if (due <= t0 || due - t0 > 1000000000ull ||
            gla_calm_gil_waiters <= atomic_load_explicit(&gla_calm_above, memory_order_relaxed) ||
            (gla_calm_short_waiters < keep && !starving)) {
            gla_calm_short_waiters++;
            w->counted = 1;
        } else {
            uint64_t at = t0 + (due - t0) * GLA_CALM_STRETCH;
            w->later.tv_sec = (time_t)(at / 1000000000ull);
            w->later.tv_nsec = (long)(at % 1000000000ull);
            abstime = &w->later;
            atomic_fetch_add_explicit(&gla_calm_stretched, 1, memory_order_relaxed);
        }
    }
    return abstime;
}

/* After that wait returned, the GIL's mutex held again. */
static inline void gla_calm_end(const gla_calm_wait *w)
{
    gla_calm_short_waiters -= w->counted;
    gla_calm_gil_waiters -= w->waiting;
}

/* The calling thread no longer wants the GIL: it took it, or its state is stale. */
static inline void gla_calm_forget(void)
{
    gla_calm_wanted_since = 0;
}

/* fork(), in the child: no thread waits for the GIL there; the counts restart at zero. */
void gla_calm_atfork_child(void);

#ifdef __cplusplus
}
#endif
#endif
