/* pool.c — see pool.h for the contract.
 *
 * Counts (all under p->mu):
 *   live      workers registered (between their enter and their exit)
 *   starting  threads being created or inside enter
 *   retiring  live workers told to leave that have not left yet
 *   retire_pending  leave requests no worker has taken yet (busy workers take them
 *             when they finish a task)
 *   effective = live + starting - retiring - retire_pending: what the pool is heading to.
 * A worker is on the idle stack only while it waits in its own condition variable; the
 * one who takes it off (wake_next_locked for queued tasks, a retire, shutdown) sets woken
 * and signals it, so no wake-up is lost. Tasks always go through the queue; wake-ups for
 * them are serialized (see wake_next_locked). Without a policy the pool grows as ThreadPoolExecutor does:
 * each finished task leaves a credit, a submit spends one if there is any, and starts a
 * worker (below the target) only if there is none — growth only while submits outpace
 * completions. submit signals after unlocking (the woken worker does not
 * then block on the mutex at once); that is safe because worker structs are never freed
 * while the pool lives: a worker that leaves puts its struct on the spare list, and a
 * late signal to a reused struct is a spurious wake-up the wait loop absorbs. (In a forked
 * child, gla_pool_reset_after_fork frees the structs of the parent's workers, threads
 * that do not exist there; the forking thread's own struct is kept.)
 */
#include "pool.h"

#include "gilhook.h"
#include "ledger.h"
#include "procstat.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

typedef struct {
    uint64_t completed, cpu_ns, wall_ns, gil_ns, gil_tail_ns, lock_ns, idle_ns, held_ns;
    uint64_t held_sq;     /* sum of each task's GIL-held time squared, in us^2 (modulo 2^64:
                             differences are exact) */
    uint64_t busy_ns;     /* time the workers held the GIL, tasks in flight included */
    uint64_t proc_cpu_ns; /* the process's CPU time, set by the monitor (0: unknown) */
} totals;

typedef struct worker {
    struct worker *all_prev, *all_next;
    struct worker *idle_up, *idle_down; /* towards the top / the bottom of the stack */
    gla_pool *pool;
    pthread_cond_t cond;
    int woken;              /* under mu */
    int wake_for_work;      /* under mu: woken because tasks wait (counted in wakes_in_flight) */
    int retire;             /* under mu */
    int on_idle;            /* under mu */
    int entered;            /* under mu: counted out of entering */
    int registered;         /* under mu: on the all list, counted in live */
    int pass_wake;          /* the worker's own: woken for queued tasks, the wake not yet
                               passed on (counted in wakes_in_flight) */
    unsigned index;
    pid_t tid;              /* set before registering */
    gla_thread *rec;        /* its ledger record and the GIL held on it before it joined */
    uint64_t held0;         /* (set before registering) */
    /* written by the worker only, read by the monitor */
    _Atomic uint64_t completed, cpu_ns, wall_ns, gil_ns, gil_tail_ns, lock_ns, idle_ns, held_ns;
    _Atomic uint64_t held_sq;
} worker;

typedef struct {
    worker *w;          /* under mu; the worker clears it when it leaves */
    pid_t tid;          /* monitor-only from here */
    int valid;
    uint64_t at_ns, idle_ns, runq_ns, cpu_ns;
} runq_slot;

struct gla_pool {
    gla_pool_config cfg;
    pthread_mutex_t mu;
    pthread_cond_t done_cond;    /* live/starting went down */
    pthread_cond_t monitor_cond; /* monitor: stop, kick */

    gla_pool_task *head, *tail;
    long queue_len;

    worker *all;
    worker *spare; /* structs of workers that left, for reuse (freed by destroy) */
    worker *idle_top, *idle_bottom;
    int n_idle;
    int wakes_in_flight; /* idle workers woken for queued tasks, not yet running one */

    int live, starting, retiring, retire_pending, target;
    int owed;     /* starts decided, thread not created yet (counted in starting) */
    int entering; /* threads created, enter not yet through (counted in starting) */
    _Atomic int serving; /* written under mu: workers through enter, not yet left */
    int take_waiters;    /* callers in gla_pool_await_taken (a pop wakes them) */
    long idle_credit; /* without a policy: completions not yet matched by a submit */
    int shutdown, broken;
    unsigned next_index;
    int inject_failures;

    int monitor_started, monitor_stop, monitor_parked, monitor_join_claimed;
    int drained_claimed;
    pthread_t monitor;

    uint64_t submitted, started, retired, start_failures, taken;
    int last_start_errno;
    totals gone; /* figures of workers that have left */

    /* results of the monitor (under mu) */
    uint64_t decisions[GLA_NACTIONS];
    char last_reason[GLA_REASON_LEN];
    gla_action last_action;
    gla_window last_window;
    uint64_t windows;
    double usable_cores;
    uint64_t created_ns;
    gla_pool_history_entry history[GLA_POOL_HISTORY]; /* ring: entry windows % HISTORY next */

    runq_slot rq[GLA_POOL_RUNQ_SAMPLE];
};

static _Thread_local worker *tls_worker; /* the calling thread's, while it is a worker */

static int start_owed(gla_pool *p);

/* ---- small helpers ---------------------------------------------------------------- */

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static struct timespec abs_mono(uint64_t ns)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ns / 1000000000ull);
    ts.tv_nsec = (long)(ns % 1000000000ull);
    return ts;
}

static void cond_init_mono(pthread_cond_t *c)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(c, &a);
    pthread_condattr_destroy(&a);
}

static inline void add_owned(_Atomic uint64_t *c, uint64_t d)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + d,
                          memory_order_relaxed);
}

