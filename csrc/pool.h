/* pool.h — the executor's work queue, workers and monitor (act). Pure C, no Python.h.
 *
 * Contract
 * --------
 * A gla_pool runs tasks (gla_pool_task nodes that the caller embeds in its own structs)
 * on worker threads it starts and retires itself, between min_workers and max_workers,
 * at the size a policy callback picks once per measurement window.
 *
 * Queue and wake-ups. gla_pool_submit appends a task to a FIFO. Idle workers wait on a
 * LIFO stack, each on its own condition variable (no thundering herd; the workers left
 * at the bottom are retired first). Wake-ups are serialized as in CPython's SimpleQueue:
 * a submit wakes the most recently idled worker only if no woken worker is still on its
 * way to the GIL, and a woken worker wakes the next once it holds the GIL and tasks still
 * wait, always before it runs its task (a task may block for as long as it likes);
 * running workers take queued tasks themselves. (One wake-up per task made every
 * queued task one more GIL contender: hundreds of threads on one core collapsed.) A task is never dropped: it
 * is run exactly once by a worker, or given back to the caller by gla_pool_shutdown
 * (cancel) / gla_pool_break / gla_pool_reset_after_fork.
 *
 * Workers. A worker is a detached pthread with the configured stack size. It calls
 * hooks->enter once (a binding takes its interpreter lock and runs an initializer
 * there; < 0 makes the worker leave at once), then runs tasks with hooks->run. Between
 * tasks it keeps whatever hooks->enter took; only when it finds no work does it call
 * hooks->pause (release it) and wait — that wait is added to the thread's ledger record
 * as GLA_IDLE — and hooks->resume when it has a task again (resume < 0: the process is
 * going away; the task goes back to the front of the queue and the worker leaves).
 * Leaving, it unregisters under the pool lock (its last touch of the pool) and then
 * calls hooks->leave(ctx, wdata, holding) — so a binding may free the pool from there.
 *
 * Workers start a few at a time: at most start_burst created workers are still in enter
 * (each waits there for the interpreter lock behind every running task; a thousand
 * started at once on a loaded interpreter made it finish almost nothing for seconds, as
 * ThreadPoolExecutor, whose submit waits for each new thread, never does); the others
 * are owed, counted in `starting`, and created as those get through enter. An enter that
 * waits for other workers (a barrier in an initializer) still works when the hook calls
 * gla_pool_worker_entered as soon as it holds the lock.
 *
 * A worker that cannot be started (pthread_create fails: thread limit, memory) leaves
 * the pool smaller: start_failures counts it and the task waits for another worker. Only
 * when the pool has no worker at all and none can be started does gla_pool_submit fail
 * (-errno) and return the task to the caller, so the caller can raise at the call.
 *
 * Sizing. A monitor thread (no interpreter lock) closes a window every policy-chosen
 * interval, aggregates per-task figures measured by the workers (a CLOCK_MONOTONIC read
 * and ledger/hook loads per task edge: GIL wait, GIL held, lock wait; the thread CPU
 * clock, a system call, at most every 50 us or 16 edges and around idle waits, exact in
 * sum), samples the run-queue delay and CPU of up to GLA_POOL_RUNQ_SAMPLE workers from
 * /proc, calls the policy with that window (gla_window, window.h: the type a policy
 * reads, so the controller's gla_ctl_policy plugs in as it is, and so does any function
 * of type gla_policy_fn), and applies its target: new workers start only while tasks
 * wait (lazily, as ThreadPoolExecutor does), excess workers retire — idle ones at once
 * (longest idle first), busy ones when they finish their current task. Liveness comes
 * first: windows in which nothing completed while tasks wait and no worker is idle grow
 * the pool whatever the policy said (doubling, bounded by the queue and max_workers) when
 * the sampled workers are blocked (under 20 % on a core), or when they are busy but
 * nothing finished for 8 times the tasks' mean wall time so far (at least 1 s; below 64
 * workers per core) — tasks that wait on tasks queued behind them, blocking in result()
 * or polling done(), never deadlock below max_workers. A pool with nothing queued or running
 * parks its monitor until the next submit. gla_pool_set_target applies a target directly
 * (tests, manual override).
 *
 * Locking. One mutex per pool guards the queue, the idle stack and the counts. A caller
 * that holds an interpreter lock may call submit/shutdown/stats (lock order: interpreter
 * lock, then pool mutex); hooks are never called with the pool mutex held, and the pool
 * never waits for an interpreter lock while holding it. On the hot paths nobody sleeps on
 * the mutex while holding the interpreter lock: a worker that finds it busy after a task
 * pauses first, and gla_pool_try_submit lets a binding release its lock before blocking
 * (with hundreds of threads on one core, a preempted mutex holder would otherwise stall
 * every Python thread behind the GIL holder). Per-task counters are written by
 * their worker only (relaxed atomics) and summed by the monitor.
 *
 * fork(): in the child only the forking thread exists. The child calls
 * gla_pool_reset_after_fork on every pool, in the forking thread, before anything else
 * uses them: it re-initialises the locks, forgets every worker of the parent and the
 * monitor, and returns the queued tasks (the parent's: they run there, not in the child)
 * for the caller to drop (tasks that the parent's workers were running are neither run
 * nor given back in the child). A pool keeps working in the child: submits are accepted
 * (unless it was shut down or broken before the fork) and start new workers there. When
 * the forking thread is itself a worker of the pool (a task, or an enter hook, that
 * forks), it stays that pool's worker in the child: its record survives, its task returns
 * to its loop, and it serves the pool's tasks in the child from then on (or leaves, if
 * the pool is shut down), as the other workers do. The pool's counters restart from the
 * fork.
 */
