/* gilhook.c — see gilhook.h for the contract. */
#include "gilhook.h"
#include "ledger.h"
#include "procstat.h"

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <link.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* sem_clockwait appeared in glibc 2.30: bind weakly so older systems still load us. */
#pragma weak sem_clockwait

/* CPython's struct _gil_runtime_state, 3.9–3.13 (pycore_gil.h), without Py_GIL_DISABLED:
 *   unsigned long interval; void *last_holder; int locked; unsigned long switch_number;
 *   pthread_cond_t cond; pthread_mutex_t mutex; pthread_cond_t switch_cond; ... */
#define GIL_COND_TO_INTERVAL (-(ptrdiff_t)(4 * sizeof(unsigned long)))
#define GIL_COND_TO_LOCKED (-(ptrdiff_t)(2 * sizeof(unsigned long)))
#define GIL_COND_TO_SWITCH_NUMBER (-(ptrdiff_t)sizeof(unsigned long))
#define GIL_COND_TO_SWITCH_COND ((ptrdiff_t)(sizeof(pthread_cond_t) + sizeof(pthread_mutex_t)))

static _Atomic(void *) g_gil_cond;
static _Atomic(void *) g_switch_cond;
static _Atomic(void *) g_gil_mutex;
/* Time of the last signal of each GIL condition (written under its mutex). */
static _Atomic uint64_t g_gil_signal_ns;
static _Atomic uint64_t g_switch_signal_ns;

static __thread int tls_calibrating __attribute__((tls_model("initial-exec")));
static __thread uint64_t tls_held_since __attribute__((tls_model("initial-exec"))); /* 0: not holding */
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

static inline int gil_locked(const void *gil_cond)
{
    return __atomic_load_n((const int *)(const void *)((const char *)gil_cond + GIL_COND_TO_LOCKED),
                           __ATOMIC_RELAXED);
}

/* tail_kind: GLA_GIL_TAIL for the GIL's condition, GLA_SWITCH_TAIL for the switch
 * condition (a dropping thread woken once the next holder took the GIL). */
static inline uint64_t gil_end(gla_thread *t, uint64_t t0, uint64_t wake_ns, gla_wait_kind tail_kind)
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
static __thread uint64_t tls_gil_wanted_since __attribute__((tls_model("initial-exec")));
/* The holding under way, for readers in other threads (gla_hook_gil_held_ns): the
 * holder's record and the holding's start. Written by the holder under the GIL's mutex:
 * the start before the record (release); at a drop the record is cleared before the
 * holding is added to the ledger, so a reader that sees the holding in the ledger no
 * longer sees it open. */
static _Atomic(gla_thread *) g_holder;
static _Atomic uint64_t g_holder_since;

