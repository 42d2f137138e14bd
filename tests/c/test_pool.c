/* test_pool.c — the executor's C pool without Python: queue, hand-off, workers added and
 * retired while tasks run, start failures, shutdown/cancel/break, policy windows, idle
 * accounting, fork. Invariants only (no timing thresholds). */
#include "ledger.h"
#include "pool.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

#if defined(__SANITIZE_THREAD__)
/* The fork tests start threads in the child of a multi-threaded process, which TSan
 * refuses by default; it holds its own locks across fork(), so the child can run. */
const char *__tsan_default_options(void);
const char *__tsan_default_options(void)
{
    return "die_after_fork=0";
}
#endif

static int g_failed, g_checks;
#define CHECK(cond, ...)                                                    \
    do {                                                                    \
        g_checks++;                                                         \
        if (!(cond)) {                                                      \
            g_failed++;                                                     \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                   \
            fputc('\n', stderr);                                            \
        }                                                                   \
    } while (0)

#define NTASKS 20000
#define GATE_OPENER (-2) /* a task with this id opens the gate the gated tasks wait on */

typedef struct {
    gla_pool_task link;
    int id;
    int sleep_us;
    int gated;
} ctask;

static _Atomic int g_runs[NTASKS];
static _Atomic int g_total;
static _Atomic int g_gate_open;
static _Atomic int g_running_now, g_running_max;
static _Atomic int g_enter, g_leave, g_pause, g_resume, g_enter_fail_at = -1;
static _Atomic int g_alive; /* worker threads between enter and the end of leave */
static gla_pool *g_self_pool;
static _Atomic int g_self_checks;

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

static int h_enter(void *ctx, void **wdata, unsigned index)
{
    (void)ctx;
    *wdata = (void *)(uintptr_t)(index + 1);
    atomic_fetch_add(&g_alive, 1);
    atomic_fetch_add(&g_enter, 1);
    if ((int)index == atomic_load(&g_enter_fail_at))
        return GLA_POOL_ENTER_FAIL_HELD;
    return 0;
}

static void note_max(_Atomic int *max, int now)
{
    int m = atomic_load(max);
    while (now > m && !atomic_compare_exchange_weak(max, &m, now)) {
    }
}

static void h_pause(void *ctx, void *wdata)
{
    (void)ctx;
    (void)wdata;
    atomic_fetch_add(&g_pause, 1);
}

static int h_resume(void *ctx, void *wdata)
{
    (void)ctx;
    (void)wdata;
    atomic_fetch_add(&g_resume, 1);
    return 0;
}

static void h_run(void *ctx, void *wdata, gla_pool_task *task)
{
    (void)ctx;
    (void)wdata;
    ctask *t = (ctask *)task;
    note_max(&g_running_max, atomic_fetch_add(&g_running_now, 1) + 1);
    if (t->id >= 0)
        atomic_fetch_add(&g_runs[t->id], 1);
    if (t->id == GATE_OPENER)
        atomic_store(&g_gate_open, 1);
    while (t->gated && !atomic_load(&g_gate_open))
        sleep_us(200);
    if (t->sleep_us)
        sleep_us(t->sleep_us);
    if (g_self_pool)
        atomic_fetch_add(&g_self_checks, gla_pool_is_worker(g_self_pool));
    atomic_fetch_sub(&g_running_now, 1);
    atomic_fetch_add(&g_total, 1);
    free(t);
}

static void h_leave(void *ctx, void *wdata, int holding)
{
    (void)ctx;
    (void)wdata;
    (void)holding;
    atomic_fetch_add(&g_leave, 1);
    atomic_fetch_sub(&g_alive, 1);
}

/* leave runs after a worker unregistered (it may free the pool's owner): wait for it. */
static int leaves_match(void)
{
    uint64_t end = gla_now_ns() + 5000000000ull;
    while (atomic_load(&g_leave) != atomic_load(&g_enter) && gla_now_ns() < end)
        sleep_us(500);
    return atomic_load(&g_leave) == atomic_load(&g_enter);
}

static void reset_counts(void)
{
    /* Workers of the previous test may still be in leave (after their pool was freed). */
    uint64_t end = gla_now_ns() + 5000000000ull;
    while (atomic_load(&g_alive) > 0 && gla_now_ns() < end)
        sleep_us(500);
    for (int i = 0; i < NTASKS; i++)
        atomic_store(&g_runs[i], 0);
    atomic_store(&g_total, 0);
    atomic_store(&g_gate_open, 0);
    atomic_store(&g_running_now, 0);
    atomic_store(&g_running_max, 0);
    atomic_store(&g_enter, 0);
    atomic_store(&g_leave, 0);
    atomic_store(&g_pause, 0);
    atomic_store(&g_resume, 0);
    atomic_store(&g_enter_fail_at, -1);
    g_self_pool = NULL;
    atomic_store(&g_self_checks, 0);
}

/* Tasks lo..hi-1 that did not run exactly once. */
static int not_once(int lo, int hi)
{
    int bad = 0;
    for (int i = lo; i < hi; i++)
        bad += atomic_load(&g_runs[i]) != 1;
    return bad;
}

/* Shuts p down (no cancel), waits for its workers, checks tasks 0..n-1 ran once. */
static void drain_and_check(gla_pool *p, int n)
{
    gla_pool_shutdown(p, 0, NULL);
    gla_pool_wait(p, 0);
    int bad = not_once(0, n);
    CHECK(bad == 0, "%d of %d tasks not run exactly once", bad, n);
}