static inline uint64_t ld(const _Atomic uint64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

static int effective_locked(const gla_pool *p)
{
    return p->live + p->starting - p->retiring - p->retire_pending;
}

/* Owed starts not made after all (nothing left to run, a start failed, the pool broke). */
static void forget_owed_locked(gla_pool *p)
{
    if (p->owed == 0)
        return;
    p->starting -= p->owed;
    p->owed = 0;
    pthread_cond_broadcast(&p->done_cond);
}

/* w is through enter (or gave up): 1 the first time, when it leaves `entering`. */
static int mark_entered_locked(gla_pool *p, worker *w)
{
    if (w->entered)
        return 0;
    w->entered = 1;
    p->entering--;
    atomic_fetch_add_explicit(&p->serving, 1, memory_order_relaxed);
    pthread_cond_broadcast(&p->done_cond); /* gla_pool_await_serving */
    return 1;
}

static int clamp_target(const gla_pool *p, int t)
{
    if (t < p->cfg.min_workers)
        t = p->cfg.min_workers;
    if (t > p->cfg.max_workers)
        t = p->cfg.max_workers;
    return t;
}

/* ---- queue and idle stack (mu held) ----------------------------------------------- */

static void queue_append(gla_pool *p, gla_pool_task *t)
{
    t->next = NULL;
    if (p->tail)
        p->tail->next = t;
    else
        p->head = t;
    p->tail = t;
    p->queue_len++;
}

static void queue_push_front(gla_pool *p, gla_pool_task *t)
{
    t->next = p->head;
    p->head = t;
    if (!p->tail)
        p->tail = t;
    p->queue_len++;
}

static gla_pool_task *queue_pop(gla_pool *p)
{
    gla_pool_task *t = p->head;
    if (t) {
        p->head = t->next;
        if (!p->head)
            p->tail = NULL;
        t->next = NULL;
        p->queue_len--;
    }
    return t;
}

static int queue_remove(gla_pool *p, gla_pool_task *t)
{
    gla_pool_task *prev = NULL;
    for (gla_pool_task *c = p->head; c; prev = c, c = c->next) {
        if (c != t)
            continue;
        if (prev)
            prev->next = c->next;
        else
            p->head = c->next;
        if (p->tail == c)
            p->tail = prev;
        c->next = NULL;
        p->queue_len--;
        return 1;
    }
    return 0;
}

static gla_pool_task *queue_detach(gla_pool *p)
{
    gla_pool_task *list = p->head;
    p->head = p->tail = NULL;
    p->queue_len = 0;
    return list;
}

static void idle_push(gla_pool *p, worker *w)
{
    w->idle_up = NULL;
    w->idle_down = p->idle_top;
    if (p->idle_top)
        p->idle_top->idle_up = w;
    else
        p->idle_bottom = w;
    p->idle_top = w;
    w->on_idle = 1;
    p->n_idle++;
}

static void idle_remove(gla_pool *p, worker *w)
{
    if (!w->on_idle)
        return;
    if (w->idle_up)
        w->idle_up->idle_down = w->idle_down;
    else
        p->idle_top = w->idle_down;
    if (w->idle_down)
        w->idle_down->idle_up = w->idle_up;
    else
        p->idle_bottom = w->idle_up;
    w->idle_up = w->idle_down = NULL;
    w->on_idle = 0;
    p->n_idle--;
}

/* Takes an idle worker off the stack and wakes it (to leave: retire or shutdown). */
static void wake_worker(gla_pool *p, worker *w)
{
    idle_remove(p, w);
    w->woken = 1;
    pthread_cond_signal(&w->cond);
}

static void wake_all_idle(gla_pool *p)
{
    while (p->idle_top)
        wake_worker(p, p->idle_top);
}

/* Wake-ups for queued tasks go one at a time, as in CPython's SimpleQueue: an idle
 * worker (the most recently idled) is woken only when tasks wait and no other woken
 * worker is still on its way to the GIL; it wakes the next one once it holds the GIL.
 * Waking one worker per task instead makes every queued task one more thread fighting
 * for the GIL, while workers that already hold it find the queue empty. Returns the
 * worker to signal (the caller signals, possibly after unlocking: structs are never
 * freed while the pool lives), or NULL. */
static worker *wake_next_locked(gla_pool *p)
{
    if (p->queue_len == 0 || !p->idle_top || p->wakes_in_flight > 0)
        return NULL;
    worker *w = p->idle_top;
    idle_remove(p, w);
    w->woken = 1;
    w->wake_for_work = 1;
    p->wakes_in_flight++;
    return w;
}

/* Applies a target: retires idle workers (longest idle first) and asks busy ones to
 * leave, or cancels pending leaves and returns how many workers to start for the tasks
 * that wait. */
static int apply_target_locked(gla_pool *p, int target)
{
    p->target = clamp_target(p, target);
    if (p->shutdown)
        return 0;
    int eff = effective_locked(p);
    if (eff > p->target) {
        int k = eff - p->target;
        while (k > 0 && p->idle_bottom) {
            worker *w = p->idle_bottom;
            w->retire = 1;
            p->retiring++;
            wake_worker(p, w);
            k--;
        }
        p->retire_pending += k;
        return 0;
    }
    int k = p->target - eff;
    int c = k < p->retire_pending ? k : p->retire_pending;
    p->retire_pending -= c;
    k -= c;
    long want = p->queue_len < (long)k ? p->queue_len : (long)k;
    p->starting += (int)want;
    p->owed += (int)want;
    return (int)want;
}

/* ---- workers ------------------------------------------------------------------------ */

/* A task edge: the cheap clocks, read at every task start and end. */
typedef struct {
    uint64_t mono, gil, gil_tail, lock, held;
} edge;

static void read_edge(gla_thread *rec, edge *e)
{
    e->mono = gla_now_ns();
    e->held = gla_hook_self_gil_held_ns();
    if (rec) {
        e->gil = gla_ledger_wait(rec, GLA_GIL_WAIT);
        e->gil_tail = gla_ledger_wait(rec, GLA_GIL_TAIL);
        e->lock = gla_ledger_wait(rec, GLA_LOCK_WAIT);
    } else {
        e->gil = e->gil_tail = e->lock = 0;
    }
}

static inline uint64_t sub0(uint64_t a, uint64_t b)
{
    return a > b ? a - b : 0;
}

static void account_task(worker *w, const edge *a, const edge *b)
{
    add_owned(&w->completed, 1);
    add_owned(&w->wall_ns, sub0(b->mono, a->mono));
    add_owned(&w->gil_ns, sub0(b->gil, a->gil));
    add_owned(&w->gil_tail_ns, sub0(b->gil_tail, a->gil_tail));
    add_owned(&w->lock_ns, sub0(b->lock, a->lock));
    uint64_t held = sub0(b->held, a->held), held_us = held / 1000;
    add_owned(&w->held_ns, held);
    if (held_us > UINT32_MAX)
        held_us = UINT32_MAX; /* over an hour held by one task: its square still fits */
    add_owned(&w->held_sq, held_us * held_us);
}

/* Thread CPU of the tasks, exact in sum: the thread CPU clock (a system call) is read
 * when a run of tasks starts and ends (around every idle wait), at every task edge at
 * least CPU_READ_NS after the last read, and at least every CPU_READ_EDGES edges; each
 * read adds the CPU since the previous one. Short back-to-back tasks so share reads. */
#define CPU_READ_NS 50000u
#define CPU_READ_EDGES 16
typedef struct {
    uint64_t cpu, mono;
    int edges;
} cpu_clock;

static void cpu_start(cpu_clock *c, uint64_t mono)
{
    c->cpu = thread_cpu_ns();
    c->mono = mono;
    c->edges = 0;
}

static void cpu_flush(worker *w, cpu_clock *c, uint64_t mono)
{
    uint64_t now = thread_cpu_ns();
    add_owned(&w->cpu_ns, sub0(now, c->cpu));
    c->cpu = now;
    c->mono = mono;
    c->edges = 0;
}

static void cpu_edge(worker *w, cpu_clock *c, uint64_t mono)
{
    if (mono - c->mono >= CPU_READ_NS || ++c->edges >= CPU_READ_EDGES)
        cpu_flush(w, c, mono);
}

/* The time w held the GIL since it joined, up to now (its holding under way included). */
static uint64_t worker_gil_busy(const worker *w, uint64_t now)
{
    return w->rec ? sub0(gla_hook_gil_held_ns(w->rec, now), w->held0) : 0;
}

static void add_worker_totals(totals *t, const worker *w, uint64_t now)
{
    t->busy_ns += worker_gil_busy(w, now);
    t->completed += ld(&w->completed);
    t->cpu_ns += ld(&w->cpu_ns);
    t->wall_ns += ld(&w->wall_ns);
    t->gil_ns += ld(&w->gil_ns);
    t->gil_tail_ns += ld(&w->gil_tail_ns);
    t->lock_ns += ld(&w->lock_ns);
    t->idle_ns += ld(&w->idle_ns);
    t->held_ns += ld(&w->held_ns);
    t->held_sq += ld(&w->held_sq);
}

static void set_os_name(const gla_pool *p, const char *suffix, unsigned index)
{
    /* Linux allows 15 characters: cut the pool's name, keep the suffix. */
    char tail[16], name[16];
    if (suffix)
        snprintf(tail, sizeof tail, "%s", suffix);
    else
        snprintf(tail, sizeof tail, "_%u", index);
    size_t keep = 15 - strlen(tail);
    size_t len = strnlen(p->cfg.name, keep);
    memcpy(name, p->cfg.name, len);
    memcpy(name + len, tail, strlen(tail) + 1);
    pthread_setname_np(pthread_self(), name);
}

/* Unregisters w (mu held): its last touch of the pool's worker bookkeeping. */
static void unregister_locked(gla_pool *p, worker *w)
{
    idle_remove(p, w);
    if (w->all_prev)
        w->all_prev->all_next = w->all_next;
    else
        p->all = w->all_next;
    if (w->all_next)
        w->all_next->all_prev = w->all_prev;
    for (int i = 0; i < GLA_POOL_RUNQ_SAMPLE; i++)
        if (p->rq[i].w == w)
            p->rq[i].w = NULL;
    add_worker_totals(&p->gone, w, gla_now_ns());
    if (w->retire)
        p->retiring--;
    atomic_fetch_sub_explicit(&p->serving, 1, memory_order_relaxed);
    p->live--;
    p->retired++;
    w->registered = 0;
    w->all_prev = NULL;
    w->all_next = p->spare;
    p->spare = w;
    pthread_cond_broadcast(&p->done_cond);
}

/* A worker thread's own state (on its stack) while it serves. */
typedef struct {
    worker *w;
    gla_pool *p;
    gla_pool_hooks h; /* copies: after unregistering, the pool may be freed under our feet */
    void *ctx;
    void *wdata;      /* the hooks' per-worker slot */
    gla_thread *rec;  /* the thread's ledger record */
    int holding;      /* holds what enter took (a binding's interpreter lock) */
    edge e;           /* the clocks at the last task edge */
    cpu_clock cc;
} worker_run;

/* enter failed (mu held): w never served; its struct goes back to the spare list. The
 * owed starts would fail as this one did (the interpreter going away). */
static void enter_failed_locked(gla_pool *p, worker *w)
{
    mark_entered_locked(p, w);
    atomic_fetch_sub_explicit(&p->serving, 1, memory_order_relaxed);
    forget_owed_locked(p);
    w->all_next = p->spare;
    p->spare = w;
    pthread_cond_broadcast(&p->done_cond);
}

/* w is through enter (mu held): counted live, on the all list, its GIL-held time counted
 * from now. */
static void register_locked(gla_pool *p, worker *w, gla_thread *rec)
{
    p->live++;
    w->registered = 1;
    w->rec = rec;
    w->held0 = gla_hook_gil_held_ns(rec, gla_now_ns());
    w->all_prev = NULL;
    w->all_next = p->all;
    if (p->all)
        p->all->all_prev = w;
    p->all = w;
}

/* 1 when w is to leave (mu held): told to retire, or it takes a pending leave request. */
static inline int must_leave_locked(gla_pool *p, worker *w)
{
    if (w->retire)
        return 1;
    if (p->retire_pending > 0 && !p->shutdown) {
        p->retire_pending--;
        p->retiring++;
        w->retire = 1;
        return 1;
    }
    return 0;
}

/* w was woken for queued tasks and holds the GIL now, or leaves (mu held): its wake is
 * spent, and the next idle worker may come if tasks still wait. Returns that worker, for
 * the caller to signal (wake_next_locked). */
static inline worker *pass_wake_locked(gla_pool *p, worker *w)
{
    p->wakes_in_flight--;
    w->pass_wake = 0;
    return wake_next_locked(p);
}

static inline void signal_worker(worker *w)
{
    if (w)
        pthread_cond_signal(&w->cond);
}

/* Releases what enter took (hooks->pause), its CPU booked first. mu not held. */
static inline void worker_pause(worker_run *r)
{
    cpu_flush(r->w, &r->cc, gla_now_ns());
    if (r->h.pause)
        r->h.pause(r->ctx, r->wdata);
    r->holding = 0;
}

/* Takes back what pause released (hooks->resume), starting a run of tasks' clocks. mu
 * not held. < 0: the process is going away. */
static inline int worker_resume(worker_run *r)
{
    read_edge(r->rec, &r->e);
    cpu_start(&r->cc, r->e.mono);
    if (r->h.resume && r->h.resume(r->ctx, r->wdata) < 0)
        return -1;
    r->holding = 1;
    return 0;
}

/* No task, nothing held (mu held): waits on w's own condition until someone takes it off
 * the idle stack (a wake for queued tasks, a retire, shutdown), or, past the idle
 * timeout above min_workers, retires itself. The wait is booked as GLA_IDLE. */
static void idle_wait_locked(gla_pool *p, worker *w, gla_thread *rec)
{
    idle_push(p, w);
    w->woken = 0;
    uint64_t t0 = gla_now_ns();
    if (rec)
        gla_ledger_wait_begin(rec, GLA_IDLE, t0);
    uint64_t idle_deadline = p->cfg.idle_timeout_s > 0
                                 ? t0 + (uint64_t)(p->cfg.idle_timeout_s * 1e9)
                                 : 0;
    while (!w->woken) {
        if (!idle_deadline) {
            pthread_cond_wait(&w->cond, &p->mu);
            continue;
        }
        struct timespec ts = abs_mono(idle_deadline);
        int wr = pthread_cond_timedwait(&w->cond, &p->mu, &ts);
        if (wr != ETIMEDOUT || w->woken)
            continue;
        if (effective_locked(p) > p->cfg.min_workers && !p->shutdown) {
            idle_remove(p, w);
            w->retire = 1;
            p->retiring++;
            w->woken = 1;
        } else {
            idle_deadline = 0; /* at the floor: wait without a timeout */
        }
    }
    uint64_t t1 = gla_now_ns();
    if (rec)
        gla_ledger_wait_end(rec, t1);
    add_owned(&w->idle_ns, t1 - t0);
    w->pass_wake = w->wake_for_work;
    w->wake_for_work = 0;
}

/* Takes back what pause released unless still held; when that fails t goes back to the
 * front of the queue and -1 is returned with mu held (the worker leaves). */
static inline int resume_or_requeue(worker_run *r, gla_pool_task *t)
{
    if (r->holding || worker_resume(r) == 0)
        return 0;
    pthread_mutex_lock(&r->p->mu);
    queue_push_front(r->p, t);
    return -1;
}

/* Runs t, taken off the queue (mu not held): takes back what pause released, passes a
 * wake on once holding it, runs the task and books its figures. Returns with mu held: 0,
 * or -1 when resume failed (t is back at the front of the queue: the worker leaves). */
static inline int run_task(worker_run *r, gla_pool_task *t)
{
    worker *w = r->w;
    gla_pool *p = r->p;
    if (resume_or_requeue(r, t) < 0)
        return -1;
    if (w->pass_wake) {
        /* We hold the GIL now: the next idle worker may come if tasks wait. Before the
         * task, always: a task can block for as long as it likes (on a task queued
         * behind it, say), and the queue must not wait for it while workers idle. Never
         * sleep on the mutex holding the GIL (a convoy): when it is busy, let the GIL go
         * meanwhile. */
        if (pthread_mutex_trylock(&p->mu) != 0) {
            worker_pause(r);
            pthread_mutex_lock(&p->mu);
        }
        worker *next = pass_wake_locked(p, w);
        pthread_mutex_unlock(&p->mu);
        signal_worker(next);
        if (resume_or_requeue(r, t) < 0)
            return -1;
    }
    if (r->h.run)
        r->h.run(r->ctx, r->wdata, t);
    edge e2;
    read_edge(r->rec, &e2);
    account_task(w, &r->e, &e2);
    cpu_edge(w, &r->cc, e2.mono);
    r->e = e2;
    if (pthread_mutex_trylock(&p->mu) != 0) {
        /* Never sleep on the pool's mutex holding what enter took (the GIL): if its
         * holder is preempted, every thread would queue behind us (a convoy). */
        worker_pause(r);
        pthread_mutex_lock(&p->mu);
    }
    if (!p->cfg.policy)
        p->idle_credit++;
    return 0;
}

/* Leaving (mu held; released here). Takes back what pause released before
 * unregistering, so that a thread waiting for the pool to empty cannot go on before we
 * are done with it; then hooks->leave, which may free the pool. */
static void worker_exit_locked(worker_run *r)
{
    worker *w = r->w;
    gla_pool *p = r->p;
    if (w->pass_wake) /* leaving with a wake we did not use: pass it on */
        signal_worker(pass_wake_locked(p, w));
    if (r->holding)
        cpu_flush(w, &r->cc, gla_now_ns());
    if (!r->holding && r->h.resume) {
        pthread_mutex_unlock(&p->mu);
        r->holding = r->h.resume(r->ctx, r->wdata) == 0;
        pthread_mutex_lock(&p->mu);
    } else if (!r->h.resume) {
        r->holding = 1;
    }
    unregister_locked(p, w); /* w is the pool's again: not touched after this */
    pthread_mutex_unlock(&p->mu);
    tls_worker = NULL;
    if (r->h.leave)
        r->h.leave(r->ctx, r->wdata, r->holding);
}

/* A worker's life: enter, register, serve tasks (pausing and idling when there are
 * none) until told to leave or the pool shuts down, leave. */
static void *worker_main(void *arg)
{
    worker *w = arg;
    gla_pool *p = w->pool;
    worker_run r = {.w = w, .p = p, .h = p->cfg.hooks, .ctx = p->cfg.ctx};
    tls_worker = w;
    set_os_name(p, NULL, w->index);
    w->tid = (pid_t)syscall(SYS_gettid);
    r.rec = gla_ledger_self();

    int rc = r.h.enter ? r.h.enter(r.ctx, &r.wdata, w->index) : 0;
    if (rc == 0)
        gla_pool_worker_entered(); /* if enter did not say so itself */
    pthread_mutex_lock(&p->mu);
    p->starting--;
    if (rc < 0) {
        enter_failed_locked(p, w);
        pthread_mutex_unlock(&p->mu);
        tls_worker = NULL;
        if (r.h.leave)
            r.h.leave(r.ctx, r.wdata, rc == GLA_POOL_ENTER_FAIL_HELD);
        return NULL;
    }
    register_locked(p, w, r.rec);

    r.holding = 1;
    w->pass_wake = 0; /* woken for queued tasks: pass the wake on once running */
    read_edge(r.rec, &r.e);
    cpu_start(&r.cc, r.e.mono);
    for (;;) { /* mu held at the top */
        if (must_leave_locked(p, w))
            break;
        gla_pool_task *t = queue_pop(p);
        if (t && p->take_waiters)
            pthread_cond_broadcast(&p->done_cond); /* gla_pool_await_taken */
        if (!t) {
            if (w->pass_wake) { /* a running worker took it first */
                p->wakes_in_flight--;
                w->pass_wake = 0;
            }
            if (p->shutdown)
                break;
            if (r.holding) { /* release what enter took before waiting */
                pthread_mutex_unlock(&p->mu);
                worker_pause(&r);
                pthread_mutex_lock(&p->mu);
                continue;
            }
            idle_wait_locked(p, w, r.rec);
            continue; /* take a task, or leave: decided at the top */
        }
        pthread_mutex_unlock(&p->mu);
        if (run_task(&r, t) < 0)
            break;
    }
    worker_exit_locked(&r);
    return NULL;
}

/* Creates one worker thread; p->starting already counts it. 0 or -errno (then the
 * count is taken back and the failure recorded). */
static int spawn(gla_pool *p)
{
    int err = 0;
    pthread_mutex_lock(&p->mu);
    if (p->inject_failures > 0) {
        p->inject_failures--;
        err = EAGAIN;
    }
    unsigned index = p->next_index++;
    worker *w = NULL;
    if (!err && p->spare) {
        w = p->spare;
        p->spare = w->all_next;
    }
    pthread_mutex_unlock(&p->mu);
    if (!err && !w) {
        w = calloc(1, sizeof *w);
        if (w)
            cond_init_mono(&w->cond);
        else
            err = ENOMEM;
    }
    if (w) {
        /* Fresh figures; the condition variable is kept across reuse. */
        w->all_prev = w->all_next = w->idle_up = w->idle_down = NULL;
        w->pool = p;
        w->woken = w->retire = w->on_idle = w->wake_for_work = w->entered = 0;
        w->registered = w->pass_wake = 0;
        w->index = index;
        w->tid = 0;
        atomic_store(&w->completed, 0);
        atomic_store(&w->cpu_ns, 0);
        atomic_store(&w->wall_ns, 0);
        atomic_store(&w->gil_ns, 0);
        atomic_store(&w->gil_tail_ns, 0);
        atomic_store(&w->lock_ns, 0);
        atomic_store(&w->idle_ns, 0);
        atomic_store(&w->held_ns, 0);
        atomic_store(&w->held_sq, 0);
    }
    if (!err) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_attr_setstacksize(&attr, p->cfg.stack_size) != 0)
            pthread_attr_setstacksize(&attr, GLA_POOL_DEFAULT_STACK);
        pthread_t th;
        err = pthread_create(&th, &attr, worker_main, w);
        pthread_attr_destroy(&attr);
    }
    if (err) {
        pthread_mutex_lock(&p->mu);
        if (w) {
            w->all_next = p->spare;
            p->spare = w;
        }
        p->starting--;
        p->start_failures++;
        p->last_start_errno = err;
        pthread_cond_broadcast(&p->done_cond);
        pthread_mutex_unlock(&p->mu);
        return -err;
    }
    pthread_mutex_lock(&p->mu);
    p->started++;
    pthread_mutex_unlock(&p->mu);
    return 0;
}

