/* window.h — one measurement window and the decision taken on it: the interface between
 * the pool (pool.h), which measures and acts, and its policy, which decides — the
 * controller (controller.h: gla_ctl_policy) or any other function of type gla_policy_fn.
 * Types only: no code, no Python.h.
 *
 * Contract
 * --------
 * Once per window the pool's monitor fills a gla_window and calls the policy with it and
 * with a gla_decision set to HOLD at the target in force; the policy fills the decision
 * and returns the length of the next window in seconds. Both sides use these types as
 * they are: the window the pool measured is the one the policy reads, nothing is copied
 * or translated between them. Guarantees of the types:
 *   - per-task figures are means over the tasks completed in the window; a negative
 *     figure is unknown (no task finished; no exact GIL figure without the GIL hook);
 *   - the pool fills every field; a field that only one side uses says so (another
 *     producer, such as the C tests' simulator, may leave it zero);
 *   - a decision names the size wanted (the pool clamps it to [min_workers,
 *     max_workers]), an action, and a reason in plain words:
 *       GROW   the target rose;
 *       SHRINK the target fell;
 *       VETO   growth was proposed or probed and refused;
 *       HOLD   nothing changed;
 *     the pool books an action outside these as HOLD and cuts the reason to
 *     GLA_REASON_LEN - 1 characters.
 */
#ifndef GIL_ADAPT_WINDOW_H
#define GIL_ADAPT_WINDOW_H

#ifdef __cplusplus
extern "C" {
#endif

#define GLA_REASON_LEN 160

/* What the pool measured over one window. */
typedef struct {
    double window_s;        /* length of the window, seconds */
    double completed;       /* tasks completed in the window */
    double task_cpu_s;      /* mean thread CPU per task */
    double task_gil_wait_s; /* mean GIL wait per task (< 0: no exact GIL figure) */
    double task_wall_s;     /* mean wall per task, from the worker taking it to its end */
    double task_gil_held_s; /* mean time holding the GIL per task (< 0: unknown) */
    double task_gil_held_sd; /* its standard deviation over the window's tasks (<= 0:
                                unknown: fewer than 2 tasks, or no exact GIL figure) */
    double task_io_s;       /* mean I/O per task by the ledger's partition: wall less CPU,
                               GIL and lock waits and run-queue time outside the GIL waits
                               (< 0: unknown; the controller then takes wall less
                               CPU and GIL wait) */
    double beta;            /* gil_wait / (gil_wait + io_wait) of the workers' busy time;
                               without a GIL (free_threaded), (run-queue + lock waits) /
                               (those + io_wait) (< 0: unknown) */
    double runq_share;      /* run-queue delay / busy time of the sampled workers
                               (< 0: unknown) */
    double gil_busy;        /* share of the window the workers held the GIL (0-1), tasks in
                               flight included (< 0: no exact GIL figure) */
    double cpu_busy;        /* the CPU the whole process used over the window, over the
                               window and the usable cores (0-1; tasks in flight and
                               threads outside the pool included; <= 0: unknown) */
    int workers;            /* live workers at the window's end */
    int busy;               /* workers not idle at the window's end */
    long queue_length;      /* tasks waiting at the window's end */
    double usable_cores;    /* affinity ∩ cgroup CPU quota, may be fractional */
    int free_threaded;      /* 1: no GIL in this process (a free-threaded build running
                               without it): Python runs in parallel up to the cores, the
                               GIL figures are unknown, and task_io_s is the partition's
                               I/O with no GIL wait in it */
    int target;             /* the target in force during the window: filled by the pool
                               (and kept in its stats); the controller keeps its own and
                               does not read it */
} gla_window;

typedef enum {
    GLA_HOLD = 0,
    GLA_GROW = 1,
    GLA_SHRINK = 2,
    GLA_VETO = 3,
    GLA_NACTIONS = 4
} gla_action;

typedef struct {
    int target;
    gla_action action;
    char reason[GLA_REASON_LEN];
} gla_decision;

/* A policy: fills *d from the window *w and returns the length of the next window in
 * seconds. ctx is the policy's own state (gla_pool_config.policy_ctx). */
typedef double (*gla_policy_fn)(void *ctx, const gla_window *w, gla_decision *d);

#ifdef __cplusplus
}
#endif
#endif