static gla_pool_config base_config(int min, int max, int initial)
{
    gla_pool_config c;
    memset(&c, 0, sizeof c);
    c.min_workers = min;
    c.max_workers = max;
    c.initial_target = initial;
    c.stack_size = 256 * 1024;
    c.usable_cores = 2;
    snprintf(c.name, sizeof c.name, "test-pool");
    c.hooks.enter = h_enter;
    c.hooks.pause = h_pause;
    c.hooks.resume = h_resume;
    c.hooks.run = h_run;
    c.hooks.leave = h_leave;
    return c;
}

static ctask *mk(int id, int sleep, int gated)
{
    ctask *t = calloc(1, sizeof *t);
    t->id = id;
    t->sleep_us = sleep;
    t->gated = gated;
    return t;
}

static int count_list(gla_pool_task *l, int free_them)
{
    int n = 0;
    while (l) {
        gla_pool_task *next = l->next;
        ctask *t = (ctask *)l;
        if (t->id >= 0)
            atomic_fetch_add(&g_runs[t->id], 100); /* marks "given back", never run */
        if (free_them)
            free(l);
        l = next;
        n++;
    }
    return n;
}

static void wait_until(int (*pred)(gla_pool *), gla_pool *p, double max_s)
{
    uint64_t end = gla_now_ns() + (uint64_t)(max_s * 1e9);
    while (!pred(p) && gla_now_ns() < end)
        sleep_us(1000);
}

static int stats_workers(gla_pool *p)
{
    gla_pool_stats s;
    gla_pool_get_stats(p, &s);
    return s.workers;
}
static int at_least_6(gla_pool *p)
{
    return stats_workers(p) >= 6;
}
static int running_one(gla_pool *p)
{
    (void)p;
    return atomic_load(&g_running_now) == 1;
}
static int at_most_1(gla_pool *p)
{
    gla_pool_stats s;
    gla_pool_get_stats(p, &s);
    return s.workers + s.starting <= 1 && s.starting == 0;
}
/* All 60 tasks done and the pool back to its minimum of 2 (checking the workers alone
   passes at once while the pool is still starting its first workers). */
static int done_and_2(gla_pool *p)
{
    gla_pool_stats s;
    gla_pool_get_stats(p, &s);
    return s.completed == 60 && s.workers == 2;
}

/* 1. Many tasks: each runs exactly once; counts add up; no worker above the target. */
static void test_exactly_once(void)
{
    reset_counts();
    gla_pool_config c = base_config(1, 4, 3);
    gla_pool *p = gla_pool_create(&c);
    CHECK(p != NULL, "create");
    for (int i = 0; i < NTASKS; i++)
        CHECK(gla_pool_submit(p, &mk(i, (i % 997) == 0 ? 200 : 0, 0)->link) == 0, "submit %d", i);
    drain_and_check(p, NTASKS);
    gla_pool_stats s;
    gla_pool_get_stats(p, &s);
    CHECK(s.submitted == NTASKS && s.completed == NTASKS, "submitted %llu completed %llu",
          (unsigned long long)s.submitted, (unsigned long long)s.completed);
    CHECK(s.workers == 0 && s.queue_length == 0, "workers %d queue %ld", s.workers, s.queue_length);
    CHECK(atomic_load(&g_running_max) <= 3, "ran %d at once with target 3",
          atomic_load(&g_running_max));
    CHECK(leaves_match(), "enter %d leave %d", atomic_load(&g_enter), atomic_load(&g_leave));
    ctask *refused = mk(-1, 0, 0);
    CHECK(gla_pool_submit(p, &refused->link) == -ESHUTDOWN, "submit after shutdown");
    free(refused); /* a refused task stays the caller's */
    CHECK(gla_pool_claim_drained(p) == 1 && gla_pool_claim_drained(p) == 0, "drained once");
    gla_pool_destroy(p);
}

/* 2. Grow and retire while tasks run; none lost or duplicated. */
static void test_grow_retire(void)
{
    reset_counts();
    gla_pool_config c = base_config(1, 16, 1);
    gla_pool *p = gla_pool_create(&c);
    int n = 3000;
    for (int i = 0; i < n; i++)
        gla_pool_submit(p, &mk(i, 300, 0)->link);
    gla_pool_set_target(p, 8);
    wait_until(at_least_6, p, 5.0);
    gla_pool_stats s;
    gla_pool_get_stats(p, &s);
    CHECK(s.workers >= 6 && s.workers <= 8, "grew to %d (target 8)", s.workers);
    CHECK(s.queue_length > 0, "tasks still queued while growing");
    gla_pool_set_target(p, 1);
    wait_until(at_most_1, p, 5.0);
    gla_pool_get_stats(p, &s);
    CHECK(s.workers == 1, "retired to %d (target 1)", s.workers);
    CHECK(s.queue_length > 0 || s.completed == (uint64_t)n, "work goes on after retiring");
    gla_pool_set_target(p, 4);
    drain_and_check(p, n);
    gla_pool_get_stats(p, &s);
    CHECK(s.retired == s.started, "started %llu retired %llu", (unsigned long long)s.started,
          (unsigned long long)s.retired);
    CHECK(atomic_load(&g_pause) == atomic_load(&g_resume) ||
              atomic_load(&g_pause) == atomic_load(&g_resume) + 0,
          "pause %d resume %d", atomic_load(&g_pause), atomic_load(&g_resume));
    gla_pool_destroy(p);
}