/* ---- monitor ------------------------------------------------------------------------ */

static void gather_locked(gla_pool *p, totals *t)
{
    *t = p->gone;
    uint64_t now = gla_now_ns();
    for (worker *w = p->all; w; w = w->all_next)
        add_worker_totals(t, w, now);
}

/* The process's CPU time (0: unknown). The kernel sums it over every thread: the monitor
 * reads it once per window, outside the pool's mutex. */
static uint64_t proc_cpu_ns(void)
{
    struct timespec ts;
    return clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) == 0
               ? (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec
               : 0;
}

/* Fills the sample slots from the live workers and copies (tid, idle) for reading: one
 * pass over the workers at most, and none while every slot holds a live worker (this
 * runs under the pool's mutex, which every worker needs between tasks). */
static int runq_pick_locked(gla_pool *p, pid_t tids[], uint64_t idle[])
{
    int empty = 0;
    for (int i = 0; i < GLA_POOL_RUNQ_SAMPLE; i++) {
        if (!p->rq[i].w) {
            p->rq[i].valid = 0;
            empty++;
        }
    }
    for (worker *w = p->all; w && empty > 0; w = w->all_next) {
        int taken = 0, slot = -1;
        for (int j = 0; j < GLA_POOL_RUNQ_SAMPLE; j++) {
            taken |= p->rq[j].w == w;
            if (slot < 0 && !p->rq[j].w)
                slot = j;
        }
        if (!taken && slot >= 0) {
            p->rq[slot].w = w;
            empty--;
        }
    }
    int n = 0;
    for (int i = 0; i < GLA_POOL_RUNQ_SAMPLE; i++) {
        tids[i] = p->rq[i].w ? p->rq[i].w->tid : 0;
        idle[i] = p->rq[i].w ? ld(&p->rq[i].w->idle_ns) : 0;
        n += tids[i] != 0;
    }
    return n;
}

