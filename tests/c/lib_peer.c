/* lib_peer.c — a second, independent GOT hook (standing in for memray, an LD_PRELOAD
 * tool or another profiler) that hooks the same slots of libwaiter.so as gil_adapt:
 * its wrappers count their calls and chain to what they found in the slot. It is
 * well-behaved: at uninstall it puts a slot back only if the slot still holds its
 * wrapper. */
#include "lib_peer.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stddef.h>
#include <time.h>

static _Atomic unsigned long g_calls[PEER_N];
static _Atomic(void *) g_next[PEER_N];
static peer_patcher g_patch;
static const void *g_anchor;

typedef int (*cond_timedwait_fn)(pthread_cond_t *, pthread_mutex_t *, const struct timespec *);
typedef int (*cond_signal_fn)(pthread_cond_t *);
typedef int (*mutex_fn)(pthread_mutex_t *);
typedef int (*sem_wait_fn)(sem_t *);
typedef int (*create_fn)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
#define NEXT(i, type) ((type)atomic_load_explicit(&g_next[i], memory_order_acquire))
#define COUNT(i) atomic_fetch_add_explicit(&g_calls[i], 1, memory_order_relaxed)

static int peer_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *m, const struct timespec *t)
{
    COUNT(PEER_COND_TIMEDWAIT);
    return NEXT(PEER_COND_TIMEDWAIT, cond_timedwait_fn)(c, m, t);
}

static int peer_cond_signal(pthread_cond_t *c)
{
    COUNT(PEER_COND_SIGNAL);
    return NEXT(PEER_COND_SIGNAL, cond_signal_fn)(c);
}

static int peer_mutex_lock(pthread_mutex_t *m)
{
    COUNT(PEER_MUTEX_LOCK);
    return NEXT(PEER_MUTEX_LOCK, mutex_fn)(m);
}

static int peer_sem_wait(sem_t *s)
{
    COUNT(PEER_SEM_WAIT);
    return NEXT(PEER_SEM_WAIT, sem_wait_fn)(s);
}

static int peer_create(pthread_t *th, const pthread_attr_t *a, void *(*f)(void *), void *arg)
{
    COUNT(PEER_CREATE);
    return NEXT(PEER_CREATE, create_fn)(th, a, f, arg);
}

static const struct {
    const char *name;
    void *wrapper;
    void *real;
} g_hooks[PEER_N] = {
    [PEER_COND_TIMEDWAIT] = {"pthread_cond_timedwait", (void *)peer_cond_timedwait,
                             (void *)pthread_cond_timedwait},
    [PEER_COND_SIGNAL] = {"pthread_cond_signal", (void *)peer_cond_signal,
                          (void *)pthread_cond_signal},
    [PEER_MUTEX_LOCK] = {"pthread_mutex_lock", (void *)peer_mutex_lock, (void *)pthread_mutex_lock},
    [PEER_SEM_WAIT] = {"sem_wait", (void *)peer_sem_wait, (void *)sem_wait},
    [PEER_CREATE] = {"pthread_create", (void *)peer_create, (void *)pthread_create},
};
static void *g_found[PEER_N];

/* Same loaded object (a slot holding the object's own PLT stub: unresolved lazy binding). */
static int same_object(const void *a, const void *b)
{
    Dl_info ia, ib;
    return dladdr(a, &ia) && dladdr(b, &ib) && ia.dli_fbase == ib.dli_fbase;
}

int peer_install(peer_patcher patch, const void *anchor)
{
    g_patch = patch;
    g_anchor = anchor;
    int hooked = 0;
    for (int i = 0; i < PEER_N; i++) {
        void *old = NULL;
        int n = patch(anchor, g_hooks[i].name, NULL, &old); /* read first: set next, then patch */
        if (n < 0)
            return n;
        if (n == 0)
            continue;
        g_found[i] = old;
        atomic_store(&g_next[i], (!old || same_object(old, anchor)) ? g_hooks[i].real : old);
        n = patch(anchor, g_hooks[i].name, g_hooks[i].wrapper, &old);
        if (n < 0)
            return n;
        hooked++;
    }
    return hooked;
}

int peer_uninstall(void)
{
    int left = 0;
    for (int i = 0; i < PEER_N; i++) {
        if (!g_found[i])
            continue;
        void *now = NULL;
        g_patch(g_anchor, g_hooks[i].name, NULL, &now);
        if (now == g_hooks[i].wrapper)
            g_patch(g_anchor, g_hooks[i].name, g_found[i], &now);
        else
            left++;
        g_found[i] = NULL;
    }
    return left;
}

unsigned long peer_calls(int i)
{
    return atomic_load(&g_calls[i]);
}

void peer_reset(void)
{
    for (int i = 0; i < PEER_N; i++)
        atomic_store(&g_calls[i], 0);
}

const char *peer_name(int i)
{
    return g_hooks[i].name;
}
void *peer_wrapper(int i)
{
    return g_hooks[i].wrapper;
}
void *peer_found(int i)
{
    return g_found[i];
}