/* 3. Workers that cannot start: the pool stays smaller, no task is lost; with no worker
 *    at all the submit fails and the task is given back. */
static void test_start_failures(void)
{
    reset_counts();
    gla_pool_config c = base_config(1, 8, 2);
    gla_pool *p = gla_pool_create(&c);
    gla_pool_inject_start_failures(p, 1);
    ctask *t0 = mk(0, 0, 0);
    int rc = gla_pool_submit(p, &t0->link);
    CHECK(rc == -EAGAIN, "first submit with no worker startable: %d", rc);
    gla_pool_stats s;
    gla_pool_get_stats(p, &s);
    CHECK(s.submitted == 0 && s.queue_length == 0 && s.start_failures == 1,
          "state unchanged: submitted %llu queue %ld failures %llu",
          (unsigned long long)s.submitted, s.queue_length, (unsigned long long)s.start_failures);
    CHECK(gla_pool_submit(p, &t0->link) == 0, "resubmit");
    gla_pool_inject_start_failures(p, 5);
    int n = 500;
    for (int i = 1; i < n; i++)
        CHECK(gla_pool_submit(p, &mk(i, 100, 0)->link) == 0, "submit %d", i);
    gla_pool_set_target(p, 8);
    drain_and_check(p, n);
    gla_pool_get_stats(p, &s);
    CHECK(s.start_failures >= 2, "failures counted: %llu", (unsigned long long)s.start_failures);
    CHECK(s.last_start_errno == EAGAIN, "errno %d", s.last_start_errno);
    gla_pool_destroy(p);
}

/* 4. shutdown(cancel) gives queued tasks back; break refuses new ones. */
static void test_cancel_and_break(void)
{
    reset_counts();
    gla_pool_config c = base_config(1, 2, 2);
    gla_pool *p = gla_pool_create(&c);
    int n = 200;
    for (int i = 0; i < n; i++)
        gla_pool_submit(p, &mk(i, 0, 1)->link);
    while (atomic_load(&g_running_now) < 2)
        sleep_us(500);
    gla_pool_task *list = NULL;
    gla_pool_shutdown(p, 1, &list);
    int back = count_list(list, 1);
    atomic_store(&g_gate_open, 1);
    gla_pool_wait(p, 0);
    int ran = 0, given = 0, bad = 0;
    for (int i = 0; i < n; i++) {
        int v = atomic_load(&g_runs[i]);
        ran += v == 1;
        given += v == 100;
        bad += v != 1 && v != 100;
    }
    CHECK(bad == 0 && ran + given == n && given == back && ran == 2,
          "ran %d given back %d (list %d) bad %d", ran, given, back, bad);
    gla_pool_destroy(p);

    reset_counts();
    p = gla_pool_create(&c);
    for (int i = 0; i < 50; i++)
        gla_pool_submit(p, &mk(i, 0, 1)->link);
    while (atomic_load(&g_running_now) < 2)
        sleep_us(500);
    list = gla_pool_break(p);
    back = count_list(list, 1);
    CHECK(back == 48, "break gave back %d", back);
    ctask *t = mk(-1, 0, 0);
    CHECK(gla_pool_submit(p, &t->link) == -EPIPE, "submit after break");
    free(t);
    atomic_store(&g_gate_open, 1);
    gla_pool_shutdown(p, 0, NULL);
    gla_pool_wait(p, 0);
    gla_pool_destroy(p);
}

/* 5. enter failing (an initializer): the worker never serves, the pool goes on. */
static void test_enter_failure(void)
{
    reset_counts();
    atomic_store(&g_enter_fail_at, 0);
    gla_pool_config c = base_config(1, 2, 1);
    gla_pool *p = gla_pool_create(&c);
    CHECK(gla_pool_submit(p, &mk(0, 0, 0)->link) == 0, "submit");
    gla_pool_stats s;
    for (int i = 0; i < 2000; i++) {
        gla_pool_get_stats(p, &s);
        if (s.starting == 0)
            break;
        sleep_us(1000);
    }
    CHECK(s.workers == 0 && s.queue_length == 1, "failed worker gone, task kept: w %d q %ld",
          s.workers, s.queue_length);
    CHECK(gla_pool_submit(p, &mk(1, 0, 0)->link) == 0, "second submit starts worker 1");
    gla_pool_shutdown(p, 0, NULL);
    gla_pool_wait(p, 0);
    CHECK(atomic_load(&g_runs[0]) == 1 && atomic_load(&g_runs[1]) == 1, "both ran");
    CHECK(leaves_match(), "leave for every enter");
    gla_pool_destroy(p);
}

