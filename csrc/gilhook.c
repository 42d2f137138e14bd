/* gilhook.c — the GIL hook; see gilhook.h for the contract.
 *
 * Sections: the hooked functions' tables (from hooks.h) and the per-thread state; the
 * wrappers, which feed the ledger (GIL waits, held time, hand-off samples, lock waits,
 * thread registration); the slot records and install / uninstall (through got.h's
 * walk); status, GIL reads and calibration. The GIL's layout is gil_layout.h's, the
 * waiter thinning calm.h's. */
#include "gilhook.h"
#include "calm.h"
#include "gil_layout.h"
#include "got.h"
#include "hooks.h"
#include "ledger.h"
#include "procstat.h"

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* The hooked functions (hooks.h): one index each in g_real (libc's function, as this
 * object links it: an LD_PRELOAD interposer if there is one; NULL for sem_clockwait before
 * glibc 2.30), g_next (what the wrapper calls: the previous hook found in the slot, else
 * g_real) and g_hooks (name, wrapper, version left alone, kind; built below the wrappers). */
enum {
#define X(id, symbol, skip_version, kind, wrapper, real) H_##id,
    GLA_HOOKS(X)
#undef X
    N_HOOKS
};
static void *const g_real[N_HOOKS] = {
#define X(id, symbol, skip_version, kind, wrapper, real) [H_##id] = (void *)real,
    GLA_HOOKS(X)
#undef X
};
/* Set under g_hook_lock before a slot is pointed at the wrapper; never cleared, so a
 * wrapper still reached after uninstall (through a later hook that chained to it) keeps
 * passing its calls on. The hot path's one extra cost: this acquire load. */
static _Atomic(void *) g_next[N_HOOKS] = {
#define X(id, symbol, skip_version, kind, wrapper, real) [H_##id] = (void *)real,
    GLA_HOOKS(X)
#undef X
};
#define NEXT(h, type) ((type)atomic_load_explicit(&g_next[h], memory_order_acquire))
typedef int (*cond_timedwait_fn)(pthread_cond_t *, pthread_mutex_t *, const struct timespec *);
typedef int (*cond_wait_fn)(pthread_cond_t *, pthread_mutex_t *);
typedef int (*cond_signal_fn)(pthread_cond_t *);
typedef int (*mutex_fn)(pthread_mutex_t *);
typedef int (*sem_wait_fn)(sem_t *);
typedef int (*sem_timedwait_fn)(sem_t *, const struct timespec *);
typedef int (*sem_clockwait_fn)(sem_t *, clockid_t, const struct timespec *);
typedef int (*create_fn)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

/* Installation epoch: odd while installed; every install and uninstall adds one. A
 * thread's hand-off state (holding since, the thinning's wanted since, sample under way)
 * belongs to the epoch it was last written in (tls_epoch): a thread finding a newer
 * epoch drops it, so a holding that began before an uninstall never reaches the ledger
 * after the next install, and nothing is written into another thread's TLS. */
static _Atomic unsigned g_epoch;
static __thread unsigned tls_epoch __attribute__((tls_model("initial-exec")));

static _Atomic(void *) g_gil_cond;
static _Atomic(void *) g_switch_cond;
static _Atomic(void *) g_gil_mutex;
/* Time of the last signal of each GIL condition (written under its mutex). */
static _Atomic uint64_t g_gil_signal_ns;
static _Atomic uint64_t g_switch_signal_ns;

static __thread int tls_calibrating __attribute__((tls_model("initial-exec")));
static __thread uint64_t tls_held_since
    __attribute__((tls_model("initial-exec"))); /* 0: not holding */
/* GIL hand-off samples (see sample_begin). */
enum { SAMPLE_NONE = 0, SAMPLE_TAKE = 1, SAMPLE_DROP = 2 };
static __thread int tls_sample_kind __attribute__((tls_model("initial-exec")));

/* Brings the calling thread's hand-off state to the current epoch (see g_epoch); returns
 * 1 while installed. Only the GIL's paths call it. */
static inline int thread_sync(void)
{
    unsigned e = atomic_load_explicit(&g_epoch, memory_order_acquire);
    if (__builtin_expect(tls_epoch != e, 0)) {
        tls_epoch = e;
        tls_held_since = 0;
        gla_calm_forget();
        tls_sample_kind = SAMPLE_NONE;
    }
    return (int)(e & 1u);
}
static __thread int tls_cal_count __attribute__((tls_model("initial-exec")));
static __thread void *tls_cal_conds[GLA_CAL_MAX] __attribute__((tls_model("initial-exec")));

