/* test_hook.c — the GOT hook beside another hook of the same slots, and across
 * install -> uninstall -> install, without Python.
 *
 * libwaiter.so (lib_waiter.c) stands in for libpython; libpeer.so (lib_peer.c) is a
 * second, independent hook of the same GOT slots whose wrappers count their calls and
 * chain to what they found. */
#include "gilhook.h"
#include "ledger.h"
#include "lib_peer.h"
#include "lib_waiter.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

/* CPython's GIL state (gil_layout.h), to stand in for the GIL. */
static gla_gil_state g_fake_gil = {5000,
                                   NULL,
                                   0,
                                   0,
                                   PTHREAD_COND_INITIALIZER,
                                   PTHREAD_MUTEX_INITIALIZER,
                                   PTHREAD_COND_INITIALIZER,
                                   PTHREAD_MUTEX_INITIALIZER};
static pthread_mutex_t g_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_other = PTHREAD_COND_INITIALIZER;

#define ANCHOR ((const void *)waiter_anchor)

/* ---- a GIL wait in a thread made through libwaiter's pthread_create ---------------- */

typedef struct {
    int ms;
    pid_t tid;
    int timed_out;
    int registered;
} cond_arg;

static void *cond_waiter(void *p)
{
    cond_arg *arg = p;
    arg->tid = my_tid();
    pthread_mutex_lock(&g_mutex);
    int rc;
    do {
        rc = waiter_cond_timedwait_ms(&g_fake_gil.cond, &g_mutex, arg->ms);
    } while (rc == 0); /* spurious wake-ups: wait out the whole timeout */
    pthread_mutex_unlock(&g_mutex);
    arg->timed_out = rc == ETIMEDOUT;
    gla_sample s = {0};
    if (find_sample(arg->tid, &s))
        arg->registered = s.registered;
    return NULL;
}

/* GIL wait (ns) of a thread that waits ms on the fake GIL's condition; -1 if the thread
 * did not run or its wait did not time out normally. *registered: whether it registered
 * in the ledger before running (the hooked pthread_create's trampoline). */
static long long gil_wait_of_waiter(int ms, int *registered)
{
    pthread_t th;
    cond_arg arg = {ms, 0, 0, 0};
    if (waiter_thread_create(&th, cond_waiter, &arg) != 0)
        return -1;
    pthread_join(th, NULL);
    sleep_ms(2);
    gla_sample s = {0};
    if (!arg.timed_out || !find_sample(arg.tid, &s))
        return -1;
    if (registered)
        *registered = arg.registered;
    return (long long)s.raw_gil_wait_ns;
}

/* Calls into every hooked function of libwaiter once (uncontended), so every peer
 * counter should rise by at least one: a condition signal, a plain mutex lock, an
 * uncontended semaphore wait, and a take and a drop of the fake GIL (its mutex). */
static void call_each_once(void)
{
    waiter_cond_signal(&g_other);
    waiter_mutex_lock(&g_mutex);
    pthread_mutex_unlock(&g_mutex);
    sem_t sem;
    sem_init(&sem, 0, 1);
    waiter_sem_wait(&sem);
    sem_destroy(&sem);
    waiter_mutex_lock(&g_fake_gil.mutex); /* GIL free: a take */
    g_fake_gil.locked = 1;
    pthread_mutex_unlock(&g_fake_gil.mutex);
    waiter_mutex_lock(&g_fake_gil.mutex); /* held: a drop */
    g_fake_gil.locked = 0;
    waiter_cond_signal(&g_fake_gil.cond);
    pthread_mutex_unlock(&g_fake_gil.mutex);
}

/* The value each of libwaiter's slots of function i holds now. */
static void *slot_value(int i)
{
    void *v = NULL;
    CHECK(gla_got_patch(ANCHOR, peer_name(i), NULL, &v) >= 1, "libwaiter imports %s", peer_name(i));
    return v;
}

static int same_object(const void *a, const void *b)
{
    Dl_info ia, ib;
    return a && b && dladdr(a, &ia) && dladdr(b, &ib) && ia.dli_fbase == ib.dli_fbase;
}
#define IS_GLA_WRAPPER(p) same_object((p), (const void *)gla_hook_install)

/* ---- the tests --------------------------------------------------------------------- */

static void test_got_patch(void)
{
    void *before = NULL, *v = NULL;
    CHECK(gla_got_patch(ANCHOR, "sem_wait", NULL, &before) == 1, "one sem_wait slot");
    CHECK(before != NULL, "a value");
    CHECK(gla_got_patch(ANCHOR, "no_such_function", NULL, &v) == 0 && v == NULL, "absent: 0");
    CHECK(gla_got_patch((const void *)1, "sem_wait", NULL, &v) == -ENOENT, "no object");
    /* a write, then the value back */
    CHECK(gla_got_patch(ANCHOR, "sem_wait", (void *)sem_wait, &v) == 1 && v == before, "write");
    CHECK(gla_got_patch(ANCHOR, "sem_wait", before, &v) == 1 && v == (void *)sem_wait, "back");
}

