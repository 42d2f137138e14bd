/* controller.c — see controller.h for the contract and the method.
 *
 * gla_ctl_step runs decide(): observe() takes in the window's figures, then the stages
 * of the method run in order, each a function that returns 1 when it decided (the first
 * that does ends the step): 0. step_up_collapsed, collapse_lifted; 1. size_from_demands,
 * follow_demands, ramp_to_goal, too_few; 2. refine, by phase: settle, judge_up and
 * propose_up, probe_down (judge_down), steady. The target decided is c->target.
 */
#include "controller.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* clang-format off */
#define FILL 0.995             /* demand-based size: the bottleneck this busy (queueing model) */
#define FLOOR 1.0              /* probes down go freely to this share of the demand-based size */
#define LOW 1.0                /* ...and on evidence of a gain to this share, never further */
#define GAIN 1.04              /* a probe up must raise throughput by 4 % */
#define KEEP 0.98              /* a probe down may lose at most 2 % */
#define PHASE_CHANGE 1.33      /* Little's-law size moving by a third: re-size */
#define PHASE_WINDOWS 2        /* ...in this many consecutive windows */
#define PHASE_SD 3.0           /* ...or by this many standard deviations of one window's
                                  size, if more (exponential demands, windows of ~30
                                  tasks: 10-20 % per window in the simulator) */
#define RAMP 4                 /* growth toward Little's size: at most x4 a window */
#define COLLAPSE 0.75          /* a step up that costs a quarter of the throughput (beyond 3
                                  standard deviations of the counts) is a collapse */
#define MODEL_MAX 512          /* demand-based sizes stop at this many threads per core */
#define RAMP_SLOW 256          /* per usable core: past this, growth steps are x1.5 */
#define MIN_TASKS ((double)GLA_CTL_MIN_TASKS) /* a window with fewer says nothing */
#define CONTENDED 0.8          /* a step up by a factor g >= 1.5 after which each task
                                  waits 1 + CONTENDED (g - 1) times longer, and at least
                                  1.8 times (outside the GIL and the cores: nearly in
                                  proportion to the pool), and throughput did not rise: the
                                  wait is contention, not I/O */
#define STEADY_FIRST 4         /* windows between probes, doubling up to STEADY_MAX */
#define STEADY_MAX 32
#define VETO_WINDOWS 24        /* a refused step up is not retried for this long */
#define STALL_THREADS 64       /* per usable core: fewer threads cannot starve the
                                  interpreter (nothing finishing is something else) */
#define STALL_MIN_S 0.5        /* and nothing finished for this long (or 4 task walls) */
#define MIN_TASK_S 20e-6       /* per-task floor: the executor's own cost */
#define IDLE_FILL 0.95         /* the bottleneck (GIL or cores) busy less than this at the
                                  size in force... */
#define IDLE_CAP 2.0           /* ...a step up that loses nothing is kept, up to this many
                                  times the demand-based size, */
#define IDLE_TASK_S 3e-3       /* ...for tasks that hold the GIL this long (shorter ones
                                  lose a larger share to the hand-offs themselves: more
                                  threads do not fill that) */
#define CORES_SAT 0.99         /* where the cores are the bottleneck, tasks taking
                                  IDLE_TASK_S of CPU per core or more: steps are judged on
                                  the cores' busy share, and without a GIL this share of it
                                  is saturation (with one, U_SAT: a hand-off leaves them
                                  idle a moment); threads sharing the cores in time wake in
                                  bunches and leave them idle at the demand-based size */
#define CORES_CAP 4.0          /* ...and a step that keeps the share is kept up to this
                                  many times the demand-based size (native code of a few
                                  ms per task on one core: several times the model's size
                                  before the core is busy) */
#define U_SAT 0.97             /* GIL-bound, the workers holding the GIL this share of the
                                  time: it is saturated (a hand-off leaves it idle a moment:
                                  CPython here, 8-64 threads of 10 ms Python: 0.971-0.980) */
#define U_KEEP 0.005           /* below U_SAT, a step up that kept the GIL-busy share within
                                  this is kept */
#define U_CORES 0.8            /* the share's rule where the cores' demand per task is at
                                  most this share of the GIL's (both as measured: the GIL
                                  time includes a holder's waits for a core, so a GIL and
                                  cores loaded alike read as GIL-bound) */
#define U_GAIN 0.01            /* a step down may lose this much of the GIL-busy share */
#define LOW_RATE 0.25          /* judged on the bottleneck's work rate, probes down go on
                                  below the demand-based size on a gain, to this share of it
                                  (tasks that release the GIL often cost more with every
                                  waiter: the model's size, computed from what they cost at
                                  the size in force, can be several times the best) */
#define RATE_MOVE 0.02         /* the work rate moved: by two standard deviations of the
                                  difference (from the tasks' spread of GIL-held time and
                                  the share's, or the windows' own), at least 2 % */
#define RATE_SD 0.05           /* the windows' own spread is used where one window's work
                                  rate spreads by at most this (standard deviation, log
                                  scale): a noisier rate looked at again and again would
                                  take steps on chance */
#define SHEDS 1.5              /* a step kept for an idle bottleneck that cut the work rate
                                  by 1.5 times RATE_MOVE's measure (3 standard deviations):
                                  the demands grow with the pool */
/* clang-format on */

static int clamp(const gla_ctl *c, double n)
{
    if (!(n == n)) /* NaN */
        return c->target;
    if (n < c->min_workers)
        return c->min_workers;
    if (n > c->max_workers)
        return c->max_workers;
    return (int)n;
}

int gla_ctl_init(gla_ctl *c, int min_workers, int max_workers, double usable_cores)
{
    if (!c || min_workers < 1 || max_workers < min_workers || !(usable_cores > 0))
        return -EINVAL;
    memset(c, 0, sizeof *c);
    c->min_workers = min_workers;
    c->max_workers = max_workers;
    c->usable_cores = usable_cores;
    c->target = min_workers;
    c->base = min_workers;
    c->phase = GLA_CTL_SETTLE;
    c->steady_backoff = STEADY_FIRST;
    return 0;
}

void gla_ctl_start_at(gla_ctl *c, int target)
{
    c->target = c->base = clamp(c, target);
}

/* The smallest pool that keeps the bottleneck (demand d per task, seconds) `fill` busy,
 * the rest of a task's cycle (z) being time away from it: mean-value analysis of the
 * closed network of one processor-shared station (the GIL hands over round-robin; the
 * cores share time) and a delay station. Little's law alone, x*(d + z) with x = 1/d,
 * ignores that tasks arrive at the bottleneck unevenly: at that size it is idle 15-20 %
 * of the time (a 10 ms CPU + 50 ms I/O task: 81 % busy at 6 workers, 98 % at 12). */
static double queue_size(double d, double z, double fill)
{
    if (!(d > 0))
        return 0;
    if (z < 0)
        z = 0;
    double q = 0, goal = fill / d;
    int n;
    for (n = 1; n < (1 << 20); n++) {
        double r = d * (1 + q);
        double x = n / (z + r);
        if (x >= goal)
            break;
        q = x * r;
    }
    return n;
}