/* 6. A scripted policy drives the size through the monitor; windows carry figures. */
static _Atomic int g_policy_calls;
static _Atomic int g_policy_saw_tasks;
static _Atomic int g_policy_bad;
static double script_policy(void *ctx, const gla_window *w, gla_decision *d)
{
    (void)ctx;
    int k = atomic_fetch_add(&g_policy_calls, 1);
    if (w->completed > 0) {
        atomic_fetch_add(&g_policy_saw_tasks, 1);
        if (!(w->task_wall_s > 0 && w->task_cpu_s >= 0 && w->task_wall_s >= w->task_cpu_s * 0.5))
            atomic_fetch_add(&g_policy_bad, 1);
    }
    if (w->window_s <= 0 || w->workers < 0 || w->busy > w->workers || w->queue_length < 0)
        atomic_fetch_add(&g_policy_bad, 1);
    if (!(w->gil_busy < 0)) /* no GIL hook in this pool (gil_wait_known = 0): unknown */
        atomic_fetch_add(&g_policy_bad, 1);
    static const int script[] = {4, 4, 2, 6, 1, 3};
    d->target = script[k % 6];
    d->action = k % 3 == 0 ? GLA_GROW : (k % 3 == 1 ? GLA_SHRINK : GLA_VETO);
    snprintf(d->reason, sizeof d->reason, "script step %d", k);
    return 0.01;
}

static void test_policy(void)
{
    reset_counts();
    atomic_store(&g_policy_calls, 0);
    gla_pool_config c = base_config(1, 8, 1);
    c.policy = script_policy;
    c.first_window_s = 0.01;
    gla_pool *p = gla_pool_create(&c);
    int n = 4000;
    for (int i = 0; i < n; i++)
        gla_pool_submit(p, &mk(i, 100, 0)->link);
    gla_pool_stats s;
    /* The policy runs before its decision is booked: wait for booked windows. */
    for (;;) {
        gla_pool_get_stats(p, &s);
        if (s.windows >= 12)
            break;
        sleep_us(2000);
    }
    uint64_t sum = s.decisions[0] + s.decisions[1] + s.decisions[2] + s.decisions[3];
    CHECK(sum == s.windows && sum >= 12, "decisions %llu windows %llu", (unsigned long long)sum,
          (unsigned long long)s.windows);
    CHECK(strncmp(s.last_reason, "script step", 11) == 0, "reason '%s'", s.last_reason);
    CHECK(s.workers <= 8, "workers %d", s.workers);
    CHECK(atomic_load(&g_policy_saw_tasks) > 0 && atomic_load(&g_policy_bad) == 0,
          "windows with tasks %d, bad windows %d", atomic_load(&g_policy_saw_tasks),
          atomic_load(&g_policy_bad));
    drain_and_check(p, n);
    gla_pool_destroy(p);
}

/* 6b. Liveness: a policy that holds one worker while that worker waits for a task queued
 *     behind it; the pool grows by itself (blocked workers, nothing done, work queued). */
static double hold_one(void *ctx, const gla_window *w, gla_decision *d)
{
    (void)ctx;
    (void)w;
    d->target = 1;
    d->action = GLA_HOLD;
    snprintf(d->reason, sizeof d->reason, "hold one");
    return 0.01;
}

static void test_liveness(void)
{
    reset_counts();
    gla_pool_config c = base_config(1, 8, 1);
    c.policy = hold_one;
    c.first_window_s = 0.01;
    gla_pool *p = gla_pool_create(&c);
    CHECK(gla_pool_submit(p, &mk(0, 0, 1)->link) == 0, "blocked task");
    CHECK(gla_pool_submit(p, &mk(GATE_OPENER, 0, 0)->link) == 0, "opener");
    uint64_t end = gla_now_ns() + 20000000000ull;
    while (!atomic_load(&g_gate_open) && gla_now_ns() < end)
        sleep_us(1000);
    CHECK(atomic_load(&g_gate_open), "the queued opener ran");
    gla_pool_stats s;
    gla_pool_get_stats(p, &s);
    CHECK(s.decisions[GLA_GROW] >= 1, "grow decisions %llu",
          (unsigned long long)s.decisions[GLA_GROW]);
    drain_and_check(p, 1);
    gla_pool_destroy(p);
}

/* 6c. The first window ends once first_window_tasks have finished while tasks wait, long
 *     before its first_window_s; with nothing queued it keeps its length. */
static _Atomic int g_first_calls;
static double first_policy(void *ctx, const gla_window *w, gla_decision *d)
{
    /* the monitor is the only caller: copy, then publish the copy with the count */
    if (atomic_load(&g_first_calls) == 0)
        *(gla_window *)ctx = *w;
    atomic_fetch_add(&g_first_calls, 1);
    d->target = w->target;
    d->action = GLA_HOLD;
    snprintf(d->reason, sizeof d->reason, "hold");
    return 10.0;
}

static void test_first_window(void)
{
    for (int queued = 1; queued >= 0; queued--) {
        reset_counts();
        atomic_store(&g_first_calls, 0);
        gla_window first;
        memset(&first, 0, sizeof first);
        gla_pool_config c = base_config(1, 2, 2);
        c.policy = first_policy;
        c.policy_ctx = &first;
        c.first_window_s = 30.0;
        c.first_window_tasks = 8;
        gla_pool *p = gla_pool_create(&c);
        int n = queued ? 400 : 4; /* 400 x 2 ms on two workers: a queue for 0.4 s */
        for (int i = 0; i < n; i++)
            gla_pool_submit(p, &mk(i, 2000, 0)->link);
        uint64_t end = gla_now_ns() + (queued ? 20000000000ull : 300000000ull);
        while (atomic_load(&g_first_calls) == 0 && gla_now_ns() < end)
            sleep_us(1000);
        if (queued)
            CHECK(atomic_load(&g_first_calls) >= 1 && first.completed >= 8 && first.window_s < 20.0,
                  "first window: calls %d, %.0f tasks in %.3f s", atomic_load(&g_first_calls),
                  first.completed, first.window_s);
        else
            CHECK(atomic_load(&g_first_calls) == 0, "nothing queued: the window ended early");
        drain_and_check(p, n);
        gla_pool_destroy(p);
    }
}

