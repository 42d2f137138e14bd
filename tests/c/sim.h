/* sim.h — a discrete-event simulation of a CPython thread pool, for the controller's tests.
 *
 * Contract
 * --------
 * sim_new(p, workers) builds a pool of `workers` threads with an endless queue of tasks;
 * sim_run(s, seconds, &w) advances simulated time and fills `w` with what the executor's
 * ledger would have measured over that stretch (a gla_window); sim_set_workers(s, n)
 * changes the pool size as the executor does (new threads start at once, surplus threads
 * retire after their current task). Deterministic: the same parameters, seed and calls give
 * the same figures. Task i's demands depend only on (seed, i), so two runs at different
 * sizes see the same tasks (common random numbers). No allocation after sim_new except
 * when the pool grows; sim_free releases everything.
 *
 * Model
 * -----
 * A task is: Python CPU (holds the GIL) h, less two short Python phases: one after the
 * native call with the GIL released n (CPython takes the GIL back to go on; only when n > 0)
 * and one after the I/O w (taking the result, setting the future), which runs on into the
 * next task's Python without a hand-off. Demands are drawn per task from the workload's
 * distributions (fixed with +-10 % jitter, uniform on [0, 2m], or exponential).
 * The GIL is CPython's on glibc (sim.c, "the GIL"): a waiter sits in a timed wait of one
 * switch interval; a timeout with no switch in that interval asks the holder to drop (the
 * holder then waits for the switch before it asks again); a drop signals the waiter whose
 * wait began first, i.e. the one nearest its next timeout (the order is the waiters'
 * phase, not their arrival), which runs wake_latency later and takes the GIL only if it is
 * still free: a thread that wants the GIL while it is free takes it at once (barging).
 * Each take costs switch_cost of CPU, and a take by another thread than the last holder
 * handoff_cost more per other thread that held it since the taker's own last turn, up to
 * 8 (its caches are cold, the more so the more working sets went through them: a task
 * that releases the GIL many times — `segments` alternations of Python and native code,
 * as pandas does — pays it at each release while others wait, so its GIL time grows
 * with the pool). Until 2026-12-01 the model handed the GIL over FIFO
 * at once, timed forced switches from the hold's start and had no hand-off after native
 * code: its throughput then peaked sharply below the sizes CPython needs (the same
 * demands run for real rise to a plateau; benchmarks/sim_vs_real.py).
 * C cores are shared equally (processor sharing) by the threads that need one: the GIL
 * holder and the threads in native code. Every thread waiting for the GIL wakes once per
 * switch interval and burns wake_cost of CPU doing so: with hundreds of waiters that eats
 * the cores — the saturation cliff. Thread start and retirement are free; I/O waits need
 * no CPU. The run-queue share reported is the finished tasks' time needing a core without
 * one, over their wall time; their I/O (task_io_s) is booked as the ledger's partition
 * books it: wall less CPU, GIL wait and that run-queue time. gil_busy is the share of the
 * window some thread held the GIL (holdings under way included), as the pool measures it.
 * free_threaded models a build without the GIL: a task is one CPU phase of h + n on the
 * processor-shared cores, then its I/O; the window says free_threaded, its GIL figures
 * are unknown (-1) and its beta is the contention form (run-queue time over run-queue
 * time and I/O).
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
    double wake_latency;      /* a signalled GIL waiter runs this long after the drop (s) */
    int segments;             /* the Python and native CPU in this many alternations (the GIL
                                 released this many times a task; 0 or 1: once) */
    double handoff_cost;      /* CPU the GIL's new holder spends per other thread that held
                                 it since its own last turn (cold caches; at most 8 of
                                 them; 0: none) */
    int free_threaded;        /* no GIL: a task's CPU (h + n) shares the cores at once */
    unsigned long long seed;
} sim_params;

typedef struct sim sim;

/* Fills p with the defaults (5 ms interval, 5 us hand-off, 2 us wake-up CPU, 50 us wake-up
 * latency) for demands
 * h, n, w on `cores` cores, fixed CPU and I/O times. */
void sim_defaults(sim_params *p, double h, double n, double w, double cores);
/* NULL on bad parameters or no memory. */
sim *sim_new(const sim_params *p, int workers);
void sim_set_workers(sim *s, int workers);
/* A phase change: tasks started from now on draw from p's demands (seed kept). */
void sim_set_demands(sim *s, const sim_params *p);
/* Advances `seconds` of simulated time; fills *out (queue_length: a large backlog). */
void sim_run(sim *s, double seconds, gla_window *out);
double sim_now(const sim *s);
long long sim_completed(const sim *s);
void sim_free(sim *s);
/* Throughput (tasks/s) of a fixed pool of `workers`: measured over `seconds` after
 * `warm` seconds, each stretched to at least 5 of the pool's cycles (workers / rate). */
double sim_fixed_rate(const sim_params *p, int workers, double warm, double seconds);

#endif
