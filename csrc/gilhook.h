/* gilhook.h — exact GIL and lock waits by patching the interpreter's GOT (measure).
 *
 * Contract
 * --------
 * gla_hook_install(anchor) patches, in the one loaded ELF object that contains the
 * address `anchor` (the interpreter: the object defining PyEval_SaveThread), the GOT
 * slots (JUMP_SLOT and GLOB_DAT relocations) of:
 *   pthread_cond_timedwait / pthread_cond_wait  (only the GLIBC_2.3.2 ABI, never the old
 *                                                GLIBC_2.2.5 one)
 *   sem_wait / sem_timedwait / sem_clockwait     (Python-level lock waits)
 *   pthread_create                               (new threads register in the ledger
 *                                                 before their start routine runs)
 *   pthread_cond_signal / pthread_mutex_lock /   (the GIL's hand-offs: signal times for
 *   pthread_mutex_unlock                          the wake-up tails, take/drop times for
 *                                                 GLA_GIL_HELD, hand-off samples; other
 *                                                 objects pass through)
 * Living beside other hooks (a chain, as well-behaved GOT hooks do):
 *   - each wrapper passes its call on to the value its slot held before install patched
 *     it (another hook: an LD_PRELOAD tool, memray, a second profiler), or to libc's
 *     function as this object links it where that value is the patched object's own
 *     lazy-binding stub (calling it would re-resolve the symbol and overwrite the slot).
 *     One function has one next value: a second slot of the same function behind a
 *     different hook is left alone (named in the status reason). slots_chained counts
 *     the slots whose next is another hook. The hot path's extra cost is one acquire
 *     load of that pointer;
 *   - behind another hook the wrappers do not skip it: an uncontended semaphore or
 *     GIL-mutex acquire, which they otherwise settle with sem_trywait /
 *     pthread_mutex_trylock, goes to the next hook too (and is timed);
 *   - uninstall puts a slot's earlier value back only if the slot still holds the
 *     wrapper (compare-and-swap); a slot that another hook took since is left to it,
 *     counted in slots_left and named in reason. Such a hook may chain to the wrapper,
 *     so the wrappers keep working after uninstall: they pass every call on untimed.
 *     A later install never writes such a slot (a chain back to that hook would loop):
 *     if the slot still holds the hook that replaced the wrapper, the hook counts as
 *     installed beneath it; if it holds yet another hook, it stays left (slots_left);
 *     if it holds the wrapper again or a plain function, it is patched as new.
 * The wrappers add the time spent to the calling thread's ledger record:
 *   - a condition wait counts as GLA_GIL_WAIT only if its condition variable is the
 *     GIL's (set by gla_hook_set_gil) or the GIL's switch condition; others pass through;
 *   - a semaphore wait counts as GLA_LOCK_WAIT.
 * Inside a GIL wait the wrapper runs with the GIL's mutex held: it does two
 * CLOCK_MONOTONIC reads (vDSO), an atomic add, and nothing else — no system call, no
 * allocation, no lazily allocated TLS (what a next hook does there is its own).
 *
 * install is idempotent (a second call returns 0 and changes nothing); uninstall
 * restores every slot that still holds a wrapper (above); a thread already inside a
 * wrapper finishes normally (the wrappers live in this object, which is never
 * unloaded). Both serialize on an internal lock. The environment variable
 * GIL_ADAPT_HOOK=0 makes install return -ECANCELED without patching.
 *
 * Install, uninstall, install: every install and uninstall starts a new epoch. A
 * thread's hand-off state (the holding under way, the thinning's wait start, a hand-off
 * sample) belongs to the epoch it was written in; a thread that finds a newer epoch drops
 * its own state (no thread writes another's), and readers of the holding under way
 * ignore one from an earlier epoch. So a holding under way at uninstall is never counted
 * (its part before the uninstall included): for every thread and interval, GIL_HELD
 * grows by at most the interval's length plus the holding under way at its start.
 *
 * fork(): in the child (a handler that the first install registers, running after the
 * ledger's) no thread waits for the GIL: the waiter thinning's counts restart at zero,
 * and the hand-off state of the parent's threads is dropped, the forking thread's own
 * holding included (its ledger record restarted at the fork; the child's interpreter
 * takes the GIL anew, which starts its next holding).
 *
 * Calibration: gla_hook_calibrate_begin() makes the calling thread record the condition
 * variables it waits on (up to GLA_CAL_MAX); gla_hook_calibrate_end() returns them.
 * The caller (module binding) arranges a real GIL hand-off in between and validates the
 * candidate with gla_gil_layout_ok() before calling gla_hook_set_gil().
 */
#ifndef GIL_ADAPT_GILHOOK_H
#define GIL_ADAPT_GILHOOK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GLA_CAL_MAX 8

