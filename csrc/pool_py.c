/* pool_py.c — see pool_py.h. The Python side of the executor's C pool.
 *
 * Worker threads are C threads (pool.c) that hold a Python thread state for their whole
 * life: enter takes the GIL with PyGILState_Ensure and runs the Python thread_start hook
 * (thread identity, trace/profile hooks, the user's initializer), pause/resume release
 * and retake the GIL around the wait for work, leave runs thread_stop and deletes the
 * thread state. Nothing touches Python once the interpreter is finalizing.
 *
 * Lifetime: a Pool holds a reference to itself (keepalive) from creation until it is
 * shut down and its last worker has left (gla_pool_claim_drained); each worker holds its
 * own reference from enter to leave. So a pool outlives an executor that was dropped
 * with work queued, and it is freed (monitor joined) only when no thread uses it.
 *
 * Tasks: one node per submit with the future, the callable and its vectorcall arguments.
 * The worker calls Future.set_running_or_notify_cancel / set_result / set_exception —
 * the future stays a plain concurrent.futures.Future, so as_completed, wait,
 * asyncio.wrap_future and callbacks behave as with ThreadPoolExecutor.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "pool_py.h"
#include "pool.h"
#include "pycompat.h"

#include "gilhook.h"
#include "ledger.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__has_include)
#if __has_include("controller.h")
#include "controller.h"
#define GLA_HAVE_CONTROLLER 1
#endif
#endif
#ifndef GLA_HAVE_CONTROLLER
#define GLA_HAVE_CONTROLLER 0
#endif

/* Free-threaded build: how long a submit that started the first worker waits for it to
 * take the task (gla_pool_await_taken); an initializer outlasting it is not waited for. */
#define FIRST_TAKE_WAIT_S 0.05

/* ---- process-wide state (all touched with the GIL held, main interpreter only) -------- */

typedef struct PoolObject PoolObject;

/* Every Pool not yet drained: the list holds each one's keepalive reference, so a pool in
 * it is never freed; g_pools_lock guards it (no Python call is made under the lock: the
 * free-threaded build has no GIL to do it). */
static PoolObject *g_pools;
static pthread_mutex_t g_pools_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int g_exiting; /* _shutdown_all ran: the interpreter is exiting */

/* Workers attached to the interpreter: from their PyGILState_Ensure in enter to the
 * PyGILState_Release that ends leave. A worker counts as gone from its pool before leave
 * runs (leave may free the pool); with a GIL the exiting thread could not run on until
 * that leave was over, without one (free-threaded build) it can, so interpreter exit
 * waits for this count to reach zero (attached_wait) before finalization starts. */
static int g_attached;
static pthread_mutex_t g_attached_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_attached_cond = PTHREAD_COND_INITIALIZER;

static void attached_add(int d)
{
    pthread_mutex_lock(&g_attached_lock);
    g_attached += d;
    if (g_attached == 0)
        pthread_cond_broadcast(&g_attached_cond);
    pthread_mutex_unlock(&g_attached_lock);
}

/* Waits until at most `floor` workers are attached (1 where the caller is one). Called
 * without the GIL / detached. */
static void attached_wait(int floor)
{
    pthread_mutex_lock(&g_attached_lock);
    while (g_attached > floor)
        pthread_cond_wait(&g_attached_cond, &g_attached_lock);
    pthread_mutex_unlock(&g_attached_lock);
}

/* Executors live in the main interpreter: their workers take its thread states
 * (PyGILState_*), which know no other. A sub-interpreter that imports the module gets a
 * clear error at AdaptiveExecutor() and its finalization touches no executor. */
static int in_main_interpreter(void)
{
    return PyInterpreterState_Get() == PyInterpreterState_Main();
}

static int is_finalizing(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
}

static PyObject *fetch_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value && tb)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

/* ---- tasks ---------------------------------------------------------------------------- */

typedef struct {
    gla_pool_task link;
    PyObject *future;
    PyObject *fn;
    PyObject *kwnames; /* NULL or a tuple of keyword names */
    Py_ssize_t nargs;  /* positional arguments; keyword values follow them in args */
    PyObject *args[];
} pytask;

static Py_ssize_t task_nall(const pytask *t)
{
    return t->nargs + (t->kwnames ? PyTuple_GET_SIZE(t->kwnames) : 0);
}

static void task_free(pytask *t)
{
    Py_ssize_t n = task_nall(t);
    for (Py_ssize_t i = 0; i < n; i++)
        Py_DECREF(t->args[i]);
    Py_XDECREF(t->kwnames);
    Py_DECREF(t->fn);
    Py_DECREF(t->future);
    PyMem_Free(t);
}

/* Calls future.<name>(arg) and drops the result; errors go to sys.unraisablehook. */
static void future_call(PyObject *future, PyObject *name, PyObject *arg)
{
    PyObject *r = arg ? PyObject_CallMethodOneArg(future, name, arg)
                      : PyObject_CallMethodNoArgs(future, name);
    if (r)
        Py_DECREF(r);
    else
        PyErr_WriteUnraisable(future);
}

/* ---- Futures out of the garbage collector's way -----------------------------------------
 *
 * A Future's Condition keeps its RLock and five methods bound to it (acquire, release,
 * _release_save, _acquire_restore, _is_owned): six of the twelve containers a Future
 * allocates. None of the six can be part of a reference cycle — an RLock refers to its
 * type only, a bound method to its lock and type, and neither type refers back — so none
 * can ever be garbage that only the collector finds; yet a program holding many futures
 * (a batch of submits, then result() on each) has every full collection walk them.
 * Untracking them, as CPython itself does for tuples and dicts of atomic values, takes
 * them out of those walks. The Future, its Condition, their dicts, lists and deque stay
 * tracked: what they hold is the program's. Only an RLock of exactly _thread.RLock and
 * methods bound to that lock are untracked; anything else is left as it is. */

static int future_untrack_init(gla_pool_py_state *st)
{
    if (getenv("GIL_ADAPT_NO_UNTRACK"))
        return 0;
    PyObject *thread = PyImport_ImportModule("_thread");
    if (!thread)
        return -1;
    st->rlock_type = PyObject_GetAttrString(thread, "RLock");
    Py_DECREF(thread);
    if (!st->rlock_type)
        PyErr_Clear(); /* a build without a C RLock: nothing to untrack */
    return 0;
}

