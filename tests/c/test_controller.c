/* test_controller.c — the controller in a closed loop against the pool simulator (sim.h:
 * a discrete-event model of N threads, one GIL with a switch interval, C cores and task
 * demand distributions; its waiters' wake-ups make the saturation cliff). Every figure the
 * controller sees is what the ledger would measure in the simulated pool; the optimum is
 * the best fixed pool size of a sweep in the same simulator (same tasks: common random
 * numbers). */
#include "controller.h"
#include "procstat.h"
#include "sim.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* One xorshift64 step: a uniform in [0, 1). */
static double uniform_next(unsigned long long *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (double)(*s >> 11) / 9007199254740992.0;
}

static unsigned long long g_seed = 0x9E3779B97F4A7C15ull;
static double urand(void)
{
    return uniform_next(&g_seed);
}

/* clang-format off */
#define WARM_S 2.0       /* fixed pools: start-up not counted */
#define MEASURE_S 8.0    /* the controller's tail: throughput over this */
#define GRID_S 8.0       /* fixed pools in the search for the best size */
#define EVAL_TASKS 20000 /* fixed pools, evaluated: long enough for this many tasks (+-1 %) */
#define EVAL_CYCLES 100  /* ...and for this many of the pool's cycles (workers / rate) */
#define EVAL_MAX_S 3000.0
#define EVAL_TOP 3       /* search candidates evaluated: the optimum is the best of them */
#define RUN_S 20.0       /* the controller's run from start */
#define WORST_STEADY 0.95 /* no workload below this share of its optimum (0.88 until the
                             steps were judged on the GIL-busy share: worst then 0.916) */
/* clang-format on */

/* Throughput of a fixed pool of n on the evaluation tasks (another seed than the search's),
 * measured long: what holding n workers is worth. Memoized per workload. Long means at
 * least EVAL_TASKS tasks and EVAL_CYCLES of the pool's cycles: the tasks in flight at a
 * window's edges are up to a pool's worth, and a large pool's finishing pattern can be
 * periodic (fixed demands, 1,971 threads on the GIL: 197 tasks/s, and 390 in one 10 s
 * window every 80 s). Run as the search runs it (stretched to 5 of its cycles) that
 * pool read 235.9 tasks/s, over 1,500 s 221.5, the same as 12 workers; the search took
 * it for the optimum and the 12 the controller held for a 4 % loss. */
/* Per thread: the random workloads run on every CPU this process may use. */
static _Thread_local sim_params g_eval;
static _Thread_local double g_eval_s;   /* long enough for EVAL_TASKS tasks */
static _Thread_local double g_eval_top; /* the search's best rate: sets the length of large
                                           pools' runs */
static _Thread_local double g_rate[2049];

static void eval_reset(const sim_params *p)
{
    g_eval = *p;
    g_eval.seed = ~p->seed;
    for (int i = 0; i <= 2048; i++)
        g_rate[i] = -1;
}

static double eval_rate(int n)
{
    if (n < 1 || n > 2048)
        return 0;
    if (g_rate[n] < 0) {
        double len = g_eval_s;
        if (g_eval_top > 0 && EVAL_CYCLES * n / g_eval_top > len)
            len = EVAL_CYCLES * n / g_eval_top;
        if (len > EVAL_MAX_S)
            len = EVAL_MAX_S;
        g_rate[n] = sim_fixed_rate(&g_eval, n, WARM_S, len);
    }
    return g_rate[n];
}

/* The best fixed pool size in 1..max_workers: a grid of sqrt(2) steps, then every size
 * between the best point's neighbours (at most 12 of them, evenly spread); the EVAL_TOP
 * sizes that measured best are measured again, long (eval_rate), and the best of those
 * is the optimum. */
static int best_size(const sim_params *p, int max_workers, double *best)
{
    int grid[64] = {0}, ng = 0;
    for (double x = 1; x < max_workers * 1.0001; x *= 1.41421356) {
        int n = (int)(x + 0.5);
        if (ng == 0 || n != grid[ng - 1])
            grid[ng++] = n;
    }
    if (grid[ng - 1] != max_workers)
        grid[ng++] = max_workers;
    int cand[80] = {0}, nc = 0;
    double crate[80] = {0};
    int bi = 0;
    for (int i = 0; i < ng; i++) {
        cand[nc] = grid[i];
        crate[nc] = sim_fixed_rate(p, grid[i], WARM_S, GRID_S);
        if (crate[nc] > crate[bi])
            bi = nc;
        nc++;
    }
    double top = crate[bi];
    int lo = bi > 0 ? grid[bi - 1] + 1 : grid[bi];
    int hi = bi + 1 < ng ? grid[bi + 1] - 1 : grid[bi];
    int step = (hi - lo) / 12 + 1;
    for (int n = lo; n <= hi && nc < 80; n += step) {
        if (n == grid[bi])
            continue;
        cand[nc] = n;
        crate[nc] = sim_fixed_rate(p, n, WARM_S, GRID_S);
        if (crate[nc] > top)
            top = crate[nc];
        nc++;
    }
    /* The best of ~30 noisy figures is biased upward (and a large pool's short run can
     * catch a burst of its periodic pattern): the leading sizes are measured again,
     * longer, on other tasks. */
    eval_reset(p);
    g_eval_top = top;
    g_eval_s = top > 0 ? EVAL_TASKS / top : 2 * MEASURE_S;
    if (g_eval_s < 2 * MEASURE_S)
        g_eval_s = 2 * MEASURE_S;
    if (g_eval_s > 400)
        g_eval_s = 400;
    int arg = cand[bi];
    *best = -1;
    for (int k = 0; k < EVAL_TOP; k++) {
        int j = -1;
        for (int i = 0; i < nc; i++)
            if (crate[i] >= 0 && (j < 0 || crate[i] > crate[j]))
                j = i;
        if (j < 0)
            break;
        crate[j] = -1;
        double x = eval_rate(cand[j]);
        if (x > *best) {
            *best = x;
            arg = cand[j];
        }
    }
    return arg;
}