/* 7. Idle workers above min retire after the idle timeout; idle time is accounted. */
static void test_idle_timeout(void)
{
    reset_counts();
    gla_pool_config c = base_config(2, 8, 6);
    c.idle_timeout_s = 0.05;
    gla_pool *p = gla_pool_create(&c);
    for (int i = 0; i < 60; i++)
        gla_pool_submit(p, &mk(i, 2000, 0)->link);
    wait_until(done_and_2, p, 10.0);
    gla_pool_stats s;
    gla_pool_get_stats(p, &s);
    CHECK(s.workers == 2, "idle workers kept: %d (min 2)", s.workers);
    CHECK(s.completed == 60, "completed %llu", (unsigned long long)s.completed);
    gla_pool_shutdown(p, 0, NULL);
    gla_pool_wait(p, 0);
    gla_pool_destroy(p);
}

/* 8. A task that shuts its own pool down and waits for the others. */
static void *self_shutdown_thread(void *arg)
{
    gla_pool *p = arg;
    gla_pool_shutdown(p, 0, NULL);
    gla_pool_wait(p, gla_pool_is_worker(p));
    return NULL;
}

typedef struct {
    gla_pool_task link;
    int id, sleep_us, gated;
    gla_pool *pool;
} stask;

static void h_run_self(void *ctx, void *wdata, gla_pool_task *task)
{
    stask *t = (stask *)task;
    if (t->pool) {
        CHECK(gla_pool_is_worker(t->pool), "is_worker inside a task");
        self_shutdown_thread(t->pool); /* from the worker itself */
    } else {
        h_run(ctx, wdata, task);
        return;
    }
    free(t);
}

static void test_self_shutdown(void)
{
    reset_counts();
    gla_pool_config c = base_config(1, 4, 4);
    c.hooks.run = h_run_self;
    gla_pool *p = gla_pool_create(&c);
    CHECK(!gla_pool_is_worker(p), "main thread is no worker");
    for (int i = 0; i < 100; i++) {
        stask *t = calloc(1, sizeof *t);
        t->id = i;
        t->sleep_us = 100;
        gla_pool_submit(p, &t->link);
    }
    stask *killer = calloc(1, sizeof *killer);
    killer->id = -1;
    killer->pool = p;
    gla_pool_submit(p, &killer->link);
    gla_pool_wait(p, 0); /* returns once all workers, the killer's included, left */
    int bad = not_once(0, 100);
    CHECK(bad == 0, "%d tasks not run exactly once", bad);
    gla_pool_destroy(p);
}

/* Waits up to max_s for pid; kills it when it is still running then. Its wait status,
 * or -1 when it had to be killed. */
static int wait_child(pid_t pid, double max_s)
{
    uint64_t end = gla_now_ns() + (uint64_t)(max_s * 1e9);
    int status = 0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        if (r < 0)
            return -1;
        if (gla_now_ns() >= end) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        sleep_us(2000);
    }
}

static int one_completed(gla_pool *p)
{
    gla_pool_stats s;
    gla_pool_get_stats(p, &s);
    return s.completed == 1;
}

/* 9. fork(): the child gets an empty, usable pool. */
static void test_fork(void)
{
    reset_counts();
    /* A pool without policy whose finished tasks left a credit (a completion no submit
     * matched): in the child, with no worker, its first submit must still start one. */
    gla_pool_config cd = base_config(1, 1, 1);
    gla_pool *d = gla_pool_create(&cd);
    for (int i = 20; i < 25; i++) {
        gla_pool_submit(d, &mk(i, 0, 0)->link);
        while (atomic_load(&g_runs[i]) == 0)
            sleep_us(200);
    }
    gla_pool_config c = base_config(1, 2, 2);
    gla_pool *p = gla_pool_create(&c);
    for (int i = 0; i < 20; i++)
        gla_pool_submit(p, &mk(i, 0, 1)->link);
    while (atomic_load(&g_running_now) < 2)
        sleep_us(500);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        gla_pool_task *list = gla_pool_reset_after_fork(p);
        int back = count_list(list, 1);
        gla_pool_stats s;
        gla_pool_get_stats(p, &s);
        int ok = back == 18 && s.workers == 0 && s.queue_length == 0;
        ok &= gla_pool_reset_after_fork(d) == NULL;
        ok &= gla_pool_submit(d, &mk(150, 0, 0)->link) == 0;
        wait_until(one_completed, d, 10.0);
        ok &= one_completed(d);
        gla_pool_shutdown(d, 0, NULL);
        gla_pool_wait(d, 0);
        gla_pool_destroy(d);
        atomic_store(&g_gate_open, 1);
        for (int i = 100; i < 150; i++)
            ok &= gla_pool_submit(p, &mk(i, 0, 0)->link) == 0;
        gla_pool_shutdown(p, 0, NULL);
        gla_pool_wait(p, 0);
        for (int i = 100; i < 150; i++)
            ok &= atomic_load(&g_runs[i]) == 1;
        gla_pool_destroy(p);
        _exit(ok ? 0 : 3);
    }
    int status = wait_child(pid, 30.0);
    CHECK(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "child status %d (-1: killed after 30 s)", status);
    atomic_store(&g_gate_open, 1);
    gla_pool_shutdown(p, 0, NULL);
    gla_pool_wait(p, 0);
    gla_pool_shutdown(d, 0, NULL);
    gla_pool_wait(d, 0);
    int bad = not_once(0, 25);
    CHECK(bad == 0, "parent's tasks ran exactly once: %d bad", bad);
    gla_pool_destroy(p);
    gla_pool_destroy(d);
}