static void future_untrack_lock(const gla_pool_py_state *st, PyObject *f)
{
    PyObject *cond = PyObject_GetAttr(f, st->s__condition);
    PyObject *lock = cond ? PyObject_GetAttr(cond, st->s__lock) : NULL;
    if (lock && (PyObject *)Py_TYPE(lock) == st->rlock_type) {
        PyObject *const names[] = {st->s_acquire, st->s_release, st->s__release_save,
                                   st->s__acquire_restore, st->s__is_owned};
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            PyObject *m = PyObject_GetAttr(cond, names[i]);
            if (m && PyCFunction_Check(m) && PyCFunction_GET_SELF(m) == lock &&
                PyObject_GC_IsTracked(m))
                PyObject_GC_UnTrack(m);
            Py_XDECREF(m);
        }
        if (PyObject_GC_IsTracked(lock))
            PyObject_GC_UnTrack(lock);
    }
    Py_XDECREF(lock);
    Py_XDECREF(cond);
    PyErr_Clear();
}

/* ---- Future fast path -------------------------------------------------------------------
 *
 * A worker moves each future PENDING -> RUNNING -> FINISHED. Future's own methods do it
 * in Python under `with self._condition`; here the same transitions are made under the
 * same lock (the Condition's RLock) for the common case only — state as expected, nobody
 * waiting (future._waiters empty: no as_completed/wait; condition._waiters empty: no
 * result() blocked) — and the done-callbacks are run through Future._invoke_callbacks as
 * set_result does. Anything else (cancelled, waiters, an unexpected layout) goes through
 * the Future's methods. future_fast_init checks the layout once against a real Future. */

static int future_fast_init(gla_pool_py_state *st)
{
    PyObject *base = PyImport_ImportModule("concurrent.futures._base");
    if (!base)
        return -1;
    st->future_type = PyObject_GetAttrString(base, "Future");
    if (!st->future_type) {
        Py_DECREF(base);
        return -1;
    }
    st->PENDING = PyObject_GetAttrString(base, "PENDING");
    st->RUNNING = PyObject_GetAttrString(base, "RUNNING");
    st->FINISHED = PyObject_GetAttrString(base, "FINISHED");
    Py_DECREF(base);
    if (!st->PENDING || !st->RUNNING || !st->FINISHED) {
        PyErr_Clear();
        return 0;
    }
    PyObject *f = PyObject_CallNoArgs(st->future_type);
    if (!f)
        return -1;
    PyObject *cond = PyObject_GetAttr(f, st->s__condition);
    PyObject *lock = cond ? PyObject_GetAttr(cond, st->s__lock) : NULL;
    PyObject *cw = cond ? PyObject_GetAttr(cond, st->s__waiters) : NULL;
    PyObject *state = PyObject_GetAttr(f, st->s__state);
    PyObject *fw = PyObject_GetAttr(f, st->s__waiters);
    PyObject *cbs = PyObject_GetAttr(f, st->s__done_callbacks);
    PyObject *res = PyObject_GetAttr(f, st->s__result);
    int ok = lock && cw && state == st->PENDING && fw && PyList_CheckExact(fw) &&
             PyList_GET_SIZE(fw) == 0 && cbs && PyList_CheckExact(cbs) && res &&
             PyObject_HasAttr(lock, st->s_acquire) && PyObject_HasAttr(lock, st->s_release) &&
             PyObject_HasAttr(f, st->s__invoke_callbacks);
    if (ok) {
        Py_ssize_t n = PyObject_Size(cw);
        ok = n == 0;
    }
    PyErr_Clear();
    Py_XDECREF(cond);
    Py_XDECREF(lock);
    Py_XDECREF(cw);
    Py_XDECREF(state);
    Py_XDECREF(fw);
    Py_XDECREF(cbs);
    Py_XDECREF(res);
    st->future_fast = ok && !getenv("GIL_ADAPT_NO_FAST_FUTURE");
    Py_DECREF(f);
    return 0;
}

/* Takes the future's condition lock: returns the lock (new reference) and the
 * condition (*cond, new reference), or NULL with an exception set. */
static PyObject *future_lock(const gla_pool_py_state *st, PyObject *f, PyObject **cond)
{
    *cond = PyObject_GetAttr(f, st->s__condition);
    if (!*cond)
        return NULL;
    PyObject *lock = PyObject_GetAttr(*cond, st->s__lock);
    if (!lock) {
        Py_CLEAR(*cond);
        return NULL;
    }
    PyObject *r = PyObject_CallMethodNoArgs(lock, st->s_acquire);
    if (!r) {
        Py_DECREF(lock);
        Py_CLEAR(*cond);
        return NULL;
    }
    Py_DECREF(r);
    return lock;
}