typedef struct {
    double steady_ratio;   /* over the last MEASURE_S: the fixed-pool throughput of the sizes
                              held, time-weighted, / optimum */
    double realized;       /* tasks the controlled pool finished in that time / optimum's */
    double converge_s;     /* time from the run's start from which the sizes held are worth,
                              averaged over 1 s, at least 95 % of the optimum */
    int direction_changes; /* in the tail */
    int final_target;
} run_result;

/* The controller drives the simulated pool for `seconds` (windows as it asks). Window
 * throughputs of a few dozen tasks carry +-20 % noise, so the controller is judged by what
 * its sizes are worth (eval_rate) as well as by what the pool really finished. */
static run_result run(gla_ctl *c, sim *s, int max_workers, double seconds, double best)
{
    run_result r = {0, 0, -1, 0, 0};
    double t0 = sim_now(s), t = 0, since_ok = -1, worth = 0, worth_t = 0;
    long long tail_from = -1;
    double tail_t = 0;
    int last_dir = 0;
    enum { HIST = 8192 };
    static _Thread_local double hist_t[HIST], hist_x[HIST]; /* per thread: workload_thread */
    int nh = 0;
    while (t < seconds - 1e-9) {
        double win = gla_ctl_window_s(c);
        if (t + win > seconds)
            win = seconds - t;
        int n = c->target;
        gla_window w;
        sim_run(s, win, &w);
        t = sim_now(s) - t0;
        double x = eval_rate(n);
        if (nh < HIST) {
            hist_t[nh] = win;
            hist_x[nh] = x;
            nh++;
        }
        double sum = 0, span = 0;
        for (int j = nh - 1; j >= 0 && span < 1.0; j--) {
            double part = span + hist_t[j] > 1.0 ? 1.0 - span : hist_t[j];
            sum += hist_x[j] * part;
            span += part;
        }
        if (span > 0 && sum / span >= 0.95 * best) {
            if (since_ok < 0)
                since_ok = t - span > 0 ? t - span : 0;
        } else {
            since_ok = -1;
        }
        if (tail_from >= 0) {
            worth += x * win;
            worth_t += win;
        }
        gla_decision d = gla_ctl_step(c, &w);
        CHECK(d.target >= 1 && d.target <= max_workers, "target %d out of bounds", d.target);
        sim_set_workers(s, d.target);
        if (tail_from < 0 && t >= seconds - MEASURE_S - 1e-9) {
            tail_from = sim_completed(s);
            tail_t = t;
        }
        if (tail_from >= 0) {
            int dir = d.target > n ? 1 : d.target < n ? -1 : 0;
            if (dir && last_dir && dir != last_dir)
                r.direction_changes++;
            if (dir)
                last_dir = dir;
        }
    }
    r.steady_ratio = worth_t > 0 ? worth / worth_t / best : 0;
    r.realized = t > tail_t ? (double)(sim_completed(s) - tail_from) / (t - tail_t) / best : 0;
    r.converge_s = since_ok;
    r.final_target = c->target;
    return r;
}

static void test_bounds_and_bad_input(void)
{
    gla_ctl c;
    CHECK(gla_ctl_init(&c, 0, 4, 1) != 0, "min < 1");
    CHECK(gla_ctl_init(&c, 5, 4, 1) != 0, "max < min");
    CHECK(gla_ctl_init(&c, 1, 4, 0) != 0, "no cores");
    CHECK(gla_ctl_init(&c, 2, 3, 1) == 0, "valid");
    sim_params io;
    sim_defaults(&io, 0.0001, 0, 0.2, 1);
    sim *s = sim_new(&io, c.target);
    CHECK(s != NULL, "sim_new");
    for (int i = 0; s && i < 50; i++) {
        gla_window w;
        sim_run(s, gla_ctl_window_s(&c), &w);
        gla_decision d = gla_ctl_step(&c, &w);
        CHECK(d.target >= 2 && d.target <= 3, "target %d outside [2,3]", d.target);
        sim_set_workers(s, d.target);
    }
    sim_free(s);
}

/* A window of 40 tasks of `held` s of Python CPU (all of their CPU), `wall` s on the worker,
 * I/O `io` (< 0: unknown), on `cores` cores, with a deep queue; nothing else known. */
static void task_window(gla_window *w, double held, double wall, double io, double cores)
{
    memset(w, 0, sizeof *w);
    w->window_s = 0.5;
    w->completed = 40;
    w->task_cpu_s = w->task_gil_held_s = held;
    w->task_gil_wait_s = 0;
    w->task_wall_s = wall;
    w->task_io_s = io;
    w->beta = w->runq_share = w->gil_busy = w->cpu_busy = -1;
    w->queue_length = 5000;
    w->usable_cores = cores;
}

