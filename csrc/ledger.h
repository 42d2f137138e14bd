/* ledger.h — the per-thread time ledger (measure).
 *
 * Contract
 * --------
 * Every thread the ledger knows has one record, keyed by its kernel thread id (tid).
 * A record holds cumulative nanosecond counters of where the thread's wall time went:
 *
 *   gil_wait   time inside the interpreter's GIL condition waits (hook, exact, inclusive)
 *   lock_wait  time inside Python-level lock waits (sem_* hooks, inclusive)
 *   idle       time an executor worker waited for work (reported by the worker loop)
 *   cpu, runq  from the kernel (/proc/.../schedstat fields 1 and 2), sampled by readers
 *
 * io_wait is never stored: a reader derives it as the remainder (see gla_sample_finish).
 *
 * Partition (no time counted twice). The kernel's cpu and run-queue totals include the
 * CPU and run-queue delay that happen inside lock and GIL waits; the waits are timed
 * inclusively. So:
 *   lock waits: the lock hook reads the thread's schedstat just before and after each
 *     blocking wait (it holds no lock then), so their inner cpu/runq are known exactly
 *     and removed from cpu/runq;
 *   GIL waits: the hook may not make system calls while the GIL's mutex is held, but a
 *     thread about to take a held GIL holds no lock before it locks that mutex, nor
 *     after take_gil unlocks it: it reads its schedstat there, for at most one take per
 *     2 ms in the whole process. The samples' run-queue time per ns of wake-up tail
 *     (time from the hand-off that woke a waiter to its return), times the thread's
 *     tails, and their cpu per take, times its contended takes, are removed from its
 *     runq/cpu (an estimate from exact samples: a ratio estimator; with no sample in the
 *     interval, the run-queue time inside the tails is bounded by min(tail, runq));
 *   anything still left over (sum above wall: clock granularity) is trimmed from runq,
 *   then cpu, then the waits, so the states add up to wall exactly and none is < 0.
 *
 * Threads
 *  - Records are created by: the thread itself (gla_ledger_self, may allocate and make
 *    system calls), the GIL/lock hooks (gla_ledger_self_nosys: no system call, no
 *    allocation, for use while the GIL's mutex is held), or a reader discovering the
 *    thread in /proc/self/task (gla_ledger_read).
 *  - A thread that registered itself leaves its final cpu/runq totals in the record when
 *    it exits (TLS destructor). Totals of every exited thread are folded into a
 *    process-wide "exited" aggregate that never shrinks, and the record is listed by
 *    readers ("alive" = 0) for GLA_DEAD_KEEP_NS; after that it is no longer listed and
 *    its slot is recycled (a reader that compares two reads further apart finds the
 *    difference in the exited aggregate, read consistently with the records by
 *    gla_ledger_read_exited). A new thread takes a recyclable slot before the table
 *    grows, so the table, and a read's cost, follow the threads alive and recently
 *    exited, not every thread ever started.
 *  - Records are never freed; the table has GLA_MAX_THREADS slots. When no slot is
 *    free or recyclable, the record of the thread that exited longest ago is recycled
 *    early; only when every slot holds a live thread is a new thread not recorded, and
 *    gla_ledger_dropped() counts it.
 *
 * Concurrency
 *  - Wait counters are written only by the owning thread (relaxed atomic adds); all other
 *    fields are published with release stores and read with acquire loads. Any thread may
 *    read at any time without the GIL. The table itself is append-only.
 *  - No function here needs Python.h.
 *
 * fork(): gla_ledger_atfork_child() (registered by gla_ledger_init) drops every record
 * except the calling thread's, whose counters restart at zero in the child.
 */
#ifndef GIL_ADAPT_LEDGER_H
#define GIL_ADAPT_LEDGER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GLA_MAX_THREADS 16384
#define GLA_NAME_LEN 16
#define GLA_DEAD_KEEP_NS (10ull * 1000000000ull) /* GIL_ADAPT_DEAD_KEEP_MS overrides it */

typedef enum {
    GLA_GIL_WAIT = 0,
    GLA_LOCK_WAIT = 1,
    GLA_IDLE = 2,
    GLA_GIL_TAIL = 3,  /* part of gil_wait from the hand-off's wake-up to the return */
    GLA_LOCK_CPU = 4,  /* kernel cpu time inside lock waits (exact, read around them) */
    GLA_LOCK_RUNQ = 5, /* kernel run-queue time inside lock waits (exact) */
    GLA_GIL_HELD = 6,  /* time holding the GIL (not a state: it overlaps cpu and runq) */
    GLA_GIL_TAKES = 7, /* number of contended GIL takes */
    GLA_SWITCH_TAIL = 8, /* wake-up tails of switch waits (a dropping thread waiting for
                            the next holder): the thread is runnable there */
    GLA_GIL_DROPS = 9,   /* number of GIL drops (hand-offs by this thread) */
    GLA_NWAIT = 10
} gla_wait_kind;

typedef struct gla_thread gla_thread; /* opaque */

/* One thread's cumulative figures at one instant (all ns). The raw_* fields and the
 * in-wait figures are the inputs; the rest is their partition (gla_sample_finish). */