/* Of the sampled workers' busy (not idle) time since the last window: the share spent
 * runnable but without a core (*runq) and the share on a core (*cpu); -1 when unknown. */
static void sample_workers(gla_pool *p, const pid_t tids[], const uint64_t idle[], uint64_t now,
                           double *runq_share_out, double *cpu_share_out)
{
    uint64_t runq_sum = 0, cpu_sum = 0, busy_sum = 0;
    for (int i = 0; i < GLA_POOL_RUNQ_SAMPLE; i++) {
        runq_slot *s = &p->rq[i];
        if (!tids[i]) {
            s->valid = 0;
            continue;
        }
        uint64_t cpu, runq;
        if (gla_read_schedstat(tids[i], &cpu, &runq) != 0) {
            s->valid = 0;
            continue;
        }
        if (s->valid && s->tid == tids[i] && now > s->at_ns) {
            uint64_t span = now - s->at_ns;
            uint64_t idl = sub0(idle[i], s->idle_ns);
            busy_sum += sub0(span, idl);
            runq_sum += sub0(runq, s->runq_ns);
            cpu_sum += sub0(cpu, s->cpu_ns);
        }
        s->tid = tids[i];
        s->valid = 1;
        s->at_ns = now;
        s->idle_ns = idle[i];
        s->runq_ns = runq;
        s->cpu_ns = cpu;
    }
    *runq_share_out = *cpu_share_out = -1.0;
    if (busy_sum == 0)
        return;
    double r = (double)runq_sum / (double)busy_sum, c = (double)cpu_sum / (double)busy_sum;
    *runq_share_out = r > 1.0 ? 1.0 : r;
    *cpu_share_out = c > 1.0 ? 1.0 : c;
}