static void test_directions(void)
{
    /* More I/O per task -> more workers; GIL-bound (no I/O) -> few. */
    gla_window w;
    task_window(&w, 0.01, 0.06, -1, 1);
    double mixed = gla_ctl_little_size(&w, 1);
    w.task_wall_s = 0.21;
    double more_io = gla_ctl_little_size(&w, 1);
    w.task_wall_s = 0.01;
    double cpu_only = gla_ctl_little_size(&w, 1);
    CHECK(more_io > mixed && mixed > cpu_only, "sizes %f %f %f", cpu_only, mixed, more_io);
    /* Run-queue time outside the GIL waits is not I/O: where the partition's I/O is known
     * the size follows it, not wall - CPU - GIL wait; a partition figure above that
     * remainder is not believed. */
    w.task_wall_s = 0.06;
    w.task_io_s = 0.025; /* half the 50 ms remainder was waiting for a core */
    double part = gla_ctl_little_size(&w, 1);
    CHECK(part < mixed * 0.8 && part > cpu_only, "partition I/O: %f (remainder: %f)", part, mixed);
    w.task_io_s = 0.5;
    double above = gla_ctl_little_size(&w, 1);
    CHECK(above == mixed, "I/O above the remainder: %f, not %f", above, mixed);
    w.task_io_s = -1;
    CHECK(cpu_only < 2, "a GIL-bound task needs about one worker: %f", cpu_only);
    /* Native CPU that releases the GIL uses the cores: more cores, more workers. */
    w.task_wall_s = 0.01;
    w.task_gil_held_s = 0.001;
    double one = gla_ctl_little_size(&w, 1);
    w.usable_cores = 4;
    double four = gla_ctl_little_size(&w, 4);
    CHECK(four > 3 * one, "native work scales with cores: %f vs %f", one, four);
    /* Without a GIL (free-threaded) all CPU uses the cores: the same Python task needs
     * the same size as with a GIL on one core, and half the bottleneck's demand per
     * task on two, so clearly more workers (not twice: the queueing slack is not
     * linear); its GIL-held figure (unknown there) is not read. */
    task_window(&w, 0.01, 0.06, 0.05, 1);
    double gil1 = gla_ctl_little_size(&w, 1);
    w.usable_cores = 2;
    double gil2 = gla_ctl_little_size(&w, 2);
    w.free_threaded = 1;
    w.task_gil_held_s = w.task_gil_wait_s = w.gil_busy = -1;
    double ft2 = gla_ctl_little_size(&w, 2);
    w.usable_cores = 1;
    double ft1 = gla_ctl_little_size(&w, 1);
    CHECK(fabs(ft1 - gil1) <= 1, "free-threaded, one core: %f (with a GIL: %f)", ft1, gil1);
    CHECK(fabs(gil2 - gil1) <= 1 && ft2 > 1.5 * gil2 && ft2 < 2.3 * gil2,
          "free-threaded, two cores: %f (with a GIL: %f)", ft2, gil2);

    /* Growth that does not pay is vetoed. */
    gla_ctl c;
    gla_ctl_init(&c, 1, 2048, 1);
    sim_params gil;
    sim_defaults(&gil, 0.005, 0, 0.0, 1);
    gil.cpu_dist = SIM_UNIFORM;
    sim *s = sim_new(&gil, c.target);
    int vetoes = 0;
    for (int i = 0; s && i < 200; i++) {
        gla_window mw;
        sim_run(s, gla_ctl_window_s(&c), &mw);
        gla_decision d = gla_ctl_step(&c, &mw);
        vetoes += d.action == GLA_VETO;
        sim_set_workers(s, d.target);
    }
    sim_free(s);
    CHECK(vetoes > 0, "no veto on a GIL-bound workload");
    CHECK(c.target <= 3, "GIL-bound workload kept %d workers", c.target);
}

static const char *dist_name(sim_dist d)
{
    return d == SIM_EXP ? "exp" : d == SIM_UNIFORM ? "uniform" : "fixed";
}

static void describe(char *buf, size_t len, const sim_params *p)
{
    snprintf(buf, len, "h=%.3gms n=%.3gms w=%.3gms C=%.0f cpu %s io %s", p->h * 1e3, p->n * 1e3,
             p->w * 1e3, p->cores, dist_name(p->cpu_dist), dist_name(p->io_dist));
}

/* One random workload: drawn in order (urand's stream), then searched and run on any
 * thread; the results are read in order, so the output does not depend on the threads. */
typedef struct {
    sim_params p;
    char desc[160];
    int arg, ok;
    run_result r;
} workload;

typedef struct {
    workload *w;
    int count;
    _Atomic int next;
} workload_queue;

static void *workload_thread(void *arg)
{
    workload_queue *q = arg;
    int max_workers = 2048;
    for (int i; (i = atomic_fetch_add(&q->next, 1)) < q->count;) {
        workload *w = &q->w[i];
        double best;
        w->arg = best_size(&w->p, max_workers, &best);
        gla_ctl c;
        gla_ctl_init(&c, 1, max_workers, w->p.cores);
        sim *s = sim_new(&w->p, c.target);
        if (!s)
            continue;
        w->r = run(&c, s, max_workers, RUN_S, best);
        sim_free(s);
        w->ok = 1;
    }
    return NULL;
}

/* Threads for the workloads: the usable cores (affinity, cgroup quota), 1 to 16. */
static int workload_threads(void)
{
    int affinity;
    double quota, usable;
    int n = gla_read_usable_cores(&affinity, &quota, &usable) == 0 ? (int)ceil(usable) : 1;
    return n < 1 ? 1 : n > 16 ? 16 : n;
}