typedef struct {
    pid_t tid;
    uint64_t serial;       /* unique per record life: tells a reused tid from the same thread */
    int alive;             /* 0: the thread has exited; figures are its final totals */
    int registered;        /* 1: the thread registered itself (exact start and exit) */
    int waiting;           /* the wait in progress at the sample: a gla_wait_kind, or -1 */
    char name[GLA_NAME_LEN];
    uint64_t start_ns;     /* CLOCK_MONOTONIC when its accounting started */
    uint64_t wall_ns;      /* time accounted: (end or now) - start_ns */
    /* partition: cpu + runq + gil_wait + lock_wait + idle + io_wait == wall */
    uint64_t cpu_ns;       /* on a core, outside lock waits */
    uint64_t runq_ns;      /* runnable, waiting for a core, outside waits */
    uint64_t gil_wait_ns;
    uint64_t lock_wait_ns;
    uint64_t idle_ns;
    uint64_t io_wait_ns;   /* derived remainder, >= 0 */
    uint64_t overlap_ns;   /* kernel cpu+runq found inside waits, counted once (in the wait) */
    /* inputs */
    uint64_t raw_cpu_ns, raw_runq_ns; /* kernel totals since accounting started */
    uint64_t raw_gil_wait_ns, raw_lock_wait_ns, raw_idle_ns;
    uint64_t gil_tail_ns;  /* wake-up-to-return part of the GIL waits */
    uint64_t lock_cpu_ns;  /* kernel cpu inside lock waits */
    uint64_t lock_runq_ns; /* kernel run-queue time inside lock waits */
    uint64_t gil_held_ns;  /* time holding the GIL (overlaps cpu/runq; not a state) */
    uint64_t gil_takes;    /* contended GIL takes (input) */
    uint64_t switch_tail_ns; /* wake-up tails of switch waits (input) */
    /* process-wide: takes sampled exactly so far, and their cpu / run-queue time (input) */
    uint64_t take_samples, take_sample_cpu_ns, take_sample_runq_ns, take_sample_tail_ns;
    uint64_t gil_drops;    /* this thread's GIL drops (input) */
    uint64_t drop_samples, drop_sample_runq_ns; /* process-wide sampled drops (input) */
} gla_sample;

/* Process-wide monotonic clock in ns. */
uint64_t gla_now_ns(void);

/* Sets up the table and the fork handler. Idempotent; returns 0 or -errno. */
int gla_ledger_init(void);

/* The calling thread's record, registering it (system calls and allocation allowed).
 * Returns NULL only when the table is full. */
gla_thread *gla_ledger_self(void);

/* The calling thread's record without any system call or allocation (safe while the
 * GIL's mutex is held). May return NULL (table full, tid not knowable without a call). */
gla_thread *gla_ledger_self_nosys(void);

/* Adds ns to one wait counter of a record (owner thread only). */
void gla_ledger_add_wait(gla_thread *t, gla_wait_kind kind, uint64_t ns);

/* Marks the start / the end of a wait of the owner thread (no system call, no
 * allocation; kind GIL, LOCK or IDLE). Readers count the elapsed part of a wait in
 * progress, so an interval that cuts a long wait gets exactly its share. end adds
 * now_ns - start to the kind given at begin. */
void gla_ledger_wait_begin(gla_thread *t, gla_wait_kind kind, uint64_t now_ns);
void gla_ledger_wait_end(gla_thread *t, uint64_t now_ns);

/* Adds one exactly measured GIL drop (process-wide sample): the run-queue time of the
 * dropping thread inside drop_gil (preempted by the waiter it woke). */
void gla_ledger_add_drop_sample(uint64_t runq_ns);

/* Adds one exactly measured contended GIL take (process-wide sample): its kernel cpu
 * and run-queue time and the wake-up tail the hook noted for it. */
void gla_ledger_add_take_sample(uint64_t cpu_ns, uint64_t runq_ns, uint64_t tail_ns);

/* Cumulative wait counter of a record (any thread; an acquire load: what its adder
 * wrote before the add is visible after it). */
uint64_t gla_ledger_wait(const gla_thread *t, gla_wait_kind kind);

/* The calling thread's kernel cpu and run-queue totals through a file kept open per
 * thread (one pread; closed when the thread exits; reopened after fork). Not for use
 * while the GIL's mutex is held. Returns 0 or -errno. */
int gla_ledger_own_schedstat(uint64_t *cpu_ns, uint64_t *runq_ns);

/* Reads the calling thread's own cumulative figures (cpu/runq read from the kernel;
 * a few system calls, no allocation after the first call). Returns 0 or -errno. */
int gla_ledger_sample_self(gla_sample *out);

/* Reads every known thread (discovering new ones in /proc/self/task) into out[0..cap).
 * *n receives the number of records written; returns 0, or -ENOSPC when cap was too
 * small (out holds the first cap), or -errno. */
int gla_ledger_read(gla_sample *out, size_t cap, size_t *n);

/* The same, and *exited (may be NULL) receives the exited aggregate as of the same
 * instant: every thread is then in exactly one of the records or the aggregate's
 * difference between two such reads. */
int gla_ledger_read_exited(gla_sample *out, size_t cap, size_t *n, gla_sample *exited);

/* Totals of every thread that has exited since init (final figures). */
void gla_ledger_exited(gla_sample *out);

/* Threads that could not be recorded because the table was full. */
uint64_t gla_ledger_dropped(void);

/* Derives io_wait and the overlap so that
 *   cpu + runq + gil_wait + lock_wait + idle + io_wait == wall
 * holds exactly (see DESIGN notes in ledger.c). Readers call it; exposed for tests. */
void gla_sample_finish(gla_sample *s);

#ifdef __cplusplus
}
#endif
#endif