/* 9b. fork() from inside a task: in the child the forking worker stays its pool's worker
 * (its struct survives the reset of every pool, whatever the order), its task returns to
 * its loop, and it serves the pool there; the other pool and a new one work too. */
#define FORKER (-3)
static gla_pool *g_fork_a, *g_fork_b;
static _Atomic int g_fork_go;
static _Atomic int g_fork_pid;
static int g_child_ok;

static int a_back_idle(gla_pool *p)
{
    gla_pool_stats s;
    gla_pool_get_stats(p, &s);
    return s.completed == 1 && s.idle == 1 && s.workers == 1;
}

static int child_stats_ok(gla_pool *p, int workers, int busy)
{
    gla_pool_stats s;
    gla_pool_get_stats(p, &s);
    return s.workers == workers && s.busy == busy && s.starting == 0 && s.queue_length == 0 &&
           s.submitted == (uint64_t)busy && s.completed == 0;
}

/* The child's main work, in a thread of its own: the forking worker is back in its loop. */
static void *fork_child_main(void *arg)
{
    (void)arg;
    int ok = g_child_ok;
    wait_until(a_back_idle, g_fork_a, 10.0);
    ok &= a_back_idle(g_fork_a);
    for (int i = 200; i < 250; i++)
        ok &= gla_pool_submit(g_fork_a, &mk(i, 0, 0)->link) == 0;
    for (int i = 250; i < 260; i++)
        ok &= gla_pool_submit(g_fork_b, &mk(i, 0, 0)->link) == 0;
    gla_pool_config c = base_config(1, 2, 2);
    gla_pool *fresh = gla_pool_create(&c);
    ok &= fresh != NULL;
    for (int i = 300; fresh && i < 350; i++)
        ok &= gla_pool_submit(fresh, &mk(i, 0, 0)->link) == 0;
    if (fresh) {
        gla_pool_shutdown(fresh, 0, NULL);
        gla_pool_wait(fresh, 0);
        gla_pool_destroy(fresh);
    }
    gla_pool *both[2] = {g_fork_a, g_fork_b};
    for (int k = 0; k < 2; k++) {
        gla_pool_shutdown(both[k], 0, NULL);
        gla_pool_wait(both[k], 0);
        gla_pool_destroy(both[k]);
    }
    for (int i = 200; i < 260; i++)
        ok &= atomic_load(&g_runs[i]) == 1;
    for (int i = 300; i < 350; i++)
        ok &= atomic_load(&g_runs[i]) == 1;
    _exit(ok ? 0 : 3);
    return NULL;
}

static void fork_run(void *ctx, void *wdata, gla_pool_task *task)
{
    if (((ctask *)task)->id != FORKER) {
        h_run(ctx, wdata, task);
        return;
    }
    free(task);
    while (!atomic_load(&g_fork_go))
        sleep_us(200);
    fflush(NULL);
    pid_t pid = fork();
    if (pid != 0) {
        atomic_store(&g_fork_pid, pid > 0 ? pid : -1);
        return;
    }
    /* The child, in the forking worker: what an at-fork handler does, in any pool order. */
    gla_pool_task *back_b = gla_pool_reset_after_fork(g_fork_b);
    gla_pool_task *back_a = gla_pool_reset_after_fork(g_fork_a);
    int ok = count_list(back_b, 1) == 0 && count_list(back_a, 1) == 18;
    ok &= gla_pool_is_worker(g_fork_a) && !gla_pool_is_worker(g_fork_b);
    ok &= child_stats_ok(g_fork_a, 1, 1) && child_stats_ok(g_fork_b, 0, 0);
    g_child_ok = ok;
    pthread_t th;
    if (pthread_create(&th, NULL, fork_child_main, NULL) != 0)
        _exit(4);
    pthread_detach(th);
    /* returns: the task ends, the worker goes back to its loop */
}