typedef struct {
    int installed;          /* 1 while slots are patched */
    int slots_cond;         /* GOT slots patched for condition waits */
    int slots_sem;          /* GOT slots patched for semaphore waits */
    int slots_create;       /* GOT slots patched for pthread_create (registration) */
    int slots_chained;      /* patched slots whose wrapper passes calls on to another hook */
    int slots_left;         /* slots left to another hook (see "Living beside other hooks") */
    int gil_known;          /* the GIL's condition variable is set */
    char object[256];       /* path of the patched object ("" = main executable) */
    char reason[256];       /* why not installed / not exact, or which slots were left
                               to another hook, when applicable */
} gla_hook_status;

/* 0 on success (or already installed); -ECANCELED (GIL_ADAPT_HOOK=0), -ENOENT (no
 * object contains anchor / nothing to patch), or -errno; reason in gla_hook_get_status. */
int gla_hook_install(const void *anchor);
/* 0, or -errno where a slot could not be made writable (it keeps the wrapper); a slot
 * left to another hook is no error (slots_left, reason). */
int gla_hook_uninstall(void);
void gla_hook_get_status(gla_hook_status *out);

/* A GOT patcher that knows nothing of what it patches: in the loaded object that holds
 * `anchor`, every JUMP_SLOT / GLOB_DAT slot of `symbol` (any version) gets new_value
 * (compare-and-swap against the value read; a NULL new_value only reads). *old_value
 * (if not NULL): the first slot's value before, NULL if there is none. Returns the
 * number of slots, or -ENOENT (no object holds anchor) / -errno. Not serialized with
 * gla_hook_install / gla_hook_uninstall. */
int gla_got_patch(const void *anchor, const char *symbol, void *new_value, void **old_value);

/* Tells the wrappers which condition variable is the GIL's. The switch condition is
 * derived from CPython's struct _gil_runtime_state layout (cond, mutex, switch_cond). */
void gla_hook_set_gil(void *gil_cond);
void *gla_hook_gil(void);

/* The calling thread's cumulative time holding the GIL, including the current holding
 * (for per-task figures: read it at a task's start and end). No system call. */
uint64_t gla_hook_self_gil_held_ns(void);

/* Thread t's cumulative time holding the GIL up to now_ns (CLOCK_MONOTONIC), its holding
 * under way included; from any thread, no system call, no lock. Exact up to a hand-off
 * in flight at the moment of the call (never a holding counted twice). 0 for NULL. */
struct gla_thread;
uint64_t gla_hook_gil_held_ns(const struct gla_thread *t, uint64_t now_ns);

/* Number of GIL hand-offs so far (CPython's gil->switch_number), or -1 if unknown. */
long long gla_gil_switches(void);

/* Waiter thinning (act): CPython's GIL waiters each wake every switch interval (5 ms)
 * to ask the holder to drop the GIL; with hundreds of waiters on a few cores those
 * wake-ups take the cores from the holder, and past a point the interpreter finishes
 * almost nothing (the saturation cliff: 2,048 threads sleeping 50 ms on one core went
 * from 20,000 tasks/s to 0-8,000). With keep > 0, only `keep` waiters at a time wait the
 * interpreter's interval; any further waiter waits CALM_STRETCH (20) times as long. The
 * hand-off order is unchanged (drop_gil's signal still wakes a waiter at once) and the
 * holder is still asked to drop within an interval while a short waiter exists (a
 * dropped holder waiting again is one); a stretched waiter that times out does what a
 * short one does. glibc's condition variable signals its longest waiters first, so a
 * waiter re-waiting every interval is always among the youngest: a waiter that has
 * waited CALM_STRETCH intervals in one take waits stretched from then on, however few
 * short waiters there are (else it could starve: seen with one short waiter and four
 * GIL-bound threads). Applies to every thread of the process while the hook is installed.
 * Returns the previous setting (0 = off, the default; keep < 0 counts as 0). */
int gla_hook_set_calm(int keep);
/* The setting, and (if stretched != NULL) how many waits were stretched so far. */
int gla_hook_calm(uint64_t *stretched);
/* Thinning applies only while more than `above` threads wait for the GIL (counting the
 * one about to wait): below that every waiter waits the interpreter's interval, so a
 * small pool's hand-offs are CPython's own (thinning 25 GIL-bound workers on 2 cores cost
 * ~5 % of their throughput; the cliff comes with hundreds of waiters). 0 (the default)
 * thins at any count; above < 0 counts as 0. Returns the previous setting. */
int gla_hook_set_calm_above(int above);
int gla_hook_calm_above(void);

void gla_hook_calibrate_begin(void);
int gla_hook_calibrate_end(void **conds, int cap);

/* Checks a candidate GIL condition variable against CPython's struct layout: the
 * `interval` field (cond - 4 words) must equal switch_interval_us and `locked`
 * (cond - 2 words) must be 0 or 1; and it must lie inside [lo, hi) when hi > lo. */
int gla_gil_layout_ok(const void *cond, unsigned long switch_interval_us,
                      const void *lo, const void *hi);

#ifdef __cplusplus
}
#endif
#endif