static inline uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* vDSO: no system call */
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline int is_gil_cond(const void *cond)
{
    return cond == atomic_load_explicit(&g_gil_cond, memory_order_relaxed) ||
           cond == atomic_load_explicit(&g_switch_cond, memory_order_relaxed);
}

static void calibration_note(void *cond)
{
    for (int i = 0; i < tls_cal_count; i++)
        if (tls_cal_conds[i] == cond)
            return;
    if (tls_cal_count < GLA_CAL_MAX)
        tls_cal_conds[tls_cal_count++] = cond;
}

/* ---- wrappers ----------------------------------------------------------------------- */

/* A GIL wait is timed whole (inclusive). Its tail — from the hand-off that woke the
 * waiter (the last signal of that condition, or the timeout) to the return — is noted
 * too: the kernel's run-queue delay inside the wait lies in it, so the ledger can bound
 * the time both would count (ledger.h, "Partition"). */
static inline gla_thread *gil_begin(uint64_t *t0)
{
    gla_thread *t = gla_ledger_self_nosys();
    *t0 = mono_ns();
    gla_ledger_wait_begin(t, GLA_GIL_WAIT, *t0);
    return t;
}

/* tail_kind: GLA_GIL_TAIL for the GIL's condition, GLA_SWITCH_TAIL for the switch
 * condition (a dropping thread woken once the next holder took the GIL). */
static inline uint64_t gil_end(gla_thread *t, uint64_t t0, uint64_t wake_ns,
                               gla_wait_kind tail_kind)
{
    uint64_t t1 = mono_ns();
    uint64_t woke = (wake_ns > t0 && wake_ns < t1) ? wake_ns : t1;
    if (t) {
        gla_ledger_wait_end(t, t1);
        gla_ledger_add_wait(t, tail_kind, t1 - woke);
    }
    return t1;
}

static inline gla_wait_kind tail_kind_of(const _Atomic uint64_t *signal_ns)
{
    return signal_ns == &g_gil_signal_ns ? GLA_GIL_TAIL : GLA_SWITCH_TAIL;
}

/* GIL held time. CPython takes the GIL in take_gil right after locking the GIL's mutex
 * and finding it free, or after a condition wait that finds it free; every drop_gil
 * signals the GIL's condition from the dropping thread. Both points are hooked, so each
 * thread's holding time is [take, drop) with no system call. */
/* The holding under way, for readers in other threads (gla_hook_gil_held_ns): the
 * holder's record, the holding's start and its epoch (a holding of an earlier epoch is
 * not open). Written by the holder under the GIL's mutex: the start and epoch before the
 * record (release); at a drop the record is cleared before the holding is added to the
 * ledger, so a reader that sees the holding in the ledger no longer sees it open. */
static _Atomic(gla_thread *) g_holder;
static _Atomic uint64_t g_holder_since;
static _Atomic unsigned g_holder_epoch;

/* t: the taking thread's record (gla_ledger_self_nosys, which the callers already read). */
static inline void gil_taken(gla_thread *t, uint64_t now)
{
    tls_held_since = now;
    gla_calm_forget(); /* waiter thinning: this take ends the thread's wait */
    atomic_store_explicit(&g_holder_since, now, memory_order_relaxed);
    atomic_store_explicit(&g_holder_epoch, tls_epoch, memory_order_relaxed);
    atomic_store_explicit(&g_holder, t, memory_order_release);
}

static inline void gil_dropped(uint64_t now)
{
    uint64_t since = tls_held_since;
    if (!since)
        return;
    tls_held_since = 0;
    atomic_store_explicit(&g_holder, NULL, memory_order_release);
    gla_thread *t = gla_ledger_self_nosys();
    if (t && now > since)
        gla_ledger_add_wait(t, GLA_GIL_HELD, now - since);
}

static inline uint64_t ts_ns(const struct timespec *ts)
{
    return (uint64_t)ts->tv_sec * 1000000000ull + (uint64_t)ts->tv_nsec;
}

