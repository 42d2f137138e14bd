/* ledger.c — see ledger.h for the contract.
 *
 * Layout: a static table of GLA_MAX_THREADS records (BSS: only the pages of records in use
 * become resident). A record's slot is a free or recyclable one (dead for GLA_DEAD_KEEP_NS)
 * in the used part of the table, else a new one (an atomic counter), else the one dead
 * longest. Lookups
 * by tid scan the used part of the table; a thread does that once, then keeps its record
 * in initial-exec TLS (no lazy TLS allocation, so the hook may use it).
 *
 * The partition of wall time is stated in ledger.h and done by gla_sample_finish.
 */
#include "ledger.h"
#include "procstat.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

enum { SLOT_FREE = 0, SLOT_CLAIMED = 1, SLOT_LIVE = 2, SLOT_DEAD = 3 };

/* A slot's state word: the state in the low byte, above it the number of times the slot
 * was claimed. Taking a record from another party (a twin, below) compares the whole word,
 * so a slot freed and claimed again meanwhile (by another thread) is never taken by
 * mistake. */
static inline int st_of(uint64_t w)
{
    return (int)(w & 0xffu);
}
static inline uint64_t with_st(uint64_t w, int st)
{
    return (w & ~(uint64_t)0xffu) | (uint64_t)st;
}

struct gla_thread {
    _Atomic uint64_t state; /* see st_of */
    _Atomic int tid;
    _Atomic int registered;
    _Atomic uint64_t generation;
    _Atomic uint64_t serial;
    _Atomic uint64_t start_ns;
    _Atomic uint64_t end_ns;
    _Atomic uint64_t wait_ns[GLA_NWAIT];
    /* The wait in progress (readers include its elapsed part), guarded by a sequence
     * counter the owner makes odd while it updates wait_ns/open_*. */
    _Atomic unsigned seq;
    _Atomic int open_kind;        /* -1: none */
    _Atomic uint64_t open_start_ns;
    _Atomic uint64_t cpu_ns;      /* kernel total, last read (final once dead) */
    _Atomic uint64_t runq_ns;
    _Atomic uint64_t cpu_base_ns; /* kernel totals when accounting started */
    _Atomic uint64_t runq_base_ns;
    _Atomic int start_known;      /* start_ns is exact or read from /proc */
    char name[GLA_NAME_LEN];      /* written and read under g_reader_lock only... */
    uint64_t name_generation;     /* ...as is the generation (life) it was read for */
};

static struct gla_thread g_slots[GLA_MAX_THREADS];
static _Atomic int g_used;      /* high-water mark of claimed slots */
static _Atomic uint64_t g_dropped;
static _Atomic uint64_t g_serial;
static _Atomic uint64_t g_take_samples, g_take_sample_cpu_ns, g_take_sample_runq_ns,
    g_take_sample_tail_ns;
static _Atomic uint64_t g_drop_samples, g_drop_sample_runq_ns;
static _Atomic int g_inited;
static pthread_key_t g_exit_key;
static int g_exit_key_ok;       /* key usable without allocation (index < 32) */
static _Atomic long g_tid_offset = -1; /* offset of the tid in glibc's struct pthread */
static pthread_mutex_t g_reader_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t g_init_lock = PTHREAD_MUTEX_INITIALIZER;

/* Totals of exited threads (under g_reader_lock). */
static gla_sample g_exited;

static void sample_record(struct gla_thread *t, gla_sample *s, uint64_t now);

/* Folds a record that just died into the exited totals (g_reader_lock held). */
static void add_exited(struct gla_thread *t)
{
    gla_sample s;
    sample_record(t, &s, 0);
    g_exited.wall_ns += s.wall_ns;
    g_exited.cpu_ns += s.cpu_ns;
    g_exited.runq_ns += s.runq_ns;
    g_exited.gil_wait_ns += s.gil_wait_ns;
    g_exited.lock_wait_ns += s.lock_wait_ns;
    g_exited.idle_ns += s.idle_ns;
    g_exited.io_wait_ns += s.io_wait_ns;
    g_exited.overlap_ns += s.overlap_ns;
    g_exited.raw_cpu_ns += s.raw_cpu_ns;
    g_exited.raw_runq_ns += s.raw_runq_ns;
    g_exited.raw_gil_wait_ns += s.raw_gil_wait_ns;
    g_exited.raw_lock_wait_ns += s.raw_lock_wait_ns;
    g_exited.raw_idle_ns += s.raw_idle_ns;
    g_exited.gil_tail_ns += s.gil_tail_ns;
    g_exited.lock_cpu_ns += s.lock_cpu_ns;
    g_exited.lock_runq_ns += s.lock_runq_ns;
    g_exited.gil_held_ns += s.gil_held_ns;
    g_exited.gil_takes += s.gil_takes;
    g_exited.switch_tail_ns += s.switch_tail_ns;
    g_exited.gil_drops += s.gil_drops;
}

