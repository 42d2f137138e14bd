/* sim.c — see sim.h for the contract and the model. */
#include "sim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { T_DEAD = 0, T_GIL_WAIT, T_PY, T_NATIVE, T_IO };
#define EPILOGUE_MAX 20e-6 /* Python after the I/O: taking the result, setting the future */
#define HANDOFF_MAX 8      /* handoff_cost: at most this many other holders' worth */

typedef struct {
    int state;
    int epilogue;      /* the Python phase running or awaited: PH_MAIN, PH_NATIVE_RET,
                          PH_EPILOGUE */
    double rem;        /* Python work left while waiting for the GIL */
    double switches;   /* CPU spent on GIL hand-offs by this task (held, on its core) */
    double held_wall;  /* time this task held the GIL (the ledger's figure) */
    double runq;       /* time it needed a core and had none */
    double run_since, run_work; /* the CPU phase under way: its start and its work */
    double t_start, wait_start, gil_wait;
    double held, native, io, epi;
    double py_seg, nat_seg; /* Python and native work of each main segment */
    int segs_left;     /* main segments not yet run (segments: the GIL released each time) */
    long long changes_seen; /* the GIL's hand-offs when this thread last took it */
    double key;        /* finish: virtual CPU time (cpu heap) or time (I/O heap) */
    int pos;           /* position in its heap, -1 none */
    double phase;      /* GIL waiters: when its current timed wait began, mod the interval */
    int wnext, wprev, wbucket; /* GIL waiters: its phase bucket's list */
} thr;

enum { PH_MAIN = 0, PH_NATIVE_RET, PH_EPILOGUE };
#define NB 1024 /* GIL waiters' phase buckets over one switch interval */
#define NW (NB / 64)

typedef struct {
    int *a;
    int len;
} heap;

struct sim {
    sim_params p;
    thr *t;
    int cap, used;     /* slots allocated, slots ever used */
    int *free_slots, nfree;
    int live, target;
    heap cpu, io;
    int bhead[NB], btail[NB]; /* GIL waiters by phase (wb mod interval); bmask: non-empty */
    unsigned long long bmask[NW];
    unsigned long long rng; /* the waiters' deadline jitter (seeded: deterministic) */
    int qlen;          /* GIL waiters */
    int holder;        /* -1: GIL free */
    int pending;       /* the waiter a drop signalled, running at t_wake; -1 none */
    int last_holder;   /* CPython's last_holder: a switch is a take by another thread */
    long long changes; /* takes by another thread than the last holder, so far */
    double hold_start, last_switch, t_force, t_wake;
    double now, vtime;
    long long next_task, done;
    /* window sums */
    double w_done, w_wall, w_cpu, w_held, w_held_sq, w_gwait, w_io, w_runq;
    double w_iop; /* I/O as the ledger's partition books it: run-queue time is not I/O */
    double w_from, w_busy; /* the window's start; the time the GIL was held in it */
    double w_core;         /* the cores' busy time in it (core-seconds) */
};

/* ---- heaps keyed by thr.key ------------------------------------------------------ */

static void heap_swap(sim *s, heap *h, int i, int j)
{
    int a = h->a[i], b = h->a[j];
    h->a[i] = b;
    h->a[j] = a;
    s->t[b].pos = i;
    s->t[a].pos = j;
}

static void heap_up(sim *s, heap *h, int i)
{
    while (i > 0) {
        int p = (i - 1) / 2;
        if (s->t[h->a[p]].key <= s->t[h->a[i]].key)
            break;
        heap_swap(s, h, i, p);
        i = p;
    }
}

static void heap_down(sim *s, heap *h, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->len && s->t[h->a[l]].key < s->t[h->a[m]].key)
            m = l;
        if (r < h->len && s->t[h->a[r]].key < s->t[h->a[m]].key)
            m = r;
        if (m == i)
            return;
        heap_swap(s, h, i, m);
        i = m;
    }
}

static void heap_push(sim *s, heap *h, int id, double key)
{
    s->t[id].key = key;
    s->t[id].pos = h->len;
    h->a[h->len++] = id;
    heap_up(s, h, h->len - 1);
}