static int hook_cond_timedwait(pthread_cond_t *cond, pthread_mutex_t *mutex,
                               const struct timespec *abstime)
{
    cond_timedwait_fn next = NEXT(H_COND_TIMEDWAIT, cond_timedwait_fn);
    if (__builtin_expect(!is_gil_cond(cond), 1)) {
        if (__builtin_expect(tls_calibrating, 0))
            calibration_note(cond);
        return next(cond, mutex, abstime);
    }
    if (!thread_sync())
        return next(cond, mutex, abstime);
    _Atomic uint64_t *signal_ns = cond == atomic_load_explicit(&g_gil_cond, memory_order_relaxed)
                                      ? &g_gil_signal_ns
                                      : &g_switch_signal_ns;
    uint64_t t0;
    gla_thread *t = gil_begin(&t0);
    /* Waiter thinning (calm.h): a wait for the GIL may get a later deadline. */
    gla_calm_wait calm;
    abstime = gla_calm_begin(&calm, signal_ns == &g_gil_signal_ns, t0, abstime);
    int rc = next(cond, mutex, abstime);
    gla_calm_end(&calm);
    uint64_t wake = rc == ETIMEDOUT ? ts_ns(abstime)
                                    : atomic_load_explicit(signal_ns, memory_order_relaxed);
    uint64_t t1 = gil_end(t, t0, wake, tail_kind_of(signal_ns));
    if (signal_ns == &g_gil_signal_ns && !gla_gil_locked(cond))
        gil_taken(t, t1);
    return rc;
}

static int hook_cond_signal(pthread_cond_t *cond)
{
    cond_signal_fn next = NEXT(H_COND_SIGNAL, cond_signal_fn);
    if (cond == atomic_load_explicit(&g_gil_cond, memory_order_relaxed)) {
        if (thread_sync()) {
            uint64_t now = mono_ns();
            atomic_store_explicit(&g_gil_signal_ns, now, memory_order_relaxed);
            gil_dropped(now);
        }
    } else if (cond == atomic_load_explicit(&g_switch_cond, memory_order_relaxed)) {
        atomic_store_explicit(&g_switch_signal_ns, mono_ns(), memory_order_relaxed);
    }
    return next(cond);
}

/* Sampled exact figures of GIL hand-offs. The wrappers may not make a system call while
 * the GIL's mutex is held, but a thread holds no lock just before it locks that mutex and
 * just after it unlocks it: there it may read its own schedstat (one pread). Two kinds
 * of hand-off are sampled that way, for at most one sample per GLA_SAMPLE_NS in the
 * whole process (so the cost stays far below the noise):
 *   - a take of a GIL held by another thread (lock ... take_gil's unlock): the cpu and
 *     run-queue time inside it, against the wake-up tails the hook noted in it;
 *   - a drop (the holder's lock ... drop_gil's unlock): waking the next holder often
 *     preempts the dropping thread right there, on a busy core; that run-queue time is
 *     part of the hand-off.
 * The ledger scales the samples by each thread's own tails, takes and drops. */
#define GLA_SAMPLE_NS 2000000ull
static _Atomic uint64_t g_sample_last_ns;
static __thread uint64_t tls_sample_cpu0 __attribute__((tls_model("initial-exec")));
static __thread uint64_t tls_sample_runq0 __attribute__((tls_model("initial-exec")));
static __thread uint64_t tls_sample_tail0 __attribute__((tls_model("initial-exec")));

static void sample_begin(gla_thread *t, int kind)
{
    uint64_t now = mono_ns();
    uint64_t last = atomic_load_explicit(&g_sample_last_ns, memory_order_relaxed);
    if (!t || tls_sample_kind != SAMPLE_NONE || now - last < GLA_SAMPLE_NS ||
        !atomic_compare_exchange_strong(&g_sample_last_ns, &last, now))
        return;
    if (gla_ledger_own_schedstat(&tls_sample_cpu0, &tls_sample_runq0) == 0) {
        tls_sample_tail0 = gla_ledger_wait(t, GLA_GIL_TAIL);
        tls_sample_kind = kind;
    }
}

/* After an unlock of the GIL's mutex: a take ends holding the GIL, a drop without it;
 * any other unlock drops the sample. */
static void sample_end(void)
{
    thread_sync(); /* a sample begun before an uninstall ends with it */
    int kind = tls_sample_kind;
    tls_sample_kind = SAMPLE_NONE;
    if ((kind == SAMPLE_TAKE) != (tls_held_since != 0))
        return;
    uint64_t cpu1, runq1;
    gla_thread *t = gla_ledger_self_nosys();
    if (!t || gla_ledger_own_schedstat(&cpu1, &runq1) != 0)
        return;
    uint64_t cpu = cpu1 > tls_sample_cpu0 ? cpu1 - tls_sample_cpu0 : 0;
    uint64_t runq = runq1 > tls_sample_runq0 ? runq1 - tls_sample_runq0 : 0;
    if (kind == SAMPLE_TAKE) {
        uint64_t tail1 = gla_ledger_wait(t, GLA_GIL_TAIL);
        gla_ledger_add_take_sample(cpu, runq,
                                   tail1 > tls_sample_tail0 ? tail1 - tls_sample_tail0 : 0);
    } else {
        gla_ledger_add_drop_sample(runq);
    }
}