/* A task's demands from a window: GIL-held time, native CPU and I/O (seconds). 0 when
 * unknown. */
static int demands(const gla_window *w, double *held_out, double *native_out, double *io_out)
{
    if (w->completed < 1 || !(w->task_wall_s > 0) || !(w->task_cpu_s >= 0))
        return 0;
    double cpu = w->task_cpu_s;
    /* Without a GIL no CPU is serialised by the interpreter: it is all "native" and
     * the cores are the bottleneck. */
    double held = w->free_threaded ? 0 : w->task_gil_held_s > 0 ? w->task_gil_held_s : cpu;
    if (held > cpu && cpu > 0)
        held = cpu;
    if (held < MIN_TASK_S)
        held = MIN_TASK_S;
    double native = cpu > held ? cpu - held : 0;
    /* I/O: the ledger's partition of the task's wall time (task_io_s) where known:
     * run-queue time outside the GIL waits (a thread woken from I/O waiting for a core
     * before it can ask for the GIL; native CPU queuing for a core) is not I/O. Counted
     * as I/O it grows with the pool (one core, 0.1 ms CPU + 1 ms sleep: 1.4 ms "I/O" at
     * 14 workers, 3.8-4.3 ms at 47) and the size chases it upward. Otherwise what is left
     * after CPU and GIL wait (the kernel's run-queue figure alone overlaps the waits). */
    double gil_wait = w->task_gil_wait_s > 0 ? w->task_gil_wait_s : 0;
    double io = w->task_wall_s - cpu - gil_wait;
    if (w->task_io_s >= 0 && w->task_io_s < io)
        io = w->task_io_s;
    if (io < 0)
        io = 0;
    *held_out = held;
    *native_out = native;
    *io_out = io;
    return 1;
}

/* The bottleneck's demand per task: one GIL, or the cores. */
static double bottleneck_of(double held, double native, double cores)
{
    return (held + native) / cores > held ? (held + native) / cores : held;
}

static double window_cores(const gla_window *w, double usable_cores)
{
    return w->usable_cores > 0 ? w->usable_cores : usable_cores;
}

double gla_ctl_little_size(const gla_window *w, double usable_cores)
{
    double held, native, io;
    if (!demands(w, &held, &native, &io))
        return 0;
    double bottleneck = bottleneck_of(held, native, window_cores(w, usable_cores));
    return queue_size(bottleneck, held + native + io - bottleneck, FILL);
}

/* The change a step must show to count: the minimum, or two standard deviations of the
 * difference of two windows' throughputs, whichever is larger. The windows' spread is the
 * one measured while the size held (STEADY), else that of Poisson counts of a and b
 * tasks (relative sd sqrt(1/a + 1/b)): steady work varies far less than that. */
static double noise(const gla_ctl *c, double a, double b, double least)
{
    double sd;
    if (c->rate_var_n >= 3)
        sd = sqrt(2 * c->rate_var);
    else if (a >= 1 && b >= 1)
        sd = sqrt(1.0 / a + 1.0 / b);
    else
        return least;
    return 2 * sd > least ? 2 * sd : least;
}

static void say(gla_decision *d, gla_action a, const char *fmt, double x, double y)
{
    d->action = a;
    snprintf(d->reason, sizeof d->reason, fmt, x, y);
}

/* Moves to a new base size and waits one window before judging it. */
static void set_base(gla_ctl *c, int n)
{
    c->target = n;
    c->base = n;
    c->base_rate = 0;
    c->base_done = 0;
    c->base_u = 0;
    c->base_u_n = 0;
    c->base_u_var = 0;
    c->u_again = 0;
    c->phase = GLA_CTL_SETTLE;
}

/* The usable cores, at least one: the per-core limits on thread counts scale with it. */
static double cores_for_limits(const gla_ctl *c)
{
    return c->usable_cores > 1 ? c->usable_cores : 1;
}

/* Growth per step: x4, but x1.5 past RAMP_SLOW threads per core, where CPython starts to
 * starve (a thousand threads waking from short sleeps on one core can keep the
 * interpreter from finishing anything for seconds): each step is checked for a collapse
 * before the next. */
static double ramp(const gla_ctl *c)
{
    return c->target >= RAMP_SLOW * cores_for_limits(c) ? 1.5 : RAMP;
}

/* The demand-based size, but no more than MODEL_MAX threads per core: past that CPython's
 * GIL waiters' wake-ups can starve the interpreter (a cliff the model does not see);
 * larger pools are reached only by probes that show a gain. */
static double model_cap_size(const gla_ctl *c, double n)
{
    double most = MODEL_MAX * cores_for_limits(c);
    return n > most ? most : n;
}

/* Throughput fell from `before` (measured on a tasks) to `rate` (on b) by more than a
 * collapse's share and more than 3 standard deviations of the counts. */
static int collapsed(double before, double a, double rate, double b)
{
    double sd = a >= 1 && b >= 1 ? sqrt(1.0 / a + 1.0 / b) : 1;
    double fell = 3 * sd > 1 - COLLAPSE ? 3 * sd : 1 - COLLAPSE;
    return rate < (1 - fell) * before;
}

/* Throughput collapsed above `back` (the rate there: `rate`, on `done` tasks): no growth
 * past it, for good, once the size gone back to confirms it (collapse_lifted). */
static void limit_collapse(gla_ctl *c, int back, double rate, double done)
{
    c->veto_above = back;
    c->collapse_veto = 1;
    c->collapse_contended = 0;
    c->veto_windows = VETO_WINDOWS;
    c->collapse_check = 1;
    c->collapse_rate = rate;
    c->collapse_done = done;
}

/* The first judged window at the size gone back to after a collapse: the interpreter's
 * limit if throughput came back there (by more than the noise); if not, the machine
 * slowed for a spell (a shared virtual CPU can lose nearly half its speed for a second
 * at the same size), and the limit goes. Returns 1 if lifted. */
static int collapse_lifted(gla_ctl *c, const gla_window *w, double rate)
{
    if (!c->collapse_check || c->fresh || w->completed < MIN_TASKS || w->workers > c->veto_above)
        return 0;
    c->collapse_check = 0;
    double spread = noise(c, c->collapse_done, w->completed, GAIN - 1);
    /* After contention the smaller size is confirmed unless it lost throughput. */
    if (c->collapse_contended ? rate >= c->collapse_rate * (1 - spread)
                              : rate > c->collapse_rate * (1 + spread))
        return 0;
    c->veto_above = 0;
    c->collapse_veto = 0;
    c->veto_windows = 0;
    return 1;
}

/* A step up from the size in force to n: remember the rate it had, to catch a collapse. */
static void note_step(gla_ctl *c, const gla_window *w, double rate, int n)
{
    c->ramp_rate = n > c->target && w->completed >= MIN_TASKS && w->workers >= c->target ? rate : 0;
    c->ramp_size = c->target;
    c->ramp_held = w->task_gil_held_s > 0 ? w->task_gil_held_s : w->task_cpu_s;
    double held, native, io;
    c->ramp_io = demands(w, &held, &native, &io) ? io : 0;
    c->ramp_done = w->completed;
}

