/* lib_waiter.h — calls through a separate object's PLT, for hook tests (see lib_waiter.c). */
#ifndef GIL_ADAPT_TEST_WAITER_H
#define GIL_ADAPT_TEST_WAITER_H
#include <pthread.h>
#include <semaphore.h>
int waiter_cond_timedwait_ms(pthread_cond_t *cond, pthread_mutex_t *mutex, int ms);
/* The same on a condition variable using CLOCK_MONOTONIC (as CPython's GIL does). */
int waiter_cond_timedwait_mono_ms(pthread_cond_t *cond, pthread_mutex_t *mutex, int ms);
int waiter_cond_signal(pthread_cond_t *cond);
int waiter_sem_wait(sem_t *sem);
int waiter_mutex_lock(pthread_mutex_t *mutex);
int waiter_thread_create(pthread_t *thread, void *(*start)(void *), void *arg);
int waiter_anchor(void);
#endif