static int future_unlock(const gla_pool_py_state *st, PyObject *lock, PyObject *cond)
{
    PyObject *r = PyObject_CallMethodNoArgs(lock, st->s_release);
    Py_DECREF(lock);
    Py_DECREF(cond);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* set_running_or_notify_cancel(): 1 run it, 0 cancelled, -1 error (exception set). */
static int future_set_running(const gla_pool_py_state *st, PyObject *f)
{
    if (st->future_fast) {
        PyObject *cond, *lock = future_lock(st, f, &cond);
        if (!lock)
            return -1;
        PyObject *state = PyObject_GetAttr(f, st->s__state);
        int done = state == st->PENDING && PyObject_SetAttr(f, st->s__state, st->RUNNING) == 0;
        Py_XDECREF(state);
        int err = PyErr_Occurred() != NULL;
        if (future_unlock(st, lock, cond) < 0 || err)
            return -1;
        if (done)
            return 1;
    }
    PyObject *go = PyObject_CallMethodNoArgs(f, st->s_set_running);
    if (!go)
        return -1;
    int run = go == Py_True;
    Py_DECREF(go);
    return run;
}

/* 1 when nobody waits on the future (its lock held). */
static int future_unwatched(const gla_pool_py_state *st, PyObject *f, PyObject *cond)
{
    PyObject *fw = PyObject_GetAttr(f, st->s__waiters);
    int ok = fw && PyList_CheckExact(fw) && PyList_GET_SIZE(fw) == 0;
    Py_XDECREF(fw);
    if (ok) {
        PyObject *cw = PyObject_GetAttr(cond, st->s__waiters);
        ok = cw && PyObject_Size(cw) == 0;
        Py_XDECREF(cw);
    }
    PyErr_Clear();
    return ok;
}

/* set_result(res); errors go to sys.unraisablehook. */
static void future_set_result(const gla_pool_py_state *st, PyObject *f, PyObject *res)
{
    if (st->future_fast) {
        PyObject *cond, *lock = future_lock(st, f, &cond);
        if (!lock) {
            PyErr_WriteUnraisable(f);
            return;
        }
        PyObject *state = PyObject_GetAttr(f, st->s__state);
        int done = state == st->RUNNING && future_unwatched(st, f, cond) &&
                   PyObject_SetAttr(f, st->s__result, res) == 0 &&
                   PyObject_SetAttr(f, st->s__state, st->FINISHED) == 0;
        Py_XDECREF(state);
        if (PyErr_Occurred())
            PyErr_WriteUnraisable(f);
        if (future_unlock(st, lock, cond) < 0)
            PyErr_WriteUnraisable(f);
        if (done) {
            PyObject *cbs = PyObject_GetAttr(f, st->s__done_callbacks);
            int any = cbs && PyList_CheckExact(cbs) ? PyList_GET_SIZE(cbs) > 0 : 1;
            Py_XDECREF(cbs);
            PyErr_Clear();
            if (any)
                future_call(f, st->s__invoke_callbacks, NULL);
            return;
        }
    }
    future_call(f, st->s_set_result, res);
}

/* ---- Pool object ------------------------------------------------------------------------ */

struct PoolObject {
    PyObject_HEAD
    gla_pool *pool;
    PyObject *thread_start; /* callable(index) -> (ok, token) */
    PyObject *thread_stop;  /* callable(token) */
    PyObject *broken_type;  /* exception class for a broken pool */
    PyObject *broken_msg;   /* what a broken pool's error says (set at creation) */
    gla_pool_py_state *st;  /* its module's state (the type holds the module) */
    PyObject *keepalive;    /* self, until drained (while in g_pools) */
    int has_controller;
#if GLA_HAVE_CONTROLLER
    gla_ctl ctl;
#endif
    PoolObject *prev, *next; /* g_pools */
};

static void pools_link(PoolObject *po)
{
    pthread_mutex_lock(&g_pools_lock);
    po->prev = NULL;
    po->next = g_pools;
    if (g_pools)
        g_pools->prev = po;
    g_pools = po;
    pthread_mutex_unlock(&g_pools_lock);
}

static void pools_unlink(PoolObject *po)
{
    pthread_mutex_lock(&g_pools_lock);
    if (po->prev)
        po->prev->next = po->next;
    else if (g_pools == po)
        g_pools = po->next;
    if (po->next)
        po->next->prev = po->prev;
    po->prev = po->next = NULL;
    pthread_mutex_unlock(&g_pools_lock);
}

static void drop_keepalive(PoolObject *po)
{
    /* Drained (claimed once, gla_pool_claim_drained): no worker will call the hooks
     * again, and neither exit nor fork needs the pool any more. */
    pools_unlink(po);
    Py_CLEAR(po->thread_start);
    Py_CLEAR(po->thread_stop);
    Py_CLEAR(po->keepalive); /* may free po */
}

static void maybe_drained(PoolObject *po)
{
    if (po->pool && gla_pool_claim_drained(po->pool))
        drop_keepalive(po);
}

/* Fails the futures of tasks that a broken pool gave back. */
static void fail_broken(PoolObject *po, gla_pool_task *list)
{
    const gla_pool_py_state *st = po->st;
    while (list) {
        pytask *t = (pytask *)list;
        list = list->next;
        PyObject *exc = PyObject_CallOneArg(po->broken_type, po->broken_msg);
        if (exc) {
            PyObject *r = PyObject_CallMethodOneArg(t->future, st->s_set_exception, exc);
            Py_DECREF(exc);
            if (r)
                Py_DECREF(r);
            else
                PyErr_Clear(); /* cancelled meanwhile: nothing to tell */
        } else {
            PyErr_WriteUnraisable(t->future);
        }
        task_free(t);
    }
}

static void cancel_list(const gla_pool_py_state *st, gla_pool_task *list)
{
    while (list) {
        pytask *t = (pytask *)list;
        list = list->next;
        future_call(t->future, st->s_cancel, NULL);
        task_free(t);
    }
}

/* ---- worker hooks (worker threads) ----------------------------------------------------- */

typedef struct {
    PyGILState_STATE gstate;
    PyThreadState *saved;
    PyObject *token;
    PoolObject *po; /* the worker's own reference */
} wstate;

static int py_enter(void *ctx, void **wdata, unsigned index)
{
    PoolObject *po = ctx;
    if (is_finalizing())
        return GLA_POOL_ENTER_FAIL;
    PyGILState_STATE g = PyGILState_Ensure();
    attached_add(1);
    gla_pool_worker_entered(); /* the next worker may start: this one has the GIL */
    wstate *ws = PyMem_RawCalloc(1, sizeof *ws);
    if (!ws) {
        PyGILState_Release(g);
        attached_add(-1);
        return GLA_POOL_ENTER_FAIL;
    }
    ws->gstate = g;
    Py_INCREF(po);
    ws->po = po;
    *wdata = ws;
    int ok = 0;
    PyObject *r = po->thread_start ? PyObject_CallFunction(po->thread_start, "I", index) : NULL;
    if (r && PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 2) {
        ok = PyObject_IsTrue(PyTuple_GET_ITEM(r, 0)) == 1;
        ws->token = Py_NewRef(PyTuple_GET_ITEM(r, 1));
    } else if (!r && po->thread_start) {
        PyErr_WriteUnraisable(po->thread_start);
    }
    Py_XDECREF(r);
    if (ok)
        return 0;
    /* The initializer failed (thread_start logged it): the pool is broken. */
    fail_broken(po, gla_pool_break(po->pool));
    return GLA_POOL_ENTER_FAIL_HELD;
}

static void py_pause(void *ctx, void *wdata)
{
    (void)ctx;
    wstate *ws = wdata;
    ws->saved = PyEval_SaveThread();
}

static int py_resume(void *ctx, void *wdata)
{
    (void)ctx;
    wstate *ws = wdata;
    if (is_finalizing())
        return -1; /* never take the GIL of an interpreter that is going away */
    PyEval_RestoreThread(ws->saved);
    ws->saved = NULL;
    return 0;
}

static void py_run(void *ctx, void *wdata, gla_pool_task *task)
{
    const gla_pool_py_state *st = ((PoolObject *)ctx)->st;
    (void)wdata;
    pytask *t = (pytask *)task;
    int go = future_set_running(st, t->future);
    if (go < 0) {
        PyErr_WriteUnraisable(t->future);
    } else if (go) {
        PyObject *res = PyObject_Vectorcall(t->fn, t->args, (size_t)t->nargs, t->kwnames);
        if (res) {
            future_set_result(st, t->future, res);
            Py_DECREF(res);
        } else {
            PyObject *exc = fetch_exception();
            if (exc) {
                future_call(t->future, st->s_set_exception, exc);
                Py_DECREF(exc);
            }
        }
    }
    task_free(t);
}

static void py_leave(void *ctx, void *wdata, int holding)
{
    (void)ctx;
    wstate *ws = wdata;
    if (!ws)
        return;
    if (!holding) {
        attached_add(-1);
        return; /* finalizing: leave the thread state alone (as CPython does) */
    }
    PoolObject *po = ws->po;
    if (ws->token) {
        if (po->thread_stop) {
            PyObject *r = PyObject_CallOneArg(po->thread_stop, ws->token);
            if (r)
                Py_DECREF(r);
            else
                PyErr_WriteUnraisable(po->thread_stop);
        }
        Py_CLEAR(ws->token);
    }
    maybe_drained(po);
    Py_DECREF(po); /* may free the pool: nothing of it is touched after this */
    PyGILState_STATE g = ws->gstate;
    PyMem_RawFree(ws);
    PyGILState_Release(g);
    attached_add(-1);
}

/* ---- Pool methods -------------------------------------------------------------------------- */

static PyObject *Pool_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"min_workers",  "max_workers",  "initial_target", "stack_size",
                             "name",         "thread_start", "thread_stop",    "broken_type",
                             "idle_timeout", "controller",   "start_burst",    NULL};
    int min_w, max_w, initial = 0, use_controller = 1, burst = 0;
    Py_ssize_t stack = 0;
    const char *name = "gla";
    PyObject *start = Py_None, *stop = Py_None, *broken = NULL;
    double idle_timeout = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ii|insOOOdpi", kwlist, &min_w, &max_w, &initial,
                                     &stack, &name, &start, &stop, &broken, &idle_timeout,
                                     &use_controller, &burst))
        return NULL;
    if (!in_main_interpreter())
        return PyErr_Format(PyExc_RuntimeError,
                            "gil_adapt executors run in the main interpreter only (their "
                            "worker threads take the main interpreter's thread states)");
    if (min_w < 1 || max_w < min_w)
        return PyErr_Format(PyExc_ValueError, "need 1 <= min_workers <= max_workers (got %d, %d)",
                            min_w, max_w);
    if (stack < 0)
        return PyErr_Format(PyExc_ValueError, "stack_size must be >= 0");
    if (burst < 0)
        return PyErr_Format(PyExc_ValueError, "start_burst must be >= 0 (0: the default)");
    gla_pool_py_state *st = PyType_GetModuleState(type);
    if (!st)
        return NULL;
    PoolObject *po = (PoolObject *)type->tp_alloc(type, 0);
    if (!po)
        return NULL;
    po->st = st;
    po->thread_start = start == Py_None ? NULL : Py_NewRef(start);
    po->thread_stop = stop == Py_None ? NULL : Py_NewRef(stop);
    po->broken_type = Py_NewRef(broken ? broken : PyExc_RuntimeError);
    po->broken_msg = PyUnicode_FromString(
        "A thread initializer failed, the thread pool is not usable anymore");
    if (!po->broken_msg) {
        Py_DECREF(po);
        return NULL;
    }

    gla_pool_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.min_workers = min_w;
    cfg.max_workers = max_w;
    cfg.initial_target = initial > 0 ? initial : min_w;
    cfg.stack_size = (size_t)stack;
    cfg.idle_timeout_s = idle_timeout;
    cfg.start_burst = burst;
    snprintf(cfg.name, sizeof cfg.name, "%s", name);
    gla_hook_status hs;
    gla_hook_get_status(&hs);
    cfg.gil_wait_known = hs.installed && hs.gil_known;
    cfg.free_threaded = gla_py_gil_disabled();
    cfg.hooks.enter = py_enter;
    cfg.hooks.pause = py_pause;
    cfg.hooks.resume = py_resume;
    cfg.hooks.run = py_run;
    cfg.hooks.leave = py_leave;
    cfg.ctx = po;
