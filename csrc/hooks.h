/* hooks.h — the one list of the functions the GIL hook patches.
 *
 * Contract
 * --------
 * Purpose: every function whose GOT slots gla_hook_install points at a wrapper is named
 * here, once; gilhook.c builds all its per-function tables from this list (the index
 * H_<ID>, the real function g_real, the next value g_next, the slot table g_hooks), so
 * adding or removing a hook is one line here plus its wrapper.
 *
 * The functions, and why each is hooked:
 *   pthread_cond_timedwait / pthread_cond_wait  GIL waits (the GIL's condition and its
 *                                                switch condition; others pass through).
 *                                                Only the current ABI (GLIBC_2.3.2), never
 *                                                the old GLIBC_2.2.5 one
 *   pthread_cond_signal / pthread_mutex_lock /   the GIL's hand-offs: signal times for the
 *   pthread_mutex_unlock                         wake-up tails, take/drop times for
 *                                                GLA_GIL_HELD, hand-off samples; other
 *                                                objects pass through
 *   sem_wait / sem_timedwait / sem_clockwait     Python-level lock waits
 *   pthread_create                               new threads register in the ledger before
 *                                                their start routine runs
 *
 * Each entry is X(ID, symbol, skip_version, kind, wrapper, real):
 *   ID            the index's name (gilhook.c's H_<ID>)
 *   symbol        the imported symbol whose JUMP_SLOT / GLOB_DAT slots are patched
 *   skip_version  imports that require this symbol version are left alone (NULL: none);
 *                 imports of any other version, or unversioned, are patched
 *   kind          which status count a patched slot adds to: COND (slots_cond), SEM
 *                 (slots_sem), CREATE (slots_create) or EDGE (none: a GIL hand-off edge)
 *   wrapper       gilhook.c's wrapper (static there) that the slot gets
 *   real          libc's function as this object links it (an LD_PRELOAD interposer if
 *                 there is one): what the wrapper calls where the slot held no other hook
 *
 * Include it only where the wrappers are defined (gilhook.c).
 */
#ifndef GIL_ADAPT_HOOKS_H
#define GIL_ADAPT_HOOKS_H

#include <pthread.h>
#include <semaphore.h>
#include <stddef.h>

/* sem_clockwait appeared in glibc 2.30: bind weakly so older systems still load us (its
 * `real` is then NULL, and its slots are never patched). */
#pragma weak sem_clockwait

#define GLA_HOOKS(X)                                                                             \
    X(COND_TIMEDWAIT, "pthread_cond_timedwait", "GLIBC_2.2.5", COND, hook_cond_timedwait,        \
      pthread_cond_timedwait)                                                                    \
    X(COND_WAIT, "pthread_cond_wait", "GLIBC_2.2.5", COND, hook_cond_wait, pthread_cond_wait)    \
    X(COND_SIGNAL, "pthread_cond_signal", "GLIBC_2.2.5", EDGE, hook_cond_signal,                 \
      pthread_cond_signal)                                                                       \
    X(MUTEX_LOCK, "pthread_mutex_lock", NULL, EDGE, hook_mutex_lock, pthread_mutex_lock)         \
    X(MUTEX_UNLOCK, "pthread_mutex_unlock", NULL, EDGE, hook_mutex_unlock, pthread_mutex_unlock) \
    X(SEM_WAIT, "sem_wait", NULL, SEM, hook_sem_wait, sem_wait)                                  \
    X(SEM_TIMEDWAIT, "sem_timedwait", NULL, SEM, hook_sem_timedwait, sem_timedwait)              \
    X(SEM_CLOCKWAIT, "sem_clockwait", NULL, SEM, hook_sem_clockwait, sem_clockwait)              \
    X(CREATE, "pthread_create", NULL, CREATE, hook_pthread_create, pthread_create)

#endif