/* The GIL's mutex. Locked by the holder: a drop begins (counted; sometimes sampled).
 * Locked with the GIL held by another thread: a contended take begins (counted;
 * sometimes sampled). A lock that has to wait for the mutex is part of getting the GIL
 * and counts as GIL wait; a lock that finds the GIL free starts a holding. */
static int hook_mutex_lock(pthread_mutex_t *mutex)
{
    mutex_fn next = NEXT(H_MUTEX_LOCK, mutex_fn);
    if (__builtin_expect(mutex != atomic_load_explicit(&g_gil_mutex, memory_order_relaxed), 1))
        return next(mutex);
    if (!thread_sync())
        return next(mutex);
    const void *cond = atomic_load_explicit(&g_gil_cond, memory_order_relaxed);
    gla_thread *self = cond ? gla_ledger_self_nosys() : NULL;
    if (cond) {
        if (tls_held_since) {
            gla_ledger_add_wait(self, GLA_GIL_DROPS, 1);
            sample_begin(self, SAMPLE_DROP);
        } else if (gla_gil_locked(cond)) {
            gla_ledger_add_wait(self, GLA_GIL_TAKES, 1);
            sample_begin(self, SAMPLE_TAKE);
        }
    }
    /* Behind another hook every lock goes to it (timed whole); else an uncontended lock
     * (trylock succeeds) is not timed. */
    int rc = next == (mutex_fn)g_real[H_MUTEX_LOCK] ? pthread_mutex_trylock(mutex) : EBUSY;
    if (rc == EBUSY) {
        uint64_t t0;
        gla_thread *t = gil_begin(&t0);
        rc = next(mutex);
        gil_end(t, t0, 0, GLA_GIL_TAIL);
    }
    if (rc == 0 && cond && !tls_held_since && !gla_gil_locked(cond))
        gil_taken(self, mono_ns());
    return rc;
}

static int hook_mutex_unlock(pthread_mutex_t *mutex)
{
    int rc = NEXT(H_MUTEX_UNLOCK, mutex_fn)(mutex);
    if (__builtin_expect(tls_sample_kind != SAMPLE_NONE, 0) &&
        mutex == atomic_load_explicit(&g_gil_mutex, memory_order_relaxed))
        sample_end();
    return rc;
}

static int hook_cond_wait(pthread_cond_t *cond, pthread_mutex_t *mutex)
{
    cond_wait_fn next = NEXT(H_COND_WAIT, cond_wait_fn);
    if (__builtin_expect(!is_gil_cond(cond), 1)) {
        if (__builtin_expect(tls_calibrating, 0))
            calibration_note(cond);
        return next(cond, mutex);
    }
    if (!thread_sync())
        return next(cond, mutex);
    _Atomic uint64_t *signal_ns = cond == atomic_load_explicit(&g_gil_cond, memory_order_relaxed)
                                      ? &g_gil_signal_ns
                                      : &g_switch_signal_ns;
    uint64_t t0;
    gla_thread *t = gil_begin(&t0);
    int rc = next(cond, mutex);
    gil_end(t, t0, atomic_load_explicit(signal_ns, memory_order_relaxed), tail_kind_of(signal_ns));
    return rc;
}

/* Lock waits: the thread holds no lock here, so reading its schedstat around a wait
 * that really blocks is allowed; an uncontended acquire (sem_trywait succeeds) costs
 * nothing extra. */
typedef struct {
    gla_thread *t;
    uint64_t cpu0, runq0;
    int ok;
} lock_edge;

static inline void lock_begin(lock_edge *e)
{
    e->t = gla_ledger_self();
    e->ok = gla_ledger_own_schedstat(&e->cpu0, &e->runq0) == 0;
    gla_ledger_wait_begin(e->t, GLA_LOCK_WAIT, mono_ns());
}