static void test_random_workloads(int count)
{
    double worst = 2, worst_conv = 0, worst_real = 2;
    int below97 = 0;
    char worst_k[256] = "", worst_conv_k[256] = "";
    int slow = 0;
    workload_queue q = {calloc((size_t)count, sizeof(workload)), count, 0};
    CHECK(q.w != NULL, "out of memory");
    if (!q.w)
        return;
    for (int i = 0; i < count; i++) {
        sim_params *p = &q.w[i].p;
        double cpu = (0.05 + urand() * 19.95) * 1e-3;
        double python_share = urand();
        double h = cpu * python_share;
        if (h < 20e-6)
            h = 20e-6; /* the executor's own per-task GIL time */
        sim_defaults(p, h, cpu * (1 - python_share), urand() * 0.2, 1 + (int)(urand() * 4));
        p->cpu_dist = (sim_dist)(urand() * 3);
        p->io_dist = (sim_dist)(urand() * 3);
        p->seed = 1000 + (unsigned long long)i;
        describe(q.w[i].desc, sizeof q.w[i].desc, p);
    }
    pthread_t th[16];
    int nth = workload_threads(), started = 0;
    for (int k = 1; k < nth; k++)
        started += pthread_create(&th[started], NULL, workload_thread, &q) == 0;
    workload_thread(&q);
    for (int k = 0; k < started; k++)
        pthread_join(th[k], NULL);
    for (int i = 0; i < count; i++) {
        const char *desc = q.w[i].desc;
        int arg = q.w[i].arg;
        run_result r = q.w[i].r;
        CHECK(q.w[i].ok, "workload %d (%s): sim_new failed", i, desc);
        if (!q.w[i].ok)
            break;
        if (r.steady_ratio < worst) {
            worst = r.steady_ratio;
            snprintf(worst_k, sizeof worst_k, "%s; best N=%d, held %d", desc, arg, r.final_target);
        }
        if (r.converge_s < 0 || r.converge_s > 3.0)
            slow++; /* (counted only at a new worst before 2026-12-01: 5 printed of 9) */
        if (r.converge_s < 0 || r.converge_s > worst_conv) {
            worst_conv = r.converge_s < 0 ? 99 : r.converge_s;
            snprintf(worst_conv_k, sizeof worst_conv_k, "%s", desc);
        }
        if (r.steady_ratio < 0.97) {
            below97++;
            printf("  below 97 %%: workload %d (%s; best N=%d, held %d): %.3f of optimum\n", i,
                   desc, arg, r.final_target, r.steady_ratio);
        }
        CHECK(r.steady_ratio >= WORST_STEADY,
              "workload %d (%s; best N=%d, held %d): %.3f of optimum", i, desc, arg, r.final_target,
              r.steady_ratio);
        CHECK(r.realized >= 0.88, "workload %d (%s): finished %.3f of the optimum's tasks", i, desc,
              r.realized);
        if (r.realized < worst_real)
            worst_real = r.realized;
        if (r.converge_s < 0 || r.converge_s > 3.0)
            printf("  slower than 3 s: workload %d (%s): %.2f s\n", i, desc, r.converge_s);
        CHECK(r.direction_changes <= 12, "workload %d (%s): %d direction changes in steady state",
              i, desc, r.direction_changes);
        if (g_failures > 20)
            break;
    }
    free(q.w);
    printf(
        "random workloads: %d; worst steady state %.3f of optimum (%s); %d below 0.97; slowest "
        "convergence %.2f s (%s); %d slower than 3 s; fewest tasks finished %.3f of the optimum's\n",
        count, worst, worst_k, below97, worst_conv, worst_conv_k, slow, worst_real);
    /* The bar is 97 % for every workload and 3 s. The first half is met and held
     * here; of the second, what it meets is held, so that a regression fails. With the
     * simulator's CPython GIL (sim.h, 2026-12-01: timed waits, signal to the waiter
     * nearest its timeout, barging, a hand-off after native code) 8 below 97 % (worst
     * 0.916) and 8 slower than 3 s: pools held below a slow rise toward the GIL's or the
     * cores' limit (workload 48: best 77 workers, held 39, 0.941). With steps judged on
     * the workers' GIL-busy share where the GIL is the bottleneck (kept while the GIL
     * idles at the base unless the share fell): 2 below (worst 0.968, workload 324, 3
     * cores: best 91, held 57; 901, 4 cores: 0.969) and 6 slower than 3 s (slowest
     * 10.5 s), all on 2-4 cores; with the base always the mean of two windows and the
     * GIL counted idle below 97 % (not 95 %): none below 97 % (worst 0.970), 5 slower
     * than 3 s (slowest 13.6 s: exponential demands, probes below 95 % of the optimum
     * late in the run); with phase changes judged against the demands' own spread
     * (3 sd of one window's size) and the share's rule only where the cores' demand is
     * at most 80 % of the GIL's: none below 97 % (worst 0.970), 2 slower than 3 s (776:
     * 9.3 s, a step up judged on a convoy's window; 325: 3.1 s); with a fall of the share
     * inside the windows' own spread no fall: 1 (325: 3.13 s); with the ramp's small
     * steps not waiting for a full window: none (slowest 2.70 s). Both bars are met.
     * With the earlier FIFO GIL the figures were 9 / 0.917 / 9, but its misses were
     * peaks CPython does not have (benchmarks/sim_vs_real.py). */
    CHECK(below97 == 0, "%d of %d workloads below 97 %% of optimum", below97, count);
    CHECK(slow == 0, "%d of %d workloads slower than 3 s to converge", slow, count);
}