/* ---- one step: the window's figures, then the method's stages in order ------------- */

/* Takes in one window's figures: the usable cores, the demands per task, the smoothed
 * task rate and wall time (window sizing); a veto's windows run down. Returns the
 * window's throughput (tasks/s). */
static double observe(gla_ctl *c, const gla_window *w)
{
    if (w->usable_cores > 0)
        c->usable_cores = w->usable_cores;
    c->free_threaded = w->free_threaded;
    if (c->veto_windows > 0 && --c->veto_windows == 0 && !c->collapse_veto)
        c->veto_above = 0; /* a collapse's veto holds until the demands change */
    double rate = w->window_s > 0 ? w->completed / w->window_s : 0;
    double held, native, io;
    if (demands(w, &held, &native, &io)) {
        c->bneck_s = bottleneck_of(held, native, window_cores(w, c->usable_cores));
        c->held_s = held;
        c->cores_s = (held + native) / window_cores(w, c->usable_cores);
    }
    /* The cores are the bottleneck without a GIL, with one on one core, and on more where
     * the GIL's demand per task is at most U_CORES of the cores' (loaded alike, the GIL
     * keeps the cores from filling: more threads only wait for it). */
    c->by_cores = c->free_threaded || (c->held_s > 0 && (window_cores(w, c->usable_cores) < 2
                                                             ? c->cores_s >= c->held_s
                                                             : c->held_s <= c->cores_s * U_CORES));
    if (w->completed >= 1) {
        c->rate_ewma = c->rate_ewma > 0 ? 0.7 * c->rate_ewma + 0.3 * rate : rate;
        if (w->task_wall_s > 0)
            c->wall_ewma = c->wall_ewma > 0 ? 0.7 * c->wall_ewma + 0.3 * w->task_wall_s
                                            : w->task_wall_s;
    }
    return rate;
}

/* Where the cores are the bottleneck: their busy share (the process's CPU over the window
 * and the usable cores, cpu_busy; where unknown, the finished tasks' CPU), for tasks
 * taking IDLE_TASK_S of CPU per core or more (-1 for shorter ones: judged on the count). */
static double cores_share(const gla_ctl *c, const gla_window *w)
{
    if (!(c->cores_s >= IDLE_TASK_S) || !(w->task_cpu_s > 0) || !(w->window_s > 0) ||
        w->completed < 1)
        return -1;
    double u = w->cpu_busy > 0 ? w->cpu_busy
                               : w->completed * w->task_cpu_s /
                                     (w->window_s * window_cores(w, c->usable_cores));
    return u < 1 ? u : 1;
}

/* The share at which the bottleneck is saturated: the GIL's, or the cores' where they are
 * the bottleneck (with a GIL, a hand-off leaves them idle a moment too). */
static double u_sat(const gla_ctl *c)
{
    return c->free_threaded ? CORES_SAT : U_SAT;
}

/* How far a step that keeps the share is kept: a multiple of the demand-based size, or
 * where the cores are the bottleneck of the size last sized to if larger (the tasks' I/O
 * reads shorter as the pool grows: run-queue waits take part of it). */
static double fill_limit(const gla_ctl *c)
{
    if (!c->by_cores)
        return IDLE_CAP * c->little_smooth;
    double ref = c->little_ref > c->little_smooth ? c->little_ref : c->little_smooth;
    return CORES_CAP * ref;
}

/* What the share is of, for the reasons given. */
static const char *u_name(const gla_ctl *c)
{
    return c->by_cores ? "the cores" : "the GIL";
}

/* The bottleneck's busy share the steps are judged on (the GIL's; where the cores are the
 * bottleneck, theirs: cores_share), or -1 where they are judged on the count of tasks. Where the GIL is the bottleneck, the share is the work the pool gets done
 * (tasks/s x GIL time per task), measured over the whole window, tasks in flight
 * included: far steadier than the count of tasks finished in it (2 cores, 6 ms of
 * Python per task, 64 workers, windows of ~30 tasks: counts +-1.6 %, the share
 * +-0.05 %; below saturation both spread more, the share less). Not on one core:
 * there the holder shares its core with every thread that wakes (I/O returns,
 * waiters' timeouts, the submitter) and holds the GIL longer for the same work
 * (with a task of a millisecond or two of Python on one core, the share stays flat
 * while the pool doubles and throughput falls). Nor where the cores are loaded nearly
 * as much as the GIL: there the GIL idles while the next holder waits for a core, and
 * more threads do not fill it (with Python and native CPU about equal on 2 cores, the
 * share stays flat below 0.9 over a doubling of the pool). */
static double busy_share(const gla_ctl *c, const gla_window *w)
{
    if (c->by_cores)
        return cores_share(c, w);
    return w->gil_busy >= 0 && c->held_s > 0 && c->cores_s <= c->held_s * U_CORES &&
                   c->usable_cores >= 2
               ? w->gil_busy
               : -1;
}

/* The bottleneck's demand per task in a window: the GIL's held time, or where the cores
 * are the bottleneck the CPU per task over the cores (0: unknown). */
static double demand_of(const gla_ctl *c, const gla_window *w)
{
    double d = c->by_cores ? w->task_cpu_s / window_cores(w, c->usable_cores) : w->task_gil_held_s;
    return d > 0 ? d : 0;
}

/* The bottleneck's work rate in tasks/s: its busy share over its demand per task in the
 * same window, or 0 where the share is not used. Unlike the share alone it falls when
 * each task costs the bottleneck more: a task that releases the GIL often is handed over
 * at each release while others wait, and the more threads take turns the more each
 * hand-off costs (pandas: each task holds the GIL longer in a larger pool, the GIL's
 * busy share much the same). */
static double work_rate(const gla_ctl *c, const gla_window *w, double u)
{
    double d = demand_of(c, w);
    return u > 0 && d > 0 ? u / d : 0;
}

/* Starts a figure's mean at a new base from one window (x <= 0: unknown). */
static void logmean_start(gla_ctl_logmean *m, double x)
{
    m->mean = x > 0 ? log(x) : 0;
    m->n = x > 0;
}

/* One more window at the base: into the mean (the last 16) and into the windows' spread
 * (a window's deviation from the mean of the n before it has variance var (1 + 1/n)). */
static void logmean_add(gla_ctl_logmean *m, double x)
{
    if (!(x > 0) || m->n < 1)
        return;
    double dev = log(x) - m->mean;
    double sample = dev * dev / (1 + 1.0 / m->n);
    if (m->var_n < 16)
        m->var_n++;
    m->var += (sample - m->var) / m->var_n;
    if (m->n < 16)
        m->n++;
    m->mean += dev / m->n;
}