static void test_fork_in_task(void)
{
    reset_counts();
    atomic_store(&g_fork_go, 0);
    atomic_store(&g_fork_pid, 0);
    gla_pool_config cb = base_config(1, 1, 1);
    g_fork_b = gla_pool_create(&cb);
    gla_pool_config ca = base_config(1, 2, 2);
    ca.hooks.run = fork_run;
    g_fork_a = gla_pool_create(&ca);
    gla_pool_submit(g_fork_b, &mk(0, 0, 1)->link);
    while (atomic_load(&g_running_now) < 1)
        sleep_us(500);
    gla_pool_submit(g_fork_a, &mk(1, 0, 1)->link);
    while (atomic_load(&g_running_now) < 2)
        sleep_us(500);
    gla_pool_submit(g_fork_a, &mk(FORKER, 0, 0)->link);
    for (int i = 2; i < 20; i++) /* queued behind the forker: the child gets them back */
        gla_pool_submit(g_fork_a, &mk(i, 0, 0)->link);
    atomic_store(&g_fork_go, 1);
    uint64_t end = gla_now_ns() + 10000000000ull;
    while (atomic_load(&g_fork_pid) == 0 && gla_now_ns() < end)
        sleep_us(500);
    int pid = atomic_load(&g_fork_pid);
    CHECK(pid > 0, "fork in the task: %d", pid);
    if (pid > 0) {
        int status = wait_child(pid, 30.0);
        CHECK(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "child status %d (-1: killed after 30 s)", status);
    }
    atomic_store(&g_gate_open, 1);
    gla_pool_shutdown(g_fork_a, 0, NULL);
    gla_pool_shutdown(g_fork_b, 0, NULL);
    gla_pool_wait(g_fork_a, 0);
    gla_pool_wait(g_fork_b, 0);
    int bad = not_once(0, 20);
    CHECK(bad == 0, "parent's tasks ran exactly once: %d bad", bad);
    gla_pool_destroy(g_fork_a);
    gla_pool_destroy(g_fork_b);
    g_fork_a = g_fork_b = NULL;
}

/* 10. Bad configuration. */
static void test_bad_config(void)
{
    gla_pool_config c = base_config(0, 4, 1);
    CHECK(gla_pool_create(&c) == NULL && errno == EINVAL, "min 0");
    c = base_config(3, 2, 1);
    CHECK(gla_pool_create(&c) == NULL && errno == EINVAL, "min > max");
}

/* 11. gla_pool_take: matching queued tasks leave the queue (in order), the others run;
 * nothing runs twice, a running task is never taken. */
static int take_odd(void *ctx, const gla_pool_task *t)
{
    (void)ctx;
    const ctask *c = (const ctask *)t;
    return c->id > 0 && (c->id & 1);
}

static void test_take(void)
{
    reset_counts();
    gla_pool_config c = base_config(1, 1, 1);
    gla_pool *p = gla_pool_create(&c);
    CHECK(gla_pool_submit(p, &mk(0, 0, 1)->link) == 0, "gated first task");
    for (int i = 1; i < 200; i++)
        CHECK(gla_pool_submit(p, &mk(i, 0, 0)->link) == 0, "submit %d", i);
    wait_until(running_one, p, 5.0);
    gla_pool_task *list = gla_pool_take(p, take_odd, NULL);
    int n = 0, ordered = 1, last = -1;
    while (list) {
        ctask *t = (ctask *)list;
        list = list->next;
        ordered &= t->id > last && (t->id & 1);
        last = t->id;
        n++;
        free(t);
    }
    CHECK(n == 100 && ordered, "took %d (100 odd ids expected), in order %d", n, ordered);
    gla_pool_stats s;
    gla_pool_get_stats(p, &s);
    CHECK(s.taken == 100 && s.queue_length == 99, "taken %llu queue %ld",
          (unsigned long long)s.taken, s.queue_length);
    CHECK(gla_pool_take(p, take_odd, NULL) == NULL, "nothing left to take");
    atomic_store(&g_gate_open, 1);
    gla_pool_shutdown(p, 0, NULL);
    gla_pool_wait(p, 0);
    int bad = 0;
    for (int i = 0; i < 200; i++)
        bad += atomic_load(&g_runs[i]) != ((i > 0 && (i & 1)) ? 0 : 1);
    CHECK(bad == 0, "%d tasks ran a wrong number of times", bad);
    gla_pool_destroy(p);
}

/* 13. Workers start a few at a time: never more than start_burst in enter at once, yet
 * every one owed starts; an enter that waits for its peers (a barrier in an initializer)
 * gets them all once it says it is through (gla_pool_worker_entered). */
static _Atomic int g_in_enter, g_in_enter_max, g_at_barrier, g_barrier_timeouts;
static int g_barrier_n;

static int slow_enter(void *ctx, void **wdata, unsigned index)
{
    note_max(&g_in_enter_max, atomic_fetch_add(&g_in_enter, 1) + 1);
    sleep_us(2000); /* waiting for the interpreter lock */
    atomic_fetch_sub(&g_in_enter, 1);
    return h_enter(ctx, wdata, index);
}

static int barrier_enter(void *ctx, void **wdata, unsigned index)
{
    gla_pool_worker_entered();
    gla_pool_worker_entered(); /* a second call is a no-op */
    atomic_fetch_add(&g_at_barrier, 1);
    uint64_t end = gla_now_ns() + 10000000000ull;
    while (atomic_load(&g_at_barrier) < g_barrier_n && gla_now_ns() < end)
        sleep_us(500);
    if (atomic_load(&g_at_barrier) < g_barrier_n)
        atomic_fetch_add(&g_barrier_timeouts, 1);
    return h_enter(ctx, wdata, index);
}

static int workers_24(gla_pool *p)
{
    return stats_workers(p) >= 24;
}