/* Liveness, whatever the policy says: when nothing has completed for STALL_WINDOWS
 * windows and at least STALL_MIN_S while tasks wait, no worker is idle and the workers
 * are blocked (not on a core: waiting on each other, on I/O, on locks; the cores mostly
 * idle), grow as
 * ThreadPoolExecutor would have: double, bounded by the queue. (A short window without
 * completions is often the whole process descheduled on a busy machine, not a stall.)
 * Returns the raised target, or 0 (mu held). */
/* clang-format off */
#define STALL_WINDOWS 2
#define STALL_MIN_S 0.5
#define STUCK_MIN_S 1.0    /* busy workers, nothing done for this long... */
#define STUCK_WALLS 8.0    /* ...and this many times the tasks' mean wall time so far... */
#define STUCK_THREADS 64   /* ...below this many workers per core (past it, nothing
                              finishing can be the interpreter starving) */
/* clang-format on */
static int stall_target_locked(const gla_pool *p, int stalled, double cpu_share, double stalled_s,
                               double mean_wall_s)
{
    if (!stalled || p->shutdown || p->queue_len == 0 || p->n_idle > 0 ||
        p->target >= p->cfg.max_workers || p->live < p->target)
        return 0;
    /* Blocked means the cores are idle too. Hundreds of workers starving one core each
     * get a sliver of it: that is an interpreter collapsing, and more threads deepen it. */
    double cores = p->usable_cores > 0 ? p->usable_cores : 1;
    int blocked = cpu_share >= 0 && cpu_share < 0.2 && cpu_share * p->live / cores < 0.5;
    /* Busy but stuck: tasks that poll for tasks queued behind them (while not f.done())
     * burn CPU and finish nothing; tasks that had been finishing in a fraction of this
     * time are waiting on something only more workers can run. */
    int stuck = stalled_s >= STUCK_MIN_S && mean_wall_s > 0 &&
                stalled_s >= STUCK_WALLS * mean_wall_s && p->live < STUCK_THREADS * cores;
    if (!blocked && !stuck)
        return 0;
    long grow = p->live > 0 ? p->live : 1;
    if (grow > p->queue_len)
        grow = p->queue_len;
    long t = (long)p->live + grow;
    return t > p->cfg.max_workers ? p->cfg.max_workers : (int)t;
}

static void fill_window(const gla_pool *p, const totals *a, const totals *b, double span_s,
                        double rq_share, gla_window *win)
{
    memset(win, 0, sizeof *win);
    win->window_s = span_s;
    uint64_t n = sub0(b->completed, a->completed);
    win->completed = (double)n;
    win->task_cpu_s = win->task_gil_wait_s = win->task_wall_s = win->task_gil_held_s = -1.0;
    win->task_gil_held_sd = -1.0;
    win->task_io_s = -1.0;
    win->beta = -1.0;
    win->runq_share = rq_share;
    win->gil_busy = -1.0;
    win->cpu_busy = -1.0;
    if (a->proc_cpu_ns && b->proc_cpu_ns && span_s > 0 && p->usable_cores > 0) {
        double u = (double)sub0(b->proc_cpu_ns, a->proc_cpu_ns) / 1e9 / span_s / p->usable_cores;
        win->cpu_busy = u > 1.0 ? 1.0 : u;
    }
    if (p->cfg.gil_wait_known && span_s > 0) {
        double u = (double)sub0(b->busy_ns, a->busy_ns) / 1e9 / span_s;
        win->gil_busy = u > 1.0 ? 1.0 : u;
    }
    if (n > 0) {
        uint64_t cpu = sub0(b->cpu_ns, a->cpu_ns), wall = sub0(b->wall_ns, a->wall_ns);
        uint64_t gil = sub0(b->gil_ns, a->gil_ns), tail = sub0(b->gil_tail_ns, a->gil_tail_ns);
        uint64_t lock = sub0(b->lock_ns, a->lock_ns);
        win->task_cpu_s = (double)cpu / 1e9 / (double)n;
        win->task_wall_s = (double)wall / 1e9 / (double)n;
        if (p->cfg.gil_wait_known || p->cfg.free_threaded) {
            if (p->cfg.gil_wait_known) {
                win->task_gil_wait_s = (double)gil / 1e9 / (double)n;
                win->task_gil_held_s = (double)sub0(b->held_ns, a->held_ns) / 1e9 / (double)n;
                if (n >= 2) { /* the tasks' spread, from their squares (us^2) */
                    double mean_us = win->task_gil_held_s * 1e6;
                    double var = ((double)(b->held_sq - a->held_sq) / (double)n -
                                  mean_us * mean_us) *
                                 (double)n / (double)(n - 1);
                    win->task_gil_held_sd = var > 0 ? sqrt(var) / 1e6 : -1.0;
                }
            } else {
                gil = tail = 0; /* no GIL: the partition has no GIL wait */
            }
            gla_sample s;
            memset(&s, 0, sizeof s);
            s.wall_ns = wall;
            s.raw_cpu_ns = cpu;
            s.raw_runq_ns = rq_share > 0 ? (uint64_t)(rq_share * (double)wall) : 0;
            s.raw_gil_wait_ns = gil;
            s.raw_lock_wait_ns = lock;
            s.gil_tail_ns = tail;
            gla_sample_finish(&s);
            /* beta: the share of waiting that is contention, not I/O; without a GIL the
             * contention is for the cores (run queue) and for locks */
            uint64_t cont = p->cfg.gil_wait_known ? s.gil_wait_ns : s.runq_ns + s.lock_wait_ns;
            uint64_t denom = cont + s.io_wait_ns;
            win->beta = denom ? (double)cont / (double)denom : -1.0;
            if (rq_share >= 0)
                win->task_io_s = (double)s.io_wait_ns / 1e9 / (double)n;
        }
    }
    win->workers = p->live;
    win->busy = p->live - p->n_idle;
    win->queue_length = p->queue_len;
    win->usable_cores = p->usable_cores;
    win->free_threaded = p->cfg.free_threaded;
    win->target = p->target;
}