/* How far one window's figure must be from the base's mean to count: two standard
 * deviations of the difference (the windows' spread as measured at the sizes held since
 * the demands last changed), and at least RATE_MOVE (log scale). 0 while the spread is
 * unknown; -1 where it exceeds RATE_SD: tasks of widely varying demands (a window of 30
 * exponential ones: about 12 %), or a machine whose speed wanders from window to window,
 * where repeated looks at so noisy a figure would take steps on chance. */
static double logmean_move(const gla_ctl_logmean *m)
{
    if (m->n < 1 || m->var_n < 4)
        return 0;
    if (m->var > RATE_SD * RATE_SD)
        return -1;
    double sd = sqrt(m->var * (1 + 1.0 / m->n));
    return 2 * sd > RATE_MOVE ? 2 * sd : RATE_MOVE;
}

/* The relative standard error of a window's demand per task, from the spread of its tasks'
 * GIL-held times (where the GIL is the bottleneck and the pool measures it; else -1). */
static double window_dse(const gla_ctl *c, const gla_window *w)
{
    if (c->by_cores || !(w->task_gil_held_sd > 0) || !(w->task_gil_held_s > 0) || w->completed < 2)
        return -1;
    return w->task_gil_held_sd / w->task_gil_held_s / sqrt(w->completed);
}

/* Two standard errors of the difference of two means whose relative errors are a and b
 * (and extra variance `more`), at least RATE_MOVE; 0 if either is unknown. */
static double se_move(double a, double b, double more)
{
    if (!(a > 0) || !(b > 0))
        return 0;
    double m = 2 * sqrt(a * a + b * b + more);
    return m > RATE_MOVE ? m : RATE_MOVE;
}

static double larger(double a, double b)
{
    return a > b ? a : b;
}

/* How far this window's work rate must be from the base's to count (log scale): from the
 * spread of its tasks' demands and of the share, and from the windows' where known; 0
 * (not judged on it) if neither is known, or where the windows spread too much. */
static double rate_move(const gla_ctl *c, const gla_window *w)
{
    double windows = logmean_move(&c->rate_at);
    if (windows < 0)
        return 0;
    double uvar = c->base_u_n >= 2 && c->base_u > 0 ? c->base_u_var / (c->base_u * c->base_u) : -1;
    double se = uvar >= 0 ? se_move(window_dse(c, w), c->base_dse, 2 * uvar) : 0;
    return larger(windows, se);
}

/* 0. A step up that made throughput collapse (thousands of threads starving the
 * interpreter finish a trickle, not nothing): back, and no growth past there. Looked at
 * in the window after each step up (note_step). 1 when it decided. */
static int step_up_collapsed(gla_ctl *c, const gla_window *w, double rate, gla_decision *d)
{
    if (!(c->ramp_rate > 0))
        return 0;
    double before = c->ramp_rate;
    int from = c->ramp_size;
    c->ramp_rate = 0;
    /* Not a phase change: the tasks hold the GIL about as long as they did (in a
     * collapse their wall time explodes, and their CPU too: waiters burn it waking
     * up, but not the time they hold the GIL). */
    double held = w->task_gil_held_s > 0 ? w->task_gil_held_s : w->task_cpu_s;
    int same_work = w->completed < 1 || (held > 0 && c->ramp_held > 0 && held < c->ramp_held * 2 &&
                                         held * 2 > c->ramp_held);
    /* Or the step only lengthened each task's wait outside the GIL and the cores:
     * throughput no higher while that wait grew with the pool. */
    double h2, n2, io2;
    double grew = from > 0 ? (double)w->workers / from : 1;
    double longer = 1 + CONTENDED * (grew - 1);
    int contended = c->ramp_io > 0 && w->completed >= MIN_TASKS && grew >= 1.5 &&
                    demands(w, &h2, &n2, &io2) &&
                    io2 >= c->ramp_io * (longer > 1.8 ? longer : 1.8) && rate < before * GAIN;
    int fell = same_work && w->workers > from && w->queue_length > 0 &&
               (collapsed(before, c->ramp_done, rate, w->completed) || contended);
    if (fell && w->completed >= 1 && c->ramp_strikes == 0) {
        /* One window can be the machine's (a slow spell of the CPU, a burst of thread
         * starts): look again before a limit that lasts. */
        c->ramp_strikes = 1;
        c->ramp_rate = before;
        d->action = GLA_HOLD;
        snprintf(d->reason, sizeof d->reason,
                 contended ? "no gain from %.0f to %.0f tasks/s at %d workers, each task "
                             "waiting longer: checking again"
                           : "throughput fell from %.0f to %.0f tasks/s at %d workers: "
                             "checking again",
                 before, rate, w->workers);
        return 1;
    }
    c->ramp_strikes = 0;
    if (!fell)
        return 0;
    int was = w->workers;
    if (from > was / 2)
        from = clamp(c, was / 2); /* the edge is not sharp: keep clear of it */
    set_base(c, from);
    c->little_goal = 0;
    limit_collapse(c, from, rate, w->completed);
    c->collapse_contended = contended;
    d->action = GLA_VETO;
    snprintf(d->reason, sizeof d->reason,
             contended ? "no gain from %.0f to %.0f tasks/s at %d workers while each "
                         "task's wait grew: contention, back to %d"
                       : "throughput fell from %.0f to %.0f tasks/s at %d workers: "
                         "back to %d",
             before, rate, was, from);
    return 1;
}

/* Folds one window's demand-based size into its moving average and into the spread of
 * one window's size about it, and follows its moves away from the size last sized to.
 * 1 when the demands changed (a phase change), or on the first size. */
static int demands_changed(gla_ctl *c, double little)
{
    double prev = c->little_ref;
    /* How far one window's size strays from the average: the spread of the demands
     * over a window's tasks (log scale; winsorized at the limit, so a phase change's
     * own step does not blind the detector to the next one). Kept across phases. */
    double lim = log(PHASE_CHANGE);
    if (c->little_var_n >= 4 && PHASE_SD * sqrt(c->little_var) > lim)
        lim = PHASE_SD * sqrt(c->little_var);
    if (c->little_smooth > 0) {
        double dev = log(little / c->little_smooth);
        dev = dev > lim ? lim : dev < -lim ? -lim : dev;
        /* the mean of the first 20 windows, then a moving one over ~20 (a moving
         * one over ~5 let the limit dip: one false re-size in test_noisy_demands) */
        c->little_var_n++;
        c->little_var += (dev * dev - c->little_var) /
                         (c->little_var_n < 20 ? c->little_var_n : 20);
    }
    c->little_size = little;
    c->little_smooth = c->little_smooth > 0 ? 0.7 * c->little_smooth + 0.3 * little : little;
    /* A phase change must hold for PHASE_WINDOWS windows in one direction: the window
     * after a resize (threads starting, a burst of GIL hand-offs) moves the demands
     * for a moment, and re-sizing on it alone oscillates between two sizes. It must
     * also be more than the demands' noise: with exponential demands a window's size
     * strays by a third now and then, twice in a row once in a few hundred windows,
     * and each such re-size loses what the probes had found. */
    double moved = prev > 0 ? log(little / prev) : 0;
    int dir = moved > lim ? 1 : moved < -lim ? -1 : 0;
    if (dir == 0 || (c->little_moved != 0 && (c->little_moved > 0) != (dir > 0)))
        c->little_moved = dir;
    else
        c->little_moved += dir;
    int changed = prev <= 0 || c->little_moved >= PHASE_WINDOWS ||
                  c->little_moved <= -PHASE_WINDOWS;
    /* While no change is under way the reference is the average, not the one window
     * that was sized on (during a ramp, one window of 16 workers read 40 where the
     * demands' mean is 30: two windows at 27 re-sized the pool 16 s later, workload
     * 568) */
    if (!changed && dir == 0)
        c->little_ref = c->little_smooth;
    return changed;
}