/* The peer hooked first: gil_adapt chains to it; its counters rise while gil_adapt is
 * installed, and gil_adapt still measures; uninstall gives the peer its slots back. */
static void test_peer_first(void)
{
    peer_reset();
    CHECK(peer_install(gla_got_patch, ANCHOR) == PEER_N, "peer hooks all %d", PEER_N);
    for (int i = 0; i < PEER_N; i++)
        CHECK(slot_value(i) == peer_wrapper(i), "peer holds %s", peer_name(i));
    CHECK(gla_hook_install(ANCHOR) == 0, "install");
    gla_hook_set_gil(&g_fake_gil.cond);
    gla_hook_status st;
    gla_hook_get_status(&st);
    CHECK(st.installed && st.slots_cond >= 1 && st.slots_chained == PEER_N && st.slots_left == 0,
          "installed=%d cond=%d chained=%d left=%d", st.installed, st.slots_cond, st.slots_chained,
          st.slots_left);
    for (int i = 0; i < PEER_N; i++)
        CHECK(IS_GLA_WRAPPER(slot_value(i)), "gil_adapt holds %s", peer_name(i));

    peer_reset();
    int registered = 0;
    long long gil = gil_wait_of_waiter(30, &registered);
    CHECK(gil >= (long long)(29 * MS) && gil < (long long)(1000 * MS), "GIL wait %lld", gil);
    CHECK(registered, "registered through the hooked pthread_create");
    gla_thread *me = gla_ledger_self();
    uint64_t held0 = gla_ledger_wait(me, GLA_GIL_HELD);
    call_each_once();
    CHECK(gla_ledger_wait(me, GLA_GIL_HELD) > held0, "the take and drop measured");
    for (int i = 0; i < PEER_N; i++)
        CHECK(peer_calls(i) >= 1, "peer saw %lu call(s) of %s while gil_adapt was installed",
              peer_calls(i), peer_name(i));

    CHECK(gla_hook_uninstall() == 0, "uninstall");
    gla_hook_get_status(&st);
    CHECK(!st.installed && st.slots_left == 0, "left %d", st.slots_left);
    for (int i = 0; i < PEER_N; i++)
        CHECK(slot_value(i) == peer_wrapper(i), "peer holds %s again", peer_name(i));
    peer_reset();
    CHECK(gil_wait_of_waiter(20, NULL) == 0, "uninstalled: nothing counted");
    call_each_once();
    for (int i = 0; i < PEER_N; i++)
        CHECK(peer_calls(i) >= 1, "peer still sees %s", peer_name(i));
    CHECK(peer_uninstall() == 0, "peer uninstall");
    gla_hook_set_gil(NULL);
}

/* gil_adapt hooked first: the peer chains to its wrappers; gil_adapt's uninstall leaves
 * the peer's slots alone and says so; calls keep working through both; a second install
 * goes beneath the peer without a loop; once the peer gives the wrappers back, install
 * and uninstall own the slots again. */
