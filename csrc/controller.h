/* controller.h — the pool-size controller (decide). Pure C: no Python, no I/O, no
 * allocation, no clock: a deterministic function of the measurements it is given.
 *
 * Contract
 * --------
 * The executor's monitor calls gla_ctl_step once per measurement window with what the
 * window measured (gla_ctl_window; seconds and tasks/s; negative = unknown) and applies
 * the returned target. Guarantees:
 *   - the target is always within [min_workers, max_workers];
 *   - the same inputs in the same order give the same decisions;
 *   - each decision carries an action and a reason in plain words:
 *       GROW   the target rose (sized from demand, or a probe upward paid);
 *       SHRINK the target fell (fewer workers gave the same throughput, or demand fell);
 *       VETO   growth was proposed or probed and refused: it only added contention
 *              (throughput did not rise; the GIL or the cores are saturated);
 *       HOLD   nothing changed.
 *
 * Method (DESIGN.md §2):
 *   1. Size at once from task demands (Little's law). Per task: h = time holding the GIL
 *      (Python CPU; the thread CPU when unknown), n = CPU with the GIL released, w = the
 *      rest of the task's wall time outside GIL waits and the run queue (I/O). With C
 *      usable cores, throughput is bounded by X* = min(1/h, C/(h+n)); the concurrency
 *      that reaches it is X*·(h+n+w), plus a margin for variance.
 *   2. Refine on measured throughput: probe one step up (and then down) while tasks are
 *      queued; keep a step only if throughput rose (or, down, did not fall) by more than
 *      the noise margin. A refused step up is a VETO and is not retried for a while.
 *   3. Damp: changes need a full window at the new size before they are judged; the
 *      probe cadence backs off while the size holds.
 *   4. Re-converge: when the Little's-law size moves by more than a third between
 *      windows (a phase change), re-size from it at once.
 * Windows are sized to the task rate (gla_ctl_window_s): long enough for ~30 tasks, at
 * least twice a task's wall time, between 0.05 s and 2 s.
 */
#ifndef GIL_ADAPT_CONTROLLER_H
#define GIL_ADAPT_CONTROLLER_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    double window_s;        /* length of the window just ended, seconds */
    double completed;       /* tasks finished in the window */
    double task_cpu_s;      /* mean thread-CPU time per finished task (s); <0 unknown */
    double task_gil_wait_s; /* mean GIL wait per finished task (s); <0 unknown */
    double task_wall_s;     /* mean wall time per finished task on its worker (s) */
    double task_gil_held_s; /* mean time holding the GIL per task (s); <0 unknown */
    double beta;            /* workers' gil_wait/(gil_wait+io_wait) over the window; <0 unknown */
    double runq_share;      /* workers' run-queue wait / wall over the window; <0 unknown */
    int workers;            /* live workers now */
    int busy;               /* workers running a task at the end of the window */
    long queue_length;      /* tasks waiting in the queue at the end of the window */
    double usable_cores;    /* affinity ∩ cgroup CPU quota, may be fractional */
} gla_ctl_window;

typedef enum { GLA_CTL_HOLD = 0, GLA_CTL_GROW, GLA_CTL_SHRINK, GLA_CTL_VETO } gla_ctl_action;

typedef struct {
    int target;
    gla_ctl_action action;
    char reason[160];
} gla_ctl_decision;

typedef enum { GLA_CTL_SETTLE = 0, GLA_CTL_PROBE_UP, GLA_CTL_PROBE_DOWN, GLA_CTL_STEADY } gla_ctl_phase;

/* State: public so it can live inside the pool struct; treat as opaque. */
typedef struct gla_ctl {
    int min_workers, max_workers;
    double usable_cores;
    int target;              /* the size in force */
    int base;                /* the size a probe is judged against */
    double base_rate;        /* throughput measured at base (tasks/s), 0 = none yet */
    gla_ctl_phase phase;
    int steady_windows;      /* windows left before the next probe */
    int steady_backoff;      /* current pause between probes, in windows */
    int veto_above;          /* growth past this was refused recently (0 = none) */
    int veto_windows;        /* windows the veto still holds */
    double little_size;      /* last Little's-law size (0 = none) */
    double little_ref;       /* the Little's-law size last sized to (0 = none) */
    int little_moved;        /* consecutive windows whose size moved away from little_ref */
    int little_goal;         /* the size Little's law asked for while ramping to it (0 = none) */
    int good_size;           /* the most workers a window completed MIN_TASKS tasks with */
    double rate_ewma;        /* smoothed task rate, for window sizing */
    double wall_ewma;        /* smoothed task wall time */
} gla_ctl;

/* 0, or -EINVAL for impossible limits (min < 1, max < min, cores <= 0). */
int gla_ctl_init(gla_ctl *c, int min_workers, int max_workers, double usable_cores);
gla_ctl_decision gla_ctl_step(gla_ctl *c, const gla_ctl_window *w);
/* How long the next window should be, in seconds. */
double gla_ctl_window_s(const gla_ctl *c);
/* Little's-law size for one window's figures (exposed for tests): 0 when unknown. */
double gla_ctl_little_size(const gla_ctl_window *w, double usable_cores);

#ifdef __cplusplus
}
#endif
#endif