/* New demands: what was learned at the old ones goes, and the goal is the new
 * demand-based size `little`, no further than a collapse's limit. */
static void new_demands(gla_ctl *c, double little)
{
    c->little_ref = little;
    c->little_smooth = little;
    c->model_cap = 0;
    c->idle_floor = 0;
    c->rate_var_n = 0;
    c->rate_at.var_n = 0;
    c->sheds = 0;
    c->fill_known = 0;
    c->little_moved = 0;
    c->little_goal = clamp(c, ceil(model_cap_size(c, little)));
    /* Contention is the workload's: its limit goes with it. */
    if (c->collapse_contended) {
        c->collapse_veto = c->collapse_check = c->collapse_contended = 0;
        c->veto_above = c->veto_windows = 0;
    }
    /* A collapse's limit is the interpreter's on this machine, not the workload's:
     * it outlives phase changes. */
    if (c->collapse_veto && c->veto_above && c->little_goal > c->veto_above)
        c->little_goal = c->veto_above;
}

/* 1. Little's law: size at once on start and on a phase change (one finished task
 * is enough to know the demands roughly; the estimate sharpens as more finish). 1 when
 * it decided. */
static int size_from_demands(gla_ctl *c, const gla_window *w, double rate, gla_decision *d)
{
    double little = gla_ctl_little_size(w, c->usable_cores);
    if (!(little > 0))
        return 0;
    double prev = c->little_ref;
    if (!demands_changed(c, little))
        return 0;
    new_demands(c, little);
    int n = c->little_goal;
    /* Ramp: a window at each size on the way shows whether the interpreter
     * still completes tasks there (thousands of threads on one core may not). */
    if (n > c->target * ramp(c))
        n = clamp(c, c->target * ramp(c));
    if (n >= c->little_goal)
        c->little_goal = 0; /* reached: no ramp pending */
    if (n == c->target)
        return 0;
    int grew = n > c->target;
    note_step(c, w, rate, n);
    set_base(c, n);
    if (!c->collapse_veto)
        c->veto_above = 0;
    say(d, grew ? GLA_GROW : GLA_SHRINK,
        prev <= 0 ? "sized from task demands (Little's law): %.1f workers (was %.0f)"
                  : "task demands changed: re-sized to %.1f workers (was %.0f)",
        little, prev > 0 ? prev : 0.0);
    return 1;
}

/* The demand-based size, averaged, rose past the size in force: follow it (no probe
 * needed; a probe's window could not see the few per cent it is worth). 1 when it grew. */
static int follow_demands(gla_ctl *c, const gla_window *w, double rate, gla_decision *d)
{
    int model = clamp(c, ceil(model_cap_size(c, c->little_smooth * FLOOR)));
    if (c->little_goal == 0 && c->target == c->base && w->completed >= MIN_TASKS &&
        model > c->target * 1.1 && !c->sheds &&
        !(c->model_cap > 0 && c->little_smooth < c->model_cap * PHASE_CHANGE) &&
        !(c->collapse_veto && c->veto_above && model > c->veto_above)) {
        int from = c->target;
        note_step(c, w, rate, model);
        set_base(c, model);
        say(d, GLA_GROW, "demand-based size %.0f above the %.0f workers in force: grown",
            (double)model, (double)from);
        return 1;
    }
    return 0;
}

/* The next step of a ramp toward the demand-based size (little_goal). Each step waits
 * for a window that shows tasks finishing there; a full window's worth (MIN_TASKS)
 * only where a collapse could be near (past RAMP_SLOW threads per core): below that one
 * finished task will do (with tasks of a few hundred milliseconds a window holds only a
 * few completions, and waiting for a full one stalls the ramp). 1 when it stepped. */
static int ramp_to_goal(gla_ctl *c, const gla_window *w, double rate, gla_decision *d)
{
    int shown = w->completed >= MIN_TASKS ||
                (w->completed >= 1 && c->target * ramp(c) <= RAMP_SLOW * cores_for_limits(c));
    if (!(c->target < c->little_goal && shown && !(c->veto_above && c->target >= c->veto_above)))
        return 0;
    int n = c->little_goal < c->target * ramp(c) ? c->little_goal : clamp(c, c->target * ramp(c));
    if (c->veto_above && n > c->veto_above)
        n = c->veto_above;
    if (n <= c->target)
        return 0;
    note_step(c, w, rate, n);
    set_base(c, n);
    say(d, GLA_GROW, "ramping toward the demand-based size %.0f: %.0f workers",
        (double)c->little_goal, (double)n);
    if (n >= c->little_goal)
        c->little_goal = 0;
    return 1;
}

/* Too little finished to compare throughputs (fewer than MIN_TASKS). Nothing finished in
 * two windows (each at least twice a task's wall time) while tasks wait, after windows
 * that did finish tasks: too many threads for this interpreter (they starve each other;
 * the state is sticky: more threads deepen it): back to half, and no growth past that.
 * Before any task finished, the size may be far too small for long tasks: double it.
 * (Blocked workers with idle cores are the pool's liveness rule's to grow.) */
static void too_few(gla_ctl *c, const gla_window *w, double rate, gla_decision *d)
{
    int stalled = w->queue_length > 0 && w->completed < 1 && c->good_size > 0 &&
                  w->workers > c->min_workers;
    c->stalls = stalled ? c->stalls + 1 : 0;
    c->stall_s = stalled ? c->stall_s + w->window_s : 0;
    /* Starved by its own threads only when there are many (the cliff needs hundreds
     * per core) and for a while: a submitter holding the GIL for a burst of submits,
     * or threads starting, empty a window or two of short tasks at any size. */
    double long_stall = 4 * c->wall_ewma > STALL_MIN_S ? 4 * c->wall_ewma : STALL_MIN_S;
    if (stalled && c->stalls >= 2 && c->stall_s >= long_stall &&
        w->workers >= STALL_THREADS * cores_for_limits(c)) {
        c->stalls = 0;
        c->stall_s = 0;
        int from = w->workers;
        /* the edge is not sharp (a size that completed tasks once may not again) */
        int back = c->good_size < from / 2 ? c->good_size : clamp(c, from / 2);
        c->good_size = back;
        set_base(c, back);
        c->little_goal = 0;
        limit_collapse(c, back, rate, w->completed);
        say(d, GLA_VETO, "no task finished at %.0f workers: back to %.0f", (double)from,
            (double)back);
    } else if (c->good_size == 0 && w->queue_length > 0 && w->completed < 1 &&
               c->target < c->max_workers && w->busy >= c->target) {
        int n = clamp(c, c->target * 2.0);
        set_base(c, n);
        say(d, GLA_GROW, "tasks queued and none finished in %.2f s: doubling to %.0f", w->window_s,
            (double)n);
    } else {
        snprintf(d->reason, sizeof d->reason, "%.0f tasks in the window: too few to judge",
                 w->completed);
    }
}