#if GLA_HAVE_CONTROLLER
    if (use_controller) {
        cfg.policy = gla_ctl_policy;
        cfg.policy_ctx = &po->ctl;
        cfg.first_window_tasks = GLA_CTL_MIN_TASKS;
        po->has_controller = 1;
    }
#else
    (void)use_controller;
#endif
    po->pool = gla_pool_create(&cfg);
    if (!po->pool) {
        Py_DECREF(po);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
#if GLA_HAVE_CONTROLLER
    if (po->has_controller) {
        gla_pool_stats st;
        gla_pool_get_stats(po->pool, &st);
        gla_ctl_init(&po->ctl, min_w, max_w, st.usable_cores);
        gla_ctl_start_at(&po->ctl, st.target);
    }
#endif
    po->keepalive = Py_NewRef((PyObject *)po);
    pools_link(po);
    return (PyObject *)po;
}

static void Pool_dealloc(PoolObject *po)
{
    if (po->pool) {
        /* keepalive is gone: shut down and no worker left (or never started). */
        gla_pool_shutdown(po->pool, 0, NULL);
        gla_pool_destroy(po->pool);
        po->pool = NULL;
    }
    Py_CLEAR(po->thread_start);
    Py_CLEAR(po->thread_stop);
    Py_CLEAR(po->broken_type);
    Py_CLEAR(po->broken_msg);
    PyTypeObject *tp = Py_TYPE(po);
    tp->tp_free((PyObject *)po);
    Py_DECREF(tp); /* instances of a heap type hold a reference to it */
}