static void test_peer_after(void)
{
    gla_hook_status st;
    CHECK(gla_hook_install(ANCHOR) == 0, "install");
    gla_hook_set_gil(&g_fake_gil.cond);
    peer_reset();
    CHECK(peer_install(gla_got_patch, ANCHOR) == PEER_N, "peer hooks all %d", PEER_N);
    for (int i = 0; i < PEER_N; i++)
        CHECK(IS_GLA_WRAPPER(peer_found(i)), "peer chains to gil_adapt's %s", peer_name(i));
    long long gil = gil_wait_of_waiter(30, NULL);
    CHECK(gil >= (long long)(29 * MS) && gil < (long long)(1000 * MS), "GIL wait %lld", gil);
    CHECK(peer_calls(PEER_COND_TIMEDWAIT) >= 1 && peer_calls(PEER_CREATE) >= 1,
          "peer saw the wait and the create");

    CHECK(gla_hook_uninstall() == 0, "uninstall (leaving slots is no error)");
    gla_hook_get_status(&st);
    CHECK(!st.installed && st.slots_left == PEER_N, "left %d of %d", st.slots_left, PEER_N);
    CHECK(strstr(st.reason, "pthread_cond_timedwait") && strstr(st.reason, "left"), "reason: %s",
          st.reason);
    for (int i = 0; i < PEER_N; i++)
        CHECK(slot_value(i) == peer_wrapper(i), "the peer's %s left in place", peer_name(i));
    /* Calls still pass through both (peer -> gil_adapt's wrapper -> libc), untimed. */
    peer_reset();
    int registered = 1;
    CHECK(gil_wait_of_waiter(20, &registered) == 0, "uninstalled: works, nothing counted");
    CHECK(!registered, "uninstalled: no registration");
    call_each_once();
    for (int i = 0; i < PEER_N; i++)
        CHECK(peer_calls(i) >= 1, "peer still sees %s", peer_name(i));

    /* Install again while the peer holds the slots: beneath it, no loop. */
    CHECK(gla_hook_install(ANCHOR) == 0, "install beneath the peer");
    gla_hook_get_status(&st);
    CHECK(st.installed && st.slots_cond >= 1 && st.slots_left == 0, "cond=%d left=%d",
          st.slots_cond, st.slots_left);
    for (int i = 0; i < PEER_N; i++)
        CHECK(slot_value(i) == peer_wrapper(i), "the peer keeps %s", peer_name(i));
    peer_reset();
    gil = gil_wait_of_waiter(30, &registered);
    CHECK(gil >= (long long)(29 * MS) && gil < (long long)(1000 * MS), "GIL wait %lld", gil);
    CHECK(registered, "registered again");
    CHECK(peer_calls(PEER_COND_TIMEDWAIT) >= 1, "peer saw it");
    CHECK(gla_hook_uninstall() == 0, "uninstall");
    gla_hook_get_status(&st);
    CHECK(st.slots_left == PEER_N, "left %d", st.slots_left);

    /* The peer leaves, giving back gil_adapt's wrappers: they pass calls on, untimed. */
    CHECK(peer_uninstall() == 0, "peer uninstall");
    for (int i = 0; i < PEER_N; i++)
        CHECK(IS_GLA_WRAPPER(slot_value(i)), "gil_adapt's %s back in the slot", peer_name(i));
    CHECK(gil_wait_of_waiter(20, NULL) == 0, "uninstalled: works, nothing counted");
    CHECK(gla_hook_install(ANCHOR) == 0, "install");
    gla_hook_get_status(&st);
    CHECK(st.installed && st.slots_left == 0 && st.slots_chained == 0, "left %d chained %d",
          st.slots_left, st.slots_chained);
    gil = gil_wait_of_waiter(30, NULL);
    CHECK(gil >= (long long)(29 * MS) && gil < (long long)(1000 * MS), "GIL wait %lld", gil);
    CHECK(gla_hook_uninstall() == 0, "uninstall");
    gla_hook_get_status(&st);
    CHECK(st.slots_left == 0 && st.reason[0] == '\0', "left %d: %s", st.slots_left, st.reason);
    for (int i = 0; i < PEER_N; i++) {
        void *v = slot_value(i);
        CHECK(v != peer_wrapper(i) && !IS_GLA_WRAPPER(v), "%s restored", peer_name(i));
    }
    gla_hook_set_gil(NULL);
}

/* A holding under way at uninstall is not counted, neither while uninstalled nor at its
 * drop after the next install; holdings after it are. */
static void take(void)
{
    waiter_mutex_lock(&g_fake_gil.mutex);
    g_fake_gil.locked = 1;
    pthread_mutex_unlock(&g_fake_gil.mutex);
}

static void drop(void)
{
    waiter_mutex_lock(&g_fake_gil.mutex);
    g_fake_gil.locked = 0;
    waiter_cond_signal(&g_fake_gil.cond);
    pthread_mutex_unlock(&g_fake_gil.mutex);
}

static void test_holding_across_reinstall(void)
{
    CHECK(gla_hook_install(ANCHOR) == 0, "install");
    gla_hook_set_gil(&g_fake_gil.cond);
    gla_thread *me = gla_ledger_self();
    for (int round = 0; round < 3; round++) {
        uint64_t held0 = gla_ledger_wait(me, GLA_GIL_HELD);
        take();
        sleep_ms(10);
        CHECK(gla_hook_uninstall() == 0, "uninstall");
        sleep_ms(100); /* still "holding", unhooked */
        uint64_t self = gla_hook_self_gil_held_ns() - held0;
        uint64_t other = held_from_other_thread(me) - held0;
        CHECK(self < 50 * MS && other < 50 * MS,
              "round %d: uninstalled, held so far %llu (self) %llu (other thread)", round,
              (unsigned long long)self, (unsigned long long)other);
        CHECK(gla_hook_install(ANCHOR) == 0, "install");
        sleep_ms(20);
        drop();
        uint64_t held = gla_ledger_wait(me, GLA_GIL_HELD) - held0;
        CHECK(held < 50 * MS, "round %d: a holding from before the uninstall counted %llu", round,
              (unsigned long long)held);
        /* A holding inside the installation counts. */
        uint64_t held1 = gla_ledger_wait(me, GLA_GIL_HELD);
        take();
        sleep_ms(20);
        drop();
        held = gla_ledger_wait(me, GLA_GIL_HELD) - held1;
        CHECK(held >= 19 * MS && held < 1000 * MS, "round %d: held %llu", round,
              (unsigned long long)held);
    }
    CHECK(gla_hook_uninstall() == 0, "uninstall");
    gla_hook_set_gil(NULL);
}

int main(void)
{
    CHECK(gla_ledger_init() == 0, "init");
    test_got_patch();
    test_peer_first();
    test_peer_after();
    test_holding_across_reinstall();
    if (g_failures) {
        fprintf(stderr, "test_hook: %d failure(s)\n", g_failures);
        return 1;
    }
    printf("test_hook: all passed\n");
    return 0;
}