static inline void lock_end(const lock_edge *e)
{
    uint64_t cpu1, runq1;
    gla_thread *t = e->t;
    if (!t)
        return;
    gla_ledger_wait_end(t, mono_ns());
    if (e->ok && gla_ledger_own_schedstat(&cpu1, &runq1) == 0) {
        gla_ledger_add_wait(t, GLA_LOCK_CPU, cpu1 > e->cpu0 ? cpu1 - e->cpu0 : 0);
        gla_ledger_add_wait(t, GLA_LOCK_RUNQ, runq1 > e->runq0 ? runq1 - e->runq0 : 0);
    }
}

/* Passes the call on untimed while not installed; an uncontended acquire (sem_trywait
 * succeeds) returns at once, unless another hook is next (it sees every call). */
static inline int sem_untimed(int h, void *next, sem_t *sem, int *rc)
{
    if (!(atomic_load_explicit(&g_epoch, memory_order_relaxed) & 1u))
        return 1;
    if (next == g_real[h] && sem_trywait(sem) == 0) {
        *rc = 0;
        return 1;
    }
    return 0;
}

static int hook_sem_wait(sem_t *sem)
{
    sem_wait_fn next = NEXT(H_SEM_WAIT, sem_wait_fn);
    int rc = -1;
    if (sem_untimed(H_SEM_WAIT, (void *)next, sem, &rc))
        return rc == 0 ? 0 : next(sem);
    lock_edge e;
    lock_begin(&e);
    rc = next(sem);
    lock_end(&e);
    return rc;
}

static int hook_sem_timedwait(sem_t *sem, const struct timespec *abstime)
{
    sem_timedwait_fn next = NEXT(H_SEM_TIMEDWAIT, sem_timedwait_fn);
    int rc = -1;
    if (sem_untimed(H_SEM_TIMEDWAIT, (void *)next, sem, &rc))
        return rc == 0 ? 0 : next(sem, abstime);
    lock_edge e;
    lock_begin(&e);
    rc = next(sem, abstime);
    lock_end(&e);
    return rc;
}

static int hook_sem_clockwait(sem_t *sem, clockid_t clock, const struct timespec *abstime)
{
    sem_clockwait_fn next = NEXT(H_SEM_CLOCKWAIT, sem_clockwait_fn);
    int rc = -1;
    if (!next) { /* never patched without a function to call; defensive */
        errno = ENOSYS;
        return -1;
    }
    if (sem_untimed(H_SEM_CLOCKWAIT, (void *)next, sem, &rc))
        return rc == 0 ? 0 : next(sem, clock, abstime);
    lock_edge e;
    lock_begin(&e);
    rc = next(sem, clock, abstime);
    lock_end(&e);
    return rc;
}

/* Threads the interpreter creates register in the ledger before running anything, so
 * their start is exact and their final totals are kept when they exit. */
typedef struct {
    void *(*start)(void *);
    void *arg;
} start_trampoline;

static void *thread_trampoline(void *p)
{
    start_trampoline tr = *(start_trampoline *)p;
    free(p);
    gla_ledger_self();
    return tr.start(tr.arg);
}

static int hook_pthread_create(pthread_t *thread, const pthread_attr_t *attr,
                               void *(*start)(void *), void *arg)
{
    create_fn next = NEXT(H_CREATE, create_fn);
    start_trampoline *tr = NULL;
    if (atomic_load_explicit(&g_epoch, memory_order_relaxed) & 1u)
        tr = malloc(sizeof *tr);
    if (!tr)
        return next(thread, attr, start, arg);
    tr->start = start;
    tr->arg = arg;
    int rc = next(thread, attr, thread_trampoline, tr);
    if (rc != 0)
        free(tr);
    return rc;
}

/* ---- the hook: which slots, their records ------------------------------------------ */

enum { KIND_COND, KIND_SEM, KIND_CREATE, KIND_EDGE };
typedef struct {
    const char *name;
    void *wrapper;
    const char *skip_version; /* version whose imports are left alone, or NULL */
    int kind;                 /* condition wait, semaphore wait, thread creation, GIL edge */
} hook_target;

