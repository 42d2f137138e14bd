/* controller.h — the pool-size controller (decide). Pure C: no Python, no I/O, no
 * allocation, no clock: a deterministic function of the measurements it is given.
 *
 * Contract
 * --------
 * The controller is the executor pool's policy: gla_ctl_policy is a gla_policy_fn
 * (window.h) whose context is the gla_ctl, so the pool calls it directly once per
 * measurement window with what the window measured (gla_window, the pool's own type;
 * seconds and tasks/s; negative = unknown). It takes one step (gla_ctl_step, which the
 * tests and the simulator call directly), and returns the next window's length
 * (gla_ctl_window_s); the pool applies the decision's target. Guarantees:
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
 *   1. Size at once from task demands. Per task: h = time holding the GIL (Python CPU; the
 *      thread CPU when unknown), n = CPU with the GIL released, w = I/O: the task's wall
 *      time less CPU, GIL waits and run-queue time outside them (task_io_s, the ledger's
 *      partition; without it, wall less CPU and GIL waits). With C usable cores the
 *      bottleneck's demand per task is d = max(h, (h+n)/C). Little's law, (1/d)·(h+n+w) workers, leaves the
 *      bottleneck idle 10-20 % of the time because tasks reach it unevenly; the size used
 *      is the smallest that keeps it 99.5 % busy by mean-value analysis of the closed
 *      queueing network (one processor-shared station, one delay station). Large sizes
 *      are reached in steps of x4 per window (each once a task finished at the size
 *      before; MIN_TASKS of them past 256 threads per core, where a collapse may be near); when no task finishes at a size larger than
 *      one that completed tasks (an interpreter starved by thousands of threads: at least
 *      64 per core, for half a second or 4 task walls), the pool goes back to that size and
 *      growth past it is vetoed for a while. A step up after
 *      which throughput collapses for two windows in a row (one can be the machine's
 *      noise) goes back too, with a limit that lasts, unless throughput does not come
 *      back at the size gone back to (the machine slowed for a spell): then it is lifted.
 *      So does a step up after which throughput did not rise while each task's wait
 *      outside the GIL and the cores grew nearly in proportion to the pool (CONTENDED of
 *      the step, for two windows): that wait is contention for something the threads
 *      share — a native library's locks, a server at its capacity — not latency that
 *      more threads overlap.
 *   2. Refine on measured throughput while tasks are queued: probe one step up (x1.25) and
 *      then down; a step up is kept if throughput rose by more than the noise
 *      (two standard deviations of the difference of two windows: from the spread of
 *      windows while the size held, else from Poisson counts; at least 4 %), or if it lost
 *      at most 2 % while the bottleneck was less than 95 % busy at the size before
 *      (throughput x its demand per task, for tasks holding the GIL 3 ms or more:
 *      CPython's GIL needs more waiters than the model to keep it and the cores busy),
 *      up to 2x the demand-based size, and then probes down stop there; else it is
 *      a VETO not retried for a while; steps down go no lower than the demand-based
 *      size (windows of a few dozen tasks cannot show the few per cent below it).
 *      Where the GIL is the bottleneck (the cores' demand per task at most 80 % of its)
 *      and the hook measures it, steps are judged on the
 *      workers' GIL-busy share over the window (gil_busy: the work done, tasks in flight
 *      included; far steadier than the count of tasks finished): the base is the mean
 *      of two windows; while the GIL is below 97 % busy there, a step up is kept unless
 *      the share fell by 0.5 % (a fall is looked at for a second window: the mean of the
 *      two decides, and a fall inside twice the standard error of the two sides'
 *      windows is none) or the count fell by more than its noise, up to 2x the
 *      demand-based size, and probes down stop there; above 97 % only a rise in the
 *      count keeps it. A step down is kept if it lost less than 1 % of the share. Growth
 *      refused while the GIL idled (below 97 %) over several windows is looked at again
 *      at the next probe (no veto). Where the cores are the bottleneck — without a GIL
 *      (free-threaded), with one on one core, and on more where the tasks' GIL-held time
 *      is at most 80 % of their CPU per core (native code that releases the GIL) —
 *      for tasks taking 3 ms of CPU per core or more, the same rules judge steps on the
 *      cores' busy share (the process's CPU over the window and the usable cores,
 *      cpu_busy), saturated at 99 % without a GIL and at 97 % with one, a step that
 *      keeps the share kept up to 4x the demand-based size (the size last sized to, if
 *      larger: the I/O a task reads shrinks as the pool grows): threads sharing the cores
 *      in time wake in bunches and leave them idle at the demand-based size, by more
 *      than the model's slack and by less than one window's count of tasks can show.
 *      Where the share is used, steps are also judged on the bottleneck's work rate, its
 *      share over its demand per task in the same window (tasks/s, counting the extra
 *      cost of each task in a larger pool as the share alone does not), whose noise is
 *      known from the spread of the tasks' GIL-held times (task_gil_held_sd) and of the
 *      share, or from the windows' own: a step kept for an idle bottleneck must not cut
 *      it; a step that raises it beyond the noise is kept; and once fewer workers raised
 *      it or kept the GIL busier (beyond the share's spread), or a step for an idle
 *      bottleneck cut it by 3 standard deviations, the demands grow with the pool
 *      (tasks that release the GIL often: every waiter makes each hand-off cost more):
 *      no more steps for an idle bottleneck, the demand-based size is no longer followed
 *      upward, and probes go below it (to a quarter of it) on such a gain.
 *   3. Damp: the first window at a new size is not judged (retiring threads finish their
 *      tasks in it, new ones have not finished their first); the probe cadence backs off
 *      while the size holds.
 *   4. Re-converge: when the demand-based size moves by more than a third, and by more
 *      than 3 standard deviations of one window's size about its moving average, for two
 *      windows in one direction from the size last sized to (while none is under way,
 *      from the moving average), re-size from it; when its moving average rises past
 *      the size in force by 10 %, follow it.
 * Windows are sized to the task rate (gla_ctl_window_s): long enough for ~30 tasks, at
 * least twice a task's wall time, between 0.05 s and 2 s.
 */