/* The base's work rate from this window alone (a new size), and its demand's error. */
static void start_rate(gla_ctl *c, const gla_window *w, double u)
{
    logmean_start(&c->rate_at, work_rate(c, w, u));
    c->base_dse = u > 0 ? window_dse(c, w) : -1;
}

/* The base's figures from this window: its throughput and, GIL-bound, its GIL-busy share
 * (the mean of one window so far). */
static void measure_base(gla_ctl *c, const gla_window *w, double rate, double u)
{
    c->base_rate = rate;
    c->base_done = w->completed;
    c->base_u = u > 0 ? u : 0;
    c->base_u_n = u > 0;
    c->base_u_var = 0;
    start_rate(c, w, u);
}

/* One more window at the base into its work rate's mean and spread, and its demand's
 * standard error. */
static void add_base_rate(gla_ctl *c, const gla_window *w, double u)
{
    logmean_add(&c->rate_at, work_rate(c, w, u));
    double e = u > 0 ? window_dse(c, w) : -1;
    if (c->base_dse > 0 && e > 0) /* the error of the mean of both */
        c->base_dse = 1 / sqrt(1 / (c->base_dse * c->base_dse) + 1 / (e * e));
}

/* Probing is over for now: the size holds, and the next probe waits twice as long as
 * this one did (up to STEADY_MAX windows). */
static void back_off(gla_ctl *c)
{
    c->phase = GLA_CTL_STEADY;
    c->steady_windows = c->steady_backoff;
    if (c->steady_backoff < STEADY_MAX)
        c->steady_backoff *= 2;
}

/* SETTLE: the first judged window at a new base measures it. 1 when it takes one more
 * window (GIL-bound: the base is the mean of two). */
static int settle(gla_ctl *c, const gla_window *w, double rate, double u, gla_decision *d)
{
    if (u > 0 && c->base_u_n == 1) {
        /* GIL-bound: the base is the mean of two windows (below saturation one
         * window's GIL-busy share spreads a few per cent: it can read saturated) */
        double tasks = c->base_done + w->completed;
        c->base_rate = tasks > 0 ? (c->base_rate * c->base_done + rate * w->completed) / tasks
                                 : rate;
        c->base_done = tasks;
        c->base_u_var = (c->base_u - u) * (c->base_u - u) / 2;
        c->base_u = (c->base_u + u) / 2;
        c->base_u_n = 2;
        add_base_rate(c, w, u);
        return 0;
    }
    measure_base(c, w, rate, u);
    if (!(u > 0))
        return 0;
    snprintf(d->reason, sizeof d->reason,
             "%d workers: %s busy %.1f %% of the time: one more window", c->target, u_name(c),
             u * 100);
    return 1;
}

/* PROBE_UP, the window after a step up from the base: kept if throughput rose by more
 * than the noise, or if it lost nothing while the bottleneck was idle at the base: the
 * demand-based size assumes the GIL hands over at once, in order; CPython's waiters wait
 * for a timeout or a signal that can go to a later one, and throughput rises slowly
 * toward the GIL's limit past that size (sim.h; one task of 13.4 ms Python on 2 cores:
 * 69 tasks/s at 26 workers, 95 % of the GIL's 72.8). Kept: the step is the new base (0).
 * Else 1: one more window, or back to the base (a VETO). */
static int judge_up(gla_ctl *c, const gla_window *w, double rate, double u, gla_decision *d)
{
    int by_u = u > 0 && c->base_u > 0;
    double u_step = c->u_again && by_u ? (c->u_first + u) / 2 : u;
    double fill = c->base_rate * c->bneck_s;
    int idle = !by_u && !c->sheds && fill > 0 && fill < IDLE_FILL && c->held_s >= IDLE_TASK_S &&
               c->little_smooth > 0 && c->target <= IDLE_CAP * c->little_smooth &&
               rate >= c->base_rate * KEEP;
    /* GIL-bound (2+ cores) with the GIL idle part of the time at the base (its
     * busy share under U_SAT): kept unless the workers hold it less of the time
     * (the count of tasks cannot show the few per cent a step is worth) or the
     * count fell by more than its noise (a holder that shares its core holds
     * the GIL longer for the same work) */
    double spread = noise(c, c->base_done, w->completed, GAIN - 1);
    int may_fill = by_u && !c->sheds && c->base_u < u_sat(c) && c->little_smooth > 0 &&
                   c->target <= fill_limit(c) && rate >= c->base_rate * (1 - spread);
    /* judged on two windows, a fall inside the windows' own spread is no fall (convoys
     * make consecutive windows at one size differ by more than a step's change) */
    double step_var = c->u_again ? (c->u_first - u) * (c->u_first - u) / 2 : 0;
    int in_noise = c->u_again && c->base_u_var > 0 && c->base_u_n >= 2 &&
                   c->base_u - u_step <= 2 * sqrt(c->base_u_var / c->base_u_n + step_var / 2);
    /* ...unless the bottleneck's work rate fell beyond its noise: each task costs it more
     * at the larger size (the share was kept by costlier tasks, not by more work). A fall
     * well beyond the noise says the demands grow with the pool: no step is kept for an
     * idle bottleneck any more. */
    double r = work_rate(c, w, u), rmove = rate_move(c, w);
    int r_known = r > 0 && rmove > 0 && c->rate_at.n > 0;
    double r_dev = r_known ? log(r) - c->rate_at.mean : 0;
    int costlier = r_known && r_dev < -rmove;
    if (may_fill && r_known && r_dev < -SHEDS * rmove)
        c->sheds = 1;
    int filled = may_fill && !costlier && (u_step >= c->base_u * (1 - U_KEEP) || in_noise);
    int gained = rate > c->base_rate * (1 + spread) || (r_known && r_dev > rmove);
    if (may_fill && !filled && !gained && !c->u_again) {
        /* below saturation one window's share spreads a few per cent (convoys
         * of waiters come and go): judged on the mean of two */
        c->u_again = 1;
        c->u_first = u;
        snprintf(d->reason, sizeof d->reason,
                 "%d workers: %s busy %.1f %% of the time (was %.1f %%): one more window",
                 c->target, u_name(c), u * 100, c->base_u * 100);
        return 1;
    }
    c->u_again = 0;
    if (gained || idle || filled) {
        if (idle || filled) {
            if (!c->idle_floor) {
                c->fill_lr = c->rate_at.mean;
                c->fill_dse = c->base_dse;
                c->fill_known = c->rate_at.n > 0;
            }
            c->idle_floor = c->target;
        }
        c->base = c->target;
        measure_base(c, w, rate, u);
        c->steady_backoff = STEADY_FIRST;
        return 0;
    }
    if (collapsed(c->base_rate, c->base_done, rate, w->completed)) {
        /* the step up collapsed the interpreter: a lasting limit */
        limit_collapse(c, c->base, rate, w->completed);
    } else if (by_u && c->base_u < u_sat(c)) {
        /* the GIL idles at the base: one window of the step said no, the
         * next probe may say otherwise (no veto) */
    } else if (!c->collapse_veto) { /* a collapse's limit stays */
        c->veto_above = c->base;
        c->veto_windows = VETO_WINDOWS;
    }
    c->target = c->base;
    c->phase = GLA_CTL_PROBE_DOWN;
    say(d, GLA_VETO,
        "growth to more workers raised throughput only %.1f %% (beta %.2f): kept the size",
        c->base_rate > 0 ? (rate / c->base_rate - 1) * 100 : 0, w->beta);
    return 1;
}