static const hook_target g_hooks[N_HOOKS] = {
#define X(id, symbol, skip_version, kind, wrapper, real) \
    [H_##id] = {symbol, (void *)wrapper, skip_version, KIND_##kind},
    GLA_HOOKS(X)
#undef X
};

/* One record per GOT slot the hook has pointed at a wrapper, kept across installs while
 * the slot may still lead to the wrapper:
 *   REC_OURS  the slot holds the wrapper (written by install); uninstall puts back
 *             `original` if it still does;
 *   REC_UNDER installed beneath `left_to`, the hook that replaced the wrapper before an
 *             uninstall and still holds the slot (it chains to the wrapper);
 *   REC_LEFT  not installed there: the slot holds another hook (`left_to`, or one that
 *             replaced it), which may chain to the wrapper. Install never writes such a
 *             slot (a chain back to that hook could loop); once it holds the wrapper
 *             again or a plain function, the record goes. */
enum { REC_OURS = 1, REC_UNDER, REC_LEFT };
typedef struct {
    void **slot;
    void *original;
    void *left_to;
    int hook;
    int state;
    int in_relro;
} slot_rec;

#define MAX_SLOTS 64
static pthread_mutex_t g_hook_lock = PTHREAD_MUTEX_INITIALIZER;
static slot_rec g_slots[MAX_SLOTS]; /* under g_hook_lock */
static int g_nslots;
static gla_hook_status g_status;

/* Appends a function's name to a status note ("a, b, c"), once. */
static void note_name(char *note, size_t size, const char *name)
{
    size_t len = strlen(note), n = strlen(name);
    for (const char *p = strstr(note, name); p; p = strstr(p + 1, name))
        if ((p == note || p[-1] == ' ') && (p[n] == ',' || p[n] == '\0'))
            return;
    snprintf(note + len, size - len, "%s%s", len ? ", " : "", name);
}

typedef struct {
    int settled[N_HOOKS];   /* g_next[h] is fixed for this install */
    char left[160];         /* functions whose slot holds another hook, left alone */
    char conflict[160];     /* functions with two slots behind different hooks */
} install_ctx;

static void count_slot(int h, int chained)
{
    switch (g_hooks[h].kind) {
    case KIND_COND: g_status.slots_cond++; break;
    case KIND_SEM: g_status.slots_sem++; break;
    case KIND_CREATE: g_status.slots_create++; break;
    default: break;
    }
    g_status.slots_chained += chained;
}

static slot_rec *find_rec(void **slot)
{
    for (int i = 0; i < g_nslots; i++)
        if (g_slots[i].slot == slot)
            return &g_slots[i];
    return NULL;
}

/* A slot value that is no other hook: lazy binding's stub (inside the patched object),
 * libc's function, or nothing. */
static int plain_value(const gla_got_object *obj, int h, const void *v)
{
    return v == NULL || v == g_real[h] || gla_got_object_holds(obj, v);
}

static int install_visit(void *p, const gla_got_object *obj, const char *name, const char *version,
                         void **slot)
{
    install_ctx *ctx = p;
    int h = 0;
    while (h < N_HOOKS && strcmp(name, g_hooks[h].name) != 0)
        h++;
    if (h == N_HOOKS)
        return 0;
    if (g_hooks[h].skip_version && version && strcmp(version, g_hooks[h].skip_version) == 0)
        return 0;
    void *wrapper = g_hooks[h].wrapper;
    slot_rec *r = find_rec(slot);
    void *v = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (v == wrapper) { /* still ours: a later hook put the wrapper back at its uninstall */
        if (!r) {
            if (g_nslots >= MAX_SLOTS)
                return 0;
            r = &g_slots[g_nslots++];
            *r = (slot_rec){slot, g_real[h], NULL, h, REC_OURS, gla_got_in_relro(obj, slot)};
        }
        r->state = REC_OURS;
        ctx->settled[h] = 1;
        count_slot(h, atomic_load(&g_next[h]) != g_real[h]);
        return 0;
    }
    if (r && r->state == REC_LEFT && !plain_value(obj, h, v)) {
        if (v == r->left_to) { /* the hook that replaced the wrapper chains to it */
            r->state = REC_UNDER;
            ctx->settled[h] = 1;
            count_slot(h, atomic_load(&g_next[h]) != g_real[h]);
        } else {
            note_name(ctx->left, sizeof ctx->left, name);
        }
        return 0;
    }
    for (;;) {
        void *next = plain_value(obj, h, v) ? g_real[h] : v;
        if (!next)
            return 0; /* nothing to pass the calls on to (sem_clockwait before glibc 2.30) */
        if (ctx->settled[h] && next != atomic_load(&g_next[h])) {
            note_name(ctx->conflict, sizeof ctx->conflict, name);
            return 0;
        }
        if (!r) {
            if (g_nslots >= MAX_SLOTS)
                return 0;
            r = &g_slots[g_nslots++];
            *r = (slot_rec){slot, NULL, NULL, h, 0, gla_got_in_relro(obj, slot)};
        }
        atomic_store_explicit(&g_next[h], next, memory_order_release);
        int rc = gla_got_slot_cas(slot, &v, wrapper, r->in_relro);
        if (rc < 0) {
            if (r->state == 0)
                g_nslots--; /* the record just made (the last one) */
            return rc;
        }
        if (rc == 0)
            continue; /* changed meanwhile (lazy binding resolved it): again with its value */
        r->original = v;
        r->state = REC_OURS;
        ctx->settled[h] = 1;
        count_slot(h, next != g_real[h]);
        return 0;
    }
}

static int count_left(void)
{
    int n = 0;
    for (int i = 0; i < g_nslots; i++)
        n += g_slots[i].state == REC_LEFT;
    return n;
}

/* Gives every slot back (under g_hook_lock): a slot that holds the wrapper gets the value
 * it held before; one that holds another hook keeps it (REC_LEFT, counted and named in
 * g_status); one that holds a plain function is forgotten. 0 or -errno. */
static int release_slots(void)
{
    int err = 0, kept = 0;
    char left[160] = "";
    for (int i = 0; i < g_nslots; i++) {
        slot_rec r = g_slots[i];
        void *v = g_hooks[r.hook].wrapper;
        int rc = gla_got_slot_cas(r.slot, &v, r.original, r.in_relro);
        if (rc < 0) {
            err = rc;
            g_slots[kept++] = r; /* still holds the wrapper: a later install finds it */
            continue;
        }
        if (rc == 1 || v == g_real[r.hook] || v == r.original || v == NULL)
            continue;
        if (r.state != REC_LEFT)
            r.left_to = v;
        r.state = REC_LEFT;
        note_name(left, sizeof left, g_hooks[r.hook].name);
        g_slots[kept++] = r;
    }
    g_nslots = kept;
    g_status.slots_left = count_left();
    if (g_status.slots_left > 0)
        snprintf(g_status.reason, sizeof g_status.reason,
                 "uninstalled; %d GOT slot(s) now hold another hook and were left to it: %s",
                 g_status.slots_left, left);
    return err;
}

/* fork(): the child has only the forking thread. No thread waits for the GIL there, so
 * the thinning's waiter counts restart at zero; the threads that held or sampled a
 * hand-off are gone; the forking thread's ledger record restarted at the fork, so its own
 * holding ends here (the child's interpreter takes its GIL anew, which starts the next). */
static int g_atfork_registered; /* under g_hook_lock */

static void hook_atfork_child(void)
{
    pthread_mutex_init(&g_hook_lock, NULL);
    gla_calm_atfork_child();
    tls_held_since = 0;
    tls_sample_kind = SAMPLE_NONE;
    atomic_store_explicit(&g_holder, NULL, memory_order_relaxed);
    atomic_store_explicit(&g_holder_since, 0, memory_order_relaxed);
}

int gla_hook_install(const void *anchor)
{
    const char *env = getenv("GIL_ADAPT_HOOK");
    pthread_mutex_lock(&g_hook_lock);
    int rc = 0;
    if (g_status.installed)
        goto out;
    if (env && (strcmp(env, "0") == 0 || strcasecmp(env, "false") == 0 ||
                strcasecmp(env, "no") == 0 || strcasecmp(env, "off") == 0)) {
        snprintf(g_status.reason, sizeof g_status.reason, "disabled by GIL_ADAPT_HOOK=%.16s", env);
        rc = -ECANCELED;
        goto out;
    }
#if !defined(__x86_64__) && !defined(__aarch64__)
    snprintf(g_status.reason, sizeof g_status.reason, "GOT hook not implemented for this CPU");
    rc = -ENOSYS;
    goto out;
#endif
    gla_ledger_init(); /* first: the ledger's fork handler runs before this one */
    if (!g_atfork_registered)
        g_atfork_registered = pthread_atfork(NULL, NULL, hook_atfork_child) == 0;
    g_status.slots_cond = g_status.slots_sem = g_status.slots_create = 0;
    g_status.slots_chained = 0;
    install_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    int found = 0;
    int err = gla_got_walk(anchor, install_visit, &ctx, g_status.object, sizeof g_status.object,
                           &found);
    if (!found) {
        snprintf(g_status.reason, sizeof g_status.reason,
                 "no loaded object contains the interpreter");
        rc = -ENOENT;
    } else if (err < 0) {
        release_slots();
        snprintf(g_status.reason, sizeof g_status.reason, "patching the GOT failed: %s",
                 strerror(-err));
        rc = err;
    } else if (g_status.slots_cond == 0) {
        release_slots();
        snprintf(
            g_status.reason, sizeof g_status.reason,
            "the interpreter does not import pthread_cond_timedwait@GLIBC_2.3.2 through its GOT");
        rc = -ENOENT;
    }
    if (rc < 0) {
        g_status.slots_cond = g_status.slots_sem = g_status.slots_create = 0;
        g_status.slots_chained = 0;
    } else {
        g_status.installed = 1;
        g_status.slots_left = count_left();
        g_status.reason[0] = '\0';
        if (ctx.left[0])
            snprintf(g_status.reason, sizeof g_status.reason,
                     "GOT slot(s) held by another hook that may call gil_adapt's earlier wrapper "
                     "were left alone: %s",
                     ctx.left);
        else if (ctx.conflict[0])
            snprintf(g_status.reason, sizeof g_status.reason,
                     "a second GOT slot behind a different hook was left alone: %s", ctx.conflict);
        atomic_fetch_add_explicit(&g_epoch, 1, memory_order_acq_rel); /* odd: installed */
    }
out:
    pthread_mutex_unlock(&g_hook_lock);
    return rc;
}

int gla_hook_uninstall(void)
{
    pthread_mutex_lock(&g_hook_lock);
    int rc = 0;
    if (g_status.installed) {
        /* Even: every thread's hand-off state is stale from here; wrappers still reached
         * pass their calls on untimed. */
        atomic_fetch_add_explicit(&g_epoch, 1, memory_order_acq_rel);
        atomic_store_explicit(&g_holder, NULL, memory_order_release);
        g_status.installed = 0;
        g_status.slots_cond = g_status.slots_sem = g_status.slots_create = 0;
        g_status.slots_chained = 0;
        g_status.reason[0] = '\0';
        rc = release_slots();
    }
    pthread_mutex_unlock(&g_hook_lock);
    return rc;
}

void gla_hook_get_status(gla_hook_status *out)
{
    pthread_mutex_lock(&g_hook_lock);
    *out = g_status;
    out->gil_known = atomic_load(&g_gil_cond) != NULL;
    pthread_mutex_unlock(&g_hook_lock);
}

void gla_hook_set_gil(void *gil_cond)
{
    void *sw = gil_cond ? (void *)gla_gil_switch_cond(gil_cond) : NULL;
    void *mx = gil_cond ? (void *)gla_gil_mutex(gil_cond) : NULL;
    atomic_store(&g_switch_cond, sw);
    atomic_store(&g_gil_mutex, mx);
    atomic_store(&g_gil_cond, gil_cond);
}

void *gla_hook_gil(void)
{
    return atomic_load(&g_gil_cond);
}

uint64_t gla_hook_gil_held_ns(const gla_thread *t, uint64_t now_ns)
{
    if (!t)
        return 0;
    uint64_t held = gla_ledger_wait(t, GLA_GIL_HELD); /* acquire: then the record below */
    if (atomic_load_explicit(&g_holder, memory_order_acquire) == t) {
        uint64_t since = atomic_load_explicit(&g_holder_since, memory_order_relaxed);
        unsigned epoch = atomic_load_explicit(&g_holder_epoch, memory_order_relaxed);
        if (since && now_ns > since && (epoch & 1u) &&
            epoch == atomic_load_explicit(&g_epoch, memory_order_acquire))
            held += now_ns - since;
    }
    return held;
}

uint64_t gla_hook_self_gil_held_ns(void)
{
    gla_thread *t = gla_ledger_self_nosys();
    uint64_t held = t ? gla_ledger_wait(t, GLA_GIL_HELD) : 0;
    uint64_t since = tls_held_since;
    unsigned epoch = atomic_load_explicit(&g_epoch, memory_order_acquire);
    if (since && (epoch & 1u) && tls_epoch == epoch) {
        uint64_t now = mono_ns();
        if (now > since)
            held += now - since;
    }
    return held;
}

long long gla_gil_switches(void)
{
    const void *cond = atomic_load(&g_gil_cond);
    if (!cond)
        return -1;
    return (long long)gla_gil_switch_number(cond);
}

void gla_hook_calibrate_begin(void)
{
    tls_cal_count = 0;
    tls_calibrating = 1;
}

int gla_hook_calibrate_end(void **conds, int cap)
{
    tls_calibrating = 0;
    int n = tls_cal_count < cap ? tls_cal_count : cap;
    for (int i = 0; i < n; i++)
        conds[i] = tls_cal_conds[i];
    return n;
}