#ifndef GIL_ADAPT_POOL_H
#define GIL_ADAPT_POOL_H

#include "window.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GLA_POOL_NAME_LEN 48
#define GLA_POOL_RUNQ_SAMPLE 16
#define GLA_POOL_DEFAULT_STACK (2u * 1024u * 1024u) /* holds CPython's default recursion limit */
#define GLA_POOL_START_BURST 2 /* default gla_pool_config.start_burst */

typedef struct gla_pool gla_pool;

/* Intrusive queue node: embed it first in the caller's task struct. */
typedef struct gla_pool_task {
    struct gla_pool_task *next;
} gla_pool_task;

/* Worker hooks, called in the worker thread; ctx is gla_pool_config.ctx and *wdata a
 * per-worker slot the hooks may use. index is the worker's serial number (0, 1, ...).
 * enter returns 0 (serve tasks, holding what resume would take), GLA_POOL_ENTER_FAIL_HELD
 * (leave at once, still holding it) or GLA_POOL_ENTER_FAIL (leave at once, not holding).
 * run runs one task and frees it. Every hook may be NULL (resume then succeeds). */
#define GLA_POOL_ENTER_FAIL_HELD (-1)
#define GLA_POOL_ENTER_FAIL (-2)
typedef struct {
    int (*enter)(void *ctx, void **wdata, unsigned index);
    void (*pause)(void *ctx, void *wdata);
    int (*resume)(void *ctx, void *wdata);
    void (*run)(void *ctx, void *wdata, gla_pool_task *task);
    void (*leave)(void *ctx, void *wdata, int holding);
} gla_pool_hooks;

typedef struct {
    int min_workers;           /* >= 1 */
    int max_workers;           /* >= min_workers */
    int initial_target;        /* clamped to [min, max] */
    size_t stack_size;         /* 0: GLA_POOL_DEFAULT_STACK */
    double usable_cores;       /* reported in windows; <= 0: read from procstat */
    double first_window_s;     /* first window length; <= 0: 0.1 s */
    int first_window_tasks;    /* the first window ends sooner once this many tasks finished
                                  while tasks wait (looked at every 10 ms); <= 0: never */
    double idle_timeout_s;     /* idle workers above min retire after this; <= 0: never */
    int gil_wait_known;        /* the ledger's GIL waits are exact (hook installed) */
    int free_threaded;         /* no GIL in this process: windows say so (window.h) */
    int start_burst;           /* at most this many started workers not yet through enter
                                  (or gla_pool_worker_entered); <= 0: GLA_POOL_START_BURST */
    char name[GLA_POOL_NAME_LEN]; /* OS thread names: "<name>_<index>", cut to 15 chars */
    gla_pool_hooks hooks;
    void *ctx;
    gla_policy_fn policy;      /* called by the monitor thread only (never concurrently with
                                  itself), with no lock held; NULL: hold the target, grow as
                                  ThreadPoolExecutor (a worker per submit not matched by a
                                  completion) */
    void *policy_ctx;          /* the policy's first argument */
} gla_pool_config;

/* One window's decision, for the history in gla_pool_stats. */
#define GLA_POOL_HISTORY 32
typedef struct {
    double at_s;                 /* end of the window, seconds since the pool was created */
    double window_s, completed;  /* the window's length and the tasks it finished */
    int workers, queue_nonempty; /* live workers then; tasks were waiting */
    int target;                  /* the target decided */
    gla_action action;
    char reason[GLA_REASON_LEN];
} gla_pool_history_entry;

typedef struct {
    int workers, idle, busy, starting, target, min_workers, max_workers;
    int retire_pending;
    long queue_length;
    uint64_t submitted, completed, started, retired, start_failures;
    uint64_t taken;              /* removed from the queue by gla_pool_take */
    int last_start_errno;
    int shutdown, broken;
    uint64_t decisions[GLA_NACTIONS];
    char last_reason[GLA_REASON_LEN];
    gla_action last_action;
    gla_window last_window;      /* zeros before the first window */
    double throughput;           /* completed / window_s of the last window */
    size_t stack_size;
    uint64_t windows;
    double usable_cores;
    int history_n;               /* the last history_n decisions, oldest first */
    gla_pool_history_entry history[GLA_POOL_HISTORY];
} gla_pool_stats;