static void test_phase_change(void)
{
    /* Mixed (10 ms CPU + 50 ms I/O) then micro (0.1 ms + 1 ms) then I/O-heavy on 2 cores. */
    double phases[3][4] = {{0.010, 0, 0.050, 1}, {0.0001, 0, 0.001, 1}, {0.0005, 0, 0.150, 2}};
    gla_ctl c;
    gla_ctl_init(&c, 1, 2048, 1);
    sim *s = NULL;
    for (int k = 0; k < 3; k++) {
        sim_params p;
        sim_defaults(&p, phases[k][0], phases[k][1], phases[k][2], phases[k][3]);
        p.cpu_dist = SIM_UNIFORM;
        p.io_dist = SIM_UNIFORM;
        double best;
        int arg = best_size(&p, 2048, &best);
        if (!s)
            s = sim_new(&p, c.target);
        else
            sim_set_demands(s, &p);
        CHECK(s != NULL, "sim_new");
        if (!s)
            return;
        run_result r = run(&c, s, 2048, RUN_S, best);
        printf(
            "phase %d: steady %.3f of optimum (best N=%d, held %d; finished %.3f), within 5 %% after "
            "%.2f s\n",
            k, r.steady_ratio, arg, r.final_target, r.realized, r.converge_s);
        CHECK(r.steady_ratio >= 0.97, "phase %d: %.3f", k, r.steady_ratio);
        CHECK(r.converge_s >= 0 && r.converge_s <= 3.0, "phase %d: converged after %.2f s", k,
              r.converge_s);
    }
    sim_free(s);
}

/* A controller on one core and the windows of an I/O task (0.1 ms CPU, 0.2 s wall: Little's
 * law asks for ~2000 workers) with a deep queue; the caller sets workers and completions. */
static void io_task_setup(gla_ctl *c, gla_window *w)
{
    gla_ctl_init(c, 1, 2048, 1);
    task_window(w, 0.0001, 0.2, -1, 1);
    w->beta = 0.1;
}

/* Thousands of threads on one core can starve CPython completely (seen: an I/O task at
 * 1024-2048 threads finished nothing in 3 s). Nothing finishing at a size larger than one
 * that finished tasks sends the pool back there, for good (until a phase change would
 * ask for less), even though the demands keep asking for more. */
static void test_collapse_case(double trickle)
{
    gla_ctl c;
    gla_window w;
    io_task_setup(&c, &w);
    int collapsed = 0, max_after = 0;
    for (int i = 0; i < 120; i++) {
        int n = c.target;
        w.workers = w.busy = n;
        w.completed = n * w.window_s / w.task_wall_s * (n > 600 ? trickle : 1); /* dead above 600 */
        gla_decision d = gla_ctl_step(&c, &w);
        if (d.action == GLA_VETO && n > 600 && d.target <= 600)
            collapsed = 1;
        if (collapsed && d.target > max_after)
            max_after = d.target;
    }
    CHECK(collapsed, "never went back from the dead size (target %d)", c.target);
    CHECK(max_after <= 600, "grew to %d after the collapse", max_after);
    CHECK(c.target >= 100, "stayed at %d, far below the last size that worked", c.target);
}

/* One slow window after a step up (the machine's noise: a slow spell of the CPU) is not a
 * collapse: the step is looked at again, and growth goes on when the next window is fine.
 * Two slow windows in a row are one. */
static void test_dip_is_not_collapse(int slow_windows)
{
    gla_ctl c;
    gla_window w;
    io_task_setup(&c, &w);
    int last = 0, dips = 0, went_back = 0, peak = 0;
    for (int i = 0; i < 60; i++) {
        int n = c.target;
        w.workers = w.busy = n;
        dips = n != last ? 0 : dips + 1;
        last = n;
        /* the first window(s) at each size above 256 (steps of x1.5 there) run at 40 % */
        double slow = n > 256 && dips < slow_windows ? 0.4 : 1;
        w.completed = n * w.window_s / w.task_wall_s * slow;
        gla_decision d = gla_ctl_step(&c, &w);
        if (d.action == GLA_VETO && d.target < n)
            went_back = 1;
        if (d.target > peak)
            peak = d.target;
    }
    if (slow_windows == 1) {
        CHECK(!went_back, "one slow window after a step read as a collapse");
        CHECK(peak > 512, "growth stopped at %d after one slow window", peak);
    } else {
        CHECK(went_back, "two slow windows after a step up not read as a collapse (peak %d)", peak);
    }
}

/* The machine slowing for a spell (every size at 40 % for 8 windows, from the first window
 * of a step up past 256 workers) reads as a collapse: the pool goes back. But throughput
 * does not come back at the smaller size, so the limit is lifted, and growth goes on past
 * the size that "collapsed" once the spell is over. */
