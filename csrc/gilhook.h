/* gilhook.h — exact GIL and lock waits by patching the interpreter's GOT (measure).
 *
 * Contract
 * --------
 * gla_hook_install(anchor) patches, in the one loaded ELF object that contains the
 * address `anchor` (the interpreter: the object defining PyEval_SaveThread), the GOT
 * slots (JUMP_SLOT and GLOB_DAT relocations) of the functions listed in hooks.h (condition
 * waits and signals, the GIL's mutex lock and unlock, semaphore waits, pthread_create),
 * pointing them at wrappers. The parts, one file pair each:
 *   hooks.h         the one list of hooked functions (name, version left alone, wrapper,
 *                   real function)
 *   got.h/.c        the GOT patcher: walks the object's relocations, compare-and-swap of
 *                   a slot; knows nothing of what it patches (gla_got_patch)
 *   gil_layout.h/.c CPython's GIL state layout, read from the GIL's condition variable
 *                   (gla_gil_layout_ok)
 *   calm.h/.c       the GIL waiter thinning (gla_hook_set_calm ...)
 *   gilhook.c       the wrappers, which feed the ledger, and install / uninstall / status
 * This header includes got.h, gil_layout.h and calm.h, so its users see the whole API;
 * hooks.h is gilhook.c's alone.
 *
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

#include "calm.h"
#include "gil_layout.h"
#include "got.h"

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

/* Tells the wrappers which condition variable is the GIL's. Its mutex and switch
 * condition are derived from CPython's GIL state layout (gil_layout.h). */
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

void gla_hook_calibrate_begin(void);
int gla_hook_calibrate_end(void **conds, int cap);

#ifdef __cplusplus
}
#endif
#endif
