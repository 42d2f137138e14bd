/* test_ledger.c — the ledger and the GOT hook, without Python.
 *
 * The hook is installed into libwaiter.so (lib_waiter.c), which calls the pthread and
 * semaphore functions through its own PLT just as libpython does. */
#include "gilhook.h"
#include "ledger.h"
#include "procstat.h"
#include "lib_waiter.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

static uint64_t states_sum(const gla_sample *s)
{
    return s->cpu_ns + s->runq_ns + s->gil_wait_ns + s->lock_wait_ns + s->idle_ns + s->io_wait_ns;
}

/* ---- partition ------------------------------------------------------------------- */

static uint64_t rnd(uint64_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

static void test_partition_random(void)
{
    uint64_t seed = 88172645463325252ull;
    for (int i = 0; i < 200000; i++) {
        gla_sample s = {0};
        memset(&s, 0, sizeof s);
        s.wall_ns = rnd(&seed) % (10 * 1000 * MS);
        uint64_t span = s.wall_ns + 1 + s.wall_ns / 4; /* inputs may overshoot wall */
        s.raw_cpu_ns = rnd(&seed) % span / 2;
        s.raw_runq_ns = rnd(&seed) % span / 4;
        s.raw_gil_wait_ns = rnd(&seed) % span / 2;
        s.raw_lock_wait_ns = rnd(&seed) % span / 4;
        s.raw_idle_ns = rnd(&seed) % span / 4;
        s.gil_tail_ns = rnd(&seed) % (s.raw_gil_wait_ns + 1);
        s.lock_cpu_ns = rnd(&seed) % (s.raw_cpu_ns + 1);
        s.lock_runq_ns = rnd(&seed) % (s.raw_runq_ns + 1);
        if (i % 2) { /* with exact take samples (their ratio may be anything) */
            s.gil_takes = rnd(&seed) % 1000;
            s.take_samples = 1 + rnd(&seed) % 100;
            s.take_sample_cpu_ns = rnd(&seed) % (100 * MS);
            s.take_sample_runq_ns = rnd(&seed) % (100 * MS);
            s.take_sample_tail_ns = rnd(&seed) % (100 * MS);
            s.switch_tail_ns = rnd(&seed) % (s.raw_gil_wait_ns + 1);
            s.gil_drops = rnd(&seed) % 1000;
            s.drop_samples = 1 + rnd(&seed) % 50;
            s.drop_sample_runq_ns = rnd(&seed) % (10 * MS);
        }
        gla_sample_finish(&s);
        CHECK(states_sum(&s) == s.wall_ns, "case %d: states %llu != wall %llu", i,
              (unsigned long long)states_sum(&s), (unsigned long long)s.wall_ns);
        /* Only the hand-off's run-queue time may move into gil_wait. */
        CHECK(s.cpu_ns <= s.raw_cpu_ns && s.runq_ns <= s.raw_runq_ns &&
                  s.gil_wait_ns + s.runq_ns <= s.raw_gil_wait_ns + s.raw_runq_ns &&
                  s.lock_wait_ns <= s.raw_lock_wait_ns && s.idle_ns <= s.raw_idle_ns,
              "case %d: a state grew in the partition", i);
        if (g_failures > 10)
            return;
    }
}

static void test_partition_cases(void)
{
    /* 4 CPU-bound threads on one core: 25 % cpu, 75 % GIL wait, a little run-queue delay
     * inside the waits: nothing left for I/O, nothing counted twice. */
    gla_sample s = {0};
    memset(&s, 0, sizeof s);
    s.wall_ns = 1000 * MS;
    s.raw_cpu_ns = 250 * MS;
    s.raw_runq_ns = 10 * MS;
    s.raw_gil_wait_ns = 750 * MS;
    s.gil_tail_ns = 10 * MS;
    gla_sample_finish(&s);
    CHECK(s.io_wait_ns == 0 && s.gil_wait_ns == 750 * MS && s.cpu_ns == 250 * MS && s.runq_ns == 0,
          "cpu-bound: io=%llu gil=%llu cpu=%llu runq=%llu", (unsigned long long)s.io_wait_ns,
          (unsigned long long)s.gil_wait_ns, (unsigned long long)s.cpu_ns,
          (unsigned long long)s.runq_ns);
    CHECK(s.overlap_ns == 10 * MS, "overlap %llu", (unsigned long long)s.overlap_ns);

    /* Sampled takes: 4 ms of run-queue per 8 ms of tail in the samples, this thread had
     * 100 ms of tails: 50 ms of its 80 ms run-queue time lay inside GIL waits. */
    memset(&s, 0, sizeof s);
    s.wall_ns = 1000 * MS;
    s.raw_cpu_ns = 100 * MS;
    s.raw_runq_ns = 80 * MS;
    s.raw_gil_wait_ns = 400 * MS;
    s.gil_tail_ns = 100 * MS;
    s.gil_takes = 50;
    s.take_samples = 10;
    s.take_sample_runq_ns = 4 * MS;
    s.take_sample_tail_ns = 8 * MS;
    s.take_sample_cpu_ns = 1 * MS; /* 0.1 ms per take: 5 ms for 50 takes */
    gla_sample_finish(&s);
    CHECK(s.runq_ns == 30 * MS && s.cpu_ns == 95 * MS && s.io_wait_ns == 475 * MS,
          "sampled: runq=%llu cpu=%llu io=%llu", (unsigned long long)s.runq_ns,
          (unsigned long long)s.cpu_ns, (unsigned long long)s.io_wait_ns);

    /* Sampled drops: 0.2 ms of run-queue per drop (preempted by the woken waiter), 100
     * drops: 20 ms of the remaining 30 ms run-queue time is the hand-off: GIL wait. */
    s.gil_drops = 100;
    s.drop_samples = 5;
    s.drop_sample_runq_ns = 1 * MS;
    gla_sample_finish(&s);
    CHECK(s.runq_ns == 10 * MS && s.gil_wait_ns == 420 * MS && s.io_wait_ns == 475 * MS,
          "drops: runq=%llu gil=%llu io=%llu", (unsigned long long)s.runq_ns,
          (unsigned long long)s.gil_wait_ns, (unsigned long long)s.io_wait_ns);

    /* Sleeper with a lock wait whose inner run-queue delay is known exactly. */
    memset(&s, 0, sizeof s);
    s.wall_ns = 1000 * MS;
    s.raw_cpu_ns = 10 * MS;
    s.raw_runq_ns = 30 * MS;
    s.raw_lock_wait_ns = 200 * MS;
    s.lock_runq_ns = 20 * MS;
    s.lock_cpu_ns = 1 * MS;
    gla_sample_finish(&s);
    CHECK(s.runq_ns == 10 * MS && s.cpu_ns == 9 * MS && s.lock_wait_ns == 200 * MS &&
              s.io_wait_ns == 781 * MS,
          "lock case: runq=%llu cpu=%llu io=%llu", (unsigned long long)s.runq_ns,
          (unsigned long long)s.cpu_ns, (unsigned long long)s.io_wait_ns);
}

/* ---- registration, exit, waits in progress ---------------------------------------- */

typedef struct {
    pid_t tid;
    int sleep_ms;
} worker_arg;

static void *registered_worker(void *p)
{
    worker_arg *arg = p;
    gla_thread *t = gla_ledger_self();
    arg->tid = my_tid();
    uint64_t t0 = gla_now_ns();
    gla_ledger_wait_begin(t, GLA_LOCK_WAIT, t0);
    sleep_ms(arg->sleep_ms);
    gla_ledger_wait_end(t, gla_now_ns());
    sleep_ms(arg->sleep_ms); /* plain "I/O" */
    return NULL;
}

static void test_exit_keeps_totals(void)
{
    enum { N = 8 };
    pthread_t th[N];
    worker_arg args[N];
    gla_sample before;
    gla_ledger_exited(&before);
    for (int i = 0; i < N; i++) {
        args[i].sleep_ms = 20;
        CHECK(pthread_create(&th[i], NULL, registered_worker, &args[i]) == 0, "create");
    }
    for (int i = 0; i < N; i++)
        pthread_join(th[i], NULL);
    sleep_ms(5); /* key destructors run before the kernel task ends */
    for (int i = 0; i < N; i++) {
        gla_sample s = {0};
        int found = find_sample(args[i].tid, &s);
        CHECK(found, "thread %d not in the ledger", (int)args[i].tid);
        if (!found)
            continue;
        CHECK(!s.alive && s.registered, "alive=%d registered=%d", s.alive, s.registered);
        CHECK(s.lock_wait_ns >= 19 * MS && s.lock_wait_ns < 500 * MS, "lock %llu",
              (unsigned long long)s.lock_wait_ns);
        CHECK(s.io_wait_ns >= 15 * MS, "io %llu", (unsigned long long)s.io_wait_ns);
        CHECK(states_sum(&s) == s.wall_ns, "sum");
    }
    gla_sample after;
    gla_ledger_exited(&after);
    CHECK(after.raw_lock_wait_ns - before.raw_lock_wait_ns >= N * 19 * MS,
          "exited aggregate lock %llu",
          (unsigned long long)(after.raw_lock_wait_ns - before.raw_lock_wait_ns));
}

static sem_t g_ready, g_release;

static void *long_waiter(void *p)
{
    pid_t *tid = p;
    gla_thread *t = gla_ledger_self();
    *tid = my_tid();
    gla_ledger_wait_begin(t, GLA_IDLE, gla_now_ns());
    sem_post(&g_ready);
    sem_wait(&g_release);
    gla_ledger_wait_end(t, gla_now_ns());
    return NULL;
}

static void test_wait_in_progress(void)
{
    pid_t tid = 0;
    pthread_t th;
    sem_init(&g_ready, 0, 0);
    sem_init(&g_release, 0, 0);
    pthread_create(&th, NULL, long_waiter, &tid);
    sem_wait(&g_ready);
    gla_sample a, b;
    find_sample(tid, &a);
    sleep_ms(30);
    find_sample(tid, &b);
    CHECK(b.raw_idle_ns - a.raw_idle_ns >= 29 * MS, "in-progress idle grew by %llu",
          (unsigned long long)(b.raw_idle_ns - a.raw_idle_ns));
    sem_post(&g_release);
    pthread_join(th, NULL);
    sem_destroy(&g_ready);
    sem_destroy(&g_release);
}

/* ---- the hook --------------------------------------------------------------------- */

/* CPython's GIL state (gil_layout.h), to stand in for the GIL. */
static gla_gil_state g_fake_gil = {5000,
                                   NULL,
                                   0,
                                   0,
                                   PTHREAD_COND_INITIALIZER,
                                   PTHREAD_MUTEX_INITIALIZER,
                                   PTHREAD_COND_INITIALIZER,
                                   PTHREAD_MUTEX_INITIALIZER};
#define g_gil (g_fake_gil.cond)
static pthread_mutex_t g_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_other = PTHREAD_COND_INITIALIZER;

typedef struct {
    pthread_cond_t *cond;
    int ms;
    pid_t tid;
    int registered;
} cond_arg;

static void *cond_waiter(void *p)
{
    cond_arg *arg = p;
    arg->tid = my_tid();
    pthread_mutex_lock(&g_mutex);
    int rc;
    do {
        rc = waiter_cond_timedwait_ms(arg->cond, &g_mutex, arg->ms);
    } while (rc == 0); /* spurious wake-ups: wait out the whole timeout */
    pthread_mutex_unlock(&g_mutex);
    gla_sample s = {0};
    find_sample(arg->tid, &s);
    arg->registered = s.registered;
    return NULL;
}

static uint64_t gil_wait_of_waiter(pthread_cond_t *cond, int ms, int via_hooked_create,
                                   int *registered)
{
    pthread_t th;
    cond_arg arg = {cond, ms, 0, 0};
    if (via_hooked_create)
        waiter_thread_create(&th, cond_waiter, &arg);
    else
        pthread_create(&th, NULL, cond_waiter, &arg);
    pthread_join(th, NULL);
    sleep_ms(2);
    gla_sample s = {0};
    if (!find_sample(arg.tid, &s))
        return (uint64_t)-1;
    if (registered)
        *registered = arg.registered;
    return s.raw_gil_wait_ns;
}

static sem_t g_sem;
static void *sem_blocker(void *p)
{
    pid_t *tid = p;
    *tid = my_tid();
    waiter_sem_wait(&g_sem);
    return NULL;
}

static void test_hook(void)
{
    const void *anchor = (const void *)waiter_anchor;
    CHECK(gla_hook_install(anchor) == 0, "install");
    gla_hook_status st;
    gla_hook_get_status(&st);
    CHECK(st.installed && st.slots_cond >= 1 && st.slots_sem >= 1 && st.slots_create >= 1,
          "slots cond=%d sem=%d create=%d", st.slots_cond, st.slots_sem, st.slots_create);
    CHECK(strstr(st.object, "libwaiter") != NULL, "patched object %s", st.object);
    CHECK(gla_hook_install(anchor) == 0, "second install is a no-op");
    gla_hook_status st2;
    gla_hook_get_status(&st2);
    CHECK(st2.slots_cond == st.slots_cond && st2.slots_sem == st.slots_sem, "idempotent");

    /* Before the GIL is known no condition wait counts. */
    uint64_t none = gil_wait_of_waiter(&g_gil, 20, 0, NULL);
    CHECK(none == 0, "unknown GIL counted %llu", (unsigned long long)none);

    gla_hook_set_gil(&g_gil);
    int registered = 0;
    uint64_t gil = gil_wait_of_waiter(&g_gil, 30, 1, &registered);
    CHECK(gil >= 29 * MS && gil < 1000 * MS, "GIL wait %llu", (unsigned long long)gil);
    CHECK(registered, "thread created through the hooked pthread_create registered");
    uint64_t other = gil_wait_of_waiter(&g_other, 20, 0, NULL);
    CHECK(other == 0, "other condition counted %llu", (unsigned long long)other);

    /* Layout checks and the switch counter read through the calibrated address. */
    CHECK(gla_gil_layout_ok(&g_gil, 5000, NULL, NULL), "layout accepted");
    CHECK(!gla_gil_layout_ok(&g_gil, 4000, NULL, NULL), "wrong interval rejected");
    CHECK(!gla_gil_layout_ok(&g_gil, 5000, &g_other, &g_other + 1), "outside bounds rejected");
    g_fake_gil.switch_number = 7;
    CHECK(gla_gil_switches() == 7, "switch counter %lld", gla_gil_switches());

    /* Held time: a take (mutex locked with the GIL free) to a drop (signal). */
    gla_thread *me_gil = gla_ledger_self();
    uint64_t held0 = gla_ledger_wait(me_gil, GLA_GIL_HELD);
    waiter_mutex_lock(&g_fake_gil.mutex); /* free: taken now */
    g_fake_gil.locked = 1;
    pthread_mutex_unlock(&g_fake_gil.mutex);
    uint64_t live0 = gla_hook_self_gil_held_ns();
    sleep_ms(20);
    uint64_t live = gla_hook_self_gil_held_ns() - live0;
    CHECK(live >= 19 * MS, "held so far (in progress) %llu", (unsigned long long)live);
    uint64_t seen = held_from_other_thread(me_gil) - held0;
    CHECK(seen >= 19 * MS && seen < 500 * MS, "held so far, seen from another thread %llu",
          (unsigned long long)seen);
    waiter_mutex_lock(&g_fake_gil.mutex); /* held: a drop, not a take */
    g_fake_gil.locked = 0;
    waiter_cond_signal(&g_gil);
    pthread_mutex_unlock(&g_fake_gil.mutex);
    uint64_t held = gla_ledger_wait(me_gil, GLA_GIL_HELD) - held0;
    CHECK(held >= 19 * MS && held < 500 * MS, "GIL held %llu", (unsigned long long)held);
    CHECK(held >= seen, "held %llu, less than seen in progress %llu", (unsigned long long)held,
          (unsigned long long)seen);
    sleep_ms(5);
    CHECK(held_from_other_thread(me_gil) == gla_ledger_wait(me_gil, GLA_GIL_HELD),
          "a holding still open after the drop");
    CHECK(gla_hook_gil_held_ns(NULL, gla_now_ns()) == 0, "no record: 0");

    /* A semaphore wait that blocks counts as a lock wait. */
    sem_init(&g_sem, 0, 0);
    pid_t tid = 0;
    pthread_t th;
    pthread_create(&th, NULL, sem_blocker, &tid);
    sleep_ms(30);
    sem_post(&g_sem);
    pthread_join(th, NULL);
    gla_sample s = {0};
    CHECK(find_sample(tid, &s) && s.raw_lock_wait_ns >= 25 * MS, "lock wait %llu",
          (unsigned long long)s.raw_lock_wait_ns);
    /* An uncontended one costs nothing and counts nothing. */
    sem_post(&g_sem);
    gla_thread *me = gla_ledger_self();
    uint64_t lock0 = gla_ledger_wait(me, GLA_LOCK_WAIT);
    waiter_sem_wait(&g_sem);
    CHECK(gla_ledger_wait(me, GLA_LOCK_WAIT) == lock0, "uncontended acquire counted");
    sem_destroy(&g_sem);

    CHECK(gla_hook_uninstall() == 0, "uninstall");
    uint64_t after = gil_wait_of_waiter(&g_gil, 20, 0, NULL);
    CHECK(after == 0, "counted after uninstall: %llu", (unsigned long long)after);
    gla_hook_get_status(&st);
    CHECK(!st.installed, "status after uninstall");

    setenv("GIL_ADAPT_HOOK", "0", 1);
    CHECK(gla_hook_install(anchor) == -ECANCELED, "GIL_ADAPT_HOOK=0 refuses");
    unsetenv("GIL_ADAPT_HOOK");
    CHECK(gla_hook_install(anchor) == 0, "reinstall");
    CHECK(gla_hook_install(NULL) == 0, "installed: anchor ignored");
    gla_hook_uninstall();
    CHECK(gla_hook_install((const void *)1) == -ENOENT, "no object holds the anchor");
    gla_hook_set_gil(NULL);
}

/* Waiter thinning: with keep = 2, of 8 waiters arriving together on the GIL's condition
 * two wait the interpreter's interval and six are stretched x20 (each stretched wait
 * counted); a signal still wakes a stretched waiter at once; the count of short waiters
 * returns to zero (a second round stretches six again); keep = 0 stretches none. */
static struct {
    unsigned long interval;
    void *last_holder;
    int locked;
    unsigned long switch_number;
    pthread_cond_t cond;
    pthread_mutex_t mutex;
    pthread_cond_t switch_cond;
    pthread_mutex_t switch_mutex;
} g_mono_gil = {5000,
                NULL,
                1,
                0,
                PTHREAD_COND_INITIALIZER,
                PTHREAD_MUTEX_INITIALIZER,
                PTHREAD_COND_INITIALIZER,
                PTHREAD_MUTEX_INITIALIZER};
#define CALM_WAITERS 8
static pthread_barrier_t g_calm_barrier;
typedef struct {
    int rc;
    uint64_t waited_ns;
} calm_arg;

static void *calm_waiter(void *p)
{
    calm_arg *a = p;
    pthread_barrier_wait(&g_calm_barrier);
    pthread_mutex_lock(&g_mono_gil.mutex);
    uint64_t t0 = gla_now_ns();
    a->rc = waiter_cond_timedwait_mono_ms(&g_mono_gil.cond, &g_mono_gil.mutex, 50);
    a->waited_ns = gla_now_ns() - t0;
    pthread_mutex_unlock(&g_mono_gil.mutex);
    return NULL;
}

/* Runs a round; returns how many waits were stretched; *short_n = waits that timed out
 * after the interval (the signal comes at 300 ms, before any stretched deadline). */
static int calm_round(int keep, int *short_n, int *woken_n)
{
    uint64_t stretched0 = 0, stretched1 = 0;
    gla_hook_set_calm(keep);
    gla_hook_calm(&stretched0);
    pthread_t th[CALM_WAITERS];
    calm_arg args[CALM_WAITERS];
    memset(args, 0, sizeof args);
    pthread_barrier_init(&g_calm_barrier, NULL, CALM_WAITERS + 1);
    for (int i = 0; i < CALM_WAITERS; i++)
        pthread_create(&th[i], NULL, calm_waiter, &args[i]);
    pthread_barrier_wait(&g_calm_barrier);
    sleep_ms(300);
    pthread_mutex_lock(&g_mono_gil.mutex);
    pthread_cond_broadcast(&g_mono_gil.cond);
    pthread_mutex_unlock(&g_mono_gil.mutex);
    *short_n = *woken_n = 0;
    for (int i = 0; i < CALM_WAITERS; i++) {
        pthread_join(th[i], NULL);
        if (args[i].rc == ETIMEDOUT && args[i].waited_ns >= 49 * MS && args[i].waited_ns < 300 * MS)
            (*short_n)++;
        else if (args[i].rc == 0 && args[i].waited_ns >= 290 * MS && args[i].waited_ns < 900 * MS)
            (*woken_n)++;
    }
    pthread_barrier_destroy(&g_calm_barrier);
    gla_hook_calm(&stretched1);
    return (int)(stretched1 - stretched0);
}

static void test_calm(void)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&g_mono_gil.cond, &attr);
    pthread_condattr_destroy(&attr);
    CHECK(gla_hook_install((const void *)waiter_anchor) == 0, "install");
    gla_hook_set_gil(&g_mono_gil.cond);
    CHECK(gla_hook_calm(NULL) == 0, "off by default");
    for (int round = 0; round < 2; round++) {
        int short_n, woken_n;
        int stretched = calm_round(2, &short_n, &woken_n);
        CHECK(stretched == CALM_WAITERS - 2, "round %d: %d stretched", round, stretched);
        CHECK(short_n == 2 && woken_n == CALM_WAITERS - 2,
              "round %d: %d timed out after the interval, %d woken by the signal", round, short_n,
              woken_n);
    }
    int short_n, woken_n;
    CHECK(calm_round(0, &short_n, &woken_n) == 0, "keep 0 stretches nothing");
    CHECK(short_n == CALM_WAITERS, "keep 0: %d of %d timed out after the interval", short_n,
          CALM_WAITERS);
    CHECK(gla_hook_set_calm(-3) == 0 && gla_hook_calm(NULL) == 0, "negative keep is off");
    /* Only while more than `above` threads wait: with above = 4 the first four arrivals
     * wait the interval whatever keep says, the rest are thinned to keep (2) short ones;
     * with above = 8 (all of them) nothing is stretched. */
    CHECK(gla_hook_set_calm_above(4) == 0, "above is 0 by default");
    CHECK(calm_round(2, &short_n, &woken_n) == CALM_WAITERS - 4, "above 4: 4 stretched");
    CHECK(short_n == 4 && woken_n == CALM_WAITERS - 4, "above 4: %d short, %d woken", short_n,
          woken_n);
    gla_hook_set_calm_above(CALM_WAITERS);
    CHECK(calm_round(2, &short_n, &woken_n) == 0, "above %d stretches nothing", CALM_WAITERS);
    CHECK(short_n == CALM_WAITERS, "above %d: %d short", CALM_WAITERS, short_n);
    CHECK(gla_hook_set_calm_above(-1) == CALM_WAITERS && gla_hook_calm_above() == 0,
          "negative above is 0");
    gla_hook_set_calm(0);
    gla_hook_set_gil(NULL);
    gla_hook_uninstall();
}