/* Creates owed workers while fewer than start_burst created ones are still entering
 * (each entering worker waits for the interpreter lock: a thousand started at once made
 * a thousand more GIL contenders, and a loaded interpreter finished almost nothing for
 * seconds). Called after owed grows and whenever a worker is through enter, so owed
 * starts are never left behind. A pool shut down with nothing queued forgets them. 0, or
 * the -errno of a failed start (thread limit, memory: the rest owed are not tried now). */
static int start_owed(gla_pool *p)
{
    int rc = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        if (p->shutdown && p->queue_len == 0)
            forget_owed_locked(p);
        if (p->owed == 0 || p->entering >= p->cfg.start_burst)
            break;
        p->owed--;
        p->entering++;
        pthread_mutex_unlock(&p->mu);
        int r = spawn(p);
        pthread_mutex_lock(&p->mu);
        if (r < 0) {
            p->entering--;
            forget_owed_locked(p);
            rc = r;
            break;
        }
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}

void gla_pool_worker_entered(void)
{
    worker *w = tls_worker;
    if (!w)
        return;
    gla_pool *p = w->pool;
    pthread_mutex_lock(&p->mu);
    int first = mark_entered_locked(p, w);
    pthread_mutex_unlock(&p->mu);
    if (first)
        start_owed(p);
}

/* The first window: the size the pool starts at is a guess, and a burst of short tasks
 * can be over before a full window at that size ends. Once first_window_tasks have
 * finished while more wait, the window has shown what it can (mu held). */
#define FIRST_POLL_NS 10000000ull
static int first_window_shown_locked(gla_pool *p, const totals *start)
{
    if (p->queue_len == 0)
        return 0;
    totals now;
    gather_locked(p, &now);
    return sub0(now.completed, start->completed) >= (uint64_t)p->cfg.first_window_tasks;
}