#ifndef GIL_ADAPT_CONTROLLER_H
#define GIL_ADAPT_CONTROLLER_H

#include "window.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Fewer completions than this in a window: its counts say nothing. */
#define GLA_CTL_MIN_TASKS 8

typedef enum {
    GLA_CTL_SETTLE = 0,
    GLA_CTL_PROBE_UP,
    GLA_CTL_PROBE_DOWN,
    GLA_CTL_STEADY
} gla_ctl_phase;

/* A figure measured once per window, on a log scale: its mean over the windows at the
 * size in force, and the spread of one window about such a mean (the workload's, kept
 * across sizes until the demands change). */
typedef struct {
    double mean; /* over the last n windows at base (at most 16) */
    int n;       /* 0 = unknown */
    double var;  /* variance of one window about its size's mean... */
    int var_n;   /* ...from this many windows (at most the last 16) */
} gla_ctl_logmean;

/* State: public so it can live inside the pool struct; treat as opaque. */
typedef struct gla_ctl {
    int min_workers, max_workers;
    double usable_cores;
    int target;              /* the size in force */
    int base;                /* the size a probe is judged against */
    double base_rate;        /* throughput measured at base (tasks/s), 0 = none yet */
    double base_done;        /* tasks the base_rate was measured on */
    double base_u;           /* the workers' GIL-busy share at base (0 = unknown)... */
    int base_u_n;            /* ...the mean of this many windows... */
    double base_u_var;       /* ...whose variance is this (0 = unknown) */
    gla_ctl_logmean rate_at; /* the bottleneck's work rate at base (its busy share over
                                its demand per task, tasks/s), log scale */
    double base_dse;         /* the relative standard error of the base's demand per task,
                                from the tasks' own spread (GIL-held time; <= 0: unknown) */
    double fill_lr;          /* the log work rate (and its demand's error) at the size a
                                chain of steps kept for an idle bottleneck began from... */
    double fill_dse;
    int fill_known;          /* ...if known */
    int sheds;               /* fewer workers did more work, or a step kept for an idle
                                bottleneck cut its work rate: each task costs it more in a
                                larger pool; no more such steps, and probes go below the
                                demand-based size on a gain of work rate */
    int u_again;             /* a step up is judged on a second window... */
    double u_first;          /* ...with the first one's GIL-busy share */
    gla_ctl_phase phase;
    int steady_windows;      /* windows left before the next probe */
    int steady_backoff;      /* current pause between probes, in windows */
    int veto_above;          /* growth past this was refused recently (0 = none) */
    int veto_windows;        /* windows the veto still holds */
    int fresh;               /* the last decision changed the size: its first window is
                                transient */
    int collapse_veto;       /* the veto is a collapse's (throughput fell to a trickle
                                above it) */
    int collapse_contended;  /* ...found as contention (a wait that grew with the pool) */
    int collapse_check;      /* ...not yet confirmed by the size gone back to: */
    double collapse_rate;    /* the throughput at the collapsed size (tasks/s) */
    double collapse_done;    /* tasks that rate was measured on */
    double ramp_rate;        /* throughput before the last step up (0 = nothing to check) */
    int ramp_size;           /* the size before it */
    double ramp_done;        /* tasks that rate was measured on */
    double ramp_held;        /* the tasks' GIL-held time then (a phase change is no collapse) */
    double ramp_io;          /* and their wait outside the GIL, CPU and cores (0 = unknown) */
    int ramp_strikes;        /* windows in a row that looked collapsed after that step */
    int stalls;              /* consecutive windows with nothing finished above good_size */
    double stall_s;          /* ...and their length (s) */
    double little_size;      /* last demand-based size (0 = none) */
    double little_smooth;    /* its moving average: probes down stop there (0 = none) */
    double model_cap;        /* little_smooth when a step below it paid (0 = none) */
    double bneck_s;          /* the bottleneck's (GIL or cores) demand per task, last
                                measured (s) */
    double held_s;           /* GIL-held time per task, last measured (s) */
    double cores_s;          /* CPU per task over the usable cores, last measured (s) */
    int idle_floor;          /* a step kept for an idle bottleneck reached this: no probes
                                down below it (0 = none) */
    int free_threaded;       /* the last window's: no GIL, the cores are the bottleneck */
    int by_cores;            /* the cores are the bottleneck (no GIL; one core; or the
                                GIL's demand per task at most U_CORES of the cores'):
                                steps are judged on their busy share */
    double rate_var;         /* relative variance of window throughputs at a held size */
    int rate_var_n;          /* windows rate_var is made of */
    double little_ref;       /* the Little's-law size last sized to (0 = none) */
    int little_moved;        /* consecutive windows whose size moved away from little_ref */
    double little_var;       /* variance of one window's log size about little_smooth */
    int little_var_n;        /* windows little_var is made of */
    int little_goal;         /* the size Little's law asked for while ramping to it (0 = none) */
    int good_size;           /* the most workers a window completed MIN_TASKS tasks with */
    double rate_ewma;        /* smoothed task rate, for window sizing */
    double wall_ewma;        /* smoothed task wall time */
} gla_ctl;

/* 0, or -EINVAL for impossible limits (min < 1, max < min, cores <= 0). */
int gla_ctl_init(gla_ctl *c, int min_workers, int max_workers, double usable_cores);
/* The size in force when the pool starts (after init; clamped to [min, max]): the first
 * decisions ramp from there instead of from min_workers. */
void gla_ctl_start_at(gla_ctl *c, int target);
/* One window's decision (its target: the size in force from now on). */
gla_decision gla_ctl_step(gla_ctl *c, const gla_window *w);
/* How long the next window should be, in seconds. */
double gla_ctl_window_s(const gla_ctl *c);
/* The controller as a pool policy (a gla_policy_fn; ctl: the gla_ctl): *d = gla_ctl_step,
 * and the next window's length from gla_ctl_window_s. */
double gla_ctl_policy(void *ctl, const gla_window *w, gla_decision *d);
/* Little's-law size for one window's figures (exposed for tests): 0 when unknown. */
double gla_ctl_little_size(const gla_window *w, double usable_cores);

#ifdef __cplusplus
}
#endif
#endif