static __thread struct gla_thread *tls_self __attribute__((tls_model("initial-exec")));
static __thread uint64_t tls_generation __attribute__((tls_model("initial-exec")));
static __thread int tls_schedstat_fd __attribute__((tls_model("initial-exec"))); /* fd + 1 */
/* The state word of the slot this thread claimed last (take_slot), as it published it. */
static __thread uint64_t tls_claimed_word __attribute__((tls_model("initial-exec")));

uint64_t gla_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static pid_t sys_gettid(void)
{
    return (pid_t)syscall(SYS_gettid);
}

/* ---- tid without a system call ---------------------------------------------------- */

/* Offsets (in ints) within the first bytes of struct pthread that hold the value v. */
static int scan_for(const int *base, int v, unsigned char *hits, int nints)
{
    int n = 0;
    for (int i = 0; i < nints; i++) {
        if (base[i] == v) {
            hits[i]++;
            n++;
        }
    }
    return n;
}

#define TID_SCAN_INTS 512
static unsigned char g_tid_hits[TID_SCAN_INTS];

static void *tid_probe_thread(void *arg)
{
    (void)arg;
    scan_for((const int *)(void *)pthread_self(), (int)sys_gettid(), g_tid_hits, TID_SCAN_INTS);
    return NULL;
}

/* Finds where glibc keeps the kernel tid in struct pthread: the offset must hold the
 * caller's tid in this thread and in a fresh one (whose tid differs from the pid). */
static void discover_tid_offset(void)
{
    memset(g_tid_hits, 0, sizeof g_tid_hits);
    scan_for((const int *)(void *)pthread_self(), (int)sys_gettid(), g_tid_hits, TID_SCAN_INTS);
    pthread_t probe;
    if (pthread_create(&probe, NULL, tid_probe_thread, NULL) != 0)
        return;
    pthread_join(probe, NULL);
    for (int i = 0; i < TID_SCAN_INTS; i++) {
        if (g_tid_hits[i] == 2) {
            atomic_store(&g_tid_offset, (long)i * (long)sizeof(int));
            return;
        }
    }
}

static inline pid_t tid_nosys(void)
{
    long off = atomic_load_explicit(&g_tid_offset, memory_order_relaxed);
    if (off < 0)
        return 0;
    return *(const pid_t *)(const void *)((const char *)(void *)pthread_self() + off);
}

/* ---- records ---------------------------------------------------------------------- */

/* How long dead records stay listed: GLA_DEAD_KEEP_NS, or GIL_ADAPT_DEAD_KEEP_MS from the
 * environment at init (tests shorten it). */
static uint64_t g_dead_keep_ns = GLA_DEAD_KEEP_NS;

/* The part of the table ever claimed (the slots above were never used). */
static int used_slots(void)
{
    int used = atomic_load_explicit(&g_used, memory_order_acquire);
    return used > GLA_MAX_THREADS ? GLA_MAX_THREADS : used;
}

/* A dead record no reader lists any more: its slot may take a new thread. */
static int recyclable(const struct gla_thread *t, uint64_t now)
{
    uint64_t end = atomic_load_explicit(&t->end_ns, memory_order_relaxed);
    return now >= end && now - end >= g_dead_keep_ns;
}