static void test_start_burst(void)
{
    reset_counts();
    atomic_store(&g_in_enter, 0);
    atomic_store(&g_in_enter_max, 0);
    gla_pool_config c = base_config(1, 24, 24);
    c.hooks.enter = slow_enter;
    gla_pool *p = gla_pool_create(&c);
    for (int i = 0; i < 24; i++)
        CHECK(gla_pool_submit(p, &mk(i, 0, 1)->link) == 0, "submit %d", i);
    wait_until(workers_24, p, 20.0);
    gla_pool_stats s;
    gla_pool_get_stats(p, &s);
    CHECK(s.workers == 24 && s.starting == 0, "all owed started: workers %d starting %d", s.workers,
          s.starting);
    int max = atomic_load(&g_in_enter_max);
    CHECK(max >= 1 && max <= GLA_POOL_START_BURST, "at most %d in enter at once: %d",
          GLA_POOL_START_BURST, max);
    atomic_store(&g_gate_open, 1);
    drain_and_check(p, 24);
    CHECK(leaves_match(), "leave for every enter");
    gla_pool_destroy(p);

    reset_counts();
    atomic_store(&g_at_barrier, 0);
    atomic_store(&g_barrier_timeouts, 0);
    g_barrier_n = 6;
    c = base_config(1, 6, 6);
    c.start_burst = 1;
    c.hooks.enter = barrier_enter;
    p = gla_pool_create(&c);
    for (int i = 0; i < 6; i++)
        CHECK(gla_pool_submit(p, &mk(i, 0, 0)->link) == 0, "submit %d", i);
    drain_and_check(p, 6);
    CHECK(atomic_load(&g_at_barrier) == 6 && atomic_load(&g_barrier_timeouts) == 0,
          "6 workers met at the barrier: %d, %d timed out", atomic_load(&g_at_barrier),
          atomic_load(&g_barrier_timeouts));
    CHECK(leaves_match(), "leave for every enter");
    gla_pool_destroy(p);
}

static _Atomic int g_hammer;
static void *hammer_stats(void *arg)
{
    gla_pool *p = arg;
    while (atomic_load(&g_hammer)) {
        gla_pool_stats s;
        gla_pool_get_stats(p, &s);
    }
    return NULL;
}
static int running_three(gla_pool *p)
{
    (void)p;
    return atomic_load(&g_running_now) == 3;
}
static int total_is(int n)
{
    uint64_t end = gla_now_ns() + 5000000000ull;
    while (atomic_load(&g_total) < n && gla_now_ns() < end)
        sleep_us(200);
    return atomic_load(&g_total) == n;
}

/* 15. A task that blocks does not hold up the tasks queued behind it while workers idle:
 * three idle workers, three tasks that block until a gate opens, submitted at once while
 * another thread keeps taking the pool's mutex (so a woken worker often finds it busy
 * when it would wake the next one) — all three run at once, every time. */
static void test_blocking_task_passes_the_wake(void)
{
    reset_counts();
    gla_pool_config c = base_config(3, 3, 3);
    gla_pool *p = gla_pool_create(&c);
    CHECK(p != NULL, "create");
    if (!p)
        return;
    atomic_store(&g_hammer, 1);
    pthread_t th;
    int hammering = pthread_create(&th, NULL, hammer_stats, p) == 0;
    int stuck = 0, n = 0;
    for (int trial = 0; trial < 300 && !stuck; trial++) {
        sleep_us(2000); /* the workers back on the idle stack */
        atomic_store(&g_gate_open, 0);
        for (int i = 0; i < 3; i++)
            CHECK(gla_pool_submit(p, &mk(-1, 0, 1)->link) == 0, "submit");
        wait_until(running_three, p, 2.0);
        stuck = !running_three(p);
        atomic_store(&g_gate_open, 1);
        n += 3;
        CHECK(total_is(n), "%d of %d tasks done", atomic_load(&g_total), n);
    }
    atomic_store(&g_hammer, 0);
    if (hammering)
        pthread_join(th, NULL);
    CHECK(!stuck, "a queued task waited for a blocking one while a worker idled (%d tasks)", n);
    gla_pool_shutdown(p, 0, NULL);
    gla_pool_wait(p, 0);
    CHECK(leaves_match(), "enter %d leave %d", atomic_load(&g_enter), atomic_load(&g_leave));
    CHECK(gla_pool_claim_drained(p) == 1, "drained");
    gla_pool_destroy(p);
}

int main(void)
{
    struct {
        const char *name;
        void (*fn)(void);
    } tests[] = {
        {"exactly_once", test_exactly_once},
        {"grow_retire", test_grow_retire},
        {"start_failures", test_start_failures},
        {"cancel_and_break", test_cancel_and_break},
        {"enter_failure", test_enter_failure},
        {"policy", test_policy},
        {"liveness", test_liveness},
        {"first_window", test_first_window},
        {"idle_timeout", test_idle_timeout},
        {"self_shutdown", test_self_shutdown},
        {"fork", test_fork},
        {"fork_in_task", test_fork_in_task},
        {"bad_config", test_bad_config},
        {"take", test_take},
        {"start_burst", test_start_burst},
        {"blocking_task_passes_the_wake", test_blocking_task_passes_the_wake},
    };
    int passed = 0, failed = 0;
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        int before = g_failed;
        tests[i].fn();
        int ok = g_failed == before;
        printf("%s test_pool.%s\n", ok ? "ok  " : "FAIL", tests[i].name);
        fflush(stdout);
        if (ok)
            passed++;
        else
            failed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