static void test_slow_spell_is_not_collapse(void)
{
    gla_ctl c;
    gla_window w;
    io_task_setup(&c, &w);
    int spell = -1, went_back = 0, lifted = 0, peak_before = 0, peak_after = 0;
    for (int i = 0; i < 80; i++) {
        int n = c.target;
        w.workers = w.busy = n;
        if (spell < 0 && n > 256)
            spell = i;
        double slow = spell >= 0 && i < spell + 8 ? 0.4 : 1;
        w.completed = n * w.window_s / w.task_wall_s * slow;
        gla_decision d = gla_ctl_step(&c, &w);
        if (d.action == GLA_VETO && d.target < n && spell >= 0 && !went_back) {
            went_back = 1;
            peak_before = n;
        }
        if (went_back && strstr(d.reason, "no collapse"))
            lifted = 1;
        if (went_back && d.target > peak_after)
            peak_after = d.target;
    }
    CHECK(went_back, "the slow spell did not send the pool back (target %d)", c.target);
    CHECK(lifted, "the limit was not lifted when the smaller size was as slow");
    CHECK(peak_after > peak_before, "no growth past %d after the spell (peak %d)", peak_before,
          peak_after);
}

/* The ramp toward a large demand-based size (0.4 ms CPU + 190 ms I/O on one core: ~70
 * workers) from 4 workers whose windows finish 6 tasks each: small sizes on the way need
 * no full window (no collapse is near), so it is there within 3 windows. */
static void test_ramp_on_few_tasks(void)
{
    gla_ctl c;
    gla_ctl_init(&c, 1, 2048, 1);
    gla_window w;
    task_window(&w, 0.0004, 0.1904, 0.190, 1);
    w.completed = 1;
    w.workers = w.busy = 1;
    gla_ctl_step(&c, &w); /* sized from one task: ramping, 4 workers */
    int start = c.target;
    for (int i = 0; i < 3; i++) {
        w.workers = w.busy = c.target;
        w.window_s = 0.3;
        w.completed = c.target * w.window_s / w.task_wall_s; /* 6 at 4 workers */
        gla_ctl_step(&c, &w);
    }
    CHECK(start == 4 && c.target >= 64, "ramp from %d reached %d after 3 windows of few tasks",
          start, c.target);
}

/* A burst of short tasks (5.5 ms, nearly all of it I/O, one core: ~70 workers) ramps
 * on windows shorter than the usual floor of 50 ms — a step needs only tasks finishing at
 * the size in force — and is back on full windows once there. */
static void test_ramp_windows(void)
{
    gla_ctl c;
    gla_ctl_init(&c, 1, 2048, 1);
    gla_window w;
    task_window(&w, 0.0001, 0.0055, 0.0054, 1);
    w.workers = w.busy = 2;
    w.window_s = 0.04;
    w.completed = 10;
    gla_ctl_step(&c, &w);
    double longest = 0;
    int steps = 0;
    while (c.little_goal > c.target && steps < 10) {
        double s = gla_ctl_window_s(&c);
        longest = s > longest ? s : longest;
        w.workers = w.busy = c.target;
        w.window_s = s;
        w.completed = c.target * s / w.task_wall_s;
        gla_ctl_step(&c, &w);
        steps++;
    }
    double after = gla_ctl_window_s(&c);
    CHECK(steps >= 2 && c.target >= 50 && longest < 0.045 && after >= 0.05,
          "ramp to %d in %d steps, longest window %.3f s, then %.3f s", c.target, steps, longest,
          after);
}

/* Windows whose demands scatter as a window of ~30 exponential tasks' do (the I/O per task
 * log-normal, sd 0.18 about 100 ms; 5 ms of Python, 2 cores, a deep queue): the size holds,
 * no re-size on the scatter; then the I/O quadruples: re-sized within a few windows.
 * Returns the re-sizes in the scattered part; *caught: windows until the real change was
 * followed (-1: never). */
static int noisy_demands_case(int *caught)
{
    gla_ctl c;
    gla_ctl_init(&c, 1, 2048, 2);
    gla_window w;
    unsigned long long x = 88172645463325252ull; /* its own stream: urand's feeds the workloads */
    int resizes = 0;
    *caught = -1;
    for (int i = 0; i < 400; i++) {
        double z = 0;
        for (int k = 0; k < 12; k++) /* ~normal(0, 1) */
            z += uniform_next(&x);
        z -= 6;
        double io = 0.100 * exp(0.18 * z) * (i >= 300 ? 4 : 1);
        task_window(&w, 0.005, 0.005 + io, io, 2);
        int n = c.target;
        w.workers = w.busy = n;
        w.completed = n * w.window_s / w.task_wall_s;
        gla_decision d = gla_ctl_step(&c, &w);
        int resized = strstr(d.reason, "task demands changed") != NULL;
        if (resized && i >= 20 && i < 300)
            resizes++;
        if (resized && i >= 300 && *caught < 0)
            *caught = i - 300;
    }
    return resizes;
}

static void test_noisy_demands(void)
{
    int caught;
    int resizes = noisy_demands_case(&caught);
    CHECK(resizes == 0, "%d re-sizes on demands' scatter alone", resizes);
    CHECK(caught >= 0 && caught <= 4, "a x4 change in I/O followed after %d windows", caught);
}

/* Drives c for 200 windows from w, `shape` filling in each one's figures for the size in
 * force (x: that size over the demand-based size L; arg: the case's parameter), and
 * returns the final target / L. */
static double drive_windows(gla_ctl *c, gla_window *w, double L,
                            void (*shape)(gla_window *, double x, double arg), double arg)
{
    for (int i = 0; i < 200; i++) {
        int n = c->target;
        w->workers = w->busy = n;
        shape(w, n / L, arg);
        gla_decision d = gla_ctl_step(c, w);
        CHECK(d.target >= 1 && d.target <= 2048, "target %d", d.target);
    }
    return c->target / L;
}