/* t: the taking thread's record (gla_ledger_self_nosys, which the callers already read). */
static inline void gil_taken(gla_thread *t, uint64_t now)
{
    tls_held_since = now;
    tls_gil_wanted_since = 0; /* waiter thinning: this take ends the thread's wait */
    atomic_store_explicit(&g_holder_since, now, memory_order_relaxed);
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

/* Waiter thinning (see gilhook.h): how many GIL waiters keep CPython's timed wait; the
 * others wait CALM_STRETCH times as long, while more than g_calm_above threads wait.
 * g_short_waiters and g_gil_waiters are guarded by the GIL's mutex (the wrapper runs
 * with it held before and after the wait). */
#define CALM_STRETCH 20
static _Atomic int g_calm_keep;
static _Atomic int g_calm_above;
static int g_short_waiters;
static int g_gil_waiters;
static _Atomic uint64_t g_calm_stretched;

static int hook_cond_timedwait(pthread_cond_t *cond, pthread_mutex_t *mutex,
                               const struct timespec *abstime)
{
    if (__builtin_expect(!is_gil_cond(cond), 1)) {
        if (__builtin_expect(tls_calibrating, 0))
            calibration_note(cond);
        return pthread_cond_timedwait(cond, mutex, abstime);
    }
    _Atomic uint64_t *signal_ns = cond == atomic_load_explicit(&g_gil_cond, memory_order_relaxed)
                                      ? &g_gil_signal_ns : &g_switch_signal_ns;
    uint64_t t0;
    gla_thread *t = gil_begin(&t0);
    int keep = atomic_load_explicit(&g_calm_keep, memory_order_relaxed);
    int counted = 0, waiting = signal_ns == &g_gil_signal_ns;
    struct timespec later;
    g_gil_waiters += waiting;
    if (keep > 0 && waiting) {
        uint64_t due = ts_ns(abstime);
        if (!tls_gil_wanted_since)
            tls_gil_wanted_since = t0;
        /* The hand-off's signal reaches the longest-waiting waiters first (glibc's
         * condition groups), so a waiter that re-waits every interval is always among
         * the youngest and can starve: a waiter that has waited a stretched wait's
         * length already waits stretched from then on (new arrivals keep the count). */
        int starving = t0 - tls_gil_wanted_since >= (due - t0) * CALM_STRETCH;
        if (due <= t0 || due - t0 > 1000000000ull ||
            g_gil_waiters <= atomic_load_explicit(&g_calm_above, memory_order_relaxed) ||
            (g_short_waiters < keep && !starving)) {
            g_short_waiters++;
            counted = 1;
        } else {
            uint64_t at = t0 + (due - t0) * CALM_STRETCH;
            later.tv_sec = (time_t)(at / 1000000000ull);
            later.tv_nsec = (long)(at % 1000000000ull);
            abstime = &later;
            atomic_fetch_add_explicit(&g_calm_stretched, 1, memory_order_relaxed);
        }
    }
    int rc = pthread_cond_timedwait(cond, mutex, abstime);
    g_short_waiters -= counted;
    g_gil_waiters -= waiting;
    uint64_t wake = rc == ETIMEDOUT ? ts_ns(abstime)
                                    : atomic_load_explicit(signal_ns, memory_order_relaxed);
    uint64_t t1 = gil_end(t, t0, wake, tail_kind_of(signal_ns));
    if (signal_ns == &g_gil_signal_ns && !gil_locked(cond))
        gil_taken(t, t1);
    return rc;
}

static int hook_cond_signal(pthread_cond_t *cond)
{
    if (cond == atomic_load_explicit(&g_gil_cond, memory_order_relaxed)) {
        uint64_t now = mono_ns();
        atomic_store_explicit(&g_gil_signal_ns, now, memory_order_relaxed);
        gil_dropped(now);
    } else if (cond == atomic_load_explicit(&g_switch_cond, memory_order_relaxed)) {
        atomic_store_explicit(&g_switch_signal_ns, mono_ns(), memory_order_relaxed);
    }
    return pthread_cond_signal(cond);
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
enum { SAMPLE_NONE = 0, SAMPLE_TAKE = 1, SAMPLE_DROP = 2 };
static _Atomic uint64_t g_sample_last_ns;
static __thread int tls_sample_kind __attribute__((tls_model("initial-exec")));
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
        gla_ledger_add_take_sample(cpu, runq, tail1 > tls_sample_tail0 ? tail1 - tls_sample_tail0 : 0);
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
    if (__builtin_expect(mutex != atomic_load_explicit(&g_gil_mutex, memory_order_relaxed), 1))
        return pthread_mutex_lock(mutex);
    const void *cond = atomic_load_explicit(&g_gil_cond, memory_order_relaxed);
    gla_thread *self = cond ? gla_ledger_self_nosys() : NULL;
    if (cond) {
        if (tls_held_since) {
            gla_ledger_add_wait(self, GLA_GIL_DROPS, 1);
            sample_begin(self, SAMPLE_DROP);
        } else if (gil_locked(cond)) {
            gla_ledger_add_wait(self, GLA_GIL_TAKES, 1);
            sample_begin(self, SAMPLE_TAKE);
        }
    }
    int rc = pthread_mutex_trylock(mutex);
    if (rc == EBUSY) {
        uint64_t t0;
        gla_thread *t = gil_begin(&t0);
        rc = pthread_mutex_lock(mutex);
        gil_end(t, t0, 0, GLA_GIL_TAIL);
    }
    if (rc == 0 && cond && !tls_held_since && !gil_locked(cond))
        gil_taken(self, mono_ns());
    return rc;
}

static int hook_mutex_unlock(pthread_mutex_t *mutex)
{
    int rc = pthread_mutex_unlock(mutex);
    if (__builtin_expect(tls_sample_kind != SAMPLE_NONE, 0) &&
        mutex == atomic_load_explicit(&g_gil_mutex, memory_order_relaxed))
        sample_end();
    return rc;
}

static int hook_cond_wait(pthread_cond_t *cond, pthread_mutex_t *mutex)
{
    if (__builtin_expect(!is_gil_cond(cond), 1)) {
        if (__builtin_expect(tls_calibrating, 0))
            calibration_note(cond);
        return pthread_cond_wait(cond, mutex);
    }
    _Atomic uint64_t *signal_ns = cond == atomic_load_explicit(&g_gil_cond, memory_order_relaxed)
                                      ? &g_gil_signal_ns : &g_switch_signal_ns;
    uint64_t t0;
    gla_thread *t = gil_begin(&t0);
    int rc = pthread_cond_wait(cond, mutex);
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

static int hook_sem_wait(sem_t *sem)
{
    if (sem_trywait(sem) == 0)
        return 0;
    lock_edge e;
    lock_begin(&e);
    int rc = sem_wait(sem);
    lock_end(&e);
    return rc;
}

static int hook_sem_timedwait(sem_t *sem, const struct timespec *abstime)
{
    if (sem_trywait(sem) == 0)
        return 0;
    lock_edge e;
    lock_begin(&e);
    int rc = sem_timedwait(sem, abstime);
    lock_end(&e);
    return rc;
}

static int hook_sem_clockwait(sem_t *sem, clockid_t clock, const struct timespec *abstime)
{
    if (sem_trywait(sem) == 0)
        return 0;
    lock_edge e;
    lock_begin(&e);
    int rc = sem_clockwait(sem, clock, abstime);
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
    start_trampoline *tr = malloc(sizeof *tr);
    if (!tr)
        return pthread_create(thread, attr, start, arg);
    tr->start = start;
    tr->arg = arg;
    int rc = pthread_create(thread, attr, thread_trampoline, tr);
    if (rc != 0)
        free(tr);
    return rc;
}

/* ---- GOT patching ------------------------------------------------------------------- */

typedef struct {
    const char *name;
    void *wrapper;
    const char *skip_version; /* version whose imports are left alone, or NULL */
    int is_sem; /* 0: condition wait, 1: semaphore wait, 2: thread creation, 3: GIL edges */
} hook_target;

static const hook_target g_targets[] = {
    {"pthread_cond_timedwait", (void *)hook_cond_timedwait, "GLIBC_2.2.5", 0},
    {"pthread_cond_wait", (void *)hook_cond_wait, "GLIBC_2.2.5", 0},
    {"pthread_cond_signal", (void *)hook_cond_signal, "GLIBC_2.2.5", 3},
    {"pthread_mutex_lock", (void *)hook_mutex_lock, NULL, 3},
    {"pthread_mutex_unlock", (void *)hook_mutex_unlock, NULL, 3},
    {"sem_wait", (void *)hook_sem_wait, NULL, 1},
    {"sem_timedwait", (void *)hook_sem_timedwait, NULL, 1},
    {"sem_clockwait", (void *)hook_sem_clockwait, NULL, 1},
    {"pthread_create", (void *)hook_pthread_create, NULL, 2},
};
#define N_TARGETS (sizeof g_targets / sizeof g_targets[0])

#define MAX_PATCHED 64
typedef struct {
    void **slot;
    void *original;
    int in_relro;
} patched_slot;

static pthread_mutex_t g_hook_lock = PTHREAD_MUTEX_INITIALIZER;
static patched_slot g_patched[MAX_PATCHED];
static int g_npatched;
static gla_hook_status g_status;

typedef struct {
    const void *anchor;
    int found;
    int err;
} install_ctx;

static uintptr_t dyn_ptr(uintptr_t base, uintptr_t value)
{
    /* glibc relocates most d_ptr entries in place; some loaders do not. */
    return (base != 0 && value < base) ? value + base : value;
}

/* Name of symbol index sym's required version, or NULL (unversioned / local). */
static const char *symbol_version(const ElfW(Half) *versym, const ElfW(Verneed) *verneed,
                                  size_t verneednum, const char *strtab, size_t sym)
{
    if (!versym || !verneed)
        return NULL;
    ElfW(Half) idx = versym[sym] & 0x7fff;
    if (idx <= 1)
        return NULL;
    const ElfW(Verneed) *vn = verneed;
    for (size_t i = 0; i < verneednum; i++) {
        const ElfW(Vernaux) *aux = (const ElfW(Vernaux) *)(const void *)((const char *)vn + vn->vn_aux);
        for (ElfW(Half) j = 0; j < vn->vn_cnt; j++) {
            if (aux->vna_other == idx)
                return strtab + aux->vna_name;
            aux = (const ElfW(Vernaux) *)(const void *)((const char *)aux + aux->vna_next);
        }
        if (vn->vn_next == 0)
            break;
        vn = (const ElfW(Verneed) *)(const void *)((const char *)vn + vn->vn_next);
    }
    return NULL;
}

static int patch_slot(void **slot, void *value, uintptr_t relro_lo, uintptr_t relro_hi)
{
    uintptr_t addr = (uintptr_t)slot;
    int in_relro = addr >= relro_lo && addr < relro_hi;
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t page_start = addr & ~((uintptr_t)page - 1);
    if (in_relro && mprotect((void *)page_start, (size_t)page, PROT_READ | PROT_WRITE) != 0)
        return -errno;
    __atomic_store_n(slot, value, __ATOMIC_RELEASE);
    if (in_relro)
        mprotect((void *)page_start, (size_t)page, PROT_READ);
    return 0;
}

static void patch_relocs(const ElfW(Rela) *rela, size_t count, uintptr_t base,
                         const ElfW(Sym) *symtab, const char *strtab,
                         const ElfW(Half) *versym, const ElfW(Verneed) *verneed,
                         size_t verneednum, uintptr_t relro_lo, uintptr_t relro_hi, int *err)
{
    for (size_t i = 0; i < count; i++) {
        unsigned long type = ELF64_R_TYPE(rela[i].r_info);
#if defined(__x86_64__)
        if (type != R_X86_64_JUMP_SLOT && type != R_X86_64_GLOB_DAT)
            continue;
#elif defined(__aarch64__)
        if (type != R_AARCH64_JUMP_SLOT && type != R_AARCH64_GLOB_DAT)
            continue;
#else
        (void)type;
        continue;
#endif
        size_t sym = ELF64_R_SYM(rela[i].r_info);
        const char *name = strtab + symtab[sym].st_name;
        for (size_t k = 0; k < N_TARGETS; k++) {
            if (strcmp(name, g_targets[k].name) != 0)
                continue;
            const char *version = symbol_version(versym, verneed, verneednum, strtab, sym);
            if (g_targets[k].skip_version && version &&
                strcmp(version, g_targets[k].skip_version) == 0)
                break;
            if (g_npatched >= MAX_PATCHED)
                break;
            void **slot = (void **)(base + rela[i].r_offset);
            void *original = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
            int rc = patch_slot(slot, g_targets[k].wrapper, relro_lo, relro_hi);
            if (rc < 0) {
                *err = rc;
                break;
            }
            g_patched[g_npatched].slot = slot;
            g_patched[g_npatched].original = original;
            g_patched[g_npatched].in_relro = (uintptr_t)slot >= relro_lo && (uintptr_t)slot < relro_hi;
            g_npatched++;
            if (g_targets[k].is_sem == 1)
                g_status.slots_sem++;
            else if (g_targets[k].is_sem == 0)
                g_status.slots_cond++;
            else if (g_targets[k].is_sem == 2)
                g_status.slots_create++;
            break;
        }
    }
}

static int install_in_object(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    install_ctx *ctx = data;
    uintptr_t base = info->dlpi_addr;
    uintptr_t anchor = (uintptr_t)ctx->anchor;
    int contains = 0;
    const ElfW(Dyn) *dyn = NULL;
    uintptr_t relro_lo = 0, relro_hi = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t lo = base + ph->p_vaddr, hi = lo + ph->p_memsz;
        if (ph->p_type == PT_LOAD && anchor >= lo && anchor < hi)
            contains = 1;
        else if (ph->p_type == PT_DYNAMIC)
            dyn = (const ElfW(Dyn) *)lo;
        else if (ph->p_type == PT_GNU_RELRO) {
            relro_lo = lo;
            relro_hi = hi;
        }
    }
    if (!contains)
        return 0;
    ctx->found = 1;
    snprintf(g_status.object, sizeof g_status.object, "%s", info->dlpi_name);
    if (!dyn) {
        ctx->err = -ENOENT;
        return 1;
    }
    const ElfW(Sym) *symtab = NULL;
    const char *strtab = NULL;
    const ElfW(Rela) *jmprel = NULL, *rela = NULL;
    size_t pltrelsz = 0, relasz = 0, verneednum = 0;
    const ElfW(Half) *versym = NULL;
    const ElfW(Verneed) *verneed = NULL;
    for (const ElfW(Dyn) *d = dyn; d->d_tag != DT_NULL; d++) {
        switch (d->d_tag) {
        case DT_SYMTAB: symtab = (const ElfW(Sym) *)dyn_ptr(base, d->d_un.d_ptr); break;
        case DT_STRTAB: strtab = (const char *)dyn_ptr(base, d->d_un.d_ptr); break;
        case DT_JMPREL: jmprel = (const ElfW(Rela) *)dyn_ptr(base, d->d_un.d_ptr); break;
        case DT_PLTRELSZ: pltrelsz = d->d_un.d_val; break;
        case DT_RELA: rela = (const ElfW(Rela) *)dyn_ptr(base, d->d_un.d_ptr); break;
        case DT_RELASZ: relasz = d->d_un.d_val; break;
        case DT_VERSYM: versym = (const ElfW(Half) *)dyn_ptr(base, d->d_un.d_ptr); break;
        case DT_VERNEED: verneed = (const ElfW(Verneed) *)dyn_ptr(base, d->d_un.d_ptr); break;
        case DT_VERNEEDNUM: verneednum = d->d_un.d_val; break;
        default: break;
        }
    }
    if (!symtab || !strtab) {
        ctx->err = -ENOENT;
        return 1;
    }
    if (jmprel)
        patch_relocs(jmprel, pltrelsz / sizeof(ElfW(Rela)), base, symtab, strtab, versym,
                     verneed, verneednum, relro_lo, relro_hi, &ctx->err);
    if (rela)
        patch_relocs(rela, relasz / sizeof(ElfW(Rela)), base, symtab, strtab, versym,
                     verneed, verneednum, relro_lo, relro_hi, &ctx->err);
    return 1;
}

static int restore_all(void)
{
    int err = 0;
    for (int i = g_npatched - 1; i >= 0; i--) {
        uintptr_t slot = (uintptr_t)g_patched[i].slot;
        uintptr_t relro_lo = g_patched[i].in_relro ? slot : 0;
        uintptr_t relro_hi = g_patched[i].in_relro ? slot + 1 : 0;
        int rc = patch_slot(g_patched[i].slot, g_patched[i].original, relro_lo, relro_hi);
        if (rc < 0)
            err = rc;
    }
    g_npatched = 0;
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
    g_short_waiters = 0;
    g_gil_waiters = 0;
    tls_held_since = 0;
    tls_gil_wanted_since = 0;
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
        snprintf(g_status.reason, sizeof g_status.reason, "disabled by GIL_ADAPT_HOOK=%.16s",
                 env);
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
    install_ctx ctx = {anchor, 0, 0};
    dl_iterate_phdr(install_in_object, &ctx);
    if (!ctx.found) {
        snprintf(g_status.reason, sizeof g_status.reason, "no loaded object contains the interpreter");
        rc = -ENOENT;
    } else if (ctx.err < 0) {
        restore_all();
        snprintf(g_status.reason, sizeof g_status.reason, "patching the GOT failed: %s", strerror(-ctx.err));
        rc = ctx.err;
    } else if (g_status.slots_cond == 0) {
        restore_all();
        snprintf(g_status.reason, sizeof g_status.reason,
                 "the interpreter does not import pthread_cond_timedwait@GLIBC_2.3.2 through its GOT");
        rc = -ENOENT;
    } else {
        g_status.installed = 1;
        g_status.reason[0] = '\0';
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
        rc = restore_all();
        g_status.installed = 0;
        g_status.slots_cond = g_status.slots_sem = g_status.slots_create = 0;
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
    void *sw = gil_cond ? (void *)((char *)gil_cond + GIL_COND_TO_SWITCH_COND) : NULL;
    void *mx = gil_cond ? (void *)((char *)gil_cond + sizeof(pthread_cond_t)) : NULL;
    atomic_store(&g_switch_cond, sw);
    atomic_store(&g_gil_mutex, mx);
    atomic_store(&g_gil_cond, gil_cond);
}

void *gla_hook_gil(void) { return atomic_load(&g_gil_cond); }

uint64_t gla_hook_gil_held_ns(const gla_thread *t, uint64_t now_ns)
{
    if (!t)
        return 0;
    uint64_t held = gla_ledger_wait(t, GLA_GIL_HELD); /* acquire: then the record below */
    if (atomic_load_explicit(&g_holder, memory_order_acquire) == t) {
        uint64_t since = atomic_load_explicit(&g_holder_since, memory_order_relaxed);
        if (since && now_ns > since)
            held += now_ns - since;
    }
    return held;
}

uint64_t gla_hook_self_gil_held_ns(void)
{
    gla_thread *t = gla_ledger_self_nosys();
    uint64_t held = t ? gla_ledger_wait(t, GLA_GIL_HELD) : 0;
    uint64_t since = tls_held_since;
    if (since) {
        uint64_t now = mono_ns();
        if (now > since)
            held += now - since;
    }
    return held;
}

long long gla_gil_switches(void)
{
    const char *cond = atomic_load(&g_gil_cond);
    if (!cond)
        return -1;
    return (long long)__atomic_load_n((const unsigned long *)(const void *)(cond + GIL_COND_TO_SWITCH_NUMBER),
                                      __ATOMIC_RELAXED);
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

int gla_gil_layout_ok(const void *cond, unsigned long switch_interval_us, const void *lo, const void *hi)
{
    const char *c = cond;
    if (!c)
        return 0;
    if (hi > lo && ((const char *)cond < (const char *)lo || (const char *)cond >= (const char *)hi))
        return 0;
    unsigned long interval = __atomic_load_n((const unsigned long *)(const void *)(c + GIL_COND_TO_INTERVAL), __ATOMIC_RELAXED);
    int locked = __atomic_load_n((const int *)(const void *)(c + GIL_COND_TO_LOCKED), __ATOMIC_RELAXED);
    return interval == switch_interval_us && (locked == 0 || locked == 1);
}

int gla_hook_set_calm(int keep)
{
    if (keep < 0)
        keep = 0;
    return atomic_exchange(&g_calm_keep, keep);
}

int gla_hook_set_calm_above(int above)
{
    if (above < 0)
        above = 0;
    return atomic_exchange(&g_calm_above, above);
}

int gla_hook_calm_above(void)
{
    return atomic_load_explicit(&g_calm_above, memory_order_relaxed);
}

int gla_hook_calm(uint64_t *stretched)
{
    if (stretched)
        *stretched = atomic_load_explicit(&g_calm_stretched, memory_order_relaxed);
    return atomic_load_explicit(&g_calm_keep, memory_order_relaxed);
}