/* PROBE_UP: a step up (x1.25) from the base, unless growth past there was refused
 * lately. 1 when it decided; 0 when there is no step to take: on to probing down. */
static int propose_up(gla_ctl *c, double u, gla_decision *d)
{
    int up = clamp(c, ceil(c->base * 1.25));
    /* GIL-bound and the GIL idle at this size over several windows: growth is worth
     * another look, whatever one window said before (not past a collapse) */
    int gil_idle = u > 0 && c->base_u_n >= 3 && c->base_u < u_sat(c) && !c->collapse_veto;
    if (up == c->base) {
        c->phase = GLA_CTL_PROBE_DOWN;
        return 0;
    }
    if (c->veto_above && up > c->veto_above && !gil_idle) {
        c->phase = GLA_CTL_PROBE_DOWN;
        say(d, GLA_VETO, "growth past %.0f workers refused %.0f windows ago", (double)c->veto_above,
            (double)(VETO_WINDOWS - c->veto_windows));
        return 1;
    }
    c->target = up;
    say(d, GLA_GROW, "probing %.0f workers (throughput %.1f tasks/s)", (double)up, c->base_rate);
    return 1;
}

/* PROBE_DOWN, the window after a step down from the base (`soft`: the size below which
 * a step down must show a gain): kept when the throughput held, or, GIL-bound, the
 * workers kept the GIL as busy; the step is the new base (0). Else back to the base, and
 * the probes back off: 1. */
static int judge_down(gla_ctl *c, const gla_window *w, double rate, double u, int soft,
                      gla_decision *d)
{
    int below = c->target < soft;
    double need = below ? 1 + noise(c, c->base_done, w->completed, GAIN - 1) : KEEP;
    /* GIL-bound: fewer workers that keep the GIL as busy lose nothing; that leave
     * it idle more lose what the count may not show */
    int kept = !below && u > 0 && c->base_u > 0 ? u >= c->base_u * (1 - U_GAIN)
                                                : rate >= c->base_rate * need;
    /* Judged on the bottleneck's work rate, a gain beyond its own noise keeps the step
     * (the count no lower than its noise allows): the share alone counts the extra cost
     * of each task at the larger size as work. Below the demand-based size nothing else
     * does. */
    double r = work_rate(c, w, u), move = rate_move(c, w);
    if (r > 0 && move > 0 && c->rate_at.n > 0 && (below || !kept))
        kept = log(r) - c->rate_at.mean > move &&
               rate >= c->base_rate * (1 - noise(c, c->base_done, w->completed, GAIN - 1));
    /* More work done with fewer workers: each task cost the bottleneck more at the
     * larger size (the demands grow with the pool), and what the model sized from was
     * that cost */
    if (kept && r > 0 && move > 0 && c->rate_at.n > 0 && log(r) - c->rate_at.mean > move)
        c->sheds = 1;
    /* Or fewer workers kept the GIL busier, beyond the share's spread (two standard
     * deviations of one window against the base's mean, and 1 %): the hand-offs among
     * more threads left it idle longer. Without such costs a step down never does. */
    if (!c->by_cores && u > 0 && c->base_u > 0 && c->base_u_n >= 2 &&
        u > c->base_u + U_GAIN + 2 * sqrt(c->base_u_var * (1 + 1.0 / c->base_u_n))) {
        kept = 1;
        c->sheds = 1;
    }
    if (kept) {
        if (below)
            c->model_cap = c->little_smooth;
        c->base = c->target;
        if (rate > c->base_rate) {
            c->base_rate = rate;
            c->base_done = w->completed;
        }
        if (u > c->base_u)
            c->base_u = u;
        start_rate(c, w, u); /* the new size's own (the windows' spread is kept) */
        return 0;
    }
    c->target = c->base;
    back_off(c);
    d->action = GLA_GROW;
    if (r > 0 && move > 0 && c->rate_at.n > 0)
        snprintf(d->reason, sizeof d->reason,
                 "fewer workers did not raise the work rate of %s (%+.1f %%): back to %d",
                 u_name(c), (r / exp(c->rate_at.mean) - 1) * 100, c->base);
    else
        snprintf(d->reason, sizeof d->reason,
                 below ? "fewer workers did not raise throughput (%.1f %%): back to %d"
                       : "fewer workers lost throughput (%.1f %%): back to %d",
                 c->base_rate > 0 ? (1 - rate / c->base_rate) * 100 : 0, c->base);
    return 1;
}

/* Steps kept for an idle bottleneck that, measured since, cut its work rate: each task
 * cost it more at the larger size (the share was kept by costlier tasks, not by more
 * work). The floor they set goes, and the demands are known to grow with the pool. 1 if
 * so. */
static int fill_was_costlier(gla_ctl *c)
{
    double windows = logmean_move(&c->rate_at);
    double move = windows < 0 ? 0 : larger(windows, se_move(c->base_dse, c->fill_dse, 0));
    if (!(c->idle_floor && c->fill_known && move > 0 &&
          c->rate_at.mean < c->fill_lr - SHEDS * move))
        return 0;
    c->idle_floor = 0;
    c->fill_known = 0;
    c->sheds = 1;
    return 1;
}

/* PROBE_DOWN: judges a step down, then takes the next (x0.8). Down to the demand-based
 * size freely (fewer threads for the same throughput); below it only on evidence (the
 * model says the bottleneck would idle, but cores shared with native code can make the
 * surplus threads cost more than they give), and never below LOW of it. 1 when it
 * decided; 0 when there is no step to take: the size holds. */