static PyObject *Pool_shutdown(PoolObject *po, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"cancel_futures", NULL};
    int cancel = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|p", kwlist, &cancel))
        return NULL;
    gla_pool_task *list = NULL;
    gla_pool_shutdown(po->pool, cancel, &list);
    cancel_list(po->st, list);
    maybe_drained(po);
    Py_RETURN_NONE;
}

/* Waits until all workers (but the calling one) have left, timeout < 0: no limit. The
 * GIL is released while waiting, in slices, so that signals (Ctrl-C) are handled.
 * 1 done, 0 timed out, -1 exception. */
static int pool_wait_impl(PoolObject *po, double timeout)
{
    Py_INCREF(po); /* a worker's leave may drop the last other reference meanwhile */
    int self_worker = gla_pool_is_worker(po->pool);
    uint64_t end = timeout >= 0 ? gla_now_ns() + (uint64_t)(timeout * 1e9) : 0;
    int done = 0;
    for (;;) {
        double slice = 0.05;
        if (end) {
            uint64_t now = gla_now_ns();
            double left = now < end ? (double)(end - now) / 1e9 : 0;
            if (left < slice)
                slice = left;
        }
        Py_BEGIN_ALLOW_THREADS
        done = gla_pool_wait_for(po->pool, self_worker, slice);
        Py_END_ALLOW_THREADS
        if (done || (end && gla_now_ns() >= end))
            break;
        if (PyErr_CheckSignals() < 0) {
            Py_DECREF(po);
            return -1;
        }
    }
    if (done)
        maybe_drained(po);
    Py_DECREF(po);
    return done;
}

static PyObject *Pool_wait(PoolObject *po, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O", kwlist, &timeout_obj))
        return NULL;
    double timeout = -1;
    if (timeout_obj != Py_None) {
        timeout = PyFloat_AsDouble(timeout_obj);
        if (timeout == -1 && PyErr_Occurred())
            return NULL;
        if (isnan(timeout)) {
            PyErr_SetString(PyExc_ValueError, "timeout must be a number, not nan");
            return NULL;
        }
        if (timeout < 0)
            timeout = 0;
        if (timeout > 1e9) /* inf or longer than any process lives: no limit (as threading) */
            timeout = -1;
    }
    int done = pool_wait_impl(po, timeout);
    if (done < 0)
        return NULL;
    return PyBool_FromLong(done);
}

static const char *action_name(gla_action a)
{
    switch (a) {
    case GLA_GROW: return "grow";
    case GLA_SHRINK: return "shrink";
    case GLA_VETO: return "veto";
    default: return "hold";
    }
}

static PyObject *opt_float(double v)
{
    if (v < 0)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(v);
}

static PyObject *Pool_stats(PoolObject *po, PyObject *unused)
{
    (void)unused;
    gla_pool_stats s;
    gla_pool_get_stats(po->pool, &s);
    const gla_window *w = &s.last_window;
    PyObject *decisions = Py_BuildValue("{s:K,s:K,s:K,s:K}", "grow",
                                        (unsigned long long)s.decisions[GLA_GROW], "shrink",
                                        (unsigned long long)s.decisions[GLA_SHRINK], "veto",
                                        (unsigned long long)s.decisions[GLA_VETO], "hold",
                                        (unsigned long long)s.decisions[GLA_HOLD]);
    if (!decisions)
        return NULL;
    PyObject *window;
    if (s.windows == 0) {
        window = Py_NewRef(Py_None);
    } else {
        window = Py_BuildValue(
            "{s:d,s:d,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:d,s:i}", "window_s", w->window_s,
            "completed", w->completed, "task_cpu_s", opt_float(w->task_cpu_s), "task_gil_wait_s",
            opt_float(w->task_gil_wait_s), "task_gil_held_s", opt_float(w->task_gil_held_s),
            "task_gil_held_sd", opt_float(w->task_gil_held_sd > 0 ? w->task_gil_held_sd : -1.0),
            "task_wall_s", opt_float(w->task_wall_s), "task_io_s", opt_float(w->task_io_s), "beta",
            opt_float(w->beta), "runq_share", opt_float(w->runq_share), "gil_busy",
            opt_float(w->gil_busy), "cpu_busy", opt_float(w->cpu_busy), "usable_cores",
            w->usable_cores, "workers", w->workers);
    }
    if (!window) {
        Py_DECREF(decisions);
        return NULL;
    }
    PyObject *history = PyList_New(s.history_n);
    for (int i = 0; history && i < s.history_n; i++) {
        const gla_pool_history_entry *h = &s.history[i];
        PyObject *e = Py_BuildValue("{s:d,s:d,s:d,s:i,s:O,s:i,s:s,s:s}", "at_s", h->at_s,
                                    "window_s", h->window_s, "completed", h->completed, "workers",
                                    h->workers, "queued", h->queue_nonempty ? Py_True : Py_False,
                                    "target", h->target, "decision", action_name(h->action),
                                    "reason", h->reason);
        if (!e)
            Py_CLEAR(history);
        else
            PyList_SET_ITEM(history, i, e);
    }
    if (!history) {
        Py_DECREF(decisions);
        Py_DECREF(window);
        return NULL;
    }
    const char *ctl = po->has_controller ? "gla_ctl" : "none (fixed target)";
    PyObject *last_error = s.last_start_errno ? PyUnicode_FromString(strerror(s.last_start_errno))
                                              : Py_NewRef(Py_None);
    return Py_BuildValue(
        "{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:l,s:N,s:d,s:N,s:s,s:s,s:K,s:K,s:K,s:K,s:K,s:N,"
        "s:n,s:K,s:N,s:s,s:O,s:O,s:d,s:K,s:N}",
        "workers", s.workers, "target_workers", s.target, "min_workers", s.min_workers,
        "max_workers", s.max_workers, "idle", s.idle, "busy", s.busy, "starting", s.starting,
        "retire_pending", s.retire_pending, "queue_length", s.queue_length, "beta",
        opt_float(s.windows ? w->beta : -1), "throughput", s.throughput, "decisions", decisions,
        "last_decision", action_name(s.last_action), "last_reason", s.last_reason, "submitted",
        (unsigned long long)s.submitted, "completed", (unsigned long long)s.completed,
        "workers_started", (unsigned long long)s.started, "workers_retired",
        (unsigned long long)s.retired, "start_failures", (unsigned long long)s.start_failures,
        "last_start_error", last_error, "stack_size", (Py_ssize_t)s.stack_size, "windows",
        (unsigned long long)s.windows, "window", window, "controller", ctl, "shutdown",
        s.shutdown ? Py_True : Py_False, "broken", s.broken ? Py_True : Py_False, "usable_cores",
        s.usable_cores, "taken", (unsigned long long)s.taken, "history", history);
}

