/* sim.h — a discrete-event simulation of a CPython thread pool, for the controller's tests.
 *
 * Contract
 * --------
 * sim_new(p, workers) builds a pool of `workers` threads with an endless queue of tasks;
 * sim_run(s, seconds, &w) advances simulated time and fills `w` with what the executor's
 * ledger would have measured over that stretch (a gla_ctl_window); sim_set_workers(s, n)
 * changes the pool size as the executor does (new threads start at once, surplus threads
 * retire after their current task). Deterministic: the same parameters, seed and calls give
 * the same figures. Task i's demands depend only on (seed, i), so two runs at different
 * sizes see the same tasks (common random numbers). No allocation after sim_new except
 * when the pool grows; sim_free releases everything.
 *
 * Model
 * -----
 * A task is: Python CPU (holds the GIL) h·(1−e), native CPU with the GIL released n, I/O w,
 * and a short Python epilogue h·e (returning the result needs the GIL again). Demands are
 * drawn per task from the workload's distributions (fixed with +-10 % jitter, uniform on
 * [0, 2m], or exponential). One GIL, handed over FIFO: released when the holder's Python phase ends,
 * or taken from it once it has held the GIL for the switch interval while a thread waits
 * (CPython's forced switch; the holder queues again with its remaining work); each hand-off
 * costs switch_cost of CPU. C cores are shared equally (processor sharing) by the threads
 * that need one: the GIL holder and the threads in native code. Every thread waiting for
 * the GIL wakes once per switch interval (CPython's timed condition wait) and burns
 * wake_cost of CPU doing so: with hundreds of waiters that eats the cores — the saturation
 * cliff. Thread start and retirement are free; I/O waits need no CPU. The run-queue share
 * reported is the finished tasks' time needing a core without one, over their wall time;
 * their I/O (task_io_s) is booked as the ledger's partition books it: wall less CPU, GIL
 * wait and that run-queue time.
 */
#ifndef GIL_ADAPT_TEST_SIM_H
#define GIL_ADAPT_TEST_SIM_H

#include "controller.h"

typedef enum { SIM_FIXED = 0, SIM_UNIFORM, SIM_EXP } sim_dist;

typedef struct {
    double h, n, w;           /* mean Python CPU, native CPU, I/O per task (s) */
    sim_dist cpu_dist, io_dist;
    double cores;             /* usable cores (> 0) */
    double switch_interval;   /* s; CPython's default is 0.005 */
    double switch_cost;       /* CPU per GIL hand-off (s) */
    double wake_cost;         /* CPU per waiter wake-up (s), once per switch interval */
    unsigned long long seed;
} sim_params;

typedef struct sim sim;

/* Fills p with the defaults (5 ms interval, 5 us hand-off, 2 us wake-up) for demands
 * h, n, w on `cores` cores, fixed CPU and I/O times. */
void sim_defaults(sim_params *p, double h, double n, double w, double cores);
/* NULL on bad parameters or no memory. */
sim *sim_new(const sim_params *p, int workers);
void sim_set_workers(sim *s, int workers);
/* A phase change: tasks started from now on draw from p's demands (seed kept). */
void sim_set_demands(sim *s, const sim_params *p);
/* Advances `seconds` of simulated time; fills *out (queue_length: a large backlog). */
void sim_run(sim *s, double seconds, gla_ctl_window *out);
double sim_now(const sim *s);
long long sim_completed(const sim *s);
void sim_free(sim *s);
/* Throughput (tasks/s) of a fixed pool of `workers`: measured over `seconds` after
 * `warm` seconds, each stretched to at least 5 of the pool's cycles (workers / rate). */
double sim_fixed_rate(const sim_params *p, int workers, double warm, double seconds);

#endif