static void gil_fill_shape(gla_window *w, double x, double share_known)
{
    w->completed = w->window_s * 80 * (x > 1 ? pow(x, -0.135) : x);
    double u = x < 1 ? 0.80 * x : 0.80 + 0.36 * (x - 1);
    w->gil_busy = share_known ? (u > 0.98 ? 0.98 : u) : -1;
}

/* GIL-bound windows (10 ms Python, 100 ms I/O, 2 cores, a deep queue) whose GIL-busy share
 * rises past the demand-based size L (0.80 at L, saturated at 1.5 L) while the count of
 * tasks falls 3 % per x1.25 step (inside its noise for windows of a few dozen tasks): with
 * the share measured the pool grows into the GIL's idle time; without it (gil_busy < 0) the
 * counts keep it near L. Returns the final target / L. */
static double gil_fill_case(int share_known)
{
    gla_ctl c;
    gla_ctl_init(&c, 1, 2048, 2);
    gla_window w;
    task_window(&w, 0.010, 0.115, 0.100, 2);
    w.task_gil_wait_s = 0.005;
    w.beta = 0.05;
    w.runq_share = 0;
    return drive_windows(&c, &w, gla_ctl_little_size(&w, 2), gil_fill_shape, share_known);
}

static void test_gil_fill(void)
{
    double known = gil_fill_case(1), unknown = gil_fill_case(0);
    CHECK(known >= 1.4 && known <= 2.0, "GIL-busy share known: held %.2f x the demand-based size",
          known);
    CHECK(unknown <= 1.3, "share unknown: held %.2f x the demand-based size", unknown);
}

static void ft_fill_shape(gla_window *w, double x, double at_size)
{
    double fill = x < 1 ? at_size * x : at_size + (1 - at_size) * (x - 1) / 0.6;
    w->completed = w->window_s * (fill < 1 ? fill : 1) / w->task_cpu_s;
}

static void native_fill_shape(gla_window *w, double x, double at_size)
{
    ft_fill_shape(w, x, at_size);
    w->cpu_busy = w->completed * w->task_cpu_s / w->window_s;
}

/* One core, a deep queue, the core `at_size` busy at the demand-based size L and
 * saturated from 1.6 L on, while the count of tasks rises only with the core's busy share
 * (inside its noise for windows of a few dozen tasks): without a GIL (`native` 0: 10 ms
 * of CPU, 50 ms of I/O, the busy share from the finished tasks' CPU), or with one
 * (`native` 1: 1 ms of Python and 7 ms of native code that releases the GIL, 10 ms of
 * I/O, the process's CPU measured: cpu_busy; `native` 2: two cores, 2.9 ms of Python in
 * 7 ms of CPU, the GIL loaded nearly as much as the cores). A core left idle draws the
 * pool past L, a busy one keeps it near L. Returns the final target / L. */
static double cores_fill_case(double at_size, int native)
{
    gla_ctl c;
    double cores = native == 2 ? 2 : 1;
    gla_ctl_init(&c, 1, 2048, cores);
    gla_window w;
    if (native) {
        task_window(&w, native == 2 ? 0.0029 : 0.001, 0.018, 0.010, cores);
        w.task_cpu_s = native == 2 ? 0.007 : 0.008;
    } else {
        task_window(&w, 0.010, 0.060, 0.050, 1);
        w.free_threaded = 1;
        w.task_gil_held_s = w.task_gil_wait_s = -1;
    }
    w.beta = 0.1;
    w.runq_share = 0.05;
    return drive_windows(&c, &w, gla_ctl_little_size(&w, cores),
                         native ? native_fill_shape : ft_fill_shape, at_size);
}

/* Where the cores are the bottleneck with a GIL (one core, native code), an idle core
 * draws the pool past the demand-based size and a busy one keeps it there; on two cores
 * loaded as much as the GIL, idle cores do not (the GIL keeps them from filling). */
static void test_native_fill(void)
{
    double idle = cores_fill_case(0.93, 1), busy = cores_fill_case(0.99, 1);
    CHECK(idle >= 1.4 && idle <= 4.0, "core 93 %% busy at L: held %.2f x L", idle);
    CHECK(busy <= 1.3, "core busy at L: held %.2f x L", busy);
    double alike = cores_fill_case(0.93, 2);
    CHECK(alike <= 1.3, "two cores loaded as the GIL, 93 %% busy at L: held %.2f x L", alike);
}

/* Tasks that release the GIL 50 times each (16 ms of Python, 5 ms of native code, 20 ms
 * of I/O, two cores, tasks alike), each hand-off costing its taker cold caches in
 * proportion to the threads that held the GIL since its own last turn: every waiter added
 * makes each task cost the GIL more, and the best pool (3-5 workers) is below the
 * demand-based size computed at any larger one. Judged on the GIL's work rate the pool
 * gets within 5 % of the best fixed size in the run's last 8 s (held by the GIL-busy
 * share alone, 10-13 workers: 72-90 %). */