static PyObject *Pool_set_target(PoolObject *po, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 1 || n > 1000000)
        return PyErr_Format(PyExc_ValueError, "target must be >= 1");
    gla_pool_set_target(po->pool, (int)n);
    Py_RETURN_NONE;
}

static PyObject *Pool_inject_start_failures(PoolObject *po, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    gla_pool_inject_start_failures(po->pool, (int)n);
    Py_RETURN_NONE;
}

/* The task's callable is fn, or a method bound to fn (no reference taken, no call: the
 * pool's mutex is held and the GIL is not). */
static int same_fn(void *fn, const gla_pool_task *t)
{
    PyObject *f = ((const pytask *)t)->fn;
    if (PyMethod_Check(f))
        f = PyMethod_GET_FUNCTION(f);
    return f == (PyObject *)fn;
}

/* take(fn) -> [(future, fn, args, kwargs)]: the queued tasks of fn (that object, or methods
 * bound to it), removed
 * from the queue with their futures still pending, for the caller to run elsewhere. */
static PyObject *Pool_take(PoolObject *po, PyObject *fn)
{
    const gla_pool_py_state *st = po->st;
    gla_pool_task *list;
    Py_BEGIN_ALLOW_THREADS /* never wait for the pool's mutex holding the GIL */
    list = gla_pool_take(po->pool, same_fn, fn);
    Py_END_ALLOW_THREADS
    PyObject *out = PyList_New(0);
    PyObject *err = out ? NULL : fetch_exception();
    while (list) {
        pytask *t = (pytask *)list;
        list = list->next;
        PyObject *item = NULL;
        if (out) {
            PyObject *args = PyTuple_New(t->nargs);
            PyObject *kwargs = PyDict_New();
            if (args && kwargs) {
                for (Py_ssize_t i = 0; i < t->nargs; i++)
                    PyTuple_SET_ITEM(args, i, Py_NewRef(t->args[i]));
                Py_ssize_t nkw = t->kwnames ? PyTuple_GET_SIZE(t->kwnames) : 0;
                int ok = 1;
                for (Py_ssize_t i = 0; i < nkw && ok; i++)
                    ok = PyDict_SetItem(kwargs, PyTuple_GET_ITEM(t->kwnames, i),
                                        t->args[t->nargs + i]) == 0;
                if (ok)
                    item = PyTuple_Pack(4, t->future, t->fn, args, kwargs);
            }
            Py_XDECREF(args);
            Py_XDECREF(kwargs);
            if (!item || PyList_Append(out, item) < 0) {
                Py_CLEAR(out);
                err = fetch_exception();
            }
            Py_XDECREF(item);
        }
        if (!out) /* out of memory: the task cannot move; its future says why */
            future_call(t->future, st->s_set_exception, err ? err : PyExc_MemoryError);
        task_free(t);
    }
    if (!out) {
        Py_XDECREF(err);
        return PyErr_NoMemory();
    }
    return out;
}

static PyObject *Pool_is_worker(PoolObject *po, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(gla_pool_is_worker(po->pool));
}