static void heap_remove(sim *s, heap *h, int id)
{
    int i = s->t[id].pos;
    s->t[id].pos = -1;
    h->len--;
    if (i == h->len)
        return;
    h->a[i] = h->a[h->len];
    s->t[h->a[i]].pos = i;
    heap_up(s, h, i);
    heap_down(s, h, s->t[h->a[i]].pos);
}

/* ---- demands ------------------------------------------------------------------------ */

static unsigned long long mix(unsigned long long x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static double draw(unsigned long long *state, double mean, sim_dist d)
{
    *state = mix(*state);
    double u = ((double)(*state >> 11) + 0.5) / 9007199254740992.0; /* (0, 1) */
    switch (d) {
    case SIM_UNIFORM: return 2 * mean * u;
    case SIM_EXP: return -mean * log(u);
    default: /* fixed, with +-10 % jitter: exact repeats lock threads into convoys */
        return mean * (0.9 + 0.2 * u);
    }
}

/* ---- the model ---------------------------------------------------------------------- */

static double core_rate(const sim *s)
{
    int running = s->cpu.len;
    if (running == 0)
        return 1;
    double burn = s->qlen * s->p.wake_cost / s->p.switch_interval;
    double cores = s->p.cores - burn;
    if (cores < 0.05 * s->p.cores)
        cores = 0.05 * s->p.cores;
    return running <= cores ? 1 : cores / running;
}

/* The cores busy now (in cores): the CPU phases running, and the waiters' wake-ups. */
static double cores_busy(const sim *s)
{
    double burn = s->qlen * s->p.wake_cost / s->p.switch_interval;
    double cores = s->p.cores - burn;
    if (cores < 0.05 * s->p.cores)
        cores = 0.05 * s->p.cores;
    double running = s->cpu.len;
    return (running < cores ? running : cores) + (s->p.cores - cores);
}

static void run_cpu(sim *s, int id, double work)
{
    s->t[id].run_since = s->now;
    s->t[id].run_work = work;
    heap_push(s, &s->cpu, id, s->vtime + work);
}

/* The CPU phase under way ends (its work done but `left`): book its run-queue wait. */
static void end_cpu(sim *s, int id, double left)
{
    thr *t = &s->t[id];
    double q = (s->now - t->run_since) - (t->run_work - left);
    if (q > 0)
        t->runq += q;
}

/* The GIL's holding that began at hold_start ends now: book its part in the window. */
static void hold_end(sim *s)
{
    double from = s->hold_start > s->w_from ? s->hold_start : s->w_from;
    if (s->now > from)
        s->w_busy += s->now - from;
}

/* ---- the GIL (CPython's take_gil/drop_gil on glibc's condition variable) -------------
 * A waiter sits in a timed wait of one interval, re-waiting at each timeout; a timeout
 * with no switch during its interval sets the drop request, so the holder is asked to
 * drop at the first waiter deadline >= last switch + interval. A drop signals the waiter
 * whose current wait began first (glibc wakes its oldest group), i.e. the one nearest its
 * next timeout: the order is the waiters' phase, not their arrival. The signalled waiter
 * runs wake_latency later and takes the GIL if it is still free; a thread that wants the
 * GIL while it is free takes it at once (barging), and the woken waiter then waits again.
 * A holder forced to drop waits for the switch before it asks again. */

static double phase_of(const sim *s, double t)
{
    double iv = s->p.switch_interval, ph = t - floor(t / iv) * iv;
    return ph < 0 ? 0 : ph < iv ? ph : 0;
}

static int bucket_of(const sim *s, double phase)
{
    int b = (int)(phase / s->p.switch_interval * NB);
    return b < 0 ? 0 : b >= NB ? NB - 1 : b;
}

/* Waiters in a bucket are in arrival order. A timed wait's deadlines come late by up to
 * wake_latency (the kernel's wake-up), so a waiter's phase is its wait's start plus that
 * much drawn at random: waiters that began together do not keep one phase (an exact tie,
 * broken always one way, decides the order of a whole cluster). */
static void wq_add(sim *s, int id, double wb)
{
    thr *t = &s->t[id];
    s->rng = mix(s->rng);
    wb += s->p.wake_latency * ((double)(s->rng >> 11) / 9007199254740992.0);
    t->phase = phase_of(s, wb);
    int b = bucket_of(s, t->phase);
    t->wbucket = b;
    t->wnext = -1;
    t->wprev = s->btail[b];
    if (t->wprev >= 0)
        s->t[t->wprev].wnext = id;
    else
        s->bhead[b] = id;
    s->btail[b] = id;
    s->bmask[b / 64] |= 1ull << (b % 64);
    s->qlen++;
    /* its first deadline is one interval away, after the last switch + interval */
    if (s->holder >= 0 && wb + s->p.switch_interval < s->t_force)
        s->t_force = wb + s->p.switch_interval;
}

static void wq_remove(sim *s, int id)
{
    thr *t = &s->t[id];
    int b = t->wbucket;
    if (t->wprev >= 0)
        s->t[t->wprev].wnext = t->wnext;
    else
        s->bhead[b] = t->wnext;
    if (t->wnext >= 0)
        s->t[t->wnext].wprev = t->wprev;
    else
        s->btail[b] = t->wprev;
    if (s->bhead[b] < 0)
        s->bmask[b / 64] &= ~(1ull << (b % 64));
    s->qlen--;
}

static int next_bucket(const sim *s, int from) /* first non-empty bucket >= from, or NB */
{
    for (int w = from / 64; w < NW; w++) {
        unsigned long long m = s->bmask[w];
        if (w == from / 64)
            m &= ~0ull << (from % 64);
        if (m)
            return w * 64 + __builtin_ctzll(m);
    }
    return NB;
}

/* The waiter whose next deadline after `ref` comes first, to the buckets' resolution
 * (interval / NB): the oldest of the first non-empty bucket from ref's on (strict: ref's
 * own bucket last, a wait begun at ref being a whole interval away). *delta: that
 * deadline - ref, in [0, interval]. -1 when nobody waits. */
static int wq_next(const sim *s, double ref, int strict, double *delta)
{
    double iv = s->p.switch_interval, r = phase_of(s, ref);
    int b0 = bucket_of(s, r);
    int b = next_bucket(s, strict ? b0 + 1 : b0);
    if (b >= NB)
        b = next_bucket(s, 0);
    if (b >= NB) {
        *delta = INFINITY;
        return -1;
    }
    int id = s->bhead[b];
    double d = s->t[id].phase - r;
    if (!strict && b == b0 && d < 0)
        d = 0; /* within the bucket's resolution */
    else if (d < 0 || (strict && d <= 0))
        d += iv;
    *delta = d;
    return id;
}

static void take(sim *s, int id)
{
    thr *t = &s->t[id];
    t->gil_wait += s->now - t->wait_start;
    double cost = s->p.switch_cost;
    t->state = T_PY;
    s->holder = id;
    s->hold_start = s->now;
    if (id != s->last_holder) {
        if (s->last_holder >= 0) {
            /* cold caches: the more other holders since this one's last turn, the more
             * of its working set they evicted (up to HANDOFF_MAX of them) */
            long long others = ++s->changes - t->changes_seen - 1;
            cost += s->p.handoff_cost * (double)(others < 1             ? 1
                                                 : others > HANDOFF_MAX ? HANDOFF_MAX
                                                                        : others);
        }
        s->last_holder = id;
        s->last_switch = s->now;
    }
    t->changes_seen = s->changes;
    t->switches += cost;
    double d;
    s->t_force = INFINITY;
    if (s->qlen > 0 && wq_next(s, s->last_switch, 0, &d) >= 0) {
        s->t_force = s->last_switch + s->p.switch_interval + d;
        if (s->t_force < s->now)
            s->t_force = s->now;
    }
    run_cpu(s, id, t->rem + cost);
}

/* The GIL was dropped: signal a waiter unless one is already on its way. */
static void gil_signal(sim *s)
{
    if (s->holder >= 0 || s->pending >= 0 || s->qlen == 0)
        return;
    double d;
    int id = wq_next(s, s->now, 1, &d);
    wq_remove(s, id);
    s->pending = id;
    s->t_wake = s->now + s->p.wake_latency;
}

static void want_gil(sim *s, int id, double work)
{
    thr *t = &s->t[id];
    t->state = T_GIL_WAIT;
    t->rem = work;
    t->wait_start = s->now;
    if (s->holder < 0)
        take(s, id); /* free: taken at once, whoever was signalled */
    else
        wq_add(s, id, s->now);
}

static void start_task(sim *s, int id)
{
    thr *t = &s->t[id];
    unsigned long long st = s->p.seed ^ mix((unsigned long long)s->next_task++);
    double h = draw(&st, s->p.h, s->p.cpu_dist);
    t->native = draw(&st, s->p.n, s->p.cpu_dist);
    t->io = draw(&st, s->p.w, s->p.io_dist);
    /* Python after the native call (back from it, on to the I/O) and after the I/O */
    double tiny = t->native > 0 ? h / 3 : h / 2;
    t->epi = tiny < EPILOGUE_MAX ? tiny : EPILOGUE_MAX;
    t->held = h;
    t->epilogue = PH_MAIN;
    t->gil_wait = 0;
    t->switches = 0;
    t->held_wall = 0;
    t->runq = 0;
    t->t_start = s->now;
    if (s->p.free_threaded) { /* no GIL: all of its CPU on the cores, then the I/O */
        t->native += h;
        t->held = t->epi = 0;
        t->state = T_NATIVE;
        run_cpu(s, id, t->native);
        return;
    }
    t->segs_left = t->native > 0 && s->p.segments > 1 ? s->p.segments : 1;
    t->py_seg = (h - (t->native > 0 ? 2 : 1) * t->epi) / t->segs_left;
    t->nat_seg = t->native / t->segs_left;
    want_gil(s, id, t->py_seg);
}

static void finish_task(sim *s, int id);

static void after_io(sim *s, int id)
{
    thr *t = &s->t[id];
    if (s->p.free_threaded) {
        finish_task(s, id);
        return;
    }
    t->epilogue = PH_EPILOGUE;
    want_gil(s, id, t->epi);
}

static void finish_task(sim *s, int id)
{
    thr *t = &s->t[id];
    double wall = s->now - t->t_start;
    s->done++;
    s->w_done += 1;
    s->w_wall += wall;
    double cpu = t->held + t->switches + t->native;
    s->w_cpu += cpu;
    s->w_held += t->held_wall;
    s->w_held_sq += t->held_wall * t->held_wall;
    s->w_gwait += t->gil_wait;
    s->w_io += wall - t->held_wall - t->native - t->gil_wait;
    s->w_runq += t->runq;
    double iop = wall - cpu - t->gil_wait - t->runq;
    s->w_iop += iop > 0 ? iop : 0;
    if (s->live > s->target) {
        t->state = T_DEAD;
        s->live--;
        s->free_slots[s->nfree++] = id;
        return;
    }
    start_task(s, id);
}

/* The thread `id` finished the CPU work it was running. */
static void cpu_done(sim *s, int id)
{
    thr *t = &s->t[id];
    if (t->state == T_PY) {
        s->holder = -1;
        hold_end(s);
        t->held_wall += s->now - s->hold_start;
        if (t->epilogue == PH_EPILOGUE) {
            finish_task(s, id); /* the next task's Python goes on with the GIL */
        } else if (t->epilogue == PH_MAIN && t->native > 0) {
            t->state = T_NATIVE;
            run_cpu(s, id, t->nat_seg);
        } else {
            t->state = T_IO;
            heap_push(s, &s->io, id, s->now + t->io);
        }
        gil_signal(s);
    } else if (s->p.free_threaded) { /* T_NATIVE, no GIL: on to the I/O */
        t->state = T_IO;
        heap_push(s, &s->io, id, s->now + t->io);
    } else if (--t->segs_left > 0) { /* T_NATIVE: back in Python for the next segment */
        want_gil(s, id, t->py_seg);
    } else { /* T_NATIVE: back in Python to start the I/O */
        t->epilogue = PH_NATIVE_RET;
        want_gil(s, id, t->epi);
    }
}

static int add_thread(sim *s)
{
    int id;
    if (s->nfree > 0) {
        id = s->free_slots[--s->nfree];
    } else {
        if (s->used == s->cap) {
            int cap = s->cap * 2;
            thr *t = realloc(s->t, (size_t)cap * sizeof *t);
            if (!t)
                return -1;
            s->t = t;
            int *arrays[4] = {s->free_slots, s->cpu.a, s->io.a, NULL};
            int *grown[4];
            for (int i = 0; i < 3; i++) {
                grown[i] = realloc(arrays[i], (size_t)cap * sizeof(int));
                if (!grown[i])
                    return -1;
                if (i == 0)
                    s->free_slots = grown[i];
                else if (i == 1)
                    s->cpu.a = grown[i];
                else
                    s->io.a = grown[i];
            }
            s->cap = cap;
        }
        id = s->used++;
    }
    memset(&s->t[id], 0, sizeof s->t[id]);
    s->t[id].pos = -1;
    s->live++;
    start_task(s, id);
    return 0;
}

void sim_defaults(sim_params *p, double h, double n, double w, double cores)
{
    memset(p, 0, sizeof *p);
    p->h = h;
    p->n = n;
    p->w = w;
    p->cores = cores;
    p->switch_interval = 0.005;
    p->switch_cost = 5e-6;
    p->wake_cost = 2e-6;
    p->wake_latency = 50e-6;
    p->seed = 1;
}

sim *sim_new(const sim_params *p, int workers)
{
    if (!p || !(p->h >= 0) || !(p->n >= 0) || !(p->w >= 0) || !(p->cores > 0) ||
        !(p->switch_interval > 0) || workers < 1)
        return NULL;
    sim *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->p = *p;
    s->cap = 64;
    s->t = calloc((size_t)s->cap, sizeof *s->t);
    s->free_slots = calloc((size_t)s->cap, sizeof(int));
    s->cpu.a = calloc((size_t)s->cap, sizeof(int));
    s->io.a = calloc((size_t)s->cap, sizeof(int));
    s->holder = s->pending = s->last_holder = -1;
    s->rng = p->seed ^ 0x5851F42D4C957F2Dull;
    s->t_force = INFINITY;
    for (int b = 0; b < NB; b++)
        s->bhead[b] = s->btail[b] = -1;
    if (!s->t || !s->free_slots || !s->cpu.a || !s->io.a) {
        sim_free(s);
        return NULL;
    }
    sim_set_workers(s, workers);
    return s;
}

void sim_set_workers(sim *s, int workers)
{
    s->target = workers;
    while (s->live < s->target)
        if (add_thread(s) != 0)
            break; /* out of memory: the pool stays smaller */
}

void sim_set_demands(sim *s, const sim_params *p)
{
    unsigned long long seed = s->p.seed;
    s->p = *p;
    s->p.seed = seed;
}

void sim_run(sim *s, double seconds, gla_window *out)
{
    double end = s->now + seconds;
    s->w_done = s->w_wall = s->w_cpu = s->w_held = s->w_gwait = s->w_io = s->w_runq = s->w_iop = 0;
    s->w_held_sq = 0;
    s->w_busy = s->w_core = 0;
    s->w_from = s->now;
    for (;;) {
        double r = core_rate(s);
        double t_cpu = s->cpu.len ? s->now + (s->t[s->cpu.a[0]].key - s->vtime) / r : INFINITY;
        double t_io = s->io.len ? s->t[s->io.a[0]].key : INFINITY;
        double t_force = s->holder >= 0 && s->qlen > 0 ? s->t_force : INFINITY;
        double t_wake = s->pending >= 0 ? s->t_wake : INFINITY;
        double next = t_cpu;
        int ev = 0;
        if (t_io < next) {
            next = t_io;
            ev = 1;
        }
        if (t_force < next) {
            next = t_force;
            ev = 2;
        }
        if (t_wake < next) {
            next = t_wake;
            ev = 3;
        }
        if (end <= next) {
            s->w_core += (end - s->now) * cores_busy(s);
            s->vtime += (end - s->now) * r;
            s->now = end;
            if (s->holder >= 0)
                hold_end(s);
            break;
        }
        if (next < s->now)
            next = s->now;
        s->w_core += (next - s->now) * cores_busy(s);
        s->vtime += (next - s->now) * r;
        s->now = next;
        if (ev == 0) {
            int id = s->cpu.a[0];
            s->vtime = s->t[id].key;
            heap_remove(s, &s->cpu, id);
            end_cpu(s, id, 0);
            cpu_done(s, id);
        } else if (ev == 1) {
            int id = s->io.a[0];
            heap_remove(s, &s->io, id);
            after_io(s, id);
        } else if (ev == 2) {
            /* forced switch: the holder drops, a waiter is signalled, and the holder waits
             * again (after the switch: it cannot barge back) with the work it has left */
            int id = s->holder;
            double left = s->t[id].key - s->vtime;
            heap_remove(s, &s->cpu, id);
            end_cpu(s, id, left > 0 ? left : 0);
            s->holder = -1;
            hold_end(s);
            s->t[id].held_wall += s->now - s->hold_start;
            gil_signal(s);
            s->t[id].state = T_GIL_WAIT;
            s->t[id].rem = left > 0 ? left : 0;
            s->t[id].wait_start = s->now;
            wq_add(s, id, s->now);
        } else {
            /* the signalled waiter runs: the GIL if still free, else it waits again */
            int id = s->pending;
            s->pending = -1;
            if (s->holder < 0)
                take(s, id);
            else
                wq_add(s, id, s->now);
        }
    }
    memset(out, 0, sizeof *out);
    out->window_s = seconds;
    out->completed = s->w_done;
    if (s->w_done > 0) {
        out->task_wall_s = s->w_wall / s->w_done;
        out->task_cpu_s = s->w_cpu / s->w_done;
        out->task_gil_held_s = s->w_held / s->w_done;
        if (s->w_done >= 2) {
            double m = out->task_gil_held_s;
            double var = (s->w_held_sq / s->w_done - m * m) * s->w_done / (s->w_done - 1);
            out->task_gil_held_sd = var > 0 ? sqrt(var) : -1;
        }
        out->task_gil_wait_s = s->w_gwait / s->w_done;
        out->task_io_s = s->w_iop / s->w_done;
    } else {
        out->task_wall_s = out->task_cpu_s = out->task_gil_held_s = out->task_gil_wait_s = -1;
        out->task_io_s = -1;
    }
    out->beta = s->w_gwait + s->w_io > 0 ? s->w_gwait / (s->w_gwait + s->w_io) : -1;
    out->runq_share = s->w_wall > 0 ? s->w_runq / s->w_wall : -1;
    out->gil_busy = seconds > 0 ? s->w_busy / seconds : -1;
    out->cpu_busy = seconds > 0 ? s->w_core / (seconds * s->p.cores) : -1;
    out->workers = s->live;
    out->busy = s->live;
    out->queue_length = 100000;
    out->usable_cores = s->p.cores;
    if (s->p.free_threaded) {
        out->free_threaded = 1;
        out->task_gil_held_s = out->task_gil_wait_s = out->gil_busy = -1;
        out->task_gil_held_sd = -1;
        out->beta = s->w_runq + s->w_iop > 0 ? s->w_runq / (s->w_runq + s->w_iop) : -1;
    }
}

double sim_now(const sim *s)
{
    return s->now;
}

long long sim_completed(const sim *s)
{
    return s->done;
}

void sim_free(sim *s)
{
    if (!s)
        return;
    free(s->t);
    free(s->free_slots);
    free(s->cpu.a);
    free(s->io.a);
    free(s);
}

double sim_fixed_rate(const sim_params *p, int workers, double warm, double seconds)
{
    sim *s = sim_new(p, workers);
    if (!s)
        return 0;
    gla_window w;
    sim_run(s, warm, &w);
    /* A large pool takes several of its cycles (workers / rate) to leave its start-up
     * pattern (all threads began with their CPU phase at once): warm up and measure over
     * at least 5 cycles each, or the figure swings with that pattern. */
    double rate = w.completed / warm;
    double cycle = rate > 0 ? workers / rate : 10;
    if (5 * cycle > warm) {
        double more = 5 * cycle - warm;
        sim_run(s, more > 200 ? 200 : more, &w);
    }
    if (5 * cycle > seconds)
        seconds = 5 * cycle > 400 ? 400 : 5 * cycle;
    sim_run(s, seconds, &w);
    sim_free(s);
    return w.completed / seconds;
}