static void test_demands_growing_with_the_pool(void)
{
    const double handoff[] = {40e-6, 20e-6, 10e-6};
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
    const int cases = 1; /* the sanitizers check the code, the plain build the figures */
#else
    const int cases = 3;
#endif
    for (int k = 0; k < cases; k++) {
        sim_params p;
        sim_defaults(&p, 0.016, 0.005, 0.020, 2);
        p.segments = 50;
        p.handoff_cost = handoff[k];
        double best;
        int arg = best_size(&p, 64, &best);
        gla_ctl c;
        gla_ctl_init(&c, 1, 64, 2);
        sim *s = sim_new(&p, c.target);
        CHECK(s != NULL, "sim_new");
        if (!s)
            return;
        run_result r = run(&c, s, 64, RUN_S, best);
        sim_free(s);
        printf("hand-off %.0f us a holder: best %d (%.1f tasks/s), held %d: %.3f of it\n",
               handoff[k] * 1e6, arg, best, r.final_target, r.steady_ratio);
        CHECK(r.steady_ratio >= 0.95, "hand-off %.0f us: %.3f of the best fixed size (%d; held %d)",
              handoff[k] * 1e6, r.steady_ratio, arg, r.final_target);
    }
}

/* The simulator without a GIL (free_threaded): the pool reaches 97 % of the best fixed
 * size on one and two cores for 10 ms + 50 ms and 0.1 ms + 1 ms tasks. */
static void test_free_threaded(void)
{
    double idle = cores_fill_case(0.93, 0), busy = cores_fill_case(0.995, 0);
    CHECK(idle >= 1.4 && idle <= 2.0, "cores 93 %% busy at L: held %.2f x L", idle);
    CHECK(busy <= 1.3, "cores busy at L: held %.2f x L", busy);
    const double demands[2][2] = {{0.010, 0.050}, {0.0001, 0.001}};
    for (int cores = 1; cores <= 2; cores++)
        for (int k = 0; k < 2; k++) {
            sim_params p;
            sim_defaults(&p, demands[k][0], 0, demands[k][1], cores);
            p.free_threaded = 1;
            double best;
            int at = best_size(&p, 2048, &best);
            gla_ctl c;
            gla_ctl_init(&c, 1, 2048, cores);
            sim *s = sim_new(&p, c.target);
            CHECK(s != NULL, "sim_new");
            if (!s)
                return;
            run_result r = run(&c, s, 2048, RUN_S, best);
            sim_free(s);
            CHECK(r.steady_ratio >= 0.97,
                  "free-threaded, %d core(s), %.1f ms + %.0f ms: %.3f "
                  "of the best fixed pool (%d workers; held %d)",
                  cores, demands[k][0] * 1e3, demands[k][1] * 1e3, r.steady_ratio, at,
                  r.final_target);
        }
}

/* Tasks that wait on something the threads share (a native library's lock, a server at
 * its capacity: 300 tasks/s whatever the pool): 0.2 ms of Python, then a wait that grows
 * with the pool (n / 300 s for n workers, 5 ms at least). Little's law reads that wait
 * as I/O and asks for more workers at every size; the step up shows no gain and a longer
 * wait, so the pool goes back and stays near the knee (2 workers). A wait that does not
 * grow (real I/O, the same capacity reached at 60 workers) is no contention. */
static int contention_peak(int contended, int *final_target, int *said)
{
    gla_ctl c;
    gla_window w;
    gla_ctl_init(&c, 1, 2048, 1);
    task_window(&w, 0.0002, 0.005, -1, 1);
    int peak = 0;
    *said = 0;
    for (int i = 0; i < 80; i++) {
        int n = c.target;
        double wall = contended ? (n / 300.0 > 0.0052 ? n / 300.0 : 0.0052) : 0.2;
        double rate = n / wall < 300 ? n / wall : 300;
        w.workers = w.busy = n;
        w.task_wall_s = wall;
        w.window_s = 0.5;
        w.completed = rate * w.window_s;
        gla_decision d = gla_ctl_step(&c, &w);
        if (strstr(d.reason, "contention"))
            *said = 1;
        if (d.target > peak)
            peak = d.target;
    }
    *final_target = c.target;
    return peak;
}

static void test_contention(void)
{
    int final, said;
    int peak = contention_peak(1, &final, &said);
    CHECK(said, "contention never named (peak %d, final %d)", peak, final);
    CHECK(peak <= 16, "grew to %d on a shared resource that saturates at 2 workers", peak);
    CHECK(final <= 4, "held %d workers on a shared resource that saturates at 2", final);
    peak = contention_peak(0, &final, &said);
    CHECK(!said, "a fixed wait read as contention");
    CHECK(final >= 55, "a fixed 200 ms wait held at %d workers (60 needed)", final);
}

static void test_collapse(void)
{
    test_contention();
    test_dip_is_not_collapse(1);
    test_dip_is_not_collapse(2);
    test_slow_spell_is_not_collapse();
    test_collapse_case(0); /* nothing finishes */
    test_collapse_case(0.03); /* a trickle: 3 % of the rate Little's law expects */
}

int main(void)
{
    test_collapse();
    test_gil_fill();
    test_free_threaded();
    test_native_fill();
    test_demands_growing_with_the_pool();
    test_noisy_demands();
    test_ramp_on_few_tasks();
    test_ramp_windows();
    test_bounds_and_bad_input();
    test_directions();
#if defined(__SANITIZE_THREAD__)
    test_random_workloads(5); /* TSan: the workload threads, on a few workloads */
#elif defined(__SANITIZE_ADDRESS__)
    test_random_workloads(40);
#else
    test_random_workloads(1000);
#endif
    test_phase_change();
    if (g_failures) {
        fprintf(stderr, "test_controller: %d failure(s)\n", g_failures);
        return 1;
    }
    printf("test_controller: all passed\n");
    return 0;
}