static void *monitor_main(void *arg)
{
    gla_pool *p = arg;
    set_os_name(p, "-mon", 0);
    double next_s = p->cfg.first_window_s > 0 ? p->cfg.first_window_s : 0.1;
    pthread_mutex_lock(&p->mu);
    totals last;
    gather_locked(p, &last);
    last.proc_cpu_ns = proc_cpu_ns();
    uint64_t win_start = gla_now_ns();
    uint64_t deadline = win_start + (uint64_t)(next_s * 1e9);
    int quiet = 0;
    int stall_windows = 0;
    uint64_t stall_since = 0;
    int first = p->cfg.first_window_tasks > 0; /* the first window may end sooner */
    pid_t tids[GLA_POOL_RUNQ_SAMPLE];
    uint64_t idle[GLA_POOL_RUNQ_SAMPLE];
    while (!p->monitor_stop) {
        uint64_t now = gla_now_ns();
        if (now < deadline && !(first && first_window_shown_locked(p, &last))) {
            uint64_t until = first && now + FIRST_POLL_NS < deadline ? now + FIRST_POLL_NS
                                                                     : deadline;
            struct timespec ts = abs_mono(until);
            pthread_cond_timedwait(&p->monitor_cond, &p->mu, &ts);
            continue;
        }
        first = 0;
        totals cur;
        gather_locked(p, &cur);
        runq_pick_locked(p, tids, idle);
        int nothing = cur.completed == last.completed && p->queue_len == 0 && p->live == p->n_idle;
        pthread_mutex_unlock(&p->mu);
        cur.proc_cpu_ns = proc_cpu_ns();

        double cores = p->usable_cores;
        int aff;
        double quota, usable;
        if (p->cfg.usable_cores <= 0 && gla_read_usable_cores(&aff, &quota, &usable) == 0 &&
            usable > 0)
            cores = usable;
        double share, cpu_share;
        sample_workers(p, tids, idle, now, &share, &cpu_share);

        pthread_mutex_lock(&p->mu);
        p->usable_cores = cores;
        gla_window win;
        fill_window(p, &last, &cur, (double)(now - win_start) / 1e9, share, &win);
        pthread_mutex_unlock(&p->mu);

        gla_decision d;
        memset(&d, 0, sizeof d);
        d.target = win.target;
        d.action = GLA_HOLD;
        next_s = p->cfg.policy(p->cfg.policy_ctx, &win, &d);
        if (!(next_s > 0.001))
            next_s = 0.001;
        if (next_s > 10.0)
            next_s = 10.0;

        pthread_mutex_lock(&p->mu);
        p->last_window = win;
        p->windows++;
        if ((unsigned)d.action >= GLA_NACTIONS)
            d.action = GLA_HOLD;
        d.reason[GLA_REASON_LEN - 1] = '\0';
        if (cur.completed == last.completed && p->queue_len > 0) {
            if (stall_windows++ == 0)
                stall_since = win_start;
        } else {
            stall_windows = 0;
        }
        double stalled_s = (double)(now - stall_since) / 1e9;
        int stalled = stall_windows >= STALL_WINDOWS && stalled_s >= STALL_MIN_S;
        double mean_wall_s = cur.completed ? (double)cur.wall_ns / 1e9 / (double)cur.completed
                                           : -1.0;
        int stall = stall_target_locked(p, stalled, cpu_share, stalled_s, mean_wall_s);
        if (stall > d.target) {
            snprintf(d.reason, sizeof d.reason,
                     "liveness: %d workers (cpu %.0f %%), none done for %.1f s, "
                     "%ld queued: %d",
                     p->live, cpu_share * 100, stalled_s, p->queue_len, stall);
            d.target = stall;
            d.action = GLA_GROW;
        }
        p->decisions[d.action]++;
        p->last_action = d.action;
        memcpy(p->last_reason, d.reason, sizeof p->last_reason);
        gla_pool_history_entry *h = &p->history[(p->windows - 1) % GLA_POOL_HISTORY];
        h->at_s = (double)(now - p->created_ns) / 1e9;
        h->window_s = win.window_s;
        h->completed = win.completed;
        h->workers = win.workers;
        h->queue_nonempty = win.queue_length > 0;
        h->target = d.target;
        h->action = d.action;
        memcpy(h->reason, d.reason, sizeof h->reason);
        int to_start = p->monitor_stop ? 0 : apply_target_locked(p, d.target);
        if (to_start > 0) {
            pthread_mutex_unlock(&p->mu);
            start_owed(p);
            pthread_mutex_lock(&p->mu);
        }
        last = cur;
        win_start = now;
        now = gla_now_ns();
        deadline = now + (uint64_t)(next_s * 1e9);
        quiet = nothing ? quiet + 1 : 0;
        if (quiet >= 2 && !p->monitor_stop) {
            /* Nothing queued, running or done for two windows: sleep until a submit. */
            p->monitor_parked = 1;
            while (p->monitor_parked && !p->monitor_stop)
                pthread_cond_wait(&p->monitor_cond, &p->mu);
            quiet = 0;
            gather_locked(p, &last);
            last.proc_cpu_ns = proc_cpu_ns();
            win_start = gla_now_ns();
            deadline = win_start + (uint64_t)(next_s * 1e9);
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Starts the monitor once, if there is a policy and the pool is open. */
static void ensure_monitor(gla_pool *p)
{
    if (!p->cfg.policy)
        return;
    pthread_mutex_lock(&p->mu);
    int start = !p->monitor_started && !p->shutdown;
    if (start)
        p->monitor_started = 1;
    pthread_mutex_unlock(&p->mu);
    if (!start)
        return;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 128u * 1024u);
    pthread_t th;
    int err = pthread_create(&th, &attr, monitor_main, p);
    pthread_attr_destroy(&attr);
    pthread_mutex_lock(&p->mu);
    if (err) {
        p->monitor_started = 0; /* tried again at the next worker start */
        snprintf(p->last_reason, sizeof p->last_reason,
                 "monitor thread could not start (%s): holding the target", strerror(err));
    } else {
        p->monitor = th;
    }
    pthread_mutex_unlock(&p->mu);
}

/* ---- public API ----------------------------------------------------------------------- */

gla_pool *gla_pool_create(const gla_pool_config *cfg)
{
    if (!cfg || cfg->min_workers < 1 || cfg->max_workers < cfg->min_workers) {
        errno = EINVAL;
        return NULL;
    }
    gla_pool *p = calloc(1, sizeof *p);
    if (!p) {
        errno = ENOMEM;
        return NULL;
    }
    gla_ledger_init();
    p->created_ns = gla_now_ns();
    p->cfg = *cfg;
    p->cfg.name[GLA_POOL_NAME_LEN - 1] = '\0';
    if (!p->cfg.name[0])
        snprintf(p->cfg.name, sizeof p->cfg.name, "gla");
    if (p->cfg.stack_size == 0)
        p->cfg.stack_size = GLA_POOL_DEFAULT_STACK;
    if (p->cfg.start_burst <= 0)
        p->cfg.start_burst = GLA_POOL_START_BURST;
    pthread_mutex_init(&p->mu, NULL);
    cond_init_mono(&p->done_cond);
    cond_init_mono(&p->monitor_cond);
    p->target = clamp_target(p, cfg->initial_target);
    p->usable_cores = cfg->usable_cores;
    if (p->usable_cores <= 0) {
        int aff;
        double quota, usable;
        p->usable_cores = gla_read_usable_cores(&aff, &quota, &usable) == 0 ? usable : 1.0;
    }
    p->last_action = GLA_HOLD;
    snprintf(p->last_reason, sizeof p->last_reason, "no window closed yet");
    return p;
}

static int submit_impl(gla_pool *p, gla_pool_task *t, int try_only)
{
    if (try_only) {
        if (pthread_mutex_trylock(&p->mu) != 0)
            return -EBUSY;
    } else {
        pthread_mutex_lock(&p->mu);
    }
    if (p->broken) {
        pthread_mutex_unlock(&p->mu);
        return -EPIPE;
    }
    if (p->shutdown) {
        pthread_mutex_unlock(&p->mu);
        return -ESHUTDOWN;
    }
    p->submitted++;
    if (p->monitor_parked) {
        p->monitor_parked = 0;
        pthread_cond_signal(&p->monitor_cond);
    }
    int credit = 0;
    if (!p->cfg.policy && p->idle_credit > 0) {
        p->idle_credit--;
        credit = 1;
    }
    queue_append(p, t);
    worker *next = NULL;
    int start = 0;
    if (p->idle_top) {
        next = wake_next_locked(p);
    } else if (p->retire_pending > 0) {
        /* A worker about to leave is still needed: keep it. */
        p->retire_pending--;
    } else if (!credit && effective_locked(p) < p->target) {
        p->starting++;
        p->owed++;
        start = 1;
    }
    int need_monitor = p->cfg.policy && !p->monitor_started;
    pthread_mutex_unlock(&p->mu);
    if (next)
        pthread_cond_signal(&next->cond); /* after unlocking: see the top of this file */
    if (need_monitor)
        ensure_monitor(p);
    if (!start)
        return 0;
    int rc = start_owed(p);
    if (rc == 0)
        return 0;
    pthread_mutex_lock(&p->mu);
    if (p->live + p->starting == 0 && queue_remove(p, t)) {
        /* No worker and none can start: give the task back, fail the call. */
        p->submitted--;
        pthread_mutex_unlock(&p->mu);
        return rc;
    }
    pthread_mutex_unlock(&p->mu);
    return 0;
}

int gla_pool_submit(gla_pool *p, gla_pool_task *t)
{
    return submit_impl(p, t, 0);
}

gla_pool_task *gla_pool_take(gla_pool *p, int (*match)(void *ctx, const gla_pool_task *t),
                             void *ctx)
{
    gla_pool_task *head = NULL, **end = &head;
    pthread_mutex_lock(&p->mu);
    gla_pool_task *prev = NULL, *c = p->head;
    while (c) {
        gla_pool_task *next = c->next;
        if (match(ctx, c)) {
            if (prev)
                prev->next = next;
            else
                p->head = next;
            if (p->tail == c)
                p->tail = prev;
            c->next = NULL;
            p->queue_len--;
            p->taken++;
            *end = c;
            end = &c->next;
        } else {
            prev = c;
        }
        c = next;
    }
    pthread_mutex_unlock(&p->mu);
    return head;
}

int gla_pool_try_submit(gla_pool *p, gla_pool_task *t)
{
    return submit_impl(p, t, 1);
}

void gla_pool_shutdown(gla_pool *p, int cancel, gla_pool_task **cancelled)
{
    if (cancelled)
        *cancelled = NULL;
    pthread_mutex_lock(&p->mu);
    p->shutdown = 1;
    p->retire_pending = 0;
    if (cancel) {
        gla_pool_task *list = queue_detach(p);
        if (cancelled)
            *cancelled = list;
    }
    wake_all_idle(p);
    p->monitor_stop = 1;
    p->monitor_parked = 0;
    pthread_cond_broadcast(&p->monitor_cond);
    int start = p->queue_len > 0 && p->live + p->starting - p->retiring == 0;
    if (start) {
        p->starting++;
        p->owed++;
    }
    pthread_mutex_unlock(&p->mu);
    start_owed(p); /* also forgets owed starts when nothing is left to run */
}

int gla_pool_wait_for(gla_pool *p, int self_is_worker, double timeout_s)
{
    int floor = self_is_worker ? 1 : 0;
    uint64_t deadline = timeout_s >= 0 ? gla_now_ns() + (uint64_t)(timeout_s * 1e9) : 0;
    pthread_mutex_lock(&p->mu);
    while (p->live + p->starting > floor) {
        if (!deadline) {
            pthread_cond_wait(&p->done_cond, &p->mu);
            continue;
        }
        struct timespec ts = abs_mono(deadline);
        if (pthread_cond_timedwait(&p->done_cond, &p->mu, &ts) == ETIMEDOUT &&
            p->live + p->starting > floor) {
            pthread_mutex_unlock(&p->mu);
            return 0;
        }
    }
    int join = p->monitor_started && p->monitor_stop && !p->monitor_join_claimed;
    if (join)
        p->monitor_join_claimed = 1;
    pthread_mutex_unlock(&p->mu);
    if (join)
        pthread_join(p->monitor, NULL);
    return 1;
}

void gla_pool_wait(gla_pool *p, int self_is_worker)
{
    gla_pool_wait_for(p, self_is_worker, -1.0);
}

gla_pool_task *gla_pool_break(gla_pool *p)
{
    pthread_mutex_lock(&p->mu);
    p->broken = 1;
    p->shutdown = 1;
    p->retire_pending = 0;
    forget_owed_locked(p);
    gla_pool_task *list = queue_detach(p);
    wake_all_idle(p);
    p->monitor_stop = 1;
    p->monitor_parked = 0;
    pthread_cond_broadcast(&p->monitor_cond);
    pthread_mutex_unlock(&p->mu);
    return list;
}

void gla_pool_destroy(gla_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->shutdown = 1;
    p->monitor_stop = 1;
    pthread_cond_broadcast(&p->monitor_cond);
    int join = p->monitor_started && !p->monitor_join_claimed;
    if (join)
        p->monitor_join_claimed = 1;
    pthread_mutex_unlock(&p->mu);
    if (join)
        pthread_join(p->monitor, NULL);
    while (p->spare) {
        worker *w = p->spare;
        p->spare = w->all_next;
        pthread_cond_destroy(&w->cond);
        free(w);
    }
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->done_cond);
    pthread_cond_destroy(&p->monitor_cond);
    free(p);
}

void gla_pool_get_stats(gla_pool *p, gla_pool_stats *o)
{
    memset(o, 0, sizeof *o);
    pthread_mutex_lock(&p->mu);
    o->workers = p->live;
    o->idle = p->n_idle;
    o->busy = p->live - p->n_idle;
    o->starting = p->starting;
    o->target = p->target;
    o->min_workers = p->cfg.min_workers;
    o->max_workers = p->cfg.max_workers;
    o->retire_pending = p->retire_pending;
    o->queue_length = p->queue_len;
    o->submitted = p->submitted;
    o->taken = p->taken;
    totals t;
    gather_locked(p, &t);
    o->completed = t.completed;
    o->started = p->started;
    o->retired = p->retired;
    o->start_failures = p->start_failures;
    o->last_start_errno = p->last_start_errno;
    o->shutdown = p->shutdown;
    o->broken = p->broken;
    memcpy(o->decisions, p->decisions, sizeof o->decisions);
    memcpy(o->last_reason, p->last_reason, sizeof o->last_reason);
    o->last_action = p->last_action;
    o->last_window = p->last_window;
    o->throughput = p->last_window.window_s > 0 ? p->last_window.completed / p->last_window.window_s
                                                : 0.0;
    o->stack_size = p->cfg.stack_size;
    o->windows = p->windows;
    o->usable_cores = p->usable_cores;
    o->history_n = p->windows < GLA_POOL_HISTORY ? (int)p->windows : GLA_POOL_HISTORY;
    for (int i = 0; i < o->history_n; i++)
        o->history[i] =
            p->history[(p->windows - (uint64_t)o->history_n + (uint64_t)i) % GLA_POOL_HISTORY];
    pthread_mutex_unlock(&p->mu);
}

void gla_pool_set_target(gla_pool *p, int target)
{
    pthread_mutex_lock(&p->mu);
    int n = apply_target_locked(p, target);
    pthread_mutex_unlock(&p->mu);
    if (n > 0)
        start_owed(p);
}

int gla_pool_serving(gla_pool *p)
{
    return atomic_load_explicit(&p->serving, memory_order_relaxed);
}

void gla_pool_await_serving(gla_pool *p)
{
    pthread_mutex_lock(&p->mu);
    while (atomic_load_explicit(&p->serving, memory_order_relaxed) == 0 && p->starting > 0 &&
           !p->shutdown && !p->broken)
        pthread_cond_wait(&p->done_cond, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

static int queued_locked(const gla_pool *p, const gla_pool_task *task)
{
    for (const gla_pool_task *c = p->head; c; c = c->next)
        if (c == task)
            return 1;
    return 0;
}

void gla_pool_await_taken(gla_pool *p, const gla_pool_task *task, double timeout_s)
{
    struct timespec until = abs_mono(gla_now_ns() + (uint64_t)(timeout_s * 1e9));
    pthread_mutex_lock(&p->mu);
    p->take_waiters++;
    while (queued_locked(p, task) && atomic_load_explicit(&p->serving, memory_order_relaxed) > 0 &&
           !p->shutdown && !p->broken) {
        if (pthread_cond_timedwait(&p->done_cond, &p->mu, &until) == ETIMEDOUT)
            break;
    }
    p->take_waiters--;
    pthread_mutex_unlock(&p->mu);
}

int gla_pool_claim_drained(gla_pool *p)
{
    pthread_mutex_lock(&p->mu);
    int claim = p->shutdown && p->live + p->starting == 0 && !p->drained_claimed;
    if (claim)
        p->drained_claimed = 1;
    pthread_mutex_unlock(&p->mu);
    return claim;
}

int gla_pool_is_worker(const gla_pool *p)
{
    return p && tls_worker && tls_worker->pool == p;
}

void gla_pool_inject_start_failures(gla_pool *p, int n)
{
    pthread_mutex_lock(&p->mu);
    p->inject_failures = n;
    pthread_mutex_unlock(&p->mu);
}

gla_pool_task *gla_pool_reset_after_fork(gla_pool *p)
{
    /* Only this thread exists: the locks may have been held by threads that are gone. */
    pthread_mutex_init(&p->mu, NULL);
    cond_init_mono(&p->done_cond);
    cond_init_mono(&p->monitor_cond);
    /* The calling thread, when it is a worker of p, goes on with its loop once its task
     * (or its enter) returns: its struct is kept and it stays counted. */
    worker *self = tls_worker && tls_worker->pool == p ? tls_worker : NULL;
    /* Free the others without pthread_cond_destroy: the conditions may list waiters that
     * are gone. */
    worker *lists[2] = {p->all, p->spare};
    for (int i = 0; i < 2; i++) {
        for (worker *w = lists[i]; w;) {
            worker *next = w->all_next;
            if (w != self)
                free(w);
            w = next;
        }
    }
    p->spare = NULL;
    gla_pool_task *list = queue_detach(p);
    p->all = p->idle_top = p->idle_bottom = NULL;
    p->n_idle = p->live = p->starting = p->retiring = p->retire_pending = 0;
    p->owed = p->entering = 0;
    atomic_store_explicit(&p->serving, 0, memory_order_relaxed);
    p->wakes_in_flight = 0;
    p->idle_credit = 0;
    p->monitor_started = p->monitor_stop = p->monitor_parked = p->monitor_join_claimed = 0;
    p->submitted = p->started = p->retired = p->start_failures = p->taken = 0;
    memset(&p->gone, 0, sizeof p->gone);
    memset(p->rq, 0, sizeof p->rq);
    if (self) {
        /* It is running a task (registered) or inside enter (counted in starting). */
        cond_init_mono(&self->cond);
        self->all_prev = self->all_next = self->idle_up = self->idle_down = NULL;
        self->on_idle = self->woken = self->wake_for_work = 0;
        if (self->registered) {
            p->all = self;
            p->live = 1;
            p->submitted = 1; /* the task in flight */
        } else {
            p->starting = 1;
            p->entering = !self->entered;
        }
        atomic_store_explicit(&p->serving, self->entered ? 1 : 0, memory_order_relaxed);
        p->retiring = self->retire ? 1 : 0;
        p->wakes_in_flight = self->pass_wake ? 1 : 0;
        /* Its ledger record restarted at the fork: so do its figures. */
        self->held0 = 0;
        atomic_store(&self->completed, 0);
        atomic_store(&self->cpu_ns, 0);
        atomic_store(&self->wall_ns, 0);
        atomic_store(&self->gil_ns, 0);
        atomic_store(&self->gil_tail_ns, 0);
        atomic_store(&self->lock_ns, 0);
        atomic_store(&self->idle_ns, 0);
        atomic_store(&self->held_ns, 0);
        atomic_store(&self->held_sq, 0);
    }
    return list;
}
