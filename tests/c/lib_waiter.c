/* lib_waiter.c — a separate shared object for the C tests, standing in for libpython:
 * it calls pthread_cond_timedwait / pthread_cond_wait / sem_wait / pthread_create
 * through its own PLT, so the hook can be installed into it (never into the object
 * that holds the hook itself). */
#include "lib_waiter.h"

#include <errno.h>
#include <time.h>

int waiter_cond_timedwait_ms(pthread_cond_t *cond, pthread_mutex_t *mutex, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    ts.tv_sec += ms / 1000 + ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    return pthread_cond_timedwait(cond, mutex, &ts);
}

int waiter_cond_timedwait_mono_ms(pthread_cond_t *cond, pthread_mutex_t *mutex, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    ts.tv_sec += ms / 1000 + ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    return pthread_cond_timedwait(cond, mutex, &ts);
}

int waiter_cond_signal(pthread_cond_t *cond)
{
    return pthread_cond_signal(cond);
}

int waiter_sem_wait(sem_t *sem)
{
    return sem_wait(sem);
}

int waiter_mutex_lock(pthread_mutex_t *mutex)
{
    return pthread_mutex_lock(mutex);
}

int waiter_thread_create(pthread_t *thread, void *(*start)(void *), void *arg)
{
    return pthread_create(thread, NULL, start, arg);
}

int waiter_anchor(void)
{
    return 42;
}