static int probe_down(gla_ctl *c, const gla_window *w, double rate, double u, gla_decision *d)
{
    int soft = clamp(c, ceil(c->little_smooth * FLOOR));
    int hard = clamp(c, ceil(c->little_smooth * LOW));
    if (c->model_cap > 0 && soft > c->base)
        soft = c->base; /* an earlier step below the model paid */
    fill_was_costlier(c);
    if (c->idle_floor > hard)
        soft = hard = c->idle_floor; /* grown into an idle bottleneck: not back */
    if (c->sheds && u > 0 && (!c->by_cores || rate_move(c, w) > 0))
        hard = clamp(c, ceil(c->little_smooth * LOW_RATE)); /* further on a gain */
    if (c->target != c->base && judge_down(c, w, rate, u, soft, d))
        return 1;
    int down = clamp(c, floor(c->base * 0.8));
    if (c->base > soft && down < soft)
        down = soft;
    if (down < hard)
        down = hard;
    if (down >= c->base) {
        back_off(c);
        return 0;
    }
    c->target = down;
    say(d, GLA_SHRINK, "probing %.0f workers (throughput %.1f tasks/s)", (double)down,
        c->base_rate);
    return 1;
}

/* STEADY: the size holds. Its throughput and GIL-busy share are averaged (the base the
 * next probe is judged against; the windows' spread is the noise) until the next probe. */
static void steady(gla_ctl *c, const gla_window *w, double rate, double u)
{
    if (c->base_rate > 0) {
        double dev = rate / c->base_rate - 1;
        c->rate_var = c->rate_var_n > 0 ? 0.8 * c->rate_var + 0.2 * dev * dev : dev * dev;
        c->rate_var_n++;
    }
    c->base_rate = c->base_rate > 0 ? 0.8 * c->base_rate + 0.2 * rate : rate;
    if (u > 0) { /* the mean of the windows at this size (the last 16) */
        if (c->base_u_n < 16)
            c->base_u_n++;
        c->base_u += (u - c->base_u) / c->base_u_n;
        c->base_u_var += ((u - c->base_u) * (u - c->base_u) - c->base_u_var) / c->base_u_n;
        add_base_rate(c, w, u);
    }
    c->base_done = 0.8 * c->base_done + w->completed; /* ~ the tasks the average spans */
    if (fill_was_costlier(c))
        c->phase = GLA_CTL_PROBE_DOWN; /* down at once */
    else if (--c->steady_windows <= 0)
        c->phase = GLA_CTL_PROBE_UP;
}

/* 2. Refine on measured throughput (only while tasks wait: otherwise the rate is the
 * demand's, not the pool's): the phases in turn, SETTLE, PROBE_UP, PROBE_DOWN, STEADY.
 * 1 when it decided; 0: the size holds. */
static int refine(gla_ctl *c, const gla_window *w, double rate, double u, gla_decision *d)
{
    if (w->queue_length <= 0 && w->busy < w->workers) {
        c->phase = GLA_CTL_STEADY;
        c->steady_windows = c->steady_backoff;
        c->base_rate = 0;
        if (c->target != c->base)
            c->target = c->base;
        snprintf(d->reason, sizeof d->reason,
                 "demand below capacity (%d of %d workers busy, queue empty)", w->busy, w->workers);
        return 1;
    }
    if (c->fresh) {
        /* 3. Damp: the first window at a new size is not judged: threads retiring finish
         * their tasks in it (a shrink looks faster than it is), new ones have not
         * finished their first (a growth looks slower). */
        snprintf(d->reason, sizeof d->reason, "first window at %d workers: not judged", c->target);
        return 1;
    }
    switch (c->phase) {
    case GLA_CTL_SETTLE:
        if (settle(c, w, rate, u, d))
            return 1;
        c->phase = GLA_CTL_PROBE_UP;
        __attribute__((fallthrough)); /* probe at once */
    case GLA_CTL_PROBE_UP:
        if (c->target != c->base && judge_up(c, w, rate, u, d))
            return 1;
        if (propose_up(c, u, d))
            return 1;
        __attribute__((fallthrough));
    case GLA_CTL_PROBE_DOWN: return probe_down(c, w, rate, u, d);
    case GLA_CTL_STEADY: steady(c, w, rate, u); break;
    }
    return 0;
}

/* One window's decision: its action and reason into *d (the target is c->target after
 * it). The stages in the order of the method (controller.h); the first that decides
 * ends the step. */
static void decide(gla_ctl *c, const gla_window *w, gla_decision *d)
{
    double rate = observe(c, w);
    double u = busy_share(c, w);
    if (step_up_collapsed(c, w, rate, d))
        return;
    if (collapse_lifted(c, w, rate)) {
        snprintf(d->reason, sizeof d->reason,
                 "%.0f tasks/s at %d workers, no more than at the larger size (%.0f): no collapse, "
                 "growth allowed again",
                 rate, w->workers, c->collapse_rate);
        return;
    }
    if (size_from_demands(c, w, rate, d))
        return;
    if (w->completed >= MIN_TASKS && w->workers > c->good_size)
        c->good_size = w->workers;
    if (follow_demands(c, w, rate, d) || ramp_to_goal(c, w, rate, d))
        return;
    if (w->completed >= 1)
        c->stalls = 0;
    if (w->completed < MIN_TASKS) {
        too_few(c, w, rate, d);
        return;
    }
    if (refine(c, w, rate, u, d))
        return;
    snprintf(d->reason, sizeof d->reason, "holding %d workers (%.1f tasks/s)", c->target, rate);
}

gla_decision gla_ctl_step(gla_ctl *c, const gla_window *w)
{
    int before = c->target;
    gla_decision d;
    memset(&d, 0, sizeof d);
    d.action = GLA_HOLD;
    decide(c, w, &d);
    d.target = c->target;
    c->fresh = d.target != before;
    return d;
}

double gla_ctl_policy(void *ctl, const gla_window *w, gla_decision *d)
{
    gla_ctl *c = ctl;
    *d = gla_ctl_step(c, w);
    return gla_ctl_window_s(c);
}

/* gla_ctl_policy is what a pool calls: it must stay a gla_policy_fn. */
_Static_assert(_Generic(&gla_ctl_policy, gla_policy_fn: 1, default: 0),
               "gla_ctl_policy has the signature of gla_policy_fn");

double gla_ctl_window_s(const gla_ctl *c)
{
    /* Ramping below RAMP_SLOW, a step waits only for tasks finishing at the size in force
     * (ramp_to_goal): the floor is lower, or a burst of short tasks is over before the
     * ramp's few steps are. */
    double floor = c->little_goal > c->target &&
                           c->target * ramp(c) <= RAMP_SLOW * cores_for_limits(c)
                       ? 0.02
                       : 0.05;
    double s = 0.1;
    double rate = c->rate_ewma;
    /* Just re-sized: the rate to expect at the new size (Little's law), not the old one's
     * (a pool grown from 2 to 300 workers would otherwise wait seconds to be judged). */
    if (c->wall_ewma > 0 && c->target / c->wall_ewma > rate)
        rate = c->target / c->wall_ewma;
    if (rate > 0)
        s = 30.0 / rate;
    if (c->wall_ewma > 0 && s < 2 * c->wall_ewma)
        s = 2 * c->wall_ewma;
    if (s < floor)
        s = floor;
    if (s > 2.0)
        s = 2.0;
    return s;
}