static void test_procstat(void)
{
    uint64_t cpu = 0, runq = 0;
    CHECK(gla_read_schedstat(0, &cpu, &runq) == 0 && cpu > 0, "schedstat");
    int aff = 0;
    double quota = -1, usable = 0;
    CHECK(gla_read_usable_cores(&aff, &quota, &usable) == 0 && aff >= 1 && usable > 0 &&
              usable <= aff,
          "cores aff=%d quota=%f usable=%f", aff, quota, usable);
    uint64_t limit = 1, avail = 0;
    CHECK(gla_read_memory(&limit, &avail) == 0 && avail > 0, "memory");
    CHECK(gla_read_schedstat(999999999, &cpu, &runq) < 0, "missing thread is an error");
}

/* A thread registering itself while readers discover it in /proc: one live record per tid
 * (a twin made by the discovery would hold no waits and show them as I/O). */
static _Atomic int g_race_stop;
static void *race_reader(void *p)
{
    (void)p;
    static gla_sample buf[4096];
    size_t n;
    while (!atomic_load(&g_race_stop)) {
        gla_ledger_read(buf, 4096, &n);
        usleep(100);
    }
    return NULL;
}

static sem_t g_race_go;
static _Atomic int g_race_ready;
static void *race_thread(void *p)
{
    pid_t *tid = p;
    *tid = my_tid();
    gla_thread *t = gla_ledger_self();
    gla_ledger_add_wait(t, GLA_LOCK_WAIT, 1000);
    atomic_fetch_add(&g_race_ready, 1); /* publishes *tid */
    sem_wait(&g_race_go);
    return NULL;
}