static void reset_record(struct gla_thread *t, pid_t tid, uint64_t start_ns)
{
    atomic_store_explicit(&t->tid, tid, memory_order_relaxed);
    atomic_store_explicit(&t->registered, 0, memory_order_relaxed);
    atomic_store_explicit(&t->start_ns, start_ns, memory_order_relaxed);
    atomic_store_explicit(&t->end_ns, 0, memory_order_relaxed);
    for (int k = 0; k < GLA_NWAIT; k++)
        atomic_store_explicit(&t->wait_ns[k], 0, memory_order_relaxed);
    atomic_store_explicit(&t->open_kind, -1, memory_order_relaxed);
    atomic_store_explicit(&t->open_start_ns, 0, memory_order_relaxed);
    atomic_store_explicit(&t->cpu_ns, 0, memory_order_relaxed);
    atomic_store_explicit(&t->runq_ns, 0, memory_order_relaxed);
    atomic_store_explicit(&t->cpu_base_ns, 0, memory_order_relaxed);
    atomic_store_explicit(&t->runq_base_ns, 0, memory_order_relaxed);
    atomic_store_explicit(&t->start_known, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&t->generation, 1, memory_order_relaxed);
    atomic_store_explicit(&t->serial,
                          atomic_fetch_add_explicit(&g_serial, 1, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

static inline int slot_state(struct gla_thread *t, memory_order mo)
{
    return st_of(atomic_load_explicit(&t->state, mo));
}

/* Moves t from state `from` to `to` if it is in `from` (keeping its claim count). */
static int slot_move(struct gla_thread *t, int from, int to)
{
    uint64_t w = atomic_load(&t->state);
    while (st_of(w) == from) {
        if (atomic_compare_exchange_weak(&t->state, &w, with_st(w, to)))
            return 1;
    }
    return 0;
}

static struct gla_thread *take_slot(struct gla_thread *t, int st, pid_t tid, uint64_t now)
{
    uint64_t w = atomic_load(&t->state);
    uint64_t claimed = (((w >> 8) + 1) << 8) | SLOT_CLAIMED;
    if (st_of(w) != st || !atomic_compare_exchange_strong(&t->state, &w, claimed))
        return NULL;
    reset_record(t, tid, now);
    tls_claimed_word = with_st(claimed, SLOT_LIVE);
    atomic_store(&t->state, tls_claimed_word); /* seq_cst: see find_twin */
    return t;
}

/* Claims a slot for tid (no system call, no allocation): a free or recyclable one in the
 * used part of the table first (so the table follows the threads alive and recently
 * exited), else a new one, else the one dead longest (its figures are in the exited
 * aggregate already). */
static struct gla_thread *claim_slot(pid_t tid, uint64_t now)
{
    for (;;) {
        int used = used_slots();
        for (int i = 0; i < used; i++) {
            struct gla_thread *t = &g_slots[i];
            int st = slot_state(t, memory_order_acquire);
            if ((st == SLOT_FREE || (st == SLOT_DEAD && recyclable(t, now))) &&
                take_slot(t, st, tid, now))
                return t;
        }
        int idx = atomic_fetch_add_explicit(&g_used, 1, memory_order_acq_rel);
        if (idx >= GLA_MAX_THREADS) {
            atomic_store_explicit(&g_used, GLA_MAX_THREADS, memory_order_relaxed);
            break;
        }
        if (take_slot(&g_slots[idx], SLOT_FREE, tid, now))
            return &g_slots[idx];
        /* another claimer's scan took that slot first: look again */
    }
    /* Every slot is in use: recycle the record of the thread that exited longest ago. */
    for (int tries = 0; tries < 4; tries++) {
        struct gla_thread *oldest = NULL;
        uint64_t oldest_end = UINT64_MAX;
        for (int i = 0; i < GLA_MAX_THREADS; i++) {
            struct gla_thread *t = &g_slots[i];
            int st = slot_state(t, memory_order_acquire);
            if (st == SLOT_FREE && take_slot(t, st, tid, now))
                return t;
            uint64_t end = atomic_load_explicit(&t->end_ns, memory_order_relaxed);
            if (st == SLOT_DEAD && end < oldest_end) {
                oldest = t;
                oldest_end = end;
            }
        }
        if (!oldest)
            break;
        if (take_slot(oldest, SLOT_DEAD, tid, now))
            return oldest;
    }
    atomic_fetch_add_explicit(&g_dropped, 1, memory_order_relaxed);
    return NULL;
}

static struct gla_thread *find_live(pid_t tid)
{
    int used = used_slots();
    for (int i = 0; i < used; i++) {
        struct gla_thread *t = &g_slots[i];
        if (slot_state(t, memory_order_acquire) == SLOT_LIVE &&
            atomic_load_explicit(&t->tid, memory_order_relaxed) == tid)
            return t;
    }
    return NULL;
}

/* A thread registering itself and a reader discovering it in /proc can both miss the
 * other's record and claim one each. Each side checks again after claiming (sequentially
 * consistent: at least one sees the other): the thread frees the other live records of
 * its tid (a discovered twin holds only kernel figures, never waits); the reader frees
 * its own when another exists. A freed twin is never folded into the exited totals. */
static void free_twin(struct gla_thread *twin, uint64_t seen)
{
    /* only the life seen: a slot freed and claimed again since has a new claim count */
    atomic_compare_exchange_strong(&twin->state, &seen, with_st(seen, SLOT_FREE));
}

/* Another live record of tid; *seen: its state word as read. */
static struct gla_thread *find_twin(const struct gla_thread *t, pid_t tid, uint64_t *seen)
{
    int used = atomic_load(&g_used);
    if (used > GLA_MAX_THREADS)
        used = GLA_MAX_THREADS;
    for (int i = 0; i < used; i++) {
        struct gla_thread *o = &g_slots[i];
        uint64_t w = atomic_load(&o->state);
        if (o != t && st_of(w) == SLOT_LIVE &&
            atomic_load_explicit(&o->tid, memory_order_relaxed) == tid) {
            *seen = w;
            return o;
        }
    }
    return NULL;
}

static void thread_drops_twins(struct gla_thread *t, pid_t tid)
{
    struct gla_thread *o;
    uint64_t seen;
    for (int i = 0; i < 64 && (o = find_twin(t, tid, &seen)) != NULL; i++)
        free_twin(o, seen);
}

static inline struct gla_thread *tls_record(void)
{
    struct gla_thread *t = tls_self;
    if (t && atomic_load_explicit(&t->generation, memory_order_relaxed) == tls_generation &&
        slot_state(t, memory_order_relaxed) == SLOT_LIVE)
        return t;
    return NULL;
}

static void bind_tls(struct gla_thread *t, int may_set_key)
{
    tls_self = t;
    tls_generation = atomic_load_explicit(&t->generation, memory_order_relaxed);
    if (may_set_key && g_exit_key_ok)
        pthread_setspecific(g_exit_key, t); /* first-level key: no allocation */
}

/* Final totals at thread exit (runs in the exiting thread, no lock of the GIL held). */
static void on_thread_exit(void *arg)
{
    struct gla_thread *t = arg;
    if (tls_schedstat_fd > 0) {
        close(tls_schedstat_fd - 1);
        tls_schedstat_fd = 0;
    }
    if (!t || slot_state(t, memory_order_acquire) != SLOT_LIVE)
        return;
    uint64_t cpu, runq, start;
    if (!atomic_load_explicit(&t->start_known, memory_order_relaxed) &&
        gla_read_thread_start_ns(0, &start) == 0) {
        atomic_store_explicit(&t->start_ns, start, memory_order_relaxed);
        atomic_store_explicit(&t->start_known, 1, memory_order_relaxed);
    }
    if (gla_read_schedstat(0, &cpu, &runq) == 0) {
        atomic_store_explicit(&t->cpu_ns, cpu, memory_order_relaxed);
        atomic_store_explicit(&t->runq_ns, runq, memory_order_relaxed);
    }
    pthread_mutex_lock(&g_reader_lock);
    atomic_store_explicit(&t->end_ns, gla_now_ns(), memory_order_relaxed);
    if (slot_move(t, SLOT_LIVE, SLOT_DEAD)) /* unless a reader found it gone first */
        add_exited(t);
    pthread_mutex_unlock(&g_reader_lock);
    tls_self = NULL;
}

int gla_ledger_own_schedstat(uint64_t *cpu_ns, uint64_t *runq_ns)
{
    if (tls_schedstat_fd <= 0) {
        if (!gla_ledger_self()) /* its exit destructor closes the file */
            return gla_read_schedstat(0, cpu_ns, runq_ns);
        int fd = gla_open_own_schedstat();
        if (fd < 0)
            return fd;
        tls_schedstat_fd = fd + 1;
    }
    return gla_read_schedstat_fd(tls_schedstat_fd - 1, cpu_ns, runq_ns);
}

static void atfork_child(void)
{
    /* Only the forking thread exists in the child: forget the others. Its schedstat
     * file still names the parent's thread. */
    struct gla_thread *me = tls_record();
    if (tls_schedstat_fd > 0) {
        close(tls_schedstat_fd - 1);
        tls_schedstat_fd = 0;
    }
    int used = used_slots();
    for (int i = 0; i < used; i++) { /* the slots above were never claimed */
        struct gla_thread *t = &g_slots[i];
        if (t != me) /* alone in the child: no other party */
            atomic_store_explicit(&t->state, with_st(atomic_load(&t->state), SLOT_FREE),
                                  memory_order_relaxed);
    }
    memset(&g_exited, 0, sizeof g_exited);
    pthread_mutex_init(&g_reader_lock, NULL);
    pthread_mutex_init(&g_init_lock, NULL);
    if (me) {
        uint64_t cpu = 0, runq = 0;
        gla_read_schedstat(0, &cpu, &runq);
        reset_record(me, sys_gettid(), gla_now_ns());
        atomic_store_explicit(&me->registered, 1, memory_order_relaxed);
        atomic_store_explicit(&me->start_known, 1, memory_order_relaxed);
        atomic_store_explicit(&me->cpu_base_ns, cpu, memory_order_relaxed);
        atomic_store_explicit(&me->runq_base_ns, runq, memory_order_relaxed);
        atomic_store_explicit(&me->state, with_st(atomic_load(&me->state), SLOT_LIVE),
                              memory_order_release);
        bind_tls(me, 1);
    }
}

int gla_ledger_init(void)
{
    if (atomic_load_explicit(&g_inited, memory_order_acquire))
        return 0;
    pthread_mutex_lock(&g_init_lock);
    int rc = 0;
    if (!atomic_load_explicit(&g_inited, memory_order_relaxed)) {
        if (pthread_key_create(&g_exit_key, on_thread_exit) == 0) {
            g_exit_key_ok = (unsigned)g_exit_key < 32u; /* PTHREAD_KEY_2NDLEVEL_SIZE */
        }
        discover_tid_offset();
        const char *keep = getenv("GIL_ADAPT_DEAD_KEEP_MS");
        if (keep && *keep) {
            char *end = NULL;
            unsigned long long ms = strtoull(keep, &end, 10);
            if (end && *end == '\0' && ms <= 3600000ull)
                g_dead_keep_ns = (uint64_t)ms * 1000000ull;
        }
        rc = -pthread_atfork(NULL, NULL, atfork_child);
        atomic_store_explicit(&g_inited, 1, memory_order_release);
    }
    pthread_mutex_unlock(&g_init_lock);
    return rc;
}

gla_thread *gla_ledger_self(void)
{
    struct gla_thread *t = tls_record();
    if (t) {
        if (!atomic_load_explicit(&t->registered, memory_order_relaxed) && g_exit_key_ok)
            pthread_setspecific(g_exit_key, t);
        return t;
    }
    gla_ledger_init();
    pid_t tid = sys_gettid();
    uint64_t cpu = 0, runq = 0;
    gla_read_schedstat(0, &cpu, &runq);
    t = find_live(tid);
    if (!t) {
        t = claim_slot(tid, gla_now_ns());
        if (!t)
            return NULL;
        thread_drops_twins(t, tid);
        atomic_store_explicit(&t->cpu_base_ns, cpu, memory_order_relaxed);
        atomic_store_explicit(&t->runq_base_ns, runq, memory_order_relaxed);
        atomic_store_explicit(&t->start_known, 1, memory_order_relaxed);
        atomic_store_explicit(&t->registered, 1, memory_order_release);
    }
    bind_tls(t, 0);
    pthread_setspecific(g_exit_key, t); /* may allocate: allowed here */
    return t;
}

gla_thread *gla_ledger_self_nosys(void)
{
    struct gla_thread *t = tls_record();
    if (t)
        return t;
    if (!atomic_load_explicit(&g_inited, memory_order_acquire))
        return NULL;
    pid_t tid = tid_nosys();
    if (tid <= 0)
        return NULL;
    t = find_live(tid);
    if (!t) {
        /* Start unknown here (no system call): a reader fills it from /proc. */
        t = claim_slot(tid, gla_now_ns());
        if (!t)
            return NULL;
        thread_drops_twins(t, tid);
    }
    bind_tls(t, 1);
    return t;
}

void gla_ledger_add_wait(gla_thread *t, gla_wait_kind kind, uint64_t ns)
{
    if (t && (unsigned)kind < GLA_NWAIT)
        atomic_fetch_add_explicit(&t->wait_ns[kind], ns, memory_order_release);
}

/* Sequence lock without fences (TSan-friendly): the owner makes seq odd, then
 * publishes the data with release stores, then makes seq even (release); a reader
 * loads seq (acquire), the data (acquire), seq again, and retries on a change. */
static inline void seq_enter(struct gla_thread *t)
{
    atomic_fetch_add_explicit(&t->seq, 1, memory_order_relaxed);
}

static inline void seq_leave(struct gla_thread *t)
{
    atomic_fetch_add_explicit(&t->seq, 1, memory_order_release);
}

void gla_ledger_wait_begin(gla_thread *t, gla_wait_kind kind, uint64_t now_ns)
{
    if (!t || (unsigned)kind > GLA_IDLE)
        return;
    seq_enter(t);
    atomic_store_explicit(&t->open_start_ns, now_ns, memory_order_release);
    atomic_store_explicit(&t->open_kind, (int)kind, memory_order_release);
    seq_leave(t);
}

void gla_ledger_wait_end(gla_thread *t, uint64_t now_ns)
{
    if (!t)
        return;
    int kind = atomic_load_explicit(&t->open_kind, memory_order_relaxed);
    if (kind < 0)
        return;
    uint64_t start = atomic_load_explicit(&t->open_start_ns, memory_order_relaxed);
    seq_enter(t);
    if (now_ns > start)
        atomic_fetch_add_explicit(&t->wait_ns[kind], now_ns - start, memory_order_release);
    atomic_store_explicit(&t->open_kind, -1, memory_order_release);
    seq_leave(t);
}

void gla_ledger_add_drop_sample(uint64_t runq_ns)
{
    atomic_fetch_add_explicit(&g_drop_sample_runq_ns, runq_ns, memory_order_relaxed);
    atomic_fetch_add_explicit(&g_drop_samples, 1, memory_order_release);
}

void gla_ledger_add_take_sample(uint64_t cpu_ns, uint64_t runq_ns, uint64_t tail_ns)
{
    atomic_fetch_add_explicit(&g_take_sample_tail_ns, tail_ns, memory_order_relaxed);
    atomic_fetch_add_explicit(&g_take_sample_cpu_ns, cpu_ns, memory_order_relaxed);
    atomic_fetch_add_explicit(&g_take_sample_runq_ns, runq_ns, memory_order_relaxed);
    atomic_fetch_add_explicit(&g_take_samples, 1, memory_order_release);
}

uint64_t gla_ledger_wait(const gla_thread *t, gla_wait_kind kind)
{
    if (!t || (unsigned)kind >= GLA_NWAIT)
        return 0;
    return atomic_load_explicit(&((struct gla_thread *)t)->wait_ns[kind], memory_order_acquire);
}

static uint64_t take(uint64_t *from, uint64_t want)
{
    uint64_t cut = want < *from ? want : *from;
    *from -= cut;
    return cut;
}

void gla_sample_finish(gla_sample *s)
{
    s->cpu_ns = s->raw_cpu_ns;
    s->runq_ns = s->raw_runq_ns;
    s->gil_wait_ns = s->raw_gil_wait_ns;
    s->lock_wait_ns = s->raw_lock_wait_ns;
    s->idle_ns = s->raw_idle_ns;
    s->overlap_ns = 0;
    /* Lock waits: their inner cpu and run-queue time are known exactly. */
    s->overlap_ns += take(&s->cpu_ns, s->lock_cpu_ns);
    s->overlap_ns += take(&s->runq_ns, s->lock_runq_ns);
    /* GIL waits: from the exactly sampled takes, run-queue time per ns of wake-up tail
     * times this thread's tails, and cpu per take times its contended takes; without
     * samples, the run-queue delay inside the wake-up tails is bounded by the tails. */
    uint64_t room = s->raw_gil_wait_ns; /* what lies inside the waits is at most them */
    uint64_t cut = take(&s->runq_ns, s->switch_tail_ns < room ? s->switch_tail_ns : room);
    room -= cut;
    s->overlap_ns += cut;
    if (s->take_samples > 0 && s->take_sample_tail_ns > 0) {
        double runq_per_tail = (double)s->take_sample_runq_ns / (double)s->take_sample_tail_ns;
        double cpu_per_take = (double)s->take_sample_cpu_ns / (double)s->take_samples;
        uint64_t runq_in = (uint64_t)(runq_per_tail * (double)s->gil_tail_ns);
        uint64_t cpu_in = (uint64_t)(cpu_per_take * (double)s->gil_takes);
        cut = take(&s->runq_ns, runq_in < room ? runq_in : room);
        room -= cut;
        cut += take(&s->cpu_ns, cpu_in < room ? cpu_in : room);
        s->overlap_ns += cut;
    } else {
        s->overlap_ns += take(&s->runq_ns, s->gil_tail_ns < room ? s->gil_tail_ns : room);
    }
    /* GIL drops: run-queue time of the hand-off itself moves to gil_wait. */
    if (s->drop_samples > 0) {
        double handoff = (double)s->drop_sample_runq_ns / (double)s->drop_samples *
                         (double)s->gil_drops;
        s->gil_wait_ns += take(&s->runq_ns, (uint64_t)handoff);
    }
    uint64_t sum = s->cpu_ns + s->runq_ns + s->gil_wait_ns + s->lock_wait_ns + s->idle_ns;
    if (sum <= s->wall_ns) {
        s->io_wait_ns = s->wall_ns - sum;
        return;
    }
    /* Left over (granularity of the clocks, or CPU inside GIL waits): count it once. */
    uint64_t excess = sum - s->wall_ns;
    cut = take(&s->runq_ns, excess);
    cut += take(&s->cpu_ns, excess - cut);
    s->overlap_ns += cut;
    excess -= cut;
    excess -= take(&s->idle_ns, excess);
    excess -= take(&s->lock_wait_ns, excess);
    take(&s->gil_wait_ns, excess);
    s->io_wait_ns = 0;
}

/* Fills s from record t (no /proc read); now=0 means "at its end" for dead records. */
static void sample_record(struct gla_thread *t, gla_sample *s, uint64_t now)
{
    memset(s, 0, sizeof *s);
    s->tid = atomic_load_explicit(&t->tid, memory_order_relaxed);
    s->serial = atomic_load_explicit(&t->serial, memory_order_relaxed);
    s->alive = slot_state(t, memory_order_acquire) == SLOT_LIVE;
    s->registered = atomic_load_explicit(&t->registered, memory_order_relaxed);
    memcpy(s->name, t->name, GLA_NAME_LEN);
    s->start_ns = atomic_load_explicit(&t->start_ns, memory_order_relaxed);
    uint64_t end = s->alive ? now : atomic_load_explicit(&t->end_ns, memory_order_relaxed);
    if (end == 0)
        end = gla_now_ns();
    s->wall_ns = end > s->start_ns ? end - s->start_ns : 0;
    uint64_t cpu = atomic_load_explicit(&t->cpu_ns, memory_order_relaxed);
    uint64_t runq = atomic_load_explicit(&t->runq_ns, memory_order_relaxed);
    uint64_t cpu_base = atomic_load_explicit(&t->cpu_base_ns, memory_order_relaxed);
    uint64_t runq_base = atomic_load_explicit(&t->runq_base_ns, memory_order_relaxed);
    s->raw_cpu_ns = cpu > cpu_base ? cpu - cpu_base : 0;
    s->raw_runq_ns = runq > runq_base ? runq - runq_base : 0;
    uint64_t waits[GLA_NWAIT];
    int open_kind;
    uint64_t open_start;
    for (;;) {
        unsigned seq1 = atomic_load_explicit(&t->seq, memory_order_acquire);
        for (int k = 0; k < GLA_NWAIT; k++)
            waits[k] = atomic_load_explicit(&t->wait_ns[k], memory_order_acquire);
        open_kind = atomic_load_explicit(&t->open_kind, memory_order_acquire);
        open_start = atomic_load_explicit(&t->open_start_ns, memory_order_acquire);
        unsigned seq2 = atomic_load_explicit(&t->seq, memory_order_relaxed);
        if (seq1 == seq2 && !(seq1 & 1u))
            break;
    }
    s->waiting = s->alive ? open_kind : -1;
    /* A wait still in progress counts up to the end of the sample. */
    if (open_kind >= 0 && open_kind < GLA_NWAIT && end > open_start)
        waits[open_kind] += end - open_start;
    s->raw_gil_wait_ns = waits[GLA_GIL_WAIT];
    s->raw_lock_wait_ns = waits[GLA_LOCK_WAIT];
    s->raw_idle_ns = waits[GLA_IDLE];
    s->gil_tail_ns = waits[GLA_GIL_TAIL];
    s->lock_cpu_ns = waits[GLA_LOCK_CPU];
    s->lock_runq_ns = waits[GLA_LOCK_RUNQ];
    s->gil_held_ns = waits[GLA_GIL_HELD];
    s->gil_takes = waits[GLA_GIL_TAKES];
    s->switch_tail_ns = waits[GLA_SWITCH_TAIL];
    s->gil_drops = waits[GLA_GIL_DROPS];
    s->drop_samples = atomic_load_explicit(&g_drop_samples, memory_order_acquire);
    s->drop_sample_runq_ns = atomic_load_explicit(&g_drop_sample_runq_ns, memory_order_relaxed);
    s->take_samples = atomic_load_explicit(&g_take_samples, memory_order_acquire);
    s->take_sample_cpu_ns = atomic_load_explicit(&g_take_sample_cpu_ns, memory_order_relaxed);
    s->take_sample_runq_ns = atomic_load_explicit(&g_take_sample_runq_ns, memory_order_relaxed);
    s->take_sample_tail_ns = atomic_load_explicit(&g_take_sample_tail_ns, memory_order_relaxed);
    gla_sample_finish(s);
}

int gla_ledger_sample_self(gla_sample *out)
{
    struct gla_thread *t = gla_ledger_self();
    if (!t)
        return -ENOSPC;
    uint64_t cpu, runq;
    int rc = gla_read_schedstat(0, &cpu, &runq);
    if (rc < 0)
        return rc;
    atomic_store_explicit(&t->cpu_ns, cpu, memory_order_relaxed);
    atomic_store_explicit(&t->runq_ns, runq, memory_order_relaxed);
    sample_record(t, out, gla_now_ns());
    return 0;
}

/* A thread whose record died less than EXITING_NS ago and is still listed in /proc is
 * ending (its TLS destructor ran; readers mark a record dead only once the kernel no
 * longer lists it): it must not be discovered again, as a new record would hold its whole
 * life with no waits. (A new thread that reuses the tid that soon is found afterwards.) */
#define EXITING_NS 2000000000ull
static int exiting(pid_t tid, uint64_t now)
{
    int used = used_slots();
    for (int i = 0; i < used; i++) {
        struct gla_thread *t = &g_slots[i];
        if (slot_state(t, memory_order_acquire) == SLOT_DEAD &&
            atomic_load_explicit(&t->tid, memory_order_relaxed) == tid &&
            now - atomic_load_explicit(&t->end_ns, memory_order_relaxed) < EXITING_NS)
            return 1;
    }
    return 0;
}

/* Adds records for threads of this process not yet in the table (reader lock held). */
static void discover_threads(void)
{
    DIR *dir = opendir("/proc/self/task");
    if (!dir)
        return;
    struct dirent *ent;
    while ((ent = readdir(dir)) != NULL) {
        int tid = atoi(ent->d_name);
        if (tid <= 0 || find_live(tid) || exiting(tid, gla_now_ns()))
            continue;
        struct gla_thread *t = claim_slot(tid, gla_now_ns());
        if (!t)
            continue;
        uint64_t mine = tls_claimed_word, seen;
        if (find_twin(t, tid, &seen)) { /* the thread registered itself meanwhile */
            free_twin(t, mine); /* unless the thread freed it first (then it is not ours) */
            continue;
        }
        /* Unregistered thread: its kernel totals count from its birth. */
        uint64_t start;
        if (gla_read_thread_start_ns(tid, &start) == 0) {
            atomic_store_explicit(&t->start_ns, start, memory_order_relaxed);
            atomic_store_explicit(&t->start_known, 1, memory_order_relaxed);
        }
    }
    closedir(dir);
}

int gla_ledger_read(gla_sample *out, size_t cap, size_t *n)
{
    return gla_ledger_read_exited(out, cap, n, NULL);
}

int gla_ledger_read_exited(gla_sample *out, size_t cap, size_t *n, gla_sample *exited)
{
    gla_ledger_init();
    pthread_mutex_lock(&g_reader_lock);
    discover_threads();
    uint64_t now = gla_now_ns();
    size_t written = 0;
    int rc = 0;
    int used = used_slots();
    for (int i = 0; i < used; i++) {
        struct gla_thread *t = &g_slots[i];
        int st = slot_state(t, memory_order_acquire);
        if (st != SLOT_LIVE && (st != SLOT_DEAD || recyclable(t, now)))
            continue; /* a record dead long enough is in the exited aggregate only */
        pid_t tid = atomic_load_explicit(&t->tid, memory_order_relaxed);
        uint64_t gen = atomic_load_explicit(&t->generation, memory_order_relaxed);
        if (t->name_generation != gen) { /* a recycled slot: not the last life's name */
            t->name[0] = '\0';
            t->name_generation = gen;
        }
        if (st == SLOT_LIVE) {
            if (!atomic_load_explicit(&t->start_known, memory_order_relaxed)) {
                uint64_t start;
                if (gla_read_thread_start_ns(tid, &start) == 0)
                    atomic_store_explicit(&t->start_ns, start, memory_order_relaxed);
                atomic_store_explicit(&t->start_known, 1, memory_order_relaxed);
            }
            if (t->name[0] == '\0')
                gla_read_thread_name(tid, t->name, GLA_NAME_LEN);
            uint64_t cpu, runq;
            if (gla_read_schedstat(tid, &cpu, &runq) == 0) {
                atomic_store_explicit(&t->cpu_ns, cpu, memory_order_relaxed);
                atomic_store_explicit(&t->runq_ns, runq, memory_order_relaxed);
            } else {
                /* Gone without telling us (not registered): last figures are final. */
                atomic_store_explicit(&t->end_ns, now, memory_order_relaxed);
                if (slot_move(t, SLOT_LIVE, SLOT_DEAD))
                    add_exited(t);
            }
        }
        if (written < cap)
            sample_record(t, &out[written], now);
        else
            rc = -ENOSPC;
        written++;
    }
    if (exited)
        *exited = g_exited;
    pthread_mutex_unlock(&g_reader_lock);
    *n = written < cap ? written : cap;
    return rc;
}

void gla_ledger_exited(gla_sample *out)
{
    pthread_mutex_lock(&g_reader_lock);
    *out = g_exited;
    pthread_mutex_unlock(&g_reader_lock);
}

uint64_t gla_ledger_dropped(void)
{
    return atomic_load_explicit(&g_dropped, memory_order_relaxed);
}