static PyMethodDef Pool_methods[] = {
    {"shutdown", (PyCFunction)(void (*)(void))Pool_shutdown, METH_VARARGS | METH_KEYWORDS,
     "shutdown(cancel_futures=False): stop accepting tasks; cancel the queued ones if asked."},
    {"wait", (PyCFunction)(void (*)(void))Pool_wait, METH_VARARGS | METH_KEYWORDS,
     "wait(timeout=None) -> bool: wait (without the GIL) until the workers have left."},
    {"stats", (PyCFunction)Pool_stats, METH_NOARGS, "Counts, last window, decisions."},
    {"set_target", (PyCFunction)Pool_set_target, METH_O,
     "Apply a worker target now (tests / manual override)."},
    {"inject_start_failures", (PyCFunction)Pool_inject_start_failures, METH_O,
     "Test hook: the next n worker starts fail with EAGAIN."},
    {"take", (PyCFunction)Pool_take, METH_O,
     "take(fn) -> [(future, fn, args, kwargs)]: remove fn's queued tasks (futures pending)."},
    {"is_worker", (PyCFunction)Pool_is_worker, METH_NOARGS,
     "True in one of this pool's worker threads."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Pool_slots[] = {
    {Py_tp_dealloc, (void *)Pool_dealloc},
    {Py_tp_doc, (void *)"The executor's C pool: work queue, worker threads, controller."},
    {Py_tp_methods, Pool_methods},
    {Py_tp_new, (void *)Pool_new},
    {0, NULL},
};

static PyType_Spec Pool_spec = {
    .name = "gil_adapt._core.Pool",
    .basicsize = sizeof(PoolObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Pool_slots,
};

/* Any Pool, whichever interpreter's module made its type. */
static int is_pool(PyObject *o)
{
    return Py_TYPE(o)->tp_dealloc == (destructor)Pool_dealloc;
}

/* ---- ExecutorBase -------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PoolObject *core;
} ExecObject;

static PyObject *raise_refused(PoolObject *po, int rc)
{
    if (rc == -EPIPE) {
        PyErr_SetObject(po->broken_type, po->broken_msg);
        return NULL;
    }
    if (rc == -ESHUTDOWN) {
        PyErr_SetString(PyExc_RuntimeError,
                        atomic_load(&g_exiting)
                            ? "cannot schedule new futures after interpreter shutdown"
                            : "cannot schedule new futures after shutdown");
        return NULL;
    }
    return PyErr_Format(PyExc_RuntimeError, "can't start new thread: %s", strerror(-rc));
}

/* submit(fn, /, *args, **kwargs) -> concurrent.futures.Future */
static PyObject *Exec_submit(ExecObject *self, PyObject *const *args, Py_ssize_t nargsf,
                             PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PoolObject *po = self->core;
    if (!po)
        return PyErr_Format(PyExc_RuntimeError, "executor is not initialised");
    if (nargs < 1)
        return PyErr_Format(PyExc_TypeError,
                            "submit() missing 1 required positional argument: 'fn'");
    if (atomic_load_explicit(&g_exiting, memory_order_relaxed))
        return raise_refused(po, -ESHUTDOWN); /* as ThreadPoolExecutor: no new threads now */
    PyObject *fn = args[0];
    if (!PyCallable_Check(fn))
        return PyErr_Format(PyExc_TypeError, "submit() fn must be callable, not %.100s",
                            Py_TYPE(fn)->tp_name);
    Py_ssize_t npos = nargs - 1;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    pytask *t = PyMem_Malloc(sizeof *t + (size_t)(npos + nkw) * sizeof(PyObject *));
    if (!t)
        return PyErr_NoMemory();
    PyObject *future = PyObject_CallNoArgs(po->st->future_type);
    if (!future) {
        PyMem_Free(t);
        return NULL;
    }
    if (po->st->rlock_type)
        future_untrack_lock(po->st, future);
    t->link.next = NULL;
    t->future = Py_NewRef(future);
    t->fn = Py_NewRef(fn);
    t->nargs = npos;
    t->kwnames = nkw ? Py_NewRef(kwnames) : NULL;
    for (Py_ssize_t i = 0; i < npos + nkw; i++)
        t->args[i] = Py_NewRef(args[1 + i]);
    int rc = gla_pool_try_submit(po->pool, &t->link);
    if (rc == -EBUSY) {
        Py_BEGIN_ALLOW_THREADS
        rc = gla_pool_submit(po->pool, &t->link);
        Py_END_ALLOW_THREADS
    }
    if (rc < 0) {
        task_free(t);
        Py_DECREF(future);
        return raise_refused(po, rc);
    }
    if (gla_pool_serving(po->pool) == 0) {
        /* No worker yet: wait for the one this submit started to get going (see pool.h);
         * without a GIL, also for it to take the task (with one, it holds the GIL until
         * it has: this thread cannot run on before) */
        Py_BEGIN_ALLOW_THREADS
        gla_pool_await_serving(po->pool);
#ifdef Py_GIL_DISABLED
        gla_pool_await_taken(po->pool, &t->link, FIRST_TAKE_WAIT_S);
#endif
        Py_END_ALLOW_THREADS
    }
    return future;
}

static void Exec_dealloc(ExecObject *self)
{
    PoolObject *po = self->core;
    self->core = NULL;
    if (po) {
        /* Dropped without shutdown: queued tasks still run, then the workers leave. */
        gla_pool_shutdown(po->pool, 0, NULL);
        maybe_drained(po);
        Py_DECREF(po);
    }
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *Exec_get_pool(ExecObject *self, void *closure)
{
    (void)closure;
    if (!self->core)
        Py_RETURN_NONE;
    return Py_NewRef((PyObject *)self->core);
}

static int Exec_set_pool(ExecObject *self, PyObject *value, void *closure)
{
    (void)closure;
    if (!value || !is_pool(value)) {
        PyErr_SetString(PyExc_TypeError, "_pool must be a gil_adapt._core.Pool");
        return -1;
    }
    int rc = 0;
    Py_BEGIN_CRITICAL_SECTION(self);
    if (self->core) {
        PyErr_SetString(PyExc_AttributeError, "_pool is set once");
        rc = -1;
    } else {
        self->core = (PoolObject *)Py_NewRef(value);
    }
    Py_END_CRITICAL_SECTION();
    return rc;
}

static PyMethodDef Exec_methods[] = {
    {"submit", (PyCFunction)(void (*)(void))Exec_submit, METH_FASTCALL | METH_KEYWORDS,
     "submit(fn, /, *args, **kwargs) -> Future\n\nSchedules fn(*args, **kwargs) and returns a "
     "concurrent.futures.Future for its result."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Exec_getset[] = {
    {"_pool", (getter)Exec_get_pool, (setter)Exec_set_pool, "The C pool (set once).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Exec_slots[] = {
    {Py_tp_dealloc, (void *)Exec_dealloc},
    {Py_tp_doc, (void *)"C base of gil_adapt.AdaptiveExecutor (submit without a Python frame)."},
    {Py_tp_methods, Exec_methods},
    {Py_tp_getset, Exec_getset},
    {Py_tp_new, (void *)PyType_GenericNew},
    {0, NULL},
};

static PyType_Spec Exec_spec = {
    .name = "gil_adapt._core.ExecutorBase",
    .basicsize = sizeof(ExecObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = Exec_slots,
};

/* ---- process-wide ------------------------------------------------------------------------- */

/* A new list of every live Pool (strong references). */
static PyObject *all_pools(void)
{
    for (Py_ssize_t cap = 16;; cap *= 2) {
        /* References taken under the lock (each listed pool holds one already); the list
         * is built outside it. */
        PoolObject **found = PyMem_RawMalloc((size_t)cap * sizeof *found);
        if (!found)
            return PyErr_NoMemory();
        Py_ssize_t n = 0;
        pthread_mutex_lock(&g_pools_lock);
        PoolObject *po = g_pools;
        for (; po && n < cap; po = po->next)
            found[n++] = (PoolObject *)Py_NewRef((PyObject *)po);
        int more = po != NULL;
        pthread_mutex_unlock(&g_pools_lock);
        PyObject *list = more ? NULL : PyList_New(n);
        for (Py_ssize_t k = 0; k < n; k++) {
            if (list)
                PyList_SET_ITEM(list, k, (PyObject *)found[k]);
            else
                Py_DECREF(found[k]);
        }
        PyMem_RawFree(found);
        if (!more)
            return list; /* NULL with MemoryError where PyList_New failed */
    }
}

static PyObject *py_shutdown_all(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    if (!in_main_interpreter()) /* a sub-interpreter's exit: no executor is its own */
        Py_RETURN_NONE;
    atomic_store(&g_exiting, 1);
    PyObject *list = all_pools();
    if (!list)
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++)
        gla_pool_shutdown(((PoolObject *)PyList_GET_ITEM(list, i))->pool, 0, NULL);
    int self_worker = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        PoolObject *po = (PoolObject *)PyList_GET_ITEM(list, i);
        self_worker |= gla_pool_is_worker(po->pool);
        if (pool_wait_impl(po, -1.0) < 0) {
            Py_DECREF(list);
            return NULL;
        }
    }
    Py_DECREF(list);
    /* and until every worker is through its leave (see g_attached) */
    Py_BEGIN_ALLOW_THREADS
    attached_wait(self_worker);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* Runs in the forking thread (os.register_at_fork), before anything else in the child
 * can use a pool. See pool.h ("fork()") and the docstring below. */
static PyObject *py_after_fork_child(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    PyObject *list = all_pools();
    if (!list)
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        PoolObject *po = (PoolObject *)PyList_GET_ITEM(list, i);
        /* The parent's tasks run in the parent: drop them here, futures untouched. The
         * parent's workers' references to po stay counted: po lives on in the child. */
        gla_pool_task *tasks = gla_pool_reset_after_fork(po->pool);
        while (tasks) {
            pytask *t = (pytask *)tasks;
            tasks = tasks->next;
            task_free(t);
        }
#if GLA_HAVE_CONTROLLER
        if (po->has_controller) {
            gla_pool_stats st;
            gla_pool_get_stats(po->pool, &st);
            gla_ctl_init(&po->ctl, st.min_workers, st.max_workers, st.usable_cores);
            gla_ctl_start_at(&po->ctl, st.target);
        }
#endif
        maybe_drained(po);
    }
    Py_DECREF(list);
    Py_RETURN_NONE;
}

static PyMethodDef pool_functions[] = {
    {"_shutdown_all", py_shutdown_all, METH_NOARGS,
     "Interpreter exit: shut every executor pool down and wait for its workers."},
    {"_after_fork_child", py_after_fork_child, METH_NOARGS,
     "In a forked child (os.register_at_fork, forking thread): executors made before the\n"
     "fork keep working. Their new submits are accepted and start new workers in the\n"
     "child, unless the executor was shut down (RuntimeError, as after any shutdown) or\n"
     "broken before the fork. The parent's workers and queued tasks are forgotten: those\n"
     "tasks run in the parent, and their futures stay pending or running in the child. A\n"
     "worker that forked inside a task stays its executor's worker in the child: the task\n"
     "returns normally and the thread serves that executor's tasks from then on."},
    {NULL, NULL, 0, NULL},
};

/* clang-format off */
#define STATE_OBJECTS(X)                                                                     \
    X(pool_type) X(exec_type) X(future_type) X(PENDING) X(RUNNING) X(FINISHED) X(s_set_running)  \
    X(s_set_result) X(s_set_exception) X(s_cancel) X(s__condition) X(s__lock) X(s__state)         \
    X(s__result) X(s__waiters) X(s__done_callbacks) X(s__invoke_callbacks) X(s_acquire)           \
    X(s_release) X(rlock_type) X(s__release_save) X(s__acquire_restore) X(s__is_owned)
/* clang-format on */

int gla_pool_py_exec(PyObject *m, gla_pool_py_state *st)
{
    static const struct {
        size_t offset;
        const char *text;
    } names[] = {
        {offsetof(gla_pool_py_state, s_set_running), "set_running_or_notify_cancel"},
        {offsetof(gla_pool_py_state, s_set_result), "set_result"},
        {offsetof(gla_pool_py_state, s_set_exception), "set_exception"},
        {offsetof(gla_pool_py_state, s_cancel), "cancel"},
        {offsetof(gla_pool_py_state, s__condition), "_condition"},
        {offsetof(gla_pool_py_state, s__lock), "_lock"},
        {offsetof(gla_pool_py_state, s__state), "_state"},
        {offsetof(gla_pool_py_state, s__result), "_result"},
        {offsetof(gla_pool_py_state, s__waiters), "_waiters"},
        {offsetof(gla_pool_py_state, s__done_callbacks), "_done_callbacks"},
        {offsetof(gla_pool_py_state, s__invoke_callbacks), "_invoke_callbacks"},
        {offsetof(gla_pool_py_state, s_acquire), "acquire"},
        {offsetof(gla_pool_py_state, s_release), "release"},
        {offsetof(gla_pool_py_state, s__release_save), "_release_save"},
        {offsetof(gla_pool_py_state, s__acquire_restore), "_acquire_restore"},
        {offsetof(gla_pool_py_state, s__is_owned), "_is_owned"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        PyObject **slot = (PyObject **)((char *)st + names[i].offset);
        if (!(*slot = PyUnicode_InternFromString(names[i].text)))
            return -1;
    }
    if (future_fast_init(st) < 0 || future_untrack_init(st) < 0)
        return -1;
    st->pool_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &Pool_spec, NULL);
    if (!st->pool_type)
        return -1;
    st->exec_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &Exec_spec, NULL);
    if (!st->exec_type)
        return -1;
    if (PyModule_AddObjectRef(m, "Pool", (PyObject *)st->pool_type) < 0 ||
        PyModule_AddObjectRef(m, "ExecutorBase", (PyObject *)st->exec_type) < 0)
        return -1;
    if (PyModule_AddFunctions(m, pool_functions) < 0)
        return -1;
    if (PyModule_AddIntConstant(m, "POOL_DEFAULT_STACK", GLA_POOL_DEFAULT_STACK) < 0 ||
        PyModule_AddIntConstant(m, "HAVE_CONTROLLER", GLA_HAVE_CONTROLLER) < 0)
        return -1;
    return 0;
}

int gla_pool_py_traverse(gla_pool_py_state *st, visitproc visit, void *arg)
{
#define VISIT(f) Py_VISIT(st->f);
    STATE_OBJECTS(VISIT)
#undef VISIT
    return 0;
}

void gla_pool_py_clear(gla_pool_py_state *st)
{
    /* The types reference the module (a cycle through the state): break it. The rest
     * stays until the module is freed, which no Pool outlives (a Pool holds its type,
     * which holds the module): a worker still finishing a task may use them. */
    Py_CLEAR(st->pool_type);
    Py_CLEAR(st->exec_type);
}

void gla_pool_py_free(gla_pool_py_state *st)
{
#define CLEAR(f) Py_CLEAR(st->f);
    STATE_OBJECTS(CLEAR)
#undef CLEAR
}