static void test_register_race(void)
{
    enum { ROUNDS = 50, N = 32 };
    pthread_t rd[2];
    atomic_store(&g_race_stop, 0);
    for (int i = 0; i < 2; i++)
        CHECK(pthread_create(&rd[i], NULL, race_reader, NULL) == 0, "reader");
    static gla_sample buf[4096];
    int twins = 0, missing = 0;
    for (int r = 0; r < ROUNDS; r++) {
        pthread_t th[N];
        pid_t tids[N];
        sem_init(&g_race_go, 0, 0);
        atomic_store(&g_race_ready, 0);
        for (int i = 0; i < N; i++) {
            tids[i] = 0;
            CHECK(pthread_create(&th[i], NULL, race_thread, &tids[i]) == 0, "create");
        }
        /* every thread registered and booked its wait (the readers racing it all along);
         * not a fixed sleep: a loaded machine starts 32 threads late */
        for (int ms = 0; atomic_load(&g_race_ready) < N && ms < 10000; ms++)
            sleep_ms(1);
        CHECK(atomic_load(&g_race_ready) == N, "%d of %d threads started in 10 s",
              atomic_load(&g_race_ready), N);
        size_t n = 0;
        gla_ledger_read(buf, 4096, &n);
        for (int i = 0; i < N; i++) {
            int live = 0, with_wait = 0;
            for (size_t j = 0; j < n; j++)
                if (buf[j].tid == tids[i] && buf[j].alive) {
                    live++;
                    with_wait += buf[j].raw_lock_wait_ns >= 1000;
                }
            twins += live > 1;
            missing += with_wait != 1;
        }
        for (int i = 0; i < N; i++)
            sem_post(&g_race_go);
        for (int i = 0; i < N; i++)
            pthread_join(th[i], NULL);
        sem_destroy(&g_race_go);
    }
    atomic_store(&g_race_stop, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(rd[i], NULL);
    CHECK(twins == 0, "%d thread(s) with two live records", twins);
    CHECK(missing == 0, "%d thread(s) whose own record was not listed", missing);
}

/* A registered thread whose record is dead (its ledger destructor ran) but which the kernel
 * still lists while it ends: readers must not discover it again as a new thread. A later
 * key's destructor (run after the ledger's) keeps it listed for 100 ms. */
static pthread_key_t g_linger_key;
static void linger(void *p)
{
    (void)p;
    sleep_ms(100);
}

static void *lingering_thread(void *p)
{
    pid_t *tid = p;
    *tid = my_tid();
    gla_ledger_self();
    gla_ledger_add_wait(gla_ledger_self(), GLA_LOCK_WAIT, 5 * MS);
    pthread_setspecific(g_linger_key, (void *)1);
    return NULL;
}

static void test_exiting_not_rediscovered(void)
{
    CHECK(pthread_key_create(&g_linger_key, linger) == 0, "key");
    pthread_t th;
    pid_t tid = 0;
    CHECK(pthread_create(&th, NULL, lingering_thread, &tid) == 0, "create");
    static gla_sample buf[4096];
    size_t n = 0;
    for (int i = 0; i < 40; i++) { /* reads while the thread lingers */
        gla_ledger_read(buf, 4096, &n);
        sleep_ms(5);
    }
    pthread_join(th, NULL);
    gla_ledger_read(buf, 4096, &n);
    int records = 0, with_wait = 0;
    for (size_t j = 0; j < n; j++)
        if (buf[j].tid == tid) {
            records++;
            with_wait += buf[j].raw_lock_wait_ns >= 5 * MS;
        }
    CHECK(records == 1 && with_wait == 1, "%d record(s) of the exiting thread, %d with its wait",
          records, with_wait);
    pthread_key_delete(g_linger_key);
}

int main(void)
{
    CHECK(gla_ledger_init() == 0, "init");
    CHECK(gla_ledger_init() == 0, "init twice");
    test_partition_random();
    test_partition_cases();
    test_exit_keeps_totals();
    test_wait_in_progress();
    test_hook();
    test_calm();
    test_procstat();
    test_register_race();
    test_exiting_not_rediscovered();
    if (g_failures) {
        fprintf(stderr, "test_ledger: %d failure(s)\n", g_failures);
        return 1;
    }
    printf("test_ledger: all passed\n");
    return 0;
}
