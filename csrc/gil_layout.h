/* gil_layout.h — CPython's GIL state, as the hook reads it.
 *
 * Contract
 * --------
 * Purpose: the one description of CPython's struct _gil_runtime_state
 * (Include/internal/pycore_gil.h) that this code relies on. No CPython header is
 * compiled in; the hook knows the GIL only by the address of its condition variable
 * (`cond`, found by calibration in module.c) and reaches every other field from there.
 *
 * Design: one struct for every supported version. The fields used have the same types,
 * sizes and order in all of them (POSIX build: PyCOND_T is pthread_cond_t, PyMUTEX_T is
 * pthread_mutex_t, FORCE_SWITCHING is defined):
 *   3.9, 3.10, 3.11, 3.12   unsigned long interval; _Py_atomic_address last_holder
 *                           (a uintptr_t); _Py_atomic_int locked (an int); unsigned long
 *                           switch_number; cond; mutex; switch_cond; switch_mutex
 *   3.13, 3.14, 3.15        the same with PyThreadState *last_holder and int locked
 * A free-threaded build (Py_GIL_DISABLED) puts an `int enabled` before `interval`; it
 * lies outside the fields below, and every field is reached from `cond`, so the offsets
 * used do not move. gil_layout.c checks at compile time that interval, locked and
 * switch_number lie 4, 2 and 1 words before cond. The calibration (module.c, with
 * gla_gil_layout_ok) refuses a candidate whose fields do not read as this layout says;
 * the GIL then stays unknown, never guessed.
 *
 * Guarantees: the accessors below are inline, make no system call and take no lock;
 * reads of fields CPython writes concurrently (locked, switch_number, interval) are
 * relaxed atomic loads.
 */
#ifndef GIL_ADAPT_GIL_LAYOUT_H
#define GIL_ADAPT_GIL_LAYOUT_H

#include <pthread.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* struct _gil_runtime_state, CPython 3.9-3.15 (see above). */
typedef struct {
    unsigned long interval;      /* switch interval in µs (sys.getswitchinterval()) */
    void *last_holder;           /* the PyThreadState that holds / last held the GIL */
    int locked;                  /* 1 while held, 0 free (-1 before initialization) */
    unsigned long switch_number; /* hand-offs so far */
    pthread_cond_t cond;         /* the GIL's condition: waiters for the GIL */
    pthread_mutex_t mutex;       /* guards the fields above */
    pthread_cond_t switch_cond;  /* FORCE_SWITCHING: a dropping holder waits here */
    pthread_mutex_t switch_mutex;
} gla_gil_state;

/* The state whose `cond` field is at gil_cond. */
static inline gla_gil_state *gla_gil_state_of(void *gil_cond)
{
    return (gla_gil_state *)(void *)((char *)gil_cond - offsetof(gla_gil_state, cond));
}
static inline const gla_gil_state *gla_gil_state_of_const(const void *gil_cond)
{
    return (const gla_gil_state *)(const void *)((const char *)gil_cond -
                                                 offsetof(gla_gil_state, cond));
}

/* The GIL's mutex and switch condition, derived from its condition. */
static inline pthread_mutex_t *gla_gil_mutex(void *gil_cond)
{
    return &gla_gil_state_of(gil_cond)->mutex;
}
static inline pthread_cond_t *gla_gil_switch_cond(void *gil_cond)
{
    return &gla_gil_state_of(gil_cond)->switch_cond;
}

/* gil->locked (relaxed). */
static inline int gla_gil_locked(const void *gil_cond)
{
    return __atomic_load_n(&gla_gil_state_of_const(gil_cond)->locked, __ATOMIC_RELAXED);
}

/* gil->switch_number (relaxed). */
static inline unsigned long gla_gil_switch_number(const void *gil_cond)
{
    return __atomic_load_n(&gla_gil_state_of_const(gil_cond)->switch_number, __ATOMIC_RELAXED);
}

/* gil->interval (relaxed). */
static inline unsigned long gla_gil_interval(const void *gil_cond)
{
    return __atomic_load_n(&gla_gil_state_of_const(gil_cond)->interval, __ATOMIC_RELAXED);
}

/* Checks a candidate GIL condition variable against the layout above: its `interval`
 * must equal switch_interval_us and its `locked` must be 0 or 1; and cond must lie
 * inside [lo, hi) when hi > lo (checked first: a candidate outside is not read). */
int gla_gil_layout_ok(const void *cond, unsigned long switch_interval_us, const void *lo,
                      const void *hi);

#ifdef __cplusplus
}
#endif
#endif