/* Creates a pool (no thread yet: workers and the monitor start on demand). NULL with
 * errno set (EINVAL for bad bounds, ENOMEM). */
gla_pool *gla_pool_create(const gla_pool_config *cfg);

/* Queues a task, or hands it to an idle worker; starts a worker when none is idle and
 * the pool is below its target. 0 on success; -ESHUTDOWN after shutdown, -EPIPE when
 * broken, -errno (EAGAIN, ENOMEM, ...) when the pool has no worker and none could be
 * started: in every error case the task was not taken. */
int gla_pool_submit(gla_pool *p, gla_pool_task *task);

/* The same, but returns -EBUSY at once (task not taken) when the pool's mutex is held:
 * a caller holding an interpreter lock tries this first and, on -EBUSY, releases that
 * lock around gla_pool_submit — it never sleeps on the mutex holding the GIL. */
int gla_pool_try_submit(gla_pool *p, gla_pool_task *task);

/* Stops accepting tasks. With cancel, queued tasks are detached and returned as a list
 * (*cancelled, may be NULL) for the caller to cancel; otherwise the workers run them all
 * and then leave. Idempotent. Wakes every idle worker and stops the monitor. */
void gla_pool_shutdown(gla_pool *p, int cancel, gla_pool_task **cancelled);

/* Removes the queued tasks (not started) for which match(ctx, task) is nonzero and returns
 * them as a list in queue order (NULL: none), for the caller to run elsewhere; counted in
 * stats.taken. match runs under the pool's mutex: it must not block, nor call the pool. */
gla_pool_task *gla_pool_take(gla_pool *p, int (*match)(void *ctx, const gla_pool_task *t),
                             void *ctx);

/* Waits until every worker has left except, when self_is_worker, the calling worker
 * (a task that shuts its own pool down), and joins the monitor. The caller must not
 * hold a lock a worker needs (release the interpreter lock around it). */
void gla_pool_wait(gla_pool *p, int self_is_worker);

/* The same, giving up after timeout_s (< 0: no limit). 1 when the workers are gone. */
int gla_pool_wait_for(gla_pool *p, int self_is_worker, double timeout_s);

/* Marks the pool broken (e.g. a worker's initializer failed): no new tasks (-EPIPE),
 * workers leave as after shutdown, queued tasks are detached and returned. */
gla_pool_task *gla_pool_break(gla_pool *p);

/* Frees the pool. Only after gla_pool_shutdown + gla_pool_wait (or in a forked child
 * after gla_pool_reset_after_fork). */
void gla_pool_destroy(gla_pool *p);

void gla_pool_get_stats(gla_pool *p, gla_pool_stats *out);

/* Applies a target now, as a policy decision would (clamped to [min, max]). */
void gla_pool_set_target(gla_pool *p, int target);

/* The number of workers through enter (gla_pool_worker_entered) and not yet left; a
 * relaxed read, cheap enough for every submit. */
int gla_pool_serving(gla_pool *p);

/* Waits until a worker is through enter, or none is starting, or the pool is shut down or
 * broken; returns at once when a worker already is. A binding calls it, without its
 * interpreter lock, after a submit that found gla_pool_serving() == 0: a task submitted
 * to a pool with no worker then starts promptly, as with ThreadPoolExecutor, whose submit
 * waits for the thread it starts (shutdown(cancel_futures=True) right after the submit
 * leaves that task running). It never waits for an initializer to finish. */
void gla_pool_await_serving(gla_pool *p);

/* Waits, at most timeout_s, until `task` (submitted by the caller) is no longer queued: a
 * worker took it, or it was taken or cancelled; returns at once when no worker is through
 * enter, or the pool is shut down or broken. Without an interpreter lock (a free-threaded
 * build) the worker that gla_pool_await_serving waited for may not yet have taken the
 * task when the submit returns; this closes that window, bounded so that a submit never
 * waits for workers busy with other tasks or for an initializer. */
void gla_pool_await_taken(gla_pool *p, const gla_pool_task *task, double timeout_s);

/* Returns 1 exactly once: the first time it is called after shutdown with no worker
 * left or starting (a binding drops its keep-alive reference then). */
int gla_pool_claim_drained(gla_pool *p);

/* Called by a worker's enter hook once it holds what it waits for (the interpreter lock),
 * before slower set-up (an initializer): the pool starts the next owed worker then. A
 * no-op outside a worker's enter, and when called again; enter's return does the same. */
void gla_pool_worker_entered(void);

/* 1 when the calling thread is a worker of p. */
int gla_pool_is_worker(const gla_pool *p);

/* Test hook: the next n worker starts fail with EAGAIN, as if the thread limit were hit. */
void gla_pool_inject_start_failures(gla_pool *p, int n);

/* In a forked child, from the forking thread: see the header comment. Returns the
 * detached queued tasks; the pool keeps its configuration and its shutdown/broken state,
 * restarts its counters and keeps the calling thread as its worker when it was one. */
gla_pool_task *gla_pool_reset_after_fork(gla_pool *p);

#ifdef __cplusplus
}
#endif
#endif
