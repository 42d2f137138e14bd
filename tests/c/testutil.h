/* testutil.h — what the C unit tests share: CHECK (counts a failure, says where and why,
 * goes on) and small helpers. Header-only; every test binary has its own g_failures. */
#ifndef GIL_ADAPT_TESTUTIL_H
#define GIL_ADAPT_TESTUTIL_H

#include "gilhook.h"
#include "ledger.h"

#include <pthread.h>

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static _Atomic int g_failures;
#define CHECK(cond, ...)                                                    \
    do {                                                                    \
        if (!(cond)) {                                                      \
            g_failures++;                                                   \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                   \
            fprintf(stderr, "\n");                                          \
        }                                                                   \
    } while (0)

#define MS 1000000ull

static inline void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static inline pid_t my_tid(void)
{
    return (pid_t)syscall(SYS_gettid);
}

/* Finds tid's sample (the live one if the tid was reused). */
static inline int find_sample(pid_t tid, gla_sample *out)
{
    static gla_sample buf[GLA_MAX_THREADS];
    size_t n = 0;
    gla_ledger_read(buf, GLA_MAX_THREADS, &n);
    int found = 0;
    for (size_t i = 0; i < n; i++) {
        if (buf[i].tid == tid && (!found || buf[i].alive)) {
            *out = buf[i];
            found = 1;
        }
    }
    return found;
}

/* Another thread's view of a record's GIL-held time (the pool's monitor reads its
 * workers' this way). */
typedef struct {
    const gla_thread *t;
    uint64_t held;
} held_read;

static inline void *held_reader(void *arg)
{
    held_read *r = arg;
    r->held = gla_hook_gil_held_ns(r->t, gla_now_ns());
    return NULL;
}

static inline uint64_t held_from_other_thread(const gla_thread *t)
{
    held_read r = {t, 0};
    pthread_t th;
    if (pthread_create(&th, NULL, held_reader, &r) != 0)
        return 0;
    pthread_join(th, NULL);
    return r.held;
}

#endif
